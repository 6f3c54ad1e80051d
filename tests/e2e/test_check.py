"""Consistency checks through the log on a real 3-node cluster with proxies."""

from __future__ import annotations

import asyncio
import os
import signal

import psycopg
import pytest

from replicate.check import run_check
from replicate.command import register_table
from replicate.runtime.client import ProxyClient

from .replicated import start_replicated, wait_converged

pytestmark = pytest.mark.e2e


def _registered(cluster, table: str):
    """Proxies on ``cluster`` with ``table`` registered; every proxy knows it (the guard
    would refuse a write a proxy relayed just before it applied the registration; `replicate
    table add` avoids that by installing the guards first)."""
    config = start_replicated(cluster, write_timeout_s=10)

    async def register() -> None:
        async with ProxyClient(*cluster.proxy_address("n1")) as client:
            assert (await client.submit(register_table(table))).ok

    asyncio.run(register())
    wait_converged(cluster)
    return config


def _write(cluster, via: str, statement: str, rows: list[list]) -> None:
    """Run ``statement`` once per row through ``via``'s proxy, then wait for every node."""
    host, port = cluster.proxy_address(via)
    with psycopg.connect(f"host={host} port={port} user=postgres dbname=postgres",
                         autocommit=True) as conn:
        for row in rows:
            conn.execute(statement, row)
    wait_converged(cluster)


def test_check_finds_a_row_changed_on_one_node(make_cluster) -> None:
    cluster = make_cluster(3)
    for node in cluster.nodes:
        with psycopg.connect(node.dsn, autocommit=True) as conn:
            conn.execute("CREATE TABLE accounts (id int PRIMARY KEY, owner text, balance int)")
    config = _registered(cluster, "accounts")
    _write(cluster, "n2", "INSERT INTO accounts VALUES (%s, %s, %s)",
           [[i, f"o{i}", i] for i in range(50)])

    report = run_check(config)
    assert report.exit_code == 0, report.to_json()
    [table] = report.tables
    assert table.table == '"public"."accounts"' and table.rows == {"n1": 50, "n2": 50, "n3": 50}
    # registration, 50 inserts, the check itself: every node recorded the same outcomes
    assert report.outcomes.agree and report.outcomes.rows == {n: report.slot
                                                              for n in ("n1", "n2", "n3")}

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


def test_check_names_the_slot_where_one_node_failed_a_statement(make_cluster) -> None:
    """A trigger that exists on n3 only refuses one insert there: n1 and n2 applied it, n3
    recorded the error. The check names that slot, its statement and each node's outcome."""
    cluster = make_cluster(3)
    for node in cluster.nodes:
        with psycopg.connect(node.dsn, autocommit=True) as conn:
            conn.execute("CREATE TABLE accounts (id int PRIMARY KEY, owner text)")
    with psycopg.connect(cluster.nodes[2].dsn, autocommit=True) as conn:
        conn.execute("CREATE FUNCTION refuse_bad() RETURNS trigger LANGUAGE plpgsql AS $$ "
                     "BEGIN IF NEW.owner = 'bad' THEN RAISE EXCEPTION 'not here'; END IF; "
                     "RETURN NEW; END $$")
        conn.execute("CREATE TRIGGER refuse_bad BEFORE INSERT ON accounts FOR EACH ROW "
                     "EXECUTE FUNCTION refuse_bad()")
    config = _registered(cluster, "accounts")
    _write(cluster, "n1", "INSERT INTO accounts VALUES (%s, %s)",
           [[i, "bad" if i == 6 else f"o{i}"] for i in range(10)])

    report = run_check(config)
    assert report.exit_code == 1
    [table] = report.tables
    assert table.rows == {"n1": 10, "n2": 10, "n3": 9}
    outcomes = report.outcomes
    assert not outcomes.agree
    [row] = outcomes.differing_rows
    assert row["statement"] == "INSERT INTO accounts VALUES ($1, $2)  [$1='6', $2='bad']"
    assert row["nodes"]["n1"] == row["nodes"]["n2"] == "ok INSERT 0 1"
    assert row["nodes"]["n3"] == "error P0001"
    with psycopg.connect(cluster.nodes[0].dsn) as conn:
        assert conn.execute("SELECT request_id FROM replicate.log WHERE slot = %s",
                            [row["key"]]).fetchone() is not None
    assert report.to_json()["outcomes"]["differing_rows"] == [row]

    import subprocess
    import sys
    from pathlib import Path
    shown = subprocess.run([str(Path(sys.executable).parent / "replicate"), "check", "--config",
                            str(cluster.config_path)], capture_output=True, text=True, timeout=60,
                           env={**os.environ, "COLUMNS": "200"})
    assert shown.returncode == 1, shown.stderr
    assert "outcomes of slots" in shown.stdout and "DIFFERENT" in shown.stdout
    assert f"slot {row['key']}  INSERT INTO accounts" in shown.stdout
    assert "n1: ok INSERT 0 1, n2: ok INSERT 0 1, n3: error P0001" in shown.stdout


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
