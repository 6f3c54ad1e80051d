"""The end-to-end benchmark of issue 8: pgbench directly against a node and through the proxies.

``python -m benchmarks [--quick] [--clients 1,8,32] [--modes simple,prepared] [--duration S]
[--rounds N] [--workloads W1,W2,W3,W4] [--via leader|follower] [--out DIR]``

One run:

1. creates ONE local 3-node cluster (fsync on, full_page_writes on: honest numbers) in a fresh
   directory under /tmp on a random free port range on 127.0.0.1, starts it and its proxies and
   waits for a leader;
2. creates ``accounts(id int primary key, owner text not null, balance numeric(12,2) not null)``
   and an unregistered copy ``accounts_direct`` on every node, preloads the same rows into both,
   and registers ``accounts`` (``replicate.admin.add_table``);
3. drives pgbench (``-f`` script, ``-T`` seconds, ``-l`` per-transaction logs) for every cell
   (workload, protocol mode, client count): "direct" against the PostgreSQL of one node, then
   "proxied" through that node's proxy (or the other way round in odd rounds), for several
   rounds, so that slow drift of the machine hits both sides alike;
4. reports per configuration: throughput (median of the rounds' tps), p50 and p99 latency (exact,
   from every transaction of every round), the proxied/direct ratios, WAL syncs per 1,000
   transactions on each node (``pg_stat_wal.wal_sync`` deltas) and the CPU seconds of all three
   proxies per 1,000 transactions (utime + stime from /proc); and for memory and storage: WAL
   bytes and database bytes per transaction on each node (``pg_stat_wal.wal_bytes`` and
   ``pg_database_size`` deltas; proxied against direct as a ratio), each proxy's resident set
   after each configuration (VmRSS from /proc; at the start of the run too), and each proxy's
   peak resident set over the whole run (VmHWM); tables on stdout, ``bench.json`` and
   ``bench.png``;
5. destroys the cluster in a ``finally`` (also on Ctrl-C and SIGTERM).

Workloads (pgbench scripts):

- W1 single-row INSERT of a random new id (``ON CONFLICT DO NOTHING`` for the rare repeat);
- W2 upsert by primary key (``ON CONFLICT (id) DO UPDATE SET balance = accounts.balance + 1``);
- W3 SELECT by primary key; through the proxy with read consistency ``local`` and
  ``linearizable`` (set per connection with ``PGOPTIONS=-c replicate.read_consistency=...``,
  which the proxy reads back from the node); both compare with one direct measurement;
- W4 ``SELECT 1``, relayed (the proxy's own overhead).

Direct writes go to ``accounts_direct`` (direct writes to the registered table are refused by
its guard trigger); direct reads read ``accounts`` itself.

Nothing here asserts timings; it measures and reports.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path

import psycopg
from psycopg.conninfo import conninfo_to_dict

from benchmarks import floor
from replicate.admin import add_table, cluster_status
from replicate.cluster import LocalCluster, find_free_range
from replicate.config import write_config

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUT = ROOT / "benchmarks" / "results"

TABLE_DDL = ("CREATE TABLE {name} (id int PRIMARY KEY, owner text NOT NULL, "
             "balance numeric(12,2) NOT NULL)")
PRELOAD = ("INSERT INTO {name} (id, owner, balance) "
           "SELECT g, 'owner ' || g, 100 FROM generate_series(1, {rows}) AS g")
# Settle time after a write run before the WAL counters are read: PostgreSQL 15 backends that
# stay connected (the proxies' own connections) flush their statistics when they go idle and
# their last flush is over a second old; without this wait part of one run's WAL syncs would be
# counted in the next run.
WRITE_SETTLE_S = 1.5


@dataclass(frozen=True)
class Workload:
    key: str              # as reported: W1, W2, W3-local, W3-linearizable, W4
    group: str            # W1 .. W4: the cell it runs in; W3's two variants share one direct run
    title: str
    writes: bool
    script: str           # pgbench script; {table} is accounts or accounts_direct
    consistency: str | None = None

    def script_for(self, table: str, rows: int) -> str:
        return self.script.format(table=table, rows=rows)


WORKLOADS = (
    Workload("W1", "W1", "single-row INSERT", True,
             "\\set id random(1000001, 2000000000)\n"
             "INSERT INTO {table} (id, owner, balance) VALUES (:id, 'w1', 1) "
             "ON CONFLICT DO NOTHING;\n"),
    Workload("W2", "W2", "upsert by primary key", True,
             "\\set id random(1, {rows})\n"
             "INSERT INTO {table} (id, owner, balance) VALUES (:id, 'w2', 1) "
             "ON CONFLICT (id) DO UPDATE SET balance = {table}.balance + 1;\n"),
    Workload("W3-local", "W3", "SELECT by primary key, read consistency local", False,
             "\\set id random(1, {rows})\n"
             "SELECT owner, balance FROM accounts WHERE id = :id;\n", "local"),
    Workload("W3-linearizable", "W3", "SELECT by primary key, read consistency linearizable",
             False,
             "\\set id random(1, {rows})\n"
             "SELECT owner, balance FROM accounts WHERE id = :id;\n", "linearizable"),
    Workload("W4", "W4", "SELECT 1 relayed", False, "SELECT 1;\n"),
)
GROUPS = ("W1", "W2", "W3", "W4")


@dataclass
class Target:
    """One side of a cell: direct (workload None for W3: shared) or proxied with a workload."""

    kind: str                     # "direct" | "proxied"
    workload: Workload
    key: str                      # the workload key the measurement is stored under

    @property
    def label(self) -> str:
        return f"{self.key} {self.kind}"


@dataclass
class Run:
    """One pgbench invocation."""

    tps: float = 0.0
    transactions: int = 0
    failed: int = 0
    latencies_ms: list[float] = field(default_factory=list)
    wal_syncs: dict[str, int] = field(default_factory=dict)
    wal_bytes: dict[str, int] = field(default_factory=dict)
    wal_fpi: dict[str, int] = field(default_factory=dict)
    db_bytes: dict[str, int] = field(default_factory=dict)
    proxy_cpu_s: float = 0.0
    proxy_rss_kb: dict[str, int] = field(default_factory=dict)  # after the run, per proxy
    error: str | None = None


@dataclass
class Settings:
    clients: list[int]
    modes: list[str]
    groups: list[str]
    duration: float
    rounds: int
    rows: int
    via: str
    out: Path
    quick: bool
    read_lease_ms: int | None = None  # None: the configuration's default
    floor: bool = True  # measure the floors of the W2, W3 and W4 cells (benchmarks/floor.py)


# -- the machine -----------------------------------------------------------------


def machine() -> dict:
    mem_gb = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem_gb = round(int(line.split()[1]) / 1024 / 1024, 1)
    except OSError:
        pass
    cpu_model = None
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu_model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        pgbench = subprocess.run(["pgbench", "--version"], capture_output=True, text=True,
                                 timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        pgbench = None
    return {"cpus": os.cpu_count(), "cpu_model": cpu_model, "memory_gb": mem_gb,
            "kernel": platform.release(), "python": platform.python_version(),
            "pgbench": pgbench, "load_average_at_start": list(os.getloadavg())}


# -- measurements ------------------------------------------------------------------


def proc_cpu_seconds(pid: int | None) -> float:
    """utime + stime of a process (all its threads), in seconds; 0 if it is gone."""
    if pid is None:
        return 0.0
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0.0
    fields = stat.rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    return (int(fields[11]) + int(fields[12])) / ticks  # fields 14 and 15 of proc(5)


def proc_memory_kb(pid: int | None, key: str = "VmRSS") -> int | None:
    """A memory figure of a process from /proc/PID/status (VmRSS: resident now, VmHWM: the
    peak resident set), in KiB; None if the process is gone."""
    if pid is None:
        return None
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return None


def mib(kb: int | None) -> float | None:
    return None if kb is None else round(kb / 1024, 1)


@dataclass(frozen=True)
class Sample:
    """Counters read before and after a run; a run's figures are the differences."""

    wal_syncs: dict[str, int | None]
    wal_bytes: dict[str, int | None]
    wal_fpi: dict[str, int | None]   # full-page images: a page's first change after a checkpoint
    db_bytes: dict[str, int | None]
    proxy_cpu_s: float
    proxy_rss_kb: dict[str, int | None]


def deltas(before: dict[str, int | None], after: dict[str, int | None]) -> dict[str, int]:
    return {k: after[k] - before[k] for k in before  # type: ignore[operator]
            if before[k] is not None and after.get(k) is not None}


WAL_QUERY = "SELECT wal_sync, wal_bytes, wal_fpi FROM pg_stat_wal"
# PostgreSQL 18 moved the WAL sync count from pg_stat_wal to pg_stat_io ("normal": the syncs
# of commits and WAL writes; "init" would add the syncs of new WAL segments)
WAL_QUERY_18 = ("SELECT (SELECT coalesce(sum(fsyncs), 0) FROM pg_stat_io "
                "WHERE object = 'wal' AND context = 'normal'), wal_bytes, wal_fpi FROM pg_stat_wal")


class Probe:
    """Per node: WAL syncs, WAL bytes and database size; per proxy: CPU time and memory."""

    def __init__(self, cluster: LocalCluster) -> None:
        self.cluster = cluster
        self.conns = {n.name: psycopg.connect(n.dsn, autocommit=True) for n in cluster.nodes}
        self.proxy_pids = {p.name: p.pid() for p in cluster.proxies}
        # pg_stat_wal exists from PostgreSQL 14 on
        self.wal_available = all(self._wal_one(c)[0] is not None for c in self.conns.values())

    @staticmethod
    def _wal_one(conn: psycopg.Connection) -> tuple[int | None, int | None, int | None]:
        try:
            syncs, size, fpi = conn.execute(
                WAL_QUERY_18 if conn.info.server_version >= 180000 else WAL_QUERY).fetchone()
            return int(syncs), int(size), int(fpi)
        except psycopg.Error:
            return None, None, None

    @staticmethod
    def _db_size(conn: psycopg.Connection) -> int | None:
        try:
            return int(conn.execute("SELECT pg_database_size(current_database())").fetchone()[0])
        except psycopg.Error:
            return None

    def sample(self) -> Sample:
        wal = {name: self._wal_one(conn) for name, conn in self.conns.items()}
        return Sample(
            wal_syncs={name: w[0] for name, w in wal.items()},
            wal_bytes={name: w[1] for name, w in wal.items()},
            wal_fpi={name: w[2] for name, w in wal.items()},
            db_bytes={name: self._db_size(conn) for name, conn in self.conns.items()},
            proxy_cpu_s=sum(proc_cpu_seconds(pid) for pid in self.proxy_pids.values()),
            proxy_rss_kb={name: proc_memory_kb(pid) for name, pid in self.proxy_pids.items()})

    def peak_rss_mb(self) -> dict[str, float | None]:
        """Each proxy's peak resident set so far (VmHWM), in MiB."""
        return {name: mib(proc_memory_kb(pid, "VmHWM"))
                for name, pid in self.proxy_pids.items()}

    def close(self) -> None:
        for conn in self.conns.values():
            conn.close()


_TPS = re.compile(r"^tps = ([\d.]+) \(without initial connection time\)", re.M)
_DONE = re.compile(r"^number of transactions actually processed: (\d+)", re.M)
_FAILED = re.compile(r"^number of failed transactions: (\d+)", re.M)


def read_latencies(log_dir: Path, prefix: str) -> list[float]:
    """Per-transaction latencies (ms) from pgbench -l logs: ``client txn time_us script ...``."""
    out: list[float] = []
    for path in log_dir.glob(f"{prefix}.*"):
        with open(path, encoding="utf-8") as f:
            for line in f:
                parts = line.split()
                if len(parts) >= 3 and parts[2].isdigit():
                    out.append(int(parts[2]) / 1000.0)
        path.unlink()
    return out


def pgbench(port: int, script: Path, *, clients: int, mode: str, duration: float,
            log_dir: Path, env: dict[str, str]) -> Run:
    prefix = f"pgb{uuid.uuid4().hex[:8]}"
    threads = max(1, min(clients, os.cpu_count() or 1))
    cmd = ["pgbench", "-n", "-h", "127.0.0.1", "-p", str(port), "-U", "postgres",
           "-c", str(clients), "-j", str(threads), "-T", str(max(1, round(duration))),
           "-M", mode, "-f", str(script), "-l", "--log-prefix", str(log_dir / prefix),
           "postgres"]
    run = Run()
    try:
        result = subprocess.run(cmd, capture_output=True, text=True, env=env,
                                timeout=duration + 60)
    except subprocess.TimeoutExpired:
        run.error = f"pgbench did not finish within {duration + 60:.0f} s"
        read_latencies(log_dir, prefix)
        return run
    run.latencies_ms = read_latencies(log_dir, prefix)
    if m := _TPS.search(result.stdout):
        run.tps = float(m.group(1))
    if m := _DONE.search(result.stdout):
        run.transactions = int(m.group(1))
    if m := _FAILED.search(result.stdout):
        run.failed = int(m.group(1))
    if result.returncode != 0 or not run.transactions:
        lines = [ln for ln in result.stderr.splitlines() if "error" in ln.lower()]
        run.error = (lines[0] if lines else result.stderr.strip()[-300:]
                     or f"pgbench exited {result.returncode}")
    return run


# -- the cluster ---------------------------------------------------------------------


def wait_for_leader(cluster: LocalCluster, timeout: float = 30.0) -> str:
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        try:
            status = cluster_status(cluster.config)
            if status.leader:
                return status.leader
        except Exception as exc:  # noqa: BLE001 - proxies may still be starting
            last = exc
        time.sleep(0.2)
    raise RuntimeError(f"no leader within {timeout:.0f} s ({last})")


def prepare(cluster: LocalCluster, rows: int) -> None:
    """Tables on every node, the same rows everywhere, then register ``accounts``; the floor's
    two tables (benchmarks/floor.py) stay unregistered."""
    for node in cluster.nodes:
        with psycopg.connect(node.dsn, autocommit=True) as conn:
            for name in ("accounts", "accounts_direct", "floor_accounts"):
                conn.execute(TABLE_DDL.format(name=name))
                conn.execute(PRELOAD.format(name=name, rows=rows))
                conn.execute(f"VACUUM ANALYZE {name}")
            conn.execute(floor.LOG_DDL)
    add_table(cluster.config, "accounts")


def wait_writable(host: str, port: int, timeout: float = 30.0) -> None:
    """Until an upsert through the proxy succeeds (the proxy has loaded the registration)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            with psycopg.connect(host=host, port=port, user="postgres", dbname="postgres",
                                 autocommit=True, connect_timeout=10) as conn:
                conn.execute("INSERT INTO accounts (id, owner, balance) VALUES (1, 'warm', 1) "
                             "ON CONFLICT (id) DO UPDATE SET balance = accounts.balance + 1")
                return
        except psycopg.Error as exc:
            if time.monotonic() > deadline:
                raise RuntimeError(f"writes through the proxy at {host}:{port} fail: {exc}")
            time.sleep(0.3)


def wait_writable_relay(port: int, timeout: float = 10.0) -> None:
    """Until a connection through the floor's relay reaches the node."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            with psycopg.connect(host="127.0.0.1", port=port, user="postgres",
                                 dbname="postgres", connect_timeout=5) as conn:
                conn.execute("SELECT 1")
                return
        except psycopg.Error as exc:
            if time.monotonic() > deadline:
                raise RuntimeError(f"the relay at 127.0.0.1:{port} does not reach the node: "
                                   f"{exc}") from None
            time.sleep(0.1)


def run_check(cluster: LocalCluster) -> dict:
    """``replicate check``: do the nodes hold the same rows after the run?"""
    exe = Path(sys.executable).parent / "replicate"
    cmd = [str(exe), "check", "--config", str(cluster.config_path), "--json"]
    if not exe.exists():
        cmd = [sys.executable, "-m", "replicate.cli", *cmd[1:]]
    try:
        result = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    except subprocess.TimeoutExpired:
        return {"exit_code": None, "error": "replicate check did not finish within 120 s"}
    out: dict = {"exit_code": result.returncode}
    if result.returncode != 0:
        out["error"] = (result.stderr or result.stdout).strip()[-500:]
    return out


# -- the run ---------------------------------------------------------------------------


def cell_targets(group: str) -> list[Target]:
    loads = [w for w in WORKLOADS if w.group == group]
    return [Target("direct", loads[0], group)] + [Target("proxied", w, w.key) for w in loads]


def aggregate(runs: list[Run], node_names: list[str]) -> dict:
    tps = [r.tps for r in runs if r.error is None]
    lat = sorted(x for r in runs for x in r.latencies_ms)
    txns = sum(r.transactions for r in runs)

    def pct(q: float) -> float | None:
        if not lat:
            return None
        return round(lat[min(len(lat) - 1, int(q * len(lat)))], 3)

    def per_node(attr: str, scale: int, digits: int) -> dict[str, float | None]:
        out: dict[str, float | None] = {}
        for name in node_names:
            values = [getattr(r, attr).get(name) for r in runs]
            if txns and all(v is not None for v in values):
                out[name] = round(scale * sum(values) / txns, digits)  # type: ignore[arg-type]
            else:
                out[name] = None
        return out

    rss: dict[str, float | None] = {}  # the largest after any of the runs
    for r in runs:
        for name, kb in r.proxy_rss_kb.items():
            rss[name] = max(rss.get(name) or 0.0, mib(kb))  # type: ignore[type-var]
    return {
        "tps": round(statistics.median(tps), 1) if tps else 0.0,
        "tps_rounds": [round(r.tps, 1) for r in runs],
        "p50_ms": pct(0.50),
        "p99_ms": pct(0.99),
        "transactions": txns,
        "failed": sum(r.failed for r in runs),
        "wal_syncs_per_1k": per_node("wal_syncs", 1000, 1),
        "wal_bytes_per_txn": per_node("wal_bytes", 1, 0),
        "wal_fpi_per_1k": per_node("wal_fpi", 1000, 1),
        "db_bytes_per_txn": per_node("db_bytes", 1, 0),
        "proxy_cpu_s_per_1k": round(1000 * sum(r.proxy_cpu_s for r in runs) / txns, 3)
        if txns else None,
        "proxy_rss_mb": rss,
        "errors": sorted({r.error for r in runs if r.error}),
    }


def ratio(a: float | None, b: float | None) -> float | None:
    if a is None or b is None or not b:
        return None
    return round(a / b, 3)


def worst(per_node: dict[str, float | None]) -> float | None:
    values = list(per_node.values())
    if not values or any(v is None for v in values):
        return None
    return max(values)  # type: ignore[type-var]


def build_comparisons(results: list[dict], node: str) -> list[dict]:
    """Proxied against direct per cell; ``node`` is the one the direct runs used."""
    index = {(r["workload"], r["mode"], r["clients"], r["target"]): r for r in results}
    out = []
    for r in results:
        if r["target"] != "proxied":
            continue
        group = next(w.group for w in WORKLOADS if w.key == r["workload"])
        d = index.get((group, r["mode"], r["clients"], "direct"))
        if d is None:
            continue
        # W3's floor (the read through socat) serves both of its variants
        f = index.get((r["workload"], r["mode"], r["clients"], "floor")) \
            or index.get((group, r["mode"], r["clients"], "floor"))
        out.append({
            "workload": r["workload"], "mode": r["mode"], "clients": r["clients"],
            "direct_tps": d["tps"], "proxied_tps": r["tps"],
            "tps_ratio": ratio(r["tps"], d["tps"]),
            "direct_p50_ms": d["p50_ms"], "proxied_p50_ms": r["p50_ms"],
            "p50_ratio": ratio(r["p50_ms"], d["p50_ms"]),
            "direct_p99_ms": d["p99_ms"], "proxied_p99_ms": r["p99_ms"],
            "direct_wal_syncs_per_1k": d["wal_syncs_per_1k"],
            "proxied_wal_syncs_per_1k": r["wal_syncs_per_1k"],
            "proxy_cpu_s_per_1k": r["proxy_cpu_s_per_1k"],
            # storage: the direct node against the node of the cluster that wrote the most
            "direct_wal_bytes_per_txn": d["wal_bytes_per_txn"].get(node),
            "proxied_wal_bytes_per_txn": r["wal_bytes_per_txn"],
            "wal_bytes_ratio": ratio(worst(r["wal_bytes_per_txn"]),
                                     d["wal_bytes_per_txn"].get(node)),
            "direct_wal_fpi_per_1k": d["wal_fpi_per_1k"].get(node),
            "proxied_wal_fpi_per_1k": r["wal_fpi_per_1k"],
            "direct_db_bytes_per_txn": d["db_bytes_per_txn"].get(node),
            "proxied_db_bytes_per_txn": r["db_bytes_per_txn"],
            "db_bytes_ratio": ratio(worst(r["db_bytes_per_txn"]),
                                    d["db_bytes_per_txn"].get(node)),
            "proxy_rss_mb": r["proxy_rss_mb"],
            # what the machine allows the design (benchmarks/floor.py); None if not measured
            "floor_tps": f["tps"] if f else None,
            "floor_tps_ratio": ratio(f["tps"], d["tps"]) if f else None,
            "floor_p50_ms": f["p50_ms"] if f else None,
            "floor_p50_ratio": ratio(f["p50_ms"], d["p50_ms"]) if f else None,
            "share_of_floor": ratio(r["tps"], f["tps"]) if f else None,
            "errors": d["errors"] + r["errors"] + (f["errors"] if f else []),
        })
    return out


TARGETS = (
    # (name, workload, clients, metric, comparison, goal)
    ("W2 at 32 clients: >= 0.6x direct tps", "W2", 32, "tps_ratio", ">=", 0.6),
    ("W2 at 1 client: >= 0.3x direct tps", "W2", 1, "tps_ratio", ">=", 0.3),
    ("W2 at 1 client: p50 <= 3.3x direct", "W2", 1, "p50_ratio", "<=", 3.3),
    ("W3 linearizable: p50 <= 2x direct", "W3-linearizable", None, "p50_ratio", "<=", 2.0),
    ("W4: >= 0.7x direct tps", "W4", None, "tps_ratio", ">=", 0.7),
)


def build_targets(comparisons: list[dict]) -> list[dict]:
    out = []
    for name, workload, clients, metric, op, goal in TARGETS:
        for c in comparisons:
            if c["workload"] != workload or (clients is not None and c["clients"] != clients):
                continue
            value = c[metric]
            met = None if value is None else (value >= goal if op == ">=" else value <= goal)
            # the same metric for the floor: can the goal be met on this machine at all?
            limit = c.get("floor_" + metric)
            within = None if limit is None else (limit >= goal if op == ">=" else limit <= goal)
            out.append({"target": name, "workload": workload, "mode": c["mode"],
                        "clients": c["clients"], "metric": metric, "goal": f"{op} {goal}",
                        "value": value, "met": met, "floor": limit,
                        "reachable_here": within})
    return out


def run_benchmark(settings: Settings) -> dict:
    started = datetime.now(timezone.utc)
    scratch = Path(tempfile.mkdtemp(prefix="replicate-bench-", dir="/tmp"))
    os.chmod(scratch, 0o755)
    log_dir = scratch / "pgbench"
    log_dir.mkdir()
    scripts_dir = scratch / "scripts"
    scripts_dir.mkdir()
    cluster: LocalCluster | None = None
    probe: Probe | None = None
    relay: subprocess.Popen | None = None
    try:
        start = random.Random(os.getpid() ^ uuid.uuid4().int).randrange(20000, 60000)
        cluster = LocalCluster.create(scratch / "cluster", nodes=3,
                                      base_port=find_free_range(6, start=start), fsync=True)
        if settings.read_lease_ms is not None:
            write_config(replace(cluster.config, read_lease_ms=settings.read_lease_ms),
                         cluster.config_path)
            cluster.config = replace(cluster.config, read_lease_ms=settings.read_lease_ms)
        cluster.start()
        cluster.start_proxies()
        leader = wait_for_leader(cluster)
        prepare(cluster, settings.rows)
        leader = wait_for_leader(cluster)
        names = [n.name for n in cluster.nodes]
        chosen = leader if settings.via == "leader" else next(n for n in names if n != leader)
        node = cluster.node(chosen)
        node_port = int(conninfo_to_dict(node.dsn)["port"])
        proxy_host, proxy_port = cluster.proxy_address(chosen)
        wait_writable(proxy_host, proxy_port)
        with psycopg.connect(node.dsn) as conn:
            server_version = conn.execute("SHOW server_version").fetchone()[0]
        probe = Probe(cluster)
        rss_at_start = {name: mib(kb) for name, kb in probe.sample().proxy_rss_kb.items()}

        scripts: dict[tuple[str, str], Path] = {}
        for w in WORKLOADS:
            for kind, table in (("direct", "accounts_direct" if w.writes else "accounts"),
                                ("proxied", "accounts"), ("floor", "accounts")):
                path = scripts_dir / f"{w.key}-{kind}.sql"
                path.write_text(w.script_for(table, settings.rows))
                scripts[(w.key, kind)] = path

        base_env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
        base_env["PGCONNECT_TIMEOUT"] = "10"

        def one(target: Target, mode: str, clients: int, duration: float) -> Run:
            env = dict(base_env)
            if target.kind == "proxied" and target.workload.consistency:
                env["PGOPTIONS"] = f"-c replicate.read_consistency={target.workload.consistency}"
            port = {"proxied": proxy_port, "floor": relay_port}.get(target.kind, node_port)
            before = probe.sample()  # type: ignore[union-attr]
            run = pgbench(port, scripts[(target.workload.key, target.kind)], clients=clients,
                          mode=mode, duration=duration, log_dir=log_dir, env=env)
            if target.workload.writes:
                time.sleep(WRITE_SETTLE_S)
            after = probe.sample()  # type: ignore[union-attr]
            run.wal_syncs = deltas(before.wal_syncs, after.wal_syncs)
            run.wal_bytes = deltas(before.wal_bytes, after.wal_bytes)
            run.wal_fpi = deltas(before.wal_fpi, after.wal_fpi)
            run.db_bytes = deltas(before.db_bytes, after.db_bytes)
            run.proxy_cpu_s = after.proxy_cpu_s - before.proxy_cpu_s
            run.proxy_rss_kb = {k: v for k, v in after.proxy_rss_kb.items() if v is not None}
            return run

        node_ports = [int(conninfo_to_dict(n.dsn)["port"]) for n in cluster.nodes]
        # W3's and W4's floor: the same direct script through socat to the same node
        # (benchmarks/floor.py)
        relay_port = None
        if settings.floor and {"W3", "W4"} & set(settings.groups):
            relay_port = find_free_range(1, start=proxy_port + 100)
            cmd = floor.relay_command(relay_port, node_port)
            if cmd is None:
                relay_port = None
            else:
                relay = subprocess.Popen(cmd, stdout=subprocess.DEVNULL,
                                         stderr=subprocess.DEVNULL)
                wait_writable_relay(relay_port)
        entry_size = floor.payload_size(next(w for w in WORKLOADS if w.key == "W2")
                                        .script_for("accounts", settings.rows).splitlines()[1])

        def floor_run(mode: str, clients: int, direct_tps: float) -> Run:
            """The floor of a W2 cell: about a third of what direct did in ``duration``."""
            writes = max(floor.batch_size(clients), int(direct_tps * settings.duration * 0.35))
            streams = floor.plan(clients, writes, settings.rows, entry_size)
            fr = floor.run(node_ports, streams, clients=clients, mode=mode, workdir=log_dir,
                           env=base_env, timeout=10 * settings.duration + 60,
                           read_latencies=read_latencies)
            return Run(tps=fr.tps, transactions=fr.writes, latencies_ms=fr.latencies_ms,
                       error=fr.error)

        # Warm-up (not recorded): every script once, briefly, on both sides.
        for group in settings.groups:
            for target in cell_targets(group):
                one(target, settings.modes[0], 1, 1)

        cells = [(g, mode, c) for g in settings.groups for mode in settings.modes
                 for c in settings.clients]
        runs: dict[tuple[str, str, int, str], list[Run]] = {}
        total = len(cells) * settings.rounds
        done = 0
        for rnd in range(settings.rounds):
            for group, mode, clients in cells:
                targets = cell_targets(group)
                if rnd % 2:
                    targets.reverse()
                done += 1

                def keep(key: str, kind: str, label: str, run: Run) -> None:
                    runs.setdefault((key, mode, clients, kind), []).append(run)
                    note = f" ERROR {run.error}" if run.error else ""
                    print(f"[{done}/{total}] round {rnd + 1} {label:22} {mode:8} "
                          f"{clients:>2} clients: {run.tps:9.1f} tps{note}",
                          file=sys.stderr, flush=True)

                for target in targets:
                    keep(target.key, target.kind, target.label,
                         one(target, mode, clients, settings.duration))
                if group in ("W3", "W4") and relay_port is not None:
                    relayed = Target("floor", cell_targets(group)[0].workload, group)
                    keep(group, "floor", f"{group} floor (socat)",
                         one(relayed, mode, clients, settings.duration))
                if group == "W2" and settings.floor:
                    direct = runs[(group, mode, clients, "direct")][-1].tps
                    keep("W2", "floor", "W2 floor", floor_run(mode, clients, direct))

        results = []
        for (key, mode, clients, kind), rs in runs.items():
            w = next((w for w in WORKLOADS if w.key == key), None)
            results.append({
                "workload": key, "target": kind, "mode": mode, "clients": clients,
                "consistency": w.consistency if (w and kind == "proxied") else None,
                "table": "floor_accounts" if (kind, key) == ("floor", "W2") else "accounts_direct"
                if (kind == "direct" and w and w.writes) else "accounts",
                **aggregate(rs, names)})
        order = {k: i for i, k in enumerate(["W1", "W2", "W3", "W3-local", "W3-linearizable",
                                             "W4"])}
        results.sort(key=lambda r: (order[r["workload"]], r["mode"], r["clients"], r["target"]))
        check = run_check(cluster)
        comparisons = build_comparisons(results, chosen)
        peak_rss = probe.peak_rss_mb()
        finished = datetime.now(timezone.utc)
        return {
            "meta": {
                "started": started.isoformat(timespec="seconds"),
                "finished": finished.isoformat(timespec="seconds"),
                "elapsed_s": round((finished - started).total_seconds(), 1),
                "quick": settings.quick, "duration_s": settings.duration,
                "rounds": settings.rounds, "clients": settings.clients, "modes": settings.modes,
                "workloads": [w.key for w in WORKLOADS if w.group in settings.groups],
                "preloaded_rows": settings.rows, "fsync": True, "nodes": 3,
                "via": settings.via, "leader": leader, "node": chosen,
                "read_lease_ms": cluster.config.read_lease_ms,
                "postgresql": server_version, "wal_sync_available": probe.wal_available,
                "write_settle_s": WRITE_SETTLE_S,
                "floor": settings.floor, "floor_payload_bytes": entry_size,
                "floor_relay": "socat" if relay_port is not None else None,
                "proxy_rss_mb_at_start": rss_at_start,
                "proxy_peak_rss_mb": peak_rss,
                "machine": machine(),
                "notes": [
                    "tps: median over rounds (pgbench, without connection time); p50/p99: "
                    "over every transaction of every round (pgbench -l)",
                    "wal_syncs_per_1k and proxy_cpu_s_per_1k: per 1,000 transactions "
                    "(writes for W1/W2), summed over rounds; they include background activity "
                    "during the run and the settle time after write runs",
                    "direct W1/W2 write accounts_direct (unregistered); direct W3 reads "
                    "accounts; W3-local and W3-linearizable share the direct W3 run",
                    "wal_bytes_per_txn and db_bytes_per_txn: pg_stat_wal.wal_bytes and "
                    "pg_database_size deltas per transaction on each node; the ratios put the "
                    "cluster node with the most against the direct node; wal_fpi_per_1k: full-"
                    "page images per 1,000 transactions (pg_stat_wal.wal_fpi), the first change "
                    "to each page after a checkpoint, which the runner does not schedule",
                    "proxy_rss_mb: each proxy's largest VmRSS after one of the configuration's "
                    "runs (sessions closed); proxy_rss_mb_at_start: before the warm-up; "
                    "proxy_peak_rss_mb: VmHWM at the end (with sessions open)",
                    "floor of W3 and W4: the direct script (SELECT by primary key, SELECT 1) "
                    "through socat to the same node, the least a relay process adds (not "
                    "measured without socat); "
                    "floor of W2: the database work the design asks of the three nodes "
                    "per write (a durable log row on two, the statement on all three, in "
                    "batches of min(clients, 64)), done by pgbench on the nodes at once with "
                    "no proxies, no consensus and no bookkeeping (benchmarks/floor.py); "
                    "floor_* ratios are against the same direct run; a target's "
                    "reachable_here says whether the floor itself meets the goal; "
                    "share_of_floor: replicated tps / floor tps",
                ],
            },
            "results": results,
            "comparisons": comparisons,
            "targets": build_targets(comparisons),
            "check": check,
        }
    finally:
        if relay is not None:
            relay.terminate()
            try:
                relay.wait(10)
            except subprocess.TimeoutExpired:
                relay.kill()
        if probe is not None:
            probe.close()
        if cluster is not None:
            cluster.destroy()
        shutil.rmtree(scratch, ignore_errors=True)


# -- command line -------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> Settings:
    p = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true",
                   help="tiny run for the smoke test: W2 and W4, 1 client, simple mode, 2 s")
    p.add_argument("--clients", help="comma-separated client counts (default 1,8,32)")
    p.add_argument("--modes", help="pgbench -M modes (default simple,prepared)")
    p.add_argument("--workloads", help="groups to run, of W1,W2,W3,W4 (default all)")
    p.add_argument("--duration", type=int, help="whole seconds per pgbench run (default 3)")
    p.add_argument("--rounds", type=int, help="interleaved rounds (default 2)")
    p.add_argument("--rows", type=int, help="rows preloaded (default 10000)")
    p.add_argument("--via", choices=["leader", "follower"], default="leader",
                   help="drive the leader's node and proxy (default) or a follower's")
    p.add_argument("--read-lease-ms", type=int, dest="read_lease_ms",
                   help="the cluster's read_lease_ms (default: the configuration's, 500; "
                        "0 confirms every linearizable read with a round)")
    p.add_argument("--no-floor", action="store_true", dest="no_floor",
                   help="skip the floor runs of the W2, W3 and W4 cells (benchmarks/floor.py)")
    p.add_argument("--out", type=Path, help=f"output directory (default {DEFAULT_OUT}; "
                                            "with --quick a directory under /tmp)")
    a = p.parse_args(argv)

    def ints(text: str) -> list[int]:
        return [int(x) for x in text.split(",") if x.strip()]

    q = a.quick
    groups = [g.strip().upper() for g in (a.workloads or ("W2,W4" if q else ",".join(GROUPS)))
              .split(",") if g.strip()]
    bad = [g for g in groups if g not in GROUPS]
    if bad:
        p.error(f"unknown workloads {bad}: choose from {','.join(GROUPS)}")
    modes = [m.strip() for m in (a.modes or ("simple" if q else "simple,prepared")).split(",")]
    if any(m not in ("simple", "extended", "prepared") for m in modes):
        p.error("modes are simple, extended, prepared")
    def given(value, default):
        return default if value is None else value

    settings = Settings(
        clients=ints(given(a.clients, "1" if q else "1,8,32")), modes=modes, groups=groups,
        duration=float(given(a.duration, 2 if q else 3)), rounds=given(a.rounds, 1 if q else 2),
        rows=given(a.rows, 1000 if q else 10000), via=a.via,
        out=a.out or (Path(tempfile.gettempdir()) / "replicate-bench-quick" if q
                      else DEFAULT_OUT),
        quick=q, read_lease_ms=a.read_lease_ms, floor=not a.no_floor)
    if settings.duration < 1 or settings.duration > 600:
        p.error("--duration must be between 1 and 600 seconds")
    if settings.rounds < 1 or settings.rows < 1 or not settings.clients:
        p.error("--rounds, --rows and --clients need at least 1")
    if any(c < 1 or c > 64 for c in settings.clients):
        p.error("client counts must be between 1 and 64 (the nodes allow 100 connections)")
    return settings


def _on_sigterm(signum, frame):  # noqa: ARG001
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    from benchmarks import report

    settings = parse_args(argv)
    if shutil.which("pgbench") is None:
        print("pgbench is not installed", file=sys.stderr)
        return 2
    signal.signal(signal.SIGTERM, _on_sigterm)
    runs = len(settings.groups) * len(settings.modes) * len(settings.clients) * settings.rounds
    print(f"benchmark: {runs} cells x 2-3 pgbench runs of {settings.duration:g} s "
          f"({settings.rounds} interleaved rounds); results to {settings.out}",
          file=sys.stderr, flush=True)
    try:
        data = run_benchmark(settings)
    except KeyboardInterrupt:
        print("interrupted: the cluster was destroyed", file=sys.stderr)
        return 130
    settings.out.mkdir(parents=True, exist_ok=True)
    (settings.out / "bench.json").write_text(json.dumps(data, indent=2) + "\n")
    report.print_report(data)
    png = report.write_chart(data, settings.out / "bench.png")
    print(f"wrote {settings.out / 'bench.json'}" + (f" and {png}" if png else
                                                    " (no chart: matplotlib is not installed)"))
    errors = [c for c in data["comparisons"] if c["errors"]]
    return 1 if errors else 0
