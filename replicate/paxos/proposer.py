"""The proposer's phase-2 state for one leadership: recovery, batching, the window, quorums.

A ``Leadership`` exists while a replica leads under one ballot (after phase 1 succeeded). It
assigns slots to values in arrival order, groups consecutive slots into batches (one ``Accept``,
so one acceptor transaction, per batch), keeps at most ``window`` batches in flight (sent, not
yet accepted by a majority), counts ``Accepted`` replies per batch, and advances the commit
index over the contiguous prefix of batches a majority accepted under its ballot.

A chosen batch is handed to the learner only once some acceptor confirmed that it *marked* the
batch chosen (an ``Accepted`` or ``Committed`` reply whose ``commit_upto`` covers the batch,
from an acceptor that accepted the batch under this ballot). So whatever a replica delivers can
be fetched from some acceptor later, and a future leader need not re-propose it.

A *thrifty* leadership sends each batch's ``Accept`` only to a majority: the acceptors that
answered first lately (``rank``; its own acceptor first until a reply says otherwise). A
majority is all a batch needs to be chosen, and on a machine the nodes share every Accept is a
transaction and an fsync. The others get the values at the next heartbeat, consecutive batches
in one ``Accept`` (``take_lazy``), so every acceptor's log still holds every slot a little
later. Every ``PROBE_EVERY``-th batch goes to all of them, and the acceptors that made a batch
chosen move to the front of ``rank``: a slow or dead acceptor drops out of the majority that
is sent to. A batch its majority does not accept is sent to the rest by the heartbeat's
retransmit, as before.

A leadership with ``hold_after`` > 0 *holds* its next batch after a batch of at least that many
values became chosen with nothing left in flight: the clients of a busy leader send their next
writes within moments, and one batch of many costs every node less than two batches (one
Accept and fsync on two acceptors and one apply transaction on every node per batch). The hold
ends at ``release`` (the proxy's timer: about a millisecond), at a tick, or as soon as a full
batch is queued; a lone client's batches of one are never held.

The request ids it proposed are remembered so that a retried request (a follower forwarding it
again, a client retrying through this proxy) is not proposed twice while the first is in
flight. Only the newest ``REMEMBERED_IDS`` are kept: a leader may lead for months, and a
duplicate that slips through costs a slot, not correctness (the applier applies a request id
once, whatever the slots it was chosen in).

``recover`` is phase-1 recovery: per slot, the value with the highest accepted ballot among the
promises, and the no-op in holes.
"""

from __future__ import annotations

from collections import deque
from typing import Iterable, Sequence

from replicate.paxos.ballot import Ballot
from replicate.paxos.messages import NOOP, Promise, Value

# Request ids a leadership remembers (~100 bytes each). A client's or follower's retry comes
# seconds after the first attempt, i.e. a few thousand slots later at most here.
REMEMBERED_IDS = 100_000
# A thrifty leadership sends every PROBE_EVERY-th batch to every acceptor, to see who answers
# first now; and puts at most LAZY_VALUES values in one Accept to the acceptors it skipped.
PROBE_EVERY = 16
LAZY_VALUES = 256


def runs(batches: Sequence[Batch]) -> list[tuple[int, tuple[Value, ...]]]:
    """``(first_slot, values)`` for ``batches`` (in slot order), consecutive ones joined into
    one run of at most ``LAZY_VALUES`` values: what one Accept or Chosen carries."""
    out: list[tuple[int, tuple[Value, ...]]] = []
    first, values = 0, []
    for b in batches:
        if values and b.first_slot == first + len(values) \
                and len(values) + len(b.values) <= LAZY_VALUES:
            values.extend(b.values)
            continue
        if values:
            out.append((first, tuple(values)))
        first, values = b.first_slot, list(b.values)
    if values:
        out.append((first, tuple(values)))
    return out


class Batch:
    """Consecutive slots ``first_slot..last_slot`` proposed in one ``Accept``."""

    __slots__ = ("first_slot", "values", "acks", "chosen", "marked")

    def __init__(self, first_slot: int, values: tuple[Value, ...]) -> None:
        self.first_slot = first_slot
        self.values = values
        self.acks: set[int] = set()  # acceptors that accepted the batch under our ballot
        self.chosen = False          # a majority accepted it under our ballot
        self.marked = False          # some acceptor confirmed it marked the batch chosen
        # (a thrifty leadership's batch sent to only some acceptors is also in ``lazy``)

    @property
    def last_slot(self) -> int:
        return self.first_slot + len(self.values) - 1


def recover(promises: Iterable[Promise], from_slot: int) -> list[Value]:
    """Phase-1 recovery: the values to re-propose in slots ``from_slot, from_slot + 1, ...``.

    Per slot, the value accepted under the highest ballot in any promise; the no-op where no
    promise reports a value below the highest reported slot.
    """
    best: dict[int, tuple[Ballot, Value]] = {}
    for p in promises:
        for e in p.accepted:
            if e.slot < from_slot:
                continue
            cur = best.get(e.slot)
            if cur is None or e.ballot > cur[0]:
                best[e.slot] = (e.ballot, e.value)
    if not best:
        return []
    top = max(best)
    return [best[s][1] if s in best else NOOP for s in range(from_slot, top + 1)]


class Leadership:
    """Phase-2 state of one leader under one ballot."""

    def __init__(self, ballot: Ballot, n_acceptors: int, commit_upto: int, *,
                 window: int, max_batch: int, remembered_ids: int = REMEMBERED_IDS,
                 thrifty: bool = False, own: int = 0, hold_after: int = 0) -> None:
        if window < 1 or max_batch < 1 or remembered_ids < 1:
            raise ValueError("window, max_batch and remembered_ids must be >= 1")
        if not 0 <= own < n_acceptors:
            raise ValueError(f"own acceptor {own} outside 0..{n_acceptors - 1}")
        self.ballot = ballot
        self.n_acceptors = n_acceptors
        self.quorum = n_acceptors // 2 + 1
        self.window = window
        self.max_batch = max_batch
        self.next_slot = commit_upto + 1
        self.commit_upto = commit_upto       # every slot <= this is chosen
        # last slot phase 1 re-proposed: once commit_upto reaches it, every value an earlier
        # leader may have had chosen is at or below commit_upto (what a read index needs)
        self.recovered_upto = commit_upto
        self.sent_commit = commit_upto       # highest commit_upto sent to acceptors
        self.batches: dict[int, Batch] = {}  # by first_slot, ascending (insertion order)
        self.queue: deque[Value] = deque()
        self._ids: set[str] = set()          # the newest request ids queued or proposed
        self._id_order: deque[str] = deque()  # the same ids, oldest first
        self._remembered_ids = remembered_ids
        self._in_flight = 0
        self.thrifty = thrifty
        # acceptors, those that answered first lately first: ours, then the next ids
        self.rank = [(own + k) % n_acceptors for k in range(n_acceptors)]
        self.lazy: dict[int, list[Batch]] = {}  # acceptor -> batches not sent to it yet
        # lazy_chosen (replica.py): follower -> chosen batches not sent to it yet, and the
        # request ids followers forwarded (-> follower), whose clients wait there
        self.held: dict[int, list[Batch]] = {}
        self.forwarded: dict[str, int] = {}
        self._until_probe = 0                   # thrifty batches before the next probe
        self.hold_after = hold_after            # 0: never hold (see the module docstring)
        self.holding = False                    # cut no batch short of max_batch until release

    # -- proposals
    def enqueue(self, value: Value, *, force: bool = False) -> bool:
        """Queue a value for the next free slot. Without ``force``, a request id among the
        newest ``remembered_ids`` this leadership queued or proposed is ignored (returns
        False)."""
        if not value.is_noop:
            rid = value.request_id
            ids = self._ids
            if rid in ids:
                if not force:
                    return False
            else:
                ids.add(rid)
                order = self._id_order
                order.append(rid)
                if len(order) > self._remembered_ids:
                    ids.discard(order.popleft())
        self.queue.append(value)
        return True

    def in_flight(self) -> int:
        """Batches sent and not yet accepted by a majority."""
        return self._in_flight

    def next_batches(self) -> list[Batch]:
        """Cut new batches from the queue while the window has room."""
        out: list[Batch] = []
        q = self.queue
        if self.holding:
            if len(q) < self.max_batch:
                return out
            self.holding = False
        while q and self._in_flight < self.window:
            n = min(len(q), self.max_batch)
            batch = Batch(self.next_slot, tuple(q.popleft() for _ in range(n)))
            self.next_slot += n
            self.batches[batch.first_slot] = batch
            self._in_flight += 1
            out.append(batch)
        return out

    def release(self) -> None:
        """End a hold: the next ``next_batches`` cuts whatever is queued."""
        self.holding = False

    def targets(self, batch: Batch) -> list[int]:
        """The acceptors to send ``batch``'s Accept to now (in ``next_batches`` order). A
        thrifty leadership names the first majority of ``rank`` and keeps the batch in
        ``lazy`` for the others, except for every ``PROBE_EVERY``-th batch."""
        if not self.thrifty or self.quorum >= self.n_acceptors or self._until_probe <= 0:
            self._until_probe = PROBE_EVERY - 1
            return list(range(self.n_acceptors))
        self._until_probe -= 1
        for j in self.rank[self.quorum:]:
            self.lazy.setdefault(j, []).append(batch)
        return self.rank[:self.quorum]

    def take_lazy(self) -> list[tuple[int, int, tuple[Value, ...]]]:
        """``(acceptor, first_slot, values)`` for the chosen batches not sent to an acceptor
        yet, in ``runs``; forgets them all. A batch not chosen yet is left out: the
        heartbeat's retransmit of ``unchosen`` batches sends it to every acceptor that has not
        accepted it."""
        out = [(j, first, values) for j, every in self.lazy.items()
               for first, values in runs([b for b in every if b.chosen and j not in b.acks])]
        self.lazy = {}
        return out

    def take_held(self, follower: int | None = None) -> list[tuple[int, int, tuple[Value, ...]]]:
        """``(follower, first_slot, values)`` for the chosen batches held for ``follower``
        (every follower if None), in ``runs``; forgets them (``lazy_chosen``, replica.py)."""
        followers = list(self.held) if follower is None else [follower]
        return [(i, first, values) for i in followers
                for first, values in runs(self.held.pop(i, ()))]

    def unchosen(self) -> list[Batch]:
        return [b for b in self.batches.values() if not b.chosen]

    # -- replies
    def is_chosen(self, batch: Batch) -> bool:
        """A batch is chosen once a majority of acceptors accepted it under our ballot."""
        return len(batch.acks) >= self.quorum

    def on_accepted(self, acceptor: int, first_slot: int, last_slot: int,
                    commit_upto: int) -> None:
        batch = self.batches.get(first_slot)
        if batch is not None and batch.last_slot == last_slot:
            batch.acks.add(acceptor)
            if not batch.chosen and self.is_chosen(batch):
                batch.chosen = True
                self._in_flight -= 1
                if self.hold_after and not self._in_flight \
                        and len(batch.values) >= self.hold_after:
                    self.holding = True
                self._advance_commit()
                if self.thrifty:  # the majority that answered first goes first next time
                    acks = batch.acks
                    self.rank = [j for j in self.rank if j in acks] \
                        + [j for j in self.rank if j not in acks]
        self.on_committed(acceptor, commit_upto)

    def on_committed(self, acceptor: int, commit_upto: int) -> None:
        """``acceptor`` marked chosen every slot <= commit_upto it holds under our ballot."""
        for b in self.batches.values():
            if b.last_slot > commit_upto:
                break
            if b.chosen and acceptor in b.acks:
                b.marked = True

    def _advance_commit(self) -> None:
        nxt = self.batches.get(self.commit_upto + 1)
        while nxt is not None and nxt.chosen:
            self.commit_upto = nxt.last_slot
            nxt = self.batches.get(self.commit_upto + 1)

    def take_marked(self) -> list[Batch]:
        """Remove and return the chosen batches an acceptor confirmed marked, ascending."""
        done = [b for b in self.batches.values() if b.marked]
        for b in done:
            del self.batches[b.first_slot]
        return done
