"""The acceptor rules plus the in-memory storage, checked against a deliberately naive model
(etcd's quorum/quick_test.go idea): random request sequences, same replies, same state.

The naive model is written from the table in ``replicate/paxos/acceptor.py`` alone, the way the
PL/pgSQL functions will be; keep the two in step.
"""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from replicate.paxos import (
    NOOP, Accept, Accepted, Acceptor, Ballot, ChosenEntry, Commit, Committed, Fetch, Fetched,
    InMemoryAcceptorStorage, Nack, Prepare, Promise, Value,
)
from replicate.paxos.messages import AcceptedEntry


class NaiveAcceptor:
    def __init__(self) -> None:
        self.promised = Ballot(0, 0)
        self.slots: dict[int, list] = {}  # slot -> [ballot, value, chosen]

    def mark(self, ballot: Ballot, upto: int) -> None:
        for slot, entry in self.slots.items():
            if slot <= upto and entry[0] == ballot:
                entry[2] = True

    def handle(self, req):
        if isinstance(req, Prepare):
            if req.ballot < self.promised:
                return Nack(req.ballot, self.promised)
            self.promised = req.ballot
            return Promise(req.ballot, req.from_slot, tuple(
                AcceptedEntry(s, e[0], e[1], e[2]) for s, e in sorted(self.slots.items())
                if s >= req.from_slot))
        if isinstance(req, Accept):
            if req.ballot < self.promised:
                return Nack(req.ballot, self.promised)
            self.promised = req.ballot
            for i, v in enumerate(req.values):
                old = self.slots.get(req.first_slot + i)
                keep = old is not None and old[2] and old[1] == v
                self.slots[req.first_slot + i] = [req.ballot, v, keep]
            self.mark(req.ballot, req.commit_upto)
            return Accepted(req.ballot, req.first_slot, req.last_slot, req.commit_upto)
        if isinstance(req, Commit):
            self.mark(req.ballot, req.commit_upto)
            if req.ballot < self.promised:
                return Nack(req.ballot, self.promised)
            return Committed(req.ballot, req.commit_upto)
        if isinstance(req, Fetch):
            chosen = [ChosenEntry(s, e[1]) for s, e in sorted(self.slots.items())
                      if s >= req.from_slot and e[2]]
            return Fetched(req.from_slot, tuple(chosen[:req.limit]))
        raise TypeError(req)


ballots = st.builds(Ballot, st.integers(0, 4), st.integers(0, 2))
values = st.sampled_from([NOOP, Value("x", b"x"), Value("y", b"y"), Value("z", b"z")])
slots = st.integers(1, 6)
requests = st.one_of(
    st.builds(Prepare, ballots, slots),
    st.builds(Accept, ballots, slots, st.lists(values, min_size=1, max_size=3).map(tuple),
              st.integers(0, 8)),
    st.builds(Commit, ballots, st.integers(0, 8)),
    st.builds(Fetch, slots, st.integers(1, 4)),
)


@settings(max_examples=400, deadline=None)
@given(st.lists(requests, max_size=25))
def test_acceptor_matches_the_naive_model(reqs) -> None:
    rules, storage, model = Acceptor(), InMemoryAcceptorStorage(), NaiveAcceptor()
    for req in reqs:
        write, reply = rules.handle(storage, req)
        storage.apply(write)
        assert reply == model.handle(req), req
        assert storage.promised() == model.promised
        assert {s: (e.ballot, e.value, e.chosen) for s, e in storage.entries().items()} == \
            {s: tuple(e) for s, e in model.slots.items()}
