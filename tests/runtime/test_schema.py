"""The replicate schema on real PostgreSQL: install, idempotence, versions, concurrency, guard."""

from __future__ import annotations

import asyncio
import threading

import psycopg
import pytest

from replicate.errors import ReplicateError
from replicate.runtime import schema
from replicate.runtime.schema import SCHEMA_VERSION, SchemaError

TABLES = {"meta", "acceptor", "log", "replica_state", "applied", "outcomes",
          "registered_tables", "members", "sequence_state", "check_results",
          "check_rows", "marks"}
FUNCTIONS = {"prepare", "accept", "commit", "fetch", "save_round", "guard", "apply_begin",
             "apply_finish", "track_sequences", "mark_chosen", "save_mark"}

# Everything in schema replicate that an install could change: relations with their columns,
# indexes, constraints, and function bodies.
CATALOG_SNAPSHOT = """
SELECT 'rel', c.relname || ':' || c.relkind::text || ':' || c.relfilenode::text
  FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = 'replicate'
UNION ALL
SELECT 'col', c.relname || '.' || a.attname || ':' || format_type(a.atttypid, a.atttypmod)
       || ':' || a.attnotnull::text
  FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid
  JOIN pg_namespace n ON n.oid = c.relnamespace
 WHERE n.nspname = 'replicate' AND a.attnum > 0 AND NOT a.attisdropped
UNION ALL
SELECT 'con', conname || ':' || pg_get_constraintdef(co.oid)
  FROM pg_constraint co JOIN pg_namespace n ON n.oid = co.connamespace
 WHERE n.nspname = 'replicate'
UNION ALL
SELECT 'fn', p.oid::text || ':' || p.proname || ':' || md5(p.prosrc) || ':' || p.xmin::text
  FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace WHERE n.nspname = 'replicate'
UNION ALL
SELECT 'row', key || '=' || value FROM replicate.meta
ORDER BY 1, 2
"""


def connect(dsn: str, **kwargs) -> psycopg.Connection:
    return psycopg.connect(dsn, connect_timeout=10, **kwargs)


def test_install_on_a_fresh_database(fresh_db: list[str]) -> None:
    # prepare_threshold=0: psycopg would prepare every statement; the multi-statement files
    # must still run (as simple queries).
    with connect(fresh_db[0], prepare_threshold=0) as conn:
        assert schema.installed_version(conn) is None
        assert schema.install(conn) == SCHEMA_VERSION
        assert schema.installed_version(conn) == SCHEMA_VERSION
        tables = {r[0] for r in conn.execute(
            "SELECT tablename FROM pg_tables WHERE schemaname = 'replicate'")}
        assert tables == TABLES
        functions = {r[0] for r in conn.execute(
            "SELECT proname FROM pg_proc WHERE pronamespace = 'replicate'::regnamespace")}
        assert functions == FUNCTIONS
        assert conn.execute("SELECT * FROM replicate.acceptor").fetchall() == [
            (True, 0, 0, None, None, None, None, 0)]
        assert conn.execute("SELECT * FROM replicate.applied").fetchall() == [(True, 0)]
        # chosen marks are watermarks (sql/011): no index of unmarked slots, a view of the marks
        assert conn.execute("SELECT count(*) FROM pg_indexes WHERE indexname = 'log_unchosen'"
                            ).fetchone() == (0,)
        assert conn.execute("SELECT count(*) FROM replicate.log_marked").fetchone() == (0,)
        # The one-row tables refuse a second row.
        with pytest.raises(psycopg.errors.CheckViolation):
            conn.execute("INSERT INTO replicate.acceptor (id) VALUES (false)")


def test_install_twice_changes_nothing(fresh_db: list[str]) -> None:
    with connect(fresh_db[0], autocommit=True) as conn:
        schema.install(conn)
        conn.execute("UPDATE replicate.acceptor SET promised_round = 7, promised_proposer = 2")
        conn.execute("INSERT INTO replicate.log VALUES (1, 7, 2, 'r1', 'x', true)")
        before = conn.execute(CATALOG_SNAPSHOT).fetchall()
        assert schema.install(conn) == SCHEMA_VERSION
        assert conn.execute(CATALOG_SNAPSHOT).fetchall() == before
        assert conn.execute("SELECT * FROM replicate.acceptor").fetchall() == [
            (True, 7, 2, None, None, None, None, 0)]
        assert conn.execute("SELECT count(*) FROM replicate.log").fetchone() == (1,)


def test_install_is_one_transaction_on_autocommit_and_plain_connections(
        fresh_db: list[str]) -> None:
    # Plain (non-autocommit) connection: install commits its own transaction.
    with connect(fresh_db[0]) as conn:
        schema.install(conn)
        assert conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE
    with connect(fresh_db[0]) as other:
        assert schema.installed_version(other) == SCHEMA_VERSION


def test_newer_schema_is_refused(fresh_db: list[str]) -> None:
    with connect(fresh_db[0], autocommit=True) as conn:
        schema.install(conn)
        conn.execute("UPDATE replicate.meta SET value = %s WHERE key = 'schema_version'",
                     (str(SCHEMA_VERSION + 1),))
        before = conn.execute(CATALOG_SNAPSHOT).fetchall()
        with pytest.raises(SchemaError) as caught:
            schema.install(conn)
        assert isinstance(caught.value, ReplicateError)
        assert caught.value.sqlstate == "55000"
        assert f"version {SCHEMA_VERSION + 1}, newer" in caught.value.message
        assert caught.value.hint
        assert conn.execute(CATALOG_SNAPSHOT).fetchall() == before
        assert schema.installed_version(conn) == SCHEMA_VERSION + 1


def test_older_schema_is_upgraded(fresh_db: list[str]) -> None:
    # A node at version 0 (tables from before versioning, a function missing): install runs
    # every file of versions above 0, keeps the data, and records the current version.
    with connect(fresh_db[0], autocommit=True) as conn:
        schema.install(conn)
        conn.execute("INSERT INTO replicate.log VALUES (1, 1, 0, 'r1', 'x', false)")
        conn.execute("DROP FUNCTION replicate.fetch(bigint, integer)")
        conn.execute("UPDATE replicate.meta SET value = '0' WHERE key = 'schema_version'")
        assert schema.install(conn) == SCHEMA_VERSION
        assert schema.installed_version(conn) == SCHEMA_VERSION
        assert conn.execute("SELECT count(*) FROM replicate.fetch(1, 10)").fetchone() == (0,)
        assert conn.execute("SELECT count(*) FROM replicate.log").fetchone() == (1,)


def test_upgrade_to_version_8_knows_the_slots_already_accepted(fresh_db: list[str]) -> None:
    # A version 7 node with accepted slots: the upgrade sets accepted_upto to the highest, so
    # that an Accept of a stored slot still takes INSERT ... ON CONFLICT (sql/010); with
    # accepted_upto left at 0 it would be a plain INSERT and fail on the primary key.
    with connect(fresh_db[0], autocommit=True) as conn:
        schema.install(conn)
        conn.execute("ALTER TABLE replicate.acceptor DROP COLUMN accepted_upto")
        for slot in (1, 2, 5):
            conn.execute("INSERT INTO replicate.log VALUES (%s, 1, 0, %s, 'x', true)",
                         (slot, f"r{slot}"))
        conn.execute("UPDATE replicate.meta SET value = '7' WHERE key = 'schema_version'")
        assert schema.install(conn) == SCHEMA_VERSION
        assert conn.execute("SELECT accepted_upto FROM replicate.acceptor").fetchone() == (5,)
        assert conn.execute("SELECT ok FROM replicate.accept(2, 0, 2, ARRAY['n2'], "
                            "ARRAY['y'::bytea], 0)").fetchone() == (True,)
        assert conn.execute("SELECT slot, request_id, chosen FROM replicate.log ORDER BY slot"
                            ).fetchall() == [(1, "r1", True), (2, "n2", False), (5, "r5", True)]
        # appending above it raises it
        conn.execute("SELECT * FROM replicate.accept(2, 0, 6, ARRAY['n6', 'n7'], "
                     "ARRAY['y'::bytea, 'z'::bytea], 0)")
        assert conn.execute("SELECT accepted_upto FROM replicate.acceptor").fetchone() == (7,)


def test_upgrade_to_version_9_keeps_every_chosen_mark(fresh_db: list[str]) -> None:
    # A version 8 node: marks are flags on the log rows, and the acceptor row remembers the
    # highest ballot's mark (every slot it covers has its flag). Version 9 keeps both as they
    # are (sql/011): the same slots read as chosen, and the next marks are watermarks.
    with connect(fresh_db[0], autocommit=True) as conn:
        schema.install(conn)
        conn.execute("DROP VIEW replicate.log_marked")
        conn.execute("DROP TABLE replicate.marks")
        conn.execute("CREATE INDEX log_unchosen ON replicate.log (slot) WHERE NOT chosen")
        for slot, round_, chosen in ((1, 1, True), (2, 2, True), (3, 2, False)):
            conn.execute("INSERT INTO replicate.log VALUES (%s, %s, 0, %s, 'x', %s)",
                         (slot, round_, f"r{slot}", chosen))
        conn.execute("UPDATE replicate.acceptor SET promised_round = 2, marked_round = 2, "
                     "marked_proposer = 0, marked_upto = 2, accepted_upto = 3")
        conn.execute("UPDATE replicate.meta SET value = '8' WHERE key = 'schema_version'")
        assert schema.install(conn) == SCHEMA_VERSION
        assert conn.execute("SELECT count(*) FROM pg_indexes WHERE indexname = 'log_unchosen'"
                            ).fetchone() == (0,)
        marked = "SELECT slot, chosen FROM replicate.log_marked ORDER BY slot"
        assert conn.execute(marked).fetchall() == [(1, True), (2, True), (3, False)]
        # the leader's next mark moves the watermark and writes no log row
        assert conn.execute("SELECT ok FROM replicate.commit(2, 0, 3, 0)").fetchone() == (True,)
        assert conn.execute(marked).fetchall() == [(1, True), (2, True), (3, True)]
        assert conn.execute("SELECT slot FROM replicate.log WHERE NOT chosen").fetchall() \
            == [(3,)]


def test_upgrade_to_version_10_keeps_the_applied_request_ids(fresh_db: list[str]) -> None:
    # A version 9 node: request ids in a table of their own, next to the outcomes. Version 10
    # (sql/012) makes them an index of the outcomes: the same rows read through the view
    # replicate.requests, and a request applied before still fails the batch that repeats it.
    with connect(fresh_db[0], autocommit=True) as conn:
        schema.install(conn)
        conn.execute("DROP VIEW replicate.requests")
        conn.execute("DROP INDEX replicate.outcomes_request")
        conn.execute("CREATE TABLE replicate.requests (request_id text PRIMARY KEY, "
                     "slot bigint NOT NULL)")
        for slot, rid, status in ((1, "a", "ok"), (2, "", "noop"), (3, "a", "duplicate"),
                                  (4, "b", "error")):
            conn.execute("INSERT INTO replicate.outcomes (slot, request_id, status) "
                         "VALUES (%s, %s, %s)", (slot, rid, status))
        conn.execute("INSERT INTO replicate.requests VALUES ('a', 1), ('b', 4)")
        conn.execute("UPDATE replicate.meta SET value = '9' WHERE key = 'schema_version'")
        assert schema.install(conn) == SCHEMA_VERSION
        assert conn.execute("SELECT request_id, slot FROM replicate.requests ORDER BY slot"
                            ).fetchall() == [("a", 1), ("b", 4)]
        with pytest.raises(psycopg.errors.UniqueViolation):
            conn.execute("SELECT replicate.apply_finish(5, ARRAY[5]::bigint[], ARRAY['b'], "
                          "ARRAY['ok'], ARRAY['INSERT 0 1'], ARRAY[1]::bigint[], ARRAY[NULL], "
                          "ARRAY[NULL], ARRAY[NULL], ARRAY[NULL], ARRAY[NULL]::bytea[])")
        # a lookup by request id can read the index (the table here is too small to prefer it)
        conn.execute("SET enable_seqscan = off")
        plan = "\n".join(r[0] for r in conn.execute(
            "EXPLAIN SELECT slot FROM replicate.requests WHERE request_id = ANY('{a,b}')"))
        assert "outcomes_request" in plan, plan


def test_concurrent_installs_all_succeed(fresh_db: list[str]) -> None:
    barrier = threading.Barrier(4)
    results: list[object] = []

    def worker() -> None:
        try:
            with connect(fresh_db[0]) as conn:
                barrier.wait()
                results.append(schema.install(conn))
        except BaseException as exc:  # noqa: BLE001 - reported below
            results.append(exc)

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert results == [SCHEMA_VERSION] * 4
    with connect(fresh_db[0]) as conn:
        assert conn.execute("SELECT count(*) FROM replicate.acceptor").fetchone() == (1,)


def test_ainstall(fresh_db: list[str]) -> None:
    async def go() -> tuple[int | None, int, int | None]:
        async with await psycopg.AsyncConnection.connect(fresh_db[1]) as conn:
            before = await schema.ainstalled_version(conn)
            after = await schema.ainstall(conn)
            again = await schema.ainstall(conn)
            assert again == after
            return before, after, await schema.ainstalled_version(conn)

    assert asyncio.run(go()) == (None, SCHEMA_VERSION, SCHEMA_VERSION)


def test_every_node_gets_its_own_schema(fresh_db: list[str]) -> None:
    for dsn in fresh_db:
        with connect(dsn) as conn:
            assert schema.install(conn) == SCHEMA_VERSION
    for dsn in fresh_db:
        with connect(dsn) as conn:
            assert schema.installed_version(conn) == SCHEMA_VERSION


def test_save_round_never_decreases(fresh_db: list[str]) -> None:
    with connect(fresh_db[0], autocommit=True) as conn:
        schema.install(conn)
        save = "SELECT replicate.save_round(%s, %s)"
        assert conn.execute(save, (2, 5)).fetchone() == (5,)
        assert conn.execute(save, (2, 3)).fetchone() == (5,)
        assert conn.execute(save, (2, 9)).fetchone() == (9,)
        assert conn.execute(save, (1, 1)).fetchone() == (1,)
        assert conn.execute("SELECT * FROM replicate.replica_state ORDER BY 1").fetchall() == [
            (1, 1), (2, 9)]


# -- the guard trigger ------------------------------------------------------------------------

WRITES = [
    ("INSERT", "INSERT INTO public.items VALUES (2, 'b')"),
    ("UPDATE", "UPDATE public.items SET name = 'z'"),
    ("DELETE", "DELETE FROM public.items"),
]


@pytest.fixture(params=["STATEMENT", "ROW"])
def guarded(request, fresh_db: list[str]):
    with connect(fresh_db[0], autocommit=True) as conn:
        schema.install(conn)
        conn.execute("CREATE TABLE public.items (id int PRIMARY KEY, name text)")
        conn.execute("INSERT INTO public.items VALUES (1, 'a')")
        events = "INSERT OR UPDATE OR DELETE" + (" OR TRUNCATE" if request.param == "STATEMENT"
                                                 else "")
        conn.execute(f"CREATE TRIGGER replicate_guard BEFORE {events} ON public.items "
                     f"FOR EACH {request.param} EXECUTE FUNCTION replicate.guard()")
        yield conn


@pytest.mark.parametrize("op,sql", WRITES)
def test_guard_refuses_direct_writes(guarded: psycopg.Connection, op: str, sql: str) -> None:
    with pytest.raises(psycopg.errors.ObjectNotInPrerequisiteState) as caught:
        guarded.execute(sql)
    diag = caught.value.diag
    assert diag.sqlstate == "55000"
    assert diag.message_primary == f"{op} on table public.items refused: the table is " \
                                   f"replicated by replicate"
    assert "replicate proxy" in diag.message_hint
    assert guarded.execute("SELECT * FROM public.items").fetchall() == [(1, "a")]


@pytest.mark.parametrize("guarded", ["STATEMENT"], indirect=True)  # rows cannot see TRUNCATE
def test_guard_refuses_truncate(guarded: psycopg.Connection) -> None:
    with pytest.raises(psycopg.errors.ObjectNotInPrerequisiteState):
        guarded.execute("TRUNCATE public.items")


@pytest.mark.parametrize("op,sql", WRITES)
def test_guard_lets_the_applier_through(guarded: psycopg.Connection, op: str, sql: str) -> None:
    with guarded.transaction():
        guarded.execute("SET LOCAL replicate.applying = on")
        cur = guarded.execute(sql)
        assert cur.rowcount == 1
    # SET LOCAL ended with the transaction: the next direct write is refused again.
    with pytest.raises(psycopg.errors.ObjectNotInPrerequisiteState):
        guarded.execute("INSERT INTO public.items VALUES (3, 'c')")
    # Only 'on' opens the guard.
    with pytest.raises(psycopg.errors.ObjectNotInPrerequisiteState):
        with guarded.transaction():
            guarded.execute("SET LOCAL replicate.applying = off")
            guarded.execute("INSERT INTO public.items VALUES (3, 'c')")
