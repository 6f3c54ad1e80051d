"""How the engine's tasks wait, without PostgreSQL: the driver's mailbox gives events out in
the order they went in and ``get`` waits for one; a submitter waits for its outcome for a
while without ever cancelling the outcome's future, which retries of the same request share."""

from __future__ import annotations

import asyncio

import pytest

from replicate.runtime.engine import _Mailbox, _result_within


def test_events_come_out_in_order_and_get_waits_for_the_next() -> None:
    async def run() -> None:
        box = _Mailbox()
        box.put_nowait(("tick", None))
        box.put_nowait(("step", 1))
        assert len(box) == 2
        assert await box.get() == ("tick", None)
        assert box.get_nowait() == ("step", 1)
        assert not box
        with pytest.raises(asyncio.QueueEmpty):
            box.get_nowait()
        getter = asyncio.ensure_future(box.get())
        await asyncio.sleep(0)
        assert not getter.done()
        box.put_nowait(("propose", 2))
        box.put_nowait(("step", 3))
        assert await getter == ("propose", 2)
        assert box.get_nowait() == ("step", 3)

    asyncio.run(run())


def test_a_cancelled_get_leaves_the_next_event_for_the_next_get() -> None:
    async def run() -> None:
        box = _Mailbox()
        getter = asyncio.ensure_future(box.get())
        await asyncio.sleep(0)
        getter.cancel()
        await asyncio.gather(getter, return_exceptions=True)
        box.put_nowait(("tick", None))
        assert await asyncio.wait_for(box.get(), 5) == ("tick", None)

    asyncio.run(run())


def test_a_submitter_gets_the_outcome_or_a_timeout_and_the_shared_future_stays() -> None:
    async def run() -> None:
        loop = asyncio.get_running_loop()
        waiter = loop.create_future()
        with pytest.raises(asyncio.TimeoutError):
            await _result_within(waiter, 0.01)
        assert not waiter.done()
        first = asyncio.ensure_future(_result_within(waiter, 60))
        second = asyncio.ensure_future(_result_within(waiter, 60))
        await asyncio.sleep(0)
        first.cancel()  # a client gave up: the other retry of its request id still waits
        await asyncio.gather(first, return_exceptions=True)
        assert not waiter.done()
        waiter.set_result("outcome")
        assert await second == "outcome"
        assert await _result_within(waiter, 60) == "outcome"
        failed = loop.create_future()
        loop.call_soon(failed.set_exception, RuntimeError("the proxy is shutting down"))
        with pytest.raises(RuntimeError, match="shutting down"):
            await _result_within(failed, 60)

    asyncio.run(run())
