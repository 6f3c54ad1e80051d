"""PeerLink: frames to another proxy, queued heartbeats coalesced, everything queued in one
write, and a link that outlives a write to a closed transport. ProxyClient: such a write is
"the proxy is unavailable". AcceptorLink: a call without a reply in time fails, and the link
recovers."""

from __future__ import annotations

import asyncio

import psycopg
import pytest
import uvloop

from replicate.errors import NodeUnavailable
from replicate.paxos.ballot import Ballot
from replicate.paxos.messages import Commit, Committed, Forward, Heartbeat, Prepare, Promise, Value
from replicate.runtime import peerwire, schema
from replicate.runtime.client import ProxyClient
from replicate.runtime.links import AcceptorLink, PeerLink


def test_peer_link_coalesces_heartbeats_and_keeps_order() -> None:
    b1, b2 = Ballot(1, 0), Ballot(2, 0)

    async def scenario() -> tuple[list, int]:
        got: list = []
        reads = 0
        done = asyncio.Event()

        async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            nonlocal reads
            assert await reader.readexactly(8) == peerwire.STARTUP
            decoder = peerwire.FrameDecoder()
            while len(got) < 6:
                data = await reader.read(65536)
                if not data:
                    break
                reads += 1
                decoder.feed(data)
                while (frame := decoder.next_frame()) is not None:
                    got.append(frame)
            done.set()
            writer.close()

        server = await asyncio.start_server(serve, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        link = PeerLink(0, 1, "127.0.0.1", port)
        # queued before the link connected: one write when it does
        link.send(Forward(Value("a", b"1")))
        for commit in (1, 2, 3):
            link.send(Heartbeat(b1, commit))     # only the last one goes out
        link.send(Heartbeat(b2, 3))              # another ballot is not merged
        link.send(Forward(Value("b", b"2")))
        link.send(Heartbeat(b2, 4))
        link.start()
        await asyncio.wait_for(done.wait(), 10)
        await link.stop()
        server.close()
        return got, reads

    got, _ = asyncio.run(scenario())
    assert got == [peerwire.Hello(0), Forward(Value("a", b"1")), Heartbeat(b1, 3),
                   Heartbeat(b2, 3), Forward(Value("b", b"2")), Heartbeat(b2, 4)]


def test_peer_link_reconnects_after_a_write_to_a_closed_transport(monkeypatch) -> None:
    """uvloop raises RuntimeError, not an OSError, for a write to a transport the peer has
    closed (a proxy killed between the link's wake-up and its write). The link used to end
    there for good, and the follower behind it never heard from the leader again (found by
    tests/e2e/test_chaos.py: a proxy stuck as a candidate for minutes)."""
    real_open = asyncio.open_connection

    class ClosedWriter:
        def write(self, data: bytes) -> None:
            raise RuntimeError("unable to perform operation on <TCPTransport closed=True>; "
                               "the handler is closed")

        def close(self) -> None:
            pass

    async def scenario() -> list:
        got: list = []
        done = asyncio.Event()
        attempts = 0

        async def open_connection(host: str, port: int):
            nonlocal attempts
            attempts += 1
            if attempts == 1:
                return asyncio.StreamReader(), ClosedWriter()
            return await real_open(host, port)

        async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            assert await reader.readexactly(8) == peerwire.STARTUP
            decoder = peerwire.FrameDecoder()
            while len(got) < 2 and (data := await reader.read(65536)):
                decoder.feed(data)
                while (frame := decoder.next_frame()) is not None:
                    got.append(frame)
            done.set()
            writer.close()

        monkeypatch.setattr(asyncio, "open_connection", open_connection)
        server = await asyncio.start_server(serve, "127.0.0.1", 0)
        link = PeerLink(0, 1, "127.0.0.1", server.sockets[0].getsockname()[1])
        link.send(Heartbeat(Ballot(3, 0), 7))
        link.start()
        await asyncio.wait_for(done.wait(), 10)
        assert link._task is not None and not link._task.done()
        await link.stop()
        server.close()
        return got

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        got = runner.run(scenario())
    assert got == [peerwire.Hello(0), Heartbeat(Ballot(3, 0), 7)]


def test_a_proxy_client_on_a_closed_transport_says_the_proxy_is_unavailable() -> None:
    class ClosedWriter:
        def write(self, data: bytes) -> None:
            raise RuntimeError("unable to perform operation on <TCPTransport closed=True>; "
                               "the handler is closed")

    async def scenario() -> None:
        client = ProxyClient("127.0.0.1", 9)
        # connected, and the proxy has closed: the reader task has not seen the EOF yet
        client._writer = ClosedWriter()  # type: ignore[assignment]
        client._reader_task = asyncio.ensure_future(asyncio.sleep(10))
        with pytest.raises(NodeUnavailable, match="closed the connection"):
            await client.status(timeout=1)
        assert client._pending == {}
        client._reader_task.cancel()
    asyncio.run(scenario())


def test_acceptor_link_times_out_a_blocked_call_and_recovers(fresh_db: list[str]) -> None:
    """A call that gets no reply within request_timeout fails with TimeoutError, the link
    drops that connection, and the next call goes through on a fresh one."""
    b = Ballot(1, 0)
    with psycopg.connect(fresh_db[0], autocommit=True) as conn:
        schema.install(conn)

    async def scenario() -> tuple:
        link = AcceptorLink(0, fresh_db[0], lambda i, r: None, request_timeout=0.5)
        link.start()
        try:
            first = await link.call(Prepare(b, 1))
            holder = await psycopg.AsyncConnection.connect(fresh_db[0])
            await holder.execute("SELECT * FROM replicate.acceptor FOR UPDATE")  # blocks calls
            try:
                await link.call(Commit(b, 0))
                blocked = None
            except TimeoutError as exc:
                blocked = exc
            error = link.last_error
            await holder.rollback()
            await holder.close()
            after = await link.call(Commit(b, 0))
            return first, blocked, error, after, link.connected
        finally:
            await link.stop()

    first, blocked, error, after, connected = asyncio.run(scenario())
    assert isinstance(first, Promise)
    assert isinstance(blocked, TimeoutError) and "no reply within 0.5 s" in error
    assert after == Committed(b, 0) and connected
