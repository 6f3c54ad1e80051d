"""PostgreSQL protocol 3.0 messages as frozen, slotted dataclasses (both directions).

Each class knows its type byte (``TYPE``; startup-phase messages have none).
Construction validates what the wire format cannot carry (a NUL inside a
string, an out-of-range integer, an unknown status letter) and raises
``ValueError``: that is a local mistake. Bytes from a peer that break the
protocol raise ``ProtocolError`` in ``replicate.pgwire.codec`` instead.

Messages the codec does not model travel as ``Unknown(type, body)`` so that a
relay never breaks on them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar, Union

INT16 = (-(1 << 15), (1 << 15) - 1)
INT32 = (-(1 << 31), (1 << 31) - 1)
UINT32 = (0, (1 << 32) - 1)

PROTOCOL_3_0 = 196608          # 3 << 16
SSL_REQUEST_CODE = 80877103
GSSENC_REQUEST_CODE = 80877104
CANCEL_REQUEST_CODE = 80877102

# Authentication request codes (the int32 after 'R').
AUTH_OK = 0
AUTH_KERBEROS_V5 = 2
AUTH_CLEARTEXT_PASSWORD = 3
AUTH_MD5_PASSWORD = 5
AUTH_GSS = 7
AUTH_GSS_CONTINUE = 8
AUTH_SSPI = 9
AUTH_SASL = 10
AUTH_SASL_CONTINUE = 11
AUTH_SASL_FINAL = 12


def _cstr(value: str, what: str) -> None:
    if not isinstance(value, str):
        raise ValueError(f"{what} must be a str, not {type(value).__name__}")
    if "\0" in value:
        raise ValueError(f"{what} must not contain a NUL character")


def _int(value: int, bounds: tuple[int, int], what: str) -> None:
    if not isinstance(value, int) or not bounds[0] <= value <= bounds[1]:
        raise ValueError(f"{what} out of range: {value!r}")


def _count(items: tuple, what: str) -> None:
    if not isinstance(items, tuple):
        raise ValueError(f"{what} must be a tuple")
    if len(items) > INT16[1]:
        raise ValueError(f"too many {what}: {len(items)}")


def _values(values: tuple, what: str) -> None:
    _count(values, what)
    for v in values:
        if v is not None and not isinstance(v, bytes):
            raise ValueError(f"{what} must be bytes or None")


# --------------------------------------------------------------------------- startup phase

@dataclass(frozen=True, slots=True)
class StartupMessage:
    """The first message of a session: protocol version and parameters (user, database, ...)."""

    params: dict[str, str]
    version: int = PROTOCOL_3_0

    def __post_init__(self) -> None:
        if self.version >> 16 != 3:
            raise ValueError(f"unsupported protocol version {self.version >> 16}.{self.version & 0xFFFF}")
        for key, value in self.params.items():
            _cstr(key, "a startup parameter name")
            _cstr(value, "a startup parameter value")
            if not key:
                raise ValueError("a startup parameter name must not be empty")


@dataclass(frozen=True, slots=True)
class SSLRequest:
    pass


@dataclass(frozen=True, slots=True)
class GSSENCRequest:
    pass


@dataclass(frozen=True, slots=True)
class CancelRequest:
    """Cancel the query running in backend ``pid``; ``secret`` is 4 bytes in protocol 3.0."""

    pid: int
    secret: bytes

    def __post_init__(self) -> None:
        _int(self.pid, INT32, "pid")
        if not isinstance(self.secret, bytes) or not 4 <= len(self.secret) <= 256:
            raise ValueError("a cancel key is 4 to 256 bytes")


# --------------------------------------------------------------------------- frontend

@dataclass(frozen=True, slots=True)
class Query:
    TYPE: ClassVar[bytes] = b"Q"
    sql: str

    def __post_init__(self) -> None:
        _cstr(self.sql, "query text")


@dataclass(frozen=True, slots=True)
class Parse:
    TYPE: ClassVar[bytes] = b"P"
    name: str
    sql: str
    param_types: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        _cstr(self.name, "statement name")
        _cstr(self.sql, "query text")
        _count(self.param_types, "parameter types")
        for oid in self.param_types:
            _int(oid, UINT32, "type oid")


@dataclass(frozen=True, slots=True)
class Bind:
    TYPE: ClassVar[bytes] = b"B"
    portal: str
    statement: str
    param_formats: tuple[int, ...] = ()
    params: tuple[bytes | None, ...] = ()
    result_formats: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        _cstr(self.portal, "portal name")
        _cstr(self.statement, "statement name")
        for formats in (self.param_formats, self.result_formats):
            _count(formats, "format codes")
            for f in formats:
                _int(f, INT16, "format code")
        _values(self.params, "parameter values")

    def param_format(self, i: int) -> int:
        """The format (0 text, 1 binary) of parameter ``i``, as the protocol's shorthand says."""
        f = self.param_formats
        return 0 if not f else f[0] if len(f) == 1 else f[i]


@dataclass(frozen=True, slots=True)
class Describe:
    TYPE: ClassVar[bytes] = b"D"
    kind: str   # "S" statement, "P" portal
    name: str

    def __post_init__(self) -> None:
        if self.kind not in ("S", "P"):
            raise ValueError(f"Describe kind must be 'S' or 'P', not {self.kind!r}")
        _cstr(self.name, "name")


@dataclass(frozen=True, slots=True)
class Close:
    TYPE: ClassVar[bytes] = b"C"
    kind: str   # "S" statement, "P" portal
    name: str

    def __post_init__(self) -> None:
        if self.kind not in ("S", "P"):
            raise ValueError(f"Close kind must be 'S' or 'P', not {self.kind!r}")
        _cstr(self.name, "name")


@dataclass(frozen=True, slots=True)
class Execute:
    TYPE: ClassVar[bytes] = b"E"
    portal: str = ""
    max_rows: int = 0

    def __post_init__(self) -> None:
        _cstr(self.portal, "portal name")
        _int(self.max_rows, INT32, "max_rows")


@dataclass(frozen=True, slots=True)
class Sync:
    TYPE: ClassVar[bytes] = b"S"


@dataclass(frozen=True, slots=True)
class Flush:
    TYPE: ClassVar[bytes] = b"H"


@dataclass(frozen=True, slots=True)
class Terminate:
    TYPE: ClassVar[bytes] = b"X"


@dataclass(frozen=True, slots=True)
class CopyData:
    """Both directions."""

    TYPE: ClassVar[bytes] = b"d"
    data: bytes


@dataclass(frozen=True, slots=True)
class CopyDone:
    """Both directions."""

    TYPE: ClassVar[bytes] = b"c"


@dataclass(frozen=True, slots=True)
class CopyFail:
    TYPE: ClassVar[bytes] = b"f"
    message: str

    def __post_init__(self) -> None:
        _cstr(self.message, "CopyFail message")


@dataclass(frozen=True, slots=True)
class PasswordMessage:
    """'p': PasswordMessage, SASLInitialResponse, SASLResponse or GSSResponse.

    Which one depends on the authentication request before it, so the body is
    kept opaque; the relay passes it through.
    """

    TYPE: ClassVar[bytes] = b"p"
    data: bytes


@dataclass(frozen=True, slots=True)
class FunctionCall:
    """'F': the legacy fast-path function call, kept opaque."""

    TYPE: ClassVar[bytes] = b"F"
    body: bytes


# --------------------------------------------------------------------------- backend

@dataclass(frozen=True, slots=True)
class Authentication:
    """'R': ``code`` is one of the AUTH_* constants; ``data`` is the rest (salt, SASL data)."""

    TYPE: ClassVar[bytes] = b"R"
    code: int
    data: bytes = b""

    def __post_init__(self) -> None:
        _int(self.code, INT32, "authentication code")


@dataclass(frozen=True, slots=True)
class ParameterStatus:
    TYPE: ClassVar[bytes] = b"S"
    name: str
    value: str

    def __post_init__(self) -> None:
        _cstr(self.name, "parameter name")
        _cstr(self.value, "parameter value")


@dataclass(frozen=True, slots=True)
class BackendKeyData:
    TYPE: ClassVar[bytes] = b"K"
    pid: int
    secret: bytes

    def __post_init__(self) -> None:
        _int(self.pid, INT32, "pid")
        if not isinstance(self.secret, bytes) or not 4 <= len(self.secret) <= 256:
            raise ValueError("a cancel key is 4 to 256 bytes")


@dataclass(frozen=True, slots=True)
class ReadyForQuery:
    TYPE: ClassVar[bytes] = b"Z"
    status: str  # "I" idle, "T" in a transaction block, "E" in a failed transaction block

    def __post_init__(self) -> None:
        if self.status not in ("I", "T", "E"):
            raise ValueError(f"transaction status must be I, T or E, not {self.status!r}")


@dataclass(frozen=True, slots=True)
class FieldDescription:
    name: str
    table_oid: int = 0
    column_attr: int = 0
    type_oid: int = 25      # text
    type_size: int = -1
    type_modifier: int = -1
    format: int = 0

    def __post_init__(self) -> None:
        _cstr(self.name, "field name")
        _int(self.table_oid, UINT32, "table oid")
        _int(self.column_attr, INT16, "column attribute number")
        _int(self.type_oid, UINT32, "type oid")
        _int(self.type_size, INT16, "type size")
        _int(self.type_modifier, INT32, "type modifier")
        _int(self.format, INT16, "format code")


@dataclass(frozen=True, slots=True)
class RowDescription:
    TYPE: ClassVar[bytes] = b"T"
    fields: tuple[FieldDescription, ...]

    def __post_init__(self) -> None:
        _count(self.fields, "fields")
        for f in self.fields:
            if not isinstance(f, FieldDescription):
                raise ValueError("RowDescription fields must be FieldDescription")


@dataclass(frozen=True, slots=True)
class DataRow:
    TYPE: ClassVar[bytes] = b"D"
    values: tuple[bytes | None, ...]

    def __post_init__(self) -> None:
        _values(self.values, "column values")


@dataclass(frozen=True, slots=True)
class CommandComplete:
    TYPE: ClassVar[bytes] = b"C"
    tag: str

    def __post_init__(self) -> None:
        _cstr(self.tag, "command tag")


def _fields(fields: dict[str, str]) -> None:
    for code, value in fields.items():
        if not isinstance(code, str) or len(code) != 1 or code == "\0" or ord(code) > 255:
            raise ValueError(f"a field code is one non-NUL byte, not {code!r}")
        _cstr(value, f"field {code}")


@dataclass(frozen=True, slots=True)
class ErrorResponse:
    """'E': ``fields`` by code: S severity, V severity (not localized), C SQLSTATE, M message,
    D detail, H hint, P position, p internal position, q internal query, W where, s schema,
    t table, c column, d data type, n constraint, F file, L line, R routine."""

    TYPE: ClassVar[bytes] = b"E"
    fields: dict[str, str]

    def __post_init__(self) -> None:
        _fields(self.fields)

    @property
    def sqlstate(self) -> str | None:
        return self.fields.get("C")

    @property
    def message(self) -> str | None:
        return self.fields.get("M")


@dataclass(frozen=True, slots=True)
class NoticeResponse:
    """'N': same fields as ErrorResponse."""

    TYPE: ClassVar[bytes] = b"N"
    fields: dict[str, str]

    def __post_init__(self) -> None:
        _fields(self.fields)


@dataclass(frozen=True, slots=True)
class ParseComplete:
    TYPE: ClassVar[bytes] = b"1"


@dataclass(frozen=True, slots=True)
class BindComplete:
    TYPE: ClassVar[bytes] = b"2"


@dataclass(frozen=True, slots=True)
class CloseComplete:
    TYPE: ClassVar[bytes] = b"3"


@dataclass(frozen=True, slots=True)
class NoData:
    TYPE: ClassVar[bytes] = b"n"


@dataclass(frozen=True, slots=True)
class PortalSuspended:
    TYPE: ClassVar[bytes] = b"s"


@dataclass(frozen=True, slots=True)
class EmptyQueryResponse:
    TYPE: ClassVar[bytes] = b"I"


@dataclass(frozen=True, slots=True)
class ParameterDescription:
    TYPE: ClassVar[bytes] = b"t"
    type_oids: tuple[int, ...]

    def __post_init__(self) -> None:
        _count(self.type_oids, "parameter types")
        for oid in self.type_oids:
            _int(oid, UINT32, "type oid")


@dataclass(frozen=True, slots=True)
class _CopyResponse:
    format: int                        # 0 text, 1 binary (overall)
    column_formats: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        _int(self.format, (-128, 127), "copy format")
        _count(self.column_formats, "column formats")
        for f in self.column_formats:
            _int(f, INT16, "format code")


@dataclass(frozen=True, slots=True)
class CopyInResponse(_CopyResponse):
    TYPE: ClassVar[bytes] = b"G"


@dataclass(frozen=True, slots=True)
class CopyOutResponse(_CopyResponse):
    TYPE: ClassVar[bytes] = b"H"


@dataclass(frozen=True, slots=True)
class CopyBothResponse(_CopyResponse):
    TYPE: ClassVar[bytes] = b"W"


@dataclass(frozen=True, slots=True)
class NotificationResponse:
    TYPE: ClassVar[bytes] = b"A"
    pid: int
    channel: str
    payload: str = ""

    def __post_init__(self) -> None:
        _int(self.pid, INT32, "pid")
        _cstr(self.channel, "channel")
        _cstr(self.payload, "payload")


@dataclass(frozen=True, slots=True)
class NegotiateProtocolVersion:
    TYPE: ClassVar[bytes] = b"v"
    newest_minor: int
    unrecognized: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        _int(self.newest_minor, INT32, "minor version")
        if not isinstance(self.unrecognized, tuple):
            raise ValueError("unrecognized options must be a tuple")
        for name in self.unrecognized:
            _cstr(name, "option name")


# --------------------------------------------------------------------------- either side

@dataclass(frozen=True, slots=True)
class Unknown:
    """A typed message this codec does not model: carried through as it came."""

    type: bytes
    body: bytes = field(default=b"")

    def __post_init__(self) -> None:
        if not isinstance(self.type, bytes) or len(self.type) != 1:
            raise ValueError("a message type is one byte")
        if not isinstance(self.body, bytes):
            raise ValueError("a message body is bytes")


StartupPhaseMessage = Union[StartupMessage, SSLRequest, GSSENCRequest, CancelRequest]
FrontendMessage = Union[StartupPhaseMessage, Query, Parse, Bind, Describe, Execute, Sync, Flush,
                        Close, Terminate, CopyData, CopyDone, CopyFail, PasswordMessage,
                        FunctionCall, Unknown]
BackendMessage = Union[Authentication, ParameterStatus, BackendKeyData, ReadyForQuery,
                       RowDescription, DataRow, CommandComplete, ErrorResponse, NoticeResponse,
                       ParseComplete, BindComplete, CloseComplete, NoData, PortalSuspended,
                       EmptyQueryResponse, ParameterDescription, CopyInResponse,
                       CopyOutResponse, CopyBothResponse, CopyData, CopyDone,
                       NotificationResponse, NegotiateProtocolVersion, Unknown]

__all__ = [
    "PROTOCOL_3_0", "SSL_REQUEST_CODE", "GSSENC_REQUEST_CODE", "CANCEL_REQUEST_CODE",
    "AUTH_OK", "AUTH_KERBEROS_V5", "AUTH_CLEARTEXT_PASSWORD", "AUTH_MD5_PASSWORD", "AUTH_GSS",
    "AUTH_GSS_CONTINUE", "AUTH_SSPI", "AUTH_SASL", "AUTH_SASL_CONTINUE", "AUTH_SASL_FINAL",
    "StartupMessage", "SSLRequest", "GSSENCRequest", "CancelRequest",
    "Query", "Parse", "Bind", "Describe", "Close", "Execute", "Sync", "Flush", "Terminate",
    "CopyData", "CopyDone", "CopyFail", "PasswordMessage", "FunctionCall",
    "Authentication", "ParameterStatus", "BackendKeyData", "ReadyForQuery", "FieldDescription",
    "RowDescription", "DataRow", "CommandComplete", "ErrorResponse", "NoticeResponse",
    "ParseComplete", "BindComplete", "CloseComplete", "NoData", "PortalSuspended",
    "EmptyQueryResponse", "ParameterDescription", "CopyInResponse", "CopyOutResponse",
    "CopyBothResponse", "NotificationResponse", "NegotiateProtocolVersion", "Unknown",
    "StartupPhaseMessage", "FrontendMessage", "BackendMessage",
]
