"""Read leases: the acceptor's rules (refuse raising a leased promise) and the leader's tracker."""

from __future__ import annotations

import pytest

from replicate.paxos import (
    Accept, Acceptor, Ballot, Commit, Committed, InMemoryAcceptorStorage, Leased, LeaseTracker,
    Nack, Prepare, Promise, Value,
)

A = Acceptor()
B1, B2, B3 = Ballot(1, 0), Ballot(2, 1), Ballot(3, 2)


def run(storage: InMemoryAcceptorStorage, request, at: int):
    storage.clock = at
    write, reply = A.handle(storage, request)
    storage.apply(write)
    return reply


def leased_to_b1(until: int = 100) -> InMemoryAcceptorStorage:
    st = InMemoryAcceptorStorage()
    assert isinstance(run(st, Prepare(B1, 1), 0), Promise)
    assert run(st, Commit(B1, 0, lease=until, stamp=7), 0) == Committed(B1, 0, until, 7)
    return st


def test_a_lease_refuses_higher_prepares_and_accepts_until_it_ends() -> None:
    st = leased_to_b1(100)
    assert run(st, Prepare(B2, 1), 50) == Leased(B2, B1)
    assert run(st, Accept(B2, 1, (Value("r", b"x"),), 0), 99) == Leased(B2, B1)
    assert st.promised() == B1 and st.entry(1) is None      # nothing written
    assert isinstance(run(st, Prepare(B2, 1), 100), Promise)  # the lease ended
    assert st.promised() == B2


def test_the_holder_passes_and_lower_ballots_still_get_nacks() -> None:
    st = leased_to_b1(100)
    assert isinstance(run(st, Prepare(B1, 1), 10), Promise)
    assert run(st, Accept(B1, 1, (Value("r", b"x"),), 0), 10).ballot == B1
    assert run(st, Prepare(Ballot(0, 5), 1), 10) == Nack(Ballot(0, 5), B1)


def test_a_lease_is_granted_only_to_the_promise_and_never_shortened() -> None:
    st = leased_to_b1(100)
    assert run(st, Commit(B1, 0, lease=10, stamp=1), 20) == Committed(B1, 0, 10, 1)
    assert st.lease_until() == 100                # 20 + 10 ends earlier: kept
    assert run(st, Commit(B1, 0, lease=100, stamp=2), 50).lease == 100
    assert st.lease_until() == 150
    # a higher ballot that did not win this acceptor's promise gets no lease, but its commit
    # still marks and answers Committed (it states a fact about its ballot)
    assert run(st, Commit(B3, 0, lease=100, stamp=3), 60) == Committed(B3, 0, 0, 3)
    assert st.lease_until() == 150 and st.promised() == B1
    # without a lease request nothing changes
    assert run(st, Commit(B1, 0), 70) == Committed(B1, 0, 0, 0)
    assert st.lease_until() == 150


def test_tracker_needs_a_majority_and_uses_the_majoritys_oldest_stamp() -> None:
    t = LeaseTracker(3, margin=0.2)
    t.granted(0, Committed(B1, 0, 100, 1000))
    assert not t.valid(B1, 1001)                   # one of three
    t.granted(2, Committed(B1, 0, 100, 1050))
    # valid while now < 1000 + 80 (the older of the two newest grants, with the margin)
    assert t.valid(B1, 1079) and not t.valid(B1, 1080)
    assert t.remaining(B1, 1070) == 10
    t.granted(1, Committed(B1, 0, 100, 1060))      # now the two newest are 1060 and 1050
    assert t.valid(B1, 1129) and not t.valid(B1, 1130)
    assert not t.valid(B2, 1100)                   # another ballot holds no lease
    t.granted(0, Committed(B1, 0, 0, 2000))        # no lease granted: changes nothing
    assert not t.valid(B1, 1130)


def test_tracker_forgets_grants_of_an_earlier_ballot() -> None:
    t = LeaseTracker(3)
    for i in range(3):
        t.granted(i, Committed(B1, 0, 100, 0))
    assert t.valid(B1, 10)
    t.granted(0, Committed(B2, 0, 100, 20))        # a new ballot of ours: start over
    assert not t.valid(B1, 10) and not t.valid(B2, 21)
    t.granted(1, Committed(B1, 0, 100, 30))        # a late grant to the old ballot: ignored
    assert not t.valid(B2, 21)
    t.granted(1, Committed(B2, 0, 100, 25))
    assert t.valid(B2, 30)


def test_tracker_and_messages_reject_nonsense() -> None:
    with pytest.raises(ValueError):
        LeaseTracker(3, margin=1.0)
    with pytest.raises(ValueError):
        Commit(B1, 0, lease=-1)
    with pytest.raises(ValueError):
        Leased(B1, B2)                               # a lease refuses only higher ballots
