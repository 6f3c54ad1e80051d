"""The engine's read index without PostgreSQL: fake acceptor links and a fake leader proxy.

Leader: concurrent reads share one confirmation round; a read that arrives while a round is in
flight is answered only by a later round, whose index is taken after it arrived. Follower: one
persistent connection to the leader carries every read-index request (tokens), concurrent reads
share one request, and a closed connection is redialled. Nothing here looks at a clock: the
fakes hold every reply until the test releases it.
"""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

import pytest

from replicate.config import ClusterConfig, NodeConfig
from replicate.paxos import Role
from replicate.paxos.ballot import Ballot
from replicate.paxos.messages import Commit, Committed, Nack
from replicate.runtime import peerwire
from replicate.runtime.engine import Engine, NotLeader

BALLOT = Ballot(3, 1)


class FakeLink:
    """Stands in for an AcceptorLink: records every call, the test answers it."""

    def __init__(self, index: int) -> None:
        self.index = index
        self.calls: list[tuple[Commit, asyncio.Future]] = []
        self.connected, self.last_error, self.dropped = True, None, 0

    def call(self, request: Commit) -> asyncio.Future:
        fut = asyncio.get_running_loop().create_future()
        self.calls.append((request, fut))
        return fut

    async def stop(self) -> None:
        pass

    def reply(self, round_no: int, reply: object) -> None:
        fut = self.calls[round_no][1]
        if isinstance(reply, BaseException):
            fut.set_exception(reply)
        else:
            fut.set_result(reply)


def config(ports: tuple[int, int, int] = (1, 2, 3)) -> ClusterConfig:
    return ClusterConfig(nodes=tuple(
        NodeConfig(f"n{i + 1}", f"host=127.0.0.1 port=9 dbname=x{i}", f"127.0.0.1:{port}")
        for i, port in enumerate(ports)))


def leader_engine(commit_index: int = 5, recovered_upto: int = 0) -> tuple[Engine, list[FakeLink]]:
    engine = Engine(config(), "n2")
    links = [FakeLink(i) for i in range(3)]
    engine.links = engine.confirm_links = links
    engine.replica = SimpleNamespace(role=Role.LEADER, ballot=BALLOT, leader=1,
                                     commit_index=commit_index, recovered_upto=recovered_upto,
                                     delivered_upto=0)
    return engine, links


async def settle() -> None:
    """Let every ready task run until nothing changes (no clock involved)."""
    for _ in range(20):
        await asyncio.sleep(0)


def test_concurrent_leader_reads_share_one_round() -> None:
    async def run() -> None:
        engine, links = leader_engine(commit_index=5)
        reads = [asyncio.create_task(engine.leader_read_index()) for _ in range(20)]
        await settle()
        assert [len(link.calls) for link in links] == [1, 1, 1]
        assert links[0].calls[0][0] == Commit(BALLOT, 5)
        links[0].reply(0, Committed(BALLOT, 5))
        links[2].reply(0, Committed(BALLOT, 5))
        assert await asyncio.gather(*reads) == [5] * 20
        assert [len(link.calls) for link in links] == [1, 1, 1]
        assert engine.status()["read_index"]["leader_rounds"] == 1
        links[1].reply(0, Committed(BALLOT, 5))  # a late reply is consumed quietly
        await engine.stop()

    asyncio.run(run())


def test_read_arriving_during_a_round_waits_for_the_next_one() -> None:
    async def run() -> None:
        engine, links = leader_engine(commit_index=5)
        first = asyncio.create_task(engine.leader_read_index())
        await settle()
        assert [len(link.calls) for link in links] == [1, 1, 1]  # round 1 is in flight
        engine.replica.commit_index = 7                         # a write committed meanwhile
        second = asyncio.create_task(engine.leader_read_index())
        await settle()
        assert [len(link.calls) for link in links] == [1, 1, 1]  # no round while one is out
        for link in links:
            link.reply(0, Committed(BALLOT, 5))
        assert await first == 5
        await settle()
        assert not second.done()                                 # round 1 does not answer it
        assert [call[0] for call in (link.calls[1] for link in links)] == [Commit(BALLOT, 7)] * 3
        links[0].reply(1, Committed(BALLOT, 7))
        await settle()
        assert not second.done()                                 # one vote is not a majority
        links[1].reply(1, Committed(BALLOT, 7))
        assert await second == 7
        await engine.stop()

    asyncio.run(run())


def test_a_refusal_fails_the_round_and_an_unreachable_minority_does_not() -> None:
    async def run() -> None:
        engine, links = leader_engine(commit_index=4)
        read = asyncio.create_task(engine.leader_read_index())
        await settle()
        links[0].reply(0, ConnectionError("acceptor unreachable"))
        links[1].reply(0, Committed(BALLOT, 4))
        links[2].reply(0, Committed(BALLOT, 4))
        assert await read == 4

        read = asyncio.create_task(engine.leader_read_index())
        await settle()
        links[0].reply(1, Committed(BALLOT, 4))
        links[1].reply(1, Nack(BALLOT, Ballot(4, 0)))
        with pytest.raises(NotLeader):
            await read

        read = asyncio.create_task(engine.leader_read_index())
        await settle()
        links[0].reply(2, TimeoutError("no reply"))
        links[1].reply(2, ConnectionError("acceptor unreachable"))
        with pytest.raises(NotLeader):
            await read
        links[2].reply(2, Committed(BALLOT, 4))
        await engine.stop()

    asyncio.run(run())


def test_no_confirmation_before_the_recovered_slots_are_committed() -> None:
    async def run() -> None:
        engine, links = leader_engine(commit_index=3, recovered_upto=6)
        read = asyncio.create_task(engine.leader_read_index())
        await settle()
        assert [len(link.calls) for link in links] == [0, 0, 0]
        engine.replica.commit_index = 6
        engine._observe_leadership(engine.replica)  # what the driver does after each step
        await settle()
        assert links[0].calls[0][0] == Commit(BALLOT, 6)
        for link in links:
            link.reply(0, Committed(BALLOT, 6))
        assert await read == 6
        await engine.stop()

    asyncio.run(run())


def test_lost_leadership_fails_waiting_reads() -> None:
    async def run() -> None:
        engine, links = leader_engine(commit_index=3, recovered_upto=6)
        read = asyncio.create_task(engine.leader_read_index())
        await settle()
        engine.replica.role = Role.FOLLOWER
        engine._observe_leadership(engine.replica)
        with pytest.raises(NotLeader):
            await read
        await engine.stop()

    asyncio.run(run())


class FakeLeader:
    """A leader proxy's peer port: counts connections and requests; replies when told to."""

    def __init__(self) -> None:
        self.connections = 0
        self.senders: list[int] = []
        self.requests: list[int] = []
        self.received = asyncio.Event()
        self.auto_reply: int | None = None   # answer at once with this index
        self.writers: list[asyncio.StreamWriter] = []
        self.server: asyncio.Server | None = None

    async def start(self) -> int:
        self.server = await asyncio.start_server(self._session, "127.0.0.1", 0)
        return self.server.sockets[0].getsockname()[1]

    async def _session(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self.writers.append(writer)
        assert peerwire.is_peer_startup(await reader.readexactly(8))
        decoder = peerwire.FrameDecoder()
        while data := await reader.read(65536):
            decoder.feed(data)
            while (frame := decoder.next_frame()) is not None:
                if isinstance(frame, peerwire.Hello):
                    self.senders.append(frame.sender)
                elif isinstance(frame, peerwire.ReadIndexRequest):
                    self.requests.append(frame.token)
                    self.received.set()
                    if self.auto_reply is not None:
                        writer.write(peerwire.encode(
                            peerwire.ReadIndexReply(frame.token, True, self.auto_reply)))
        writer.close()

    def reply(self, token: int, index: int) -> None:
        self.writers[-1].write(peerwire.encode(peerwire.ReadIndexReply(token, True, index)))

    def drop_connections(self) -> None:
        for writer in self.writers:
            writer.close()

    async def stop(self) -> None:
        self.drop_connections()
        if self.server is not None:
            self.server.close()


async def follower_engine(leader: FakeLeader) -> Engine:
    port = await leader.start()
    engine = Engine(config((port, 2, 3)), "n3")
    engine.replica = SimpleNamespace(role=Role.FOLLOWER, ballot=Ballot(0, 2), leader=0,
                                     commit_index=None, recovered_upto=None, delivered_upto=0)
    return engine


def test_follower_reads_use_one_connection_and_share_requests() -> None:
    async def run() -> None:
        leader = FakeLeader()
        leader.auto_reply = 11
        engine = await follower_engine(leader)
        assert await asyncio.gather(*(engine.read_index() for _ in range(30))) == [11] * 30
        assert leader.connections == 1
        assert leader.senders == [2]               # it says Hello as proxy n3, not as a client
        assert len(leader.requests) == 1           # 30 concurrent reads, one request
        for _ in range(5):
            assert await engine.read_index() == 11
        assert leader.connections == 1             # the connection is kept
        assert len(leader.requests) == 6
        assert len(set(leader.requests)) == 6      # a fresh token per request
        assert engine.status()["read_index"]["leader_connections"] == 1
        await engine.stop()
        await leader.stop()

    asyncio.run(run())


def test_follower_redials_after_the_connection_drops() -> None:
    async def run() -> None:
        leader = FakeLeader()
        leader.auto_reply = 4
        engine = await follower_engine(leader)
        assert await engine.read_index() == 4
        leader.drop_connections()
        await settle()
        assert await engine.read_index() == 4     # read_index retries on a fresh connection
        assert leader.connections == 2
        await engine.stop()
        await leader.stop()

    asyncio.run(run())


def test_follower_read_arriving_during_a_request_waits_for_the_next_one() -> None:
    async def run() -> None:
        leader = FakeLeader()
        engine = await follower_engine(leader)
        first = asyncio.create_task(engine.read_index())
        await leader.received.wait()
        leader.received.clear()
        second = asyncio.create_task(engine.read_index())
        await settle()
        assert len(leader.requests) == 1            # no second request while one is out
        leader.reply(leader.requests[0], 8)
        assert await first == 8
        await leader.received.wait()                # the second read needs its own request
        assert not second.done()
        assert len(leader.requests) == 2
        leader.reply(leader.requests[1], 9)
        assert await second == 9
        assert leader.connections == 1
        await engine.stop()
        await leader.stop()

    asyncio.run(run())


def test_follower_moves_its_connection_to_a_new_leader() -> None:
    async def run() -> None:
        old, new = FakeLeader(), FakeLeader()
        old.auto_reply, new.auto_reply = 3, 5
        old_port, new_port = await old.start(), await new.start()
        engine = Engine(config((old_port, new_port, 3)), "n3")
        engine.replica = SimpleNamespace(role=Role.FOLLOWER, ballot=Ballot(0, 2), leader=0,
                                         commit_index=None, recovered_upto=None,
                                         delivered_upto=0)
        assert await engine.read_index() == 3
        engine.replica.leader = 1                  # an election elsewhere
        assert await engine.read_index() == 5
        assert (old.connections, new.connections) == (1, 1)
        assert list(engine._leader_channels) == [1]  # the old leader's connection is closed
        await engine.stop()
        await old.stop()
        await new.stop()

    asyncio.run(run())
