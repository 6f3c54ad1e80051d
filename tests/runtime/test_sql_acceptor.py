"""The PL/pgSQL acceptor against the Python reference (``Acceptor`` + ``InMemoryAcceptorStorage``).

The differential test generates sequences of acceptor requests over a small space (rounds 0..4,
proposers 0..2, slots 1..8, a pool of values that share request ids and payloads, incl. the
no-op), so that ballots collide, batches overlap and chosen marks are set, kept and dropped
often. After every request both replies must be equal; after every sequence both end states
(promise, whether a read lease runs, and every log row with its chosen mark). Leases are asked
for with 10 minutes (both sides: the model's clock stands at 0, the server's runs for the few
seconds of the test), so a lease granted in a sequence runs until its end; a lease that ends is
tested by hand below. ``REPLICATE_DIFF_EXAMPLES`` raises the number of sequences (default 200).
"""

from __future__ import annotations

import asyncio
import os
import threading
import time

import psycopg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from replicate.paxos.acceptor import Acceptor, InMemoryAcceptorStorage
from replicate.paxos.ballot import Ballot
from replicate.paxos.messages import (
    NOOP, Accept, Accepted, AcceptedEntry, ChosenEntry, Commit, Committed, Fetch, Fetched, Leased,
    Nack, Prepare, Promise, Value,
)
from replicate.runtime import schema, sql_acceptor
from replicate.runtime.pqconn import PqConnection
from replicate.runtime.sql_acceptor import acall, call, decode, encode

EXAMPLES = int(os.environ.get("REPLICATE_DIFF_EXAMPLES", "200"))

RESET = ("TRUNCATE replicate.log, replicate.marks; "
         "UPDATE replicate.acceptor SET promised_round = 0, promised_proposer = 0, "
         "lease_until = NULL, marked_round = NULL, marked_proposer = NULL, marked_upto = NULL, "
         "accepted_upto = 0")
TEN_MINUTES = 600_000


@pytest.fixture
def conn(fresh_db: list[str]):
    with psycopg.connect(fresh_db[0], autocommit=True, connect_timeout=10) as conn:
        schema.install(conn)
        yield conn


def sql_state(conn: psycopg.Connection) -> tuple[Ballot, dict[int, AcceptedEntry]]:
    promised = Ballot(*conn.execute(
        "SELECT promised_round, promised_proposer FROM replicate.acceptor").fetchone())
    rows = conn.execute("SELECT slot, ballot_round, ballot_proposer, request_id, payload, chosen "
                        "FROM replicate.log_marked ORDER BY slot").fetchall()
    return promised, {s: AcceptedEntry(s, Ballot(r, p), Value(rid, bytes(pl)), ch)
                      for s, r, p, rid, pl, ch in rows}


# -- the differential test -------------------------------------------------------------------

# Values that differ only in payload, only in request id, or not at all, plus the no-op and
# bytes that text formats would have to escape.
POOL = [NOOP, Value("a", b"1"), Value("a", b"2"), Value("b", b"1"), Value("b", b"\x00\xff\\'")]

ballots = st.builds(Ballot, st.integers(0, 4), st.integers(0, 2))
slots = st.integers(1, 8)
uptos = st.integers(0, 8)
batches = st.lists(st.sampled_from(POOL), min_size=1, max_size=3).map(tuple)
limits = st.integers(1, 5)
kinds = st.integers(0, 4)  # Accept, Commit, Prepare, Fetch, re-Accept (shrinks towards Accept)


@st.composite
def sequences(draw: st.DrawFn) -> list:
    """4..40 requests; each reuses the previous ballot half of the time, as a leader does, so
    that accepts are followed by commits under the same ballot and marks get set. A re-Accept
    sends an earlier Accept's values to its slots again, under the ballot of the moment, as a
    new leader re-proposes what its phase 1 found (or a leader retransmits), at times with one
    payload changed under the same request id: so that marks are often kept and dropped."""
    ops: list = []
    ballot = draw(ballots)
    for _ in range(draw(st.integers(4, 40))):
        if draw(st.booleans()):
            ballot = draw(ballots)
        kind = draw(kinds)
        if kind == 0:
            ops.append(Accept(ballot, draw(slots), draw(batches), draw(uptos)))
        elif kind == 1:
            lease = draw(st.sampled_from((0, 0, TEN_MINUTES)))
            ops.append(Commit(ballot, draw(uptos), lease, draw(st.integers(0, 3)) if lease else 0))
        elif kind == 2:
            ops.append(Prepare(ballot, draw(slots)))
        elif kind == 3 or not any(isinstance(op, Accept) for op in ops):
            ops.append(Fetch(draw(slots), draw(limits)))
        else:
            earlier = draw(st.sampled_from([op for op in ops if isinstance(op, Accept)]))
            values = list(earlier.values)
            i = draw(st.integers(0, len(values) - 1))
            if values[i].request_id and draw(st.booleans()):
                values[i] = Value(values[i].request_id, values[i].payload + b"!")
            ops.append(Accept(ballot, earlier.first_slot, tuple(values), draw(uptos)))
    return ops


def test_sql_acceptor_matches_the_reference(conn: psycopg.Connection) -> None:
    rules = Acceptor()
    seen = {"examples": 0, "requests": 0, "kinds": set(), "kept": 0, "dropped": 0,
            "payload_changed": 0}

    @settings(max_examples=EXAMPLES, deadline=None, database=None,
              suppress_health_check=[HealthCheck.function_scoped_fixture,
                                     HealthCheck.too_slow])
    @given(sequences())
    def run(ops: list) -> None:
        conn.execute(RESET)
        model = InMemoryAcceptorStorage()
        for i, request in enumerate(ops):
            write, expected = rules.handle(model, request)
            if write.accept is not None:  # count chosen marks kept and dropped by re-accepts
                for j, value in enumerate(request.values):
                    old = model.entry(request.first_slot + j)
                    if old is not None and old.chosen:
                        seen["kept" if old.value == value else "dropped"] += 1
                        if old.value.request_id == value.request_id != "" \
                                and old.value.payload != value.payload:
                            seen["payload_changed"] += 1
            model.apply(write)
            got = call(conn, request)
            assert got == expected, f"request #{i} {request}"
            seen["kinds"].add(type(got).__name__)
        assert sql_state(conn) == (model.promised(), model.entries())
        assert conn.execute("SELECT coalesce(lease_until > clock_timestamp(), false) "
                            "FROM replicate.acceptor").fetchone()[0] == (model.lease_until() > 0)
        seen["examples"] += 1
        seen["requests"] += len(ops)

    started = time.monotonic()
    run()
    seconds = time.monotonic() - started
    print(f"\ndifferential: {seen['examples']} sequences, {seen['requests']} requests, "
          f"{seen['kept']} chosen marks kept and {seen['dropped']} dropped by re-accepts "
          f"({seen['payload_changed']} for a changed payload under the same request id), "
          f"{seconds:.1f} s")
    # The generator reaches every kind of reply and both fates of a chosen mark (else the
    # comparison proves little).
    assert seen["kinds"] == {"Promise", "Nack", "Leased", "Accepted", "Committed", "Fetched"}
    assert seen["kept"] and seen["dropped"] and seen["payload_changed"]


# -- hand-written cases ----------------------------------------------------------------------

B1 = Ballot(1, 0)
B2 = Ballot(2, 1)
X = Value("r1", b"x")
Y = Value("r2", b"y")


def test_fresh_acceptor_promises_with_an_empty_report(conn: psycopg.Connection) -> None:
    assert call(conn, Prepare(B1, 1)) == Promise(B1, 1, ())
    assert call(conn, Prepare(Ballot(0, 0), 1)) == Nack(Ballot(0, 0), B1)


def test_lower_ballot_is_nacked_and_writes_nothing(conn: psycopg.Connection) -> None:
    assert call(conn, Prepare(B2, 1)) == Promise(B2, 1, ())
    assert call(conn, Accept(B1, 1, (X,), 1)) == Nack(B1, B2)
    assert call(conn, Prepare(B1, 1)) == Nack(B1, B2)
    assert call(conn, Prepare(Ballot(2, 0), 1)) == Nack(Ballot(2, 0), B2)  # same round, lower id
    assert sql_state(conn) == (B2, {})
    # Equal ballot passes (re-delivery from the promise holder).
    assert call(conn, Accept(B2, 1, (X,), 0)) == Accepted(B2, 1, 1, 0)
    assert call(conn, Prepare(B2, 1)) == Promise(B2, 1, (AcceptedEntry(1, B2, X),))


def test_accept_raises_the_promise(conn: psycopg.Connection) -> None:
    assert call(conn, Accept(B2, 3, (X, Y), 0)) == Accepted(B2, 3, 4, 0)
    assert call(conn, Prepare(B1, 1)) == Nack(B1, B2)
    assert call(conn, Prepare(B2, 4)) == Promise(B2, 4, (AcceptedEntry(4, B2, Y),))


def test_marking_respects_the_ballot(conn: psycopg.Connection) -> None:
    call(conn, Accept(B1, 1, (X, Y), 0))
    call(conn, Accept(B2, 2, (Y, X), 0))  # slot 2 now under B2, slot 3 new under B2
    # Commit under B1 marks only slot 1 (the one still accepted under B1), and Nacks.
    assert call(conn, Commit(B1, 3)) == Nack(B1, B2)
    assert call(conn, Fetch(1, 5)) == Fetched(1, (ChosenEntry(1, X),))
    # Commit under B2 up to 2 marks slot 2 but not slot 3.
    assert call(conn, Commit(B2, 2)) == Committed(B2, 2)
    assert call(conn, Fetch(1, 5)) == Fetched(1, (ChosenEntry(1, X), ChosenEntry(2, Y)))
    # commit_upto 0 marks nothing.
    assert call(conn, Commit(B2, 0)) == Committed(B2, 0)
    assert call(conn, Fetch(3, 5)) == Fetched(3, ())
    # Accept carries commit_upto: the mark runs after the batch is stored.
    assert call(conn, Accept(B2, 4, (NOOP,), 4)) == Accepted(B2, 4, 4, 4)
    assert call(conn, Fetch(2, 2)) == Fetched(2, (ChosenEntry(2, Y), ChosenEntry(3, X)))
    assert [e.chosen for e in sql_state(conn)[1].values()] == [True, True, True, True]


def test_chosen_mark_kept_on_identical_reaccept_dropped_on_change(
        conn: psycopg.Connection) -> None:
    call(conn, Accept(B1, 1, (X, Y), 2))
    assert all(e.chosen for e in sql_state(conn)[1].values())
    # A new leader re-proposes slot 1 unchanged and slot 2 with another payload (same id).
    changed = Value("r2", b"other")
    assert call(conn, Accept(B2, 1, (X, changed), 0)) == Accepted(B2, 1, 2, 0)
    _, log = sql_state(conn)
    assert log[1] == AcceptedEntry(1, B2, X, True)
    assert log[2] == AcceptedEntry(2, B2, changed, False)


def test_prepare_reports_every_entry_from_slot(conn: psycopg.Connection) -> None:
    call(conn, Accept(B1, 1, (X, NOOP, Y), 2))
    assert call(conn, Prepare(B2, 2)) == Promise(B2, 2, (
        AcceptedEntry(2, B1, NOOP, True), AcceptedEntry(3, B1, Y, False)))
    assert call(conn, Prepare(B2, 4)) == Promise(B2, 4, ())


def test_large_binary_payloads_round_trip(conn: psycopg.Connection) -> None:
    big = Value("big", bytes(range(256)) * 4096)  # 1 MiB, every byte value
    call(conn, Accept(B1, 1, (big, NOOP), 2))
    assert call(conn, Fetch(1, 1)) == Fetched(1, (ChosenEntry(1, big),))


def test_call_refuses_a_connection_in_a_transaction(fresh_db: list[str]) -> None:
    with psycopg.connect(fresh_db[0]) as conn:
        schema.install(conn)
        with pytest.raises(ValueError, match="autocommit"):
            call(conn, Prepare(B1, 1))


def test_acall(fresh_db: list[str]) -> None:
    # The engine's path: libpq driven directly (PqConnection), binary parameters and results.
    big = Value("grosse-requête", bytes(range(256)) * 4096)  # 1 MiB, every byte, non-ASCII id

    async def go() -> list:
        async with await psycopg.AsyncConnection.connect(fresh_db[1], autocommit=True) as conn:
            await schema.ainstall(conn)
        pq = await PqConnection.connect(fresh_db[1])
        try:
            return [await acall(pq, r) for r in (
                Prepare(B1, 1), Accept(B1, 1, (X,), 1), Commit(B2, 1), Fetch(1, 3),
                Accept(B1, 2, (big, NOOP), 0), Commit(B1, 3), Fetch(2, 5), Prepare(B2, 2),
                Accept(B1, 4, (X,), 0))]
        finally:
            await pq.close()

    assert asyncio.run(go()) == [
        Promise(B1, 1, ()), Accepted(B1, 1, 1, 1), Committed(B2, 1),
        Fetched(1, (ChosenEntry(1, X),)),
        Accepted(B1, 2, 3, 0), Committed(B1, 3),
        Fetched(2, (ChosenEntry(2, big), ChosenEntry(3, NOOP))),
        Promise(B2, 2, (AcceptedEntry(2, B1, big, True), AcceptedEntry(3, B1, NOOP, True))),
        Nack(B1, B2)]


def test_a_read_lease_refuses_higher_ballots_until_it_ends(conn: psycopg.Connection) -> None:
    assert call(conn, Prepare(B1, 1)) == Promise(B1, 1, ())
    assert call(conn, Commit(B1, 0, 400, 17)) == Committed(B1, 0, 400, 17)
    assert call(conn, Prepare(B2, 1)) == Leased(B2, B1)
    assert call(conn, Accept(B2, 1, (X,), 0)) == Leased(B2, B1)
    assert call(conn, Accept(B1, 1, (X,), 0)) == Accepted(B1, 1, 1, 0)  # the holder passes
    assert call(conn, Commit(B2, 1, 400, 18)) == Committed(B2, 1, 0, 18)  # not its promise
    assert sql_state(conn) == (B1, {1: AcceptedEntry(1, B1, X)})
    time.sleep(0.5)
    assert call(conn, Prepare(B2, 1)) == Promise(B2, 1, (AcceptedEntry(1, B1, X),))
    # the lease call commits synchronously even where asynchronous commit is the default
    # (its WAL is flushed when it returns; other processes may write WAL in between: 3 tries)
    conn.execute("SET synchronous_commit = off")
    flushed = []
    for _ in range(3):
        conn.execute("SELECT * FROM replicate.commit(2, 1, 0, 300)")
        flushed.append(conn.execute(
            "SELECT pg_current_wal_flush_lsn() >= pg_current_wal_insert_lsn()").fetchone()[0])
    assert any(flushed)
    with pytest.raises(psycopg.errors.InvalidParameterValue):
        call(conn, Commit(B2, 0, 3_600_001))


def test_the_version_4_commit_still_answers(conn: psycopg.Connection) -> None:
    # proxies of an earlier version call it during a rolling upgrade
    assert call(conn, Prepare(B2, 1)) == Promise(B2, 1, ())
    assert conn.execute("SELECT * FROM replicate.commit(2, 1, 0)").fetchall() == [(True, 2, 1)]
    assert conn.execute("SELECT * FROM replicate.commit(1, 0, 0)").fetchall() == [(False, 2, 1)]
    assert conn.execute("SELECT lease_until FROM replicate.acceptor").fetchone() == (None,)


def test_encode_decode_are_pure_and_reject_other_messages() -> None:
    sql, params = encode(Accept(B1, 5, (X, Y), 4))
    assert sql.startswith("SELECT * FROM replicate.accept(")
    assert [int(p) for p in params[:3]] == [1, 0, 5] and params[3] == ["r1", "r2"]
    assert decode(Accept(B1, 5, (X, Y), 4), [(True, 1, 0)]) == Accepted(B1, 5, 6, 4)
    assert decode(Commit(B1, 4), [(False, 2, 1, 0)]) == Nack(B1, B2)
    with pytest.raises(TypeError):
        encode(Committed(B1, 1))  # type: ignore[arg-type]


def test_an_accept_sent_to_every_acceptor_is_encoded_once() -> None:
    # The leader hands one Accept object to each acceptor link: the same Query comes back,
    # while another request, even an equal one, is encoded afresh and alike.
    accept = Accept(B1, 5, (X, Y), 4)
    first = sql_acceptor.query(accept)
    assert sql_acceptor.query(accept) is first
    twin = sql_acceptor.query(Accept(B1, 5, (X, Y), 4))
    assert twin == first and twin is not first
    assert sql_acceptor.query(Accept(B1, 7, (X,), 6)).params[2] == (7).to_bytes(8, "big")
    for slot in range(1, 40):  # bounded
        sql_acceptor.query(Accept(B1, slot, (X,), 0))
    assert len(sql_acceptor._ENCODED_ACCEPTS) <= sql_acceptor._ENCODED_MAX
    assert sql_acceptor.query(Commit(B1, 4)) is not sql_acceptor.query(Commit(B1, 4))


def test_concurrent_calls_serialise(fresh_db: list[str]) -> None:
    # Four proposers hammer one node at once: every call completes (no deadlock, no
    # serialisation failure) and the promise ends at the highest ballot any of them used.
    errors: list[BaseException] = []

    def proposer(pid: int) -> None:
        try:
            with psycopg.connect(fresh_db[0], autocommit=True) as c:
                for r in range(1, 31):
                    b = Ballot(r, pid)
                    call(c, Prepare(b, 1))
                    call(c, Accept(b, r % 5 + 1, (Value(f"p{pid}", bytes([r])),) * 3, r))
                    call(c, Commit(b, 8))
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    with psycopg.connect(fresh_db[0], autocommit=True) as c:
        schema.install(c)
    threads = [threading.Thread(target=proposer, args=(pid,)) for pid in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert errors == []
    with psycopg.connect(fresh_db[0]) as c:
        assert sql_state(c)[0] == Ballot(30, 3)


def test_a_mark_writes_no_log_row_and_reads_only_what_it_changes(
        conn: psycopg.Connection) -> None:
    # Chosen marks are watermarks (sql/011_chosen_watermarks.sql): a mark moves a watermark of
    # its ballot and writes no log row. Before schema version 9 each marked slot got a second,
    # non-HOT version; before version 7 each mark also walked every slot marked since the last
    # VACUUM. A log of 100,000 slots that VACUUM has not visited, then a leader's steady state:
    # accept a batch, mark the one before.
    b = Ballot(1, 0)

    def flagged() -> int:
        return conn.execute("SELECT count(*) FROM replicate.log WHERE chosen").fetchone()[0]

    def unmarked() -> list[int]:
        return [r[0] for r in conn.execute(
            "SELECT slot FROM replicate.log_marked WHERE NOT chosen ORDER BY slot")]

    conn.execute("ALTER TABLE replicate.log SET (autovacuum_enabled = false)")
    conn.execute("INSERT INTO replicate.log SELECT s, 1, 0, 'r' || s, '\\x00', false "
                 "FROM generate_series(1, 100000) s")
    conn.execute("UPDATE replicate.acceptor SET promised_round = 1, promised_proposer = 0, "
                 "accepted_upto = 100000")
    assert call(conn, Commit(b, 100000)) == Committed(b, 100000)  # the first mark of b: all
    assert unmarked() == [] and flagged() == 0
    batch = tuple(Value(f"n{i}", b"v") for i in range(13))
    for first in range(100001, 100001 + 13 * 20, 13):  # a leader's steady state
        assert call(conn, Accept(b, first, batch, first - 1)) == Accepted(
            b, first, first + 12, first - 1)
    last = 100000 + 13 * 20
    assert unmarked() == list(range(last - 12, last + 1)) and flagged() == 0

    def buffers(sql: str) -> int:
        plan = "\n".join(r[0] for r in conn.execute(f"EXPLAIN (ANALYZE, BUFFERS) {sql}"))
        return sum(int(n) for n in __import__("re").findall(r"shared (?:hit|read)=(\d+)",
                                                          plan.split("\n")[1]))

    used = buffers(f"SELECT * FROM replicate.commit(1, 0, {last})")
    assert used < 50, used  # 1,069 before schema version 7, ~100 before version 9
    assert unmarked() == [] and flagged() == 0
    # A retransmission that stores marked slots of the same ballot again keeps them marked:
    # the watermark drops below the batch, and the slots above it that it covered get flags.
    assert call(conn, Accept(b, 100005, (Value("n4", b"v"),), 0)).ballot == b
    assert unmarked() == [] and flagged() == last - 100005 + 1
    assert conn.execute("SELECT marked_upto FROM replicate.acceptor").fetchone() == (100004,)
    # One whose own mark reaches the watermark (a leader's retransmission, the values a
    # thrifty leader sends the third node) flags nothing beyond the slot it stores.
    assert call(conn, Accept(b, 100003, (Value("n2", b"v"),), last)).ballot == b
    assert unmarked() == [] and flagged() == last - 100005 + 2
    assert conn.execute("SELECT marked_upto FROM replicate.acceptor").fetchone() == (last,)
    # ... and a value accepted under another ballot, different from the marked one, is not
    assert call(conn, Accept(Ballot(2, 1), 100006, (Value("x", b"v"),), 0)).ballot \
        == Ballot(2, 1)
    assert unmarked() == [100006]
