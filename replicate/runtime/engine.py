"""The engine: one proxy's replica of the Multi-Paxos log, driven against real nodes.

Python API (used by the proxy and the tests)::

    engine = Engine(config, "n1")
    await engine.start()
    outcome = await engine.submit(Entry("INSERT INTO t VALUES ($1)", (Param(b"1"),)))
    index = await engine.read_index()       # a commit index confirmed by a majority
    await engine.wait_applied(index)        # the local node has applied it
    engine.status()                         # a dict for `replicate status`
    await engine.stop()

How it runs. One driver task owns the pure ``Replica`` (replicate.paxos): it
takes events from one queue (ticks, replies from acceptors, frames from
peers, proposals), steps the replica, then performs its ``Ready`` in the
order the core demands: persist the hard state in the local node, send the
messages (acceptor requests to ``AcceptorLink`` workers, peer frames to
``PeerLink``s, never awaiting them), and hand chosen entries to the apply
loop. The apply loop applies them to the local node in slot order (see
``applier``), then wakes whoever waits for those request ids or slots.

A submitted entry gets a request id unique to this proxy process. The proxy
proposes it (the core forwards it to the leader when this proxy is a
follower) and waits until its *own* node has applied it; if that takes longer
than ``retry_interval`` it proposes again with the same request id (the
leader may have died), and the applier runs a request id at most once.

Read index (``read_index``): the leader answers with its commit index once
(a) it has committed everything it recovered in phase 1, so every slot any
earlier leader may have acknowledged is below the index, and (b) a majority
of acceptors has answered a ``Commit`` under its ballot sent after the
request arrived, so it was still the leader when the read began. Concurrent
reads share such confirmation rounds (``leader_read_index``). With a read
lease (``read_lease_ms``, replicate/paxos/lease.py) a leader skips the round
while a majority of acceptors is known to keep its promise. Followers ask
the leader over one persistent peer connection, and concurrent follower reads
share one request (``_ask_leader_read_index``).
"""

from __future__ import annotations

import asyncio
import collections
import itertools
import json
import logging
import os
import random
import time
from dataclasses import dataclass
from typing import Any, Sequence

import psycopg

from replicate.command import Entry, Outcome, Status
from replicate.config import ClusterConfig
from replicate.errors import NodeUnavailable, ReplicateError
from replicate.paxos import Config as PaxosConfig
from replicate.paxos import HardState, LeaseTracker, Replica, Role
from replicate.paxos.messages import (
    AcceptorReply, Chosen, ChosenEntry, Commit, Committed, Envelope, Fetch, Forward, Heartbeat,
    Value,
    acceptor_addr,
    replica_addr,
)
from replicate.runtime.applier import NODE_POSITION_SQL, Applier, ApplyGap, LocalApplyError
from replicate.runtime.client import ProxyClient
from replicate.runtime.deadline import within
from replicate.runtime.links import AcceptorLink, PeerLink
from replicate.runtime.readrounds import SharedRounds
from replicate.runtime.schema import ainstall

log = logging.getLogger("replicate.engine")


class OutcomeUnknown(ReplicateError):
    """The write may or may not have been applied: it did not complete within its timeout."""

    sqlstate = "40003"  # statement_completion_unknown


class NotApplied(ReplicateError):
    """The local node did not apply the slot a read waits for in time (it is behind or
    stalled: see the proxy's status)."""

    sqlstate = "57P03"  # cannot_connect_now


class NotLeader(ReplicateError):
    """No leader could confirm a read index in time."""

    sqlstate = "57P03"  # cannot_connect_now


# The smallest chosen batch after which a leader holds its next one (EngineSettings.
# accept_hold_s): several clients are writing at once. A lone client's writes are never held.
HOLD_AFTER = 4


@dataclass(frozen=True, slots=True)
class EngineSettings:
    tick_s: float = 0.05               # one core tick
    paxos: PaxosConfig | None = None   # default: see Engine.__init__ (one batch, thrifty)
    submit_timeout_s: float = 15.0
    retry_interval_s: float = 2.0
    apply_timeout_ms: int = 5000
    apply_batch: int = 256
    # How long a replica may hold chosen slots that nobody on this proxy waits for (no write
    # taken here, no read waiting for them), to apply more of them in one transaction: every
    # node applies every write, and on a busy machine a transaction per batch on every node
    # costs more than the batch's statements (docs/decisions.md, "Applying in fewer
    # transactions"). 0 applies at once.
    apply_linger_s: float = 0.01
    # How long the leader may hold its next batch after a batch of HOLD_AFTER or more values
    # was chosen: its clients send their next writes within moments, and one batch of many
    # costs every node less than two (docs/decisions.md, "Accept holds"). 0 never holds.
    accept_hold_s: float = 0.001
    node_probe_s: float = 1.0  # an idle apply loop reads the node's position this often
    # Chosen slots held in memory for the local node. While the node is down (or slower than
    # the cluster) the newer ones are dropped and fetched again from the acceptors when the
    # queue has room, so that a long outage costs the proxy no more memory than this.
    apply_backlog: int = 100_000
    request_timeout_s: float = 2.0
    connect_timeout_s: float = 2.0
    # Read confirmations (Commit) on a second connection per acceptor, so that they do not wait
    # behind queued Accepts and fetches (docs/decisions.md, "Linearizable reads").
    confirm_connections: bool = True
    leader_read_timeout_s: float = 2.0  # a follower's read-index request to the leader
    # Read leases: every heartbeat Commit asks the acceptors not to promise another leader for
    # this long; while a majority's lease holds (less a 20% margin for clock rates), the
    # leader answers read-index requests without a confirmation round. 0: a round every time.
    read_lease_ms: int = 500


async def _result_within(waiter: asyncio.Future, timeout: float) -> Any:
    """``waiter``'s result, or ``asyncio.TimeoutError`` after ``timeout`` seconds.

    ``asyncio.wait_for(asyncio.shield(waiter), timeout)`` without its task, shield future and
    two extra event-loop passes per write: ``waiter`` (shared by retries of one request id) is
    never cancelled, also not when the caller is."""
    if not waiter.done():
        loop = asyncio.get_running_loop()
        wake = loop.create_future()

        def ready(_: Any = None) -> None:
            if not wake.done():
                wake.set_result(None)
        waiter.add_done_callback(ready)
        timer = loop.call_later(timeout, ready)
        try:
            await wake
        finally:
            timer.cancel()
            waiter.remove_done_callback(ready)
        if not waiter.done():
            raise asyncio.TimeoutError
    return waiter.result()


class _Mailbox:
    """The driver's events: ``asyncio.Queue``'s ``put_nowait``/``get``/``get_nowait`` for one
    consumer and no bound, without the queue's waiter bookkeeping (three or four events per
    write at the leader; docs/decisions.md, "Leader proxy CPU per write")."""

    __slots__ = ("_items", "_waiter")

    def __init__(self) -> None:
        self._items: collections.deque = collections.deque()
        self._waiter: asyncio.Future | None = None

    def __len__(self) -> int:
        return len(self._items)

    def put_nowait(self, item: Any) -> None:
        self._items.append(item)
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def get_nowait(self) -> Any:
        if not self._items:
            raise asyncio.QueueEmpty
        return self._items.popleft()

    async def get(self) -> Any:
        while not self._items:
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        return self._items.popleft()


class Engine:
    """See the module docstring."""

    def __init__(self, config: ClusterConfig, node: str,
                 settings: EngineSettings = EngineSettings()) -> None:
        self.config = config
        self.name = node
        self.index = [n.name for n in config.nodes].index(config.node(node).name)
        self.settings = settings
        self.n = len(config.nodes)
        # One batch in flight of up to 64 values: the machine is CPU-bound at 8 and 32 clients,
        # and the writes that arrive while a batch is out make the next one larger, so fewer
        # acceptor calls and apply transactions per write (docs/decisions.md, "Batch window").
        # Thrifty: each Accept to a majority of acceptors, the others get the values at the
        # heartbeat (docs/decisions.md, "Accepts to a majority").
        # lazy_chosen: the leader sends the followers what became chosen at most every
        # apply_linger_s, as they apply it at most that often (docs/decisions.md, "Chosen
        # values for the followers, once per linger")
        # hold_after: a busy leader holds its next batch up to accept_hold_s ("Accept holds")
        self.paxos_config = settings.paxos or PaxosConfig(
            n=self.n, window=1, max_batch=64, thrifty=True,
            lazy_chosen=settings.apply_linger_s > 0,
            hold_after=HOLD_AFTER if settings.accept_hold_s > 0 else 0)
        self._flush_timer: asyncio.TimerHandle | None = None
        self._hold_timer: asyncio.TimerHandle | None = None
        self._chosen_sent = [0] * self.n  # Chosen messages sent to each peer (status)
        self.boot = os.urandom(4).hex()
        self._seq = itertools.count(1)
        self.replica: Replica | None = None
        self._events = _Mailbox()
        self._tasks: list[asyncio.Task] = []
        self.links = [AcceptorLink(i, n.dsn, self._on_acceptor_reply,
                                   connect_timeout=settings.connect_timeout_s,
                                   request_timeout=settings.request_timeout_s)
                      for i, n in enumerate(config.nodes)]
        self.confirm_links = ([AcceptorLink(i, n.dsn, self._on_acceptor_reply,
                                            connect_timeout=settings.connect_timeout_s,
                                            request_timeout=settings.request_timeout_s,
                                            application_name="replicate confirm")
                               for i, n in enumerate(config.nodes)]
                              if settings.confirm_connections else self.links)
        self.peers: dict[int, PeerLink] = {
            i: PeerLink(self.index, i, n.proxy_host, n.proxy_port)
            for i, n in enumerate(config.nodes) if i != self.index}
        self.applier = Applier(config.nodes[self.index].dsn,
                               connect_timeout=settings.connect_timeout_s,
                               apply_timeout_ms=settings.apply_timeout_ms)
        self._local_dsn = config.nodes[self.index].dsn
        self._hard_conn: psycopg.AsyncConnection | None = None
        self._to_apply: list = []
        # Chosen slots shed_from..shed_upto were dropped, not queued (``apply_backlog``): the
        # apply loop fetches them from the acceptors once the queue is empty. None: none.
        self._shed_from: int | None = None
        self._shed_upto = 0
        self.shed_slots = 0   # slots dropped so far (status)
        self._apply_wakeup = asyncio.Event()
        # When the node's postmaster started, as of the applied slot read from it last
        # (``check_node``); a recheck reads both again.
        self.node_started: int | None = None
        self._node_asked = 0   # rechecks asked for (``_ask_node``)
        self._node_served = 0  # the asks the last completed recheck began after
        self._apply_wanted = 0  # wait_applied calls waiting: apply without lingering
        self._waiters: dict[str, asyncio.Future] = {}
        self.applied_upto = 0
        self._applied_changed = asyncio.Condition()
        self.stalled: str | None = None
        self.control_version = 0   # bumped whenever a control entry (e.g. register) applied
        self.control_slot = 0      # the slot of the last one this proxy applied (CatalogCache)
        self._read_waiters: list[tuple[asyncio.Future, float]] = []
        self._leader_reads: SharedRounds[asyncio.Future] = SharedRounds()
        self._follower_reads: SharedRounds[asyncio.Future] = SharedRounds()
        self._read_tasks: set[asyncio.Task] = set()
        self._leader_channels: dict[int, ProxyClient] = {}  # follower -> leader, read index
        self.lease = LeaseTracker(self.n)
        self.lease_reads = 0  # read indexes answered from the lease, without a round
        self.leader_connections = 0  # connections opened to a leader for read-index requests
        self.started_at = time.monotonic()
        self.ready = asyncio.Event()  # set once start() loaded the local state

    # ------------------------------------------------------------------ lifecycle
    async def start(self) -> None:
        """Load durable state from the local node, then run. Retries until the node answers."""
        delay = 0.1
        while True:
            try:
                round_, applied = await self._load_local_state()
                break
            except (psycopg.Error, OSError) as exc:
                self.stalled = f"local node unavailable: {exc}".strip()
                log.warning("%s: %s; retrying", self.name, self.stalled)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 2.0)
        self.stalled = None
        self.applied_upto = applied
        self.replica = Replica(self.index, self.paxos_config, random.Random(),
                               hard_state=HardState(round_), delivered_upto=applied)
        for link in self._all_links():
            link.start()
        for peer in self.peers.values():
            peer.start()
        self.ready.set()
        self._tasks = [asyncio.create_task(self._supervise(loop), name=loop.__name__)
                       for loop in (self._drive, self._tick, self._apply_loop)]

    def _all_links(self) -> list[AcceptorLink]:
        return self.links + [l for l in self.confirm_links if l not in self.links]

    async def _supervise(self, loop) -> None:
        """Run one of the engine's loops; a bug in it is logged and the loop restarted."""
        while True:
            try:
                await loop()
            except asyncio.CancelledError:
                raise
            except Exception:  # noqa: BLE001 - keep the proxy alive, loudly
                log.exception("%s: %s failed; restarting it", self.name, loop.__name__)
                self.stalled = f"internal error in {loop.__name__}; see the proxy log"
                await asyncio.sleep(0.5)

    async def _load_local_state(self) -> tuple[int, int]:
        conn = await psycopg.AsyncConnection.connect(
            self._local_dsn, autocommit=True, connect_timeout=max(1, int(self.settings.connect_timeout_s)),
            application_name="replicate engine")
        await ainstall(conn)
        row = await (await conn.execute(
            "SELECT round FROM replicate.replica_state WHERE replica_id = %s", [self.index])
        ).fetchone()
        applied = await (await conn.execute(NODE_POSITION_SQL)).fetchone()
        self._hard_conn = conn
        self.node_started = int(applied[1]) if applied else None
        return (int(row[0]) if row else 0), (int(applied[0]) if applied else 0)

    async def stop(self) -> None:
        for timer in (self._flush_timer, self._hold_timer):
            if timer is not None:
                timer.cancel()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for task in list(self._read_tasks):
            task.cancel()
        await asyncio.gather(*self._read_tasks, return_exceptions=True)
        for rounds in (self._leader_reads, self._follower_reads):
            for fut in rounds.clear():
                if not fut.done():
                    fut.set_exception(NodeUnavailable("the proxy is shutting down"))
        for channel in self._leader_channels.values():
            await channel.close()
        self._leader_channels.clear()
        for link in self._all_links():
            await link.stop()
        for peer in self.peers.values():
            await peer.stop()
        await self.applier.close()
        if self._hard_conn is not None:
            await self._hard_conn.close()
        for fut in self._waiters.values():
            if not fut.done():
                fut.set_exception(NodeUnavailable("the proxy is shutting down"))

    # ------------------------------------------------------------------ driver
    def _on_acceptor_reply(self, index: int, reply: AcceptorReply) -> None:
        if isinstance(reply, Committed) and reply.lease:
            self.lease.granted(index, reply)
        self._events.put_nowait(("step", Envelope(acceptor_addr(index), replica_addr(self.index), reply)))

    def deliver_peer_frame(self, sender: int, frame: Heartbeat | Chosen | Forward) -> None:
        """A Heartbeat, Chosen or Forward from proxy ``sender`` (called by the server)."""
        if 0 <= sender < self.n and sender != self.index:
            self._events.put_nowait(("step", Envelope(replica_addr(sender), replica_addr(self.index), frame)))

    def _release_chosen(self, follower: int) -> None:
        """Send ``follower`` now what this leader holds for it (``lazy_chosen``): it asked
        for a read index and will wait until it applied that slot."""
        if 0 <= follower < self.n and follower != self.index:
            self._events.put_nowait(("flush", follower))

    async def _tick(self) -> None:
        while True:
            await asyncio.sleep(self.settings.tick_s)
            self._events.put_nowait(("tick", None))

    async def _drive(self) -> None:
        rep = self.replica
        assert rep is not None
        while True:
            kind, item = await self._events.get()
            while True:
                try:
                    if kind == "tick":
                        rep.tick()
                    elif kind == "step":
                        rep.step(item)
                    elif kind == "propose":
                        value, fut = item
                        outcome = rep.propose(value)
                        if not fut.done():
                            fut.set_result(outcome)
                    elif kind == "release":
                        self._hold_timer = None
                        rep.release_accepts()
                    elif kind == "flush":
                        if item is None:
                            self._flush_timer = None
                        rep.flush_chosen(item)
                except (ValueError, TypeError) as exc:  # a malformed message from outside
                    log.warning("%s: dropped event %s: %s", self.name, kind, exc)
                if not self._events:
                    break
                kind, item = self._events.get_nowait()
            if rep.has_ready():
                await self._perform_ready(rep)
            if self._hold_timer is None and rep.holds_accepts:
                self._hold_timer = asyncio.get_running_loop().call_later(
                    self.settings.accept_hold_s, self._events.put_nowait, ("release", None))
            if self._flush_timer is None and rep.holds_chosen:
                self._flush_timer = asyncio.get_running_loop().call_later(
                    self.settings.apply_linger_s, self._events.put_nowait, ("flush", None))
            self._observe_leadership(rep)

    async def _perform_ready(self, rep: Replica) -> None:
        while rep.has_ready():
            ready = rep.ready()
            if ready.hard_state is not None:
                await self._persist(ready.hard_state)
            # Each send and the apply only wake a task; they run in this order. Accepts first
            # (the next round), then the apply a client may be waiting for, then the peers:
            # applying chosen values never depends on a message being sent.
            for env in ready.messages:
                if env.dst.role == "acceptor":
                    self._send(env)
            if ready.chosen:
                self._queue_chosen(ready.chosen)
            for env in ready.messages:
                if env.dst.role != "acceptor":
                    self._send(env)
            rep.advance(ready)

    async def _persist(self, hard: HardState) -> None:
        """Persist the replica's round in the local node before any message uses it."""
        delay = 0.05
        while True:
            try:
                if self._hard_conn is None or self._hard_conn.closed or self._hard_conn.broken:
                    self._hard_conn = await psycopg.AsyncConnection.connect(
                        self._local_dsn, autocommit=True,
                        connect_timeout=max(1, int(self.settings.connect_timeout_s)))
                await within(self._hard_conn.execute(
                    "SELECT replicate.save_round(%s, %s)", [self.index, hard.round]),
                    self.settings.request_timeout_s)
                return
            except (psycopg.Error, OSError, asyncio.TimeoutError) as exc:
                log.warning("%s: cannot persist round %d: %s", self.name, hard.round, exc)
                conn, self._hard_conn = self._hard_conn, None
                if conn is not None:
                    asyncio.create_task(_close(conn))
                await asyncio.sleep(delay)
                delay = min(delay * 2, 1.0)

    def _send(self, env: Envelope) -> None:
        if env.dst.role == "acceptor":
            msg = env.msg
            if type(msg) is Commit and self.settings.read_lease_ms:
                # stamped before it is queued: the acceptor runs it later, so its lease ends
                # later than stamp + lease on this clock (lease.py)
                msg = Commit(msg.ballot, msg.commit_upto, self.settings.read_lease_ms, _now_ms())
            self.links[env.dst.id].send(msg)
        elif env.dst.id in self.peers and isinstance(env.msg, (Heartbeat, Chosen, Forward)):
            if type(env.msg) is Chosen:
                self._chosen_sent[env.dst.id] += 1
            self.peers[env.dst.id].send(env.msg)

    def _observe_leadership(self, rep: Replica) -> None:
        """Answer pending read-index requests once this leader committed what it recovered."""
        if rep.role is Role.LEADER and rep.commit_index is not None:
            recovered = rep.recovered_upto or 0
            if self._read_waiters and rep.commit_index >= recovered:
                waiters, self._read_waiters = self._read_waiters, []
                for fut, _ in waiters:
                    if not fut.done():
                        fut.set_result((rep.ballot, rep.commit_index))
        elif self._read_waiters:
            waiters, self._read_waiters = self._read_waiters, []
            for fut, _ in waiters:
                if not fut.done():
                    fut.set_exception(NotLeader("this proxy lost the leadership"))

    # ------------------------------------------------------------------ applying
    def _queue_chosen(self, entries: Sequence[ChosenEntry]) -> None:
        """Queue chosen slots for the local node, at most ``apply_backlog`` of them; the
        rest are dropped and fetched again later (``_refill``), in order."""
        queue = self._to_apply
        if self._shed_from is None:
            room = self.settings.apply_backlog - len(queue)
            if len(entries) <= room:
                queue.extend(entries)
                self._apply_wakeup.set()
                return
            room = max(room, 0)
            queue.extend(entries[:room])
            entries = entries[room:]
            self._shed_from = entries[0].slot
            log.warning("%s: %d chosen slots wait for the local node; slots from %d on are "
                        "fetched from the acceptors once they are applied", self.name,
                        len(queue), self._shed_from)
        self._shed_upto = max(self._shed_upto, entries[-1].slot)
        self.shed_slots += len(entries)
        self._apply_wakeup.set()

    async def _refill(self) -> bool:
        """Fetch dropped slots from the acceptors into the (empty) apply queue. False if none
        could be fetched now."""
        first = self._shed_from
        assert first is not None
        last = min(self._shed_upto, first + min(self.settings.apply_backlog, 1000) - 1)
        got = await self._fetch_chosen(range(first, last + 1))
        n = 0
        while first + n <= last and first + n in got:
            n += 1
        if not n:
            return False
        self._to_apply.extend(ChosenEntry(s, got[s]) for s in range(first, first + n))
        self._shed_from = first + n if first + n <= self._shed_upto else None
        return True

    async def _apply_loop(self) -> None:
        delay = 0.05

        async def back_off(reason: str | None = None) -> None:
            """Stalled (``reason``, if not set already): wait longer each time until progress."""
            nonlocal delay
            if reason is not None:
                self.stalled = reason
            await asyncio.sleep(delay)
            delay = min(delay * 2, 2.0)

        while True:
            if self._node_served < self._node_asked:
                if not await self._recheck_node():
                    await back_off()
                    continue
                delay = 0.05
            if not self._to_apply and self._shed_from is not None:
                if await self._refill():
                    delay = 0.05
                else:
                    await back_off(f"chosen slots from {self._shed_from} on cannot be fetched "
                                   "from the acceptors now")
                continue
            if not self._to_apply:
                self._apply_wakeup.clear()
                try:  # idle: look at the node now and then, it may have restarted
                    await within(self._apply_wakeup.wait(), self.settings.node_probe_s)
                except TimeoutError:
                    self._ask_node()
                continue
            if self.settings.apply_linger_s > 0 and not self._apply_urgent():
                await self._linger(self.settings.apply_linger_s)
            batch = self._to_apply[:self.settings.apply_batch]
            try:
                outcomes = await self.applier.apply(batch)
            except ApplyGap as gap:
                if await self._close_gap(gap.node_applied, batch[0].slot):
                    continue
                await back_off(gap.message)
                continue
            except LocalApplyError as exc:
                log.warning("%s: stalled at slot %d: %s", self.name, batch[0].slot, exc.message)
                await back_off(exc.message)
                continue
            delay = 0.05
            self.stalled = None
            del self._to_apply[:len(batch)]
            for outcome in outcomes:
                fut = self._waiters.get(outcome.request_id) if outcome.request_id else None
                if fut is not None and not fut.done():
                    fut.set_result(outcome)
                if outcome.status is Status.CONTROL:
                    self.control_version += 1
                    self.control_slot = max(self.control_slot, outcome.slot)
            async with self._applied_changed:
                self.applied_upto = batch[-1].slot
                self._applied_changed.notify_all()

    async def _recheck_node(self) -> bool:
        """Read the node's applied slot and start time again (see ``check_node``); if it lost
        applied slots in a crash, queue them again. False if that cannot be done now."""
        asked = self._node_asked
        try:
            node_applied, started = await self.applier.node_position()
        except (psycopg.Error, OSError) as exc:
            self.stalled = f"local node unavailable: {exc}".strip()
            return False
        if node_applied < self.applied_upto \
                and not await self._close_gap(node_applied, self.applied_upto + 1):
            self.stalled = (f"the node lost slots {node_applied + 1}..{self.applied_upto} in a "
                            "crash and no acceptor has them now")
            return False
        self.stalled = None
        async with self._applied_changed:
            self.node_started = started
            self._node_served = asked
            self._applied_changed.notify_all()
        return True

    def _ask_node(self) -> int:
        """Ask the apply loop to read the node's position again; the ask's number."""
        self._node_asked += 1
        self._apply_wakeup.set()
        return self._node_asked

    async def recheck_node(self, timeout: float | None = None) -> None:
        """Wait until the apply loop has read the node's applied slot and start time again,
        in a read begun after this call, and queued what the node lost (applies commit
        asynchronously: a restarted node may lack its last applied slots). For a barrier,
        whose caller then reads the node on a connection of its own; ``check_node`` for a
        session."""
        ask = self._ask_node()

        async def wait() -> None:
            async with self._applied_changed:
                await self._applied_changed.wait_for(lambda: self._node_served >= ask)
        try:
            await within(wait(), timeout if timeout is not None
                         else self.settings.submit_timeout_s)
        except TimeoutError:
            raise NodeUnavailable("the local node's applied position cannot be read again "
                                  "yet", hint="retry shortly") from None

    async def check_node(self, started: int, timeout: float | None = None) -> None:
        """A session reached the node, started at ``started`` (``NODE_STARTED_SQL``). If that
        is not the start this proxy's applied slot was last read under, the node restarted:
        ``recheck_node`` before a read trusts that slot."""
        if started != self.node_started:
            await self.recheck_node(timeout)

    def _apply_urgent(self) -> bool:
        """Someone on this proxy waits for a slot in the apply queue (or for any slot)."""
        if self._apply_wanted or len(self._to_apply) >= self.settings.apply_batch:
            return True
        waiters = self._waiters
        return bool(waiters) and any(c.value.request_id in waiters for c in self._to_apply)

    async def _linger(self, seconds: float) -> None:
        """Up to ``seconds`` for more chosen slots, until one of them becomes urgent."""
        # The timer says when the time is up, not a comparison with loop.time(): uvloop runs a
        # timer up to a millisecond before loop.time() reaches its deadline (~1 in 4 on this
        # machine), and a loop that waited again would wait for the next chosen slot.
        expired = False

        def expire() -> None:
            nonlocal expired
            expired = True
            self._apply_wakeup.set()
        timer = asyncio.get_running_loop().call_later(seconds, expire)
        try:
            while not expired and not self._apply_urgent():
                self._apply_wakeup.clear()
                await self._apply_wakeup.wait()
        finally:
            timer.cancel()

    async def _close_gap(self, node_applied: int, first: int) -> bool:
        """Make the apply queue start right after the node's applied slot again.

        Slots the node already applied are dropped; slots it lost in a crash (asynchronous
        commit) are fetched again from the acceptors. False if they cannot be fetched now.
        """
        if node_applied >= first:
            del self._to_apply[:node_applied - first + 1]
            if self._shed_from is not None and node_applied >= self._shed_from:
                # the node is past slots this proxy dropped (another proxy applied them?)
                self._shed_from = node_applied + 1 if node_applied < self._shed_upto else None
            async with self._applied_changed:
                self.applied_upto = node_applied
            return True
        needed = range(node_applied + 1, first)
        missing = await self._fetch_chosen(needed)
        if any(slot not in missing for slot in needed):
            return False
        log.warning("%s: the node lost slots %d..%d in a crash; applying them again",
                    self.name, node_applied + 1, first - 1)
        self._to_apply[:0] = [ChosenEntry(slot, missing[slot]) for slot in needed]
        async with self._applied_changed:
            self.applied_upto = node_applied
        return True

    async def _fetch_chosen(self, needed: range) -> dict[int, Value]:
        """The chosen values of the slots in ``needed`` that the acceptors give back now."""
        found: dict[int, Value] = {}
        end = needed.stop
        for link in self.links:
            lacking = [slot for slot in needed if slot not in found]
            if not lacking:
                break
            try:
                reply = await within(link.call(Fetch(lacking[0], end - lacking[0])),
                                     self.settings.request_timeout_s)
            except Exception:  # noqa: BLE001 - an unreachable acceptor: ask the next one
                continue
            for entry in getattr(reply, "entries", ()):
                if entry.slot < end:
                    found.setdefault(entry.slot, entry.value)
        return found

    async def wait_applied(self, slot: int, timeout: float | None = None) -> None:
        """Wait until the local node has applied every slot up to ``slot``."""
        async def wait() -> None:
            async with self._applied_changed:
                await self._applied_changed.wait_for(lambda: self.applied_upto >= slot)
        if self.applied_upto >= slot:
            return
        self._apply_wanted += 1
        self._apply_wakeup.set()  # stop lingering
        seconds = timeout if timeout is not None else self.settings.submit_timeout_s
        try:
            await within(wait(), seconds)
        except TimeoutError:
            raise NotApplied(f"the local node has not applied slot {slot} within {seconds:g} s "
                             f"(it is at slot {self.applied_upto})",
                             hint="see `replicate status` for why; retry, or read from another "
                                  "proxy") from None
        finally:
            self._apply_wanted -= 1

    # ------------------------------------------------------------------ submitting
    def new_request_id(self) -> str:
        return f"{self.name}.{self.boot}.{next(self._seq)}"

    async def submit(self, entry: Entry, *, request_id: str | None = None,
                     timeout: float | None = None) -> Outcome:
        """Append ``entry`` to the log; return its outcome on the local node once applied."""
        payload = entry.encode()
        submitted = self.applier.submitted  # decoding the payload would give ``entry`` back
        submitted[payload] = entry
        try:
            return await self.submit_payload(payload, request_id=request_id, timeout=timeout)
        finally:
            if submitted.get(payload) is entry:
                del submitted[payload]

    async def submit_payload(self, payload: bytes, *, request_id: str | None = None,
                             timeout: float | None = None) -> Outcome:
        rid = request_id or self.new_request_id()
        value = Value(rid, payload)
        loop = asyncio.get_running_loop()
        waiter = self._waiters.get(rid)
        if waiter is None or waiter.done():
            waiter = self._waiters[rid] = loop.create_future()
        deadline = loop.time() + (timeout if timeout is not None else self.settings.submit_timeout_s)
        try:
            if request_id is not None:  # a client's retry: it may have been applied already
                earlier = await self._applied_outcome(rid)
                if earlier is not None:
                    return earlier
            while True:
                proposed = loop.create_future()
                self._events.put_nowait(("propose", (value, proposed)))
                await proposed
                remaining = deadline - loop.time()
                if remaining <= 0:
                    break
                try:
                    return await _result_within(
                        waiter, min(self.settings.retry_interval_s, remaining))
                except asyncio.TimeoutError:
                    if loop.time() >= deadline:
                        break
        finally:
            if self._waiters.get(rid) is waiter:
                del self._waiters[rid]
        raise OutcomeUnknown(
            f"request {rid} was not applied within its timeout; it may still be applied",
            hint="retry with the same request id to learn its outcome without applying it twice")

    async def _applied_outcome(self, rid: str) -> Outcome | None:
        """The recorded outcome of request ``rid`` on the local node, if it was applied."""
        conn = self._hard_conn
        if conn is None or conn.closed or conn.broken:
            return None
        try:
            row = await (await conn.execute(
                "SELECT o.slot, o.status, o.command_tag, o.rows_affected, o.sqlstate, o.message, "
                "o.detail, o.hint FROM replicate.requests r JOIN replicate.outcomes o "
                "USING (slot) WHERE r.request_id = %s", [rid])).fetchone()
        except psycopg.Error:
            return None
        if row is None:
            return None
        return Outcome(row[0], rid, Status.DUPLICATE, row[2], row[3], sqlstate=row[4],
                       message=row[5], detail=row[6], hint=row[7])

    # ------------------------------------------------------------------ reading
    async def read_index(self, timeout: float | None = None) -> int:
        """A commit index that covers every write acknowledged before this call."""
        timeout = timeout if timeout is not None else self.settings.submit_timeout_s
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            rep = self.replica
            if rep is not None and rep.role is Role.LEADER:
                try:
                    return await within(self.leader_read_index(),
                                        max(0.01, deadline - loop.time()))
                except (NotLeader, asyncio.TimeoutError):
                    pass
            elif rep is not None and rep.leader is not None and rep.leader != self.index:
                try:
                    return await within(self._ask_leader_read_index(rep.leader),
                                        min(2.0, max(0.01, deadline - loop.time())))
                except (NotLeader, OSError, asyncio.TimeoutError, ReplicateError):
                    pass
            if loop.time() >= deadline:
                raise NotLeader("no leader confirmed a read index in time",
                                hint="a majority of nodes may be unreachable")
            await asyncio.sleep(0.05)

    async def leader_read_index(self) -> int:
        """At the leader: a commit index covering every write acknowledged before this call.

        Reads share confirmation rounds (etcd raft's ReadIndex batching). One round at a time
        is in flight; a round covers exactly the reads that arrived before it began, and a read
        that arrives while a round is in flight waits for the next one. A round: wait until
        this leader's commit index reaches what it recovered in phase 1; take that commit
        index; send ``Commit(ballot, index)`` to every acceptor; answer its reads with the
        index once a majority replied ``Committed`` under this ballot.

        Why that is linearizable. Let a read arrive at time t. Its round began after t, so the
        index is at least the commit index at t, and the round's Commits were sent after t.
        A majority of acceptors answered them under this leader's ballot, so at those moments
        none of them had promised a higher ballot; any higher-ballot leader needs promises from
        a majority, which meets that one, so none completed phase 1 before t. Every write
        acknowledged before t was therefore chosen under this leader (at a slot it committed,
        so <= its commit index at t) or under an earlier one (so <= recovered_upto <= index).
        An index taken before t, or confirmed by a round sent before t, has no such argument:
        a newer leader could have acknowledged writes in between.
        """
        index = self.lease_read_index()
        if index is not None:
            return index
        fut = asyncio.get_running_loop().create_future()
        if self._leader_reads.arrive(fut):
            self._spawn_read_task(self._leader_rounds())
        return await fut

    def follower_read_index_now(self, follower: int) -> int | None:
        """At the leader: proxy ``follower``'s read index from the read lease, without a
        round; None when a round is needed (``follower_read_index``). Either way the follower
        gets the chosen values this leader holds for it at once (``lazy_chosen``): it waits
        until it applied up to the index."""
        self._release_chosen(follower)
        return self.lease_read_index()

    async def follower_read_index(self, follower: int) -> int:
        """At the leader: proxy ``follower``'s read index after a confirmation round
        (``leader_read_index``), and what was chosen during the round sent to it at once."""
        index = await self.leader_read_index()
        self._release_chosen(follower)
        return index

    def lease_read_index(self) -> int | None:
        """At a leader holding a read lease: a read index for a read arriving now, without a
        round (counted in ``lease_reads``). None when there is no valid lease or this leader
        has not yet committed what it recovered."""
        rep = self.replica
        if rep is None or rep.role is not Role.LEADER or not self.lease.valid(rep.ballot,
                                                                             _now_ms()):
            return None
        index, recovered = rep.commit_index, rep.recovered_upto
        if index is None or index < (recovered or 0):
            return None
        # The lease replaces the round: a majority keeps our promise until after now, so no
        # newer leader can have acknowledged anything (lease.py); the index is taken now,
        # after the read arrived.
        self.lease_reads += 1
        return index

    def _spawn_read_task(self, coro) -> None:
        task = asyncio.create_task(coro)
        self._read_tasks.add(task)
        task.add_done_callback(self._read_tasks.discard)

    async def _leader_rounds(self) -> None:
        """Run confirmation rounds until no read waits for one."""
        await self._serve_rounds(
            self._leader_reads,
            lambda: within(self._confirm_round(), 2 * self.settings.request_timeout_s),
            "no majority confirmed the leadership in time", (ReplicateError,),
            "a read confirmation round failed")

    async def _serve_rounds(self, rounds: SharedRounds, one_round, timeout_message: str,
                            expected: tuple[type, ...], failure: str) -> None:
        """Answer the reads of ``rounds`` with ``one_round()`` until no read waits for one: its
        index, NotLeader on a timeout, or its exception (logged unless ``expected``)."""
        while (reads := rounds.begin()) is not None:
            try:
                if any(not fut.done() for fut in reads):  # all callers may have given up
                    _answer(reads, await one_round())
            except asyncio.CancelledError:
                _answer(reads, NodeUnavailable("the proxy is shutting down"))
                raise
            except asyncio.TimeoutError:
                _answer(reads, NotLeader(timeout_message))
            except Exception as exc:  # noqa: BLE001 - NotLeader, unreachable, or a bug
                if not isinstance(exc, expected):
                    log.exception("%s: %s", self.name, failure)
                _answer(reads, exc)
            finally:
                rounds.end()

    async def _confirm_round(self) -> int:
        """One confirmation round (see ``leader_read_index``); the confirmed commit index."""
        rep = self.replica
        if rep is None:
            raise NotLeader("this proxy is starting")
        fut = asyncio.get_running_loop().create_future()
        self._read_waiters.append((fut, time.monotonic()))
        self._observe_leadership(rep)  # resolves at once if recovery is done
        ballot, index = await fut
        await self._majority_committed(
            ballot, [link.call(Commit(ballot, index)) for link in self.confirm_links])
        return index

    async def _majority_committed(self, ballot, replies: list[asyncio.Future]) -> None:
        """Return once a majority of ``replies`` is ``Committed`` under ``ballot``.

        Raises NotLeader on a refusal (a higher promise) or once no majority is possible. An
        unreachable acceptor is just not a vote; every reply is consumed, also late ones.
        """
        needed = self.n // 2 + 1
        done = asyncio.get_running_loop().create_future()
        counts = {"ok": 0, "failed": 0}

        def on_reply(reply_fut: asyncio.Future) -> None:
            if reply_fut.cancelled():
                reply, failed = None, True
            elif reply_fut.exception() is not None:
                reply, failed = None, True
            else:
                reply, failed = reply_fut.result(), False
            if done.done():
                return
            if not failed and not (isinstance(reply, Committed) and reply.ballot == ballot):
                done.set_exception(NotLeader("an acceptor promised a higher ballot"))
                return
            counts["failed" if failed else "ok"] += 1
            if counts["ok"] >= needed:
                done.set_result(None)
            elif len(replies) - counts["failed"] < needed:
                done.set_exception(NotLeader("no majority confirmed the leadership"))

        for reply_fut in replies:
            reply_fut.add_done_callback(on_reply)
        await done

    async def _ask_leader_read_index(self, leader: int) -> int:
        """At a follower: a read index from the leader, sent after this call.

        Concurrent follower reads share one request, like the leader's rounds: a request
        covers exactly the reads that arrived before it was sent, so the leader received it
        after each of them arrived, and its answer is a read index for all of them. Requests
        go over one persistent connection per leader (``_leader_channel``). ``leader`` is
        the leader the caller knows; the request goes to the leader known when it is sent.
        """
        fut = asyncio.get_running_loop().create_future()
        if self._follower_reads.arrive(fut):
            self._spawn_read_task(self._follower_rounds())
        return await fut

    async def _follower_rounds(self) -> None:
        """Send read-index requests to the leader until no read waits for one."""
        await self._serve_rounds(
            self._follower_reads, self._request_read_index,
            "the leader did not answer a read-index request in time", (ReplicateError, OSError),
            "a read-index request to the leader failed")

    async def _request_read_index(self) -> int:
        rep = self.replica
        leader = rep.leader if rep is not None else None
        if leader is None or leader == self.index:
            raise NotLeader("no leader known to ask for a read index")
        channel = await self._leader_channel(leader)
        try:
            return await channel.leader_read_index(self.settings.leader_read_timeout_s)
        except ReplicateError as exc:
            if exc.sqlstate == "57P03":  # the proxy answered: it is not (or no longer) leader
                raise NotLeader(exc.message) from None
            await self._drop_channel(leader, channel)
            raise
        except BaseException:  # a timeout, a closed connection: reconnect next time
            await self._drop_channel(leader, channel)
            raise

    async def _leader_channel(self, leader: int) -> ProxyClient:
        """The persistent connection to proxy ``leader`` for read-index requests.

        Connections to earlier leaders are closed when a new one is dialled.
        """
        channel = self._leader_channels.get(leader)
        if channel is not None and channel.connected:
            return channel
        for other, stale in list(self._leader_channels.items()):  # incl. a dead one to leader
            await self._drop_channel(other, stale)
        node = self.config.nodes[leader]
        channel = await ProxyClient(node.proxy_host, node.proxy_port, sender=self.index).connect(
            self.settings.leader_read_timeout_s)
        self._leader_channels[leader] = channel
        self.leader_connections += 1
        return channel

    async def _drop_channel(self, leader: int, channel: ProxyClient) -> None:
        if self._leader_channels.get(leader) is channel:
            del self._leader_channels[leader]
        await channel.close()

    # ------------------------------------------------------------------ status
    def status(self) -> dict[str, Any]:
        rep = self.replica
        return {
            "node": self.name,
            "index": self.index,
            "role": rep.role.value if rep else "starting",
            "leader": (self.config.nodes[rep.leader].name
                       if rep is not None and rep.leader is not None else None),
            "ballot": str(rep.ballot) if rep else None,
            "commit_upto": rep.commit_index if rep is not None else None,
            "delivered_upto": rep.delivered_upto if rep else None,
            "applied_upto": self.applied_upto,
            "pending_apply": len(self._to_apply),
            "shed_slots": self.shed_slots,
            "shed_pending": (0 if self._shed_from is None
                             else self._shed_upto - self._shed_from + 1),
            "stalled": self.stalled,
            "acceptors": [{"node": self.config.nodes[l.index].name, "connected": l.connected,
                           "last_error": l.last_error, "dropped": l.dropped}
                          for l in self.links],
            "peers": [{"node": self.config.nodes[i].name, "connected": p.connected,
                       "chosen_sent": self._chosen_sent[i]}
                      for i, p in self.peers.items()],
            "read_index": {"leader_rounds": self._leader_reads.rounds,
                           "lease_reads": self.lease_reads,
                           "lease_remaining_ms": (self.lease.remaining(rep.ballot, _now_ms())
                                                  if rep is not None and rep.role is Role.LEADER
                                                  else 0),
                           "leader_requests": self._follower_reads.rounds,
                           "leader_connections": self.leader_connections},
            "uptime_s": round(time.monotonic() - self.started_at, 1),
        }

    def status_json(self) -> bytes:
        return json.dumps(self.status()).encode()


def _now_ms() -> int:
    """The clock of read-lease stamps: monotonic (never stepped), in milliseconds."""
    return int(time.monotonic() * 1000)


def _answer(reads: list[asyncio.Future], result: int | BaseException) -> None:
    """Resolve every read still waiting with ``result`` (an index or an exception)."""
    for fut in reads:
        if fut.done():
            continue
        if isinstance(result, BaseException):
            fut.set_exception(result)
        else:
            fut.set_result(result)


async def _close(conn: psycopg.AsyncConnection) -> None:
    try:
        await within(conn.close(), 5)
    except BaseException:  # noqa: BLE001
        pass
