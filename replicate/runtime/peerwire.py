"""The proxy-to-proxy protocol: a pure codec, no I/O (h11 style).

Proxies listen on one port each (``proxy`` in cluster.toml). PostgreSQL
clients and other proxies both connect there; a peer announces itself with an
8-byte startup packet whose code no PostgreSQL client sends (PostgreSQL's own
startup, SSLRequest, GSSENCRequest and CancelRequest codes are different), so
the listener can tell the two apart from the first 8 bytes.

After the startup packet both directions carry frames, shaped like
PostgreSQL's: one type byte, an int32 length that counts itself and the body,
then the body. Frames:

====  ======================  ===============================================
type  frame                   body
====  ======================  ===============================================
``I`` Hello                   int32 sender replica id (-1: a client, not a proxy)
``H`` Heartbeat (core)        int64 round, int32 proposer, int64 commit_upto
``F`` Forward (core)          str request_id, bytes payload
``C`` Chosen (core)           int64 round, int32 proposer, int64 first_slot,
                              int64 marked_upto, int32 n, n x (str request_id, bytes payload)
``S`` Submit                  int64 token, str request_id, bytes payload (an Entry)
``O`` SubmitReply             int64 token, bytes JSON (an Outcome or an error)
``R`` ReadIndexRequest        int64 token
``r`` ReadIndexReply          int64 token, int8 ok, int64 index
``Q`` StatusRequest           int64 token
``q`` StatusReply             int64 token, bytes JSON
====  ======================  ===============================================

``str`` and ``bytes`` are an int32 length and that many bytes (str in UTF-8).
A malformed frame raises ``ProtocolError``; the caller closes that connection
only.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Union

from replicate.errors import ProtocolError
from replicate.paxos.ballot import Ballot
from replicate.paxos.messages import Chosen, Forward, Heartbeat, Value

PEER_CODE = 80877199          # PostgreSQL uses 196608 (v3), 80877102..80877104
STARTUP = struct.pack("!ii", 8, PEER_CODE)
MAX_FRAME = 64 * 1024 * 1024  # a frame larger than this is hostile or broken
CLIENT = -1


@dataclass(frozen=True, slots=True)
class Hello:
    sender: int


@dataclass(frozen=True, slots=True)
class Submit:
    token: int
    request_id: str
    payload: bytes


@dataclass(frozen=True, slots=True)
class SubmitReply:
    token: int
    body: bytes


@dataclass(frozen=True, slots=True)
class ReadIndexRequest:
    token: int


@dataclass(frozen=True, slots=True)
class ReadIndexReply:
    token: int
    ok: bool
    index: int


@dataclass(frozen=True, slots=True)
class StatusRequest:
    token: int


@dataclass(frozen=True, slots=True)
class StatusReply:
    token: int
    body: bytes


Frame = Union[Hello, Heartbeat, Chosen, Forward, Submit, SubmitReply, ReadIndexRequest, ReadIndexReply,
              StatusRequest, StatusReply]


def _str(s: str) -> bytes:
    raw = s.encode()
    return struct.pack("!i", len(raw)) + raw


def _bytes(b: bytes) -> bytes:
    return struct.pack("!i", len(b)) + b


def encode(frame: Frame) -> bytes:
    """The bytes of one frame."""
    if isinstance(frame, Heartbeat):
        kind, body = b"H", struct.pack("!qiq", frame.ballot.round, frame.ballot.proposer,
                                       frame.commit_upto)
    elif isinstance(frame, Forward):
        kind, body = b"F", _str(frame.value.request_id) + _bytes(frame.value.payload)
    elif isinstance(frame, Chosen):
        kind = b"C"
        body = struct.pack("!qiqqi", frame.ballot.round, frame.ballot.proposer,
                           frame.first_slot, frame.marked_upto, len(frame.values)) + b"".join(
            _str(v.request_id) + _bytes(v.payload) for v in frame.values)
    elif isinstance(frame, Hello):
        kind, body = b"I", struct.pack("!i", frame.sender)
    elif isinstance(frame, Submit):
        kind, body = b"S", struct.pack("!q", frame.token) + _str(frame.request_id) + _bytes(frame.payload)
    elif isinstance(frame, SubmitReply):
        kind, body = b"O", struct.pack("!q", frame.token) + _bytes(frame.body)
    elif isinstance(frame, ReadIndexRequest):
        kind, body = b"R", struct.pack("!q", frame.token)
    elif isinstance(frame, ReadIndexReply):
        kind, body = b"r", struct.pack("!qbq", frame.token, int(frame.ok), frame.index)
    elif isinstance(frame, StatusRequest):
        kind, body = b"Q", struct.pack("!q", frame.token)
    elif isinstance(frame, StatusReply):
        kind, body = b"q", struct.pack("!q", frame.token) + _bytes(frame.body)
    else:
        raise TypeError(f"not a peer frame: {frame!r}")
    return kind + struct.pack("!i", len(body) + 4) + body


class _Reader:
    __slots__ = ("data", "pos")

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    def take(self, n: int) -> bytes:
        if n < 0 or self.pos + n > len(self.data):
            raise ProtocolError("peer frame is shorter than its fields")
        out = self.data[self.pos:self.pos + n]
        self.pos += n
        return out

    def unpack(self, fmt: str) -> tuple:
        return struct.unpack(fmt, self.take(struct.calcsize(fmt)))

    def bytes_(self) -> bytes:
        (n,) = self.unpack("!i")
        return self.take(n)

    def str_(self) -> str:
        try:
            return self.bytes_().decode()
        except UnicodeDecodeError:
            raise ProtocolError("peer frame holds invalid UTF-8") from None

    def done(self) -> None:
        if self.pos != len(self.data):
            raise ProtocolError("peer frame has trailing bytes")


def decode_body(kind: bytes, body: bytes) -> Frame:
    """Decode one frame body; raises ProtocolError on anything malformed."""
    r = _Reader(body)
    try:
        if kind == b"H":
            rnd, proposer, commit = r.unpack("!qiq")
            frame: Frame = Heartbeat(Ballot(rnd, proposer), commit)
        elif kind == b"F":
            frame = Forward(Value(r.str_(), r.bytes_()))
        elif kind == b"C":
            rnd, proposer, first, marked, n = r.unpack("!qiqqi")
            if n < 0 or n > len(body):
                raise ProtocolError("peer frame 'C' has an impossible value count")
            frame = Chosen(Ballot(rnd, proposer), first,
                           tuple(Value(r.str_(), r.bytes_()) for _ in range(n)), marked)
        elif kind == b"I":
            (sender,) = r.unpack("!i")
            frame = Hello(sender)
        elif kind == b"S":
            (token,) = r.unpack("!q")
            frame = Submit(token, r.str_(), r.bytes_())
        elif kind == b"O":
            (token,) = r.unpack("!q")
            frame = SubmitReply(token, r.bytes_())
        elif kind == b"R":
            (token,) = r.unpack("!q")
            frame = ReadIndexRequest(token)
        elif kind == b"r":
            token, ok, index = r.unpack("!qbq")
            frame = ReadIndexReply(token, bool(ok), index)
        elif kind == b"Q":
            (token,) = r.unpack("!q")
            frame = StatusRequest(token)
        elif kind == b"q":
            (token,) = r.unpack("!q")
            frame = StatusReply(token, r.bytes_())
        else:
            raise ProtocolError(f"unknown peer frame type {kind!r}")
    except (ValueError, TypeError) as exc:  # a message's own validation refused it
        raise ProtocolError(f"invalid peer frame {kind!r}: {exc}") from None
    r.done()
    return frame


class FrameDecoder:
    """Buffers bytes (``feed``) and hands out whole frames (``next_frame``), or None."""

    __slots__ = ("_buf",)

    def __init__(self) -> None:
        self._buf = bytearray()

    def feed(self, data: bytes) -> None:
        self._buf += data

    def next_frame(self) -> Frame | None:
        if len(self._buf) < 5:
            return None
        kind = bytes(self._buf[:1])
        (length,) = struct.unpack_from("!i", self._buf, 1)
        if length < 4 or length > MAX_FRAME:
            raise ProtocolError(f"peer frame length {length} is out of range")
        if len(self._buf) < 1 + length:
            return None
        body = bytes(self._buf[5:1 + length])
        del self._buf[:1 + length]
        return decode_body(kind, body)

    @property
    def buffered(self) -> int:
        return len(self._buf)


def is_peer_startup(first8: bytes) -> bool:
    """Whether the first 8 bytes of a connection are a peer's startup packet."""
    return first8 == STARTUP
