"""PqConnection on a real node: a connection the server dropped must not take another one's
place in the event loop.

libpq closes its socket when it reads the end of the stream. A PqConnection that watched that
descriptor number, and removed the watch again when it was closed later, removed the watch of
whichever connection had been given the number in between: that connection then waited for its
results forever (seen as an applier hung after its node was SIGKILLed and restarted)."""

from __future__ import annotations

import asyncio

import psycopg
import pytest

from replicate.runtime.pqconn import PqConnection, Query

pytestmark = pytest.mark.e2e


def test_closing_a_dropped_connection_leaves_the_others_watched(fresh_db: list[str]) -> None:
    dsn = fresh_db[0]

    async def run() -> None:
        dropped = await PqConnection.connect(dsn)
        (pid,) = await dropped.run([Query("SELECT pg_backend_pid()")])
        with psycopg.connect(dsn, autocommit=True) as admin:
            admin.execute("SELECT pg_terminate_backend(%s)", [int(pid.get_value(0, 0))])
        for _ in range(200):  # the end of the stream reaches the connection's reader
            if dropped.broken:
                break
            await asyncio.sleep(0.01)
        assert dropped.broken
        others = [await PqConnection.connect(dsn) for _ in range(3)]  # one may get its number
        await dropped.close()
        for conn in others:
            (one,) = await asyncio.wait_for(conn.run([Query("SELECT 1")]), 10)
            assert one.get_value(0, 0) == b"1"
            await conn.close()

    asyncio.run(run())


def test_a_wait_whose_watch_was_lost_still_ends(fresh_db: list[str]) -> None:
    # Whatever drops the socket from the event loop's interest list, a waiting run reads
    # and watches the socket again after POKE_S seconds instead of waiting forever.
    async def run() -> None:
        conn = await PqConnection.connect(fresh_db[0])
        task = asyncio.ensure_future(conn.run([Query("SELECT pg_sleep(0.2)"),
                                               Query("SELECT 7")]))
        await asyncio.sleep(0.05)
        asyncio.get_running_loop().remove_reader(conn._fd)  # the watch is lost
        _, seven = await asyncio.wait_for(task, 10)
        assert seven.get_value(0, 0) == b"7"
        assert (await conn.run([Query("SELECT 8")]))[0].get_value(0, 0) == b"8"
        await conn.close()

    asyncio.run(run())
