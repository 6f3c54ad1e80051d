"""The wire-protocol codec: round trips, whole buffer / byte by byte / trailing bytes, hostile input."""

from __future__ import annotations

import struct

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from replicate.errors import ProtocolError
from replicate.pgwire import codec
from replicate.pgwire import messages as m

STARTUP = [
    m.StartupMessage({"user": "postgres", "database": "app", "application_name": "é"}),
    m.StartupMessage({}, version=(3 << 16) | 2),
    m.SSLRequest(),
    m.GSSENCRequest(),
    m.CancelRequest(1234, b"\x01\x02\x03\x04"),
    m.CancelRequest(-1, bytes(range(32))),
]

FRONTEND = [
    m.Query("SELECT 1"), m.Query(""), m.Query("SELECT 'ünïcode' -- ☃"),
    m.Parse("", "SELECT $1::int", (23,)), m.Parse("s1", "SELECT $1, $2", (0, 4294967295)),
    m.Bind("", "", (), (), ()),
    m.Bind("p", "s1", (0, 1), (b"42", None, b"", b"\x00\xff"), (1,)),
    m.Describe("S", "s1"), m.Describe("P", ""), m.Close("S", "s1"), m.Close("P", "p"),
    m.Execute("", 0), m.Execute("p", 100), m.Sync(), m.Flush(), m.Terminate(),
    m.CopyData(b"1\tone\n"), m.CopyData(b""), m.CopyDone(), m.CopyFail("stop"),
    m.PasswordMessage(b"md5abc\0"), m.PasswordMessage(b"SCRAM-SHA-256\0\0\0\0\x05n,,n="),
    m.FunctionCall(b"\0\0\0\x01\0\0"), m.Unknown(b"@", b"whatever"), m.Unknown(b"z"),
]

BACKEND = [
    m.Authentication(m.AUTH_OK), m.Authentication(m.AUTH_MD5_PASSWORD, b"salt"),
    m.Authentication(m.AUTH_SASL, b"SCRAM-SHA-256\0\0"),
    m.ParameterStatus("TimeZone", "UTC"), m.BackendKeyData(42, b"\0\0\0\7"),
    m.BackendKeyData(42, bytes(32)),
    m.ReadyForQuery("I"), m.ReadyForQuery("T"), m.ReadyForQuery("E"),
    m.RowDescription(()),
    m.RowDescription((m.FieldDescription("a", 16384, 1, 23, 4, -1, 0),
                      m.FieldDescription("b", 0, 0, 4294967295, -1, 65540, 1))),
    m.DataRow(()), m.DataRow((b"1", None, b"", b"x" * 300)),
    m.CommandComplete("INSERT 0 1"), m.CommandComplete("SELECT 3"),
    m.ErrorResponse({"S": "ERROR", "V": "ERROR", "C": "42601", "M": "syntax error", "P": "8"}),
    m.NoticeResponse({"S": "NOTICE", "C": "00000", "M": "hi"}),
    m.ParseComplete(), m.BindComplete(), m.CloseComplete(), m.NoData(), m.PortalSuspended(),
    m.EmptyQueryResponse(), m.ParameterDescription(()), m.ParameterDescription((23, 25)),
    m.CopyInResponse(0, (0, 0)), m.CopyOutResponse(1, (1,)), m.CopyBothResponse(0, ()),
    m.CopyData(b"row\n"), m.CopyDone(), m.NotificationResponse(7, "chan", "payload"),
    m.NegotiateProtocolVersion(0, ("_pq_.x",)), m.Unknown(b"?", b"\0\1"),
]


def frontend_stream(msgs) -> bytes:
    return b"".join(codec.encode(x) for x in msgs)


def drain(decoder) -> list:
    out = []
    while (msg := decoder.next_message()) is not None:
        out.append(msg)
    return out


def session_frontend(msgs):
    """A valid client stream: a StartupMessage first, then typed messages."""
    return [STARTUP[0], *msgs]


# --------------------------------------------------------------------------- round trips

@pytest.mark.parametrize("msg", STARTUP + FRONTEND + BACKEND, ids=repr)
def test_encode_then_decode_is_identity_and_bytes_round_trip(msg) -> None:
    data = codec.encode(msg)
    if type(msg) in (m.StartupMessage, m.SSLRequest, m.GSSENCRequest, m.CancelRequest):
        decoder = codec.FrontendDecoder()
    elif msg in BACKEND and msg not in FRONTEND:
        decoder = codec.BackendDecoder()
    else:
        decoder = codec.FrontendDecoder()
        decoder.in_startup = False
    decoder.feed(data)
    got = decoder.next_message()
    assert got == msg
    assert codec.encode(got) == data
    assert decoder.next_message() is None
    assert decoder.buffered == 0


def test_backend_messages_round_trip_on_the_backend_decoder() -> None:
    data = b"".join(codec.encode(x) for x in BACKEND)
    decoder = codec.BackendDecoder()
    decoder.feed(data)
    assert drain(decoder) == BACKEND


# --------------------------------------------------------------------------- h11 test_io style

@pytest.mark.parametrize("side", ["frontend", "backend"])
def test_whole_buffer_then_byte_by_byte_then_trailing_bytes(side) -> None:
    if side == "frontend":
        msgs = session_frontend(FRONTEND)
        make = codec.FrontendDecoder
    else:
        msgs = BACKEND
        make = codec.BackendDecoder
    data = b"".join(codec.encode(x) for x in msgs)

    whole = make()
    whole.feed(data)
    assert drain(whole) == msgs

    bytewise = make()
    got = []
    for i in range(len(data)):
        bytewise.feed(data[i:i + 1])
        got.extend(drain(bytewise))
    assert got == msgs

    trailing = make()
    extra = codec.encode(msgs[-1])[:-1] if len(codec.encode(msgs[-1])) > 1 else b"S"
    trailing.feed(data + extra)
    assert drain(trailing) == msgs
    assert trailing.buffered == len(extra)
    assert trailing.take_buffered() == extra


def test_ssl_request_then_startup() -> None:
    decoder = codec.FrontendDecoder()
    decoder.feed(codec.encode(m.SSLRequest()) + codec.encode(STARTUP[0]) + codec.encode(m.Sync()))
    assert drain(decoder) == [m.SSLRequest(), STARTUP[0], m.Sync()]
    assert not decoder.in_startup


def test_startup_phase_expects_untyped_messages_until_startup() -> None:
    decoder = codec.FrontendDecoder()
    decoder.feed(codec.encode(m.Query("SELECT 1")))  # 'Q' + length: an absurd startup length
    with pytest.raises(ProtocolError):
        decoder.next_message()


# --------------------------------------------------------------------------- hostile input

def typed(type_: bytes, body: bytes) -> bytes:
    return type_ + struct.pack("!i", len(body) + 4) + body


HOSTILE_FRONTEND = [
    ("length < 4", b"Q" + struct.pack("!i", 3)),
    ("negative length", b"Q" + struct.pack("!i", -5)),
    ("length > 1 GiB", b"d" + struct.pack("!i", codec.MAX_MESSAGE_LENGTH + 1)),
    ("query without NUL", typed(b"Q", b"SELECT 1")),
    ("query not UTF-8", typed(b"Q", b"SELECT '\xff'\0")),
    ("query with bytes after NUL", typed(b"Q", b"SELECT 1\0x")),
    ("parse truncated", typed(b"P", b"\0SELECT 1\0\0\2\0\0")),
    ("parse negative count", typed(b"P", b"\0SELECT 1\0\xff\xff")),
    ("bind truncated value", typed(b"B", b"\0\0\0\0\0\1\0\0\0\x10ab")),
    ("bind negative value length", typed(b"B", b"\0\0\0\0\0\1\xff\xff\xff\xfe\0\0")),
    ("bind missing result formats", typed(b"B", b"\0\0\0\0\0\0")),
    ("describe bad kind", typed(b"D", b"X\0")),
    ("describe empty", typed(b"D", b"")),
    ("close without name", typed(b"C", b"S")),
    ("execute truncated", typed(b"E", b"\0\0\0")),
    ("sync with a body", typed(b"S", b"x")),
    ("terminate with a body", typed(b"X", b"\0")),
    ("copyfail without NUL", typed(b"f", b"oops")),
]

HOSTILE_STARTUP = [
    ("startup length < 8", struct.pack("!ii", 4, 196608)),
    ("startup length huge", struct.pack("!ii", 1 << 20, 196608)),
    ("protocol 2", struct.pack("!ii", 9, 2 << 16) + b"\0"),
    ("startup without final NUL", struct.pack("!ii", 16, 196608) + b"user\0bob"),
    ("startup duplicate parameter", struct.pack("!ii", 23, 196608) + b"user\0a\0user\0b\0\0"),
    ("cancel key too short", struct.pack("!iiih", 14, m.CANCEL_REQUEST_CODE, 1, 2)),
    ("ssl request with a body", struct.pack("!iii", 12, m.SSL_REQUEST_CODE, 0)),
]

HOSTILE_BACKEND = [
    ("ready bad status", typed(b"Z", b"Q")),
    ("ready empty", typed(b"Z", b"")),
    ("row description truncated", typed(b"T", b"\0\1a\0\0\0")),
    ("data row negative length", typed(b"D", b"\0\1\xff\xff\xff\xf0")),
    ("error duplicate field", typed(b"E", b"Mx\0My\0\0")),
    ("error without terminator", typed(b"E", b"Mx\0")),
    ("key data short", typed(b"K", b"\0\0\0\1\0")),
    ("auth truncated", typed(b"R", b"\0\0")),
    ("negotiate negative count", typed(b"v", b"\0\0\0\0\xff\xff\xff\xff")),
]


@pytest.mark.parametrize("why,data", HOSTILE_FRONTEND, ids=[w for w, _ in HOSTILE_FRONTEND])
def test_hostile_frontend_messages_raise_protocol_error(why, data) -> None:
    decoder = codec.FrontendDecoder()
    decoder.in_startup = False
    decoder.feed(data)
    with pytest.raises(ProtocolError) as info:
        decoder.next_message()
    assert info.value.sqlstate == "08P01"
    assert str(info.value)


@pytest.mark.parametrize("why,data", HOSTILE_STARTUP, ids=[w for w, _ in HOSTILE_STARTUP])
def test_hostile_startup_packets_raise_protocol_error(why, data) -> None:
    decoder = codec.FrontendDecoder()
    decoder.feed(data)
    with pytest.raises(ProtocolError):
        decoder.next_message()


@pytest.mark.parametrize("why,data", HOSTILE_BACKEND, ids=[w for w, _ in HOSTILE_BACKEND])
def test_hostile_backend_messages_raise_protocol_error(why, data) -> None:
    decoder = codec.BackendDecoder()
    decoder.feed(data)
    with pytest.raises(ProtocolError):
        decoder.next_message()


def test_client_encoding_other_than_utf8() -> None:
    decoder = codec.FrontendDecoder(encoding=codec.python_encoding("LATIN1"))
    decoder.in_startup = False
    decoder.feed(typed(b"Q", b"SELECT '\xe9'\0"))
    msg = decoder.next_message()
    assert msg == m.Query("SELECT 'é'")
    assert codec.encode(msg, "latin-1") == typed(b"Q", b"SELECT '\xe9'\0")
    assert codec.python_encoding("sql_ascii") == "latin-1"
    assert codec.python_encoding("UTF8") == "utf-8"


def test_constructors_refuse_what_the_wire_cannot_carry() -> None:
    for bad in (lambda: m.Query("a\0b"), lambda: m.ReadyForQuery("X"), lambda: m.Describe("Q", ""),
                lambda: m.Execute("", 1 << 40), lambda: m.Bind("", "", (), ("text",), ()),
                lambda: m.ErrorResponse({"MM": "x"}), lambda: m.StartupMessage({"": "x"}),
                lambda: m.StartupMessage({}, version=2 << 16), lambda: m.Unknown(b"ab")):
        with pytest.raises(ValueError):
            bad()


# --------------------------------------------------------------------------- builders

def test_builders_make_what_postgres_sends() -> None:
    err = codec.error_response("ERROR", "0A000", "no", detail="d", hint="h")
    assert err.fields == {"S": "ERROR", "V": "ERROR", "C": "0A000", "M": "no", "D": "d", "H": "h"}
    assert err.sqlstate == "0A000" and err.message == "no"
    assert isinstance(codec.error_response("NOTICE", "00000", "n", notice=True), m.NoticeResponse)
    rd = codec.row_description([("id", 23), ("v", 25)], formats=(1,))
    assert [f.format for f in rd.fields] == [1, 1]
    assert [f.type_oid for f in rd.fields] == [23, 25]
    data = b"".join(codec.encode(x) for x in (rd, codec.data_row([b"1", None]),
                                               codec.command_complete("INSERT 0 1"),
                                               codec.ready_for_query("I")))
    decoder = codec.BackendDecoder()
    decoder.feed(data)
    assert [type(x) for x in drain(decoder)] == [m.RowDescription, m.DataRow, m.CommandComplete,
                                                 m.ReadyForQuery]
    assert codec.error_bytes("FATAL", "08P01", "bad")[:1] == b"E"


# --------------------------------------------------------------------------- the frame scanner

@settings(max_examples=200, deadline=None)
@given(cuts=st.lists(st.integers(min_value=0, max_value=2000), max_size=20),
       want=st.sampled_from([b"ZSKE", b"D", b"", None]))
def test_frame_scanner_finds_the_same_messages_however_the_stream_is_cut(cuts, want) -> None:
    data = b"".join(codec.encode(x) for x in BACKEND)
    expected = [x for x in BACKEND if want is None or codec.encode(x)[:1] in want
                and not (isinstance(x, m.Unknown) and x.type not in want)]
    scanner = codec.FrameScanner(want)
    points = sorted({c % (len(data) + 1) for c in cuts} | {0, len(data)})
    got = []
    for a, b in zip(points, points[1:]):
        chunk = data[a:b]
        for msg, end in scanner.feed(chunk):
            assert 0 < end <= len(chunk)
            got.append(msg)
    assert got == expected
    assert scanner.at_boundary


def test_frame_scanner_refuses_a_bad_length() -> None:
    with pytest.raises(ProtocolError):
        codec.FrameScanner(b"Z").feed(b"Z\0\0\0\1")


# --------------------------------------------------------------------------- fuzz

def _feed_all(decoder, chunks) -> None:
    try:
        for chunk in chunks:
            decoder.feed(chunk)
            while decoder.next_message() is not None:
                pass
    except ProtocolError:
        pass


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.binary(max_size=64), max_size=8), st.booleans())
def test_random_bytes_only_ever_raise_protocol_error(chunks, startup_done) -> None:
    front = codec.FrontendDecoder()
    front.in_startup = not startup_done
    _feed_all(front, chunks)
    _feed_all(codec.BackendDecoder(), chunks)
    scanner = codec.FrameScanner(b"ZSKE")
    try:
        for chunk in chunks:
            scanner.feed(chunk)
    except ProtocolError:
        pass


VALID_FRONTEND = frontend_stream(session_frontend(FRONTEND))
VALID_BACKEND = b"".join(codec.encode(x) for x in BACKEND)


@settings(max_examples=400, deadline=None)
@given(st.data())
def test_mutated_valid_streams_only_ever_raise_protocol_error(data) -> None:
    for valid, make in ((VALID_FRONTEND, codec.FrontendDecoder), (VALID_BACKEND, codec.BackendDecoder)):
        buf = bytearray(valid)
        for _ in range(data.draw(st.integers(1, 6))):
            op = data.draw(st.sampled_from(["flip", "delete", "insert"]))
            i = data.draw(st.integers(0, len(buf) - 1))
            if op == "flip":
                buf[i] = data.draw(st.integers(0, 255))
            elif op == "delete":
                del buf[i:i + data.draw(st.integers(1, 8))]
            else:
                buf[i:i] = data.draw(st.binary(min_size=1, max_size=8))
        _feed_all(make(), [bytes(buf)])


# --------------------------------------------------------------------------- generated messages

names = st.text(st.characters(blacklist_characters="\0", blacklist_categories=("Cs",)), max_size=12)
oids = st.integers(0, (1 << 32) - 1)
i16 = st.integers(-(1 << 15), (1 << 15) - 1)
i32 = st.integers(-(1 << 31), (1 << 31) - 1)
values = st.lists(st.none() | st.binary(max_size=16), max_size=6).map(tuple)

frontend_messages = st.one_of(
    st.builds(m.Query, names),
    st.builds(m.Parse, names, names, st.lists(oids, max_size=5).map(tuple)),
    st.builds(m.Bind, names, names, st.lists(i16, max_size=4).map(tuple), values,
              st.lists(i16, max_size=4).map(tuple)),
    st.builds(m.Describe, st.sampled_from("SP"), names),
    st.builds(m.Close, st.sampled_from("SP"), names),
    st.builds(m.Execute, names, i32),
    st.sampled_from([m.Sync(), m.Flush(), m.Terminate(), m.CopyDone()]),
    st.builds(m.CopyData, st.binary(max_size=32)),
    st.builds(m.CopyFail, names),
    st.builds(m.PasswordMessage, st.binary(max_size=32)),
    st.builds(m.FunctionCall, st.binary(max_size=32)),
    st.builds(m.Unknown, st.sampled_from([b"@", b"x", b"~", b"\0"]), st.binary(max_size=16)),
)

error_fields = st.dictionaries(st.characters(min_codepoint=1, max_codepoint=255), names, max_size=6)
backend_messages = st.one_of(
    st.builds(m.Authentication, i32, st.binary(max_size=16)),
    st.builds(m.ParameterStatus, names, names),
    st.builds(m.BackendKeyData, i32, st.binary(min_size=4, max_size=32)),
    st.builds(m.ReadyForQuery, st.sampled_from("ITE")),
    st.builds(m.RowDescription, st.lists(st.builds(m.FieldDescription, names, oids, i16, oids, i16,
                                                   i32, i16), max_size=4).map(tuple)),
    st.builds(m.DataRow, values),
    st.builds(m.CommandComplete, names),
    st.builds(m.ErrorResponse, error_fields),
    st.builds(m.NoticeResponse, error_fields),
    st.sampled_from([m.ParseComplete(), m.BindComplete(), m.CloseComplete(), m.NoData(),
                     m.PortalSuspended(), m.EmptyQueryResponse(), m.CopyDone()]),
    st.builds(m.ParameterDescription, st.lists(oids, max_size=5).map(tuple)),
    st.builds(m.CopyInResponse, st.integers(-128, 127), st.lists(i16, max_size=4).map(tuple)),
    st.builds(m.CopyOutResponse, st.integers(-128, 127), st.lists(i16, max_size=4).map(tuple)),
    st.builds(m.CopyBothResponse, st.integers(-128, 127), st.lists(i16, max_size=4).map(tuple)),
    st.builds(m.CopyData, st.binary(max_size=32)),
    st.builds(m.NotificationResponse, i32, names, names),
    st.builds(m.NegotiateProtocolVersion, i32, st.lists(names.filter(bool), max_size=3).map(tuple)),
    st.builds(m.Unknown, st.sampled_from([b"@", b"x", b"~", b"\0"]), st.binary(max_size=16)),
)
startup_messages = st.one_of(
    st.builds(m.StartupMessage, st.dictionaries(names.filter(bool), names, max_size=4),
              st.integers(0, 0xFFFF).map(lambda minor: (3 << 16) | minor)),
    st.builds(m.CancelRequest, i32, st.binary(min_size=4, max_size=64)),
    st.just(m.SSLRequest()), st.just(m.GSSENCRequest()),
)


@settings(max_examples=300, deadline=None)
@given(st.lists(frontend_messages, max_size=8), startup_messages)
def test_generated_frontend_streams_round_trip(msgs, first) -> None:
    if isinstance(first, m.CancelRequest):
        first = m.StartupMessage({"user": "u"})
    stream = [first] + ([m.StartupMessage({})] if not isinstance(first, m.StartupMessage) else [])
    stream += msgs
    data = frontend_stream(stream)
    decoder = codec.FrontendDecoder()
    decoder.feed(data)
    got = drain(decoder)
    assert got == stream
    assert frontend_stream(got) == data


@settings(max_examples=300, deadline=None)
@given(startup_messages)
def test_generated_startup_packets_round_trip(msg) -> None:
    decoder = codec.FrontendDecoder()
    decoder.feed(codec.encode(msg))
    assert decoder.next_message() == msg


@settings(max_examples=300, deadline=None)
@given(st.lists(backend_messages, max_size=8))
def test_generated_backend_streams_round_trip(msgs) -> None:
    data = b"".join(codec.encode(x) for x in msgs)
    decoder = codec.BackendDecoder()
    decoder.feed(data)
    got = drain(decoder)
    assert got == msgs
    assert b"".join(codec.encode(x) for x in got) == data


# --------------------------------------------------------------------------- hot path = careful path

def _outcome(parse, type_: bytes, body: bytes):
    try:
        return parse(type_, body)
    except ProtocolError:
        return ProtocolError


@settings(max_examples=500, deadline=None)
@given(st.sampled_from(list(b"QPBEDCSH")), st.data())
def test_hot_path_parsers_agree_with_the_careful_ones(code, data) -> None:
    type_ = bytes([code])
    valid = [codec.encode(x)[5:] for x in FRONTEND if codec.encode(x)[:1] == type_]
    if valid and data.draw(st.booleans()):
        body = bytearray(data.draw(st.sampled_from(valid)))
        for _ in range(data.draw(st.integers(0, 3))):
            if body and data.draw(st.booleans()):
                body[data.draw(st.integers(0, len(body) - 1))] = data.draw(st.integers(0, 255))
            else:
                i = data.draw(st.integers(0, len(body)))
                body[i:i] = data.draw(st.binary(min_size=1, max_size=4))
        body = bytes(body)
    else:
        body = data.draw(st.binary(max_size=40))
    fast = _outcome(codec.parse_frontend, type_, body)
    careful = _outcome(codec.parse_frontend_careful, type_, body)
    assert fast == careful
    if fast is not ProtocolError:
        assert codec.encode(fast)[5:] == body


def test_peek_typed_frames_returns_whole_messages_without_consuming() -> None:
    dec = codec.FrontendDecoder()
    dec.in_startup = False
    execute, sync = codec.encode(m.Execute("", 0)), codec.encode(m.Sync())
    dec.feed(execute + sync[:3])
    assert dec.peek_typed_frames(2) == [execute]      # the Sync is not whole yet
    dec.feed(sync[3:])
    assert dec.peek_typed_frames(5) == [execute, sync]
    assert dec.next_typed_frame() == (b"E", execute)  # nothing was consumed
    assert dec.peek_typed_frames(1) == [sync]
