"""``replicate demo``: the product in one minute, on a throwaway local 3-node cluster.

Each step is a generator of ``Step`` events (a title, lines, and optionally a table of rows) so
that the CLI renders them with rich and the tests can run the same demo and assert on what it
reports. Everything runs against real PostgreSQL servers and real proxy processes, with real
clients (psycopg) and a real SIGKILL; the cluster is destroyed at the end, whatever happens.
"""

from __future__ import annotations

import os
import shutil
import signal
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import psycopg

from replicate.admin import add_table, cluster_status
from replicate.check import run_check
from replicate.cluster import LocalCluster
from replicate.errors import ReplicateError


@dataclass
class Step:
    title: str
    lines: list[str] = field(default_factory=list)
    header: tuple[str, ...] = ()
    rows: list[tuple] = field(default_factory=list)
    ok: bool = True


def _proxy_dsn(cluster: LocalCluster, name: str) -> str:
    host, port = cluster.proxy_address(name)
    return f"host={host} port={port} user=postgres dbname=postgres connect_timeout=5"


def _nodes_view(cluster: LocalCluster) -> list[tuple]:
    status = cluster_status(cluster.config)
    return [(n.name, n.state + (f" (database {n.database})" if n.database else ""),
             n.role or "-", "-" if n.applied_upto is None else str(n.applied_upto))
            for n in status.nodes]


def _wait_for_leader(cluster: LocalCluster, timeout: float = 30) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        leader = cluster_status(cluster.config).leader
        if leader:
            return leader
        time.sleep(0.1)
    raise ReplicateError("no leader was elected", sqlstate="57P03")


def _wait_caught_up(cluster: LocalCluster, name: str, timeout: float = 30) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = cluster_status(cluster.config)
        node = next(n for n in status.nodes if n.name == name)
        if status.commit_upto is not None and node.applied_upto is not None \
                and node.applied_upto >= status.commit_upto:
            return node.applied_upto
        time.sleep(0.1)
    raise ReplicateError(f"{name} did not catch up within {timeout:.0f} s", sqlstate="57P03")


def _write(cluster: LocalCluster, name: str, first: int, count: int) -> None:
    with psycopg.connect(_proxy_dsn(cluster, name), autocommit=True) as conn:
        for i in range(first, first + count):
            conn.execute("INSERT INTO accounts (id, owner, balance) VALUES (%s, %s, %s)",
                         [i, f"owner-{i}", 100])


def _check_step(cluster: LocalCluster, title: str, *, rows: int) -> Step:
    """Run ``replicate check``; the step is ok if every node holds the same ``rows`` rows."""
    report = run_check(cluster.config)
    table = report.tables[0]
    return Step(title, [f"check at slot {report.slot}: "
                        + ("identical" if report.consistent else "DIFFERENT")],
                ("node", "rows", "hash"),
                [(n, str(table.rows[n]), table.digest[n]) for n in table.rows],
                ok=report.exit_code == 0 and set(table.rows.values()) == {rows})


def steps(directory: Path | None = None) -> Iterator[Step]:
    """Run the demo, yielding what happens; the cluster is destroyed when the iterator ends."""
    root = Path(tempfile.mkdtemp(prefix="replicate-demo-", dir=directory or "/tmp"))
    os.chmod(root, 0o755)
    cluster: LocalCluster | None = None
    try:
        started = time.monotonic()
        cluster = LocalCluster.create(root / "cluster", nodes=3, fsync=False)
        cluster.start()
        cluster.start_proxies()
        leader = _wait_for_leader(cluster)
        yield Step("Started 3 PostgreSQL nodes and their proxies",
                   [f"in {time.monotonic() - started:.1f} s, in {root}; leader: {leader}"],
                   ("node", "state", "role", "applied slot"), _nodes_view(cluster))

        for node in cluster.nodes:
            with psycopg.connect(node.dsn, autocommit=True) as conn:
                conn.execute("CREATE TABLE accounts (id int PRIMARY KEY, owner text NOT NULL, "
                             "balance numeric(12,2) NOT NULL, "
                             "updated timestamptz NOT NULL DEFAULT now())")
        result = add_table(cluster.config, "accounts")
        yield Step("Created table accounts on every node and registered it",
                   [f"replicate table add accounts: checked schemas and contents, installed the "
                    f"guard, registered at slot {result.slot}"])

        for i, node in enumerate(cluster.nodes):
            _write(cluster, node.name, 1 + 10 * i, 10)
        with psycopg.connect(_proxy_dsn(cluster, "n2"), autocommit=True) as conn:
            tag = conn.execute("UPDATE accounts SET balance = balance * 1.05, updated = now() "
                               "WHERE id % 2 = 0").statusmessage
        yield Step("Wrote through all three proxies with psycopg",
                   ["30 INSERTs, 10 through each proxy; then through n2: "
                    f"UPDATE accounts SET balance = balance * 1.05, updated = now() -> {tag}",
                    "now() was fixed once by the proxy, so every node stores the same instant"])

        yield _check_step(cluster, "Every node holds the same rows (replicate check, at one "
                                   "log slot)", rows=30)

        victim = cluster.node("n3")
        pid = victim.kill(signal.SIGKILL)
        _write(cluster, "n1", 100, 10)
        _write(cluster, "n2", 110, 10)
        yield Step("SIGKILLed n3's PostgreSQL and kept writing",
                   [f"kill -9 {pid}; 20 more INSERTs through n1 and n2 all succeeded "
                    "(2 of 3 nodes are a majority)"],
                   ("node", "state", "role", "applied slot"), _nodes_view(cluster))

        with psycopg.connect(_proxy_dsn(cluster, "n1"), autocommit=True) as conn:
            hint = ""
            try:
                conn.execute("UPDATE accounts SET balance = random()")
                refused = "not refused?"
            except psycopg.Error as exc:
                refused = f"{exc.sqlstate}: {exc.diag.message_primary}"
                hint = exc.diag.message_hint
        yield Step("A statement that would diverge is refused before it reaches any node",
                   ["UPDATE accounts SET balance = random()", f"-> {refused}", f"hint: {hint}"])

        cluster.start()
        slot = _wait_caught_up(cluster, "n3")
        yield Step("Restarted n3: it caught up from the log",
                   [f"n3 applied everything up to slot {slot}"],
                   ("node", "state", "role", "applied slot"), _nodes_view(cluster))

        yield _check_step(cluster, "replicate check: all nodes agree again", rows=50)
    finally:
        if cluster is not None:
            cluster.destroy()
        shutil.rmtree(root, ignore_errors=True)
    yield Step("Stopped and removed the demo cluster",
               [f"the whole demo took {time.monotonic() - started:.1f} s"])


def run_quietly() -> list[Step]:
    """The demo without rendering (tests)."""
    return list(steps())

