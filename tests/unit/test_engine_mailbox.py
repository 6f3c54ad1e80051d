"""The driver's mailbox: events come out in the order they went in; ``get`` waits for one."""

from __future__ import annotations

import asyncio

import pytest

from replicate.runtime.engine import _Mailbox


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
