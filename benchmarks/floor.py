"""The floors of the targets: what this machine allows replicate's design, measured.

**W3 and W4, the relay.** The direct script (a SELECT by primary key, ``SELECT 1``) through
``socat`` (compiled, a process per connection, no parsing at all) to the same node: what a
relay process between pgbench and PostgreSQL costs at the least (``relay_command``). W3's
floor serves both of its variants (local and linearizable reads). Without socat on PATH these
floors are not measured.

**W2, the writes.**

A replicated write, whatever the code that carries it, asks the three nodes for this much work
(DESIGN.md): a majority (two nodes) store its value durably before it counts as chosen, and
every node (three) then applies the statement. The *floor* run does just that work with pgbench
directly on the three nodes at once, and nothing else: no proxies, no Paxos state, no network
hop between processes but pgbench's own, no bookkeeping (outcomes, the applied slot, chosen
marks, request ids). It is generous on purpose: the batches hold every client's write.

- **Batches.** ``batch = min(clients, 64)`` writes per transaction (the engine's largest batch):
  with one batch in flight, a batch can at most hold a write of every client.
- **Streams.** One pgbench client each, all started together, each running the same number of
  writes (``-t``), so the run ends when the slowest node has done its share:

  - 1 client: on the first node the *chain* a lone client waits for: the value stored durably
    (one ``floor_log`` row, synchronous commit), then the statement applied in its own
    transaction with ``synchronous_commit = off``. On the second node the durable store and the
    apply as two streams; on the third the apply.
  - more clients: on two nodes a durable store of ``batch`` log rows per transaction and an
    apply of ``batch`` upserts per transaction (``synchronous_commit = off``); on the third the
    apply only.

- **Numbers.** Writes per second = writes per stream / wall time of the whole run (every node
  has applied them all). At 1 client the p50/p99 are the chain's (pgbench ``-l``); with more
  clients a write's latency is not modelled (None).

The log row carries a payload as long as the write's entry (``payload_size``), like
``replicate.log``. The tables are ``floor_accounts`` (the same rows as ``accounts``) and
``floor_log``, unregistered, on every node. A target above the floor cannot be met on this
machine by any implementation of the design; the share of the floor a replicated run reaches
says how much of what is left is the implementation's.
"""

from __future__ import annotations

import shutil
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from replicate.command import Entry, Param

MAX_BATCH = 64         # the engine's max_batch (replicate/runtime/engine.py)
LOG_DDL = "CREATE TABLE floor_log (slot bigserial PRIMARY KEY, ballot bigint NOT NULL, payload bytea NOT NULL)"
UPSERT = ("INSERT INTO floor_accounts (id, owner, balance) VALUES (:id{i}, 'w2', 1) "
          "ON CONFLICT (id) DO UPDATE SET balance = floor_accounts.balance + 1;\n")


def relay_command(listen_port: int, node_port: int) -> list[str] | None:
    """socat relaying 127.0.0.1:``listen_port`` to the node, TCP_NODELAY both ways like the
    proxy; None without socat."""
    exe = shutil.which("socat")
    if exe is None:
        return None
    return [exe, f"TCP-LISTEN:{listen_port},bind=127.0.0.1,fork,reuseaddr,nodelay",
            f"TCP:127.0.0.1:{node_port},nodelay"]


def payload_size(sql: str) -> int:
    """The length of a log entry for ``sql`` with one small parameter (replicate.command)."""
    return len(Entry(sql, (Param(b"1234"),)).encode())


def batch_size(clients: int) -> int:
    return max(1, min(clients, MAX_BATCH))


def _store(rows: int, size: int) -> str:
    """One durable transaction storing ``rows`` log rows of ``size`` bytes (an accept)."""
    literal = "'\\x" + "ab" * size + "'::bytea"
    if rows == 1:
        return f"INSERT INTO floor_log (ballot, payload) VALUES (1, {literal});\n"
    return (f"INSERT INTO floor_log (ballot, payload) SELECT 1, {literal} "
            f"FROM generate_series(1, {rows});\n")


def _apply(writes: int, rows: int) -> str:
    """One transaction applying ``writes`` upserts with synchronous_commit off (an apply)."""
    sets = "".join(f"\\set id{i} random(1, {rows})\n" for i in range(writes))
    return (sets + "BEGIN;\nSET LOCAL synchronous_commit TO off;\n"
            + "".join(UPSERT.format(i=i) for i in range(writes)) + "COMMIT;\n")


@dataclass(frozen=True)
class Stream:
    """One pgbench client on one node: its script and how many transactions it runs."""

    node: int            # index into the cluster's nodes
    role: str            # "chain", "store" or "apply"
    script: str
    transactions: int


def plan(clients: int, writes: int, rows: int, size: int) -> list[Stream]:
    """The streams of a floor run doing ``writes`` replicated writes (rounded up to a whole
    number of batches) for ``clients`` clients, on three nodes (pure)."""
    batch = batch_size(clients)
    txns = max(1, -(-writes // batch))
    store, apply = _store(batch, size), _apply(batch, rows)
    if clients == 1:
        chain = _store(1, size) + apply
        return [Stream(0, "chain", chain, txns), Stream(1, "store", store, txns),
                Stream(1, "apply", apply, txns), Stream(2, "apply", apply, txns)]
    return [Stream(0, "store", store, txns), Stream(0, "apply", apply, txns),
            Stream(1, "store", store, txns), Stream(1, "apply", apply, txns),
            Stream(2, "apply", apply, txns)]


@dataclass
class FloorRun:
    writes: int = 0
    seconds: float = 0.0
    tps: float = 0.0                     # replicated writes per second, every node done
    latencies_ms: list[float] = field(default_factory=list)  # the chain's, at 1 client
    error: str | None = None


def run(ports: list[int], streams: list[Stream], *, clients: int, mode: str, workdir: Path,
        env: dict[str, str], timeout: float,
        read_latencies: Callable[[Path, str], list[float]],
        dbname: str = "postgres") -> FloorRun:
    """Start every stream's pgbench at once; the run's writes per second when all are done."""
    procs: list[tuple[Stream, subprocess.Popen, str]] = []
    errors: list[str] = []
    for i, s in enumerate(streams):
        script = workdir / f"floor-{s.node}-{s.role}-{i}.sql"
        script.write_text(s.script)
        prefix = f"floor{time.monotonic_ns()}{i}"
        cmd = ["pgbench", "-n", "-h", "127.0.0.1", "-p", str(ports[s.node]), "-U", "postgres",
               "-c", "1", "-j", "1", "-t", str(s.transactions), "-M", mode, "-f", str(script)]
        if s.role == "chain":
            cmd += ["-l", "--log-prefix", str(workdir / prefix)]
        procs.append((s, subprocess.Popen(cmd + [dbname], stdout=subprocess.PIPE,
                                          stderr=subprocess.PIPE, text=True, env=env), prefix))
    started = time.monotonic()
    outputs: dict[int, tuple[int, str]] = {}

    def wait(i: int, p: subprocess.Popen) -> None:
        try:
            _, err = p.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            p.kill()
            _, err = p.communicate()
            err = f"did not finish within {timeout:.0f} s"
        outputs[i] = (p.returncode, err)

    threads = [threading.Thread(target=wait, args=(i, p)) for i, (_, p, _) in enumerate(procs)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    seconds = time.monotonic() - started
    out = FloorRun(seconds=seconds)
    for i, (s, _, prefix) in enumerate(procs):
        code, err = outputs[i]
        if code != 0:
            lines = [ln for ln in err.splitlines() if "error" in ln.lower()]
            errors.append(f"floor {s.role} on node {s.node + 1}: "
                          + (lines[0] if lines else err.strip()[-200:] or f"exit {code}"))
        if s.role == "chain":
            out.latencies_ms = read_latencies(workdir, prefix)
    batch = batch_size(clients)
    out.writes = streams[0].transactions * batch
    if errors:
        out.error = errors[0]
    elif seconds > 0:
        out.tps = out.writes / seconds
    return out
