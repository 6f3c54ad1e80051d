"""The applier on a real node: one transaction per batch, deterministic errors recorded."""

import asyncio

import psycopg
import pytest

from replicate.command import Entry, Param, Status
from replicate.paxos.messages import NOOP, ChosenEntry, Value
from replicate.runtime.applier import ApplyGap, Applier, LocalApplyError
from replicate.runtime.schema import install

pytestmark = pytest.mark.e2e


def chosen(slot: int, rid: str, sql: str, *params: bytes) -> ChosenEntry:
    return ChosenEntry(slot, Value(rid, Entry(sql, tuple(Param(p) for p in params)).encode()))


@pytest.fixture
def node(fresh_db):
    dsn = fresh_db[0]
    with psycopg.connect(dsn, autocommit=True) as conn:
        install(conn)
        conn.execute("CREATE TABLE t (id int PRIMARY KEY, v text)")
    return dsn


def apply(dsn: str, entries) -> list:
    async def run():
        applier = Applier(dsn, apply_timeout_ms=1000)
        try:
            return await applier.apply(entries)
        finally:
            await applier.close()
    return asyncio.run(run())


def test_undecodable_payloads_are_recorded_and_the_batch_goes_on(node) -> None:
    # Bytes that are not an entry (JSON of another shape raised AttributeError before, which
    # stopped the apply loop on every node) fail the same way everywhere: an error outcome.
    insert = "INSERT INTO t VALUES ($1, $2)"
    outcomes = apply(node, [chosen(1, "a", insert, b"1", b"one"),
                            ChosenEntry(2, Value("b", b"[1]")),
                            ChosenEntry(3, Value("c", b'{"v":1,"sql":"x","settings":[]}')),
                            ChosenEntry(4, Value("d", b"\xff")),
                            chosen(5, "e", insert, b"2", b"two")])
    assert [o.status for o in outcomes] == [Status.OK, Status.ERROR, Status.ERROR, Status.ERROR,
                                            Status.OK]
    assert {o.sqlstate for o in outcomes[1:4]} == {"XX001"}
    assert all("malformed log entry" in o.message for o in outcomes[1:4])
    with psycopg.connect(node) as conn:
        assert conn.execute("SELECT id FROM t ORDER BY id").fetchall() == [(1,), (2,)]
        assert conn.execute("SELECT slot FROM replicate.applied").fetchone() == (5,)


def test_batch_with_an_error_in_the_middle(node) -> None:
    insert = "INSERT INTO t VALUES ($1, $2) RETURNING v"
    outcomes = apply(node, [chosen(1, "a", insert, b"1", b"one"),
                            chosen(2, "b", insert, b"1", b"dup"),
                            ChosenEntry(3, NOOP),
                            chosen(4, "c", insert, b"2", b"two"),
                            chosen(5, "a", insert, b"3", b"retried a")])
    assert [o.status for o in outcomes] == [Status.OK, Status.ERROR, Status.NOOP, Status.OK,
                                            Status.DUPLICATE]
    assert outcomes[0].rows == ((b"one",),) and outcomes[3].command_tag == "INSERT 0 1"
    assert outcomes[1].sqlstate == "23505"
    assert outcomes[4].command_tag == "INSERT 0 1" and outcomes[4].ok  # the first one's outcome
    with psycopg.connect(node) as conn:
        assert conn.execute("SELECT id, v FROM t ORDER BY id").fetchall() == [(1, "one"),
                                                                              (2, "two")]
        assert conn.execute("SELECT slot FROM replicate.applied").fetchone() == (5,)
        assert conn.execute("SELECT slot, status, sqlstate FROM replicate.outcomes ORDER BY slot"
                            ).fetchall() == [(1, "ok", None), (2, "error", "23505"),
                                             (3, "noop", None), (4, "ok", None),
                                             (5, "duplicate", None)]


def test_settings_and_role_apply_per_entry(node) -> None:
    with psycopg.connect(node, autocommit=True) as conn:
        conn.execute("CREATE TABLE ts (id int PRIMARY KEY, at text, who text)")
    sql = "INSERT INTO ts VALUES ($1, '2026-01-01 12:00:00+00'::timestamptz::text, current_user)"
    east = Entry(sql, (Param(b"1"),), settings=(("TimeZone", "Asia/Tokyo"),))
    west = Entry(sql, (Param(b"2"),), settings=(("TimeZone", "America/New_York"),))
    plain = Entry(sql, (Param(b"3"),))
    outcomes = apply(node, [ChosenEntry(1, Value("e", east.encode())),
                            ChosenEntry(2, Value("w", west.encode())),
                            ChosenEntry(3, Value("p", plain.encode()))])
    assert all(o.ok for o in outcomes)
    with psycopg.connect(node) as conn:
        rows = conn.execute("SELECT id, at FROM ts ORDER BY id").fetchall()
    assert rows == [(1, "2026-01-01 21:00:00+09"), (2, "2026-01-01 07:00:00-05"),
                    (3, "2026-01-01 12:00:00+00")]  # the canonical UTC, not the node's zone


def test_gap_is_reported(node) -> None:
    with pytest.raises(ApplyGap) as info:
        apply(node, [chosen(3, "x", "INSERT INTO t VALUES (9, 'x')")])
    assert info.value.node_applied == 0


def apply_counting(dsn: str, batches) -> tuple[list, int]:
    """Apply several batches with one applier; also count batches that took the careful path."""
    async def run():
        applier = Applier(dsn, apply_timeout_ms=1000)
        careful = 0
        original = applier._apply_careful

        async def counted(conn, entries):
            nonlocal careful
            careful += 1
            return await original(conn, entries)
        applier._apply_careful = counted
        try:
            return [await applier.apply(b) for b in batches], careful
        finally:
            await applier.close()
    return asyncio.run(run())


def test_a_plain_batch_is_pipelined_and_recorded(node) -> None:
    upsert = ("INSERT INTO t VALUES ($1, $2) ON CONFLICT (id) DO UPDATE SET v = t.v || $2 "
              "RETURNING v")
    (outcomes,), careful = apply_counting(node, [[
        chosen(1, "a", upsert, b"1", b"x"), ChosenEntry(2, NOOP),
        chosen(3, "b", upsert, b"1", b"y"), chosen(4, "c", "DELETE FROM t WHERE id = 7")]])
    assert careful == 0
    assert [(o.status, o.command_tag, o.rows) for o in outcomes] == [
        (Status.OK, "INSERT 0 1", ((b"x",),)), (Status.NOOP, None, ()),
        (Status.OK, "INSERT 0 1", ((b"xy",),)), (Status.OK, "DELETE 0", ())]
    with psycopg.connect(node) as conn:
        assert conn.execute("SELECT slot FROM replicate.applied").fetchone() == (4,)
        assert conn.execute("SELECT request_id, slot FROM replicate.requests ORDER BY slot"
                            ).fetchall() == [("a", 1), ("b", 3), ("c", 4)]
        assert conn.execute("SELECT slot, status, rows_affected, result IS NOT NULL "
                            "FROM replicate.outcomes ORDER BY slot").fetchall() == [
            (1, "ok", 1, True), (2, "noop", None, False), (3, "ok", 1, True),
            (4, "ok", 0, False)]


def test_an_entry_submitted_here_is_applied_without_decoding_its_payload(node) -> None:
    # Engine.submit keeps the entry it encoded in ``Applier.submitted``; the pipelined path
    # takes it from there. A payload nobody could decode shows which one was used.
    entry = Entry("INSERT INTO t VALUES ($1, 'kept')", (Param(b"9"),))

    async def run():
        applier = Applier(node, apply_timeout_ms=1000)
        applier.submitted[b"not an encoded entry"] = entry
        try:
            return await applier.apply([ChosenEntry(1, Value("a", b"not an encoded entry"))])
        finally:
            await applier.close()
    (outcome,) = asyncio.run(run())
    assert (outcome.status, outcome.command_tag) == (Status.OK, "INSERT 0 1")
    with psycopg.connect(node) as conn:
        assert conn.execute("SELECT id, v FROM t").fetchall() == [(9, "kept")]


def test_pipelined_batch_falls_back_on_an_error_and_on_a_repeat(node) -> None:
    insert = "INSERT INTO t VALUES ($1, $2)"
    batches = [[chosen(1, "a", insert, b"1", b"one")],
               # a deterministic error: rolled back, applied again entry by entry
               [chosen(2, "b", insert, b"2", b"two"), chosen(3, "c", insert, b"1", b"dup")],
               # "a" was applied in an earlier batch: a duplicate, not run again
               [chosen(4, "d", insert, b"4", b"four"), chosen(5, "a", insert, b"1", b"again")],
               [chosen(6, "e", insert, b"6", b"six")],
               # "b" again, with a statement that would succeed: only replicate.requests'
               # primary key (in apply_finish) tells the pipelined path it is a repeat
               [chosen(7, "b", insert, b"7", b"seven"), chosen(8, "f", insert, b"8", b"eight")]]
    results, careful = apply_counting(node, batches)
    assert careful == 3
    assert [o.status for r in results for o in r] == [
        Status.OK, Status.OK, Status.ERROR, Status.OK, Status.DUPLICATE, Status.OK,
        Status.DUPLICATE, Status.OK]
    assert results[1][1].sqlstate == "23505"
    with psycopg.connect(node) as conn:
        assert conn.execute("SELECT id, v FROM t ORDER BY id").fetchall() == [
            (1, "one"), (2, "two"), (4, "four"), (6, "six"), (8, "eight")]
        assert conn.execute("SELECT slot FROM replicate.applied").fetchone() == (8,)


def test_pipelined_gap_and_local_error_apply_nothing(node) -> None:
    insert = "INSERT INTO t VALUES ($1, 'x')"
    apply(node, [chosen(1, "a", insert, b"1")])
    with pytest.raises(ApplyGap) as info:
        apply(node, [chosen(3, "c", insert, b"3")])
    assert info.value.node_applied == 1
    with psycopg.connect(node) as locker:  # a lock held past the apply timeout: local, retried
        locker.execute("LOCK TABLE t IN ACCESS EXCLUSIVE MODE")
        with pytest.raises(LocalApplyError) as err:
            apply(node, [chosen(2, "b", insert, b"2")])
        assert err.value.sqlstate == "55P03"
    with psycopg.connect(node) as conn:
        assert conn.execute("SELECT slot FROM replicate.applied").fetchone() == (1,)
        assert conn.execute("SELECT count(*) FROM t").fetchone() == (1,)
    assert apply(node, [chosen(2, "b", insert, b"2")])[0].ok


def test_prepared_statements_follow_each_entrys_settings(node) -> None:
    # The pipelined applier prepares a text once per connection. Expressions that depend on a
    # setting (a bytea rendered as text) must follow each entry's settings even after many
    # executions (no generic plan), and a text lexed under another standard_conforming_strings
    # is prepared again.
    with psycopg.connect(node, autocommit=True) as conn:
        conn.execute("CREATE TABLE tb (id int PRIMARY KEY, v text)")
    insert = "INSERT INTO tb VALUES ($1, '\\x41'::bytea::text)"
    literal = "INSERT INTO tb VALUES ($1, 'a\\tb')"

    def entry(slot: int, sql: str, *settings: tuple[str, str]) -> ChosenEntry:
        return ChosenEntry(slot, Value(f"r{slot}", Entry(sql, (Param(str(slot).encode()),),
                                                          settings=settings).encode()))

    batches = [[entry(i, insert)] for i in range(1, 9)]
    batches.append([entry(9, insert, ("bytea_output", "escape"))])
    batches.append([entry(10, literal)])
    batches.append([entry(11, literal, ("standard_conforming_strings", "off"))])
    _, careful = apply_counting(node, batches)
    assert careful == 0
    with psycopg.connect(node) as conn:
        rows = dict(conn.execute("SELECT id, v FROM tb").fetchall())
    assert [rows[i] for i in (1, 8, 9)] == ["\\x41", "\\x41", "A"]
    assert rows[10] == "a\\tb" and rows[11] == "a\tb"


def test_literals_coerced_at_parse_follow_each_entrys_settings(node) -> None:
    # PostgreSQL coerces a typed literal when it parses a statement ('01/02/2026' as a date
    # under DateStyle, a timestamptz under TimeZone), and a prepared statement keeps that
    # parse. The same text under other settings must not reuse it: every node would keep
    # whichever parse came first on its own connection (a restarted proxy starts afresh).
    with psycopg.connect(node, autocommit=True) as conn:
        conn.execute("CREATE TABLE td (id int PRIMARY KEY, d date, t timestamptz)")
    insert = "INSERT INTO td VALUES ($1, '01/02/2026', '2026-01-02 00:00')"

    def entry(slot: int, *settings: tuple[str, str]) -> ChosenEntry:
        return ChosenEntry(slot, Value(f"r{slot}", Entry(insert, (Param(str(slot).encode()),),
                                                          settings=settings).encode()))

    apply(node, [entry(1, ("DateStyle", "ISO, MDY")),
                 entry(2, ("DateStyle", "ISO, DMY")),
                 entry(3, ("TimeZone", "Asia/Tokyo"))])
    apply(node, [entry(4, ("DateStyle", "ISO, DMY"))])
    with psycopg.connect(node) as conn:
        conn.execute("SET TimeZone = 'UTC'")
        rows = {i: (str(d), str(t)) for i, d, t in conn.execute("SELECT id, d, t FROM td")}
    assert rows[1] == ("2026-01-02", "2026-01-02 00:00:00+00:00")
    assert rows[2][0] == rows[4][0] == "2026-02-01"
    assert rows[3][1] == "2026-01-01 15:00:00+00:00"


def test_the_careful_path_never_keeps_a_parse_across_settings(node) -> None:
    # A request id twice in a batch sends it down the careful path (psycopg, savepoints);
    # psycopg would prepare a text it ran five times and keep its parse.
    with psycopg.connect(node, autocommit=True) as conn:
        conn.execute("CREATE TABLE td (id int PRIMARY KEY, d date)")
    insert = "INSERT INTO td VALUES ($1, '01/02/2026')"

    def twice(slot: int, style: str) -> list[ChosenEntry]:
        value = Value(f"r{slot}", Entry(insert, (Param(str(slot).encode()),),
                                        settings=(("DateStyle", style),)).encode())
        return [ChosenEntry(slot, value), ChosenEntry(slot + 1, value)]

    batches = [twice(slot, "ISO, MDY") for slot in range(1, 13, 2)] + [twice(13, "ISO, DMY")]
    results, careful = apply_counting(node, batches)  # one applier, one connection
    assert careful == len(batches) and results[-1][1].status is Status.DUPLICATE
    with psycopg.connect(node) as conn:
        assert conn.execute("SELECT d FROM td WHERE id = 13").fetchone()[0].isoformat() \
            == "2026-02-01"


def test_apply_begin_does_not_read_the_request_ids(node) -> None:
    """A repeat is found by replicate.requests' primary key when the batch is recorded, not by
    a lookup at the start: that lookup kept a plan made while the table was empty (a
    sequential scan) and read the whole table on every batch of a fresh cluster. A lock on the
    table shows apply_begin does not touch it."""
    with psycopg.connect(node) as holder, \
            psycopg.connect(node, options="-c lock_timeout=2s") as applier:
        holder.execute("LOCK TABLE replicate.requests IN ACCESS EXCLUSIVE MODE")
        applier.execute("SELECT replicate.apply_begin(1, ARRAY['a', 'b'], 1000)")
        applier.rollback()
        with pytest.raises(psycopg.errors.LockNotAvailable):  # apply_finish records them
            applier.execute("SELECT replicate.apply_finish(1, ARRAY[1]::bigint[], ARRAY['a'], "
                            "ARRAY['ok'], ARRAY['INSERT 0 1'], ARRAY[1]::bigint[], "
                            "ARRAY[NULL], ARRAY[NULL], ARRAY[NULL], ARRAY[NULL], "
                            "ARRAY[NULL]::bytea[])")
