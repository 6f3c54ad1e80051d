"""Pure Multi-Paxos core: messages and ticks in; what to persist, send and apply out.

Nothing here does I/O, reads a clock, starts a thread or draws global randomness. The runtime
(one asyncio driver per proxy) feeds a ``Replica`` with ``step``/``tick``/``propose`` and performs
what ``ready()`` returns; acceptor requests become calls of PL/pgSQL functions that implement
``Acceptor`` exactly.

Roles
-----
- **Acceptor** (``acceptor.py``), one per PostgreSQL node: a request/reply state machine whose
  every operation is one transaction. State: one promised ballot (covering a suffix of slots)
  and, per slot, the accepted ``(ballot, value)`` plus a chosen mark. Operations: ``prepare``,
  ``accept`` (a batch of consecutive slots), ``commit`` (mark chosen), ``fetch`` (read chosen).
- **Replica** (``replica.py``), one per proxy: proposer + leader + learner + election.
  Replica ``i`` sits next to acceptor ``i``, but the core does not care.
- **Leadership** (``proposer.py``): the leader's phase-2 state for one ballot.
- **Learner** (``learner.py``): chosen slots, delivered in order, no gaps, each once.

Message flow
------------
::

    follower --Forward--> leader
    candidate --Prepare(b, from)--> all acceptors --Promise(b, accepted >= from) | Nack-->
    leader --Accept(b, first, [v...], commit_upto)--> all --Accepted(b, first, last) | Nack-->
    leader --Commit(b, commit_upto)--> all acceptors   (every H ticks)
    leader --Commit(b, commit_upto)--> its own acceptor (when nothing else carries it)
    leader --Chosen(b, first, [v...])--> other replicas (when a batch is chosen)
    leader --Heartbeat(b, marked)--> other replicas     (every H ticks, and when marks arrive)
    learner --Fetch(from, limit)--> one acceptor at a time --Fetched(chosen entries)-->

A candidate picks ``Ballot(round, id)`` with round above every round it used (persisted in
``HardState`` before the prepares leave) or saw (in nacks, promises, heartbeats). With promises
from a majority it leads: per slot at or above ``from`` (the first slot it does not know to be
chosen) it re-proposes the value accepted under the highest ballot, fills holes with no-ops,
then proposes client values. Phase 2 cuts the queue into batches of consecutive slots, at most
``window`` batches in flight. A batch is chosen when a majority answered ``Accepted`` under the
leader's ballot; the commit index is the end of the contiguous chosen prefix and rides on the
next ``Accept`` or ``Commit``. Acceptors mark chosen the slots at or below it that they hold
under that very ballot. The leader hands a batch to its applier as soon as it is chosen and
sends its values to the followers (``Chosen``), which may apply them too; but a replica
*learns* a slot (the prefix that campaign and fetch rely on) only once it is marked at some
acceptor: from a confirmed mark (leader), a Heartbeat saying so (follower), a fetch or a
promise. Replicas apply at most ``early_apply`` slots beyond what they learned, so whatever a
replica applied is either marked somewhere and fetchable, or within the slots its next phase 1
recovers again.
Any ``Nack`` or heartbeat with a higher ballot makes a leader or candidate step down.

Why it is safe
--------------
Classic Paxos, per slot. (1) An acceptor never accepts below its promise and never lowers it;
its state is durable before it replies. (2) A ballot belongs to one replica, which leads
under it at most once: ids are unique and rounds are persisted before use, so one ballot never
carries two values for a slot.
(3) A leader's phase 1 covers every slot it may propose in, and it re-proposes the
highest-ballot value it found, so if a value was chosen under a lower ballot, a majority that
accepted it intersects the promising majority and the same value is proposed again. (4) A slot
is marked chosen only under the ballot a majority accepted it in, so marks (and what learners
fetch) are chosen values. (5) Requests may be chosen in two slots (client retries through
another replica); the applier deduplicates by request id, so each is applied at most once.

What depends on timing
----------------------
For the log, only liveness: election timeouts (uniform in ``[election_ticks, 2 *
election_ticks)`` ticks), heartbeat period, retransmission and fetch periods, and read leases
(``lease.py``), which delay a new leader until the old one's lease ends. Read leases are the one
thing that relies on clocks: a leader answers linearizable reads without a round only while
clock rates agree within the lease's margin (``lease.py`` says exactly what is assumed). Lost,
duplicated, delayed or reordered messages and crashed nodes can stall progress but never make
two values chosen for a slot.
``tests/sim`` checks both claims by deterministic simulation.
"""

from replicate.paxos.acceptor import (
    Acceptor, AcceptorState, AcceptorStorage, AcceptorWrite, InMemoryAcceptorStorage,
)
from replicate.paxos.ballot import Ballot
from replicate.paxos.learner import Learner
from replicate.paxos.messages import (
    NOOP, Accept, Accepted, AcceptedEntry, Addr, Chosen, ChosenEntry, Commit, Committed, Envelope,
    Fetch, Fetched, Forward, Heartbeat, Leased, Message, Nack, Prepare, Promise, Value,
    acceptor_addr, replica_addr,
)
from replicate.paxos.lease import LeaseTracker
from replicate.paxos.proposer import Batch, Leadership, recover
from replicate.paxos.replica import (
    Config, HardState, ProposeOutcome, Ready, Replica, Role,
)

__all__ = [
    "Accept", "Accepted", "AcceptedEntry", "Acceptor", "AcceptorState", "AcceptorStorage",
    "AcceptorWrite", "Addr", "Ballot", "Batch", "Chosen", "ChosenEntry", "Commit", "Committed",
    "Config", "Envelope", "Fetch", "Fetched", "Forward", "HardState", "Heartbeat",
    "InMemoryAcceptorStorage", "Leadership", "Learner", "Leased", "LeaseTracker", "Message",
    "NOOP", "Nack", "Prepare", "Promise", "ProposeOutcome", "Ready", "Replica", "Role", "Value",
    "acceptor_addr", "recover", "replica_addr",
]
