"""Connections from one proxy to the acceptors (PostgreSQL nodes) and to the other proxies.

``AcceptorLink``: one worker task per acceptor, one connection (libpq driven
directly: ``pqconn``), requests in FIFO order, each reply handed to a callback.
A request that does not answer within ``request_timeout`` abandons the
connection (a fresh one is made; closing the old one ends its server process
once that notices) and the request is dropped: the Paxos core retransmits what
matters. The queue is bounded so a stalled node cannot eat
memory; heartbeat commits are coalesced. Nothing here ever blocks the driver.

``PeerLink``: an outgoing TCP connection to another proxy, carrying
``Heartbeat``/``Forward`` frames; unreachable peers drop messages (the core
retries on its own schedule) and are redialled with back-off.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import time
from typing import Callable

import psycopg

from replicate.paxos.messages import AcceptorReply, AcceptorRequest, Commit, Heartbeat
from replicate.runtime import peerwire
from replicate.runtime.deadline import within
from replicate.runtime.pqconn import PqConnection
from replicate.runtime.sql_acceptor import acall

log = logging.getLogger("replicate.links")

MAX_QUEUE = 256


class AcceptorLink:
    """Sends acceptor requests to one PostgreSQL node over one connection."""

    def __init__(self, index: int, dsn: str, on_reply: Callable[[int, AcceptorReply], None], *,
                 connect_timeout: float = 2.0, request_timeout: float = 2.0,
                 application_name: str = "replicate acceptor") -> None:
        self.index = index
        self.application_name = application_name
        self.dsn = dsn
        self.on_reply = on_reply
        self.connect_timeout = connect_timeout
        self.request_timeout = request_timeout
        self._queue: collections.deque[tuple[AcceptorRequest, asyncio.Future | None]] = \
            collections.deque()
        self._wakeup = asyncio.Event()
        self._conn: PqConnection | None = None
        self._task: asyncio.Task | None = None
        self.connected = False
        self.last_error: str | None = None
        self.last_ok: float | None = None
        self.dropped = 0

    def start(self) -> None:
        self._task = asyncio.create_task(
            self._run(), name=f"{self.application_name.replace(' ', '-')}-{self.index}")

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        await self._abandon()

    def send(self, request: AcceptorRequest) -> None:
        """Queue a request whose reply goes to ``on_reply`` (fire and forget)."""
        if isinstance(request, Commit) and self._queue and isinstance(self._queue[-1][0], Commit) \
                and self._queue[-1][1] is None and self._queue[-1][0].ballot == request.ballot:
            self._queue[-1] = (request, None)  # a newer commit index supersedes the queued one
        else:
            self._push((request, None))

    def call(self, request: AcceptorRequest) -> asyncio.Future:
        """Queue a request and return a future of its reply (or exception)."""
        future = asyncio.get_running_loop().create_future()
        self._push((request, future))
        return future

    def _push(self, item: tuple[AcceptorRequest, asyncio.Future | None]) -> None:
        if len(self._queue) >= MAX_QUEUE:
            _, fut = self._queue.popleft()
            self.dropped += 1
            if fut is not None and not fut.done():
                fut.set_exception(ConnectionError("acceptor queue overflow"))
        self._queue.append(item)
        self._wakeup.set()

    def _fail_queue(self, why: str) -> None:
        while self._queue:
            _, fut = self._queue.popleft()
            self.dropped += 1
            if fut is not None and not fut.done():
                fut.set_exception(ConnectionError(why))

    async def _abandon(self) -> None:
        conn, self._conn = self._conn, None
        self.connected = False
        if conn is not None:
            asyncio.create_task(_close_quietly(conn))

    async def _connect(self) -> None:
        self._conn = await within(
            PqConnection.connect(self.dsn, connect_timeout=self.connect_timeout,
                                 application_name=self.application_name),
            self.connect_timeout + 1)
        self.connected = True
        self.last_error = None

    async def _run(self) -> None:
        backoff = 0.05
        while True:
            if not self._queue:
                self._wakeup.clear()
                await self._wakeup.wait()
            if self._conn is None:
                try:
                    await self._connect()
                    backoff = 0.05
                except (OSError, psycopg.Error, asyncio.TimeoutError) as exc:
                    self.last_error = f"connect: {exc}".strip()
                    self._fail_queue("acceptor unreachable")
                    await asyncio.sleep(backoff)
                    backoff = min(backoff * 2, 1.0)
                    continue
            request, future = self._queue.popleft()
            conn = self._conn
            # Awaited in this task under a deadline: a task per call and asyncio.wait cost
            # ~15-20 us per call, several calls per write (docs/decisions.md, perf-hot).
            try:
                async with asyncio.timeout(self.request_timeout):
                    reply = await acall(conn, request)
            except TimeoutError:
                self.last_error = f"no reply within {self.request_timeout:.1f} s"
                await self._abandon()
                if future is not None and not future.done():
                    future.set_exception(TimeoutError(self.last_error))
                continue
            except Exception as exc:  # noqa: BLE001 - handed to the caller
                self.last_error = str(exc).strip() or type(exc).__name__
                if future is not None and not future.done():
                    future.set_exception(exc)
                if isinstance(exc, psycopg.OperationalError) or conn.broken or conn.closed:
                    await self._abandon()
                else:
                    log.warning("acceptor %d refused %r: %s", self.index, request, exc)
                continue
            self.last_ok = time.monotonic()
            if future is not None:
                if not future.done():
                    future.set_result(reply)
            else:
                self.on_reply(self.index, reply)


async def _close_quietly(conn: PqConnection) -> None:
    try:
        await within(conn.close(), 10)
    except BaseException:  # noqa: BLE001 - a dead connection may fail to close in any way
        pass


class PeerLink:
    """An outgoing connection to another proxy for Heartbeat and Forward frames."""

    def __init__(self, me: int, index: int, host: str, port: int) -> None:
        self.me = me
        self.index = index
        self.host = host
        self.port = port
        self._queue: collections.deque[bytes] = collections.deque(maxlen=MAX_QUEUE)
        self._last_heartbeat: Heartbeat | None = None  # the frame at the queue's tail, if one
        self._wakeup = asyncio.Event()
        self._task: asyncio.Task | None = None
        self.connected = False

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name=f"peer-link-{self.index}")

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    def send(self, frame: peerwire.Frame) -> None:
        # A newer heartbeat of the same leader supersedes a queued one (it only carries the
        # commit index); under load this turns a push per chosen batch into one per wake-up.
        if isinstance(frame, Heartbeat) and self._queue and self._last_heartbeat is not None \
                and self._last_heartbeat.ballot == frame.ballot:
            self._queue[-1] = peerwire.encode(frame)
        else:
            self._queue.append(peerwire.encode(frame))
        self._last_heartbeat = frame if isinstance(frame, Heartbeat) else None
        self._wakeup.set()

    async def _run(self) -> None:
        backoff = 0.05
        while True:
            try:
                reader, writer = await within(
                    asyncio.open_connection(self.host, self.port), 2)
            except (OSError, asyncio.TimeoutError):
                self._queue.clear()
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 1.0)
                continue
            backoff = 0.05
            self.connected = True
            drain = asyncio.create_task(_discard(reader))
            drain.add_done_callback(lambda _: self._wakeup.set())  # the peer closed
            try:
                writer.write(peerwire.STARTUP + peerwire.encode(peerwire.Hello(self.me)))
                while not drain.done():
                    if not self._queue:
                        self._wakeup.clear()
                        await self._wakeup.wait()
                        continue
                    frames = list(self._queue)
                    self._queue.clear()
                    self._last_heartbeat = None
                    writer.write(b"".join(frames))  # one send for everything queued
                    await within(writer.drain(), 2)
            except (OSError, asyncio.TimeoutError):
                pass
            except Exception:  # noqa: BLE001 - the link must outlive any one connection
                log.exception("peer link to proxy %d: connection failed; reconnecting",
                              self.index)
                await asyncio.sleep(backoff)
            finally:
                self.connected = False
                drain.cancel()
                writer.close()


async def _discard(reader: asyncio.StreamReader) -> None:
    """Read until the peer closes (we only send on this connection)."""
    while await reader.read(65536):
        pass
