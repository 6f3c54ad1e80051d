"""Timeouts that keep a cancellation (replicate/runtime/deadline.py).

The race these tests build: the awaited thing finishes, and the waiting task is cancelled in
the same loop pass, before it runs again. Python 3.11's ``asyncio.wait_for`` then hands the
task the result instead of the CancelledError; a proxy's peer link reconnecting to a stopped
proxy caught that "connection refused", slept and retried for ever, and the proxy ignored its
SIGTERM (found restarting a loaded cluster: one proxy in ten stayed up).
"""

from __future__ import annotations

import asyncio
import sys

import pytest
import uvloop

from replicate.runtime.deadline import within
from replicate.runtime.links import PeerLink

LOOPS = {"asyncio": asyncio.new_event_loop, "uvloop": uvloop.new_event_loop}


def _run(loop_name: str, coro) -> None:
    with asyncio.Runner(loop_factory=LOOPS[loop_name]) as runner:
        runner.run(coro)


async def _cancel_as_it_ends(wait, outcome: str) -> asyncio.Task:
    """A task waiting through ``wait`` for a future that ends (``outcome``) in the same pass
    in which the task is cancelled."""
    fut = asyncio.get_running_loop().create_future()

    async def waiter() -> str:
        try:
            await wait(fut, 5)
        except OSError:
            return "caught the failure"
        return "got the result"
    task = asyncio.ensure_future(waiter())
    await asyncio.sleep(0)  # the task now waits
    if outcome == "result":
        fut.set_result(1)
    else:
        fut.set_exception(ConnectionRefusedError("refused"))
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    return task


@pytest.mark.parametrize("loop_name", sorted(LOOPS))
@pytest.mark.parametrize("outcome", ["result", "failure"])
def test_a_cancel_that_meets_the_end_of_the_wait_is_kept(loop_name: str, outcome: str) -> None:
    async def run() -> None:
        task = await _cancel_as_it_ends(within, outcome)
        assert task.cancelled()
    _run(loop_name, run())


@pytest.mark.skipif(sys.version_info >= (3, 12), reason="3.12 rewrote wait_for on timeouts")
@pytest.mark.parametrize("outcome", ["result", "failure"])
def test_the_race_is_real_python_3_11_wait_for_loses_that_cancel(outcome: str) -> None:
    async def run() -> None:
        task = await _cancel_as_it_ends(asyncio.wait_for, outcome)
        assert not task.cancelled()
        assert task.result() == ("got the result" if outcome == "result"
                                 else "caught the failure")
    _run("asyncio", run())


@pytest.mark.parametrize("loop_name", sorted(LOOPS))
def test_a_wait_past_its_deadline_raises_and_cancels_what_it_awaited(loop_name: str) -> None:
    async def run() -> None:
        fut = asyncio.get_running_loop().create_future()
        with pytest.raises(TimeoutError):
            await within(fut, 0.01)
        assert fut.cancelled()
        assert await within(asyncio.sleep(0, "done"), None) == "done"
    _run(loop_name, run())


@pytest.mark.parametrize("loop_name", sorted(LOOPS))
def test_a_peer_link_stops_when_its_stop_meets_a_refused_connection(
        loop_name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    async def run() -> None:
        attempts: list[asyncio.Future] = []

        def open_connection(host: str, port: int) -> asyncio.Future:
            attempts.append(asyncio.get_running_loop().create_future())
            return attempts[-1]
        # The connection attempt is a future this test ends, so that the refusal and the stop
        # land in the same loop pass, as they did when every proxy of a cluster stopped at once.
        monkeypatch.setattr(asyncio, "open_connection", open_connection)
        link = PeerLink(0, 1, "127.0.0.1", 9)
        link.start()
        while not attempts:
            await asyncio.sleep(0)
        attempts[0].set_exception(ConnectionRefusedError("refused"))
        await within(link.stop(), 3)  # before the fix: the link slept and retried for ever
        assert link._task is not None and link._task.cancelled()
        assert len(attempts) == 1
    _run(loop_name, run())


def test_no_module_of_replicate_calls_asyncio_wait_for() -> None:
    import ast
    from pathlib import Path

    import replicate
    calls = []
    for path in Path(replicate.__file__).parent.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) \
                    and node.func.attr == "wait_for" and isinstance(node.func.value, ast.Name) \
                    and node.func.value.id == "asyncio":
                calls.append(f"{path.name}:{node.lineno}")
    assert calls == [], "use replicate.runtime.deadline.within (it keeps cancellations)"
