"""The ``replicate`` command line: thin typer commands, rich rendering.

Each command parses its options, calls one function of the library, and
renders the result (a rich table for people, ``--json`` for machines).
Errors go to stderr with their SQLSTATE; exit codes: 0 success, 1 the
operation failed, 2 bad usage.
"""

from __future__ import annotations

import json
import signal
import sys
import time
from pathlib import Path
from typing import Annotated, Any, Callable, Optional

import typer
from psycopg.conninfo import conninfo_to_dict
from rich.console import Console
from rich.live import Live
from rich.table import Table

from replicate.cluster import LocalCluster
from replicate.config import DEFAULT_CONFIG, load_config
from replicate.errors import ReplicateError

app = typer.Typer(
    name="replicate",
    help="Keep PostgreSQL tables identical across several PostgreSQL servers "
         "through a Multi-Paxos log.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
out = Console()
err = Console(stderr=True, soft_wrap=True)

DEFAULT_DIR = Path("replicate-cluster")

DirOption = Annotated[Path, typer.Option("--dir", help="Directory of the local cluster.")]
ConfigOption = Annotated[Path, typer.Option("--config", help="The cluster configuration file.")]
JsonOption = Annotated[bool, typer.Option("--json", help="Print JSON for machines.")]


def run(action: Callable[[], Any]) -> Any:
    """Call ``action``; turn a ReplicateError into a message on stderr and exit code 1."""
    try:
        return action()
    except ReplicateError as exc:
        err.print(f"[bold red]error[/] [dim]({exc.sqlstate})[/]: {exc.message}", highlight=False)
        if exc.detail:
            err.print(f"[dim]detail:[/] {exc.detail}", highlight=False)
        if exc.hint:
            err.print(f"[dim]hint:[/] {exc.hint}", highlight=False)
        raise typer.Exit(1) from None


# -- local cluster -----------------------------------------------------------


def _nodes_report(cluster: LocalCluster) -> list[dict[str, Any]]:
    report = []
    for local, conf in zip(cluster.nodes, cluster.config.nodes):
        proxy = cluster.proxy(local.name)
        report.append({"name": local.name, "status": local.status(), "pid": local.pid(),
                       "dsn": conf.dsn, "proxy": conf.proxy,
                       "proxy_status": "running" if proxy.is_running() else "stopped",
                       "proxy_pid": proxy.pid(), "data_dir": str(local.root)})
    return report


def _dsn_address(dsn: str) -> str:
    parts = conninfo_to_dict(dsn)
    return f"{parts.get('host', 'localhost')}:{parts.get('port', 5432)}/{parts.get('dbname', '')}"


def _nodes_table(cluster: LocalCluster) -> Table:
    table = Table(title=f"replicate cluster [bold]{cluster.config.name}[/] "
                        f"[dim]({cluster.config_path})[/]", title_justify="left")
    for column in ("node", "postgres", "status", "pid", "proxy", "status", "pid", "data"):
        table.add_column(column)
    colours = {"running": "green", "paused": "yellow", "stopped": "red"}
    for row in _nodes_report(cluster):
        table.add_row(row["name"], _dsn_address(row["dsn"]),
                      f"[{colours[row['status']]}]{row['status']}[/]", str(row["pid"] or "-"),
                      row["proxy"], f"[{colours[row['proxy_status']]}]{row['proxy_status']}[/]",
                      str(row["proxy_pid"] or "-"), row["data_dir"])
    return table


def bring_up(directory: Path, nodes: Optional[int], base_port: Optional[int]) -> tuple[LocalCluster, bool, list[str], float]:
    """Create the cluster in ``directory`` if needed, then start whatever is not running."""
    started_at = time.monotonic()
    created = not LocalCluster.exists_in(directory)
    if created:
        cluster = LocalCluster.create(directory, nodes=nodes or 3, base_port=base_port)
    else:
        cluster = LocalCluster.open(directory)
        if nodes is not None and nodes != len(cluster.nodes):
            raise ReplicateError(
                f"{directory} already holds a cluster of {len(cluster.nodes)} nodes, not {nodes}",
                hint="leave out --nodes to restart it, or choose another --dir",
                sqlstate="F0000")
    started = cluster.start()
    started += [f"proxy {name}" for name in cluster.start_proxies()]
    return cluster, created, started, time.monotonic() - started_at


@app.command()
def up(
    nodes: Annotated[Optional[int], typer.Option("--nodes", "-n", min=1, max=32,
                                                 help="Number of nodes (default 3).")] = None,
    directory: DirOption = DEFAULT_DIR,
    base_port: Annotated[Optional[int], typer.Option(
        "--base-port", min=1, max=65535,
        help="Proxies listen on P..P+N-1, PostgreSQL on P+N..P+2N-1 (default: first free range "
             "from 15432).")] = None,
    detach: Annotated[bool, typer.Option("--detach", "-d",
                                         help="Start and return; stop later with `replicate down`.")] = False,
    as_json: JsonOption = False,
) -> None:
    """Start a local cluster of PostgreSQL nodes (creating it on first use).

    Run again on an existing --dir, it restarts whatever is not running.
    """
    if not detach:
        def terminate(signum: int, frame: object) -> None:
            raise KeyboardInterrupt

        signal.signal(signal.SIGTERM, terminate)
    try:
        cluster, created, started, seconds = run(lambda: bring_up(directory, nodes, base_port))
        if as_json:
            print(json.dumps({"config": str(cluster.config_path), "created": created,
                              "started": started, "seconds": round(seconds, 3),
                              "nodes": _nodes_report(cluster)}, indent=2), flush=True)
        else:
            verb = "created and started" if created else (
                f"restarted {', '.join(started)}" if started else "already running")
            out.print(f"[bold]{len(cluster.nodes)} nodes {verb}[/] in {seconds:.1f} s; "
                      f"configuration: {cluster.config_path}")
        if detach:
            if not as_json:
                out.print(_nodes_table(cluster))
                out.print(f"stop with: [bold]replicate down --dir {directory}[/]")
            return
        with Live(_nodes_table(cluster), console=out, refresh_per_second=2) as live:
            out.print("[dim]Ctrl-C stops the cluster[/]")
            while True:
                time.sleep(1)
                live.update(_nodes_table(cluster))
    except KeyboardInterrupt:
        if detach or not LocalCluster.exists_in(directory):
            raise
        out.print("stopping ...")
        run(lambda: LocalCluster.open(directory).stop())
        out.print("[bold]cluster stopped[/]")


@app.command()
def down(
    directory: DirOption = DEFAULT_DIR,
    immediate: Annotated[bool, typer.Option("--immediate",
                                            help="Stop without a clean shutdown.")] = False,
    as_json: JsonOption = False,
) -> None:
    """Stop every process that `replicate up` started in --dir (data is kept)."""

    def stop() -> LocalCluster:
        cluster = LocalCluster.open(directory)
        cluster.stop(mode="immediate" if immediate else "fast")
        return cluster

    cluster = run(stop)
    if as_json:
        print(json.dumps({"nodes": _nodes_report(cluster)}, indent=2))
    else:
        out.print(_nodes_table(cluster))


@app.command()
def proxy(
    node: Annotated[str, typer.Option("--node", help="Name of the node this proxy serves.")],
    config: ConfigOption = DEFAULT_CONFIG,
) -> None:
    """Run the proxy of one node in the foreground (what `replicate up` starts per node)."""
    from replicate.runtime.proxy import run as run_proxy

    cluster_config = run(lambda: load_config(config))
    run(lambda: cluster_config.node(node))
    run(lambda: run_proxy(cluster_config, node))


# -- SQL gate ----------------------------------------------------------------


@app.command()
def explain(
    sql: Annotated[str, typer.Argument(help="The statement(s) to explain.")],
    config: Annotated[Optional[Path], typer.Option(
        "--config", help="cluster.toml: read catalog facts from its first reachable node.")] = None,
    table: Annotated[Optional[list[str]], typer.Option(
        "--table", help="A registered table (schema.name); repeat for several.")] = None,
    search_path: Annotated[str, typer.Option(
        "--search-path", help="The session's search_path, comma-separated.")] = "public",
    as_json: JsonOption = False,
) -> None:
    """Show how the SQL gate treats a statement: relayed, read, replicated or refused."""
    import random as _random
    from datetime import datetime, timezone

    from replicate.gate import Catalog
    from replicate.gate.explain import catalog_from_config
    from replicate.gate.explain import explain as gate_explain

    tables = table or []
    catalog = run(lambda: catalog_from_config(config, tables)) if config else Catalog.of(*tables)
    path = tuple(s.strip().strip('"') for s in search_path.split(",") if s.strip())
    result = gate_explain(sql, catalog, search_path=path, now=datetime.now(timezone.utc),
                          rng=_random.Random())
    if as_json:
        print(json.dumps(result.to_dict(), indent=2))
        return
    if not config:
        out.print("[dim]catalog: table names only (no --config): column defaults, keys and "
                  "user functions are unknown[/]", highlight=False)
    styles = {"relay": "dim", "read": "cyan", "replicate": "green", "refuse": "bold red"}
    for st in result.statements:
        out.print(f"[{styles[st.action]}]{st.action.upper()}[/]  {st.source}", highlight=False)
        if st.writes:
            out.print(f"  writes:    {', '.join(st.writes)}", highlight=False)
        if st.reads:
            out.print(f"  reads:     {', '.join(st.reads)}", highlight=False)
        if st.tables:
            out.print(f"  tables:    {', '.join(st.tables)}", highlight=False)
        if st.rewritten is not None and st.rewritten != st.source:
            out.print(f"  rewritten: {st.rewritten}", highlight=False)
        if st.action == "refuse":
            out.print(f"  [red]{st.sqlstate}[/] {st.message}", highlight=False)
            out.print(f"  hint:      {st.hint}", highlight=False)


# -- schema ------------------------------------------------------------------


@app.command()
def init(config: ConfigOption = DEFAULT_CONFIG, as_json: JsonOption = False) -> None:
    """Install or upgrade the replicate schema on every node of the cluster (idempotent)."""
    from replicate.runtime.schema import SCHEMA_VERSION, install_cluster, mixed_majors

    cluster_config = run(lambda: load_config(config))
    reports = install_cluster(cluster_config)
    warning = mixed_majors({r.name: r.server_version for r in reports if r.server_version})
    if as_json:
        print(json.dumps({"schema_version": SCHEMA_VERSION, "ok": all(r.ok for r in reports),
                          "warning": warning,
                          "nodes": [{"name": r.name, "postgresql": r.server_version,
                                     "before": r.before, "after": r.after,
                                     "sqlstate": r.sqlstate, "error": r.error}
                                    for r in reports]}, indent=2))
    else:
        table = Table(title=f"replicate schema (version {SCHEMA_VERSION}) on cluster "
                            f"[bold]{cluster_config.name}[/]", title_justify="left")
        for column in ("node", "postgresql", "before", "after", "result"):
            table.add_column(column)
        for r in reports:
            result = ("[green]up to date[/]" if r.before == r.after else "[green]installed[/]"
                      ) if r.ok else f"[red]{r.sqlstate}[/] {r.error}"
            table.add_row(r.name, r.server_version or "-",
                          "-" if r.before is None else str(r.before),
                          "-" if r.after is None else str(r.after), result)
        out.print(table)
    if warning:
        err.print(f"[bold yellow]warning[/]: {warning}", highlight=False)
    failed = [r.name for r in reports if not r.ok]
    if failed:
        err.print(f"[bold red]error[/]: schema not installed on {', '.join(failed)}",
                  highlight=False)
        raise typer.Exit(1)


# -- operator commands: status, table, log --------------------------------------

NodeOption = Annotated[Optional[str], typer.Option(
    "--node", help="Read from this node (default: the first whose PostgreSQL answers).")]


def _status_view(status: Any) -> Any:
    from rich.console import Group
    from rich.text import Text

    leader = f"[bold]{status.leader}[/]" if status.leader else "[bold red]none[/]"
    if status.leader and any(n.name == status.leader and n.state == "down" for n in status.nodes):
        leader += " [red](its proxy does not answer)[/]"
    commit = "-" if status.commit_upto is None else str(status.commit_upto)
    table = Table(title=f"cluster [bold]{status.cluster}[/]: leader {leader}, ballot "
                        f"{status.ballot or '-'}, commit slot {commit}", title_justify="left")
    for column in ("node", "proxy", "state", "role", "ballot", "applied", "lag", "acceptors"):
        table.add_column(column, no_wrap=column in ("node", "state", "role"),
                         justify="right" if column in ("applied", "lag") else "left")
    colours = {"ok": "green", "stalled": "yellow", "down": "red"}
    notes = []
    for n in status.nodes:
        links = "-"  # only a leader keeps connections to the acceptors
        if n.role == "leader" and n.acceptors:
            links = f"{sum(a.connected for a in n.acceptors)}/{len(n.acceptors)}"
            cut = [a.node for a in n.acceptors if not a.connected]
            if cut:
                links += f" (not {', '.join(cut)})"
        if n.state == "down":
            notes.append(f"[red]{n.name} down[/]: proxy: {n.proxy_error}; database "
                         f"{n.database}" + (f": {n.database_error}" if n.database_error else ""))
        elif n.stalled:
            notes.append(f"[yellow]{n.name} stalled[/]: {n.stalled}")
        table.add_row(n.name, n.proxy, f"[{colours[n.state]}]{n.state}[/]", n.role or "-",
                      n.ballot or "-", "-" if n.applied_upto is None else str(n.applied_upto),
                      "-" if n.lag is None else str(n.lag), links)
    return Group(table, *(Text.from_markup(note) for note in notes))


@app.command()
def status(
    config: ConfigOption = DEFAULT_CONFIG,
    watch: Annotated[bool, typer.Option("--watch", "-w",
                                        help="Refresh every second until Ctrl-C.")] = False,
    as_json: JsonOption = False,
) -> None:
    """The leader, its ballot and commit slot; per node: state, role, applied slot, lag, stall."""
    from replicate.admin import cluster_status

    if watch and as_json:
        raise typer.BadParameter("--watch and --json do not go together", param_hint="--watch")
    cluster_config = run(lambda: load_config(config))
    report = run(lambda: cluster_status(cluster_config))
    if watch:
        try:
            with Live(_status_view(report), console=out, refresh_per_second=4) as live:
                while True:
                    time.sleep(1)
                    live.update(_status_view(run(lambda: cluster_status(cluster_config))))
        except KeyboardInterrupt:
            return
    if as_json:
        print(json.dumps(report.to_dict(), indent=2))
    else:
        out.print(_status_view(report))
    if report.reachable == 0:
        err.print("[bold red]error[/] [dim](08006)[/]: no proxy answers", highlight=False)
        raise typer.Exit(1)


table_app = typer.Typer(help="Register, unregister and list replicated tables.",
                        no_args_is_help=True)
app.add_typer(table_app, name="table")


@table_app.command("add")
def table_add(
    name: Annotated[str, typer.Argument(help="The table, as in SQL: name or schema.name.")],
    config: ConfigOption = DEFAULT_CONFIG,
    copy_from: Annotated[Optional[str], typer.Option(
        "--copy-from", metavar="NODE",
        help="First replace the rows of the other nodes with this node's.")] = None,
    as_json: JsonOption = False,
) -> None:
    """Check that NAME is identical on every node, guard it, and register it through the log."""
    from rich.progress import Progress

    from replicate.admin import add_table

    cluster_config = run(lambda: load_config(config))
    if copy_from is None or as_json:
        result = run(lambda: add_table(cluster_config, name, copy_from=copy_from))
    else:
        with Progress(console=err, transient=False) as bar:
            tasks: dict[str, Any] = {}

            def progress(node: str, done: int, total: int) -> None:
                if node not in tasks:
                    tasks[node] = bar.add_task(f"copy {copy_from} -> {node}", total=total)
                bar.update(tasks[node], completed=done)

            result = run(lambda: add_table(cluster_config, name, copy_from=copy_from,
                                           progress=progress))
    if as_json:
        print(json.dumps(result.to_dict(), indent=2))
    elif result.already:
        out.print(f"table [bold]{result.table}[/] is already registered (since slot "
                  f"{result.slot})" + ("; nothing copied" if copy_from else ""),
                  highlight=False)
    else:
        table = Table(title=f"table [bold]{result.table}[/] registered at slot {result.slot} "
                            f"(through {result.via})", title_justify="left")
        for column in ("node", "rows", "md5", "guard"):
            table.add_column(column)
        for n in result.nodes:
            table.add_row(n.node, str(n.rows), n.digest,
                          "installed" if n.guard_created else "already there")
        out.print(table)
    if not as_json:
        for warning in result.warnings:
            err.print(f"[bold yellow]warning[/]: {warning}", highlight=False)


@table_app.command("remove")
def table_remove(
    name: Annotated[str, typer.Argument(help="The table, as in SQL: name or schema.name.")],
    config: ConfigOption = DEFAULT_CONFIG,
    as_json: JsonOption = False,
) -> None:
    """Unregister NAME through the log: every node drops its guard at the same slot."""
    from replicate.admin import remove_table

    cluster_config = run(lambda: load_config(config))
    result = run(lambda: remove_table(cluster_config, name))
    if as_json:
        print(json.dumps(result.to_dict(), indent=2))
    elif not result.registered:
        out.print(f"table [bold]{result.table}[/] is not registered", highlight=False)
    else:
        out.print(f"table [bold]{result.table}[/] unregistered at slot {result.slot} "
                  f"(through {result.via}); direct writes to it are allowed again",
                  highlight=False)


@table_app.command("list")
def table_list(
    config: ConfigOption = DEFAULT_CONFIG,
    node: NodeOption = None,
    as_json: JsonOption = False,
) -> None:
    """The registered tables, the slot each was registered at, and their row counts."""
    from replicate.admin import list_tables

    cluster_config = run(lambda: load_config(config))
    result = run(lambda: list_tables(cluster_config, node))
    if as_json:
        print(json.dumps(result.to_dict(), indent=2))
        return
    out.print(f"registered tables on [bold]{result.node}[/] (applied up to slot "
              f"{result.applied_upto})", highlight=False)
    table = Table()
    for column in ("table", "since slot", "rows"):
        table.add_column(column, justify="left" if column == "table" else "right")
    for t in result.tables:
        table.add_row(t.table, str(t.since_slot),
                      str(t.rows) if t.rows is not None else f"[red]{t.error}[/]")
    out.print(table)


@app.command("log")
def log_command(
    config: ConfigOption = DEFAULT_CONFIG,
    limit: Annotated[int, typer.Option("--limit", "-n", min=1,
                                       help="How many recent entries.")] = 20,
    slot: Annotated[Optional[int], typer.Option("--slot", min=1,
                                                help="Show this one slot in full.")] = None,
    node: NodeOption = None,
    as_json: JsonOption = False,
) -> None:
    """Recent applied log entries: slot, request id, statement and their outcome on a node."""
    from replicate.admin import read_log

    cluster_config = run(lambda: load_config(config))
    view = run(lambda: read_log(cluster_config, node=node, limit=limit, slot=slot))
    if as_json:
        print(json.dumps(view.to_dict(), indent=2))
        return
    if slot is not None:
        e = view.entries[0]
        out.print(f"[bold]slot {e.slot}[/] on {view.node}", highlight=False)
        for label, value in (("request id", e.request_id), ("kind", e.kind),
                             ("statement", e.statement), ("params", e.params),
                             ("settings", e.settings), ("role", e.role), ("outcome", e.status),
                             ("command tag", e.command_tag), ("rows", e.rows_affected),
                             ("sqlstate", e.sqlstate), ("message", e.message),
                             ("detail", e.detail), ("hint", e.hint)):
            if value not in (None, (), {}):
                out.print(f"  {label + ':':<13}{value}", highlight=False)
        return
    table = Table(title=f"log of {view.node} (applied up to slot {view.applied_upto})",
                  title_justify="left")
    for column in ("slot", "request id", "kind", "statement", "outcome"):
        table.add_column(column, overflow="fold")
    for e in view.entries:
        if e.status == "error":
            outcome = f"[red]{e.sqlstate}[/] {e.message}"
        else:
            outcome = e.command_tag or e.status or "-"
        table.add_row(str(e.slot), e.request_id or "-", e.kind, e.statement or "-", outcome)
    out.print(table)


@app.command()
def check(
    table: Annotated[Optional[str], typer.Option(
        "--table", help="Check only this registered table (default: all).")] = None,
    config: ConfigOption = DEFAULT_CONFIG,
    as_json: JsonOption = False,
) -> None:
    """Compare every node's registered tables, and what every statement did there, at one log
    position.

    Exit codes: 0 consistent; 1 divergent (tables and row keys named, and the slots whose
    outcome differs, with their statements); 2 could not check every node (which, and why, is
    said).
    """
    from replicate.check import run_check

    cluster_config = run(lambda: load_config(config))
    report = run(lambda: run_check(cluster_config, table))
    if as_json:
        print(json.dumps(report.to_json(), indent=2))
        raise typer.Exit(report.exit_code)
    if not report.tables:
        out.print("no registered tables to check")
    for t in report.tables:
        verdict = "[green]identical[/]" if t.agree else "[bold red]DIFFERENT[/]"
        grid = Table(title=f"{t.table}: {verdict} at slot {report.slot}", title_justify="left")
        for column in ("node", "rows", "hash"):
            grid.add_column(column)
        for node, rows in t.rows.items():
            grid.add_row(node, str(rows), t.digest[node])
        out.print(grid)
        if not t.agree:
            out.print(f"  {len(t.differing_buckets)} of the key-hash buckets differ")
            for row in t.differing_rows:
                where = ", ".join(f"{n}: {h[:8] if h else 'missing'}" for n, h in row["nodes"].items())
                out.print(f"  key {row['key']}  ({where})", highlight=False)
    if report.outcomes is not None:
        o = report.outcomes
        verdict = "[green]identical[/]" if o.agree else "[bold red]DIFFERENT[/]"
        counts = ", ".join(f"{node}: {n}" for node, n in o.rows.items())
        out.print(f"outcomes of slots 1..{report.slot}: {verdict} ({counts})")
        for row in o.differing_rows:
            where = ", ".join(f"{n}: {text or 'missing'}" for n, text in row["nodes"].items())
            out.print(f"  slot {row['key']}  {row.get('statement') or '?'}", highlight=False)
            out.print(f"    {where}", highlight=False)
    for node, why in report.unchecked.items():
        err.print(f"[yellow]not checked[/] {node}: {why}", highlight=False)
    if report.exit_code == 0:
        out.print("[bold green]all nodes agree[/]")
    raise typer.Exit(report.exit_code)


@app.command()
def demo() -> None:
    """Show replicate at work on a throwaway local 3-node cluster (about half a minute).

    Creates and registers a table, writes through all three proxies, shows the nodes agree,
    SIGKILLs one node's PostgreSQL and keeps writing, restarts it and shows it catch up, runs
    the consistency check, and removes the cluster.
    """
    from rich.rule import Rule

    from replicate.demo import steps

    failed = False

    def show() -> None:
        nonlocal failed
        for number, step in enumerate(steps(), start=1):
            out.print(Rule(f"[bold]{number}. {step.title}[/]", align="left"))
            for line in step.lines:
                out.print(f"   {line}", highlight=False)
            if step.rows:
                grid = Table(*step.header, box=None, padding=(0, 2))
                for row in step.rows:
                    grid.add_row(*row)
                out.print(grid)
            if not step.ok:
                failed = True
                err.print("[bold red]this step did not go as expected[/]")

    run(show)
    if failed:
        raise typer.Exit(1)


def main() -> None:  # pragma: no cover - entry point for `python -m replicate`
    app()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
