"""The floor of the write targets (benchmarks/floor.py): its plan, its report, and that its
pgbench scripts do on real nodes the work the design asks of them per write."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import psycopg
import pytest

from benchmarks import floor
from benchmarks.runner import (PRELOAD, TABLE_DDL, build_comparisons, build_targets,
                               read_latencies)
from replicate.command import Entry, Param


def test_one_client_waits_for_the_durable_store_then_applies() -> None:
    streams = floor.plan(1, 50, rows=100, size=40)
    assert [(s.node, s.role) for s in streams] == [(0, "chain"), (1, "store"), (1, "apply"),
                                                  (2, "apply")]
    assert {s.transactions for s in streams} == {50}
    chain = streams[0].script
    store_at, begin_at = chain.index("INSERT INTO floor_log"), chain.index("BEGIN;")
    assert store_at < begin_at  # the value is stored before the statement is applied
    assert chain.count("INSERT INTO floor_accounts") == 1
    assert "synchronous_commit TO off" in chain[begin_at:]
    assert "synchronous_commit" not in chain[:begin_at]  # the store commits durably
    assert "'\\x" + "ab" * 40 + "'" in chain  # a payload as long as the entry


def test_many_clients_batch_a_write_of_each_on_two_stores_and_three_applies() -> None:
    streams = floor.plan(32, 100, rows=100, size=10)
    assert sorted((s.node, s.role) for s in streams) == [
        (0, "apply"), (0, "store"), (1, "apply"), (1, "store"), (2, "apply")]
    assert {s.transactions for s in streams} == {4}  # 100 writes in batches of 32, rounded up
    apply = next(s.script for s in streams if s.role == "apply")
    assert apply.count("INSERT INTO floor_accounts") == 32
    assert apply.count("\\set id") == 32 and "synchronous_commit TO off" in apply
    store = next(s.script for s in streams if s.role == "store")
    assert "generate_series(1, 32)" in store and "synchronous_commit" not in store
    assert floor.batch_size(200) == floor.MAX_BATCH == 64 and floor.batch_size(0) == 1


def test_payload_size_is_the_entry_encoding() -> None:
    sql = "INSERT INTO t VALUES (:id)"
    assert floor.payload_size(sql) == len(Entry(sql, (Param(b"1234"),)).encode())


def _cell(target: str, tps: float, p50: float | None) -> dict:
    return {"workload": "W2", "target": target, "mode": "prepared", "clients": 1, "tps": tps,
            "p50_ms": p50, "p99_ms": p50, "wal_syncs_per_1k": {}, "proxy_cpu_s_per_1k": None,
            "wal_bytes_per_txn": {}, "wal_fpi_per_1k": {}, "db_bytes_per_txn": {},
            "proxy_rss_mb": {}, "errors": []}


def test_targets_say_whether_the_floor_itself_meets_the_goal() -> None:
    results = [_cell("direct", 1000.0, 0.2), _cell("proxied", 100.0, 2.0),
               _cell("floor", 250.0, 0.8)]
    (c,) = build_comparisons(results, "n1")
    assert (c["floor_tps_ratio"], c["floor_p50_ratio"], c["share_of_floor"]) == (0.25, 4.0, 0.4)
    targets = {t["metric"]: t for t in build_targets([c])}
    # 0.25x < 0.3x and 4x > 3.3x: the floor misses both, so neither is reachable here
    assert targets["tps_ratio"]["floor"] == 0.25 and targets["tps_ratio"]["reachable_here"] is False
    assert targets["p50_ratio"]["reachable_here"] is False
    (c,) = build_comparisons(results[:2], "n1")  # no floor measured
    assert c["floor_tps"] is None and c["share_of_floor"] is None
    assert all(t["reachable_here"] is None for t in build_targets([c]))


@pytest.mark.e2e
@pytest.mark.skipif(shutil.which("pgbench") is None, reason="pgbench is not installed")
@pytest.mark.parametrize("clients", [1, 3])
def test_floor_run_does_the_designs_work_on_every_node(fresh_db, tmp_path: Path,
                                                       clients: int) -> None:
    for dsn in fresh_db:
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute(TABLE_DDL.format(name="floor_accounts"))
            conn.execute(PRELOAD.format(name="floor_accounts", rows=20))
            conn.execute(floor.LOG_DDL)
    dbname = psycopg.conninfo.conninfo_to_dict(fresh_db[0])["dbname"]
    ports = [int(psycopg.conninfo.conninfo_to_dict(d)["port"]) for d in fresh_db]
    streams = floor.plan(clients, 30, rows=20, size=25)
    tmp_path.chmod(0o777)
    result = floor.run(ports, streams, clients=clients, mode="prepared", workdir=tmp_path,
                       env={"PATH": os.environ["PATH"]}, timeout=60,
                       read_latencies=read_latencies, dbname=dbname)
    assert result.error is None, result.error
    assert result.writes == 30 and result.tps > 0
    assert bool(result.latencies_ms) is (clients == 1)  # the chain's latency, at 1 client
    for i, dsn in enumerate(fresh_db):
        with psycopg.connect(dsn) as conn:
            stored, size = conn.execute(
                "SELECT count(*), max(length(payload)) FROM floor_log").fetchone()
            (added,) = conn.execute(
                "SELECT (sum(balance) - 20 * 100)::int FROM floor_accounts").fetchone()
        assert added == 30, (i, added)                          # every node applied every write
        assert (stored, size) == ((30, 25) if i < 2 else (0, None)), i  # a majority stored it


def test_the_relay_floor_is_socat_with_nodelay_or_nothing(monkeypatch) -> None:
    monkeypatch.setattr(shutil, "which", lambda name: None)
    assert floor.relay_command(7001, 5432) is None
    monkeypatch.setattr(shutil, "which", lambda name: f"/usr/bin/{name}")
    cmd = floor.relay_command(7001, 5432)
    assert cmd[0] == "/usr/bin/socat"
    assert cmd[1].startswith("TCP-LISTEN:7001,bind=127.0.0.1,") and "fork" in cmd[1]
    assert cmd[2] == "TCP:127.0.0.1:5432,nodelay" and "nodelay" in cmd[1]


def test_w3s_relay_floor_serves_both_of_its_read_variants() -> None:
    def cell(workload: str, target: str, tps: float, p50: float) -> dict:
        return {**_cell(target, tps, p50), "workload": workload, "clients": 8}

    results = [cell("W3", "direct", 1000.0, 0.1), cell("W3", "floor", 400.0, 0.25),
               cell("W3-local", "proxied", 500.0, 0.2),
               cell("W3-linearizable", "proxied", 300.0, 0.3)]
    comparisons = {c["workload"]: c for c in build_comparisons(results, "n1")}
    assert {k: c["floor_tps_ratio"] for k, c in comparisons.items()} == {
        "W3-local": 0.4, "W3-linearizable": 0.4}
    assert comparisons["W3-local"]["share_of_floor"] == 1.25
    (t,) = build_targets(list(comparisons.values()))  # W3 linearizable: p50 <= 2x
    assert (t["workload"], t["floor"], t["reachable_here"]) == ("W3-linearizable", 2.5, False)
