"""Decoders and encoder for protocol 3.0: bytes in, messages out, and back. No I/O.

Shape (as in h11): ``decoder.feed(data)`` only buffers; ``decoder.next_message()``
returns the next complete message, or ``None`` when it needs more bytes. The
caller owns the socket. ``encode(message)`` returns the bytes of one message.

- ``FrontendDecoder`` reads what a client sends. The first message of a
  connection has no type byte (StartupMessage, SSLRequest, GSSENCRequest,
  CancelRequest); after SSLRequest or GSSENCRequest another untyped message
  follows; after a StartupMessage every message is typed.
- ``BackendDecoder`` reads what a server sends (always typed).
- ``next_frame()`` returns ``(type, body)`` without parsing the body, and
  ``parse_frontend``/``parse_backend`` parse one: a relay that only needs
  message boundaries can skip the parsing.

Exactness: ``decode(encode(m)) == m`` and, for every message a decoder
accepts, ``encode(decode(b)) == b``. To keep the second, the decoder refuses
what a message object could not reproduce (a duplicate startup parameter or
error field, bytes after the end of a fixed-size body).

Limits: a typed message declares a length of at least 4 (the length counts
itself) and at most ``MAX_MESSAGE_LENGTH`` = 1 GiB - 1, PostgreSQL's own
MaxAllocSize limit for a frontend message (so a Query, a Bind or a CopyData
that PostgreSQL would accept, we accept). An untyped startup-phase packet is at
most ``MAX_STARTUP_LENGTH`` = 10000 bytes, PostgreSQL's
MAX_STARTUP_PACKET_LENGTH. Strings are decoded with ``encoding`` (the
session's client_encoding; UTF-8 by default, which is what every modern driver
uses). Anything malformed -- a bad length, a truncated field, a missing NUL,
undecodable text, a bad enum value -- raises ``ProtocolError`` (08P01) and
nothing else.
"""

from __future__ import annotations

import dataclasses
import struct
from collections.abc import Callable

from replicate.errors import ProtocolError
from replicate.pgwire import messages as m

MAX_MESSAGE_LENGTH = (1 << 30) - 1
MAX_STARTUP_LENGTH = 10000

_I16 = struct.Struct("!h")
_I32 = struct.Struct("!i")
_U32 = struct.Struct("!I")
_HEADER = struct.Struct("!ci")
_FIELD = struct.Struct("!IhIhih")

# PostgreSQL encoding names -> Python codecs. SQL_ASCII means "bytes as they
# are": latin-1 maps every byte to one character and back, so it round-trips.
PG_ENCODINGS = {
    "UTF8": "utf-8", "UNICODE": "utf-8", "SQLASCII": "latin-1", "LATIN1": "latin-1",
    "LATIN2": "iso8859-2", "LATIN9": "iso8859-15", "WIN1250": "cp1250", "WIN1251": "cp1251",
    "WIN1252": "cp1252", "KOI8R": "koi8-r", "EUCJP": "euc-jp", "SJIS": "shift-jis",
    "GBK": "gbk", "BIG5": "big5", "EUCKR": "euc-kr", "GB18030": "gb18030",
}


def python_encoding(pg_name: str) -> str:
    """The Python codec for a PostgreSQL client_encoding (latin-1, byte-transparent, if unknown)."""
    return PG_ENCODINGS.get(pg_name.upper().replace("_", "").replace("-", ""), "latin-1")


class _Body:
    """A cursor over one message body; every read checks bounds."""

    __slots__ = ("data", "pos", "what", "encoding")

    def __init__(self, data: bytes, what: str, encoding: str) -> None:
        self.data = data
        self.pos = 0
        self.what = what
        self.encoding = encoding

    def fail(self, why: str) -> ProtocolError:
        return ProtocolError(f"invalid {self.what} message: {why}")

    def _take(self, n: int) -> bytes:
        end = self.pos + n
        if n < 0 or end > len(self.data):
            raise self.fail("truncated")
        chunk = self.data[self.pos:end]
        self.pos = end
        return chunk

    def i16(self) -> int:
        return _I16.unpack(self._take(2))[0]

    def i32(self) -> int:
        return _I32.unpack(self._take(4))[0]

    def u32(self) -> int:
        return _U32.unpack(self._take(4))[0]

    def count(self) -> int:
        n = self.i16()
        if n < 0:
            raise self.fail(f"negative count {n}")
        return n

    def cstr(self) -> str:
        end = self.data.find(b"\0", self.pos)
        if end < 0:
            raise self.fail("a string is missing its NUL terminator")
        raw = self.data[self.pos:end]
        self.pos = end + 1
        try:
            return raw.decode(self.encoding)
        except UnicodeDecodeError:
            raise self.fail(f"a string is not valid {self.encoding}") from None

    def value(self) -> bytes | None:
        n = self.i32()
        if n == -1:
            return None
        if n < -1:
            raise self.fail(f"negative value length {n}")
        return self._take(n)

    def rest(self) -> bytes:
        chunk = self.data[self.pos:]
        self.pos = len(self.data)
        return chunk

    def end(self) -> None:
        if self.pos != len(self.data):
            raise self.fail(f"{len(self.data) - self.pos} unexpected bytes at the end")


def _fields_of(b: _Body) -> dict[str, str]:
    fields: dict[str, str] = {}
    while True:
        code = b._take(1)
        if code == b"\0":
            b.end()
            return fields
        key = chr(code[0])
        if key in fields:
            raise b.fail(f"field {key!r} appears twice")
        fields[key] = b.cstr()


def _strings_until_empty(b: _Body) -> list[str]:
    out = []
    while True:
        s = b.cstr()
        if not s:
            return out
        out.append(s)


# --------------------------------------------------------------------------- body parsers

def _p_query(b: _Body) -> m.Query:
    sql = b.cstr()
    b.end()
    return m.Query(sql)


def _p_parse(b: _Body) -> m.Parse:
    name, sql = b.cstr(), b.cstr()
    types = tuple(b.u32() for _ in range(b.count()))
    b.end()
    return m.Parse(name, sql, types)


def _p_bind(b: _Body) -> m.Bind:
    portal, statement = b.cstr(), b.cstr()
    pformats = tuple(b.i16() for _ in range(b.count()))
    params = tuple(b.value() for _ in range(b.count()))
    rformats = tuple(b.i16() for _ in range(b.count()))
    b.end()
    return m.Bind(portal, statement, pformats, params, rformats)


def _kind_name(cls: Callable) -> Callable[[_Body], object]:
    def parse(b: _Body):
        kind = b._take(1).decode("latin-1")
        if kind not in ("S", "P"):
            raise b.fail(f"kind must be 'S' or 'P', not {kind!r}")
        name = b.cstr()
        b.end()
        return cls(kind, name)
    return parse


def _p_execute(b: _Body) -> m.Execute:
    portal = b.cstr()
    rows = b.i32()
    b.end()
    return m.Execute(portal, rows)


def _empty(cls: Callable) -> Callable[[_Body], object]:
    instance = cls()

    def parse(b: _Body):
        b.end()
        return instance
    return parse


def _p_copyfail(b: _Body) -> m.CopyFail:
    msg = b.cstr()
    b.end()
    return m.CopyFail(msg)


def _p_auth(b: _Body) -> m.Authentication:
    return m.Authentication(b.i32(), b.rest())


def _p_param_status(b: _Body) -> m.ParameterStatus:
    name, value = b.cstr(), b.cstr()
    b.end()
    return m.ParameterStatus(name, value)


def _secret(b: _Body) -> bytes:
    secret = b.rest()
    if not 4 <= len(secret) <= 256:
        raise b.fail(f"a cancel key is 4 to 256 bytes, not {len(secret)}")
    return secret


def _p_key(b: _Body) -> m.BackendKeyData:
    return m.BackendKeyData(b.i32(), _secret(b))


def _p_ready(b: _Body) -> m.ReadyForQuery:
    status = b._take(1).decode("latin-1")
    b.end()
    if status not in ("I", "T", "E"):
        raise b.fail(f"transaction status {status!r}")
    return m.ReadyForQuery(status)


def _p_row_description(b: _Body) -> m.RowDescription:
    fields = []
    for _ in range(b.count()):
        name = b.cstr()
        fields.append(m.FieldDescription(name, *_FIELD.unpack(b._take(_FIELD.size))))
    b.end()
    return m.RowDescription(tuple(fields))


def _p_data_row(b: _Body) -> m.DataRow:
    values = tuple(b.value() for _ in range(b.count()))
    b.end()
    return m.DataRow(values)


def _p_command_complete(b: _Body) -> m.CommandComplete:
    tag = b.cstr()
    b.end()
    return m.CommandComplete(tag)


def _p_param_description(b: _Body) -> m.ParameterDescription:
    oids = tuple(b.u32() for _ in range(b.count()))
    b.end()
    return m.ParameterDescription(oids)


def _copy_response(cls: Callable) -> Callable[[_Body], object]:
    def parse(b: _Body):
        fmt = struct.unpack("!b", b._take(1))[0]
        formats = tuple(b.i16() for _ in range(b.count()))
        b.end()
        return cls(fmt, formats)
    return parse


def _p_notification(b: _Body) -> m.NotificationResponse:
    pid, channel, payload = b.i32(), b.cstr(), b.cstr()
    b.end()
    return m.NotificationResponse(pid, channel, payload)


def _p_negotiate(b: _Body) -> m.NegotiateProtocolVersion:
    minor = b.i32()
    n = b.i32()
    if n < 0:
        raise b.fail(f"negative count {n}")
    names = tuple(b.cstr() for _ in range(n))
    b.end()
    return m.NegotiateProtocolVersion(minor, names)


_FRONTEND: dict[int, tuple[str, Callable[[_Body], object]]] = {
    ord("Q"): ("Query", _p_query),
    ord("P"): ("Parse", _p_parse),
    ord("B"): ("Bind", _p_bind),
    ord("D"): ("Describe", _kind_name(m.Describe)),
    ord("C"): ("Close", _kind_name(m.Close)),
    ord("E"): ("Execute", _p_execute),
    ord("S"): ("Sync", _empty(m.Sync)),
    ord("H"): ("Flush", _empty(m.Flush)),
    ord("X"): ("Terminate", _empty(m.Terminate)),
    ord("d"): ("CopyData", lambda b: m.CopyData(b.rest())),
    ord("c"): ("CopyDone", _empty(m.CopyDone)),
    ord("f"): ("CopyFail", _p_copyfail),
    ord("p"): ("PasswordMessage", lambda b: m.PasswordMessage(b.rest())),
    ord("F"): ("FunctionCall", lambda b: m.FunctionCall(b.rest())),
}

_BACKEND: dict[int, tuple[str, Callable[[_Body], object]]] = {
    ord("R"): ("Authentication", _p_auth),
    ord("S"): ("ParameterStatus", _p_param_status),
    ord("K"): ("BackendKeyData", _p_key),
    ord("Z"): ("ReadyForQuery", _p_ready),
    ord("T"): ("RowDescription", _p_row_description),
    ord("D"): ("DataRow", _p_data_row),
    ord("C"): ("CommandComplete", _p_command_complete),
    ord("E"): ("ErrorResponse", lambda b: m.ErrorResponse(_fields_of(b))),
    ord("N"): ("NoticeResponse", lambda b: m.NoticeResponse(_fields_of(b))),
    ord("1"): ("ParseComplete", _empty(m.ParseComplete)),
    ord("2"): ("BindComplete", _empty(m.BindComplete)),
    ord("3"): ("CloseComplete", _empty(m.CloseComplete)),
    ord("n"): ("NoData", _empty(m.NoData)),
    ord("s"): ("PortalSuspended", _empty(m.PortalSuspended)),
    ord("I"): ("EmptyQueryResponse", _empty(m.EmptyQueryResponse)),
    ord("t"): ("ParameterDescription", _p_param_description),
    ord("G"): ("CopyInResponse", _copy_response(m.CopyInResponse)),
    ord("H"): ("CopyOutResponse", _copy_response(m.CopyOutResponse)),
    ord("W"): ("CopyBothResponse", _copy_response(m.CopyBothResponse)),
    ord("d"): ("CopyData", lambda b: m.CopyData(b.rest())),
    ord("c"): ("CopyDone", _empty(m.CopyDone)),
    ord("A"): ("NotificationResponse", _p_notification),
    ord("v"): ("NegotiateProtocolVersion", _p_negotiate),
}


# --------------------------------------------------------------------------- hot path
#
# The messages a relay decodes for every query are parsed by straight-line
# functions that trust struct and bytes.index to fail on bad input, and build
# the message without re-validating what the wire format already guarantees.
# When one fails, the careful parser above runs on the same body to raise a
# precise ProtocolError; tests check that both agree on every input.

def _new(cls: type) -> Callable[..., object]:
    """A constructor that skips ``__post_init__`` (for values a decoder has already checked).

    Generated like dataclasses generates ``__init__``: one straight-line function per class.
    """
    names = [f.name for f in dataclasses.fields(cls)]
    args = ", ".join(f"v{i}" for i in range(len(names)))
    lines = [f"def make({args}):", "    obj = new(cls)"]
    lines += [f"    setattr_(obj, {name!r}, v{i})" for i, name in enumerate(names)]
    lines.append("    return obj")
    scope = {"new": object.__new__, "setattr_": object.__setattr__, "cls": cls}
    exec("\n".join(lines), scope)  # noqa: S102 - code built from dataclass field names only
    return scope["make"]


_unpack_i16 = _I16.unpack_from
_unpack_i32 = _I32.unpack_from
_new_query, _new_parse, _new_bind = _new(m.Query), _new(m.Parse), _new(m.Bind)
_new_execute, _new_describe, _new_close = _new(m.Execute), _new(m.Describe), _new(m.Close)
_KINDS = {ord("S"): "S", ord("P"): "P"}


def _f_query(body: bytes, enc: str) -> m.Query:
    if body.index(0) != len(body) - 1:
        raise ValueError("bytes after the query text")
    return _new_query(body[:-1].decode(enc))


def _f_parse(body: bytes, enc: str) -> m.Parse:
    end = body.index(0)
    name = body[:end].decode(enc)
    pos = end + 1
    end = body.index(0, pos)
    sql = body[pos:end].decode(enc)
    pos = end + 1
    n = _unpack_i16(body, pos)[0]
    if n < 0 or pos + 2 + 4 * n != len(body):
        raise ValueError("bad parameter type count")
    return _new_parse(name, sql, struct.unpack_from(f"!{n}I", body, pos + 2))


def _f_bind(body: bytes, enc: str) -> m.Bind:
    end = body.index(0)
    portal = body[:end].decode(enc)
    pos = end + 1
    end = body.index(0, pos)
    statement = body[pos:end].decode(enc)
    pos = end + 1
    n = _unpack_i16(body, pos)[0]
    if n < 0:
        raise ValueError("negative count")
    pformats = struct.unpack_from(f"!{n}h", body, pos + 2)
    pos += 2 + 2 * n
    n = _unpack_i16(body, pos)[0]
    if n < 0:
        raise ValueError("negative count")
    pos += 2
    size = len(body)
    params = []
    for _ in range(n):
        length = _unpack_i32(body, pos)[0]
        pos += 4
        if length == -1:
            params.append(None)
        elif length < 0 or pos + length > size:
            raise ValueError("bad value length")
        else:
            params.append(body[pos:pos + length])
            pos += length
    n = _unpack_i16(body, pos)[0]
    if n < 0 or pos + 2 + 2 * n != size:
        raise ValueError("bad result format count")
    return _new_bind(portal, statement, pformats, tuple(params),
                     struct.unpack_from(f"!{n}h", body, pos + 2))


def _f_execute(body: bytes, enc: str) -> m.Execute:
    end = body.index(0)
    if end + 5 != len(body):
        raise ValueError("bad length")
    return _new_execute(body[:end].decode(enc), _unpack_i32(body, end + 1)[0])


def _f_kind_name(make: Callable) -> Callable[[bytes, str], object]:
    def parse(body: bytes, enc: str):
        kind = _KINDS[body[0]]
        if body.index(0, 1) != len(body) - 1:
            raise ValueError("bytes after the name")
        return make(kind, body[1:-1].decode(enc))
    return parse


_SYNC, _FLUSH = m.Sync(), m.Flush()


def _f_sync(body: bytes, enc: str) -> m.Sync:
    if body:
        raise ValueError("a body")
    return _SYNC


def _f_flush(body: bytes, enc: str) -> m.Flush:
    if body:
        raise ValueError("a body")
    return _FLUSH


_FAST_FRONTEND: dict[int, Callable[[bytes, str], object]] = {
    ord("Q"): _f_query, ord("P"): _f_parse, ord("B"): _f_bind, ord("E"): _f_execute,
    ord("D"): _f_kind_name(_new_describe), ord("C"): _f_kind_name(_new_close),
    ord("S"): _f_sync, ord("H"): _f_flush,
}


def _parse(table: dict, type_: bytes, body: bytes, encoding: str):
    entry = table.get(type_[0])
    if entry is None:
        return m.Unknown(type_, body)
    name, parser = entry
    b = _Body(body, name, encoding)
    try:
        return parser(b)
    except ValueError as exc:  # a message constructor refused a decoded value
        if isinstance(exc, UnicodeError):
            raise b.fail(f"text is not valid {encoding}") from None
        raise b.fail(str(exc)) from None


def parse_frontend(type_: bytes, body: bytes, encoding: str = "utf-8") -> m.FrontendMessage:
    """Parse the body of one typed frontend message (``Unknown`` for a type we do not model)."""
    fast = _FAST_FRONTEND.get(type_[0])
    if fast is not None:
        try:
            return fast(body, encoding)
        except (ValueError, IndexError, KeyError, struct.error):
            pass  # the careful parser says what is wrong
    msg = _parse(_FRONTEND, type_, body, encoding)
    if fast is not None:
        raise ProtocolError(f"invalid {type(msg).__name__} message")  # pragma: no cover
    return msg


def parse_frontend_careful(type_: bytes, body: bytes, encoding: str = "utf-8") -> m.FrontendMessage:
    """``parse_frontend`` without the hot path (the tests compare the two)."""
    return _parse(_FRONTEND, type_, body, encoding)


_READY = {bytes([s]): m.ReadyForQuery(chr(s)) for s in b"ITE"}


def parse_backend(type_: bytes, body: bytes, encoding: str = "utf-8") -> m.BackendMessage:
    """Parse the body of one backend message (``Unknown`` for a type we do not model)."""
    if type_ == b"Z":  # the hot one: after every request
        ready = _READY.get(body)
        if ready is not None:
            return ready
    return _parse(_BACKEND, type_, body, encoding)


def parse_startup(packet: bytes, encoding: str = "utf-8") -> m.StartupPhaseMessage:
    """Parse one whole untyped startup-phase packet (length word included)."""
    b = _Body(packet, "startup", encoding)
    length = b.i32()
    if length != len(packet):
        raise b.fail("length word does not match the packet")
    code = b.i32()
    if code == m.SSL_REQUEST_CODE:
        b.end()
        return m.SSLRequest()
    if code == m.GSSENC_REQUEST_CODE:
        b.end()
        return m.GSSENCRequest()
    if code == m.CANCEL_REQUEST_CODE:
        b.what = "CancelRequest"
        return m.CancelRequest(b.i32(), _secret(b))
    if code >> 16 != 3:
        raise b.fail(f"unsupported protocol version {code >> 16}.{code & 0xFFFF} "
                     "(this server speaks 3.x)")
    params: dict[str, str] = {}
    while True:
        key = b.cstr()
        if not key:
            b.end()
            break
        if key in params:
            raise b.fail(f"parameter {key!r} appears twice")
        params[key] = b.cstr()
    try:
        return m.StartupMessage(params, code)
    except ValueError as exc:
        raise b.fail(str(exc)) from None


# --------------------------------------------------------------------------- decoders

class _Decoder:
    """The receive buffer and the typed framing shared by both decoders."""

    def __init__(self, encoding: str = "utf-8", max_length: int = MAX_MESSAGE_LENGTH) -> None:
        self._buf = bytearray()
        self._pos = 0
        self.encoding = encoding
        self.max_length = max_length

    def feed(self, data: bytes) -> None:
        if self._pos and self._pos == len(self._buf):
            self._buf.clear()
            self._pos = 0
        self._buf += data

    @property
    def buffered(self) -> int:
        """Bytes received and not yet returned as a message."""
        return len(self._buf) - self._pos

    def take_buffered(self) -> bytes:
        """Everything buffered and not yet returned, removed from the decoder."""
        rest = bytes(self._buf[self._pos:])
        self._buf.clear()
        self._pos = 0
        return rest

    def _consume(self, n: int) -> bytes:
        start = self._pos
        self._pos += n
        chunk = bytes(self._buf[start:self._pos])
        if self._pos > 65536 and self._pos * 2 > len(self._buf):
            del self._buf[:self._pos]
            self._pos = 0
        return chunk

    def peek_typed_frames(self, n: int) -> list[bytes]:
        """The whole bytes of up to ``n`` complete typed messages buffered next, not consumed."""
        buf, pos, out = self._buf, self._pos, []
        while len(out) < n and len(buf) - pos >= 5:
            length = _I32.unpack_from(buf, pos + 1)[0]
            if length < 4 or length > self.max_length or len(buf) - pos < length + 1:
                break  # next_typed_frame reports a bad length when it gets there
            out.append(bytes(buf[pos:pos + length + 1]))
            pos += length + 1
        return out

    def next_typed_frame(self) -> tuple[bytes, bytes] | None:
        """(type byte, whole message bytes) of the next typed message, or None."""
        buf, pos = self._buf, self._pos
        if len(buf) - pos < 5:
            return None
        length = _I32.unpack_from(buf, pos + 1)[0]
        if length < 4 or length > self.max_length:
            raise ProtocolError(f"invalid message length {length} for message type "
                                f"{bytes(buf[pos:pos + 1])!r}")
        if len(buf) - pos < length + 1:
            return None
        raw = self._consume(length + 1)
        return raw[:1], raw


class FrontendDecoder(_Decoder):
    """Messages a client sends; the first one (and the one after SSL/GSS requests) is untyped."""

    def __init__(self, encoding: str = "utf-8", max_length: int = MAX_MESSAGE_LENGTH) -> None:
        super().__init__(encoding, max_length)
        self.in_startup = True

    def next_frame(self) -> tuple[bytes | None, bytes] | None:
        """(type byte or None for a startup packet, whole message bytes), or None."""
        if not self.in_startup:
            return self.next_typed_frame()
        buf, pos = self._buf, self._pos
        if len(buf) - pos < 4:
            return None
        length = _I32.unpack_from(buf, pos)[0]
        if length < 8 or length > MAX_STARTUP_LENGTH:
            raise ProtocolError(f"invalid startup packet length {length}")
        if len(buf) - pos < length:
            return None
        return None, self._consume(length)

    def next_message(self) -> m.FrontendMessage | None:
        frame = self.next_frame()
        if frame is None:
            return None
        type_, raw = frame
        if type_ is None:
            msg = parse_startup(raw, self.encoding)
            if isinstance(msg, m.StartupMessage):
                self.in_startup = False
            return msg
        return parse_frontend(type_, raw[5:], self.encoding)


class BackendDecoder(_Decoder):
    """Messages a server sends."""

    def next_frame(self) -> tuple[bytes, bytes] | None:
        return self.next_typed_frame()

    def next_message(self) -> m.BackendMessage | None:
        frame = self.next_typed_frame()
        if frame is None:
            return None
        return parse_backend(frame[0], frame[1][5:], self.encoding)


# --------------------------------------------------------------------------- encoder

def _s(text: str, encoding: str) -> bytes:
    return text.encode(encoding) + b"\0"


def _vals(values: tuple, count_fmt: str = "!h") -> bytes:
    out = [struct.pack(count_fmt, len(values))]
    for v in values:
        out.append(b"\xff\xff\xff\xff" if v is None else _I32.pack(len(v)) + v)
    return b"".join(out)


def _i16s(values: tuple) -> bytes:
    return struct.pack(f"!h{len(values)}h", len(values), *values)


def _oids(values: tuple) -> bytes:
    return struct.pack(f"!h{len(values)}I", len(values), *values)


def _fields_bytes(fields: dict[str, str], enc: str) -> bytes:
    return b"".join(code.encode("latin-1") + _s(v, enc) for code, v in fields.items()) + b"\0"


def _body(msg, enc: str) -> bytes:  # noqa: C901 - one branch per message type, flat on purpose
    t = type(msg)
    if t is m.Query:
        return _s(msg.sql, enc)
    if t is m.Parse:
        return _s(msg.name, enc) + _s(msg.sql, enc) + _oids(msg.param_types)
    if t is m.Bind:
        return (_s(msg.portal, enc) + _s(msg.statement, enc) + _i16s(msg.param_formats)
                + _vals(msg.params) + _i16s(msg.result_formats))
    if t is m.Describe or t is m.Close:
        return msg.kind.encode() + _s(msg.name, enc)
    if t is m.Execute:
        return _s(msg.portal, enc) + _I32.pack(msg.max_rows)
    if t is m.CopyData:
        return msg.data
    if t is m.CopyFail:
        return _s(msg.message, enc)
    if t is m.PasswordMessage:
        return msg.data
    if t is m.FunctionCall:
        return msg.body
    if t is m.Authentication:
        return _I32.pack(msg.code) + msg.data
    if t is m.ParameterStatus:
        return _s(msg.name, enc) + _s(msg.value, enc)
    if t is m.BackendKeyData:
        return _I32.pack(msg.pid) + msg.secret
    if t is m.ReadyForQuery:
        return msg.status.encode()
    if t is m.RowDescription:
        return _I16.pack(len(msg.fields)) + b"".join(
            _s(f.name, enc) + _FIELD.pack(f.table_oid, f.column_attr, f.type_oid, f.type_size,
                                          f.type_modifier, f.format) for f in msg.fields)
    if t is m.DataRow:
        return _vals(msg.values)
    if t is m.CommandComplete:
        return _s(msg.tag, enc)
    if t is m.ErrorResponse or t is m.NoticeResponse:
        return _fields_bytes(msg.fields, enc)
    if t is m.ParameterDescription:
        return _oids(msg.type_oids)
    if t is m.CopyInResponse or t is m.CopyOutResponse or t is m.CopyBothResponse:
        return struct.pack("!b", msg.format) + _i16s(msg.column_formats)
    if t is m.NotificationResponse:
        return _I32.pack(msg.pid) + _s(msg.channel, enc) + _s(msg.payload, enc)
    if t is m.NegotiateProtocolVersion:
        return struct.pack("!ii", msg.newest_minor, len(msg.unrecognized)) + b"".join(
            _s(n, enc) for n in msg.unrecognized)
    if t is m.Unknown:
        return msg.body
    return b""  # the empty messages: Sync, Flush, Terminate, CopyDone, ParseComplete, ...


def encode(msg, encoding: str = "utf-8") -> bytes:
    """The wire bytes of one message."""
    t = type(msg)
    if t is m.StartupMessage:
        body = _I32.pack(msg.version) + b"".join(
            _s(k, encoding) + _s(v, encoding) for k, v in msg.params.items()) + b"\0"
        return _I32.pack(len(body) + 4) + body
    if t is m.SSLRequest:
        return struct.pack("!ii", 8, m.SSL_REQUEST_CODE)
    if t is m.GSSENCRequest:
        return struct.pack("!ii", 8, m.GSSENC_REQUEST_CODE)
    if t is m.CancelRequest:
        return struct.pack("!iii", 12 + len(msg.secret), m.CANCEL_REQUEST_CODE, msg.pid) + msg.secret
    type_ = msg.type if t is m.Unknown else t.TYPE
    body = _body(msg, encoding)
    return type_ + _I32.pack(len(body) + 4) + body


# --------------------------------------------------------------------------- builders

def error_response(severity: str, sqlstate: str, message: str, *, detail: str | None = None,
                   hint: str | None = None, position: int | None = None,
                   notice: bool = False) -> m.ErrorResponse | m.NoticeResponse:
    """An ErrorResponse (or NoticeResponse) as PostgreSQL builds one: S, V, C, M, D, H, P."""
    fields = {"S": severity, "V": severity, "C": sqlstate, "M": message}
    if detail is not None:
        fields["D"] = detail
    if hint is not None:
        fields["H"] = hint
    if position is not None:
        fields["P"] = str(position)
    return (m.NoticeResponse if notice else m.ErrorResponse)(fields)


def error_bytes(severity: str, sqlstate: str, message: str, **kw) -> bytes:
    return encode(error_response(severity, sqlstate, message, **kw))


def row_description(columns: list[tuple[str, int]] | list[m.FieldDescription],
                    formats: tuple[int, ...] = ()) -> m.RowDescription:
    """From FieldDescriptions, or from (name, type_oid) pairs with per-column ``formats``
    (the Bind shorthand: none = all text, one = for all, else one per column)."""
    fields = []
    for i, col in enumerate(columns):
        if isinstance(col, m.FieldDescription):
            fields.append(col)
            continue
        name, oid = col
        fmt = 0 if not formats else formats[0] if len(formats) == 1 else formats[i]
        fields.append(m.FieldDescription(name, type_oid=oid, format=fmt))
    return m.RowDescription(tuple(fields))


def data_row(values) -> m.DataRow:
    return m.DataRow(tuple(values))


def command_complete(tag: str) -> m.CommandComplete:
    return m.CommandComplete(tag)


def ready_for_query(status: str = "I") -> m.ReadyForQuery:
    return m.ReadyForQuery(status)


class FrameScanner:
    """Walks a stream of typed messages that the caller passes on as it came, unchanged.

    ``feed(data)`` returns ``[(message, end), ...]`` for the complete messages
    in ``data`` whose type is in ``want`` (``end``: the offset in ``data`` just
    after the message); every other message is skipped by its length, without
    being buffered or copied, so relaying a large result costs one length read
    per message. ``want = None`` means every type. ``at_boundary`` is true when
    no message is cut between two ``feed`` calls.
    """

    def __init__(self, want: bytes | None, parse: Callable = parse_backend,
                 encoding: str = "utf-8", max_length: int = (1 << 31) - 1) -> None:
        self.want = None if want is None else frozenset(want)
        self.parse = parse
        self.encoding = encoding
        self.max_length = max_length
        self._skip = 0                  # bytes still to skip of an unwanted message
        self._partial = bytearray()     # a header, or a wanted message, cut by a chunk end
        self._need = 0                  # whole size of the wanted message in _partial

    @property
    def at_boundary(self) -> bool:
        return not self._skip and not self._partial

    def _header(self, head, pos: int) -> tuple[int, int]:
        t = head[pos]
        length = _I32.unpack_from(head, pos + 1)[0]
        if length < 4 or length > self.max_length:
            raise ProtocolError(f"invalid message length {length} for message type {chr(t)!r}")
        return t, length

    def feed(self, data: bytes) -> list[tuple[object, int]]:
        out: list[tuple[object, int]] = []
        n = len(data)
        pos = 0
        if self._skip:
            if self._skip >= n:
                self._skip -= n
                return out
            pos, self._skip = self._skip, 0
        partial = self._partial
        if partial:
            if len(partial) < 5:
                take = min(5 - len(partial), n - pos)
                partial += data[pos:pos + take]
                pos += take
                if len(partial) < 5:
                    return out
                t, length = self._header(partial, 0)
                if self.want is not None and t not in self.want:
                    partial.clear()
                    skip = length - 4
                    if skip > n - pos:
                        self._skip = skip - (n - pos)
                        return out
                    pos += skip
                else:
                    self._need = length + 1
            if partial:
                take = min(self._need - len(partial), n - pos)
                partial += data[pos:pos + take]
                pos += take
                if len(partial) < self._need:
                    return out
                raw = bytes(partial)
                partial.clear()
                out.append((self.parse(raw[:1], raw[5:], self.encoding), pos))
        want = self.want
        unpack_from = _I32.unpack_from
        max_length = self.max_length
        while pos < n:
            if n - pos < 5:
                partial += data[pos:]
                return out
            t = data[pos]
            length = unpack_from(data, pos + 1)[0]
            if length < 4 or length > max_length:
                self._header(data, pos)  # raises
            end = pos + 1 + length
            if want is None or t in want:
                if end > n:
                    partial += data[pos:]
                    self._need = length + 1
                    return out
                out.append((self.parse(data[pos:pos + 1], data[pos + 5:end], self.encoding), end))
            elif end > n:
                self._skip = end - n
                return out
            pos = end
        return out
