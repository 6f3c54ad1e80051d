"""PeerLink: frames to another proxy, queued heartbeats coalesced, everything queued in one write."""

from __future__ import annotations

import asyncio

from replicate.paxos.ballot import Ballot
from replicate.paxos.messages import Forward, Heartbeat, Value
from replicate.runtime import peerwire
from replicate.runtime.links import PeerLink


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
