"""A client of a replicate proxy's peer port: submit entries, read status (tools and tests).

One connection multiplexes concurrent requests, matched to replies by token. A
follower proxy uses one as its persistent connection to the leader for read-index
requests (``sender`` = its replica id, ``leader_read_index``).
"""

from __future__ import annotations

import asyncio
import itertools
import json
from typing import Any

from replicate.command import Entry, Outcome
from replicate.errors import NodeUnavailable, ReplicateError
from replicate.runtime import peerwire
from replicate.runtime.deadline import within


class ProxyClient:
    """One connection to a proxy's peer port; ``sender`` is what it says in its Hello."""

    def __init__(self, host: str, port: int, *, sender: int = peerwire.CLIENT) -> None:
        self.host = host
        self.port = port
        self.sender = sender
        self._writer: asyncio.StreamWriter | None = None
        self._reader_task: asyncio.Task | None = None
        self._pending: dict[int, asyncio.Future] = {}
        self._tokens = itertools.count(1)

    async def connect(self, timeout: float = 5.0) -> "ProxyClient":
        try:
            reader, writer = await within(
                asyncio.open_connection(self.host, self.port), timeout)
        except (OSError, asyncio.TimeoutError) as exc:
            raise NodeUnavailable(f"cannot reach the proxy at {self.host}:{self.port}: {exc}") from None
        writer.write(peerwire.STARTUP + peerwire.encode(peerwire.Hello(self.sender)))
        self._writer = writer
        self._reader_task = asyncio.create_task(self._read(reader))
        return self

    @property
    def connected(self) -> bool:
        """Whether the connection is up (the proxy has not closed it)."""
        return self._reader_task is not None and not self._reader_task.done()

    async def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
        if self._reader_task is not None:
            self._reader_task.cancel()
            await asyncio.gather(self._reader_task, return_exceptions=True)

    async def __aenter__(self) -> "ProxyClient":
        return await self.connect()

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def _read(self, reader: asyncio.StreamReader) -> None:
        decoder = peerwire.FrameDecoder()
        try:
            while data := await reader.read(65536):
                decoder.feed(data)
                while (frame := decoder.next_frame()) is not None:
                    fut = self._pending.pop(getattr(frame, "token", -1), None)
                    if fut is not None and not fut.done():
                        fut.set_result(frame)
        finally:
            for fut in self._pending.values():
                if not fut.done():
                    fut.set_exception(NodeUnavailable("the proxy closed the connection"))
            self._pending.clear()

    async def _request(self, make: Any, timeout: float) -> Any:
        if self._writer is None or self._reader_task is None or self._reader_task.done():
            raise NodeUnavailable("not connected to the proxy")
        token = next(self._tokens)
        fut = asyncio.get_running_loop().create_future()
        self._pending[token] = fut
        try:
            # uvloop raises RuntimeError, not an OSError, on a transport the proxy has closed
            self._writer.write(peerwire.encode(make(token)))
        except RuntimeError:
            self._pending.pop(token, None)
            raise NodeUnavailable("the proxy closed the connection") from None
        try:
            return await within(fut, timeout)
        finally:
            self._pending.pop(token, None)

    async def submit(self, entry: Entry, *, request_id: str = "", timeout: float = 30.0) -> Outcome:
        reply = await self._request(
            lambda t: peerwire.Submit(t, request_id, entry.encode()), timeout)
        doc = json.loads(reply.body)
        if "error" in doc:
            err = doc["error"]
            raise ReplicateError(err["message"], hint=err.get("hint"), sqlstate=err["sqlstate"])
        return Outcome.from_json(doc)

    async def barrier(self, timeout: float = 30.0) -> int:
        """Linearizable barrier: returns once the proxy's node applied a confirmed read index."""
        reply = await self._request(lambda t: peerwire.ReadIndexRequest(t), timeout)
        if not reply.ok:
            raise ReplicateError("the proxy could not confirm a read index", sqlstate="57P03")
        return reply.index

    async def leader_read_index(self, timeout: float = 2.0) -> int:
        """From a proxy (``sender`` >= 0): the leader's confirmed commit index, no local wait."""
        if self.sender == peerwire.CLIENT:
            raise ValueError("leader_read_index is for proxies; clients use barrier()")
        reply = await self._request(lambda t: peerwire.ReadIndexRequest(t), timeout)
        if not reply.ok:
            raise ReplicateError("the proxy asked is not the leader or lost the leadership",
                                 sqlstate="57P03")
        return reply.index

    async def status(self, timeout: float = 5.0) -> dict[str, Any]:
        reply = await self._request(lambda t: peerwire.StatusRequest(t), timeout)
        return json.loads(reply.body)
