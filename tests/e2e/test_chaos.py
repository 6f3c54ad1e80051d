"""Writes through real PostgreSQL clients while nodes and proxies are killed and paused.

Six psycopg clients write through the three proxies for ``REPLICATE_CHAOS_S`` seconds (30 in
CI; set it higher for a soak) while a seeded schedule SIGKILLs and SIGSTOPs one PostgreSQL
node or one proxy at a time, and brings it back. Four clients insert keys of their own and, when
a write's answer is lost (connection reset, a proxy gone, outcome unknown), retry the same key
through another proxy until it is in: a retry that meets the primary key tells the write was
applied by an earlier attempt. Two clients increment counters and never retry. Two more read,
each time on a new connection to any proxy, a key acknowledged before the read began: with the
default linearizable reads it must be there. Afterwards: every node applied the same slot and
holds the same rows, every acknowledged key is there once, each counter lies between its
acknowledged increments and those plus the unknown ones, and `replicate check` finds the nodes
consistent. The proxies hold at most ``REPLICATE_CHAOS_BACKLOG`` (200) chosen slots for a node
that is down, so the slots beyond are dropped and fetched again from the acceptors.
"""

from __future__ import annotations

import asyncio
import os
import random
import signal
import threading
import time
from dataclasses import dataclass, field

import psycopg
import pytest
from psycopg import errors

from replicate.check import run_check
from replicate.command import register_table
from replicate.runtime.client import ProxyClient

from .replicated import start_replicated, statuses

pytestmark = pytest.mark.e2e

CHAOS_S = float(os.environ.get("REPLICATE_CHAOS_S", "30"))
SEED = int(os.environ.get("REPLICATE_CHAOS_SEED", str(random.randrange(1_000_000))))
BACKLOG = int(os.environ.get("REPLICATE_CHAOS_BACKLOG", "200"))
KEY_WRITERS = 4
COUNTER_WRITERS = 2
READERS = 2


@dataclass
class Tally:
    acked: set[str] = field(default_factory=set)        # keys whose INSERT was answered OK
    applied_before: set[str] = field(default_factory=set)  # a retry met the primary key
    attempted: set[str] = field(default_factory=set)
    increments: dict[int, int] = field(default_factory=dict)  # writer -> acknowledged
    unknown: dict[int, int] = field(default_factory=dict)     # writer -> answer lost
    errors: list[str] = field(default_factory=list)           # errors that must not happen
    latest: dict[int, str] = field(default_factory=dict)      # writer -> last key acknowledged
    reads: int = 0                                             # reads that checked a key
    lock: threading.Lock = field(default_factory=threading.Lock)


def _dsn(cluster, name: str) -> str:
    host, port = cluster.proxy_address(name)
    return f"host={host} port={port} user=postgres dbname=postgres connect_timeout=2"


class Writer(threading.Thread):
    """Writes until ``writing_until``; a key writer then finishes its pending key."""

    def __init__(self, index: int, cluster, tally: Tally, writing_until: float,
                 give_up_at: float, counter: bool) -> None:
        super().__init__(daemon=True, name=f"writer-{index}")
        self.index, self.cluster, self.tally = index, cluster, tally
        self.writing_until, self.give_up_at, self.counter = writing_until, give_up_at, counter
        self.names = [p.name for p in cluster.proxies]
        self.proxy = index % len(self.names)
        self.conn: psycopg.Connection | None = None

    def _connection(self) -> psycopg.Connection:
        if self.conn is None or self.conn.closed or self.conn.broken:
            self.conn = psycopg.connect(_dsn(self.cluster, self.names[self.proxy]),
                                        autocommit=True)
        return self.conn

    def _failed(self) -> None:
        if self.conn is not None:
            try:
                self.conn.close()
            except Exception:  # noqa: BLE001 - a broken connection may fail to close
                pass
        self.conn = None
        self.proxy = (self.proxy + 1) % len(self.names)
        time.sleep(0.05)

    def run(self) -> None:
        try:
            self._counter() if self.counter else self._keys()
        except Exception as exc:  # noqa: BLE001 - reported by the test
            with self.tally.lock:
                self.tally.errors.append(f"{self.name} crashed: {exc!r}")

    def _keys(self) -> None:
        tally, n = self.tally, 0
        while time.monotonic() < self.writing_until:
            key = f"w{self.index}-{n:05d}"
            n += 1
            with tally.lock:
                tally.attempted.add(key)
            retried = False
            while True:
                if time.monotonic() > self.give_up_at:
                    with tally.lock:
                        tally.errors.append(f"{key}: still not in after the cluster healed")
                    return
                try:
                    self._connection().execute(
                        "INSERT INTO chaos (k, writer) VALUES (%s, %s)", (key, self.index))
                except errors.UniqueViolation:
                    with tally.lock:
                        if retried:
                            tally.applied_before.add(key)
                        else:
                            tally.errors.append(f"{key}: there before its first attempt")
                    break
                except psycopg.Error:
                    retried = True  # the answer was lost or the write refused: try again
                    self._failed()
                    continue
                with tally.lock:
                    tally.acked.add(key)
                    tally.latest[self.index] = key
                break

    def _counter(self) -> None:
        tally = self.tally
        while time.monotonic() < self.writing_until:
            try:
                self._connection().execute(
                    "UPDATE counters SET n = n + 1 WHERE writer = %s", (self.index,))
            except psycopg.Error:
                with tally.lock:
                    tally.unknown[self.index] = tally.unknown.get(self.index, 0) + 1
                self._failed()
                continue
            with tally.lock:
                tally.increments[self.index] = tally.increments.get(self.index, 0) + 1


class Reader(Writer):
    """Reads a key acknowledged before the read began, through any proxy, linearizably: the
    row must be there (a stale read is an error; a read that fails is only skipped)."""

    def run(self) -> None:
        tally, rng = self.tally, random.Random(self.index)
        while time.monotonic() < self.writing_until:
            with tally.lock:
                keys = list(tally.latest.values())
            if not keys:
                time.sleep(0.01)
                continue
            key = rng.choice(keys)
            try:
                found = self._connection().execute(
                    "SELECT count(*) FROM chaos WHERE k = %s", (key,)).fetchone()[0]
            except psycopg.Error:
                self._failed()
                continue
            with tally.lock:
                tally.reads += 1
                if found != 1:
                    tally.errors.append(f"{self.name} through {self.names[self.proxy]}: "
                                        f"{key}, acknowledged before the read, not found")
            self.proxy = rng.randrange(len(self.names))  # the next read through any proxy
            if self.conn is not None:
                self.conn.close()
                self.conn = None


def _faults(cluster, rng: random.Random, until: float, done: list[str]) -> None:
    """One fault at a time, each healed before the next: the cluster keeps a majority."""
    while time.monotonic() < until:
        time.sleep(rng.uniform(0.5, 1.5))
        kind = rng.choice(["kill proxy", "kill node", "pause node", "pause proxy"])
        name = rng.choice([n.name for n in cluster.nodes])
        node, proxy = cluster.node(name), cluster.proxy(name)
        held = rng.uniform(0.3, 2.5)
        if kind == "kill proxy":
            proxy.kill(signal.SIGKILL)
            time.sleep(held)
            cluster.start_proxies()
        elif kind == "kill node":
            node.kill(signal.SIGKILL)
            time.sleep(held)
            cluster.start()
        elif kind == "pause node":
            node.pause()
            time.sleep(held)
            node.resume()
        else:
            proxy.kill(signal.SIGSTOP)
            time.sleep(held)
            proxy.kill(signal.SIGCONT)
        done.append(f"{kind} {name} {held:.1f}s")


_STATUS_KEYS = ("role", "leader", "ballot", "commit_upto", "delivered_upto", "applied_upto",
                "pending_apply", "stalled")


def _converged(cluster, timeout: float = 90) -> tuple[list, list]:
    deadline = time.monotonic() + timeout
    while True:
        states = []
        for node in cluster.nodes:
            with psycopg.connect(node.dsn) as conn:
                states.append((conn.execute("SELECT slot FROM replicate.applied").fetchone()[0],
                               conn.execute("SELECT k, writer FROM chaos ORDER BY k").fetchall(),
                               conn.execute("SELECT writer, n FROM counters ORDER BY writer")
                               .fetchall()))
        if len({s[0] for s in states}) == 1:
            for other in states[1:]:
                assert other[1:] == states[0][1:], "nodes at the same applied slot differ"
            return states[0][1], states[0][2]
        if time.monotonic() > deadline:
            brief = {name: {k: s.get(k) for k in _STATUS_KEYS} if s else None
                     for name, s in asyncio.run(statuses(cluster)).items()}
            logs = "\n".join(f"--- {p.name} proxy log ---\n{p.log_tail(15)}"
                             for p in cluster.proxies)
            raise AssertionError(f"nodes did not converge: applied {[s[0] for s in states]}; "
                                 f"proxies {brief}\n{logs}")
        time.sleep(0.2)


# The faults, then up to ~2.5 min for the writers' last keys and 1.5 min to converge: a soak
# longer than the suite's 300 s timeout must not be cut off by it.
@pytest.mark.timeout(CHAOS_S + 300)
def test_no_acknowledged_write_is_lost_while_processes_are_killed_and_paused(
        make_cluster) -> None:
    print(f"\nchaos seed {SEED} (REPLICATE_CHAOS_SEED), {CHAOS_S:.0f} s")
    rng = random.Random(SEED)
    cluster = make_cluster(3)
    for node in cluster.nodes:
        with psycopg.connect(node.dsn, autocommit=True) as conn:
            conn.execute("CREATE TABLE chaos (k text PRIMARY KEY, writer int NOT NULL)")
            conn.execute("CREATE TABLE counters (writer int PRIMARY KEY, n int NOT NULL)")
    # A small apply backlog: a proxy whose node is down drops chosen slots beyond it and
    # fetches them again later, so the chaos also runs that path.
    config = start_replicated(cluster, write_timeout_s=5.0, apply_backlog=BACKLOG)

    async def register() -> None:
        async with ProxyClient(*cluster.proxy_address("n1")) as client:
            for table in ("chaos", "counters"):
                assert (await client.submit(register_table(table))).ok
    asyncio.run(register())
    with psycopg.connect(_dsn(cluster, "n1"), autocommit=True) as conn:
        for w in range(KEY_WRITERS, KEY_WRITERS + COUNTER_WRITERS):
            conn.execute("INSERT INTO counters (writer, n) VALUES (%s, 0)", (w,))

    tally = Tally()
    start = time.monotonic()
    writing_until = start + CHAOS_S
    writers = [Writer(i, cluster, tally, writing_until, writing_until + 120,
                      counter=i >= KEY_WRITERS)
               for i in range(KEY_WRITERS + COUNTER_WRITERS)]
    writers += [Reader(i, cluster, tally, writing_until, writing_until + 120, counter=False)
                for i in range(KEY_WRITERS + COUNTER_WRITERS,
                               KEY_WRITERS + COUNTER_WRITERS + READERS)]
    for w in writers:
        w.start()
    done: list[str] = []
    try:
        _faults(cluster, rng, writing_until, done)
    finally:
        cluster.start()
        for node in cluster.nodes:
            if node.status() == "paused":
                node.resume()
        for proxy in cluster.proxies:
            if proxy.is_running():
                proxy.kill(signal.SIGCONT)
        cluster.start_proxies()
    for w in writers:
        w.join(timeout=max(1.0, writing_until + 150 - time.monotonic()))
    print(f"faults: {done}")
    print(f"keys acknowledged {len(tally.acked)}, found applied on retry "
          f"{len(tally.applied_before)}; increments {tally.increments}, unknown {tally.unknown}; "
          f"reads {tally.reads}")
    assert not [w.name for w in writers if w.is_alive()], "a writer never finished"
    assert not tally.errors, tally.errors[:10]
    assert len(done) >= 3 and len(tally.acked) >= 50 and tally.reads >= 50

    rows, counters = _converged(cluster)
    keys = {k for k, _ in rows}
    assert len(keys) == len(rows)
    assert tally.acked | tally.applied_before <= keys, \
        sorted((tally.acked | tally.applied_before) - keys)[:10]
    assert keys <= tally.attempted
    assert keys == tally.acked | tally.applied_before  # every key writer finished its key
    for writer, n in counters:
        acked = tally.increments.get(writer, 0)
        assert acked <= n <= acked + tally.unknown.get(writer, 0), (writer, n, acked)
    report = run_check(config)
    assert report.consistent and not report.unchecked, report
    shed = sum(p.log_tail(100_000).count("fetched from the acceptors") for p in cluster.proxies)
    print(f"times a proxy dropped chosen slots beyond its backlog of {BACKLOG}: {shed}")


def _kv_cluster(make_cluster):
    """Three nodes with a table ``kv`` (not registered yet); the last node is the victim."""
    cluster = make_cluster(3)
    for node in cluster.nodes:
        with psycopg.connect(node.dsn, autocommit=True) as conn:
            conn.execute("CREATE TABLE kv (k int PRIMARY KEY, v text NOT NULL)")
    return cluster, cluster.nodes[2]


def _crash_once_applied(cluster, victim, slot: int) -> None:
    """SIGKILL the victim's whole process tree as soon as it applied ``slot``; restart it."""
    deadline = time.monotonic() + 10
    while _applied(victim) < slot:
        assert time.monotonic() < deadline, f"the victim did not apply slot {slot}"
        time.sleep(0.01)
    victim.kill(signal.SIGKILL, whole_tree=True)
    cluster.start()


def _applied(node) -> int:
    with psycopg.connect(node.dsn, connect_timeout=5) as conn:
        return conn.execute("SELECT slot FROM replicate.applied").fetchone()[0]


def test_a_node_that_lost_applied_slots_in_a_crash_catches_up_and_reads_wait(
        make_cluster) -> None:
    """Applies commit asynchronously: a node killed right after applying may come back
    without its last applied slots, while its proxy, which did not stop, still counts them as
    applied. Nothing else is written afterwards. The node must catch up by itself, and a read
    through its proxy must not answer from the node before it did."""
    cluster, victim = _kv_cluster(make_cluster)
    # No read leases: a Commit that grants one flushes the WAL (sql/008), every 150 ms, and so
    # would write the last apply out before the kill now and then.
    start_replicated(cluster, read_lease_ms=0)

    async def register() -> None:
        async with ProxyClient(*cluster.proxy_address("n1")) as client:
            assert (await client.submit(register_table("kv"))).ok
    asyncio.run(register())

    def write_then_crash(keys: range) -> int:
        with psycopg.connect(victim.dsn, autocommit=True) as conn:
            (walwriter,) = conn.execute("SELECT pid FROM pg_stat_activity "
                                        "WHERE backend_type = 'walwriter'").fetchone()
        # Stopped, the WAL writer cannot write the applies' asynchronous commits out; an
        # accept's synchronous commit writes out what came before it, not the apply after it.
        os.kill(walwriter, signal.SIGSTOP)
        with psycopg.connect(_dsn(cluster, "n1"), autocommit=True) as conn:
            for k in keys:
                conn.execute("INSERT INTO kv (k, v) VALUES (%s, 'x')", (k,))
        last = _applied(cluster.nodes[0])
        _crash_once_applied(cluster, victim, last)
        lost_to = _applied(victim)
        if lost_to == last:
            pytest.skip("the crash lost no applied slot (something wrote the WAL out)")
        return last

    # 1. Nobody reads or writes afterwards: the node catches up by itself.
    last = write_then_crash(range(1, 4))
    deadline = time.monotonic() + 15
    while _applied(victim) < last:
        assert time.monotonic() < deadline, \
            f"the node stayed at slot {_applied(victim)} < {last} with nothing written"
        time.sleep(0.1)

    # 2. A linearizable read through the node's proxy sees every acknowledged write.
    last = write_then_crash(range(4, 7))
    with psycopg.connect(_dsn(cluster, "n3"), autocommit=True) as conn:
        assert conn.execute("SELECT count(*) FROM kv").fetchone()[0] == 6
    assert _applied(victim) >= last

    # 3. So does a read of the node itself after a barrier through its proxy.
    last = write_then_crash(range(7, 10))

    async def barrier() -> int:
        async with ProxyClient(*cluster.proxy_address("n3")) as client:
            return await client.barrier()
    assert asyncio.run(barrier()) >= last
    with psycopg.connect(victim.dsn) as conn:
        assert conn.execute("SELECT count(*) FROM kv").fetchone()[0] == 9


def test_a_registration_survives_a_crash_of_the_node_right_after_its_apply(
        make_cluster) -> None:
    """Other applies commit asynchronously and a crash may lose them; a register entry's
    commits synchronously: a node that lost it would let direct writes to the table through,
    and its proxy's catalog would miss the table, until it was applied again."""
    cluster, victim = _kv_cluster(make_cluster)
    start_replicated(cluster, read_lease_ms=0)
    with psycopg.connect(victim.dsn, autocommit=True) as conn:
        # Nothing but the applier may write the node's WAL out: not the WAL writer, and not the
        # acceptors' synchronous commits (the others make a majority for the entry).
        stopped = [pid for (pid,) in conn.execute(
            "SELECT pid FROM pg_stat_activity WHERE backend_type = 'walwriter' "
            "OR application_name = 'replicate acceptor'")]
    assert len(stopped) >= 2
    for pid in stopped:
        os.kill(pid, signal.SIGSTOP)

    async def register() -> int:
        async with ProxyClient(*cluster.proxy_address("n1")) as client:
            outcome = await client.submit(register_table("kv"))
            assert outcome.ok
            return outcome.slot
    slot = asyncio.run(register())
    _crash_once_applied(cluster, victim, slot)
    with psycopg.connect(victim.dsn, autocommit=True) as conn:
        assert conn.execute("SELECT slot FROM replicate.applied").fetchone()[0] >= slot
        assert conn.execute("SELECT table_name FROM replicate.registered_tables").fetchall() \
            == [('"public"."kv"',)]
        with pytest.raises(errors.ObjectNotInPrerequisiteState):  # the guard: 55000
            conn.execute("INSERT INTO kv VALUES (1, 'direct')")
