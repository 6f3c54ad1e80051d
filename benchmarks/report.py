"""Presenting a benchmark run: the rich table on stdout and the PNG chart."""

from __future__ import annotations

from pathlib import Path

from rich.console import Console
from rich.table import Table


def _f(value, digits: int = 1, suffix: str = "") -> str:
    if value is None:
        return "n/a"
    return f"{value:,.{digits}f}{suffix}"


def _per(per_node: dict | None, digits: int = 0) -> str:
    """A figure per node, n1/n2/n3 ("n/a" if any node lacks it)."""
    if not per_node or any(v is None for v in per_node.values()):
        return "n/a"
    return "/".join(f"{v:,.{digits}f}" for v in per_node.values())


MEMORY_COLUMNS = ("workload", "mode", "clients", "WAL B/txn direct",
                  "WAL B/txn proxied (n1/n2/n3)", "WAL x", "FPI/1k direct",
                  "FPI/1k proxied (n1/n2/n3)", "DB B/txn direct",
                  "DB B/txn proxied (n1/n2/n3)", "DB x", "proxy RSS MB (n1/n2/n3)")


def memory_row(c: dict) -> tuple[str, ...]:
    """One comparison's storage and memory figures, formatted (stdout and Markdown)."""
    return (c["workload"], c["mode"], str(c["clients"]),
            _f(c.get("direct_wal_bytes_per_txn"), 0), _per(c.get("proxied_wal_bytes_per_txn")),
            _f(c.get("wal_bytes_ratio"), 1), _f(c.get("direct_wal_fpi_per_1k"), 0),
            _per(c.get("proxied_wal_fpi_per_1k")), _f(c.get("direct_db_bytes_per_txn"), 0),
            _per(c.get("proxied_db_bytes_per_txn")), _f(c.get("db_bytes_ratio"), 1),
            _per(c.get("proxy_rss_mb"), 1))


FLOOR_COLUMNS = ("workload", "mode", "clients", "direct tps", "floor tps", "floor x",
                 "floor p50 ms", "floor p50 x", "replicated tps", "share of floor")


def floor_rows(data: dict) -> list[tuple[str, ...]]:
    """The cells with a floor (W2, W3, W4: benchmarks/floor.py), formatted (stdout and
    Markdown)."""
    return [(c["workload"], c["mode"], str(c["clients"]), _f(c["direct_tps"], 0),
             _f(c["floor_tps"], 0), _f(c["floor_tps_ratio"], 3), _f(c["floor_p50_ms"], 2),
             _f(c["floor_p50_ratio"], 1), _f(c["proxied_tps"], 0), _f(c["share_of_floor"], 2))
            for c in data["comparisons"] if c.get("floor_tps") is not None]


def _reachable(t: dict) -> str:
    return {True: "yes", False: "no", None: "n/a"}[t.get("reachable_here")]


def _rss_line(meta: dict) -> str:
    start, peak = meta.get("proxy_rss_mb_at_start") or {}, meta.get("proxy_peak_rss_mb") or {}
    if not peak:
        return ""
    return ("Proxy resident set at the start -> peak over the run (VmHWM): "
            + ", ".join(f"{k} {_f(start.get(k), 1)} -> {_f(v, 1)} MB" for k, v in peak.items()))


def print_report(data: dict, console: Console | None = None) -> None:
    console = console or Console(width=200)
    meta = data["meta"]
    results = {(r["workload"], r["mode"], r["clients"], r["target"]): r for r in data["results"]}
    table = Table(title=f"replicate vs direct PostgreSQL {meta['postgresql']}: 3 nodes, fsync on, "
                        f"via the {meta['via']} ({meta['node']}); {meta['rounds']} rounds x "
                        f"{meta['duration_s']:g} s")
    for name, justify in (("workload", "left"), ("mode", "left"), ("clients", "right"),
                          ("direct tps", "right"), ("proxied tps", "right"), ("ratio", "right"),
                          ("direct p50/p99 ms", "right"), ("proxied p50/p99 ms", "right"),
                          ("p50 x", "right"), ("WAL syncs/1k direct", "right"),
                          ("WAL syncs/1k proxied (n1/n2/n3)", "right"),
                          ("proxy CPU s/1k", "right"), ("errors", "left")):
        table.add_column(name, justify=justify)  # type: ignore[arg-type]
    for c in data["comparisons"]:
        group = c["workload"].split("-")[0]
        d = results.get((group, c["mode"], c["clients"], "direct"), {})
        node = meta["node"]
        direct_wal = (d.get("wal_syncs_per_1k") or {}).get(node)
        table.add_row(
            c["workload"], c["mode"], str(c["clients"]),
            _f(c["direct_tps"]), _f(c["proxied_tps"]), _f(c["tps_ratio"], 2),
            f"{_f(c['direct_p50_ms'], 2)}/{_f(c['direct_p99_ms'], 2)}",
            f"{_f(c['proxied_p50_ms'], 2)}/{_f(c['proxied_p99_ms'], 2)}",
            _f(c["p50_ratio"], 1), _f(direct_wal, 0), _per(c["proxied_wal_syncs_per_1k"]),
            _f(c["proxy_cpu_s_per_1k"], 2), "; ".join(c["errors"])[:60])
    console.print(table)

    memory = Table(title="storage per transaction on each node (WAL, database) and proxy memory")
    for i, name in enumerate(MEMORY_COLUMNS):
        memory.add_column(name, justify="left" if i < 2 else "right")  # type: ignore[arg-type]
    for c in data["comparisons"]:
        memory.add_row(*memory_row(c))
    console.print(memory)
    if line := _rss_line(meta):
        console.print(line)

    if rows := floor_rows(data):
        floor = Table(title="the floors (benchmarks/floor.py): W2 the design's database work "
                            "alone on the three nodes, no proxies, no consensus; W3 and W4 "
                            "the direct script through socat")
        for i, name in enumerate(FLOOR_COLUMNS):
            floor.add_column(name, justify="left" if i < 2 else "right")  # type: ignore[arg-type]
        for row in rows:
            floor.add_row(*row)
        console.print(floor)

    targets = Table(title="issue 8 targets")
    for name in ("target", "mode", "clients", "value", "goal", "met", "floor",
                 "goal within floor"):
        targets.add_column(name)
    for t in data["targets"]:
        met = {True: "[green]yes[/]", False: "[red]no[/]", None: "n/a"}[t["met"]]
        targets.add_row(t["target"], t["mode"], str(t["clients"]), _f(t["value"], 2),
                        t["goal"], met, _f(t.get("floor"), 2), _reachable(t))
    if data["targets"]:
        console.print(targets)
    check = data.get("check") or {}
    console.print(f"replicate check after the run: exit {check.get('exit_code')}"
                  + (f" ({check['error']})" if check.get("error") else " (nodes agree)"
                     if check.get("exit_code") == 0 else ""))


def write_chart(data: dict, path: Path) -> Path | None:
    """Throughput against clients, direct (dashed) and replicated (solid); one panel per mode."""
    try:
        import matplotlib
    except ImportError:
        return None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    modes = data["meta"]["modes"]
    fig, axes = plt.subplots(1, len(modes), figsize=(6.5 * len(modes), 5), squeeze=False,
                             sharey=True)
    colors = {"W1": "tab:blue", "W2": "tab:orange", "W3": "tab:green",
              "W3-local": "tab:green", "W3-linearizable": "tab:olive", "W4": "tab:red"}
    for ax, mode in zip(axes[0], modes):
        rows = [r for r in data["results"] if r["mode"] == mode]
        for key in dict.fromkeys(r["workload"] for r in rows):
            for target, style in (("direct", "--"), ("proxied", "-"), ("floor", ":")):
                pts = sorted((r["clients"], r["tps"]) for r in rows
                             if r["workload"] == key and r["target"] == target)
                if not pts:
                    continue
                label = f"{key} " + {"direct": "direct", "proxied": "replicated",
                                     "floor": "floor (socat)" if key != "W2" else
                                     "floor (the design's database work alone)"}[target]
                ax.plot([p[0] for p in pts], [max(p[1], 0.1) for p in pts], style,
                        marker={"direct": "s", "proxied": "o", "floor": "^"}[target],
                        fillstyle="full" if target == "proxied" else "none",
                        color=colors.get(key, "black"), label=label)
        ax.set_title(f"pgbench -M {mode}")
        ax.set_xlabel("clients")
        ax.set_xscale("log", base=2)
        ax.set_xticks(data["meta"]["clients"], [str(c) for c in data["meta"]["clients"]])
        ax.set_yscale("log")
        ax.grid(True, which="both", alpha=0.3)
    axes[0][0].set_ylabel("throughput (transactions/s, log scale)")
    meta = data["meta"]
    fig.suptitle(f"replicate (3 nodes, fsync on) vs direct PostgreSQL "
                 f"{meta['postgresql'].split()[0]}, {meta['started'][:16]}Z", fontsize=10)
    handles: dict = {}
    for ax in axes[0]:
        for h, lab in zip(*ax.get_legend_handles_labels()):
            handles.setdefault(lab, h)
    fig.legend(list(handles.values()), list(handles), loc="lower center", fontsize=8,
               ncol=min(4, len(handles)) or 1, frameon=False)
    rows = (len(handles) + 3) // 4
    fig.tight_layout(rect=(0, 0.05 * rows, 1, 1))
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def markdown(data: dict) -> str:
    """The numbers and the targets as Markdown tables (for BENCHMARKS.md)."""
    meta = data["meta"]
    results = {(r["workload"], r["mode"], r["clients"], r["target"]): r for r in data["results"]}
    lines = ["| workload | mode | clients | direct tps | proxied tps | ratio | direct p50 / p99 ms "
             "| proxied p50 / p99 ms | p50 x | WAL syncs/1k direct | WAL syncs/1k proxied "
             "(n1/n2/n3) | proxy CPU s/1k |",
             "|---|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|"]
    for c in data["comparisons"]:
        d = results.get((c["workload"].split("-")[0], c["mode"], c["clients"], "direct"), {})
        direct_wal = (d.get("wal_syncs_per_1k") or {}).get(meta["node"])
        err = f" ({'; '.join(c['errors'])})" if c["errors"] else ""
        lines.append(
            f"| {c['workload']}{err} | {c['mode']} | {c['clients']} | {_f(c['direct_tps'], 0)} "
            f"| {_f(c['proxied_tps'], 0)} | {_f(c['tps_ratio'], 3)} "
            f"| {_f(c['direct_p50_ms'], 2)} / {_f(c['direct_p99_ms'], 2)} "
            f"| {_f(c['proxied_p50_ms'], 2)} / {_f(c['proxied_p99_ms'], 2)} "
            f"| {_f(c['p50_ratio'], 1)} | {_f(direct_wal, 0)} "
            f"| {_per(c['proxied_wal_syncs_per_1k'])} | {_f(c['proxy_cpu_s_per_1k'], 2)} |")
    lines += ["", "| " + " | ".join(MEMORY_COLUMNS) + " |",
              "|---|---|" + "--:|" * (len(MEMORY_COLUMNS) - 2)]
    lines += ["| " + " | ".join(memory_row(c)) + " |" for c in data["comparisons"]]
    if line := _rss_line(meta):
        lines += ["", line + "."]
    if rows := floor_rows(data):
        lines += ["", "| " + " | ".join(FLOOR_COLUMNS) + " |",
                  "|---|---|" + "--:|" * (len(FLOOR_COLUMNS) - 2)]
        lines += ["| " + " | ".join(row) + " |" for row in rows]
    lines += ["", "| target | mode | clients | now | goal | met | floor | goal within floor |",
              "|---|---|--:|--:|--:|---|--:|---|"]
    for t in data["targets"]:
        met = {True: "yes", False: "**no**", None: "n/a"}[t["met"]]
        lines.append(f"| {t['target']} | {t['mode']} | {t['clients']} | {_f(t['value'], 3)} "
                     f"| {t['goal']} | {met} | {_f(t.get('floor'), 3)} | {_reachable(t)} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    import json
    import sys

    source = Path(sys.argv[1]) if len(sys.argv) > 1 else (
        Path(__file__).resolve().parent / "results" / "bench.json")
    print(markdown(json.loads(source.read_text())), end="")
