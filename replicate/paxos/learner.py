"""The learner: turns chosen slots learned in any order into the chosen prefix, in order.

A replica learns that a slot is chosen (and marked) in four ways: as leader, when a majority
accepted it under its ballot and an acceptor confirmed the chosen mark; as follower, for a value
the leader pushed (``Chosen``) once the leader says it is marked; from a ``Fetched`` reply (an
acceptor's chosen marks); from a ``Promise`` entry that carries a chosen mark. (A replica may
*apply* chosen slots before it learns them: see ``Replica._deliver``; the learner is what
campaign and fetch rely on.) The learner
buffers what it learns and hands out slots ``delivered_upto + 1, + 2, ...`` with no gap, each
exactly once. It knows nothing about request ids: deduplication is the applier's job.

Everything it delivers is chosen *and* marked chosen at some acceptor, so a replica that
delivered slot ``s`` never needs to re-propose ``s``, and another learner can always fetch it.
"""

from __future__ import annotations

from replicate.paxos.messages import ChosenEntry, Value


class Learner:
    """Chosen-slot buffer with an in-order delivery cursor."""

    __slots__ = ("delivered_upto", "commit_hint", "_buffer")

    def __init__(self, delivered_upto: int = 0) -> None:
        self.delivered_upto = delivered_upto  # every slot <= this was handed out
        self.commit_hint = delivered_upto     # highest slot somebody told us is chosen
        self._buffer: dict[int, Value] = {}

    def learn(self, slot: int, value: Value) -> None:
        """Record that ``value`` is chosen (and marked at some acceptor) in ``slot``."""
        if slot > self.delivered_upto and slot not in self._buffer:
            self._buffer[slot] = value
            if slot > self.commit_hint:
                self.commit_hint = slot

    def hint(self, commit_upto: int) -> None:
        """Somebody says slots <= ``commit_upto`` are chosen; we may have to fetch them."""
        if commit_upto > self.commit_hint:
            self.commit_hint = commit_upto

    def known_upto(self) -> int:
        """The highest slot ``s`` such that every slot <= ``s`` is delivered or buffered."""
        s = self.delivered_upto
        while s + 1 in self._buffer:
            s += 1
        return s

    def lagging(self) -> bool:
        """True if some slot <= commit_hint is neither delivered nor buffered."""
        return self.known_upto() < self.commit_hint

    def take(self) -> list[ChosenEntry]:
        """Remove and return the deliverable prefix, in slot order."""
        out: list[ChosenEntry] = []
        nxt = self.delivered_upto + 1
        buf = self._buffer
        while nxt in buf:
            out.append(ChosenEntry(nxt, buf.pop(nxt)))
            nxt += 1
        self.delivered_upto = nxt - 1
        return out
