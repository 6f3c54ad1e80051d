"""Helpers for end-to-end tests of the engine: a 3-node cluster with proxies, writers, checks."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field

import psycopg

from replicate.cluster import LocalCluster
from replicate.command import Entry, Param
from replicate.config import ClusterConfig, load_config, write_config
from replicate.errors import ReplicateError
from replicate.runtime.client import ProxyClient

INSERT = "INSERT INTO events (k) VALUES ($1)"


def start_replicated(cluster: LocalCluster, *, write_timeout_s: float = 10.0,
                     apply_timeout_ms: int = 1000, read_lease_ms: int = 500,
                     apply_backlog: int = 100_000, apply_linger_ms: int | None = None
                     ) -> ClusterConfig:
    """Create the test table on every node, tune timeouts, start the proxies, wait for a leader."""
    config = load_config(cluster.config_path)
    config = ClusterConfig(nodes=config.nodes, name=config.name,
                           read_consistency=config.read_consistency,
                           connect_timeout_s=config.connect_timeout_s,
                           write_timeout_s=write_timeout_s, apply_timeout_ms=apply_timeout_ms,
                           read_lease_ms=read_lease_ms, apply_backlog=apply_backlog,
                           apply_linger_ms=(config.apply_linger_ms if apply_linger_ms is None
                                            else apply_linger_ms))
    write_config(config, cluster.config_path)
    cluster.config = load_config(cluster.config_path)
    for node in cluster.nodes:
        with psycopg.connect(node.dsn, autocommit=True) as conn:
            conn.execute("CREATE TABLE events (k text NOT NULL)")
            conn.execute("CREATE TABLE uniq (id int PRIMARY KEY, v text)")
    cluster.start_proxies()
    asyncio.run(wait_for_engines(cluster))
    return cluster.config


async def statuses(cluster: LocalCluster) -> dict[str, dict | None]:
    out: dict[str, dict | None] = {}
    for proxy in cluster.proxies:
        try:
            async with ProxyClient(proxy.host, proxy.port) as client:
                out[proxy.name] = await client.status(timeout=2)
        except (ReplicateError, OSError, asyncio.TimeoutError):
            out[proxy.name] = None
    return out


async def wait_for_leader(cluster: LocalCluster, timeout: float = 30, *,
                          exclude: str | None = None) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        states = await statuses(cluster)
        leaders = [name for name, s in states.items() if s and s["role"] == "leader"]
        if leaders and leaders[0] != exclude:
            return leaders[0]
        await asyncio.sleep(0.1)
    raise AssertionError(f"no leader within {timeout} s: {await statuses(cluster)}")


async def wait_for_engines(cluster: LocalCluster, timeout: float = 30) -> str:
    """Wait until every proxy's engine has started, so every node holds the replicate schema,
    and one of them leads; the leader's name.

    A proxy listens before its engine installs the schema in its node; a leader can be elected
    by the other nodes meanwhile, so a leader alone does not mean every node can be queried.
    """
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        states = await statuses(cluster)
        leaders = [name for name, s in states.items() if s and s["role"] == "leader"]
        if leaders and all(s is not None and s["role"] != "starting" for s in states.values()):
            return leaders[0]
        await asyncio.sleep(0.1)
    raise AssertionError(f"not every engine started and a leader elected within {timeout} s: "
                         f"{await statuses(cluster)}")


@dataclass
class WriteLog:
    """What writers saw: acknowledged keys, failed keys, latencies."""

    acked: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)
    latencies: list[float] = field(default_factory=list)
    ack_times: list[float] = field(default_factory=list)


async def write_keys(client: ProxyClient, keys: list[str], log: WriteLog, *,
                     concurrency: int = 20, timeout: float = 30) -> None:
    """Insert every key through ``client``, ``concurrency`` at a time, recording what happened."""
    gate = asyncio.Semaphore(concurrency)

    async def one(key: str) -> None:
        async with gate:
            started = time.monotonic()
            try:
                outcome = await client.submit(Entry(INSERT, (Param(key.encode()),)),
                                              timeout=timeout)
            except (ReplicateError, OSError, asyncio.TimeoutError) as exc:
                log.failed[key] = f"{type(exc).__name__}: {exc}"
                return
            finally:
                log.latencies.append(time.monotonic() - started)
            if outcome.ok:
                log.acked.append(key)
                log.ack_times.append(time.monotonic())
            else:
                log.failed[key] = f"{outcome.sqlstate}: {outcome.message}"

    await asyncio.gather(*(one(k) for k in keys))


def node_state(dsn: str) -> tuple[int, list[str], int]:
    """(applied slot, every key in events in order, row count) of one node."""
    with psycopg.connect(dsn) as conn:
        applied = conn.execute("SELECT slot FROM replicate.applied").fetchone()[0]
        keys = [r[0] for r in conn.execute("SELECT k FROM events ORDER BY k")]
    return applied, keys, len(keys)


def wait_converged(cluster: LocalCluster, timeout: float = 60) -> tuple[int, list[str]]:
    """Wait until every node applied the same slot; return it and the (identical) keys."""
    deadline = time.monotonic() + timeout
    while True:
        states = [node_state(n.dsn) for n in cluster.nodes]
        slots = {s[0] for s in states}
        if len(slots) == 1:
            keys = states[0][1]
            for applied, other, _ in states[1:]:
                assert other == keys, "nodes at the same applied slot hold different rows"
            # the leader may still be applying: make sure the slot is stable
            time.sleep(0.3)
            again = [node_state(n.dsn)[0] for n in cluster.nodes]
            if set(again) == slots:
                return slots.pop(), keys
        if time.monotonic() > deadline:
            logs = "\n".join(f"--- {p.name} proxy log ---\n{p.log_tail(30)}"
                             for p in cluster.proxies)
            raise AssertionError(f"nodes did not converge: applied slots {[s[0] for s in states]}"
                                 f"; status {asyncio.run(statuses(cluster))}\n{logs}")
        time.sleep(0.2)


def assert_exactly_once(keys: list[str], acked: list[str]) -> None:
    counts: dict[str, int] = {}
    for k in keys:
        counts[k] = counts.get(k, 0) + 1
    twice = {k: c for k, c in counts.items() if c > 1}
    assert not twice, f"applied more than once: {sorted(twice)[:10]}"
    missing = set(acked) - set(counts)
    assert not missing, f"acknowledged but missing: {sorted(missing)[:10]}"
