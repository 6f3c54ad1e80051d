"""What the gate decides about one statement: Relay, Read, Replicate or Refuse.

Every decision carries ``start`` and ``end``: character offsets of the statement in the
string the client sent (``sql[start:end]`` is the client's own text of it, without the
separating semicolon). Decisions are frozen values; the proxy acts on them.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from replicate.gate.catalog import TableName
from replicate.gate.refusals import GateRefusal


@dataclass(frozen=True, slots=True)
class Relay:
    """Touches no registered table: send the client's bytes to the local node as they are."""

    start: int
    end: int
    kind: str = "relay"


@dataclass(frozen=True, slots=True)
class Read:
    """Reads registered tables (and writes none): apply the session's read consistency,
    then run it on the local node. ``tables`` are the registered tables it reads. ``pure``:
    it reads nothing but registered tables, writes nothing and calls no volatile or unknown
    function, so running it cannot change the session's settings (unless a user function
    declared STABLE or IMMUTABLE runs SET, which PostgreSQL does not prevent)."""

    start: int
    end: int
    tables: frozenset[TableName] = frozenset()
    kind: str = "read"
    pure: bool = False


@dataclass(frozen=True, slots=True)
class Replicate:
    """Writes registered tables only: put ``text`` into the log.

    ``text`` is the statement with its non-deterministic parts replaced by literals,
    spliced into the client's own text (equal to the source when nothing was rewritten).
    ``writes`` are the registered tables (and owned sequences) it changes, ``reads`` the
    registered tables it reads. ``copy_in`` marks ``COPY ... FROM STDIN``: the data rows
    follow in the COPY sub-protocol and belong to the same log entry. ``search_path`` is
    the path the names were resolved under (a ``SET search_path`` earlier in the same
    string changes it); the log entry must carry it.
    """

    start: int
    end: int
    text: str
    writes: frozenset[TableName] = frozenset()
    reads: frozenset[TableName] = frozenset()
    copy_in: bool = False
    search_path: tuple[str, ...] = ()
    kind: str = "replicate"


@dataclass(frozen=True, slots=True)
class Refuse:
    """Would not replicate safely: answer the client with ``error`` (SQLSTATE, message,
    hint) and run nothing."""

    start: int
    end: int
    error: GateRefusal
    tables: frozenset[TableName] = field(default_factory=frozenset)
    kind: str = "refuse"


Decision = Relay | Read | Replicate | Refuse
