"""The acceptor rules, one operation at a time, against the in-memory storage."""

from __future__ import annotations

from replicate.paxos import (
    NOOP, Accept, Accepted, AcceptedEntry, Acceptor, Ballot, ChosenEntry, Commit, Committed,
    Fetch, Fetched, InMemoryAcceptorStorage, Nack, Prepare, Promise, Value,
)

RULES = Acceptor()
B1, B2, B3 = Ballot(1, 0), Ballot(1, 1), Ballot(2, 0)
X, Y, Z = Value("x", b"x"), Value("y", b"y"), Value("z", b"z")


def run(st: InMemoryAcceptorStorage, req):
    write, reply = RULES.handle(st, req)
    st.apply(write)
    return reply


def test_prepare_promises_and_is_idempotent() -> None:
    st = InMemoryAcceptorStorage()
    assert run(st, Prepare(B2, 1)) == Promise(B2, 1, ())
    assert st.promised() == B2
    # same prepare again (re-delivery): same promise, no harm
    assert run(st, Prepare(B2, 1)) == Promise(B2, 1, ())
    # lower ballot: nack with the promise, nothing written
    assert run(st, Prepare(B1, 1)) == Nack(B1, B2)
    assert st.promised() == B2
    assert run(st, Prepare(B3, 1)) == Promise(B3, 1, ())


def test_prepare_reports_accepted_entries_from_the_slot_on() -> None:
    st = InMemoryAcceptorStorage()
    run(st, Accept(B1, 1, (X, Y, Z), 0))
    reply = run(st, Prepare(B2, 2))
    assert reply == Promise(B2, 2, (AcceptedEntry(2, B1, Y), AcceptedEntry(3, B1, Z)))


def test_accept_checks_the_promise_and_raises_it() -> None:
    st = InMemoryAcceptorStorage()
    run(st, Prepare(B2, 1))
    assert run(st, Accept(B1, 1, (X,), 0)) == Nack(B1, B2)
    assert st.entry(1) is None
    assert run(st, Accept(B2, 1, (X, Y), 0)) == Accepted(B2, 1, 2, 0)
    assert run(st, Accept(B3, 3, (Z,), 0)) == Accepted(B3, 3, 3, 0)
    assert st.promised() == B3  # accept raised the promise
    assert run(st, Accept(B2, 4, (Z,), 0)) == Nack(B2, B3)


def test_commit_marks_only_slots_accepted_under_that_ballot() -> None:
    st = InMemoryAcceptorStorage()
    run(st, Accept(B1, 1, (X, Y), 0))
    run(st, Accept(B2, 2, (Z,), 0))     # slot 2 now holds z under B2
    run(st, Accept(B2, 3, (X,), 0))
    assert run(st, Commit(B2, 2)) == Committed(B2, 2)
    assert not st.entry(1).chosen       # accepted under B1, not B2
    assert st.entry(2).chosen           # accepted under B2, slot <= 2
    assert not st.entry(3).chosen       # above commit_upto
    assert run(st, Fetch(1, 10)) == Fetched(1, (ChosenEntry(2, Z),))


def test_accept_carries_the_commit_index_after_storing_the_batch() -> None:
    st = InMemoryAcceptorStorage()
    assert run(st, Accept(B1, 1, (X, Y), 2)) == Accepted(B1, 1, 2, 2)
    assert st.entry(1).chosen and st.entry(2).chosen


def test_stale_commit_still_marks_but_is_nacked() -> None:
    st = InMemoryAcceptorStorage()
    run(st, Accept(B1, 1, (X,), 0))
    run(st, Prepare(B3, 5))
    assert run(st, Commit(B1, 1)) == Nack(B1, B3)
    assert st.entry(1).chosen  # a fact about B1 stays true under any later promise


def test_overwriting_a_chosen_slot_keeps_the_mark_only_for_the_same_value() -> None:
    st = InMemoryAcceptorStorage()
    run(st, Accept(B1, 1, (X, Y), 2))
    run(st, Accept(B3, 1, (X, NOOP), 0))
    assert st.entry(1) == AcceptedEntry(1, B3, X, True)
    assert st.entry(2) == AcceptedEntry(2, B3, NOOP, False)


def test_fetch_returns_chosen_entries_in_order_up_to_the_limit() -> None:
    st = InMemoryAcceptorStorage()
    run(st, Accept(B1, 1, (X, Y, Z, NOOP), 4))
    assert run(st, Fetch(2, 2)) == Fetched(2, (ChosenEntry(2, Y), ChosenEntry(3, Z)))
    assert run(st, Fetch(9, 5)) == Fetched(9, ())


def test_every_request_gets_a_reply_from_a_fresh_acceptor() -> None:
    for req in (Prepare(B1, 1), Accept(B1, 1, (X,), 0), Commit(B1, 3), Fetch(1, 1)):
        _, reply = RULES.handle(InMemoryAcceptorStorage(), req)
        assert reply is not None
