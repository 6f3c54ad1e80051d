"""The peer codec: whole buffer, byte by byte, trailing bytes, and hostile input."""

import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from replicate.errors import ProtocolError
from replicate.paxos.ballot import Ballot
from replicate.paxos.messages import NOOP, Chosen, Forward, Heartbeat, Value
from replicate.runtime.peerwire import (STARTUP, FrameDecoder, Hello, ReadIndexReply,
                                        ReadIndexRequest, StatusReply, StatusRequest, Submit,
                                        SubmitReply, encode, is_peer_startup)

FRAMES = [Hello(2), Hello(-1), Heartbeat(Ballot(3, 1), 17), Forward(Value("p1-9", b"\x00xyz")),
          Submit(5, "r-1", "é".encode()), SubmitReply(5, b'{"ok":1}'), ReadIndexRequest(9),
          ReadIndexReply(9, True, 42), StatusRequest(1), StatusReply(1, b"{}"),
          Chosen(Ballot(3, 1), 18, (Value("p1-10", b"\x00a"), NOOP, Value("é", b"")), 17)]


def decode_all(data: bytes, step: int) -> list:
    decoder, out = FrameDecoder(), []
    for i in range(0, len(data), step):
        decoder.feed(data[i:i + step])
        while (frame := decoder.next_frame()) is not None:
            out.append(frame)
    assert decoder.buffered == 0
    return out


@pytest.mark.parametrize("step", [10_000, 1, 3])
def test_whole_and_byte_by_byte(step: int) -> None:
    data = b"".join(encode(f) for f in FRAMES)
    assert decode_all(data, step) == FRAMES


def test_trailing_partial_frame_waits() -> None:
    decoder = FrameDecoder()
    decoder.feed(encode(FRAMES[2]) + encode(FRAMES[3])[:4])
    assert decoder.next_frame() == FRAMES[2]
    assert decoder.next_frame() is None
    assert decoder.buffered == 4


@pytest.mark.parametrize("data, words", [
    (b"Z" + struct.pack("!i", 4), "unknown peer frame type"),
    (b"H" + struct.pack("!i", 3), "out of range"),
    (b"H" + struct.pack("!i", 2**30), "out of range"),
    (b"H" + struct.pack("!i", 8) + b"\0" * 4, "shorter"),
    (b"R" + struct.pack("!i", 14) + b"\0" * 10, "trailing"),
    (b"H" + struct.pack("!i", 24) + struct.pack("!qiq", -1, 0, 0), "invalid peer frame"),
    (b"F" + struct.pack("!i", 14) + struct.pack("!i", 2) + b"\xff\xfe" + struct.pack("!i", 0),
     "UTF-8"),
])
def test_malformed(data: bytes, words: str) -> None:
    decoder = FrameDecoder()
    decoder.feed(data)
    with pytest.raises(ProtocolError, match=words):
        decoder.next_frame()


@given(st.binary(max_size=200))
def test_fuzz_never_crashes_otherwise(data: bytes) -> None:
    decoder = FrameDecoder()
    decoder.feed(data)
    try:
        while decoder.next_frame() is not None:
            pass
    except ProtocolError:
        pass


def test_startup_is_not_a_postgres_code() -> None:
    assert is_peer_startup(STARTUP)
    for code in (196608, 80877102, 80877103, 80877104):
        assert not is_peer_startup(struct.pack("!ii", 8, code))
