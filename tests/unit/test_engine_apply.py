"""The engine's apply loop without PostgreSQL: when chosen slots are applied, and in how many
transactions. A replica may hold slots nobody on its proxy waits for (``apply_linger_s``) so
that they go to the node together; a write taken on this proxy, or a read waiting for a slot,
ends the wait at once. The lingers here are long (minutes) so that nothing depends on timing:
whatever is applied was applied because it was urgent."""

from __future__ import annotations

import asyncio

import pytest

from replicate.command import Entry, Outcome, Param, Status
from replicate.config import ClusterConfig, NodeConfig
from replicate.paxos.messages import ChosenEntry, Fetch, Fetched, Value
from replicate.runtime.applier import Applier, LocalApplyError
from replicate.runtime.engine import Engine, EngineSettings, NotApplied


class FakeApplier:
    """Records the batches it is given; every entry succeeds."""

    def __init__(self) -> None:
        self.batches: list[list[int]] = []

    async def apply(self, entries):
        self.batches.append([e.slot for e in entries])
        return [Outcome(e.slot, e.value.request_id, Status.OK, "INSERT 0 1", 1)
                for e in entries]


def engine(linger: float, **settings) -> tuple[Engine, FakeApplier]:
    config = ClusterConfig(nodes=tuple(
        NodeConfig(f"n{i}", f"host=127.0.0.1 port=9 dbname=x{i}", f"127.0.0.1:{i}")
        for i in (1, 2, 3)))
    eng = Engine(config, "n2", EngineSettings(apply_linger_s=linger, **settings))
    eng.applier = FakeApplier()
    return eng, eng.applier


def chosen(eng: Engine, *slots: int) -> None:
    """What the engine does when the core hands it chosen slots."""
    eng._to_apply.extend(ChosenEntry(s, Value(f"other.{s}", b"x")) for s in slots)
    eng._apply_wakeup.set()


async def settle() -> None:
    for _ in range(20):
        await asyncio.sleep(0)


def test_slots_nobody_waits_for_are_held_and_applied_together() -> None:
    async def run() -> None:
        eng, applier = engine(linger=600)
        task = asyncio.ensure_future(eng._apply_loop())
        chosen(eng, 1)
        await settle()
        chosen(eng, 2, 3)
        await settle()
        assert applier.batches == []          # held: nobody here waits for them
        reader = asyncio.ensure_future(eng.wait_applied(2))
        await settle()
        assert applier.batches == [[1, 2, 3]]  # a read waits: everything held goes at once
        assert reader.done() and eng.applied_upto == 3
        task.cancel()
    asyncio.run(run())


def test_a_write_taken_here_is_applied_at_once() -> None:
    async def run() -> None:
        eng, applier = engine(linger=600)
        task = asyncio.ensure_future(eng._apply_loop())
        chosen(eng, 1)
        await settle()
        waiter = eng._waiters["n2.local.7"] = asyncio.get_running_loop().create_future()
        eng._to_apply.append(ChosenEntry(2, Value("n2.local.7", b"x")))
        eng._apply_wakeup.set()
        await settle()
        assert applier.batches == [[1, 2]]
        assert waiter.done() and waiter.result().slot == 2
        task.cancel()
    asyncio.run(run())


def test_without_linger_every_wakeup_applies() -> None:
    async def run() -> None:
        eng, applier = engine(linger=0)
        task = asyncio.ensure_future(eng._apply_loop())
        chosen(eng, 1)
        await settle()
        chosen(eng, 2)
        await settle()
        assert applier.batches == [[1], [2]]
        task.cancel()
    asyncio.run(run())


def test_an_entry_is_known_to_the_applier_while_it_is_submitted() -> None:
    # so that this proxy's applier takes the entry instead of decoding its payload again
    async def run() -> None:
        eng, _ = engine(linger=600)
        eng.applier = Applier("host=127.0.0.1 port=9 dbname=x2")
        entry = Entry("INSERT INTO t VALUES ($1)", (Param(b"1"),))
        submit = asyncio.ensure_future(eng.submit(entry))
        await settle()
        assert eng.applier.submitted == {entry.encode(): entry}
        submit.cancel()
        await asyncio.gather(submit, return_exceptions=True)
        assert eng.applier.submitted == {}
    asyncio.run(run())


def test_a_linger_ends_when_its_timer_runs_also_on_uvloop() -> None:
    """uvloop runs a timer up to a millisecond before ``loop.time()`` reaches its deadline
    (about one timer in four): a linger that compared the clock waited on for a slot that
    never came, and the node lagged until the next write (seen in CI)."""
    uvloop = pytest.importorskip("uvloop")

    async def run() -> None:
        eng, applier = engine(linger=0.002)
        task = asyncio.ensure_future(eng._apply_loop())
        for slot in range(1, 61):
            chosen(eng, slot)
            async with eng._applied_changed:
                await asyncio.wait_for(
                    eng._applied_changed.wait_for(lambda: eng.applied_upto >= slot), 10)
        assert [b for batch in applier.batches for b in batch] == list(range(1, 61))
        task.cancel()
    uvloop.run(run())


def test_a_read_that_waits_past_its_timeout_fails_with_a_sqlstate() -> None:
    async def run() -> None:
        eng, _ = engine(linger=600)
        eng.applied_upto = 3
        await eng.wait_applied(3, timeout=0.01)  # applied already: no wait
        with pytest.raises(NotApplied) as caught:
            await eng.wait_applied(4, timeout=0.01)
        assert caught.value.sqlstate == "57P03"
        assert "slot 4" in caught.value.message and "at slot 3" in caught.value.message
        assert eng._apply_wanted == 0
    asyncio.run(run())


class DownApplier(FakeApplier):
    """A node that is down until ``up`` is set."""

    def __init__(self) -> None:
        super().__init__()
        self.up = False

    async def apply(self, entries):
        if not self.up:
            raise LocalApplyError("local node unavailable")
        return await super().apply(entries)


class FetchLink:
    """An acceptor that answers ``Fetch`` with the chosen values it holds."""

    index, connected, last_error, dropped = 0, True, None, 0   # what status() shows

    def __init__(self, values: dict[int, Value]) -> None:
        self.values = values
        self.fetches: list[tuple[int, int]] = []

    async def call(self, msg):
        assert isinstance(msg, Fetch)
        self.fetches.append((msg.from_slot, msg.limit))
        slots = sorted(s for s in self.values if s >= msg.from_slot)[:msg.limit]
        return Fetched(msg.from_slot, tuple(ChosenEntry(s, self.values[s]) for s in slots))


def backlog_engine(backlog: int, **settings) -> tuple[Engine, DownApplier, dict[int, Value]]:
    eng, _ = engine(0, apply_backlog=backlog, node_probe_s=600, **settings)
    eng.applier = DownApplier()
    acceptor: dict[int, Value] = {}
    eng.links = [FetchLink(acceptor)]
    return eng, eng.applier, acceptor


def deliver(eng: Engine, acceptor: dict[int, Value], *slots: int) -> None:
    """Slots chosen (the acceptor holds them) and delivered by the core."""
    entries = [ChosenEntry(s, Value(f"other.{s}", b"x")) for s in slots]
    for e in entries:
        acceptor[e.slot] = e.value
    eng._queue_chosen(entries)


def test_a_proxy_whose_node_is_down_holds_at_most_its_backlog() -> None:
    async def run() -> None:
        eng, applier, acceptor = backlog_engine(backlog=3)
        task = asyncio.ensure_future(eng._apply_loop())
        deliver(eng, acceptor, *range(1, 11))
        await settle()
        deliver(eng, acceptor, 11, 12)
        await settle()
        assert [c.slot for c in eng._to_apply] == [1, 2, 3]   # the rest was dropped
        assert eng.status()["shed_slots"] == 9 and eng.status()["shed_pending"] == 9
        applier.up = True
        eng._apply_wakeup.set()
        async with eng._applied_changed:
            await asyncio.wait_for(eng._applied_changed.wait_for(
                lambda: eng.applied_upto >= 12), 10)
        # every slot applied once, in order, the dropped ones fetched again
        assert [s for b in applier.batches for s in b] == list(range(1, 13))
        assert max(len(b) for b in applier.batches) <= 3
        assert eng.links[0].fetches and eng.status()["shed_pending"] == 0
        deliver(eng, acceptor, 13)                 # caught up: queued again at once
        assert [c.slot for c in eng._to_apply] == [13]
        task.cancel()
    asyncio.run(run())


def test_dropped_slots_the_acceptors_do_not_have_yet_are_fetched_later() -> None:
    async def run() -> None:
        eng, applier, acceptor = backlog_engine(backlog=2, request_timeout_s=1)
        applier.up = True
        eng._queue_chosen([ChosenEntry(s, Value(f"other.{s}", b"x")) for s in (1, 2, 3, 4)])
        acceptor[1] = acceptor[2] = Value("x", b"x")  # 3 and 4 are not marked anywhere yet
        task = asyncio.ensure_future(eng._apply_loop())
        for _ in range(20):
            await asyncio.sleep(0.01)
        assert eng.applied_upto == 2 and eng.stalled and "from 3" in eng.stalled
        acceptor[3] = Value("other.3", b"x")
        acceptor[4] = Value("other.4", b"x")
        async with eng._applied_changed:
            await asyncio.wait_for(eng._applied_changed.wait_for(
                lambda: eng.applied_upto >= 4), 10)
        assert [s for b in applier.batches for s in b] == [1, 2, 3, 4]
        assert eng.stalled is None
        task.cancel()
    asyncio.run(run())
