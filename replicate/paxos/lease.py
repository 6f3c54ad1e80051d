"""Read leases, leader side: is a majority's promise to this leader still known to hold? (pure)

A leader asks for a lease with ``Commit(ballot, upto, lease=L, stamp=s)``: ``s`` is its own
clock when it sends the request. An acceptor whose promise is ``ballot`` answers
``Committed(..., lease=L, stamp=s)`` and then, for ``L`` units of *its* clock from the moment it
ran the request, refuses (``Leased``) any Prepare or Accept that would raise its promise.
The request ran after it was sent, so the acceptor's lease ends after ``s + L`` on the sender's
clock, provided the two clocks run at about the same rate. ``LeaseTracker`` keeps, per
acceptor, the latest stamp granted under the current ballot, and calls the lease valid while
``now < stamp + L * (1 - margin)`` holds for the stamps of a majority.

Why a valid lease makes a read index safe without a round (``Engine.leader_read_index``):
while it is valid, every acceptor of that majority still holds the promise to this leader's
ballot, so no higher ballot can have completed phase 1 (its majority would meet this one) and
no write can have been acknowledged by a newer leader. Every write acknowledged so far is then
at or below this leader's commit index (once it committed what it recovered), as with a
confirmation round.

What it assumes, and rounds do not: that clocks run at rates within ``margin`` of each other
(CLOCK_MONOTONIC on the leader, the wall clock of each PostgreSQL server), and that no server's
wall clock is stepped forward by more than ``L * margin`` while a lease runs.
"""

from __future__ import annotations

from replicate.paxos.ballot import Ballot
from replicate.paxos.messages import Committed


class LeaseTracker:
    """The read lease of one leader: stamps of the grants under its current ballot."""

    __slots__ = ("quorum", "margin", "_ballot", "_grants", "_until")

    def __init__(self, n: int, margin: float = 0.2) -> None:
        if n < 1:
            raise ValueError("n must be >= 1")
        if not 0.0 <= margin < 1.0:
            raise ValueError("margin must be in [0, 1)")
        self.quorum = n // 2 + 1
        self.margin = margin
        self._ballot: Ballot | None = None
        self._grants: dict[int, int] = {}  # acceptor -> the latest end of its lease we count
        self._until = 0                    # the lease is valid while now < _until

    def granted(self, acceptor: int, reply: Committed) -> None:
        """Acceptor ``acceptor`` answered a lease request with ``reply``."""
        if reply.lease <= 0:
            return
        if reply.ballot != self._ballot:
            if self._ballot is not None and reply.ballot < self._ballot:
                return  # a late grant to an earlier ballot of ours: worthless now
            self._ballot, self._grants, self._until = reply.ballot, {}, 0
        end = reply.stamp + int(reply.lease * (1.0 - self.margin))
        if end > self._grants.get(acceptor, 0):
            self._grants[acceptor] = end
            if len(self._grants) >= self.quorum:
                self._until = sorted(self._grants.values(), reverse=True)[self.quorum - 1]

    def valid(self, ballot: Ballot, now: int) -> bool:
        """Does a majority's lease to ``ballot`` hold at ``now`` (the stamps' clock)?"""
        return ballot == self._ballot and now < self._until

    def remaining(self, ballot: Ballot, now: int) -> int:
        """How long the lease to ``ballot`` still holds (0 if it does not)."""
        return max(0, self._until - now) if ballot == self._ballot else 0
