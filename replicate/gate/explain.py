"""``replicate explain``: how the gate would treat a string, for people and for tools.

:func:`explain` runs :func:`replicate.gate.classify` and returns an :class:`Explanation`
(plain data; the CLI renders it, or prints :meth:`Explanation.to_dict` as JSON).
:func:`catalog_from_config` loads the catalog from the first reachable node of a cluster
configuration; without one, :meth:`Catalog.of` names the registered tables only (no column
defaults, keys or user functions: the gate then refuses what it cannot check).
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Iterable

from replicate.errors import NodeUnavailable
from replicate.gate.catalog import Catalog, TableName, load_catalog, registered_names
from replicate.gate.classify import DEFAULT_SEARCH_PATH, classify
from replicate.gate.decisions import Read, Refuse, Relay, Replicate


@dataclass(frozen=True, slots=True)
class StatementExplanation:
    """One statement: what the gate does with it and why."""

    start: int
    end: int
    source: str
    action: str  # "relay" | "read" | "replicate" | "refuse"
    writes: tuple[str, ...] = ()
    reads: tuple[str, ...] = ()
    tables: tuple[str, ...] = ()  # refuse only: the registered tables it touches
    rewritten: str | None = None  # replicate only: the text that goes into the log
    sqlstate: str | None = None
    reason: str | None = None
    message: str | None = None
    hint: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in self.__dataclass_fields__
                if getattr(self, k) not in (None, ())} | {"action": self.action}


@dataclass(frozen=True, slots=True)
class Explanation:
    sql: str
    search_path: tuple[str, ...]
    registered: tuple[str, ...]
    statements: tuple[StatementExplanation, ...] = field(default_factory=tuple)

    def to_dict(self) -> dict[str, Any]:
        return {"search_path": list(self.search_path), "registered": list(self.registered),
                "statements": [s.to_dict() for s in self.statements]}


def explain(sql: str, catalog: Catalog, *, search_path: tuple[str, ...] = DEFAULT_SEARCH_PATH,
            now: datetime, rng: random.Random) -> Explanation:
    """Classify ``sql`` and describe each statement's treatment."""
    out = []
    for d in classify(sql, catalog, search_path=search_path, now=now, rng=rng):
        src = sql[d.start:d.end]
        if isinstance(d, Relay):
            out.append(StatementExplanation(d.start, d.end, src, "relay"))
        elif isinstance(d, Read):
            out.append(StatementExplanation(d.start, d.end, src, "read",
                                            reads=_names(d.tables)))
        elif isinstance(d, Replicate):
            out.append(StatementExplanation(d.start, d.end, src, "replicate",
                                            writes=_names(d.writes), reads=_names(d.reads),
                                            rewritten=d.text))
        elif isinstance(d, Refuse):
            e = d.error
            out.append(StatementExplanation(d.start, d.end, src, "refuse",
                                            tables=_names(d.tables), sqlstate=e.sqlstate,
                                            reason=e.reason, message=e.message, hint=e.hint))
    return Explanation(sql, tuple(search_path),
                       tuple(sorted(str(t) for t in catalog.tables)), tuple(out))


def _names(tables: Iterable[TableName]) -> tuple[str, ...]:
    return tuple(sorted(str(t) for t in tables))


def catalog_from_config(path: Path | str, tables: Iterable[str]) -> Catalog:
    """Load the catalog from the first node of the cluster config that answers: its registered
    tables, plus ``tables`` named on the command line."""
    import psycopg

    from replicate.config import load_config

    config = load_config(path)
    names = list(tables)
    errors = []
    for node in config.nodes:
        try:
            with psycopg.connect(node.dsn, autocommit=True,
                                 connect_timeout=max(1, int(config.connect_timeout_s))) as conn:
                return load_catalog(conn, [*registered_names(conn), *names])
        except psycopg.OperationalError as exc:
            errors.append(f"{node.name}: {str(exc).strip().splitlines()[0]}")
    raise NodeUnavailable("no node of the cluster answered", detail="; ".join(errors))
