"""The acceptor: four operations, each one transaction, specified as pure functions.

In production every operation is one call of a PL/pgSQL function in one PostgreSQL node, so the
acceptor's state is durable when the reply is produced. Here each operation is a pure function
``(state view, request) -> (AcceptorWrite, reply)``: it reads the state, decides, and returns
what to write and what to answer. ``AcceptorStorage.apply`` performs the write atomically; the
reply may be sent only after that. The PL/pgSQL functions must behave exactly like these (a
differential test will compare them), so the rules are total (every request gets a defined
reply) and deterministic.

State (the storage protocol, ``AcceptorStorage``):

- ``promised``: one ballot, covering every slot (a promise is for a suffix of the log, and the
  suffix only ever starts lower, so one ballot suffices). Starts at ``Ballot.ZERO``.
- ``lease_until``: until when (on the acceptor's own clock, ``now()``) the holder of the promise
  has a read lease: the promise is not raised before then. Starts at 0 (no lease).
- per slot: the accepted ``(ballot, value)`` and a ``chosen`` mark.

Operations (``b`` = request ballot, ``P`` = promised):

=========================================  ====================================================
request                                    effect and reply
=========================================  ====================================================
``Prepare(b, from_slot)``                  if ``b > P`` while the lease runs (``now <
                                           lease_until``): no write; reply ``Leased(b, P)``.
                                           Else if ``b >= P``: ``P := b``; reply ``Promise(b,
                                           from_slot, every accepted entry at slot >=
                                           from_slot, ascending, with its chosen mark)``.
                                           Else no write; reply ``Nack(b, P)``.
``Accept(b, first, values, commit_upto)``  ``Leased`` as for Prepare. Else
                                           if ``b >= P``: ``P := b``; for each ``i``:
                                           slot ``first+i`` := ``(b, values[i])``, its
                                           chosen mark kept only if it was set and the value
                                           is unchanged; then mark chosen every slot <=
                                           commit_upto whose accepted ballot is ``b``; reply
                                           ``Accepted(b, first, last, commit_upto)``.
                                           Else no write; reply ``Nack(b, P)``.
``Commit(b, commit_upto, lease, stamp)``    mark chosen every slot <= commit_upto whose
                                           accepted ballot is ``b`` (whatever ``P`` is: the
                                           message states a fact about ballot ``b``). Reply
                                           ``Committed(b, commit_upto, granted, stamp)`` if
                                           ``b >= P``, else ``Nack(b, P)``. ``granted`` is
                                           ``lease`` if ``lease > 0`` and ``b = P`` (then
                                           ``lease_until := max(lease_until, now + lease)``),
                                           else 0.
``Fetch(from_slot, limit)``                no write; reply ``Fetched(from_slot, the first
                                           limit chosen entries at slot >= from_slot,
                                           ascending)``.
=========================================  ====================================================

Why ``>=`` and not ``>``: ballots are unique per proposer, so a request whose ballot equals the
promise comes from the proposer that holds the promise, in the same attempt. Re-delivery of its
prepare is then harmless (same promise, a fresh report), and its accepts must pass. A replica
leads under a ballot at most once (it persists its round before using it, and re-sends a
prepare under the same ballot only if it never led under it).

Why a lease refuses only a *raise* of the promise: the holder's own requests (``b = P``) must
pass, and a lower ballot is refused anyway. While the lease runs the promise stays the holder's,
so no other proposer completes phase 1 with this acceptor; see ``lease.py`` for what the
holder's reads gain from that. Refusing is always safe for the values (Paxos allows an
acceptor to ignore any request); it only delays a new leader until the lease ends.

Why the chosen mark needs the ballot: a value accepted under a different ballot than the one
that chose the slot may be a different value; only entries accepted under the committing
ballot are known to hold the chosen value. A learner that finds no mark fetches elsewhere.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Protocol

from replicate.paxos.ballot import Ballot
from replicate.paxos.messages import (
    Accept, Accepted, AcceptedEntry, AcceptorReply, AcceptorRequest, ChosenEntry, Commit,
    Committed, Fetch, Fetched, Leased, Nack, Prepare, Promise, Value,
)


@dataclass(frozen=True, slots=True)
class AcceptorWrite:
    """What one acceptor operation writes, applied in this order in one transaction.

    ``promise``: the new promised ballot, or None. ``accept``: ``(ballot, first_slot, values)``
    to store, or None. ``mark``: ``(ballot, upto)``: mark chosen every slot <= upto whose
    accepted ballot is ``ballot`` (after the accept part), or None. ``lease_until``: the new
    end of the read lease (never earlier than the stored one), or None.
    """

    promise: Ballot | None = None
    accept: tuple[Ballot, int, tuple[Value, ...]] | None = None
    mark: tuple[Ballot, int] | None = None
    lease_until: int | None = None

    @property
    def empty(self) -> bool:
        return self.promise is None and self.accept is None and self.mark is None \
            and self.lease_until is None


NO_WRITE = AcceptorWrite()


class AcceptorState(Protocol):
    """Read side of acceptor storage (what the rules need to decide)."""

    def promised(self) -> Ballot: ...

    def lease_until(self) -> int:
        """Until when (``now()``'s clock) the holder of the promise has a read lease."""
        ...

    def now(self) -> int:
        """The acceptor's clock (milliseconds of the server's wall clock in PostgreSQL)."""
        ...

    def accepted_from(self, from_slot: int) -> Iterable[AcceptedEntry]:
        """Every accepted entry at slot >= from_slot, ascending."""
        ...

    def chosen_from(self, from_slot: int, limit: int) -> list[ChosenEntry]:
        """The first ``limit`` chosen entries at slot >= from_slot, ascending."""
        ...


class AcceptorStorage(AcceptorState, Protocol):
    """Durable acceptor state: reads plus one atomic ``apply``."""

    def apply(self, write: AcceptorWrite) -> None: ...


class Acceptor:
    """The acceptor rules. Stateless: all state is in the ``AcceptorState`` passed in.

    A class (not bare functions) so that tests can plug in deliberately broken rules by
    subclassing; production code uses it as is.
    """

    def handle(self, state: AcceptorState,
               request: AcceptorRequest) -> tuple[AcceptorWrite, AcceptorReply]:
        """Dispatch one request to its rule."""
        if isinstance(request, Accept):
            return self.accept(state, request)
        if isinstance(request, Commit):
            return self.commit(state, request)
        if isinstance(request, Prepare):
            return self.prepare(state, request)
        if isinstance(request, Fetch):
            return self.fetch(state, request)
        raise TypeError(f"not an acceptor request: {request!r}")

    def prepare(self, state: AcceptorState,
                req: Prepare) -> tuple[AcceptorWrite, AcceptorReply]:
        promised = state.promised()
        if req.ballot < promised:
            return NO_WRITE, Nack(req.ballot, promised)
        if req.ballot > promised and state.now() < state.lease_until():
            return NO_WRITE, Leased(req.ballot, promised)
        write = AcceptorWrite(promise=req.ballot) if req.ballot != promised else NO_WRITE
        return write, Promise(req.ballot, req.from_slot, tuple(state.accepted_from(req.from_slot)))

    def accept(self, state: AcceptorState,
               req: Accept) -> tuple[AcceptorWrite, AcceptorReply]:
        promised = state.promised()
        if req.ballot < promised:
            return NO_WRITE, Nack(req.ballot, promised)
        if req.ballot > promised and state.now() < state.lease_until():
            return NO_WRITE, Leased(req.ballot, promised)
        write = AcceptorWrite(
            promise=req.ballot if req.ballot != promised else None,
            accept=(req.ballot, req.first_slot, req.values),
            mark=(req.ballot, req.commit_upto) if req.commit_upto else None,
        )
        return write, Accepted(req.ballot, req.first_slot, req.last_slot, req.commit_upto)

    def commit(self, state: AcceptorState,
               req: Commit) -> tuple[AcceptorWrite, AcceptorReply]:
        mark = (req.ballot, req.commit_upto) if req.commit_upto else None
        promised = state.promised()
        if req.ballot < promised:
            return AcceptorWrite(mark=mark), Nack(req.ballot, promised)
        granted = req.lease if req.lease > 0 and req.ballot == promised else 0
        until = state.now() + granted if granted else None
        if until is not None and until <= state.lease_until():
            until = None  # a lease that ends earlier than the one held changes nothing
        return AcceptorWrite(mark=mark, lease_until=until), \
            Committed(req.ballot, req.commit_upto, granted, req.stamp)

    def fetch(self, state: AcceptorState,
              req: Fetch) -> tuple[AcceptorWrite, AcceptorReply]:
        return NO_WRITE, Fetched(req.from_slot, tuple(state.chosen_from(req.from_slot, req.limit)))


class InMemoryAcceptorStorage:
    """``AcceptorStorage`` in a dict: the reference model of the ``replicate`` schema tables.

    ``restart()`` returns the storage as a restarted process would find it: everything, since
    every ``apply`` is durable when it returns.
    """

    __slots__ = ("_promised", "_lease_until", "_slots", "_unchosen", "clock")

    def __init__(self) -> None:
        self._promised = Ballot(0, 0)
        self._lease_until = 0
        self.clock = 0  # the acceptor's clock: whoever runs it sets the time
        self._slots: dict[int, AcceptedEntry] = {}
        self._unchosen: set[int] = set()  # slots holding an entry without a chosen mark

    # -- reads
    def promised(self) -> Ballot:
        return self._promised

    def lease_until(self) -> int:
        return self._lease_until

    def now(self) -> int:
        return self.clock

    def accepted_from(self, from_slot: int) -> list[AcceptedEntry]:
        return [self._slots[s] for s in sorted(self._slots) if s >= from_slot]

    def chosen_from(self, from_slot: int, limit: int) -> list[ChosenEntry]:
        out: list[ChosenEntry] = []
        for s in sorted(s for s in self._slots if s >= from_slot):
            e = self._slots[s]
            if e.chosen:
                out.append(ChosenEntry(s, e.value))
                if len(out) == limit:
                    break
        return out

    def entry(self, slot: int) -> AcceptedEntry | None:
        return self._slots.get(slot)

    def entries(self) -> dict[int, AcceptedEntry]:
        return dict(self._slots)

    # -- the one write
    def apply(self, write: AcceptorWrite) -> None:
        if write.promise is not None:
            self._promised = write.promise
        if write.lease_until is not None:
            self._lease_until = max(self._lease_until, write.lease_until)
        if write.accept is not None:
            ballot, first, values = write.accept
            for i, value in enumerate(values):
                slot = first + i
                old = self._slots.get(slot)
                chosen = old is not None and old.chosen and old.value == value
                self._slots[slot] = AcceptedEntry(slot, ballot, value, chosen)
                if not chosen:
                    self._unchosen.add(slot)
        if write.mark is not None:
            ballot, upto = write.mark
            done = [s for s in self._unchosen if s <= upto and self._slots[s].ballot == ballot]
            for s in done:
                e = self._slots[s]
                self._slots[s] = AcceptedEntry(s, e.ballot, e.value, True)
                self._unchosen.discard(s)

    def restart(self) -> "InMemoryAcceptorStorage":
        return self
