"""`replicate status`, `table add/remove/list` and `log` as an operator runs them.

The real console script against one 3-node cluster with real proxy processes. The tests run
in file order and build on each other (register, write, read the log, unregister); the last
two break the cluster on purpose: a lock that stalls n3, then n3's proxy killed.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psycopg
import pytest
from psycopg import errors

from replicate.command import Entry, Param
from replicate.runtime.client import ProxyClient

from .replicated import start_replicated

pytestmark = pytest.mark.e2e

REPLICATE = str(Path(sys.executable).parent / "replicate")  # the installed console script

ACCOUNTS = """CREATE TABLE accounts (id int PRIMARY KEY, owner text NOT NULL,
                                     balance numeric(12,2) NOT NULL DEFAULT 0)"""


@pytest.fixture(scope="module")
def cluster(make_module_cluster):
    cluster = make_module_cluster(3)
    for i, node in enumerate(cluster.nodes):
        with psycopg.connect(node.dsn, autocommit=True) as conn:
            conn.execute(ACCOUNTS)
            conn.execute("INSERT INTO accounts VALUES (1, 'ann', 10.50), (2, 'bob', 0)")
            # differs on n3: balance is integer there
            conn.execute("CREATE TABLE skewed (id int PRIMARY KEY, balance "
                         + ("integer" if node.name == "n3" else "numeric(12,2)") + ")")
            # same schema, one extra row on n2
            conn.execute("CREATE TABLE drifted (id int PRIMARY KEY, v text)")
            conn.execute("INSERT INTO drifted SELECT g, 'v' || g FROM generate_series(1, "
                         + ("4" if node.name == "n2" else "3") + ") g")
            conn.execute("CREATE TABLE keyless (v text)")
            conn.execute("CREATE TABLE spare (id int PRIMARY KEY)")
            conn.execute("CREATE TABLE counters (id serial PRIMARY KEY, v text)")
            conn.execute("CREATE TABLE parent (id int PRIMARY KEY); CREATE TABLE child "
                         "(id int PRIMARY KEY, parent_id int REFERENCES parent)")
            if node.name == "n2":  # same rows, but its sequence moved on
                conn.execute("SELECT nextval('counters_id_seq')")
            conn.execute('CREATE SCHEMA app; '
                         'CREATE TABLE app."Odd Name" ("Key" text PRIMARY KEY)')
            conn.execute('''INSERT INTO app."Odd Name" VALUES ('b'), ('B'), ('a')''')
            if node.name != "n3":
                conn.execute("CREATE TABLE partial (id int PRIMARY KEY)")
    start_replicated(cluster, apply_timeout_ms=300)
    return cluster


def replicate(cluster, *args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([REPLICATE, *args, "--config", str(cluster.config_path)],
                          capture_output=True, text=True, timeout=timeout, env=dict(os.environ))


def as_json(result: subprocess.CompletedProcess) -> dict:
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def status_until(cluster, predicate, timeout: float = 20) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        doc = as_json(replicate(cluster, "status", "--json"))
        if predicate(doc) or time.monotonic() > deadline:
            return doc
        time.sleep(0.3)


def nodes_of(doc: dict) -> dict[str, dict]:
    return {n["name"]: n for n in doc["nodes"]}


def proxy_dsn(cluster, name: str) -> str:
    host, port = cluster.proxy_address(name)
    return f"host={host} port={port} user=postgres dbname=postgres"


def guards(cluster, table: str) -> list[bool]:
    found = []
    for node in cluster.nodes:
        with psycopg.connect(node.dsn) as conn:
            found.append(conn.execute(
                "SELECT EXISTS (SELECT 1 FROM pg_trigger WHERE tgname = 'replicate_guard' "
                "AND tgrelid = to_regclass(%s))", [table]).fetchone()[0])
    return found


def rows_everywhere(cluster, query: str, timeout: float = 20) -> list:
    """The rows of ``query`` once every node returns the same ones."""
    deadline = time.monotonic() + timeout
    while True:
        results = []
        for node in cluster.nodes:
            with psycopg.connect(node.dsn) as conn:
                results.append(conn.execute(query).fetchall())
        if all(r == results[0] for r in results) or time.monotonic() > deadline:
            assert all(r == results[0] for r in results), results
            return results[0]
        time.sleep(0.2)


def test_status_json_shows_one_leader_and_three_nodes_in_step(cluster) -> None:
    doc = status_until(cluster, lambda d: len({n["applied_upto"] for n in d["nodes"]}) == 1
                       and d["leader"] is not None)
    nodes = nodes_of(doc)
    assert sorted(nodes) == ["n1", "n2", "n3"]
    assert [n["name"] for n in doc["nodes"] if n["role"] == "leader"] == [doc["leader"]]
    assert {n["state"] for n in doc["nodes"]} == {"ok"}
    assert len({n["applied_upto"] for n in doc["nodes"]}) == 1
    assert all(n["lag"] == 0 for n in doc["nodes"])
    assert doc["commit_upto"] == doc["nodes"][0]["applied_upto"]
    assert all(len(n["acceptors"]) == 3 for n in doc["nodes"])
    assert doc["ballot"] == nodes[doc["leader"]]["ballot"]
    text = replicate(cluster, "status")
    assert text.returncode == 0 and "leader" in text.stdout and "n3" in text.stdout


def test_table_add_refuses_a_schema_that_differs_and_says_where(cluster) -> None:
    result = replicate(cluster, "table", "add", "skewed")
    assert result.returncode == 1
    assert "0A000" in result.stderr
    assert "n3: column balance is integer, n1 has numeric(12,2)" in result.stderr
    assert guards(cluster, "skewed") == [False] * 3


def test_table_add_refuses_a_missing_table_and_a_table_without_key(cluster) -> None:
    missing = replicate(cluster, "table", "add", "partial")
    assert missing.returncode == 1
    assert "42P01" in missing.stderr and "does not exist on n3" in missing.stderr
    keyless = replicate(cluster, "table", "add", "keyless")
    assert keyless.returncode == 1
    assert "0A000" in keyless.stderr and "no primary key" in keyless.stderr
    assert guards(cluster, "keyless") == [False] * 3


def test_table_add_refuses_contents_that_differ(cluster) -> None:
    result = replicate(cluster, "table", "add", "drifted")
    assert result.returncode == 1
    message = " ".join(result.stderr.split())
    assert "n2 has 4 rows" in message and "n1 has 3 rows" in message, result.stderr
    assert guards(cluster, "drifted") == [False] * 3  # the guards it installed are gone again


def test_table_add_refuses_owned_sequences_that_differ(cluster) -> None:
    result = replicate(cluster, "table", "add", "counters")
    assert result.returncode == 1 and "0A000" in result.stderr
    message = " ".join(result.stderr.split())
    assert "sequence public.counters_id_seq of table public.counters is at 1 on n2, unused " \
           "(starts at 1) on n1" in message, result.stderr
    assert guards(cluster, "counters") == [False] * 3


def test_table_add_guards_every_node_and_registers_through_the_log(cluster) -> None:
    added = as_json(replicate(cluster, "table", "add", "accounts", "--json"))
    assert added["already"] is False and added["table"] == "public.accounts"
    assert added["slot"] >= 1
    assert [(n["node"], n["rows"]) for n in added["nodes"]] == [("n1", 2), ("n2", 2), ("n3", 2)]
    assert guards(cluster, "accounts") == [True] * 3
    rows_everywhere(cluster, "SELECT table_name, since_slot FROM replicate.registered_tables")
    for node in cluster.nodes:
        with psycopg.connect(node.dsn, autocommit=True) as conn:
            with pytest.raises(errors.ObjectNotInPrerequisiteState) as info:
                conn.execute("INSERT INTO accounts VALUES (99, 'direct', 1)")
            assert info.value.sqlstate == "55000"
    with psycopg.connect(proxy_dsn(cluster, "n2"), autocommit=True) as conn:
        conn.execute("INSERT INTO accounts (id, owner, balance) VALUES (%s, %s, %s)",
                     [3, "cy", "7.25"])
        with pytest.raises(errors.UniqueViolation):
            conn.execute("INSERT INTO accounts (id, owner) VALUES (%s, %s)", [1, "dup"])
    assert rows_everywhere(cluster, "SELECT id, owner, balance::text FROM accounts ORDER BY id") \
        == [(1, "ann", "10.50"), (2, "bob", "0.00"), (3, "cy", "7.25")]

    again = as_json(replicate(cluster, "table", "add", "public.accounts", "--json"))
    assert again["already"] is True and again["slot"] == added["slot"]
    assert "already registered" in replicate(cluster, "table", "add", "accounts").stdout

    listed = as_json(replicate(cluster, "table", "list", "--json"))
    assert [(t["table"], t["since_slot"], t["rows"]) for t in listed["tables"]] == [
        ("public.accounts", added["slot"], 3)]


def test_table_add_quotes_identifiers_from_the_catalog(cluster) -> None:
    bad = replicate(cluster, "table", "add", "accounts; DROP TABLE accounts")
    assert bad.returncode == 1 and "42602" in bad.stderr  # invalid name syntax, nothing ran
    added = as_json(replicate(cluster, "table", "add", 'app."Odd Name"', "--json"))
    assert added["table"] == 'app."Odd Name"' and added["already"] is False
    assert {n["digest"] for n in added["nodes"]} == {added["nodes"][0]["digest"]}
    assert guards(cluster, 'app."Odd Name"') == [True] * 3
    listed = as_json(replicate(cluster, "table", "list", "--json"))
    assert [t["table"] for t in listed["tables"]] == ['app."Odd Name"', "public.accounts"]
    removed = as_json(replicate(cluster, "table", "remove", 'app."Odd Name"', "--json"))
    assert removed["registered"] is True
    rows_everywhere(cluster, "SELECT table_name FROM replicate.registered_tables")
    assert guards(cluster, 'app."Odd Name"') == [False] * 3


def test_log_shows_the_registration_and_the_writes_with_their_outcomes(cluster) -> None:
    view = as_json(replicate(cluster, "log", "--json", "--limit", "10", "--node", "n3"))
    assert view["node"] == "n3"
    entries = view["entries"]
    assert [e["slot"] for e in entries] == sorted((e["slot"] for e in entries), reverse=True)
    assert all(e["slot"] <= view["applied_upto"] for e in entries)
    control = [e for e in entries if e["kind"] == "control"]
    assert [(c["statement"], c["status"]) for c in reversed(control)] == [
        ("REGISTER TABLE public.accounts", "control"),
        ('REGISTER TABLE app."Odd Name"', "control"),
        ('UNREGISTER TABLE app."Odd Name"', "control")]
    writes = [e for e in entries if e["kind"] == "statement" and "accounts" in e["statement"]]
    assert [(w["status"], w["command_tag"], w["sqlstate"]) for w in reversed(writes)] == [
        ("ok", "INSERT 0 1", None), ("error", None, "23505")]
    assert "duplicate key" in writes[0]["message"]
    assert all(w["request_id"] for w in writes)

    one = as_json(replicate(cluster, "log", "--json", "--slot", str(writes[1]["slot"])))
    [entry] = one["entries"]
    assert entry["params"] == ["3", "cy", "7.25"]
    assert entry["settings"]["TimeZone"]
    assert entry["settings"]["DateStyle"] == "ISO, MDY"  # left out of the entry: canonical
    text = replicate(cluster, "log", "--limit", "5")
    assert text.returncode == 0 and "23505" in text.stdout


def test_table_remove_lets_direct_writes_through_again(cluster) -> None:
    removed = as_json(replicate(cluster, "table", "remove", "accounts", "--json"))
    assert removed["registered"] is True and removed["slot"] > 0
    rows_everywhere(cluster, "SELECT table_name FROM replicate.registered_tables")
    assert guards(cluster, "accounts") == [False] * 3
    for i, node in enumerate(cluster.nodes):
        with psycopg.connect(node.dsn, autocommit=True) as conn:
            conn.execute("INSERT INTO accounts VALUES (%s, 'direct', 1)", [100 + i])
    assert as_json(replicate(cluster, "table", "list", "--json"))["tables"] == []
    assert as_json(replicate(cluster, "table", "remove", "accounts", "--json"))["registered"] \
        is False
    log = as_json(replicate(cluster, "log", "--json", "--limit", "1"))
    assert log["entries"][0]["statement"] == "UNREGISTER TABLE public.accounts"


def test_table_add_copy_from_makes_the_other_nodes_match_one(cluster) -> None:
    unknown = replicate(cluster, "table", "add", "drifted", "--copy-from", "n9")
    assert unknown.returncode == 1 and "F0000" in unknown.stderr and "n9" in unknown.stderr
    added = as_json(replicate(cluster, "table", "add", "drifted", "--copy-from", "n2", "--json"))
    assert added["copied_from"] == "n2"
    assert [(n["node"], n["rows"]) for n in added["nodes"]] == [("n1", 4), ("n2", 4), ("n3", 4)]
    assert rows_everywhere(cluster, "SELECT id, v FROM drifted ORDER BY id") == [
        (i, f"v{i}") for i in range(1, 5)]
    text = replicate(cluster, "table", "add", "counters", "--copy-from", "n2")
    assert text.returncode == 0, text.stderr
    assert "copy n2 -> n1" in text.stderr and "registered at slot" in text.stdout
    rows_everywhere(cluster, "SELECT last_value, is_called FROM counters_id_seq")
    assert guards(cluster, "counters") == [True] * 3
    with psycopg.connect(proxy_dsn(cluster, "n1"), autocommit=True) as conn:
        conn.execute("INSERT INTO counters (v) VALUES ('through the log')")
    assert rows_everywhere(cluster, "SELECT id, v FROM counters") == [(2, "through the log")]
    for table in ("drifted", "counters"):
        assert as_json(replicate(cluster, "table", "remove", table, "--json"))["registered"]
    rows_everywhere(cluster, "SELECT table_name FROM replicate.registered_tables")


def test_table_add_refuses_a_foreign_key_to_an_unregistered_table(cluster) -> None:
    child = replicate(cluster, "table", "add", "child")
    assert child.returncode == 1 and "0A000" in child.stderr
    assert "foreign key child_parent_id_fkey of public.child references parent, which is not " \
           "registered" in " ".join(child.stderr.split())
    assert guards(cluster, "child") == [False] * 3
    parent = as_json(replicate(cluster, "table", "add", "parent", "--json"))
    [warning] = parent["warnings"]
    assert "unregistered table child references public.parent" in warning
    assert as_json(replicate(cluster, "table", "add", "child", "--json"))["warnings"] == []
    for table in ("child", "parent"):
        assert as_json(replicate(cluster, "table", "remove", table, "--json"))["registered"]
    rows_everywhere(cluster, "SELECT table_name FROM replicate.registered_tables")


def test_status_shows_a_stalled_node_with_the_reason(cluster) -> None:
    blocked = cluster.nodes[2]
    holder = psycopg.connect(blocked.dsn)
    holder.execute("LOCK TABLE events IN ACCESS EXCLUSIVE MODE")  # held until rollback
    try:
        async def write() -> None:
            async with ProxyClient(*cluster.proxy_address("n1")) as client:
                for i in range(5):
                    assert (await client.submit(Entry("INSERT INTO events VALUES ($1)",
                                                      (Param(f"s{i}".encode()),)))).ok

        asyncio.run(write())
        doc = status_until(cluster, lambda d: nodes_of(d)["n3"]["state"] == "stalled")
        n3 = nodes_of(doc)["n3"]
        assert n3["state"] == "stalled", doc
        assert "lock" in n3["stalled"].lower()
        assert n3["lag"] >= 1
        assert nodes_of(doc)["n1"]["state"] == "ok"
        assert "stalled" in replicate(cluster, "status").stdout

        # n3 cannot apply the registration yet, but its guard is already there
        added = as_json(replicate(cluster, "table", "add", "uniq", "--json"))
        assert added["already"] is False
        with psycopg.connect(blocked.dsn, autocommit=True) as conn:
            assert conn.execute("SELECT slot FROM replicate.applied").fetchone()[0] \
                < added["slot"]
            assert conn.execute("SELECT count(*) FROM replicate.registered_tables "
                                "WHERE to_regclass(table_name) = 'uniq'::regclass"
                                ).fetchone()[0] == 0
            with pytest.raises(errors.ObjectNotInPrerequisiteState):
                conn.execute("INSERT INTO uniq VALUES (1, 'direct')")
    finally:
        holder.rollback()
        holder.close()
    doc = status_until(cluster, lambda d: nodes_of(d)["n3"]["state"] == "ok"
                       and nodes_of(d)["n3"]["lag"] == 0)
    assert nodes_of(doc)["n3"]["stalled"] is None and nodes_of(doc)["n3"]["lag"] == 0
    assert rows_everywhere(cluster, "SELECT table_name FROM replicate.registered_tables") \
        == [('"public"."uniq"',)]


def test_status_shows_a_killed_proxy_as_down_and_its_database_up(cluster) -> None:
    cluster.proxy("n3").kill()
    doc = status_until(cluster, lambda d: nodes_of(d)["n3"]["state"] == "down"
                       and d["leader"] not in (None, "n3"))
    n3 = nodes_of(doc)["n3"]
    assert n3["state"] == "down" and n3["database"] == "up"
    assert n3["role"] is None and n3["proxy_error"]
    assert n3["applied_upto"] is not None  # read from its database directly
    assert doc["leader"] in ("n1", "n2")
    assert {nodes_of(doc)[n]["state"] for n in ("n1", "n2")} == {"ok"}
    text = replicate(cluster, "status")
    assert text.returncode == 0 and "down" in text.stdout

    watch = subprocess.Popen([REPLICATE, "status", "--watch", "--config",
                              str(cluster.config_path)],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    time.sleep(2.5)
    watch.send_signal(signal.SIGINT)
    stdout, stderr = watch.communicate(timeout=10)
    assert watch.returncode == 0, stderr
    assert "n3 down" in stdout and "leader" in stdout

    for name in ("n1", "n2"):
        cluster.proxy(name).kill()
    nobody = replicate(cluster, "status", "--json")
    assert nobody.returncode == 1 and "no proxy answers" in nobody.stderr
    assert {n["state"] for n in json.loads(nobody.stdout)["nodes"]} == {"down"}
    refused = replicate(cluster, "table", "add", "spare")
    assert refused.returncode == 1 and "08006" in refused.stderr and "no proxy" in refused.stderr
    assert guards(cluster, "spare") == [False] * 3  # nothing submitted: its guards are gone
