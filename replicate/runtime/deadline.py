"""Timeouts that never lose a cancellation.

Python 3.11's ``asyncio.wait_for`` answers with the awaited thing's result (or its exception)
when the caller is cancelled in the same loop pass in which that result arrives: the
cancellation is lost. A loop that retries on that exception then never ends; a proxy whose peer
link was reconnecting to a proxy stopping at the same moment ignored its SIGTERM, and `replicate
down` killed it ten seconds later. ``asyncio.timeout`` (3.11) keeps the cancellation, and runs a
coroutine in the caller's task rather than in a task of its own.
"""
from __future__ import annotations

import asyncio
from typing import Awaitable, TypeVar

T = TypeVar("T")


async def within(awaitable: Awaitable[T], seconds: float | None) -> T:
    """``await awaitable``, or ``TimeoutError`` after ``seconds`` (None: no limit).

    A future still pending at the deadline is cancelled, as ``asyncio.wait_for`` does."""
    async with asyncio.timeout(seconds):
        return await awaitable
