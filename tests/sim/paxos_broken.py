"""Deliberately broken variants of the core, plugged into the simulator to prove it has teeth.

Each one is a subclass of a production class with one rule changed, the way a real bug would
look. ``tests/sim/test_sim_teeth.py`` asserts the simulator finds a violation for each within a
bounded number of seeds.
"""

from __future__ import annotations

from replicate.paxos import (
    Acceptor, AcceptorWrite, Ballot, InMemoryAcceptorStorage, Leadership, Replica,
)
from replicate.paxos.messages import Accept, Accepted, Prepare, Promise


class ForgetfulStorage(InMemoryAcceptorStorage):
    """The promise is kept in memory only: a restarted acceptor has promised nothing."""

    def restart(self) -> "ForgetfulStorage":
        self._promised = Ballot(0, 0)
        return self


class AcceptBelowPromise(Acceptor):
    """Accepts whatever ballot comes, without checking it against the promise."""

    def accept(self, state, req: Accept):
        promised = state.promised()
        return (AcceptorWrite(promise=max(promised, req.ballot),
                              accept=(req.ballot, req.first_slot, req.values),
                              mark=(req.ballot, req.commit_upto) if req.commit_upto else None),
                Accepted(req.ballot, req.first_slot, req.last_slot, req.commit_upto))


class AmnesiacRecovery(Replica):
    """Phase 1 ignores the accepted values in the promises: the new leader proposes afresh."""

    def _recover(self, promises, from_slot):
        return []


class BallotReuser(Replica):
    """After a restart, campaigns with the round it persisted instead of the next one."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._reuse = self._max_round > 0

    def _next_round(self) -> int:
        if self._reuse:
            self._reuse = False
            return self._max_round
        return self._max_round + 1


class MinorityLeadership(Leadership):
    """Counts a batch as chosen as soon as one acceptor accepted it."""

    def is_chosen(self, batch) -> bool:
        return len(batch.acks) >= 1


class MinorityCommitter(Replica):
    leadership_class = MinorityLeadership


class PrepareIgnoresLease(Acceptor):
    """Promises a higher ballot while the read lease of the current holder still runs."""

    def prepare(self, state, req: Prepare):
        promised = state.promised()
        if req.ballot < promised:
            return super().prepare(state, req)
        write = AcceptorWrite(promise=req.ballot) if req.ballot != promised else AcceptorWrite()
        return write, Promise(req.ballot, req.from_slot, tuple(state.accepted_from(req.from_slot)))


VARIANTS = {
    "promise not persisted": dict(storage_factory=ForgetfulStorage),
    "prepare ignores the lease": dict(acceptor_rules=PrepareIgnoresLease(), lease=30),
    "accept below promise": dict(acceptor_rules=AcceptBelowPromise()),
    "phase 1 ignores accepted values": dict(replica_class=AmnesiacRecovery),
    "reused ballot": dict(replica_class=BallotReuser),
    "commit without majority": dict(replica_class=MinorityCommitter),
}


class NoCheckQuorum(Replica):
    """A leader never notices that no majority of acceptors answers it any more."""

    def tick(self) -> None:
        self._heard = set(range(self.config.n))
        super().tick()


# broken for liveness only: the deaf leader keeps followers from electing another
LIVENESS_VARIANTS = {
    "leader without check quorum": dict(replica_class=NoCheckQuorum),
}
