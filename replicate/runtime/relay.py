"""The transparent relay: one PostgreSQL client <-> the proxy's local PostgreSQL node.

``relay_client(first8, reader, writer, backend=(host, port), hooks=None)``
serves one client connection (the listener already read its first 8 bytes to
tell peers from clients). It opens its own connection to the local node and
relays bytes both ways, so every client works unchanged: authentication
(trust, md5, SCRAM-SHA-256) is the node's, BackendKeyData is the node's (a
CancelRequest sent to the proxy is forwarded to the node on a new connection
and matches), and simple/extended queries, pipelining, COPY, notices and
LISTEN/NOTIFY pass through as they came.

Startup phase (asyncio streams): SSLRequest and GSSENCRequest are answered
``N`` -- TLS termination is not built yet: clients with ``sslmode=prefer`` go on
in clear text, ``sslmode=require`` is refused by the client. A client that
breaks the protocol gets a FATAL ErrorResponse 08P01 and only its connection
closes. If the node cannot be reached, or goes away without saying why, the
client gets FATAL 08006 (the node's own FATAL, e.g. 57P01 at shutdown, is
relayed as it is).

After the startup message the relay switches both sockets to asyncio
protocols: bytes from one side are written to the other from the
``data_received`` callback, with no task switch on the way (the relay is on
every query's path). Backpressure: when one side's send buffer is full, the
other side stops being read.

The seam for interception
-------------------------
``hooks`` is an object with one method::

    def on_frontend(self, session: Session, message) -> Action | Awaitable[Action]

It is called, in order and one at a time, for every frontend message whose
type is in ``HOOKED`` (Query, Parse, Bind, Describe, Execute, Sync, Close,
Flush), decoded by ``replicate.pgwire``. It returns ``Action.FORWARD`` (relay
the message's original bytes to the node) or ``Action.HANDLED`` (the hook
dealt with it: it wrote its own reply with ``session.write_client`` and/or
sent something else with ``session.write_backend``; the relay drops the
message) -- directly when it can decide at once (the fast path: no task, no
await), or as an awaitable (e.g. a coroutine) when it must wait for the
engine or the node. While an awaitable runs, the client is not read and no
later message is relayed, so the stream is never reordered. Forwarded
messages are batched (a whole pipeline goes to the node in one write); the
batch is written before anything the hook writes to the node, before an
awaitable hook runs, and by ``wait_idle``. An exception that escapes a hook
ends that session with a FATAL (a ``ReplicateError``'s own SQLSTATE, else
XX000); a statement-level error is the hook's to send as an ErrorResponse.
``Hooks`` is the base class (forward everything); ``hooks=None`` forwards
everything without decoding anything (messages are only framed), the fastest
path. A hook may narrow ``session.hooked`` (the type codes it is called for,
default all of ``HOOKED``) while the other types cannot matter to it: those
are forwarded like with ``hooks=None``, undecoded, in the same batch.

A hooks object may also have ``pass_raw(session, code, data, start, end) -> bool``: asked
first for every hooked message, with the message's whole bytes ``data[start:end]``
undecoded, before ``session.in_batch`` counts it. True: the hook decided from those bytes
and did its own book-keeping, and the message is forwarded like an unhooked one. False:
nothing changed, and the message takes the decoded path to ``on_frontend`` (at the start
of a chunk, with the rest of the chunk) without being asked again. It lets the messages of
a common case (a read's Bind, Describe, Execute, Sync) go without decoding each into an
object.

``Session`` exposes:

- ``startup`` (the StartupMessage parameters), ``user``, ``database``,
  ``application_name``;
- ``parameters``: the ParameterStatus values the node reported (TimeZone,
  DateStyle, IntervalStyle, standard_conforming_strings, client_encoding,
  server_version, ...), kept current;
- ``transaction_status``: ``I``/``T``/``E`` from the last ReadyForQuery;
- ``in_batch``: extended-protocol messages (Parse, Bind, Describe, Execute,
  Close) came from the client since its last Sync, not counting the message
  being handled (kept by the relay, whatever ``hooked`` says);
- ``hooked``: the frontend type codes passed to the hooks (see above);
- ``executions``: how many Query, Execute and FunctionCall messages went from
  the client to the node (hooked or not); a hook can tell from it whether
  anything ran in the session since it last looked;
- ``extra``: a dict for the hooks' own per-session state (e.g. "discard until
  Sync" after an error in an extended-protocol batch);
- ``backend_pid``, ``backend_secret`` (BackendKeyData), ``encoding`` (the
  Python codec of client_encoding, used to decode and encode text);
- ``pending``: requests forwarded (Query, Sync, FunctionCall) whose
  ReadyForQuery has not come back; ``await wait_idle()`` until it is 0, so that
  a hook's own reply is not written before replies still in flight;
- ``write_client(data)`` / ``write_backend(data)`` (bytes or a message) and
  ``await drain()`` (waits while either send buffer is full);
- ``peek_frames(n)`` / ``skip_frames(n)``: the raw client messages buffered after the one
  being handled, and dropping them so that the hook answers them (a prepared write's Execute
  and Sync, see ``replicate.runtime.intercept``);
- ``await exchange(data) -> list[BackendMessage]``: wait until idle, send
  ``data`` (one request ending in a Query or a Sync) to the node on the
  session's own connection, and return the node's replies up to and including
  ReadyForQuery instead of relaying them (for queries a hook runs inside the
  client's session: its search_path, its transaction). Notifications and
  ParameterStatus that arrive meanwhile are passed on to the client.

Extended-protocol replies only come at Sync or Flush: a hook that answers an
Execute inside a pipeline must mind what the node still owes the client
before that point (e.g. send a Flush and wait, or answer at the Sync).
"""

from __future__ import annotations

import asyncio
import enum
import functools
import logging
import struct
from collections.abc import Awaitable
from typing import Any, Protocol

from psycopg.conninfo import conninfo_to_dict

from replicate.errors import ProtocolError, ReplicateError
from replicate.pgwire import codec
from replicate.pgwire import messages as m
from replicate.runtime.deadline import within

log = logging.getLogger("replicate.relay")

STARTUP_TIMEOUT_S = 60.0
CONNECT_TIMEOUT_S = 10.0
CHUNK = 256 * 1024
HIGH_WATER = 1024 * 1024      # a send buffer above this pauses reading the other side

HOOKED = (m.Query, m.Parse, m.Bind, m.Describe, m.Execute, m.Sync, m.Close, m.Flush)
_HOOKED_TYPES = frozenset(b"QPBDESCH")
# extended-protocol messages that open a batch (an implicit transaction) until Sync; not Flush,
# which drivers in pipeline mode also send right after a Sync
_BATCH_TYPES = frozenset(b"PBDEC")
_SYNC = ord("S")
_SYNC_POINTS = frozenset(b"QSF")      # frontend messages answered by a ReadyForQuery
_EXECUTING = frozenset(b"QEF")        # frontend messages that run SQL (Session.executions)
_FLUSH_MESSAGE = b"H\x00\x00\x00\x04"
_CLIENT_HOLD_MAX = 64 * 1024          # bytes held for the client while a hook runs
_TRACKED = b"ZSKE"                    # backend messages the relay itself reads
_TERMINATE = ord("X")
_I32 = struct.Struct("!i")


class Action(enum.Enum):
    FORWARD = "forward"
    HANDLED = "handled"


class HooksProtocol(Protocol):
    def on_frontend(self, session: "Session", message: Any) -> Action | Awaitable[Action]: ...


class Hooks:
    """Forward everything (subclass and override ``on_frontend``; ``pass_raw`` optionally)."""

    def on_frontend(self, session: "Session", message: Any) -> Action | Awaitable[Action]:
        return Action.FORWARD

    def pass_raw(self, session: "Session", code: int, data: bytes, start: int,
                 end: int) -> bool:
        return False


Address = tuple[str, int]   # (host, port); a host starting with '/' is a Unix socket directory


@functools.lru_cache(maxsize=16)
def backend_addresses(dsn: str) -> tuple[Address, ...]:
    """Every (host, port) of a libpq DSN, in the order libpq tries them.

    ``host=/run/pg,127.0.0.1 port=5432`` gives the socket directory first, then
    TCP (one port serves every host, as in libpq); an empty host is libpq's
    default, 127.0.0.1 here. A ``hostaddr`` entry wins over its host.
    """
    params = conninfo_to_dict(dsn)
    hosts = str(params.get("host") or "").split(",")
    addrs = str(params.get("hostaddr") or "").split(",")
    ports = str(params.get("port") or "").split(",")
    count = max(len(hosts), len(addrs))
    out = []
    for i in range(count):
        host = (addrs[i] if i < len(addrs) else "") or (hosts[i] if i < len(hosts) else "")
        port = ports[i] if len(ports) > 1 and i < len(ports) else ports[0]
        out.append((host or "127.0.0.1", int(port or 5432)))
    return tuple(out)


def backend_address(dsn: str) -> Address:
    """The first (host, port) of a libpq DSN (see ``backend_addresses``)."""
    return backend_addresses(dsn)[0]


def describe_address(address: Address) -> str:
    host, port = address
    return f"{host}/.s.PGSQL.{port}" if host.startswith("/") else f"{host}:{port}"


def _addresses(backend: Address | tuple[Address, ...]) -> tuple[Address, ...]:
    return (backend,) if isinstance(backend[0], str) else tuple(backend)  # type: ignore[return-value]


_fallbacks: set[Address] = set()   # addresses we logged as unreachable (log once per outage)


async def _connect(loop: asyncio.AbstractEventLoop, factory, addresses: tuple[Address, ...],
                   timeout: float):
    """Connect to the first address that answers, like libpq; OSError lists every failure."""
    failures = []
    for address in addresses:
        host, port = address
        try:
            if host.startswith("/"):
                connect = loop.create_unix_connection(factory, f"{host}/.s.PGSQL.{port}")
            else:
                connect = loop.create_connection(factory, host, port)
            result = await within(connect, timeout)
        except (OSError, asyncio.TimeoutError) as exc:
            failures.append(f"{describe_address(address)}: {exc or type(exc).__name__}")
            if address not in _fallbacks and len(addresses) > 1:
                _fallbacks.add(address)
                log.warning("cannot reach the PostgreSQL node at %s (%s)%s",
                            describe_address(address), exc or type(exc).__name__,
                            "; trying the next address" if address != addresses[-1] else "")
            continue
        _fallbacks.discard(address)
        return result
    raise OSError("; ".join(failures))


def _frame_type(type_: bytes, body: bytes, encoding: str) -> int:
    return type_[0]


def _never_raw(session: "Session", code: int, data: bytes, start: int, end: int) -> bool:
    """``pass_raw`` for hooks that have none: every hooked message is decoded."""
    return False


# The last reply the node sends for each extended-protocol message (Parse '1', Bind '2',
# Close '3', Describe 'T'/'n', Execute 'C'/'I'/'s'): counted, not parsed, for ``settle``.
_TERMINAL = b"123nTCIs"
_TERMINAL_SET = frozenset(_TERMINAL)
_OWING = frozenset(b"PBDEC")   # frontend messages that each get one terminal reply


def _lenient_backend(type_: bytes, body: bytes, encoding: str) -> Any:
    """Parse a node's message for tracking; one we cannot read is relayed all the same."""
    try:
        return codec.parse_backend(type_, body, encoding)
    except ProtocolError:
        return m.Unknown(type_, body)


def _lenient_or_code(type_: bytes, body: bytes, encoding: str) -> Any:
    code = type_[0]
    return code if code in _TERMINAL_SET else _lenient_backend(type_, body, encoding)


class _Side(asyncio.Protocol):
    """One socket of a session; forwards its events to the session."""

    def __init__(self, session: "Session", client: bool) -> None:
        self.session = session
        self.client = client
        self.transport: asyncio.Transport | None = None
        self.paused = False           # our send buffer is full
        self._resumed: asyncio.Future | None = None

    def connection_made(self, transport) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        if self.client:
            self.session._from_client(data)
        else:
            self.session._from_backend(data)

    def eof_received(self) -> bool:
        return False  # close

    def connection_lost(self, exc) -> None:
        self.session._lost(self.client, exc)
        self._wake()

    def pause_writing(self) -> None:
        self.paused = True
        self.session._other(self).pause()

    def resume_writing(self) -> None:
        self.paused = False
        self.session._other(self).resume()
        self._wake()

    def _wake(self) -> None:
        if self._resumed is not None and not self._resumed.done():
            self._resumed.set_result(None)
        self._resumed = None

    async def drained(self) -> None:
        if self.paused and self.transport is not None and not self.transport.is_closing():
            self._resumed = asyncio.get_running_loop().create_future()
            await self._resumed

    # reading the other side is paused for two reasons: its peer's send buffer is full,
    # or a hook is running; it resumes when neither holds
    def pause(self) -> None:
        self.session._hold(self, +1)

    def resume(self) -> None:
        self.session._hold(self, -1)


class Session:
    """One client session as a hook sees it (see the module docstring)."""

    def __init__(self, startup: m.StartupMessage, decoder: codec.FrontendDecoder,
                 hooks: HooksProtocol | None) -> None:
        self.startup: dict[str, str] = dict(startup.params)
        self.parameters: dict[str, str] = {}
        self.transaction_status = "I"
        self.in_batch = False
        self.executions = 0
        self._client_out: list[bytes] = []   # held for the client while a hook runs
        self._client_out_size = 0
        self.hooked: frozenset[int] = _HOOKED_TYPES
        self.backend_pid: int | None = None
        self.backend_secret: bytes | None = None
        self.encoding = "utf-8"
        self.pending = 0
        self.backend_fatal = False
        self.hooks = hooks
        self._pass_raw = getattr(hooks, "pass_raw", _never_raw)
        self._raw_refused = False  # pass_raw said no to the next message in the decoder
        self.extra: dict[str, Any] = {}  # per-session state that hooks keep
        self._decoder = decoder
        self._front_scanner = codec.FrameScanner(b"QSFX", parse=_frame_type,
                                                 max_length=codec.MAX_MESSAGE_LENGTH)
        self._scanner = (codec.FrameScanner(_TRACKED, parse=_lenient_backend) if hooks is None
                         else codec.FrameScanner(_TRACKED + _TERMINAL, parse=_lenient_or_code))
        self._owed = 0                 # terminal replies owed for forwarded P/B/D/E/C
        self._batch_error = False      # an ErrorResponse came since the last ReadyForQuery
        self._settled = asyncio.Event()
        self._settled.set()
        self._client = _Side(self, client=True)
        self._backend = _Side(self, client=False)
        self._holds = {id(self._client): 0, id(self._backend): 0}
        self._idle = asyncio.Event()
        self._idle.set()
        self._capture: tuple[asyncio.Future, list] | None = None
        self._hook_task: asyncio.Task | None = None
        self._hook_hold = False
        self._out: list[bytes] = []       # forwarded frames not yet written to the node
        self._out_syncs = 0
        self._closed = asyncio.get_running_loop().create_future()
        self._client_gone = False
        self._terminated = False

    @property
    def user(self) -> str:
        return self.startup.get("user", "")

    @property
    def database(self) -> str:
        return self.startup.get("database") or self.user

    @property
    def application_name(self) -> str:
        return self.parameters.get("application_name", self.startup.get("application_name", ""))

    # -- the API for hooks --------------------------------------------------------------

    def write_client(self, data: bytes | Any) -> None:
        self._to_client(data if isinstance(data, (bytes, bytearray)) else
                        codec.encode(data, self.encoding))

    def _to_client(self, data: bytes) -> None:
        """Write to the client; while a hook runs, collect instead (the client is not read
        meanwhile), so that e.g. a write's BindComplete and CommandComplete go in one send."""
        if self._hook_task is not None:
            self._client_out.append(data)
            self._client_out_size += len(data)
            if self._client_out_size >= _CLIENT_HOLD_MAX:  # keep the backpressure working
                self._flush_client()
            return
        self._flush_client()
        if self._client.transport is not None:
            self._client.transport.write(data)

    def _flush_client(self) -> None:
        out = self._client_out
        if out:
            if self._client.transport is not None:
                self._client.transport.write(out[0] if len(out) == 1 else b"".join(out))
            out.clear()
            self._client_out_size = 0

    def write_backend(self, data: bytes | Any) -> None:
        self._flush_out()  # messages forwarded before this one go first
        if not isinstance(data, (bytes, bytearray)) and getattr(data, "TYPE", b"")[:1] \
                and data.TYPE[0] in _OWING:
            self._owed += 1
        if self._backend.transport is not None:
            self._backend.transport.write(data if isinstance(data, (bytes, bytearray)) else
                                          codec.encode(data, self.encoding))

    async def drain(self) -> None:
        await self._client.drained()
        await self._backend.drained()

    async def wait_idle(self) -> None:
        """Until every forwarded request got its ReadyForQuery (and no message is half-relayed)."""
        self._flush_out()
        while True:
            await self._idle.wait()
            if self._scanner.at_boundary:
                return
            self._idle.clear()  # a message is cut: the chunk that completes it sets idle again

    async def settle(self) -> bool:
        """Until the node answered every Parse/Bind/Describe/Execute/Close forwarded since
        the last Sync (a Flush makes it send them now); True if one of them failed.

        Lets a hook answer an Execute itself in its place in an extended-protocol batch:
        everything before it has reached the client, and after an error PostgreSQL
        would skip the rest of the batch.
        """
        if self._owed > 0:
            self._out.append(_FLUSH_MESSAGE)  # one send with what was forwarded before
            self._flush_out()
            while self._owed > 0:
                self._settled.clear()
                await self._settled.wait()
        else:
            self._flush_out()
        return self._batch_error

    def peek_frames(self, n: int) -> list[bytes]:
        """The whole bytes of up to ``n`` client messages that follow the one being handled,
        as far as they have arrived; they stay where they are."""
        return self._decoder.peek_typed_frames(n)

    def skip_frames(self, n: int) -> None:
        """Drop the next ``n`` client messages (peeked first), which the running hook answers
        itself, as if the hooks had handled them one by one. Call it from the hook's
        awaitable, before it first waits (the relay has finished with the current message)."""
        for _ in range(n):
            frame = self._decoder.next_typed_frame()
            if frame is None:
                raise ProtocolError("skip_frames: fewer messages buffered than peeked")
            code = frame[1][0]
            if code in _BATCH_TYPES:
                self.in_batch = True
            elif code == _SYNC:
                self.in_batch = False

    async def exchange(self, data: bytes | Any) -> list[Any]:
        """Send ``data`` to the node and return its replies up to ReadyForQuery, not relayed."""
        await self.wait_idle()
        fut = asyncio.get_running_loop().create_future()
        self._capture = (fut, [])
        self._sent(1)
        self.write_backend(data)
        return await fut

    # -- plumbing -----------------------------------------------------------------------

    def _other(self, side: _Side) -> _Side:
        return self._backend if side is self._client else self._client

    def _hold(self, side: _Side, delta: int) -> None:
        holds = self._holds[id(side)] + delta
        self._holds[id(side)] = holds
        transport = side.transport
        if transport is None or transport.is_closing():
            return
        if holds > 0 and transport.is_reading():
            transport.pause_reading()
        elif holds == 0 and not transport.is_reading():
            transport.resume_reading()

    def _sent(self, n: int) -> None:
        self.pending += n
        self._idle.clear()

    def _track(self, msg: Any) -> None:
        t = type(msg)
        if t is int:  # a terminal reply to an extended-protocol message
            if self._owed > 0:
                self._owed -= 1
                if self._owed == 0:
                    self._settled.set()
            return
        if t is m.ErrorResponse and self._owed > 0:
            self._batch_error = True   # the node skips the rest of the batch until Sync
            self._owed = 0
            self._settled.set()
        if t is m.ReadyForQuery:
            self._owed = 0
            self._batch_error = False
            self._settled.set()
            self.transaction_status = msg.status
            if self.pending > 0:
                self.pending -= 1
            if self.pending == 0:
                self._idle.set()
        elif t is m.ParameterStatus:
            self.parameters[msg.name] = msg.value
            if msg.name == "client_encoding":
                self.encoding = codec.python_encoding(msg.value)
                self._decoder.encoding = self.encoding
                self._scanner.encoding = self.encoding
        elif t is m.BackendKeyData:
            self.backend_pid, self.backend_secret = msg.pid, msg.secret
        elif t is m.ErrorResponse:
            if msg.fields.get("V", msg.fields.get("S")) in ("FATAL", "PANIC"):
                self.backend_fatal = True

    def _fatal(self, sqlstate: str, message: str) -> None:
        """Tell the client why (FATAL), then close both connections."""
        if not self._client_gone:
            self._flush_client()
            if self._client.transport is not None:
                self._client.transport.write(codec.error_bytes("FATAL", sqlstate, message))
        self._close()

    def _close(self) -> None:
        for side in (self._client, self._backend):
            if side.transport is not None:
                side.transport.close()
        if self._hook_task is not None and not self._hook_task.done():
            self._hook_task.cancel()
        if not self._closed.done():
            self._closed.set_result(None)

    def _lost(self, client: bool, exc: BaseException | None) -> None:
        if client:
            self._client_gone = True
            self._close()
        elif not self._client_gone and not self._terminated:
            if self.backend_fatal:
                self._close()
            else:
                self._fatal("08006", "the connection to the PostgreSQL node behind this "
                                     "proxy was lost")
        else:
            self._close()

    # -- client -> node -----------------------------------------------------------------

    def _from_client(self, data: bytes) -> None:
        try:
            if self.hooks is None:
                syncs = 0
                for code, _ in self._front_scanner.feed(data):
                    if code == _TERMINATE:
                        self._terminated = True
                    else:
                        syncs += 1
                if syncs:
                    self._sent(syncs)
                self._backend.transport.write(data)
            else:
                if self._hook_task is None and not self._decoder.buffered:
                    data = self._pass_unhooked(data)
                    if not data:
                        return
                self._decoder.feed(data)
                if self._hook_task is None:
                    self._relay_frames()
        except ProtocolError as exc:
            log.info("closing a client connection: the client broke the protocol: %s",
                     exc.message)
            self._fatal("08P01", exc.message)
        except Exception as exc:  # noqa: BLE001 - a hook failure ends this session only
            self._hook_failed(exc)

    def _pass_unhooked(self, data: bytes) -> bytes:
        """Forward the whole messages at the start of ``data`` that no hook wants, or that
        the hooks' ``pass_raw`` lets pass, undecoded.

        They go to the node as one slice of the chunk, without the per-message decoding
        and copying of ``_relay_frames``; what is left (from the first hooked or cut
        message on) is returned for the decoder. Called only with the decoder empty and
        no hook running, so nothing is reordered.
        """
        pass_raw = self._pass_raw
        n = len(data)
        pos = 0
        unpack_from = _I32.unpack_from
        while n - pos >= 5:
            code = data[pos]
            length = unpack_from(data, pos + 1)[0]
            end = pos + 1 + length
            if length < 4 or length > codec.MAX_MESSAGE_LENGTH or end > n:
                break   # cut, or malformed: the decoder buffers it or raises
            if code in self.hooked and not pass_raw(self, code, data, pos, end):
                self._raw_refused = True  # not asked again once decoded
                break
            if code in _BATCH_TYPES:
                self.in_batch = True
            elif code == _SYNC:
                self.in_batch = False
            self._forwarded(code)
            pos = end
        if pos == 0:
            return data
        if pos == n:
            self._out.append(data)
            self._flush_out()
            return b""
        self._out.append(data[:pos])
        return data[pos:]

    def _relay_frames(self) -> None:
        """Forward decoded frames until the buffer is empty or a hook must be awaited.

        Forwarded frames are collected and written to the node in one piece
        (a whole pipeline in one send), before anything a hook writes to the
        node and before a hook is awaited.
        """
        decoder = self._decoder
        hooks = self.hooks
        pass_raw = self._pass_raw
        out = self._out
        awaiting = False
        try:
            while (frame := decoder.next_typed_frame()) is not None:
                t, raw = frame
                code = raw[0]
                refused, self._raw_refused = self._raw_refused, False
                if code in self.hooked and (refused
                                            or not pass_raw(self, code, raw, 0, len(raw))):
                    action = hooks.on_frontend(self, codec.parse_frontend(t, raw[5:],
                                                                          decoder.encoding))
                    if code in _BATCH_TYPES:
                        self.in_batch = True
                    elif code == _SYNC:
                        self.in_batch = False
                    if action is Action.HANDLED:
                        continue
                    if action is not Action.FORWARD:
                        # what was forwarded before stays in _out: the hook's first call that
                        # reaches the node (settle, exchange, write_backend) or the end of the
                        # hook sends it, in the same write (e.g. Bind together with Flush)
                        self._await_hook(action, raw)
                        awaiting = True
                        return
                elif code in _BATCH_TYPES:
                    self.in_batch = True
                elif code == _SYNC:
                    self.in_batch = False
                self._forwarded(code)
                out.append(raw)
        finally:
            if not awaiting:
                self._flush_out()

    def _forwarded(self, code: int) -> None:
        """The book-keeping for one client message of type ``code`` going to the node."""
        if code in _SYNC_POINTS:
            self._out_syncs += 1
        elif code in _OWING:
            self._owed += 1
        elif code == _TERMINATE:
            self._terminated = True
        if code in _EXECUTING:
            self.executions += 1

    def _flush_out(self) -> None:
        out = self._out
        if out:
            if self._out_syncs:
                self._sent(self._out_syncs)
                self._out_syncs = 0
            self._backend.transport.write(out[0] if len(out) == 1 else b"".join(out))
            out.clear()

    def _await_hook(self, awaitable: Awaitable[Action], raw: bytes) -> None:
        if not self._hook_hold:  # the client is not read while a hook runs
            self._hook_hold = True
            self._client.pause()
        self._hook_task = asyncio.ensure_future(self._finish_hook(awaitable, raw))

    async def _finish_hook(self, awaitable: Awaitable[Action], raw: bytes) -> None:
        try:
            action = await awaitable
            if action is not Action.HANDLED:
                self._out.append(raw)
                self._forwarded(raw[0])
            self._hook_task = None
            self._relay_frames()
            if self._hook_task is None:
                self._flush_client()  # what the hook (and the node meanwhile) had for it
                if self._hook_hold:
                    self._hook_hold = False
                    self._client.resume()
        except ProtocolError as exc:
            self._fatal("08P01", exc.message)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - a hook failure ends this session only
            self._hook_failed(exc)

    def _hook_failed(self, exc: Exception) -> None:
        """An exception escaped a hook: the session ends with a FATAL saying why."""
        if isinstance(exc, ReplicateError):
            log.warning("closing a client connection: %s", exc)
            self._fatal(exc.sqlstate, exc.message)
        else:
            log.error("closing a client connection: a relay hook failed", exc_info=exc)
            self._fatal("XX000", f"internal error in the replicate proxy: {exc!r}")

    # -- node -> client -----------------------------------------------------------------

    def _from_backend(self, data: bytes) -> None:
        try:
            if self._capture is not None:
                self._captured(data)
                return
            for msg, _ in self._scanner.feed(data):
                self._track(msg)
            self._to_client(data)
            if self.pending == 0 and not self._idle.is_set() and self._scanner.at_boundary:
                self._idle.set()
        except ProtocolError as exc:
            log.warning("closing a client connection: the node broke the protocol: %s",
                        exc.message)
            self._fatal("08P01", exc.message)

    def _captured(self, data: bytes) -> None:
        """Data from the node during ``exchange``: collect it up to ReadyForQuery."""
        assert self._capture is not None
        fut, got = self._capture
        scanner = self._scanner
        want, parse = scanner.want, scanner.parse
        scanner.want, scanner.parse = None, _lenient_backend  # every reply, fully decoded
        try:
            found = scanner.feed(data)
        finally:
            scanner.want, scanner.parse = want, parse
        for i, (msg, end) in enumerate(found):
            self._track(msg)
            got.append(msg)
            if not isinstance(msg, m.ReadyForQuery):
                continue
            self._capture = None
            for early in got:  # asynchronous messages belong to the client
                if isinstance(early, (m.NotificationResponse, m.ParameterStatus)):
                    self.write_client(early)
            for later, _ in found[i + 1:]:
                self._track(later)
            if end < len(data):
                self._to_client(data[end:])
            if not fut.done():
                fut.set_result(got)
            return


# --------------------------------------------------------------------------- entry point

async def relay_client(first8: bytes, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                       *, backend: Address | tuple[Address, ...],
                       hooks: HooksProtocol | None = None) -> None:
    """Serve one PostgreSQL client connection until either side closes.

    ``backend`` is the node's (host, port), or several tried in order (``backend_addresses``).
    """
    decoder = codec.FrontendDecoder()
    decoder.feed(first8)
    try:
        startup = await within(_startup_phase(decoder, reader, writer, backend),
                               STARTUP_TIMEOUT_S)
    except ProtocolError as exc:
        log.info("closing a client connection: the client broke the protocol: %s", exc.message)
        await _fatal(writer, "08P01", exc.message)
        return
    except (asyncio.TimeoutError, asyncio.IncompleteReadError, ConnectionError):
        return
    if startup is None:
        return
    msg, raw = startup
    session = Session(msg, decoder, hooks)
    loop = asyncio.get_running_loop()
    addresses = _addresses(backend)
    try:
        await _connect(loop, lambda: session._backend, addresses, CONNECT_TIMEOUT_S)
    except OSError as exc:
        await _fatal(writer, "08006", f"the proxy cannot reach its PostgreSQL node: {exc}")
        return
    # Hand the client socket over from the stream to the session's protocol.
    transport = writer.transport
    leftover = bytes(getattr(reader, "_buffer", b""))  # a client waits for auth; normally empty
    session._client.transport = transport
    transport.set_protocol(session._client)
    session._backend.transport.set_write_buffer_limits(HIGH_WATER)
    transport.set_write_buffer_limits(HIGH_WATER)
    if not transport.is_reading():
        transport.resume_reading()
    session._backend.transport.write(raw)
    if leftover:
        session._from_client(leftover)
    if transport.is_closing():
        session._lost(True, None)
    try:
        await session._closed
    finally:
        session._close()


async def _startup_phase(decoder: codec.FrontendDecoder, reader: asyncio.StreamReader,
                         writer: asyncio.StreamWriter, backend: Address | tuple[Address, ...]
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


async def _forward_cancel(raw: bytes, backend: Address | tuple[Address, ...]) -> None:
    try:
        breader = asyncio.StreamReader(limit=2 ** 16)
        loop = asyncio.get_running_loop()
        transport, protocol = await _connect(
            loop, lambda: asyncio.StreamReaderProtocol(breader), _addresses(backend), 5)
        bwriter = asyncio.StreamWriter(transport, protocol, breader, loop)
    except OSError:
        return
    try:
        bwriter.write(raw)
        await bwriter.drain()
        await within(breader.read(1), 5)  # the node closes when it is done
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


__all__ = ["Action", "HOOKED", "Hooks", "HooksProtocol", "Session", "backend_address",
           "backend_addresses", "describe_address", "relay_client"]
