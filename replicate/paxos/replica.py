"""The replica (one per proxy): proposer, leader, learner and election in one node object.

Drive it like etcd's ``RawNode``: feed it ``step(envelope)``, ``tick()`` and ``propose(value)``;
then ``ready()`` says what to do, in this order, and ``advance(ready)`` acknowledges it:

1. persist ``ready.hard_state`` (if not None) durably;
2. send ``ready.messages``;
3. apply ``ready.chosen`` (the next chosen slots, in order, each once), deduplicating by
   request id (the same request may be chosen in two slots after a client retried).

A replica is a follower, a candidate (phase 1 running) or the leader (phase 2). Followers
forward proposals to the leader they know (``ProposeOutcome.FORWARDED``); without a known
leader a proposal is dropped (``DROPPED``) and the client retries with the same request id.

Election rules (liveness only; safety never depends on them):

- a follower that hears no heartbeat for a random timeout in ``[E, 2E)`` ticks campaigns;
- a candidate whose timeout expires campaigns again: with the same ballot if no majority of
  acceptors answered and no higher ballot was seen (it never led under it, so no value was
  proposed under it), else with a higher one;
- a candidate whose last attempt reached no majority yields to any live leader's heartbeat,
  even one with a lower ballot; otherwise a higher ballot in a heartbeat or nack makes a
  candidate or leader step down;
- check quorum: a leader that fewer than a majority of acceptors answered during two election
  timeouts steps down, so a leader that still reaches the proxies but not the PostgreSQL
  nodes stops holding the followers back.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Protocol

from replicate.paxos.ballot import Ballot
from replicate.paxos.learner import Learner
from replicate.paxos.messages import (
    Accept, Accepted, Addr, Chosen, ChosenEntry, Commit, Committed, Envelope, Fetch, Fetched,
    Forward, Heartbeat, Leased, Message, Nack, Prepare, Promise, Value, acceptor_addr,
    replica_addr,
)
from replicate.paxos.proposer import Batch, Leadership, recover

# lazy_chosen: request ids forwarded by followers that the leader remembers at most (a value
# never chosen under this leadership stays until the set is full and cleared).
MAX_FORWARDED = 4096


class Rng(Protocol):
    """What the replica needs from the random number generator it is given."""

    def randrange(self, start: int, stop: int) -> int: ...


class Role(enum.Enum):
    FOLLOWER = "follower"
    CANDIDATE = "candidate"
    LEADER = "leader"


class ProposeOutcome(enum.Enum):
    PROPOSED = "proposed"    # this replica leads (or is campaigning) and queued the value
    FORWARDED = "forwarded"  # sent to the leader this replica knows
    DROPPED = "dropped"      # no leader known: the client must retry


@dataclass(frozen=True, slots=True)
class HardState:
    """What a replica must persist: the highest ballot round it has used.

    A restarted replica starts above it, so it never reuses a ballot (with other values)."""

    round: int = 0


@dataclass(frozen=True, slots=True)
class Config:
    """Replica parameters; every duration is in ticks."""

    n: int                      # number of acceptors (= number of replicas)
    heartbeat_ticks: int = 3    # leader: heartbeat, commit and retransmit period
    election_ticks: int = 10    # follower timeout is uniform in [election_ticks, 2*election_ticks)
    window: int = 4             # batches in flight (sent, not yet accepted by a majority)
    max_batch: int = 16         # values per Accept
    fetch_ticks: int = 2        # learner: period of Fetch while lagging
    fetch_limit: int = 64       # entries per Fetch
    early_apply: int = 256      # slots a replica may apply beyond the prefix it knows marked
    # leader: send each Accept to a majority only, the others the values at the heartbeat
    # (proposer.py, "thrifty")
    thrifty: bool = False
    # leader: hold the Chosen for the followers until ``flush_chosen`` (the proxy's timer), the
    # heartbeat, or a value that follower forwarded: several batches in one message
    lazy_chosen: bool = False
    # leader: after a batch of at least this many values is chosen with none in flight, hold
    # the next one until ``release_accepts`` (the proxy's timer), the next tick or a full
    # batch (proposer.py, "holds"); 0 never holds
    hold_after: int = 0

    def __post_init__(self) -> None:
        if self.n < 1:
            raise ValueError("n must be >= 1")
        if min(self.heartbeat_ticks, self.election_ticks, self.window, self.max_batch,
               self.fetch_ticks, self.fetch_limit) < 1:
            raise ValueError("every Config parameter except early_apply must be >= 1")
        if self.early_apply < 0 or self.hold_after < 0:
            raise ValueError("early_apply and hold_after must be >= 0")
        if self.election_ticks <= self.heartbeat_ticks:
            raise ValueError("election_ticks must exceed heartbeat_ticks")


@dataclass(frozen=True, slots=True)
class Ready:
    """What the runtime must do now: persist, then send, then apply."""

    hard_state: HardState | None
    messages: tuple[Envelope, ...]
    chosen: tuple[ChosenEntry, ...]

    @property
    def empty(self) -> bool:
        return self.hard_state is None and not self.messages and not self.chosen


class Replica:
    """One proxy's Paxos node: see the module docstring for how to drive it."""

    leadership_class = Leadership

    def __init__(self, id: int, config: Config, rng: Rng, *,
                 hard_state: HardState = HardState(), delivered_upto: int = 0) -> None:
        if not 0 <= id < config.n:
            raise ValueError(f"replica id {id} outside 0..{config.n - 1}")
        self.id = id
        self.addr = replica_addr(id)
        self.config = config
        self._rng = rng
        self._quorum = config.n // 2 + 1
        self._max_round = hard_state.round  # highest round used (persisted) or seen
        self.role = Role.FOLLOWER
        self.ballot = Ballot(0, id)          # our current (or last) ballot
        self.leader: int | None = None       # the leader we know of
        self._leader_ballot = Ballot(0, 0)   # highest ballot we followed
        # The learner's prefix is chosen *and marked* (what campaign and fetch rely on). A leader
        # hands slots out as soon as they are chosen, up to early_apply slots ahead of that
        # prefix; so after a restart only delivered_upto - early_apply is known to be marked,
        # and the slots above it are learned again (never handed out twice: _emitted).
        self.learner = Learner(max(0, delivered_upto - config.early_apply))
        self._emitted = delivered_upto       # every slot <= this was handed out in Ready.chosen
        self._early: dict[int, Value] = {}   # known chosen, not yet learned (maybe unmarked)
        self._early_pruned = self.learner.delivered_upto  # no _early key is at or below it
        self._promises: dict[int, Promise] = {}
        self._from_slot = 1
        self._waiting: list[Value] = []      # proposals received while campaigning
        self.lead: Leadership | None = None
        self._elapsed = 0
        self._timeout = self._random_timeout()
        self._hb_elapsed = 0
        self._quorum_elapsed = 0
        self._heard: set[int] = set()        # acceptors that answered our ballot lately
        self._answered: set[int] = set()     # acceptors that answered our current prepare
        self._led = False                    # we led under self.ballot
        self._fruitless = False              # our last attempt timed out without a majority
        self._highest_seen = Ballot(0, 0)    # highest ballot seen in any message
        self._fetch_elapsed = 0
        self._fetch_next = id
        # output buffers
        self._hard: HardState | None = None
        self._out: list[Envelope] = []
        self._chosen: list[ChosenEntry] = []

    # ------------------------------------------------------------------ driving API
    def ready(self) -> Ready:
        return Ready(self._hard, tuple(self._out), tuple(self._chosen))

    def has_ready(self) -> bool:
        return self._hard is not None or bool(self._out) or bool(self._chosen)

    def advance(self, ready: Ready) -> None:
        if ready.hard_state is not None and self._hard == ready.hard_state:
            self._hard = None
        del self._out[:len(ready.messages)]
        del self._chosen[:len(ready.chosen)]

    def tick(self) -> None:
        """One unit of time passed."""
        if self.role is Role.LEADER:
            self.release_accepts()
            self._hb_elapsed += 1
            if self._hb_elapsed >= self.config.heartbeat_ticks:
                self._hb_elapsed = 0
                self._heartbeat()
            self._quorum_elapsed += 1
            if self._quorum_elapsed >= 2 * self.config.election_ticks:
                # check quorum: a leader that no majority of acceptors answered for two
                # election timeouts steps down, so that its heartbeats stop holding followers
                # back (e.g. it reaches the other proxies but not their PostgreSQL nodes)
                self._quorum_elapsed = 0
                heard, self._heard = self._heard, set()
                if len(heard) < self._quorum:
                    self._step_down()
        else:
            self._elapsed += 1
            if self._elapsed >= self._timeout:
                self.campaign()
        if self.learner.lagging():
            self._fetch_elapsed += 1
            if self._fetch_elapsed >= self.config.fetch_ticks:
                self._fetch_now()

    def propose(self, value: Value) -> ProposeOutcome:
        """A client asks to append ``value``; see ``ProposeOutcome``."""
        if value.is_noop:
            raise ValueError("clients cannot propose the no-op")
        if self.role is Role.LEADER:
            assert self.lead is not None
            self.lead.enqueue(value)
            self._pump()
            return ProposeOutcome.PROPOSED
        if self.role is Role.CANDIDATE:
            self._waiting.append(value)
            return ProposeOutcome.PROPOSED
        if self.leader is not None and self.leader != self.id:
            self._send(replica_addr(self.leader), Forward(value))
            return ProposeOutcome.FORWARDED
        return ProposeOutcome.DROPPED

    def campaign(self) -> None:
        """Start phase 1 with a ballot above every ballot seen or used.

        Exception: if the last attempt never led, no majority of acceptors answered it and no
        higher ballot was seen, its prepare is sent again under the same ballot (no value was
        ever proposed under it). So a replica cut off from the acceptors does not inflate its
        ballot and, once reconnected, does not depose a healthy leader by surprise.
        """
        if (self.role is not Role.LEADER and not self._led and self.ballot.round > 0
                and len(self._answered) < self._quorum and self._max_round == self.ballot.round
                and self._highest_seen <= self.ballot):
            rnd = self.ballot.round
        else:
            rnd = self._next_round()
            self._max_round = max(self._max_round, rnd)
            self._hard = HardState(self._max_round)
        if self.role is Role.CANDIDATE:  # the last attempt timed out
            self._fruitless = len(self._answered) < self._quorum
        self._led = False
        self._answered = set()
        if self.lead is not None:
            self._waiting.extend(self.lead.queue)
        self.lead = None
        self.role = Role.CANDIDATE
        self.ballot = Ballot(rnd, self.id)
        self._promises = {}
        self._from_slot = self.learner.known_upto() + 1
        self._reset_election_timer()
        msg = Prepare(self.ballot, self._from_slot)
        for j in range(self.config.n):
            self._send(acceptor_addr(j), msg)

    def step(self, env: Envelope) -> None:
        """Receive one message."""
        msg = env.msg
        src = env.src.id
        if isinstance(msg, Accepted):
            self._on_accepted(src, msg)
        elif isinstance(msg, Committed):
            if self.lead is not None and msg.ballot == self.ballot:
                self._heard.add(src)
                self.lead.on_committed(src, msg.commit_upto)
                self._learn_marked()
        elif isinstance(msg, Heartbeat):
            self._on_heartbeat(src, msg)
        elif isinstance(msg, Chosen):
            self._on_chosen(src, msg)
        elif isinstance(msg, Fetched):
            known = self.learner.known_upto()
            for e in msg.entries:
                self.learner.learn(e.slot, e.value)
            if self.learner.lagging() and self.learner.known_upto() > known:
                # still behind, and this acceptor had what we lacked: ask it for the next
                # slots now instead of at the next fetch tick (one Fetch per round trip, not
                # fetch_limit slots per fetch period). A reply that taught nothing new (a
                # duplicate, an acceptor that lacks the slots) does not, so fetches started
                # by ticks do not add up.
                self._fetch_now(src)
        elif isinstance(msg, Promise):
            self._on_promise(src, msg)
        elif isinstance(msg, Nack):
            self._observe(msg.promised)
            if msg.ballot == self.ballot:
                self._answered.add(src)
            if self.role is not Role.FOLLOWER and msg.ballot == self.ballot \
                    and msg.promised > self.ballot:
                self._step_down()
        elif isinstance(msg, Leased):
            # The acceptor still leases its promise to a leader: as if it had not answered, so
            # a candidate that gets only these yields to that leader's heartbeat (fruitless).
            # (Its holder is below msg.ballot, which this replica chose: nothing to observe.)
            pass
        elif isinstance(msg, Forward):
            if self.role is not Role.FOLLOWER:
                lead = self.lead
                if lead is not None and self.config.lazy_chosen:
                    # its client waits on that follower: tell it at once once chosen
                    if len(lead.forwarded) >= MAX_FORWARDED:
                        lead.forwarded.clear()  # not chosen (retried elsewhere): forget them
                    lead.forwarded[msg.value.request_id] = src
                self.propose(msg.value)
        elif isinstance(msg, (Prepare, Accept, Commit, Fetch)):
            raise TypeError(f"replica {self.id} got an acceptor request: {msg!r}")
        self._deliver()

    @property
    def delivered_upto(self) -> int:
        """Every slot at or below this was handed out in ``Ready.chosen``."""
        return self._emitted

    @property
    def commit_index(self) -> int | None:
        """While leading: every slot at or below this is chosen. None otherwise."""
        return self.lead.commit_upto if self.lead is not None else None

    @property
    def recovered_upto(self) -> int | None:
        """While leading: the last slot phase 1 re-proposed. Once ``commit_index`` reaches it,
        everything an earlier leader may have had chosen is committed (what a read index
        needs, together with a fresh majority confirming the ballot). None otherwise."""
        return self.lead.recovered_upto if self.lead is not None else None

    # ------------------------------------------------------------------ election
    def _next_round(self) -> int:
        return self._max_round + 1

    def _random_timeout(self) -> int:
        e = self.config.election_ticks
        return self._rng.randrange(e, 2 * e)

    def _reset_election_timer(self) -> None:
        self._elapsed = 0
        self._timeout = self._random_timeout()

    def _observe(self, ballot: Ballot) -> None:
        if ballot > self._highest_seen:
            self._highest_seen = ballot
        if ballot.round > self._max_round:
            self._max_round = ballot.round

    def _step_down(self) -> None:
        self._fruitless = False
        self.role = Role.FOLLOWER
        self.lead = None
        self._promises = {}
        self._waiting = []
        if self.leader == self.id:
            self.leader = None
        self._reset_election_timer()

    def _on_chosen(self, src: int, msg: Chosen) -> None:
        """Values the leader saw chosen: apply them early, learn them once marked."""
        self._follow(src, msg.ballot)
        limit = self.learner.delivered_upto + 4 * max(1, self.config.early_apply)
        for i, value in enumerate(msg.values):
            slot = msg.first_slot + i
            if self.learner.delivered_upto < slot <= limit:
                self._early.setdefault(slot, value)
        self._marked(src, msg.ballot, msg.marked_upto)

    def _on_heartbeat(self, src: int, msg: Heartbeat) -> None:
        self._follow(src, msg.ballot)
        self._marked(src, msg.ballot, msg.commit_upto)

    def _marked(self, src: int, ballot: Ballot, upto: int) -> None:
        """The leader says every slot <= ``upto`` is marked at some acceptor."""
        early = self._early
        if early:  # what we hold early of them is learned; look at as few slots as possible
            first = self.learner.delivered_upto + 1
            slots = range(first, upto + 1) if upto - first < len(early) \
                else sorted(s for s in early if s <= upto)
            for slot in slots:
                value = early.pop(slot, None)
                if value is not None:
                    self.learner.learn(slot, value)
        was_lagging = self.learner.lagging()
        self.learner.hint(upto)
        if self.learner.lagging() and not was_lagging:
            # newly behind: fetch at once rather than at the next fetch tick, from the acceptor
            # in the leader's own node, usually among those it sends each batch to (see _pump;
            # one that lacks the slots teaches nothing, and the next fetch goes round robin)
            self._fetch_now(src if ballot >= self._leader_ballot else None)

    def _follow(self, src: int, ballot: Ballot) -> None:
        """A message from a leader under ``ballot``: step down or follow it."""
        self._observe(ballot)
        if self.role is not Role.FOLLOWER and ballot > self.ballot:
            self._step_down()
        if self.role is Role.CANDIDATE and self._fruitless and ballot >= self._leader_ballot:
            # our last attempt reached no majority of acceptors (we may be cut off from them)
            # and a live leader exists: stop campaigning, even though its ballot is lower
            self._step_down()
        if ballot >= self._leader_ballot and self.role is Role.FOLLOWER:
            self._leader_ballot = ballot
            self.leader = src
            self._reset_election_timer()

    def _fetch_now(self, acceptor: int | None = None) -> None:
        self._fetch_elapsed = 0
        if acceptor is None:  # round robin: an acceptor that misses a slot does not stall us
            acceptor = self._fetch_next
            self._fetch_next = (self._fetch_next + 1) % self.config.n
        self._send(acceptor_addr(acceptor),
                   Fetch(self.learner.known_upto() + 1, self.config.fetch_limit))

    def _on_promise(self, src: int, msg: Promise) -> None:
        self._observe(msg.ballot)
        for e in msg.accepted:
            if e.chosen:
                self.learner.learn(e.slot, e.value)
        if self.role is not Role.CANDIDATE or msg.ballot != self.ballot:
            return
        self._answered.add(src)
        self._promises[src] = msg
        if len(self._promises) >= self._quorum:
            self._become_leader()

    def _recover(self, promises: list[Promise], from_slot: int) -> list[Value]:
        return recover(promises, from_slot)

    def _become_leader(self) -> None:
        self.role = Role.LEADER
        self._led = True
        self.leader = self.id
        self._leader_ballot = self.ballot
        lead = self.leadership_class(self.ballot, self.config.n, self._from_slot - 1,
                                     window=self.config.window, max_batch=self.config.max_batch,
                                     thrifty=self.config.thrifty, own=self.id,
                                     hold_after=self.config.hold_after)
        recovered = self._recover(list(self._promises.values()), self._from_slot)
        for v in recovered:
            lead.enqueue(v, force=True)
        lead.recovered_upto = self._from_slot - 1 + len(recovered)
        for v in self._waiting:
            lead.enqueue(v)
        self._waiting = []
        self._heard = set(self._promises)
        self._promises = {}
        self.lead = lead
        self._hb_elapsed = 0
        self._quorum_elapsed = 0
        hb = Heartbeat(self.ballot, self.learner.delivered_upto)
        for i in range(self.config.n):
            if i != self.id:
                self._send(replica_addr(i), hb)
        self._pump()

    # ------------------------------------------------------------------ phase 2
    def _pump(self) -> None:
        """Send new batches while the window allows (each carries the commit index), to every
        acceptor or, thrifty, to a majority (the others get them at the heartbeat)."""
        lead = self.lead
        assert lead is not None
        batches = lead.next_batches()
        for b in batches:
            lead.sent_commit = lead.commit_upto
            msg = Accept(self.ballot, b.first_slot, b.values, lead.commit_upto)
            for j in lead.targets(b):
                self._send(acceptor_addr(j), msg)
        # A new commit index is not sent on its own: it rides on the next Accept, or on the
        # heartbeat's Commit when the cluster is quiet. Nobody waits for the marks: replicas
        # apply chosen values early_apply slots ahead of them (see _deliver).

    def _on_accepted(self, src: int, msg: Accepted) -> None:
        lead = self.lead
        if lead is None or msg.ballot != self.ballot:
            return
        self._heard.add(src)
        before = lead.commit_upto
        lead.on_accepted(src, msg.first_slot, msg.last_slot, msg.commit_upto)
        newly = []
        slot = before + 1
        while slot <= lead.commit_upto:  # newly chosen batches: apply them, tell the followers
            b = lead.batches[slot]
            newly.append(b)
            for i, value in enumerate(b.values):
                self._early[b.first_slot + i] = value
            slot = b.last_slot + 1
        self._learn_marked()
        if newly:
            self._tell_chosen(lead, newly)
        self._pump()

    def _tell_chosen(self, lead: Leadership, newly: list[Batch]) -> None:
        """Send the followers the newly chosen batches, with the marks known so far (no
        separate heartbeat per mark); with ``lazy_chosen``, hold them (``flush_chosen``)."""
        if not self.config.lazy_chosen:
            for b in newly:
                chosen = Chosen(self.ballot, b.first_slot, b.values, self.learner.known_upto())
                for i in range(self.config.n):
                    if i != self.id:
                        self._send(replica_addr(i), chosen)
            return
        held, forwarded = lead.held, lead.forwarded
        waiting: set[int] = set()
        for i in range(self.config.n):
            if i != self.id:
                held.setdefault(i, []).extend(newly)
        if forwarded:
            for b in newly:
                for v in b.values:
                    src = forwarded.pop(v.request_id, None)
                    if src is not None:
                        waiting.add(src)
        for i in waiting:
            self.flush_chosen(i)

    @property
    def holds_accepts(self) -> bool:
        """The leader holds its next batch (``Config.hold_after``)."""
        return self.lead is not None and self.lead.holding

    def release_accepts(self) -> None:
        """Leader: end a hold and send what is queued."""
        lead = self.lead
        if lead is not None and lead.holding:
            lead.release()
            self._pump()

    @property
    def holds_chosen(self) -> bool:
        """The leader holds chosen batches it has not sent to some follower yet."""
        return self.lead is not None and bool(self.lead.held)

    def flush_chosen(self, to: int | None = None) -> None:
        """Leader: send follower ``to`` (every follower if None) the chosen batches held for
        it, consecutive ones in one Chosen (``Leadership.take_held``)."""
        lead = self.lead
        if lead is None or not lead.held:
            return
        marked = self.learner.known_upto()
        for i, first, values in lead.take_held(to):
            # marks beyond this message's slots ride on the next one: a follower that heard
            # of a mark whose value it lacks would fetch it
            self._send(replica_addr(i), Chosen(self.ballot, first, values,
                                               min(marked, first + len(values) - 1)))

    def _learn_marked(self) -> None:
        assert self.lead is not None
        # Followers hear of these marks with the next Chosen or heartbeat: they already have
        # the values (Chosen) and may apply early_apply slots ahead of their marked prefix.
        for b in self.lead.take_marked():
            for i, v in enumerate(b.values):
                self.learner.learn(b.first_slot + i, v)

    def _heartbeat(self) -> None:
        lead = self.lead
        assert lead is not None
        self.flush_chosen()  # before the marks: a follower lacking a marked value fetches it
        hb = Heartbeat(self.ballot, self.learner.delivered_upto)
        for i in range(self.config.n):
            if i != self.id:
                self._send(replica_addr(i), hb)
        lead.sent_commit = lead.commit_upto
        commit = Commit(self.ballot, lead.commit_upto)
        for j in range(self.config.n):
            self._send(acceptor_addr(j), commit)
        for b in lead.unchosen():  # retransmit what a majority has not accepted yet
            msg = Accept(self.ballot, b.first_slot, b.values, lead.commit_upto)
            for j in range(self.config.n):
                if j not in b.acks:
                    self._send(acceptor_addr(j), msg)
        for j, first, values in lead.take_lazy():  # thrifty: what the others were not sent
            self._send(acceptor_addr(j), Accept(self.ballot, first, values, lead.commit_upto))

    # ------------------------------------------------------------------ output
    def _send(self, dst: Addr, msg: Message) -> None:
        self._out.append(Envelope(self.addr, dst, msg))

    def _deliver(self) -> None:
        if self.learner._buffer:
            for entry in self.learner.take():
                if entry.slot > self._emitted:
                    self._chosen.append(entry)
                    self._emitted = entry.slot
        early = self._early
        if early:
            # Chosen (a majority accepted it) but maybe not marked anywhere yet: safe to apply;
            # the learner catches up when a mark is confirmed.
            learned = self.learner.delivered_upto
            last = learned + self.config.early_apply
            while self._emitted < last and self._emitted + 1 in early:
                self._emitted += 1
                self._chosen.append(ChosenEntry(self._emitted, early[self._emitted]))
            pruned = self._early_pruned
            if learned > pruned:  # forget what the learner has delivered since
                slots = range(pruned + 1, learned + 1) if learned - pruned < len(early) \
                    else [s for s in early if s <= learned]
                for slot in slots:
                    early.pop(slot, None)
                self._early_pruned = learned
