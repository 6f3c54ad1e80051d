"""The log entry schema: what one chosen slot asks every node to do, and what came of it.

The Paxos core carries entries as opaque payload bytes next to their request
id; this module is the only place that knows their layout. An ``Entry`` holds
everything a node needs to compute exactly what every other node computes:
the statement text (already made deterministic by the SQL gate), its bind
parameters as the client sent them (bytes, type OID, text or binary format),
the session settings that change results, and the role to apply as.

An ``Outcome`` is what applying an entry produced on a node: a command tag
and row count, the rows a RETURNING clause gave back (raw, in the result
format the entry asked for), or a deterministic error with its SQLSTATE.

Payloads are versioned JSON: easy to inspect with ``replicate log`` and
``psql``, and cheap enough next to a network round trip.
"""

from __future__ import annotations

import base64
import enum
import json
from dataclasses import dataclass, field
from typing import Any

FORMAT_VERSION = 1
# json.dumps with arguments builds a new encoder per call (about half of what encoding an
# entry costs); one encoder, configured once, serves every entry.
_ENCODER = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False)
# Payloads are UTF-8 (``encode``): decoded as such, without json.loads' encoding detection.
_DECODER = json.JSONDecoder()

# Session settings that change what a statement computes; an entry carries their values.
RESULT_SETTINGS = ("search_path", "TimeZone", "DateStyle", "IntervalStyle", "extra_float_digits",
                   "bytea_output", "standard_conforming_strings")
# Where an entry does not carry a setting, every node applies it with this value, not its own
# default (every applier has, since the first one). So an entry leaves out a setting whose
# value is this one: the same apply on every node, old or new, in fewer bytes.
CANONICAL_SETTINGS = {
    "search_path": '"$user", public',
    "TimeZone": "UTC",
    "DateStyle": "ISO, MDY",
    "IntervalStyle": "postgres",
    "extra_float_digits": "1",
    "bytea_output": "hex",
    "standard_conforming_strings": "on",
}
assert tuple(CANONICAL_SETTINGS) == RESULT_SETTINGS


def carried_settings(values: dict[str, str | None]) -> tuple[tuple[str, str], ...]:
    """The settings an entry carries for a session whose settings are ``values``: those known
    and not canonical (pure)."""
    return tuple((name, value) for name in RESULT_SETTINGS
                 if (value := values.get(name)) is not None
                 and value != CANONICAL_SETTINGS[name])


def applied_settings(entry: "Entry") -> dict[str, str]:
    """Every result setting as each node applies ``entry``: its own, else the canonical."""
    settings = dict(CANONICAL_SETTINGS)
    settings.update(entry.settings)
    return settings


class EntryKind(str, enum.Enum):
    STATEMENT = "statement"
    CONTROL = "control"


_KINDS = {kind.value: kind for kind in EntryKind}


# Control actions every node performs at the same slot.
CONTROL_ACTIONS = ("register_table", "unregister_table", "check")


def register_table(name: str) -> "Entry":
    """The control entry that registers table ``name`` (schema-qualified, quoted as needed)."""
    return Entry(f"REGISTER TABLE {name}", kind=EntryKind.CONTROL, control=("register_table", name))


def check_tables(check_id: str, tables: list[str], buckets: list[int] | None = None) -> "Entry":
    """The control entry of a consistency check: every node hashes ``tables`` at its slot.

    With ``buckets``, each node also records one hash per row of those key buckets."""
    spec = json.dumps({"tables": list(tables), "buckets": list(buckets or [])})
    return Entry(f"CHECK {', '.join(tables)}", kind=EntryKind.CONTROL,
                 control=("check", check_id, spec))


def unregister_table(name: str) -> "Entry":
    return Entry(f"UNREGISTER TABLE {name}", kind=EntryKind.CONTROL,
                 control=("unregister_table", name))


@dataclass(frozen=True, slots=True)
class Param:
    """One bind parameter exactly as the client sent it (``value`` None is SQL NULL)."""

    value: bytes | None
    type_oid: int = 0        # 0: let the server infer, as PostgreSQL does for an unspecified type
    binary: bool = False     # format code 1

    def __post_init__(self) -> None:
        if self.value is not None and not isinstance(self.value, bytes):
            raise TypeError("parameter value must be bytes or None")
        if type(self.type_oid) is not int or self.type_oid < 0:
            raise ValueError("type_oid must be an int >= 0")


@dataclass(frozen=True, slots=True)
class Entry:
    """One replicated statement (or control action) as it travels through the log."""

    sql: str
    params: tuple[Param, ...] = ()
    settings: tuple[tuple[str, str], ...] = ()
    role: str | None = None
    binary_results: bool = False
    kind: EntryKind = EntryKind.STATEMENT
    control: tuple[str, ...] = ()  # for CONTROL entries: the action and its arguments

    def __post_init__(self) -> None:
        if not isinstance(self.sql, str) or not self.sql.strip():
            raise ValueError("an entry needs a statement")
        if (self.kind is EntryKind.CONTROL) != bool(self.control):
            raise ValueError("a control entry (and only a control entry) names an action")
        if self.control and self.control[0] not in CONTROL_ACTIONS:
            raise ValueError(f"unknown control action {self.control[0]!r}")
        for name, _ in self.settings:
            if name not in RESULT_SETTINGS:
                raise ValueError(f"setting {name!r} is not one an entry carries")

    def encode(self) -> bytes:
        doc: dict[str, Any] = {"v": FORMAT_VERSION, "kind": self.kind.value, "sql": self.sql}
        if self.params:
            doc["params"] = [[p.type_oid, int(p.binary),
                              None if p.value is None else base64.b64encode(p.value).decode()]
                             for p in self.params]
        if self.settings:
            doc["settings"] = dict(self.settings)
        if self.role is not None:
            doc["role"] = self.role
        if self.binary_results:
            doc["binary_results"] = True
        if self.control:
            doc["control"] = list(self.control)
        return _ENCODER.encode(doc).encode()

    @classmethod
    def decode(cls, payload: bytes) -> "Entry":
        """The entry ``payload`` encodes; ``ValueError`` ("malformed log entry: ...") for
        anything else, the same on every node."""
        try:
            doc = _DECODER.decode(payload.decode())
            if type(doc) is not dict:
                raise ValueError("not a JSON object")
            if doc.get("v") != FORMAT_VERSION:
                raise ValueError(f"unknown entry format version {doc.get('v')!r}")
            settings = doc.get("settings", {})
            if type(settings) is not dict:
                raise ValueError("settings is not a JSON object")
            kind = _KINDS.get(doc.get("kind", "statement"))
            if kind is None:
                raise ValueError(f"unknown entry kind {doc.get('kind')!r}")
            params = tuple(Param(None if raw is None else base64.b64decode(raw), oid, bool(fmt))
                           for oid, fmt, raw in doc.get("params", ()))
            return cls(sql=doc["sql"], params=params, settings=tuple(settings.items()),
                       role=doc.get("role"),
                       binary_results=bool(doc.get("binary_results", False)), kind=kind,
                       control=tuple(doc.get("control", ())))
        except (ValueError, KeyError, TypeError) as exc:
            raise ValueError(f"malformed log entry: {exc}") from None


class Status(str, enum.Enum):
    OK = "ok"                # the statement ran
    ERROR = "error"          # it failed deterministically (same on every node)
    DUPLICATE = "duplicate"  # the request id was applied in an earlier slot: not run again
    NOOP = "noop"            # a hole filled by a new leader
    CONTROL = "control"      # a control entry


@dataclass(frozen=True, slots=True)
class Column:
    """A RowDescription field of a RETURNING result."""

    name: str
    type_oid: int
    type_modifier: int = -1
    type_size: int = -1
    binary: bool = False


@dataclass(frozen=True, slots=True)
class Outcome:
    """What applying one entry produced on a node."""

    slot: int
    request_id: str
    status: Status
    command_tag: str | None = None
    rows_affected: int | None = None
    columns: tuple[Column, ...] = ()
    rows: tuple[tuple[bytes | None, ...], ...] = field(default=(), repr=False)
    sqlstate: str | None = None
    message: str | None = None
    detail: str | None = None
    hint: str | None = None

    @property
    def ok(self) -> bool:
        """No error: for a duplicate, the first application had none either."""
        return self.status is not Status.ERROR and self.sqlstate is None

    def to_json(self) -> dict[str, Any]:
        doc: dict[str, Any] = {"slot": self.slot, "request_id": self.request_id,
                               "status": self.status.value}
        for name in ("command_tag", "rows_affected", "sqlstate", "message", "detail", "hint"):
            value = getattr(self, name)
            if value is not None:
                doc[name] = value
        if self.columns:
            doc["columns"] = [[c.name, c.type_oid, c.type_modifier, c.type_size, int(c.binary)]
                              for c in self.columns]
            doc["rows"] = [[None if v is None else base64.b64encode(v).decode() for v in row]
                           for row in self.rows]
        return doc

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> "Outcome":
        columns = tuple(Column(n, o, m, s, bool(b)) for n, o, m, s, b in doc.get("columns", ()))
        rows = tuple(tuple(None if v is None else base64.b64decode(v) for v in row)
                     for row in doc.get("rows", ()))
        return cls(slot=doc["slot"], request_id=doc["request_id"], status=Status(doc["status"]),
                   command_tag=doc.get("command_tag"), rows_affected=doc.get("rows_affected"),
                   columns=columns, rows=rows, sqlstate=doc.get("sqlstate"),
                   message=doc.get("message"), detail=doc.get("detail"), hint=doc.get("hint"))
