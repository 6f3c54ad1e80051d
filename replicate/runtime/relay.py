"""The transparent relay: one PostgreSQL client <-> the proxy's local PostgreSQL node.

``relay_client(first8, reader, writer, backend=...)`` serves one client
connection (the listener already read its first 8 bytes to tell peers from
clients). It opens its own connection to the local node and relays bytes both
ways, so every client works unchanged: authentication (trust, md5,
SCRAM-SHA-256) is the node's, BackendKeyData is the node's (a CancelRequest
sent to the proxy is forwarded to the node on a new connection and matches),
and simple/extended queries, pipelining, COPY, notices and LISTEN/NOTIFY pass
through as they came.

Startup phase: SSLRequest and GSSENCRequest are answered ``N`` (TLS
termination is not built yet: clients with ``sslmode=prefer`` go on in clear
text, ``sslmode=require`` is refused by the client). A client that breaks the
protocol gets a FATAL ErrorResponse 08P01 and only its connection closes. If
the node cannot be reached or goes away, the client gets FATAL 08006 (the
node's own FATAL, e.g. 57P01 at shutdown, is relayed as it is).

The seam for interception
-------------------------
``hooks`` is an object with::

    async def on_frontend(self, session: Session, message) -> Action

It is called, in order and one at a time, for every frontend message whose
type is in ``HOOKED`` (Query, Parse, Bind, Describe, Execute, Sync, Close,
Flush), decoded by ``replicate.pgwire``. Returning ``Action.FORWARD`` relays
the message's original bytes to the node; ``Action.HANDLED`` means the hook
dealt with it (it wrote its own reply with ``session.write_client`` and/or
sent something else with ``session.write_backend``); the relay then drops
it. The next client message is not read until the hook returns, so a hook
may await (the engine, the node) without reordering the stream. Messages
before a hooked one are written to the node before the hook is called.
``Hooks`` is the base class (forward everything); ``hooks=None`` is the same
without decoding anything, the fastest path.

``Session`` exposes:

- ``startup`` (the StartupMessage parameters), ``user``, ``database``,
  ``application_name``;
- ``parameters``: the ParameterStatus values the node reported (TimeZone,
  DateStyle, IntervalStyle, standard_conforming_strings, client_encoding,
  server_version, ...), kept current;
- ``transaction_status``: ``I``/``T``/``E`` from the last ReadyForQuery;
- ``backend_pid``, ``backend_secret`` (BackendKeyData), ``encoding`` (the
  Python codec of client_encoding);
- ``pending``: requests forwarded (Query, Sync, FunctionCall) whose
  ReadyForQuery has not come back; ``await wait_idle()`` until it is 0, so that
  an interceptor's own reply is not written before replies still in flight;
- ``write_client(data)`` / ``write_backend(data)`` (bytes or a message) and
  ``await drain()``;
- ``await exchange(data) -> list[BackendMessage]``: wait until idle, send
  ``data`` (ending with a Query or a Sync) to the node on the session's own
  connection, and collect the node's replies up to and including
  ReadyForQuery instead of relaying them (for queries an interceptor runs in
  the client's session: its search_path, its transaction).

Extended-protocol replies only come at Sync or Flush: a hook that answers an
Execute inside a pipeline must mind what the node still owes the client
before that point. Cost: with ``hooks=None`` the frontend side only reads
message lengths; the backend side reads one length per message and parses
only ReadyForQuery, ParameterStatus, BackendKeyData and ErrorResponse.
"""

from __future__ import annotations

import asyncio
import enum
import functools
import logging
from typing import Any, Protocol

from psycopg.conninfo import conninfo_to_dict

from replicate.errors import ProtocolError
from replicate.pgwire import codec
from replicate.pgwire import messages as m

log = logging.getLogger("replicate.relay")

STARTUP_TIMEOUT_S = 60.0
CHUNK = 256 * 1024

HOOKED = (m.Query, m.Parse, m.Bind, m.Describe, m.Execute, m.Sync, m.Close, m.Flush)
_HOOKED_TYPES = frozenset(b"QPBDESCH")
_SYNC_POINTS = frozenset(b"QSF")      # frontend messages answered by a ReadyForQuery
_TRACKED = b"ZSKE"                    # backend messages the relay itself reads


class Action(enum.Enum):
    FORWARD = "forward"
    HANDLED = "handled"


class HooksProtocol(Protocol):
    async def on_frontend(self, session: "Session", message: Any) -> Action: ...


class Hooks:
    """Forward everything (subclass and override ``on_frontend``)."""

    async def on_frontend(self, session: "Session", message: Any) -> Action:
        return Action.FORWARD


@functools.lru_cache(maxsize=16)
def backend_address(dsn: str) -> tuple[str, int]:
    """(host, port) of a libpq DSN; a host starting with '/' is a Unix socket directory."""
    params = conninfo_to_dict(dsn)
    host = (params.get("hostaddr") or params.get("host") or "127.0.0.1").split(",")[0]
    port = int(str(params.get("port") or 5432).split(",")[0])
    return host, port


async def open_backend(host: str, port: int, timeout: float = 10.0):
    if host.startswith("/"):
        return await asyncio.wait_for(
            asyncio.open_unix_connection(f"{host}/.s.PGSQL.{port}", limit=CHUNK), timeout)
    return await asyncio.wait_for(asyncio.open_connection(host, port, limit=CHUNK), timeout)


class Session:
    """One client session as an interceptor sees it (see the module docstring)."""

    def __init__(self, startup: m.StartupMessage, client: asyncio.StreamWriter,
                 backend: asyncio.StreamWriter) -> None:
        self.startup: dict[str, str] = dict(startup.params)
        self.parameters: dict[str, str] = {}
        self.transaction_status = "I"
        self.backend_pid: int | None = None
        self.backend_secret: bytes | None = None
        self.encoding = "utf-8"
        self.pending = 0
        self.backend_fatal = False
        self._client = client
        self._backend = backend
        self._idle = asyncio.Event()
        self._idle.set()
        self._capture: tuple[asyncio.Future, list] | None = None
        self._decoder: codec.FrontendDecoder | None = None
        self._scanner: codec.FrameScanner | None = None

    @property
    def user(self) -> str:
        return self.startup.get("user", "")

    @property
    def database(self) -> str:
        return self.startup.get("database") or self.user

    @property
    def application_name(self) -> str:
        return self.parameters.get("application_name", self.startup.get("application_name", ""))

    # -- writing ------------------------------------------------------------

    def write_client(self, data: bytes | Any) -> None:
        self._client.write(data if isinstance(data, (bytes, bytearray)) else
                           codec.encode(data, self.encoding))

    def write_backend(self, data: bytes | Any) -> None:
        self._backend.write(data if isinstance(data, (bytes, bytearray)) else
                            codec.encode(data, self.encoding))

    async def drain(self) -> None:
        await self._client.drain()
        await self._backend.drain()

    # -- waiting on the node --------------------------------------------------

    async def wait_idle(self) -> None:
        """Until every forwarded request got its ReadyForQuery (and the stream is between messages)."""
        while True:
            await self._idle.wait()
            if self._scanner is None or self._scanner.at_boundary:
                return
            self._idle.clear()  # a message is cut: the next chunk completes it and sets idle

    async def exchange(self, data: bytes | Any) -> list[Any]:
        """Send ``data`` to the node and return its replies up to ReadyForQuery, not relayed."""
        await self.wait_idle()
        fut = asyncio.get_running_loop().create_future()
        self._capture = (fut, [])
        self._mark_sent(1)
        self.write_backend(data)
        await self._backend.drain()
        return await fut

    def _mark_sent(self, n: int) -> None:
        self.pending += n
        self._idle.clear()

    def _track(self, msg: Any) -> None:
        t = type(msg)
        if t is m.ReadyForQuery:
            self.transaction_status = msg.status
            if self.pending > 0:
                self.pending -= 1
            if self.pending == 0:
                self._idle.set()
        elif t is m.ParameterStatus:
            self.parameters[msg.name] = msg.value
            if msg.name == "client_encoding":
                self.encoding = codec.python_encoding(msg.value)
                if self._decoder is not None:
                    self._decoder.encoding = self.encoding
                if self._scanner is not None:
                    self._scanner.encoding = self.encoding
        elif t is m.BackendKeyData:
            self.backend_pid, self.backend_secret = msg.pid, msg.secret
        elif t is m.ErrorResponse:
            if msg.fields.get("S") in ("FATAL", "PANIC") or msg.fields.get("V") in ("FATAL", "PANIC"):
                self.backend_fatal = True


# --------------------------------------------------------------------------- the relay

async def relay_client(first8: bytes, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                       *, backend: tuple[str, int], hooks: HooksProtocol | None = None) -> None:
    """Serve one PostgreSQL client connection until either side closes."""
    decoder = codec.FrontendDecoder()
    decoder.feed(first8)
    try:
        startup = await asyncio.wait_for(_startup_phase(decoder, reader, writer, backend),
                                         STARTUP_TIMEOUT_S)
    except ProtocolError as exc:
        await _fatal(writer, "08P01", exc.message)
        return
    except (asyncio.TimeoutError, asyncio.IncompleteReadError, ConnectionError):
        return
    if startup is None:
        return
    msg, raw = startup
    try:
        breader, bwriter = await open_backend(*backend)
    except (OSError, asyncio.TimeoutError) as exc:
        await _fatal(writer, "08006", f"the proxy cannot reach its PostgreSQL node at "
                                      f"{backend[0]}:{backend[1]}: {exc}")
        return
    session = Session(msg, writer, bwriter)
    session._decoder = decoder
    try:
        bwriter.write(raw)
        await _pumps(session, decoder, reader, writer, breader, bwriter, hooks)
    finally:
        bwriter.close()


async def _startup_phase(decoder: codec.FrontendDecoder, reader: asyncio.StreamReader,
                         writer: asyncio.StreamWriter, backend: tuple[str, int]
                         ) -> tuple[m.StartupMessage, bytes] | None:
    """Answer SSL/GSS requests, forward a cancel; return the StartupMessage and its bytes."""
    while True:
        frame = decoder.next_frame()
        if frame is None:
            data = await reader.read(CHUNK)
            if not data:
                return None
            decoder.feed(data)
            continue
        raw = frame[1]
        msg = codec.parse_startup(raw)
        if isinstance(msg, (m.SSLRequest, m.GSSENCRequest)):
            if decoder.buffered:
                raise ProtocolError("data after an SSL or GSS encryption request")
            writer.write(b"N")
            await writer.drain()
        elif isinstance(msg, m.CancelRequest):
            await _forward_cancel(raw, backend)
            return None
        else:
            decoder.in_startup = False
            return msg, raw


async def _forward_cancel(raw: bytes, backend: tuple[str, int]) -> None:
    try:
        breader, bwriter = await open_backend(*backend, timeout=5)
    except (OSError, asyncio.TimeoutError):
        return
    try:
        bwriter.write(raw)
        await bwriter.drain()
        await asyncio.wait_for(breader.read(1), 5)  # the node closes when it is done
    except (OSError, asyncio.TimeoutError):
        pass
    finally:
        bwriter.close()


async def _fatal(writer: asyncio.StreamWriter, sqlstate: str, message: str) -> None:
    try:
        writer.write(codec.error_bytes("FATAL", sqlstate, message))
        await writer.drain()
    except (ConnectionError, RuntimeError):
        pass


async def _pumps(session: Session, decoder: codec.FrontendDecoder,
                 reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                 breader: asyncio.StreamReader, bwriter: asyncio.StreamWriter,
                 hooks: HooksProtocol | None) -> None:
    up = asyncio.create_task(_client_to_backend(session, decoder, reader, bwriter, hooks))
    down = asyncio.create_task(_backend_to_client(session, breader, writer))
    try:
        done, _ = await asyncio.wait((up, down), return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in (up, down):
            task.cancel()
        await asyncio.gather(up, down, return_exceptions=True)
    for task in done:
        exc = task.exception()
        if isinstance(exc, ProtocolError):
            where = "client" if task is up else "node"
            log.info("closing a client connection: the %s broke the protocol: %s", where, exc.message)
            await _fatal(writer, "08P01", exc.message)
        elif task is down and not session.backend_fatal and not isinstance(exc, ConnectionError):
            await _fatal(writer, "08006", "the connection to the PostgreSQL node behind this "
                                          "proxy was lost")
        elif exc is not None and not isinstance(exc, ConnectionError):
            log.exception("relay failure", exc_info=exc)
            await _fatal(writer, "XX000", f"internal error in the replicate proxy: {exc!r}")


async def _client_to_backend(session: Session, decoder: codec.FrontendDecoder,
                             reader: asyncio.StreamReader, bwriter: asyncio.StreamWriter,
                             hooks: HooksProtocol | None) -> None:
    """Returns when the client closed or sent Terminate."""
    next_frame = decoder.next_typed_frame
    sync_points = _SYNC_POINTS
    while True:
        data = await reader.read(CHUNK)
        if not data:
            return
        decoder.feed(data)
        out: list[bytes] = []
        syncs = 0
        while (frame := next_frame()) is not None:
            t, raw = frame
            code = raw[0]
            if hooks is not None and code in _HOOKED_TYPES:
                msg = codec.parse_frontend(t, raw[5:], decoder.encoding)
                if out:
                    if syncs:
                        session._mark_sent(syncs)
                        syncs = 0
                    bwriter.write(b"".join(out))
                    out.clear()
                action = await hooks.on_frontend(session, msg)
                if action is Action.HANDLED:
                    continue
            if code in sync_points:
                syncs += 1
            out.append(raw)
            if code == 88:  # 'X' Terminate
                bwriter.write(b"".join(out))
                await bwriter.drain()
                return
        if out:
            if syncs:
                session._mark_sent(syncs)
            bwriter.write(out[0] if len(out) == 1 else b"".join(out))
        await bwriter.drain()


async def _backend_to_client(session: Session, breader: asyncio.StreamReader,
                             writer: asyncio.StreamWriter) -> None:
    """Returns when the node closed its connection."""
    scanner = codec.FrameScanner(_TRACKED)
    session._scanner = scanner
    track = session._track
    while True:
        data = await breader.read(CHUNK)
        if not data:
            return
        if session._capture is None:
            for msg, _ in scanner.feed(data):
                track(msg)
            writer.write(data)
            if not session._idle.is_set() and session.pending == 0 and scanner.at_boundary:
                session._idle.set()
        else:
            _captured(session, scanner, data, writer)
        await writer.drain()


def _captured(session: Session, scanner: codec.FrameScanner, data: bytes,
              writer: asyncio.StreamWriter) -> None:
    """Data from the node during ``Session.exchange``: collect it up to ReadyForQuery.

    Asynchronous messages that arrive meanwhile (NotificationResponse,
    ParameterStatus) belong to the client: they are re-sent to it afterwards.
    Bytes after the ReadyForQuery are relayed as usual.
    """
    assert session._capture is not None
    fut, got = session._capture
    scanner.want = None
    try:
        found = scanner.feed(data)
    finally:
        scanner.want = frozenset(_TRACKED)
    for i, (msg, end) in enumerate(found):
        session._track(msg)
        if not isinstance(msg, m.ReadyForQuery):
            got.append(msg)
            continue
        got.append(msg)
        session._capture = None
        for early in got:
            if isinstance(early, (m.NotificationResponse, m.ParameterStatus)):
                writer.write(codec.encode(early, session.encoding))
        for later, _ in found[i + 1:]:
            session._track(later)
        writer.write(data[end:])
        if not fut.done():
            fut.set_result(got)
        return
