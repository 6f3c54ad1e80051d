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
from replicate.paxos.messages import ChosenEntry, Value
from replicate.runtime.applier import Applier
from replicate.runtime.engine import Engine, EngineSettings, NotApplied


class FakeApplier:
    """Records the batches it is given; every entry succeeds."""

    def __init__(self) -> None:
        self.batches: list[list[int]] = []

    async def apply(self, entries):
        self.batches.append([e.slot for e in entries])
        return [Outcome(e.slot, e.value.request_id, Status.OK, "INSERT 0 1", 1)
                for e in entries]


def engine(linger: float) -> tuple[Engine, FakeApplier]:
    config = ClusterConfig(nodes=tuple(
        NodeConfig(f"n{i}", f"host=127.0.0.1 port=9 dbname=x{i}", f"127.0.0.1:{i}")
        for i in (1, 2, 3)))
    eng = Engine(config, "n2", EngineSettings(apply_linger_s=linger))
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
