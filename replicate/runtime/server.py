"""The proxy's listener: one port for peers (other proxies, tools) and PostgreSQL clients.

The first 8 bytes of a connection tell them apart (see ``peerwire``). Peer
connections carry frames to the engine: Heartbeat, Chosen and Forward into the Paxos
driver; Submit, ReadIndexRequest and StatusRequest are answered on the same
connection, concurrently (replies tagged by token): at once when nothing needs waiting for
(a status; a proxy's read-index request that the leader's read lease covers), else in a
task per request.
ReadIndexRequest means two things: from a proxy, "you are the leader: give me
a confirmed commit index" (a follower keeps one connection open for these and
shares each request among its concurrent reads; here they join the leader's
shared confirmation rounds); from a client (Hello -1), "linearizable barrier":
the proxy gets a read index and waits until its own node applied it.
Every other connection is a PostgreSQL client, relayed to the local node
(``replicate.runtime.relay``).
A malformed frame closes that connection only.
"""

from __future__ import annotations

import asyncio
import json
import logging
import struct

from replicate.errors import ClusterError, ProtocolError, ReplicateError
from replicate.paxos.messages import Chosen, Forward, Heartbeat
from replicate.runtime import peerwire
from replicate.runtime.deadline import within
from replicate.runtime.engine import Engine
from replicate.runtime.relay import backend_addresses, relay_client

log = logging.getLogger("replicate.server")


def pg_fatal(sqlstate: str, message: str) -> bytes:
    """A PostgreSQL ErrorResponse with severity FATAL."""
    fields = b"".join(code + text.encode() + b"\0" for code, text in
                      ((b"S", "FATAL"), (b"V", "FATAL"), (b"C", sqlstate), (b"M", message)))
    body = fields + b"\0"
    return b"E" + struct.pack("!i", len(body) + 4) + body


def error_json(exc: BaseException) -> bytes:
    if isinstance(exc, ReplicateError):
        doc = {"sqlstate": exc.sqlstate, "message": exc.message, "hint": exc.hint}
    else:
        doc = {"sqlstate": "XX000", "message": f"{type(exc).__name__}: {exc}"}
    return json.dumps({"error": doc}).encode()


class ProxyServer:
    def __init__(self, engine: Engine, host: str, port: int) -> None:
        self.engine = engine
        self.host = host
        self.port = port
        self._server: asyncio.Server | None = None
        self._sessions: set[asyncio.Task] = set()
        self.hooks = None  # interception of PostgreSQL clients' messages (see relay.py)

    async def start(self) -> None:
        try:
            self._server = await asyncio.start_server(self._accept, self.host, self.port,
                                                      reuse_address=True)
        except OSError as exc:
            raise ClusterError(f"the proxy cannot listen on {self.host}:{self.port}: "
                               f"{exc.strerror or exc}",
                               hint="another process (another proxy?) has this port; stop it "
                                    "or change the node's proxy address") from None

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
        for task in list(self._sessions):
            task.cancel()
        await asyncio.gather(*self._sessions, return_exceptions=True)

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._sessions.add(task)
        try:
            first = await within(reader.readexactly(8), 30)
            if peerwire.is_peer_startup(first):
                await self._peer_session(reader, writer)
            else:
                engine = self.engine
                await relay_client(first, reader, writer, hooks=self.hooks,
                                   backend=backend_addresses(engine.config.nodes[engine.index].dsn))
        except (asyncio.IncompleteReadError, asyncio.TimeoutError, ConnectionError):
            pass
        except asyncio.CancelledError:  # the proxy is stopping: close quietly
            pass
        except ProtocolError as exc:
            log.warning("closing a peer connection: %s", exc)
        finally:
            self._sessions.discard(task)
            writer.close()

    async def _peer_session(self, reader: asyncio.StreamReader,
                            writer: asyncio.StreamWriter) -> None:
        decoder = peerwire.FrameDecoder()
        sender: int | None = None
        pending: set[asyncio.Task] = set()
        try:
            while True:
                data = await reader.read(65536)
                if not data:
                    return
                decoder.feed(data)
                while (frame := decoder.next_frame()) is not None:
                    if sender is None:
                        if not isinstance(frame, peerwire.Hello):
                            raise ProtocolError("a peer must say Hello first")
                        sender = frame.sender
                    elif isinstance(frame, (Heartbeat, Chosen, Forward)):
                        self.engine.deliver_peer_frame(sender, frame)
                    elif isinstance(frame, (peerwire.Submit, peerwire.ReadIndexRequest,
                                            peerwire.StatusRequest)):
                        reply = self._answer_now(frame, sender)
                        if reply is not None:
                            self._reply(writer, reply)
                            continue
                        task = asyncio.create_task(self._answer(frame, sender, writer))
                        pending.add(task)
                        task.add_done_callback(pending.discard)
                    else:
                        raise ProtocolError(f"unexpected peer frame {type(frame).__name__}")
        finally:
            for task in pending:
                task.cancel()

    def _answer_now(self, frame: peerwire.Frame, sender: int) -> peerwire.Frame | None:
        """The reply to ``frame`` if it needs no waiting, else None (``_answer`` in a task):
        a status, or a follower's read index that our read lease covers (the answer
        ``leader_read_index`` would give after its round)."""
        if isinstance(frame, peerwire.StatusRequest):
            return peerwire.StatusReply(frame.token, self.engine.status_json())
        if isinstance(frame, peerwire.ReadIndexRequest) and sender != peerwire.CLIENT:
            index = self.engine.follower_read_index_now(sender)
            if index is not None:
                return peerwire.ReadIndexReply(frame.token, True, index)
        return None

    async def _answer(self, frame: peerwire.Frame, sender: int,
                      writer: asyncio.StreamWriter) -> None:
        engine = self.engine
        reply: peerwire.Frame
        if isinstance(frame, peerwire.Submit):
            try:
                outcome = await engine.submit_payload(frame.payload,
                                                      request_id=frame.request_id or None)
                body = json.dumps(outcome.to_json()).encode()
            except Exception as exc:  # noqa: BLE001 - every failure becomes an error reply
                body = error_json(exc)
            reply = peerwire.SubmitReply(frame.token, body)
        elif isinstance(frame, peerwire.ReadIndexRequest) and sender != peerwire.CLIENT:
            try:  # a follower proxy asks us, the leader, for a confirmed commit index
                index = await within(engine.follower_read_index(sender), 5)
                reply = peerwire.ReadIndexReply(frame.token, True, index)
            except Exception:  # noqa: BLE001 - not the leader, or lost it
                reply = peerwire.ReadIndexReply(frame.token, False, 0)
        else:
            assert isinstance(frame, peerwire.ReadIndexRequest)
            try:  # a client wants a linearizable barrier: read index, applied locally
                index = await engine.read_index()
                await engine.recheck_node()  # the node may have restarted and lost applies
                await engine.wait_applied(index)
                reply = peerwire.ReadIndexReply(frame.token, True, index)
            except Exception:  # noqa: BLE001 - no leader or local node too far behind
                reply = peerwire.ReadIndexReply(frame.token, False, 0)
        if self._reply(writer, reply):
            try:
                await writer.drain()
            except (ConnectionError, RuntimeError):  # RuntimeError: uvloop, a closed transport
                pass

    @staticmethod
    def _reply(writer: asyncio.StreamWriter, reply: peerwire.Frame) -> bool:
        """Write ``reply``; False if the connection is gone."""
        try:
            writer.write(peerwire.encode(reply))
            return True
        except (ConnectionError, RuntimeError):  # RuntimeError: uvloop, a closed transport
            return False
