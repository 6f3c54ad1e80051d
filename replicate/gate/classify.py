"""From client text to decisions: fast path, split, analyse, decide, rewrite.

The order of duties for one string:

1. Fast path (:func:`mentions_registered`): if the text cannot name a registered table or
   an owned sequence, the whole string is one :class:`Relay`, without parsing.
2. Parse the whole string with PostgreSQL's parser; a parse error refuses it (42601) —
   it mentions a registered table, and the gate does not guess.
3. For each statement: analyse (:mod:`replicate.gate.analyze`), decide (:func:`decide`),
   and for replicated writes splice literals into the client's text
   (:mod:`replicate.gate.rewrite`).

``SET search_path`` inside the string changes how later statements of the same string
resolve, as it would on the server.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass
from datetime import datetime
from functools import lru_cache
from typing import Any, Iterator, Mapping

from pglast import parser as pg

from replicate.gate.analyze import (UTILITY_RELAY, Analysis, Analyzer, default_expression,
                                    parse)
from replicate.gate.catalog import Catalog, ColumnInfo
from replicate.gate.decisions import Decision, Read, Refuse, Relay, Replicate
from replicate.gate.refusals import GateRefusal
from replicate.gate.rewrite import Tokens, site_edits, splice

DEFAULT_SEARCH_PATH: tuple[str, ...] = ("public",)

_DATA_ROOTS = frozenset({
    "InsertStmt", "UpdateStmt", "DeleteStmt", "MergeStmt", "SelectStmt",
    "CreateTableAsStmt", "CopyStmt", "TruncateStmt", "LockStmt"})


_WORD = re.compile(r"[a-z_\u0080-\U0010ffff][a-z0-9_$\u0080-\U0010ffff]*")
_WORDS_FROM = 12  # with more names than this, one pass over the words beats substrings


@dataclass(frozen=True, slots=True)
class _Needles:
    exact: frozenset[str]  # names as stored, to match strings in a parse tree
    words: frozenset[str]  # lower-cased names that can only appear as a whole word
    substrings: tuple[str, ...]  # lower-cased spellings searched as substrings


@lru_cache(maxsize=16)
def _needles(catalog: Catalog) -> _Needles:
    names = {t.name for t in catalog.tables} | {s.name for s in catalog.sequences}
    words: set[str] = set()
    subs: set[str] = set()
    for n in names:
        low = n.lower()
        # Identifiers longer than NAMEDATALEN-1 bytes are truncated by the server, so a
        # long name may be the prefix of a longer word: search those as substrings.
        if _WORD.fullmatch(low) and len(n.encode()) < 63 and len(names) > _WORDS_FROM:
            words.add(low)
        else:
            subs.add(low)
            subs.add(low.replace('"', '""'))  # how a quote is written inside "..."
    return _Needles(frozenset(names), frozenset(words), tuple(sorted(subs)))


def mentions_registered(sql: str, catalog: Catalog) -> bool:
    """Conservative pre-check: could ``sql`` refer to a registered table or owned sequence?

    A reference must contain the name's characters: unquoted names fold to lower case
    (``str.lower`` folds a superset of what PostgreSQL folds), quoted names appear as
    they are (a ``"`` doubled), and a schema qualification or search_path only adds text
    around the name; a name truncated to 63 bytes is a prefix of what was written. The
    one way to spell a name without its characters is a Unicode escape
    (``U&"\\0061ccounts"``), so any ``U&`` sends the string to the full parse.
    """
    needles = _needles(catalog)
    if not needles.exact:
        return False
    text = sql.lower()
    if "u&" in text:
        return True
    if any(n in text for n in needles.substrings):
        return True
    return bool(needles.words) and not needles.words.isdisjoint(_WORD.findall(text))


def classify(sql: str, catalog: Catalog, *, search_path: tuple[str, ...] = DEFAULT_SEARCH_PATH,
             now: datetime, rng: random.Random,
             resolved: Mapping[str, str | None] | None = None) -> list[Decision]:
    """Decide how each statement of ``sql`` is treated. Pure: no I/O, no clock, no RNG
    except ``now`` and ``rng``; the same inputs give the same decisions and texts.

    ``resolved`` maps unqualified relation names to the schema the session resolves them
    to (None: no relation of that name): it wins over the catalog's own search, which knows
    only the relations that existed when the catalog was loaded, and no temporary table. It
    holds for ``search_path`` only: after a ``SET search_path`` in ``sql`` it is dropped."""
    if now.tzinfo is None:
        raise ValueError("classify needs a timezone-aware `now`")
    if not mentions_registered(sql, catalog):
        return [Relay(0, len(sql))]
    data = sql.encode()
    ascii_only = len(data) == len(sql)

    def char(b: int) -> int:
        return b if ascii_only else len(data[:b].decode())

    try:
        stmts = parse(sql)
    except pg.ParseError as e:
        return [Refuse(0, len(sql), GateRefusal("syntax", f"cannot parse statement: {e}"))]
    if not stmts:  # only comments and whitespace: the server answers EmptyQueryResponse
        return [Relay(0, len(sql))]
    tokens: list[Tokens] = []  # scanned lazily, at most once

    def get_tokens() -> Tokens:
        if not tokens:
            tokens.append(Tokens(sql))
        return tokens[0]

    out: list[Decision] = []
    path = tuple(search_path)
    for raw in stmts:
        start = raw.get("stmt_location", 0)
        end = start + raw["stmt_len"] if raw.get("stmt_len") else len(data)
        while end > start and data[end - 1] in b" \t\r\n":
            end -= 1
        (root, body), = raw["stmt"].items()
        if resolved is not None and path != tuple(search_path):
            resolved = None
        ctx = _Statement(catalog, path, now, rng, data, start, end, get_tokens, resolved)
        try:
            decision = ctx.decide(root, body)
        except (KeyError, IndexError, TypeError, ValueError, AttributeError) as e:
            # A parse tree shape the gate does not know: fail closed, say what broke.
            decision = ctx.refuse("unclassified", f"the gate cannot classify this "
                                  f"{root.removesuffix('Stmt')} statement "
                                  f"({type(e).__name__}: {e})")
        out.append(_at(decision, char(start), char(end)))
        path = _next_search_path(root, body, path)
    return out


def _at(d: Any, start: int, end: int) -> Decision:
    kind = type(d)
    fields = {f: getattr(d, f) for f in d.__dataclass_fields__ if f not in ("start", "end")}
    return kind(start=start, end=end, **fields)


def _next_search_path(root: str, body: dict, path: tuple[str, ...]) -> tuple[str, ...]:
    if root != "VariableSetStmt":
        return path
    kind = body.get("kind")
    if kind == "VAR_RESET_ALL":
        return DEFAULT_SEARCH_PATH
    if body.get("name") != "search_path":
        return path
    if kind == "VAR_SET_VALUE":
        return tuple(a["A_Const"]["sval"]["sval"] for a in body.get("args", [])
                     if "A_Const" in a and "sval" in a["A_Const"])
    if kind in ("VAR_SET_DEFAULT", "VAR_RESET"):
        return DEFAULT_SEARCH_PATH
    return path


def _option_true(arg: Any) -> bool:
    """An EXPLAIN option's value, as PostgreSQL's defGetBoolean reads it (fail closed:
    anything but an explicit false counts as true). An integer is false only when 0, which
    pglast gives as an ``Integer`` without ``ival``."""
    if arg is None:
        return True
    (kind, v), = arg.items()
    if kind == "Integer":
        return v.get("ival", 0) != 0
    text = str(v.get("sval", v.get("boolval", v.get("ival", "true")))).lower()
    return text not in ("false", "off", "0", "no")


def _all_strings(node: Any) -> Iterator[str]:
    if isinstance(node, dict):
        for v in node.values():
            yield from _all_strings(v)
    elif isinstance(node, list):
        for v in node:
            yield from _all_strings(v)
    elif isinstance(node, str):
        yield node


class _Statement:
    """Decides one statement. Decisions come out with byte offsets; the caller converts."""

    def __init__(self, catalog: Catalog, path: tuple[str, ...], now: datetime,
                 rng: random.Random, data: bytes, start: int, end: int,
                 get_tokens: Any, resolved: Mapping[str, str | None] | None = None) -> None:
        self.catalog = catalog
        self.path = path
        self.resolved = resolved
        self.now = now
        self.rng = rng
        self.data = data
        self.start = start
        self.end = end
        self.get_tokens = get_tokens

    def refuse(self, reason: str, message: str, tables: Any = frozenset(), **kw: Any) -> Refuse:
        return Refuse(self.start, self.end, GateRefusal(reason, message, **kw),
                      frozenset(tables))

    def names_registered(self, body: Any) -> bool:
        exact = _needles(self.catalog).exact
        return any(s in exact for s in _all_strings(body))

    def analyse(self, root: str, body: dict) -> Analysis:
        an = Analyzer(self.catalog, self.path, root, resolved=self.resolved)
        an.walk({root: body}, frozenset(), False)
        return an.a

    def decide(self, root: str, body: dict) -> Decision:
        if root in UTILITY_RELAY:
            return Relay(self.start, self.end)
        if root in _DATA_ROOTS:
            return self.decide_data(self.analyse(root, body))
        if root == "ExplainStmt":
            analyze = any(o["DefElem"]["defname"] == "analyze"
                          and _option_true(o["DefElem"].get("arg"))
                          for o in body.get("options") or [] if "DefElem" in o)
            (iroot, ibody), = body["query"].items()
            inner = self.decide(iroot, ibody)
            if not analyze or isinstance(inner, Relay):
                return Relay(self.start, self.end)
            if isinstance(inner, Replicate):
                return self.refuse("unclassified",
                                   "EXPLAIN ANALYZE would run the write on this node only",
                                   inner.writes,
                                   hint="Run EXPLAIN without ANALYZE, or the statement itself.")
            return inner
        if root == "PrepareStmt":
            (iroot, ibody), = body["query"].items()
            inner = self.decide(iroot, ibody)
            if isinstance(inner, Relay):
                return inner
            return self.refuse("dynamic-sql",
                               "PREPARE of a statement on registered tables: EXECUTE would "
                               "bypass the gate")
        if root == "DeclareCursorStmt":
            (iroot, ibody), = body["query"].items()
            return self.decide(iroot, ibody)
        if root == "DoStmt":
            src = " ".join(_all_strings(body))
            if mentions_registered(src, self.catalog):
                return self.refuse("dynamic-sql",
                                   "a DO block that mentions a registered table cannot be "
                                   "checked by the gate")
            return Relay(self.start, self.end)
        if root == "CallStmt":
            if self.names_registered(body):
                return self.refuse("dynamic-sql",
                                   "CALL with a registered table's name: the procedure's "
                                   "statements cannot be checked by the gate")
            return Relay(self.start, self.end)
        if root == "CreateStmt" and body["relation"].get("relpersistence") == "t" \
                and "schemaname" not in body["relation"] \
                and not self.names_registered({k: v for k, v in body.items() if k != "relation"}):
            # A temporary table of a registered table's name: local to the session, where it
            # hides the registered table as PostgreSQL resolves names (the proxy asks the
            # session how its names resolve before it classifies a statement).
            return Relay(self.start, self.end)
        if self.names_registered(body):
            ddl = root.startswith(("Create", "Alter", "Drop", "Grant", "Comment", "Index",
                                   "Rename", "Rule", "Trig", "Sec", "View", "Reindex"))
            return self.refuse("ddl" if ddl else "unclassified",
                               f"{root.removesuffix('Stmt')} on a registered table is not "
                               "replicated" if ddl else
                               f"cannot classify {root.removesuffix('Stmt')} on a "
                               "registered table")
        return Relay(self.start, self.end)

    def decide_data(self, a: Analysis) -> Decision:
        registered = a.writes | a.reads | a.sequence_writes
        if not registered:
            return Relay(self.start, self.end)
        if a.problems:
            return Refuse(self.start, self.end, a.problems[0], frozenset(registered))
        if a.locking and a.reads:
            return self.refuse("local-lock",
                               "row or table locks on registered tables are local to one node",
                               a.reads)
        writes = a.writes | a.sequence_writes
        if not writes:
            return Read(self.start, self.end, frozenset(a.reads),
                        pure=not (a.write_problems or a.other_reads or a.other_writes))
        if a.other_writes:
            return self.refuse("mixed-write",
                               "the statement writes registered and unregistered tables: "
                               + ", ".join(sorted(map(str, a.other_writes))), registered)
        if a.other_reads:
            return self.refuse("unregistered-read",
                               "a write to a registered table reads unregistered "
                               f"{'table' if len(a.other_reads) == 1 else 'tables'} "
                               + ", ".join(sorted(map(str, a.other_reads)))
                               + ", whose contents differ between nodes", registered)
        if a.write_problems:
            return Refuse(self.start, self.end, a.write_problems[0], frozenset(registered))
        for t in sorted(a.writes):
            if self.catalog.triggers.get(t):
                return self.refuse("trigger", f"{t} has VOLATILE triggers "
                                   f"({', '.join(self.catalog.triggers[t])}) that would run "
                                   "separately on every node", registered)
        unmatched = a.defaults_seen - a.defaults_ok
        if unmatched and any(c.volatile_default for t in a.writes if t in self.catalog.tables
                             for c in self.catalog.tables[t].columns):
            return self.refuse("volatile-default", "a DEFAULT the gate cannot match to its "
                               "column, in a table with non-deterministic defaults",
                               registered)
        text = self.data[self.start:self.end]
        if a.sites:
            try:
                edits = site_edits(a.sites, self.get_tokens(), self.now, self.rng,
                                   self.materialise)
            except GateRefusal as e:
                return Refuse(self.start, self.end, e, frozenset(registered))
            except (ValueError, KeyError, IndexError) as e:  # fail closed
                return self.refuse("unclassified", f"cannot rewrite the statement: {e}",
                                   registered)
            text = splice(text, [(s - self.start, e - self.start, t) for s, e, t in edits])
        return Replicate(self.start, self.end, text.decode(), frozenset(writes),
                         frozenset(a.reads), a.copy_in, self.path)

    def materialise(self, col: ColumnInfo, per_row: bool = False) -> str:
        """The column's default expression with its clock/random calls as literals.
        ``per_row``: the DEFAULT runs once per row (UPDATE SET c = DEFAULT), so only
        statement-constant clock calls may be fixed; a random call is refused."""
        expr = col.default or ""
        problem, sites, tokens = _default_template(self.catalog, expr)
        if problem is None and per_row and any(s.kind != "time" for s in sites):
            problem = GateRefusal("volatile-per-row", "it would run once per row here")
        if problem is not None:
            raise GateRefusal("volatile-default",
                              f"column {col.name!r} defaults to {expr}: {problem.message}")
        edits = site_edits(sites, tokens, self.now, self.rng, self.materialise)
        return splice(("SELECT " + expr).encode(), edits)[7:].decode()


@lru_cache(maxsize=1024)
def _default_template(catalog: Catalog, expr: str) -> tuple[GateRefusal | None, tuple, Tokens]:
    """Parse and analyse a default expression once per catalog: (problem, sites, tokens)."""
    text = "SELECT " + expr
    an = Analyzer(catalog, ("public",), "SelectStmt")
    an.walk(default_expression(parse(text)), frozenset(), True)
    problem = an.a.write_problems[0] if an.a.write_problems else None
    return problem, tuple(an.a.sites), Tokens(text)
