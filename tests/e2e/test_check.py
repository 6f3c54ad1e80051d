"""Consistency checks through the log on a real 3-node cluster with proxies."""

from __future__ import annotations

import asyncio
import signal

import psycopg
import pytest

from replicate.check import run_check
from replicate.command import register_table
from replicate.runtime.client import ProxyClient

from .replicated import start_replicated, wait_converged

pytestmark = pytest.mark.e2e


def test_check_finds_a_row_changed_on_one_node(make_cluster) -> None:
    cluster = make_cluster(3)
    for node in cluster.nodes:
        with psycopg.connect(node.dsn, autocommit=True) as conn:
            conn.execute("CREATE TABLE accounts (id int PRIMARY KEY, owner text, balance int)")
    config = start_replicated(cluster, write_timeout_s=10)

    async def register() -> None:
        async with ProxyClient(*cluster.proxy_address("n1")) as client:
            assert (await client.submit(register_table("accounts"))).ok

    asyncio.run(register())
    # Every proxy must know the table is registered before writes go through n2 (the guard
    # would refuse a write n2's proxy relayed just before it applied the registration;
    # `replicate table add` avoids that by installing the guards first).
    wait_converged(cluster)
    host, port = cluster.proxy_address("n2")
    with psycopg.connect(f"host={host} port={port} user=postgres dbname=postgres",
                         autocommit=True) as conn:
        for i in range(50):
            conn.execute("INSERT INTO accounts VALUES (%s, %s, %s)", [i, f"o{i}", i])
    wait_converged(cluster)

    report = run_check(config)
    assert report.exit_code == 0, report.to_json()
    [table] = report.tables
    assert table.table == '"public"."accounts"' and table.rows == {"n1": 50, "n2": 50, "n3": 50}

    # An operator bypasses the guard on n2 and changes one row there only.
    with psycopg.connect(cluster.nodes[1].dsn, autocommit=True) as conn:
        conn.execute("SET replicate.applying = on")
        conn.execute("UPDATE accounts SET owner = 'evil' WHERE id = 7")
    report = run_check(config, "accounts")
    assert report.exit_code == 1
    [table] = report.tables
    assert not table.agree
    [row] = table.differing_rows
    assert row["key"] == "(7)"
    assert row["nodes"]["n1"] == row["nodes"]["n3"] != row["nodes"]["n2"]

    with psycopg.connect(cluster.nodes[1].dsn, autocommit=True) as conn:
        conn.execute("SET replicate.applying = on")
        conn.execute("UPDATE accounts SET owner = 'o7' WHERE id = 7")
    cluster.nodes[2].kill(signal.SIGKILL)
    report = run_check(config, wait_s=3)
    assert report.exit_code == 2
    assert set(report.unchecked) == {"n3"}
    assert report.tables[0].agree  # the two reachable nodes agree


def test_check_command_exit_codes(make_cluster) -> None:
    import json
    import subprocess
    import sys
    from pathlib import Path
    replicate = str(Path(sys.executable).parent / "replicate")
    cluster = make_cluster(3)
    for node in cluster.nodes:
        with psycopg.connect(node.dsn, autocommit=True) as conn:
            conn.execute("CREATE TABLE kv (k text PRIMARY KEY, v text)")
            conn.execute("INSERT INTO kv VALUES ('a', '1'), ('b', '2')")
    start_replicated(cluster)
    config = str(cluster.config_path)
    added = subprocess.run([replicate, "table", "add", "kv", "--config", config],
                           capture_output=True, text=True, timeout=60)
    assert added.returncode == 0, added.stderr
    ok = subprocess.run([replicate, "check", "--config", config, "--json"],
                        capture_output=True, text=True, timeout=60)
    assert ok.returncode == 0, ok.stderr
    assert json.loads(ok.stdout)["consistent"] is True
    with psycopg.connect(cluster.nodes[2].dsn, autocommit=True) as conn:
        conn.execute("SET replicate.applying = on")
        conn.execute("DELETE FROM kv WHERE k = 'b'")
    bad = subprocess.run([replicate, "check", "--config", config],
                         capture_output=True, text=True, timeout=60)
    assert bad.returncode == 1
    assert "kv" in bad.stdout and "DIFFERENT" in bad.stdout and "key (b)" in bad.stdout
    missing = subprocess.run([replicate, "check", "--config", config, "--table", "nope"],
                             capture_output=True, text=True, timeout=60)
    assert missing.returncode == 1 and "42P01" in missing.stderr
