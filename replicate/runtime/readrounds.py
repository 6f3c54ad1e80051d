"""Shared read-index rounds: which reads one confirmation answers (pure; no I/O).

A linearizable read may be answered only by a confirmation *sent after the read
arrived* (a majority round at the leader, or a request to the leader from a
follower). Reads that arrive while a round is in flight therefore cannot use
that round: they wait for the next one, which then answers all of them at once
(etcd raft's ReadIndex batching). ``SharedRounds`` keeps that bookkeeping; the
engine does the sending::

    if rounds.arrive(read):          # no loop running: start one
        start(loop)
    # the loop:
    while (reads := rounds.begin()) is not None:   # exactly the reads that arrived so far
        ... send the round, await it ...
        rounds.end()                 # answer ``reads``; later arrivals wait in ``waiting``
"""

from __future__ import annotations

from typing import Generic, TypeVar

T = TypeVar("T")


class SharedRounds(Generic[T]):
    """Reads waiting for a round, and the reads the round in flight (if any) covers."""

    __slots__ = ("waiting", "in_flight", "running", "rounds")

    def __init__(self) -> None:
        self.waiting: list[T] = []            # arrived after the round in flight was begun
        self.in_flight: list[T] | None = None  # covered by the round in flight
        self.running = False                  # a loop is sending rounds
        self.rounds = 0                       # rounds begun so far

    def arrive(self, read: T) -> bool:
        """Record a read; True if no loop is running (the caller must start one)."""
        self.waiting.append(read)
        if self.running:
            return False
        self.running = True
        return True

    def begin(self) -> list[T] | None:
        """Begin a round covering exactly the reads that arrived before this call.

        None if no read is waiting: the loop is then over (the next read starts one).
        """
        if self.in_flight is not None:
            raise RuntimeError("a round is already in flight")
        if not self.waiting:
            self.running = False
            return None
        self.in_flight, self.waiting = self.waiting, []
        self.rounds += 1
        return self.in_flight

    def end(self) -> list[T]:
        """The round in flight is over (answered or failed); the reads it covered."""
        if self.in_flight is None:
            raise RuntimeError("no round is in flight")
        covered, self.in_flight = self.in_flight, None
        return covered

    def clear(self) -> list[T]:
        """Forget every read and the loop (the engine stops); the reads that were pending."""
        reads = (self.in_flight or []) + self.waiting
        self.in_flight, self.waiting, self.running = None, [], False
        return reads
