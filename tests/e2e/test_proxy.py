"""PostgreSQL clients through the proxy on a registered table: issue 5's acceptance.

Real clients (psql, psycopg in text, binary, pipeline and prepared modes, pgbench in simple,
extended and prepared modes) write to a registered table through three real proxy processes;
afterwards every node holds identical rows at the same applied slot.
"""

from __future__ import annotations

import asyncio
import itertools
import shutil
import socket
import struct
import subprocess
import time

import psycopg
import pytest
from psycopg import errors

from replicate.command import register_table
from replicate.pgwire import codec
from replicate.pgwire import messages as m
from replicate.runtime.client import ProxyClient

from .replicated import start_replicated, wait_for_leader

pytestmark = pytest.mark.e2e

TABLES = """
CREATE TABLE accounts (id int PRIMARY KEY, owner text NOT NULL, balance numeric(12,2) NOT NULL,
                       opened timestamptz NOT NULL DEFAULT now(), tags text[]);
CREATE TABLE plain (id int PRIMARY KEY, owner text NOT NULL, balance numeric(12,2) NOT NULL,
                    opened timestamptz NOT NULL DEFAULT now(), tags text[]);
CREATE TABLE local_notes (id int PRIMARY KEY, note text);
CREATE SCHEMA "odd,name";
CREATE TABLE "odd,name".accounts (id int PRIMARY KEY, owner text NOT NULL, balance int);
CREATE TABLE tokens (id int PRIMARY KEY, token uuid NOT NULL DEFAULT gen_random_uuid());
CREATE TABLE audited (id int PRIMARY KEY, at timestamptz);
CREATE FUNCTION stamp() RETURNS trigger LANGUAGE plpgsql VOLATILE
    AS $$ BEGIN NEW.at := clock_timestamp(); RETURN NEW; END $$;
CREATE TRIGGER stamp BEFORE INSERT ON audited FOR EACH ROW EXECUTE FUNCTION stamp();
CREATE FUNCTION vol() RETURNS int LANGUAGE sql VOLATILE AS 'SELECT 1';
CREATE SEQUENCE free_seq;
CREATE SCHEMA shadow;
CREATE TABLE shadow.accounts (id int PRIMARY KEY, owner text NOT NULL,
                              balance numeric(12,2) NOT NULL);
"""
REGISTERED = ("accounts", "tokens", "audited")


@pytest.fixture(scope="module")
def proxied(make_module_cluster):
    """A 3-node cluster with proxies; `accounts` registered, `plain` and `local_notes` not."""
    cluster = make_module_cluster(3)
    for node in cluster.nodes:
        with psycopg.connect(node.dsn, autocommit=True) as conn:
            conn.execute(TABLES)
    start_replicated(cluster)

    async def register() -> None:
        async with ProxyClient(*cluster.proxy_address("n1")) as client:
            for table in REGISTERED:
                assert (await client.submit(register_table(table))).ok

    asyncio.run(register())
    rows_everywhere(cluster)  # every node applied the registration
    return cluster


def proxy_dsn(cluster, name: str = "n1") -> str:
    host, port = cluster.proxy_address(name)
    return f"host={host} port={port} user=postgres dbname=postgres"


def rows_everywhere(cluster, table: str = "accounts", timeout: float = 30) -> list:
    """Wait until all nodes applied the same slot, then return the table (identical everywhere)."""
    deadline = time.monotonic() + timeout
    while True:
        slots, contents = [], []
        for node in cluster.nodes:
            with psycopg.connect(node.dsn) as conn:
                slots.append(conn.execute("SELECT slot FROM replicate.applied").fetchone()[0])
                contents.append(conn.execute(f"SELECT * FROM {table} ORDER BY 1").fetchall())
        if len(set(slots)) == 1:
            assert contents[0] == contents[1] == contents[2], "nodes differ at the same slot"
            return contents[0]
        assert time.monotonic() < deadline, f"nodes did not converge: {slots}"
        time.sleep(0.1)


def test_psql_insert_returning_matches_direct(proxied) -> None:
    args = ["psql", "-X", "-A", "-t", "-v", "ON_ERROR_STOP=1"]
    via_proxy = subprocess.run(
        [*args, proxy_dsn(proxied), "-c",
         "INSERT INTO accounts (id, owner, balance, opened) VALUES "
         "(1, 'ann', 10.5, '2026-01-01 00:00:00+00') RETURNING id, owner, balance, opened"],
        capture_output=True, text=True, timeout=60)
    direct = subprocess.run(
        [*args, proxied.nodes[0].dsn, "-c",
         "INSERT INTO plain (id, owner, balance, opened) VALUES "
         "(1, 'ann', 10.5, '2026-01-01 00:00:00+00') RETURNING id, owner, balance, opened"],
        capture_output=True, text=True, timeout=60)
    assert via_proxy.returncode == 0, via_proxy.stderr
    assert via_proxy.stdout == direct.stdout
    assert rows_everywhere(proxied)[0][:3] == (1, "ann", 10.5)


def test_psycopg_text_binary_and_errors(proxied) -> None:
    with psycopg.connect(proxy_dsn(proxied, "n2"), autocommit=True) as conn:
        for binary, key in ((False, 10), (True, 11)):
            cur = conn.cursor(binary=binary)
            cur.execute("INSERT INTO accounts (id, owner, balance, tags) VALUES (%s, %s, %s, %s) "
                        "RETURNING id, owner, balance, tags", [key, "bo", 3, ["a", "b"]])
            assert cur.fetchall() == [(key, "bo", 3, ["a", "b"])]
            assert cur.statusmessage == "INSERT 0 1" and cur.rowcount == 1
        cur = conn.execute("UPDATE accounts SET balance = balance + %s WHERE id IN (10, 11)", [1])
        assert cur.rowcount == 2 and cur.statusmessage == "UPDATE 2"
        with pytest.raises(errors.UniqueViolation) as dup:
            conn.execute("INSERT INTO accounts (id, owner, balance) VALUES (10, 'x', 0)")
        assert "accounts_pkey" in str(dup.value)
        with pytest.raises(errors.SyntaxError):
            conn.execute("INSERT INTO accounts VALUES (")
        # the session is still usable after errors
        assert conn.execute("SELECT balance FROM accounts WHERE id = 10").fetchone()[0] == 4
    rows = {r[0]: r for r in rows_everywhere(proxied)}
    assert rows[10][2] == 4 and rows[11][2] == 4


def test_pipeline_and_prepared_statements(proxied) -> None:
    with psycopg.connect(proxy_dsn(proxied, "n3"), autocommit=True) as conn:
        with conn.pipeline():
            for i in range(100, 130):
                conn.execute("INSERT INTO accounts (id, owner, balance) VALUES (%s, %s, %s)",
                             [i, f"p{i}", i])
        conn.prepare_threshold = 0  # server-side prepared statements from the first execution
        for i in range(200, 220):
            conn.execute("INSERT INTO accounts (id, owner, balance) VALUES (%s, %s, %s)",
                         [i, f"q{i}", i], prepare=True)
    ids = {r[0] for r in rows_everywhere(proxied)}
    assert set(range(100, 130)) <= ids and set(range(200, 220)) <= ids


def test_transaction_block_write_is_refused_and_rolled_back(proxied) -> None:
    with psycopg.connect(proxy_dsn(proxied)) as conn:  # psycopg opens a transaction itself
        conn.execute("INSERT INTO local_notes VALUES (1, 'in the same transaction')")
        with pytest.raises(errors.FeatureNotSupported) as info:
            conn.execute("INSERT INTO accounts (id, owner, balance) VALUES (300, 'tx', 1)")
        assert "transaction block" in str(info.value)
        with pytest.raises(errors.InFailedSqlTransaction):
            conn.execute("SELECT 1")
        conn.rollback()
        assert conn.execute("SELECT count(*) FROM local_notes").fetchone() == (0,)
    assert 300 not in {r[0] for r in rows_everywhere(proxied)}


def test_read_consistency_setting(proxied) -> None:
    with psycopg.connect(proxy_dsn(proxied, "n3"), autocommit=True) as conn:
        assert conn.execute("SHOW replicate.read_consistency").fetchone() == ("linearizable",)
        conn.execute("SET replicate.read_consistency = session")
        assert conn.execute("SHOW replicate.read_consistency").fetchone() == ("session",)
        with pytest.raises(errors.InvalidParameterValue):
            conn.execute("SET replicate.read_consistency = eventual")
        conn.execute("RESET replicate.read_consistency")
        assert conn.execute("SHOW replicate.read_consistency").fetchone() == ("linearizable",)


def test_write_on_one_node_read_linearizably_on_another(proxied) -> None:
    with psycopg.connect(proxy_dsn(proxied, "n1"), autocommit=True) as writer, \
            psycopg.connect(proxy_dsn(proxied, "n3"), autocommit=True) as reader:
        for i in range(400, 420):
            writer.execute("INSERT INTO accounts (id, owner, balance) VALUES (%s, 'lin', 0)", [i])
            assert reader.execute("SELECT count(*) FROM accounts WHERE id = %s",
                                  [i]).fetchone() == (1,)


def test_prepared_reads_through_every_proxy_see_writes_through_another(proxied) -> None:
    """Prepared reads (Bind of a kept statement: the path that may go to the node without
    awaiting anything) through each proxy, the leader included, see a write acknowledged just
    before through another proxy (linearizable), or through the same one (session)."""
    names = [n.name for n in proxied.nodes]
    keys = iter(range(1201, 1261))  # no other test here uses them

    def write_then_read(writer, reader, reader_name: str, count: int) -> None:
        for key in itertools.islice(keys, count):
            writer.execute("INSERT INTO accounts (id, owner, balance) VALUES (%s, 'p', 0)",
                           [key])
            assert reader.execute("SELECT count(*) FROM accounts WHERE id = %s", [key],
                                  prepare=True).fetchone() == (1,), (reader_name, key)

    for reader_name in names:
        writer_name = next(n for n in names if n != reader_name)
        with psycopg.connect(proxy_dsn(proxied, writer_name), autocommit=True) as writer, \
                psycopg.connect(proxy_dsn(proxied, reader_name), autocommit=True) as reader:
            write_then_read(writer, reader, reader_name, 15)
            reader.execute("SET replicate.read_consistency = session")
            write_then_read(reader, reader, reader_name, 5)


# One statement per refusal class of the gate (replicate.gate.REASONS).
REFUSALS = {
    "syntax": "INSERT INTO accounts VALUES (",
    "unregistered-read":
        "INSERT INTO accounts (id, owner, balance) SELECT id, note, 0 FROM local_notes",
    "mixed-write": "WITH x AS (INSERT INTO local_notes VALUES (9, 'n') RETURNING id) "
                   "INSERT INTO accounts (id, owner, balance) SELECT id, 'm', 0 FROM x",
    "volatile-per-row": "UPDATE accounts SET balance = random()",
    "volatile-function": "UPDATE accounts SET balance = vol()",
    "unknown-function": "UPDATE accounts SET balance = no_such_function()",
    "node-dependent": "UPDATE accounts SET owner = pg_backend_pid()::text",
    "session-state":
        "INSERT INTO accounts (id, owner, balance) VALUES (currval('free_seq'), 'x', 0)",
    "unregistered-sequence":
        "INSERT INTO accounts (id, owner, balance) VALUES (nextval('free_seq'), 'x', 0)",
    "limit-order": "DELETE FROM accounts WHERE id IN (SELECT id FROM accounts LIMIT 1)",
    "aggregate-order": "UPDATE accounts SET owner = (SELECT string_agg(owner, ',') FROM accounts)",
    "clock-literal": "UPDATE accounts SET opened = 'now'",
    "volatile-default": "INSERT INTO tokens (id) SELECT 1",
    "trigger": "INSERT INTO audited (id) VALUES (1)",
    "local-lock": "SELECT * FROM accounts FOR UPDATE",
    "ddl": "ALTER TABLE accounts ADD COLUMN x int",
    "dynamic-sql": "DO $$ BEGIN INSERT INTO accounts VALUES (1, 'x', 0); END $$",
    "server-file": "COPY accounts FROM '/etc/hostname'",
    "unclassified":
        "EXPLAIN ANALYZE INSERT INTO accounts (id, owner, balance) VALUES (7000, 'e', 0)",
}


def test_every_refusal_class_is_covered() -> None:
    from replicate.gate import REASONS
    assert set(REFUSALS) == set(REASONS)


@pytest.mark.parametrize("reason", sorted(REFUSALS))
@pytest.mark.parametrize("protocol", ["simple", "extended"])
def test_refusals_end_to_end(proxied, reason: str, protocol: str) -> None:
    from replicate.gate import REASONS
    sqlstate, hint = REASONS[reason]
    before = [rows_everywhere(proxied, t) for t in (*REGISTERED, "local_notes")]
    with psycopg.connect(proxy_dsn(proxied, "n2"), autocommit=True) as conn:
        with pytest.raises(psycopg.Error) as info:
            if protocol == "simple":
                conn.execute(REFUSALS[reason], prepare=False)  # no parameters: simple Query
            else:
                conn.execute(REFUSALS[reason], prepare=True)  # Parse/Bind/Execute
        assert info.value.sqlstate == sqlstate
        if reason != "unclassified":  # the catch-all class words its hint per statement
            assert info.value.diag.message_hint == hint  # the hint of exactly this class
        assert info.value.diag.message_hint
        assert conn.execute("SELECT 1").fetchone() == (1,)  # the session goes on
    assert [rows_everywhere(proxied, t) for t in (*REGISTERED, "local_notes")] == before


def test_now_is_fixed_once_for_every_node(proxied) -> None:
    with psycopg.connect(proxy_dsn(proxied, "n2"), autocommit=True) as conn:
        conn.execute("INSERT INTO accounts (id, owner, balance, opened) VALUES (500, 'clock', 0, now())")
    values = set()
    for node in proxied.nodes:
        with psycopg.connect(node.dsn) as conn:
            rows_everywhere(proxied)
            values.add(conn.execute("SELECT opened FROM accounts WHERE id = 500").fetchone())
    assert len(values) == 1


@pytest.mark.skipif(shutil.which("pgbench") is None, reason="pgbench is not installed")
@pytest.mark.parametrize("mode", ["simple", "extended", "prepared"])
def test_pgbench_upserts(proxied, tmp_path, mode: str) -> None:
    script = tmp_path / "upsert.sql"
    script.write_text(
        "\\set id random(1000, 1100)\n"
        "INSERT INTO accounts (id, owner, balance) VALUES (:id, 'bench', 1) "
        "ON CONFLICT (id) DO UPDATE SET balance = accounts.balance + 1;\n")
    def bench_total() -> int:
        return sum(r[2] for r in rows_everywhere(proxied) if 1000 <= r[0] <= 1100)

    before = bench_total()
    host, port = proxied.proxy_address("n1")
    result = subprocess.run(["pgbench", "-n", "-h", host, "-p", str(port), "-U", "postgres",
                             "-c", "4", "-t", "25", "-M", mode, "-f", str(script), "postgres"],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr + result.stdout
    assert "number of failed transactions: 0" in result.stdout or "failed" not in result.stdout
    assert bench_total() - before == 100  # 4 clients x 25 upserts, each counted exactly once


def test_error_in_a_pipeline_skips_the_rest_until_sync(proxied) -> None:
    insert = "INSERT INTO accounts (id, owner, balance) VALUES (%s, 'pipe', 0)"
    with psycopg.connect(proxy_dsn(proxied), autocommit=True) as conn:
        with pytest.raises(errors.UniqueViolation):
            with conn.pipeline():
                conn.execute(insert, [600])
                conn.execute(insert, [600])
                conn.execute(insert, [601])
        assert conn.execute("SELECT 1").fetchone() == (1,)
    ids = {r[0] for r in rows_everywhere(proxied)}
    assert 600 in ids      # each replicated write commits in its own slot (README: limits)
    assert 601 not in ids  # skipped after the error, as PostgreSQL skips until Sync


def test_search_path_with_a_comma_in_a_schema_name(proxied) -> None:
    # The session's schemas come from the node as a list: "odd,name" is one schema, whose
    # unregistered accounts table hides public.accounts, exactly as PostgreSQL resolves it.
    with psycopg.connect(proxy_dsn(proxied, "n1"), autocommit=True) as conn:
        conn.execute('SET search_path = "odd,name", public')
        conn.execute("INSERT INTO accounts (id, owner, balance) VALUES (900, 'odd', 1)")
        assert conn.execute('SELECT owner FROM "odd,name".accounts WHERE id = 900'
                            ).fetchone() == ("odd",)
    assert 900 not in {r[0] for r in rows_everywhere(proxied)}


@pytest.mark.parametrize("prepared", [False, True], ids=["simple", "prepared"])
def test_a_temporary_table_hides_the_registered_one(proxied, prepared: bool) -> None:
    # PostgreSQL resolves an unqualified name to the session's temporary table first. The
    # proxy's catalog cannot know it: the session's own resolution decides, so the write
    # stays in the temporary table and nothing reaches the log or the other nodes.
    rid = 910 + int(prepared)
    with psycopg.connect(proxy_dsn(proxied, "n1"), autocommit=True) as conn:
        conn.execute("CREATE TEMP TABLE accounts (id int PRIMARY KEY, owner text, balance int)")
        conn.execute("INSERT INTO accounts (id, owner, balance) VALUES (%s, 'temp', 1)",
                     [rid], prepare=prepared)
        assert conn.execute("SELECT owner FROM accounts WHERE id = %s", [rid],
                            prepare=prepared).fetchone() == ("temp",)
        assert conn.execute("SELECT count(*) FROM public.accounts WHERE id = %s",
                            [rid]).fetchone() == (0,)
    assert rid not in {r[0] for r in rows_everywhere(proxied)}


def test_a_table_created_after_the_catalog_hides_the_registered_one(proxied) -> None:
    # A schema earlier on the search_path gets an accounts table after the proxy loaded its
    # catalog (no registration since, so no reload): PostgreSQL writes into it, and so does
    # the proxy, on this node only, instead of replicating into public.accounts.
    for node in proxied.nodes:
        with psycopg.connect(node.dsn, autocommit=True) as conn:
            conn.execute("CREATE SCHEMA late")
            conn.execute("CREATE TABLE late.accounts (id int PRIMARY KEY, owner text, balance int)")
    try:
        with psycopg.connect(proxy_dsn(proxied, "n1"), autocommit=True) as conn:
            conn.execute("SET search_path = late, public")
            conn.execute("INSERT INTO accounts (id, owner, balance) VALUES (920, 'late', 1)")
        with psycopg.connect(proxied.nodes[0].dsn) as conn:
            assert conn.execute("SELECT owner FROM late.accounts").fetchall() == [("late",)]
        for node in proxied.nodes[1:]:
            with psycopg.connect(node.dsn) as conn:
                assert conn.execute("SELECT count(*) FROM late.accounts").fetchone() == (0,)
        assert 920 not in {r[0] for r in rows_everywhere(proxied)}
    finally:
        for node in proxied.nodes:
            with psycopg.connect(node.dsn, autocommit=True) as conn:
                conn.execute("DROP SCHEMA late CASCADE")


def test_a_prepared_write_follows_a_later_search_path(proxied) -> None:
    # PostgreSQL resolves a prepared statement's names again after SET search_path: the same
    # prepared INSERT goes to shadow.accounts (unregistered: this node only, as PostgreSQL
    # does) and, once the path is back, to the registered table through the log.
    insert = "INSERT INTO accounts (id, owner, balance) VALUES (%s, %s, 1)"
    with psycopg.connect(proxy_dsn(proxied, "n1"), autocommit=True) as conn:
        conn.execute(insert, [930, "public"], prepare=True)
        conn.execute("SET search_path = shadow, public")
        conn.execute(insert, [931, "shadow"], prepare=True)
        conn.execute("SET search_path = public")
        conn.execute(insert, [932, "public"], prepare=True)
        assert conn.execute("SELECT id FROM shadow.accounts WHERE id > 900").fetchall() \
            == [(931,)]
    ids = {r[0] for r in rows_everywhere(proxied)}
    assert {930, 932} <= ids and 931 not in ids
    for node in proxied.nodes[1:]:
        with psycopg.connect(node.dsn) as conn:
            assert conn.execute("SELECT count(*) FROM shadow.accounts WHERE id > 900"
                                ).fetchone() == (0,)


def test_set_role_between_executions_of_a_prepared_write(proxied) -> None:
    # The role (and the other session facts) of a prepared write are the session's at its
    # Bind, not the ones read when it was prepared: as PostgreSQL, the second INSERT runs
    # as the role set in between and is refused.
    for node in proxied.nodes:
        with psycopg.connect(node.dsn, autocommit=True) as conn:
            conn.execute("DO $$ BEGIN CREATE ROLE reader_only; "
                         "EXCEPTION WHEN duplicate_object THEN NULL; END $$")
            conn.execute("GRANT SELECT ON accounts TO reader_only")
    insert = "INSERT INTO accounts (id, owner, balance) VALUES (%s, 'role', 0)"
    with psycopg.connect(proxy_dsn(proxied, "n1"), autocommit=True) as conn:
        conn.prepare_threshold = 0
        conn.execute(insert, [710], prepare=True)
        conn.execute("SET ROLE reader_only")
        with pytest.raises(errors.InsufficientPrivilege):
            conn.execute(insert, [711], prepare=True)
        conn.execute("RESET ROLE")
        conn.execute(insert, [712], prepare=True)
    ids = {r[0] for r in rows_everywhere(proxied)}
    assert {710, 712} <= ids and 711 not in ids


def _raw_exchange(sock: socket.socket, *messages, ready: int = 1) -> list:
    """Send ``messages`` as one write; the replies up to and including the ``ready``-th
    ReadyForQuery."""
    sock.sendall(b"".join(codec.encode(msg) for msg in messages))
    decoder, replies = codec.BackendDecoder(), []
    while True:
        msg = decoder.next_message()
        if msg is None:
            data = sock.recv(65536)
            assert data, "the proxy closed the connection"
            decoder.feed(data)
            continue
        replies.append(msg)
        if isinstance(msg, m.ReadyForQuery):
            ready -= 1
            if not ready:
                return replies


def test_a_write_after_other_statements_in_one_batch_is_seen_inside_the_batch(proxied) -> None:
    # Statements on unregistered tables leave the hooks quiet (their Bind/Execute/Sync are
    # relayed undecoded); the relay still knows the batch is open when the write's Parse
    # comes, so the proxy does not send its own query into the middle of the batch (it
    # refuses the write, as a write first in a batch is the way), and the batch ends as
    # PostgreSQL ends it.
    insert = "INSERT INTO accounts (id, owner, balance) VALUES ({}, 'raw', 0)"
    with psycopg.connect(proxy_dsn(proxied, "n2"), autocommit=True) as conn:
        conn.execute("SELECT count(*) FROM accounts")  # the proxy has its catalog loaded now
    with socket.create_connection(proxied.proxy_address("n2"), timeout=30) as sock:
        replies = _raw_exchange(sock, m.StartupMessage({"user": "postgres",
                                                        "database": "postgres"}))
        assert isinstance(replies[-1], m.ReadyForQuery)
        # unregistered statements only: the hooks go quiet
        replies = _raw_exchange(sock, m.Parse("one", "SELECT 1", ()), m.Sync())
        assert [type(r) for r in replies] == [m.ParseComplete, m.ReadyForQuery]
        for _ in range(2):
            replies = _raw_exchange(sock, m.Bind("", "one"), m.Execute("", 0), m.Sync())
            assert [type(r) for r in replies][-2:] == [m.CommandComplete, m.ReadyForQuery]
        # Bind and Execute of "one" open the batch without being decoded
        replies = _raw_exchange(sock, m.Bind("", "one"), m.Execute("", 0),
                                m.Parse("", insert.format(660), ()),
                                m.Bind("", ""), m.Execute("", 0), m.Sync())
        errors_ = [r for r in replies if isinstance(r, m.ErrorResponse)]
        assert len(errors_) == 1 and errors_[0].fields["C"] == "0A000", replies
        assert "inside a pipeline" in errors_[0].fields["M"]
        assert replies[-1] == m.ReadyForQuery("I")
        assert any(isinstance(r, m.DataRow) for r in replies)  # the SELECT before it ran
        # first in its batch, the same write goes through the log
        replies = _raw_exchange(sock, m.Parse("", insert.format(661), ()), m.Bind("", ""),
                                m.Execute("", 0), m.Sync())
        assert [type(r) for r in replies] == [m.ParseComplete, m.BindComplete,
                                              m.CommandComplete, m.ReadyForQuery], replies
        sock.sendall(codec.encode(m.Terminate()))
    ids = {r[0] for r in rows_everywhere(proxied)}
    assert 660 not in ids and 661 in ids


def _backend_state_change(cluster, node: str, pid: int):
    with psycopg.connect(cluster.node(node).dsn, autocommit=True) as conn:
        return conn.execute("SELECT state_change FROM pg_stat_activity WHERE pid = %s",
                            [pid]).fetchone()[0]


def test_a_prepared_write_again_is_answered_without_the_node(proxied) -> None:
    # Bind, (Describe,) Execute, Sync of a prepared write the node accepted before, with
    # nothing run in the session since: the proxy answers all of it; the client's backend
    # sees none of it. Errors still come back in their place, and anything that ran in the
    # session (a DEALLOCATE here) sends the next Bind to the node again.
    insert = "INSERT INTO accounts (id, owner, balance) VALUES ($1, 'fast', 0)"
    with socket.create_connection(proxied.proxy_address("n2"), timeout=30) as sock:
        replies = _raw_exchange(sock, m.StartupMessage({"user": "postgres",
                                                        "database": "postgres"}))
        pid = next(r.pid for r in replies if isinstance(r, m.BackendKeyData))
        assert isinstance(_raw_exchange(sock, m.Parse("ins", insert, (23,)), m.Sync())[-1],
                          m.ReadyForQuery)

        def write(value: bytes, describe: bool = True) -> list:
            return _raw_exchange(sock, m.Bind("", "ins", (0,), (value,), ()),
                                 *([m.Describe("P", "")] if describe else []),
                                 m.Execute("", 0), m.Sync())

        shape = [m.BindComplete, m.NoData, m.CommandComplete, m.ReadyForQuery]
        assert [type(r) for r in write(b"730")] == shape  # through the node: confirms "ins"
        before = _backend_state_change(proxied, "n2", pid)
        assert [type(r) for r in write(b"731")] == shape
        assert [type(r) for r in write(b"732", describe=False)] == shape[:1] + shape[2:]
        # two writes in one send, each with its Sync (a pipelining client)
        both = _raw_exchange(sock, m.Bind("", "ins", (0,), (b"734",), ()), m.Execute("", 0),
                             m.Sync(), m.Bind("", "ins", (0,), (b"735",), ()),
                             m.Execute("", 0), m.Sync(), ready=2)
        assert [type(r) for r in both] == [m.BindComplete, m.CommandComplete,
                                           m.ReadyForQuery] * 2
        duplicate = write(b"731")
        assert [type(r) for r in duplicate] == [m.BindComplete, m.NoData, m.ErrorResponse,
                                                m.ReadyForQuery]
        assert duplicate[2].fields["C"] == "23505" and duplicate[-1] == m.ReadyForQuery("I")
        bad = write(b"seven")  # fails in the apply, the same on every node
        assert bad[-2].fields["C"] == "22P02" and bad[-1] == m.ReadyForQuery("I")
        assert _backend_state_change(proxied, "n2", pid) == before  # none of it reached it
        _raw_exchange(sock, m.Query("DEALLOCATE ins"))
        gone = write(b"733")
        assert [type(r) for r in gone] == [m.ErrorResponse, m.ReadyForQuery]
        assert gone[0].fields["C"] == "26000"  # PostgreSQL's own answer: no such statement
        sock.sendall(codec.encode(m.Terminate()))
    ids = {r[0] for r in rows_everywhere(proxied)}
    assert {730, 731, 732, 734, 735} <= ids and 733 not in ids


def test_explain_reads_registered_tables_from_the_cluster(proxied) -> None:
    import json
    import sys
    from pathlib import Path
    replicate = str(Path(sys.executable).parent / "replicate")
    result = subprocess.run([replicate, "explain", "--config", str(proxied.config_path), "--json",
                             "UPDATE accounts SET balance = 1 WHERE id = 1; "
                             "UPDATE local_notes SET note = 'x'"],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    actions = [s["action"] for s in json.loads(result.stdout)["statements"]]
    assert actions == ["replicate", "relay"]


@pytest.mark.parametrize("prepared", [False, True])
def test_session_changes_between_writes_are_seen(proxied, prepared: bool) -> None:
    # The proxy reuses a session's facts between writes. Anything that runs in the session
    # makes it read them again: a SELECT that changes bytea_output (a setting the node does
    # not report by itself), a read of a registered table that changes it back, then SET
    # TimeZone; a pure read keeps them. With prepare_threshold=0 the writes after the first
    # re-execute one prepared statement (a batch that starts with its Bind). The appliers
    # run the same text four times under two bytea_output values: a cached generic plan
    # made under the first would fold the cast once (see runtime/applier.py, _parse_context).
    base = 300 + 10 * int(prepared)
    insert = ("INSERT INTO accounts (id, owner, balance, opened) "
              "VALUES (%s, '\\x41'::bytea::text, 1, %s)")
    with psycopg.connect(proxy_dsn(proxied), autocommit=True,
                         prepare_threshold=0 if prepared else None) as conn:
        conn.execute("SET TimeZone = 'UTC'")
        conn.execute(insert, [base, "2026-01-01 12:00:00"])
        conn.execute("SELECT set_config('bytea_output', 'escape', false)")
        conn.execute("SELECT owner FROM accounts WHERE id = %s", [base])  # pure: facts kept
        conn.execute(insert, [base + 1, "2026-01-01 12:00:00"])
        # a read of a registered table that changes a setting (not pure): facts asked again
        conn.execute("SELECT set_config('bytea_output', 'hex', false) FROM accounts "
                     "WHERE id = %s", [base])
        conn.execute(insert, [base + 2, "2026-01-01 12:00:00"])
        conn.execute("SET TimeZone = 'Asia/Tokyo'")
        conn.execute(insert, [base + 3, "2026-01-01 12:00:00"])
    rows = {r[0]: r for r in rows_everywhere(proxied) if base <= r[0] < base + 10}
    assert [rows[base + i][1] for i in range(4)] == ["\\x41", "A", "\\x41", "\\x41"]
    utc = rows[base][3].tzinfo
    assert [rows[base + i][3].astimezone(utc).hour for i in range(4)] == [12, 12, 12, 3]


def test_simple_texts_that_differ_in_numbers_each_do_their_own_work(proxied) -> None:
    """psql sends each -c as a simple Query; the proxy decides the first UPDATE and SELECT and
    reuses the decisions for the texts with other numbers (gate/template.py): each must still
    change and read its own row, with its own amount."""
    ids = range(1301, 1311)
    args = ["psql", "-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1", proxy_dsn(proxied, "n2")]
    for i in ids:
        args += ["-c", f"INSERT INTO accounts (id, owner, balance) VALUES ({i}, 'num', {i})"]
    for i in ids:
        args += ["-c", f"UPDATE accounts SET balance = balance + {i - 1300} WHERE id = {i}",
                 "-c", f"SELECT id, balance FROM accounts WHERE id = {i};"]
    done = subprocess.run(args, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == [f"{i}|{i + i - 1300}.00" for i in ids]
    rows = {r[0]: r[2] for r in rows_everywhere(proxied) if r[0] in ids}
    assert rows == {i: i + i - 1300 for i in ids}


def _hang_up(sock: socket.socket) -> None:
    """End the stream after what was sent (so the proxy reads all of it), then reset, as a
    killed client does: the proxy's next write to it fails."""
    sock.shutdown(socket.SHUT_WR)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


def test_clients_that_hang_up_mid_answer_leave_no_error_and_no_write_twice(proxied) -> None:
    """Clients reset their connection right after a replicated write (simple and extended) or
    a large read: the proxies (followers and leader, on uvloop) drop those sessions without
    an error, apply no write twice (an unanswered write may or may not be applied, as with
    PostgreSQL itself), the nodes agree, and the proxies keep serving."""
    leader = asyncio.run(wait_for_leader(proxied))
    startup = m.StartupMessage({"user": "postgres", "database": "postgres"})
    logs = {n.name: proxied.proxy(n.name).log_file for n in proxied.nodes}
    sizes = {name: path.stat().st_size for name, path in logs.items()}
    upsert = ("INSERT INTO accounts (id, owner, balance) VALUES ({}, 'gone', 1) "
              "ON CONFLICT (id) DO UPDATE SET balance = accounts.balance + 1")
    keys = iter(range(4100, 4200))
    sent = []
    for name in ("n1", "n2", "n3"):
        for _ in range(5):
            simple, extended = next(keys), next(keys)
            sent += [simple, extended]
            batches = [
                [m.Query(upsert.format(simple))],
                [m.Parse("", upsert.format("$1"), ()),
                 m.Bind("", "", (), (str(extended).encode(),), ()), m.Execute("", 0), m.Sync()],
                [m.Query("SELECT a.*, repeat('z', 100000) FROM accounts a, "
                         "generate_series(1, 20)")],
            ]
            for messages in batches:
                with socket.create_connection(proxied.proxy_address(name), timeout=30) as sock:
                    assert isinstance(_raw_exchange(sock, startup)[-1], m.ReadyForQuery)
                    sock.sendall(b"".join(codec.encode(msg) for msg in messages))
                    _hang_up(sock)
    time.sleep(1)  # writes that were submitted still travel
    rows = {r[0]: r for r in rows_everywhere(proxied)}
    applied = [key for key in sent if key in rows]
    assert applied and all(rows[key][2] == 1 for key in applied), [rows.get(k) for k in sent]
    for name, path in logs.items():
        with open(path, "rb") as f:
            f.seek(sizes[name])
            added = f.read().decode(errors="replace")
        assert not any(word in added for word in ("ERROR", "Traceback", "exception")), \
            (name, leader, added[-3000:])
    for name in logs:
        with psycopg.connect(proxy_dsn(proxied, name), autocommit=True) as conn:
            conn.execute(upsert.format(4300), prepare=False)
    assert {r[0]: r for r in rows_everywhere(proxied)}[4300][2] == 3
