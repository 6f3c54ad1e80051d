"""A seeded, deterministic simulator for the Paxos core: the network, the clock, the faults.

``Sim(seed).run()`` builds N acceptors and N replicas (N = 3 or 5, one machine each), and owns
every source of nondeterminism through one ``random.Random(seed)``: message loss, duplication,
delay (hence reordering), partitions (cut a link between two machines, isolate a machine, heal),
crashes and restarts of acceptors and of replicas (a restarted replica keeps only its persisted
``HardState`` and its applied state machine; an acceptor keeps its storage), and clients that
submit requests to random replicas and retry, with the same request id, through another one.

Time is virtual (ticks). A run has a fault phase, then heals everything (restart all, reconnect,
no more loss) and checks liveness: every submitted request must be acknowledged and applied on
every replica within ``settle_ticks``.

Invariants, checked after every event (each violation raises ``Violation``):

- at most one value is chosen per slot, computed from the global view: a majority of
  acceptors accepted the same (slot, ballot); and no ballot carries two values for one slot;
- every chosen value was proposed by a client, or is the no-op;
- an acceptor's promise never decreases, across restarts too;
- what an acceptor reports as chosen (``Fetched``, chosen marks in ``Promise``) is the
  globally chosen value;
- each replica applies slots in order without gaps, and only globally chosen values (so all
  learners' delivered prefixes agree);
- each request id is applied at most once per replica (the applier dedupes), every acknowledged
  request is in the chosen log, and (liveness) every request is applied exactly once everywhere;
- with read leases (``lease`` ticks, as the runtime asks for them: on the leader's heartbeat
  Commits, stamped with its clock; acceptor clocks run up to 10% fast or slow): while a
  leader's ``LeaseTracker`` says its lease holds, a majority of acceptors still promise exactly
  its ballot (so no newer leader can have acknowledged a write).

The trace (every event) is hashed; the same seed gives the same hash.
"""

from __future__ import annotations

import hashlib
import heapq
import random
from dataclasses import dataclass, field, replace
from typing import Callable

from replicate.paxos import (
    Accept, Acceptor, Ballot, Config, Envelope, Fetched, HardState, InMemoryAcceptorStorage,
    Commit, Committed, LeaseTracker, Promise, Replica, Role, Value,
)
from replicate.paxos.messages import AcceptorRequest


class Violation(AssertionError):
    """An invariant did not hold."""


@dataclass
class StateMachine:
    """The applied state of one replica: durable, like the node's tables and applied slot."""

    applied_upto: int = 0
    applied_ids: set[str] = field(default_factory=set)
    sequence: list[str] = field(default_factory=list)  # request ids in apply order (deduped)


@dataclass
class Request:
    value: Value
    target: int = -1
    deadline: int = 0
    attempts: int = 0
    acked: bool = False


@dataclass
class Profile:
    """The fault mix of one seed (drawn from the seed)."""

    n: int
    p_drop: float
    p_dup: float
    max_delay: int
    p_crash_replica: float
    p_crash_acceptor: float
    p_partition: float
    p_heal: float
    p_crash_midsend: float
    p_crash_leader: float


class Sim:
    def __init__(self, seed: int, *, n: int | None = None,
                 acceptor_rules: Acceptor | None = None,
                 storage_factory: Callable[[], InMemoryAcceptorStorage] = InMemoryAcceptorStorage,
                 replica_class: type[Replica] = Replica,
                 config: Callable[[int], Config] | None = None,
                 fault_ticks: int = 500, settle_ticks: int = 800, requests: int = 150,
                 client_timeout: int = 40, record: bool = False, lease: int = 0,
                 as_proxies: bool = False) -> None:
        self.seed = seed
        self.rng = random.Random(seed)
        r = self.rng
        self.profile = Profile(
            n=n or r.choice((3, 3, 3, 5)),
            p_drop=r.choice((0.0, 0.02, 0.1, 0.25)),
            p_dup=r.choice((0.0, 0.05, 0.15)),
            max_delay=r.choice((1, 2, 4, 8)),
            p_crash_replica=r.choice((0.0, 0.005, 0.02, 0.04)),
            p_crash_acceptor=r.choice((0.0, 0.005, 0.02)),
            p_partition=r.choice((0.0, 0.01, 0.03)),
            p_heal=r.choice((0.02, 0.1)),
            p_crash_midsend=r.choice((0.0, 0.01, 0.03)),
            p_crash_leader=r.choice((0.0, 0.01, 0.03)),
        )
        self.n = self.profile.n
        self.majority = self.n // 2 + 1
        self.rules = acceptor_rules or Acceptor()
        self.storage_factory = storage_factory
        self.replica_class = replica_class
        self.config = config(self.n) if config else Config(
            n=self.n, window=r.choice((1, 2, 4, 8)), max_batch=r.choice((4, 16)),
            heartbeat_ticks=r.choice((2, 3, 5)), election_ticks=r.choice((8, 10, 20)))
        if as_proxies:  # the proxies' settings; the same seed's faults either way
            self.config = replace(self.config, thrifty=True, lazy_chosen=True, hold_after=2)
        self.fault_ticks = fault_ticks
        self.settle_ticks = settle_ticks
        self.n_requests = requests
        self.client_timeout = client_timeout
        self.now = 0
        self.faults = True
        self._kill_leader = False
        self.events = 0
        self._hash = hashlib.sha256()
        self.record = record
        self.trace: list[str] = []
        # network
        self._queue: list[tuple[int, int, Envelope]] = []
        self._seq = 0
        self.cuts: set[tuple[int, int]] = set()
        self.deaf: int | None = None  # replica cut from the other acceptors after healing
        # acceptors
        self.storages = [storage_factory() for _ in range(self.n)]
        # read leases: their own generator, so that seeds without them run as they always did
        self.lease = lease
        lr = random.Random(f"lease-{seed}")
        self.clock_rates = [lr.uniform(0.9, 1.1) for _ in range(self.n)]
        self.leases = [LeaseTracker(self.n) for _ in range(self.n)]
        self.acceptor_down_until = [0] * self.n
        self.max_promise = [Ballot(0, 0)] * self.n
        # replicas
        self.hard = [HardState() for _ in range(self.n)]
        self.sms = [StateMachine() for _ in range(self.n)]
        self.replicas: list[Replica | None] = [self._new_replica(i) for i in range(self.n)]
        self.replica_down_until = [0] * self.n
        # global view
        self.votes: dict[tuple[int, Ballot], tuple[Value, set[int]]] = {}
        self.chosen: dict[int, Value] = {}
        self.proposed: set[Value] = set()
        self.requests: list[Request] = []

    # ------------------------------------------------------------------ plumbing
    def _log(self, text: str) -> None:
        self._hash.update(text.encode())
        self._hash.update(b"\n")
        if self.record:
            self.trace.append(text)

    def trace_hash(self) -> str:
        return self._hash.hexdigest()

    def fail(self, what: str) -> None:
        raise Violation(f"seed {self.seed} t={self.now}: {what}")

    def _new_replica(self, i: int) -> Replica:
        rng = random.Random(self.rng.getrandbits(64))
        return self.replica_class(i, self.config, rng, hard_state=self.hard[i],
                                  delivered_upto=self.sms[i].applied_upto)

    def _linked(self, a: int, b: int) -> bool:
        return a == b or (min(a, b), max(a, b)) not in self.cuts

    def _passes(self, env: Envelope) -> bool:
        src, dst = env.src, env.dst
        if not self._linked(src.id, dst.id):
            return False
        if self.deaf is not None and src.role != dst.role and src.id != dst.id:
            # the deaf replica reaches every proxy and its own node, but no other node
            return (src.id if src.role == "replica" else dst.id) != self.deaf
        return True

    def _send(self, env: Envelope) -> None:
        if not self._passes(env):
            return
        r = self.rng
        copies = 1
        if self.faults:
            if r.random() < self.profile.p_drop:
                return
            if r.random() < self.profile.p_dup:
                copies = 2
        for _ in range(copies):
            self._seq += 1
            heapq.heappush(self._queue, (self.now + r.randint(1, self.profile.max_delay),
                                         self._seq, env))

    def _drain(self, i: int) -> None:
        rep = self.replicas[i]
        assert rep is not None
        while rep.has_ready():
            rd = rep.ready()
            if rd.hard_state is not None:  # persist before send
                if rd.hard_state.round < self.hard[i].round:
                    self.fail(f"replica {i} persisted a lower round {rd.hard_state}")
                self.hard[i] = rd.hard_state
            if self.faults and rd.messages and (
                    self.rng.random() < self.profile.p_crash_midsend
                    or (self._kill_leader and rep.role is Role.LEADER
                        and any(isinstance(e.msg, Accept) for e in rd.messages))):
                self._kill_leader = False
                # crash after sending only some of the messages (e.g. accepts reached a minority)
                for env in rd.messages[:self.rng.randrange(1, len(rd.messages) + 1)]:
                    self._send(env)
                self._crash_replica(i)
                return
            for env in rd.messages:
                if self.lease and isinstance(env.msg, Commit):  # what the engine does
                    env = Envelope(env.src, env.dst, Commit(
                        env.msg.ballot, env.msg.commit_upto, self.lease, self.now))
                self._send(env)
            for e in rd.chosen:
                self._apply(i, e.slot, e.value)
            rep.advance(rd)

    # ------------------------------------------------------------------ invariants
    def _record_accepts(self, j: int, write) -> None:
        ballot, first, values = write.accept
        for k, v in enumerate(values):
            slot = first + k
            key = (slot, ballot)
            cur = self.votes.get(key)
            if cur is None:
                cur = self.votes[key] = (v, set())
            elif cur[0] != v:
                self.fail(f"slot {slot} ballot {ballot} carries two values {cur[0]} and {v}")
            cur[1].add(j)
            if len(cur[1]) >= self.majority:
                old = self.chosen.get(slot)
                if old is None:
                    if not v.is_noop and v not in self.proposed:
                        self.fail(f"slot {slot} chose {v}, which nobody proposed")
                    self.chosen[slot] = v
                    self._log(f"chosen {slot} {v}")
                elif old != v:
                    self.fail(f"slot {slot}: two values chosen: {old} and {v} (ballot {ballot})")

    def _check_promise(self, j: int) -> None:
        p = self.storages[j].promised()
        if p < self.max_promise[j]:
            self.fail(f"acceptor {j} promise went down from {self.max_promise[j]} to {p}")
        self.max_promise[j] = p

    def _check_marks(self, j: int, reply: object) -> None:
        """What an acceptor reports as chosen must be the chosen value."""
        if isinstance(reply, Fetched):
            marked = [(e.slot, e.value) for e in reply.entries]
        elif isinstance(reply, Promise):
            marked = [(e.slot, e.value) for e in reply.accepted if e.chosen]
        else:
            return
        for slot, value in marked:
            if self.chosen.get(slot) != value:
                self.fail(f"acceptor {j} marks {value} chosen in slot {slot}, "
                          f"chosen is {self.chosen.get(slot)}")

    def _check_lease(self, i: int) -> None:
        """A leader whose lease holds still has a majority promising exactly its ballot."""
        rep = self.replicas[i]
        if rep is None or rep.role is not Role.LEADER or not self.leases[i].valid(
                rep.ballot, self.now):
            return
        holding = sum(1 for st in self.storages if st.promised() == rep.ballot)
        if holding < self.majority:
            self.fail(f"replica {i} holds a read lease under {rep.ballot} at t={self.now}, "
                      f"but only {holding} acceptors promise it")

    def _apply(self, i: int, slot: int, value: Value) -> None:
        sm = self.sms[i]
        if slot != sm.applied_upto + 1:
            self.fail(f"replica {i} delivered slot {slot} after {sm.applied_upto} (gap or repeat)")
        chosen = self.chosen.get(slot)
        if chosen != value:
            self.fail(f"replica {i} delivered {value} in slot {slot}, chosen is {chosen}")
        sm.applied_upto = slot
        self._log(f"apply r{i} {slot} {value}")
        if value.is_noop or value.request_id in sm.applied_ids:
            rid = value.request_id
        else:
            rid = value.request_id
            sm.applied_ids.add(rid)
            sm.sequence.append(rid)
        if rid:
            req = self.requests[int(rid[1:])]
            if req.target == i and not req.acked:
                self._ack(req, i)

    def _ack(self, req: Request, i: int) -> None:
        req.acked = True
        self._log(f"ack {req.value.request_id} via r{i}")
        if req.value not in self.chosen.values():
            self.fail(f"acknowledged {req.value.request_id} is not chosen")

    # ------------------------------------------------------------------ events
    def _deliver(self, env: Envelope) -> None:
        self.events += 1
        dst = env.dst
        if not self._passes(env):
            return
        if dst.role == "acceptor":
            j = dst.id
            if self.acceptor_down_until[j] > self.now:
                return
            msg: AcceptorRequest = env.msg  # type: ignore[assignment]
            storage = self.storages[j]
            storage.clock = int(self.now * self.clock_rates[j])
            write, reply = self.rules.handle(storage, msg)
            storage.apply(write)
            if write.accept is not None:
                self._record_accepts(j, write)
            self._check_promise(j)
            self._check_marks(j, reply)
            self._send(Envelope(env.dst, env.src, reply))
        else:
            i = dst.id
            rep = self.replicas[i]
            if rep is None:
                return
            if isinstance(env.msg, Committed):
                self.leases[i].granted(env.src.id, env.msg)
            rep.step(env)
            self._drain(i)
        if self.lease:
            for i in range(self.n):
                self._check_lease(i)

    def _faults(self) -> None:
        r, p = self.rng, self.profile
        for i in range(self.n):
            if self.replicas[i] is None:
                if self.replica_down_until[i] <= self.now:
                    self._restart_replica(i)
            elif r.random() < p.p_crash_replica:
                self._crash_replica(i)
            if self.acceptor_down_until[i] == self.now:
                self._restart_acceptor(i)
            elif self.acceptor_down_until[i] < self.now and r.random() < p.p_crash_acceptor:
                self.acceptor_down_until[i] = self.now + self._downtime()
                self._log(f"crash a{i}")
        if r.random() < p.p_crash_leader:  # kill the leader, as Jepsen would
            if r.random() < 0.5:  # ... while it sends its next batch of accepts
                self._kill_leader = True
            else:
                for i, rep in enumerate(self.replicas):
                    if rep is not None and rep.role is Role.LEADER:
                        self._crash_replica(i)
                        break
        if r.random() < p.p_partition:
            if r.random() < 0.5:
                a, b = r.sample(range(self.n), 2)
                self.cuts.add((min(a, b), max(a, b)))
                self._log(f"cut {a}-{b}")
            else:
                a = r.randrange(self.n)
                for b in range(self.n):
                    if b != a:
                        self.cuts.add((min(a, b), max(a, b)))
                self._log(f"isolate {a}")
        if self.cuts and r.random() < p.p_heal:
            self.cuts.clear()
            self._log("heal")

    def _downtime(self) -> int:
        r = self.rng
        return r.randint(1, 4) if r.random() < 0.5 else r.randint(5, 60)

    def _crash_replica(self, i: int) -> None:
        self.replicas[i] = None
        self.leases[i] = LeaseTracker(self.n)  # its memory is gone
        self.replica_down_until[i] = self.now + self._downtime()
        self._log(f"crash r{i}")

    def _restart_replica(self, i: int) -> None:
        self.replicas[i] = self._new_replica(i)
        self._log(f"restart r{i}")

    def _restart_acceptor(self, j: int) -> None:
        self.storages[j] = self.storages[j].restart()
        self.acceptor_down_until[j] = self.now
        self._check_promise(j)
        self._log(f"restart a{j}")

    def heal(self) -> None:
        """Stop all faults: restart everything, reconnect, no more loss or duplication."""
        self.faults = False
        self.cuts.clear()
        if self.rng.random() < 0.25:
            # an asymmetric fault that outlives the heal: one proxy reaches the other proxies
            # but not their PostgreSQL nodes. If it leads, it must give up the leadership.
            leaders = [i for i, rep in enumerate(self.replicas)
                       if rep is not None and rep.role is Role.LEADER]
            self.deaf = leaders[0] if leaders else self.rng.randrange(self.n)
            self._log(f"deaf r{self.deaf}")
        for i in range(self.n):
            if self.replicas[i] is None:
                self._restart_replica(i)
            if self.acceptor_down_until[i] > self.now:
                self._restart_acceptor(i)
        self._log("heal all")

    def _clients(self) -> None:
        r = self.rng
        if len(self.requests) < self.n_requests and r.random() < 0.4:
            k = len(self.requests)
            v = Value(f"q{k}", f"payload {k}".encode())
            self.proposed.add(v)
            self.requests.append(Request(v))
            self._submit(self.requests[-1])
        for req in self.requests:
            if not req.acked and req.deadline <= self.now:
                self._submit(req)

    def _submit(self, req: Request) -> None:
        i = self.rng.randrange(self.n)
        req.target = i
        req.attempts += 1
        req.deadline = self.now + self.client_timeout
        self._log(f"submit {req.value.request_id} r{i}")
        if req.value.request_id in self.sms[i].applied_ids:
            self._ack(req, i)
            return
        rep = self.replicas[i]
        if rep is not None:
            rep.propose(req.value)
            self._drain(i)

    def step(self) -> None:
        """Advance the virtual clock by one tick and run everything due."""
        self.now += 1
        if self.faults:
            self._faults()
        self._clients()
        q = self._queue
        while q and q[0][0] <= self.now:
            _, _, env = heapq.heappop(q)
            self._log(f"{self.now} {env}")
            self._deliver(env)
        for i, rep in enumerate(self.replicas):
            if rep is not None:
                rep.tick()
                self._drain(i)

    def settled(self) -> bool:
        if len(self.requests) < self.n_requests:
            return False
        if not all(req.acked for req in self.requests):
            return False
        want = {req.value.request_id for req in self.requests}
        # the deaf replica may lack chosen values its own acceptor never got: it is exempt
        return all(want <= sm.applied_ids for i, sm in enumerate(self.sms) if i != self.deaf)

    def run(self) -> "Sim":
        for _ in range(self.fault_ticks):
            self.step()
        self.heal()
        deadline = self.now + self.settle_ticks
        while not self.settled():
            if self.now >= deadline:
                missing = [q.value.request_id for q in self.requests if not q.acked]
                lag = [sm.applied_upto for sm in self.sms]
                self.fail(f"liveness: not settled {self.settle_ticks} ticks after healing; "
                          f"unacknowledged {missing}, applied {lag}, chosen {len(self.chosen)}")
            self.step()
        for sm in self.sms:
            if len(sm.sequence) != len(set(sm.sequence)):
                self.fail("a request id was applied twice")
        seqs = {tuple(sm.sequence[:min(len(s.sequence) for s in self.sms)]) for sm in self.sms}
        if len(seqs) != 1:
            self.fail("replicas applied different request sequences")
        return self
