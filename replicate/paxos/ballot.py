"""Ballots: the totally ordered, per-proposer unique numbers that Paxos runs on.

A ballot is ``(round, proposer)``. Ballots compare by round first, then by proposer id, so two
replicas can never produce the same ballot, and every replica can always pick a ballot higher
than any it has seen (``round + 1``). ``Ballot.ZERO`` is below every ballot a replica can use
(rounds used by replicas start at 1): it is what a fresh acceptor has promised.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True, order=True)
class Ballot:
    """A Paxos ballot ``(round, proposer)``; field order is the comparison order."""

    round: int
    proposer: int

    def __post_init__(self) -> None:
        if type(self.round) is not int or self.round < 0:
            raise ValueError(f"ballot round must be an int >= 0, got {self.round!r}")
        if type(self.proposer) is not int or self.proposer < 0:
            raise ValueError(f"ballot proposer must be an int >= 0, got {self.proposer!r}")

    def __str__(self) -> str:
        return f"{self.round}.{self.proposer}"


Ballot.ZERO = Ballot(0, 0)  # type: ignore[attr-defined]
ZERO = Ballot.ZERO  # type: ignore[attr-defined]
