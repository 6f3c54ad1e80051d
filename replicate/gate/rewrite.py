"""Deterministic rewriting: literals for clock and random calls, spliced at exact offsets.

The gate never regenerates SQL from a tree. Each rewrite is a byte range of the client's
text (found with PostgreSQL's own scanner) and the literal that replaces it; edits are
applied back to front so earlier offsets stay valid.

Literals keep the type and precision of what they replace. Clock values are instants in
UTC; ``current_date``, ``localtimestamp`` and friends are derived from that instant with a
cast, which PostgreSQL evaluates under the session TimeZone carried in the log entry, so
every node computes the same date as the client's session would have:

>>> from datetime import datetime, timezone
>>> t = datetime(2026, 11, 26, 8, 0, 0, 123456, tzinfo=timezone.utc)
>>> time_literal("now", -1, t)
"'2026-11-26 08:00:00.123456+00'::timestamptz"
>>> time_literal("SVFOP_CURRENT_TIMESTAMP_N", 2, t)
"'2026-11-26 08:00:00.120000+00'::timestamptz(2)"
>>> time_literal("SVFOP_CURRENT_DATE", -1, t)
"'2026-11-26 08:00:00.123456+00'::timestamptz::date"
"""

from __future__ import annotations

import random
import uuid
from datetime import datetime, timedelta, timezone
from typing import Any, Callable, Sequence

from pglast import parser as pg

from replicate.gate.catalog import ColumnInfo, TableInfo, quote_ident
from replicate.gate.refusals import GateRefusal

# op -> (cast suffix after the timestamptz literal, takes a precision)
_TIME_CASTS: dict[str, tuple[str, bool]] = {
    "now": ("", False),
    "transaction_timestamp": ("", False),
    "statement_timestamp": ("", False),
    "SVFOP_CURRENT_TIMESTAMP": ("", False),
    "SVFOP_CURRENT_TIMESTAMP_N": ("", True),
    "SVFOP_CURRENT_DATE": ("::date", False),
    "SVFOP_CURRENT_TIME": ("::timetz", False),
    "SVFOP_CURRENT_TIME_N": ("::timetz", True),
    "SVFOP_LOCALTIME": ("::time", False),
    "SVFOP_LOCALTIME_N": ("::time", True),
    "SVFOP_LOCALTIMESTAMP": ("::timestamp", False),
    "SVFOP_LOCALTIMESTAMP_N": ("::timestamp", True),
}


def round_to_precision(t: datetime, precision: int) -> datetime:
    """Round as PostgreSQL's AdjustTimestampForTypmod does: half away from zero."""
    if precision >= 6:
        return t
    scale = 10 ** (6 - precision)
    micros = t.microsecond
    rounded = (micros + scale // 2) // scale * scale
    return t.replace(microsecond=0) + timedelta(microseconds=rounded)


def _instant(t: datetime) -> str:
    if t.tzinfo is None:
        raise ValueError("the gate's clock must return timezone-aware datetimes")
    u = t.astimezone(timezone.utc)
    return u.strftime("%Y-%m-%d %H:%M:%S.%f") + "+00"


def time_literal(op: str, typmod: int, now: datetime) -> str:
    """The literal that replaces a clock function, same type and precision."""
    suffix, with_precision = _TIME_CASTS[op]
    if not with_precision:
        return f"'{_instant(now)}'::timestamptz{suffix}"
    p = max(0, min(typmod, 6))
    if suffix:
        return f"'{_instant(round_to_precision(now, p))}'::timestamptz{suffix}({p})"
    return f"'{_instant(round_to_precision(now, p))}'::timestamptz({p})"


_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)


def uuid7(now: datetime, rng: random.Random) -> uuid.UUID:
    """A version 7 UUID (RFC 9562) as PostgreSQL 18's ``uuidv7()`` makes one at ``now``: 48 bits
    of Unix time in milliseconds, 12 bits of the sub-millisecond fraction, 62 random bits."""
    millis, micros = divmod((now - _EPOCH) // timedelta(microseconds=1), 1000)
    return uuid.UUID(int=(millis & (1 << 48) - 1) << 80 | 0x7 << 76 | (micros * 4096 // 1000) << 64
                     | 0b10 << 62 | rng.getrandbits(62))


def once_literal(fname: str, now: datetime, rng: random.Random) -> str:
    """A literal for a volatile function that runs once in this statement."""
    if fname == "random":
        return f"'{rng.random()!r}'::float8"
    if fname in ("gen_random_uuid", "uuidv4"):
        return f"'{uuid.UUID(int=rng.getrandbits(128), version=4)}'::uuid"
    if fname == "uuidv7":
        return f"'{uuid7(now, rng)}'::uuid"
    if fname == "clock_timestamp":
        return f"'{_instant(now)}'::timestamptz"
    raise KeyError(fname)


class _Tok:
    __slots__ = ("start", "end", "name")

    def __init__(self, start: int, end: int, name: str) -> None:
        self.start, self.end, self.name = start, end, name


class Tokens:
    """PostgreSQL's scanner output for one string, with helpers to find extents.

    ``pglast.parser.scan`` reports *character* offsets while the parse tree reports
    *byte* offsets (UTF-8); tokens here are converted to bytes (``end`` inclusive).
    """

    def __init__(self, text: str) -> None:
        raw = pg.scan(text)
        if text.isascii():
            self.toks = [_Tok(t.start, t.end, t.name) for t in raw]
        else:
            offs = [0]
            for ch in text:
                offs.append(offs[-1] + len(ch.encode()))
            self.toks = [_Tok(offs[t.start], offs[t.end + 1] - 1, t.name) for t in raw]
        self.by_start = {t.start: i for i, t in enumerate(self.toks)}

    def index(self, loc: int) -> int:
        return self.by_start[loc]

    def close_paren(self, i: int) -> int:
        """Index of the ')' matching the '(' at index i."""
        depth = 0
        for j in range(i, len(self.toks)):
            name = self.toks[j].name
            if name == "ASCII_40":
                depth += 1
            elif name == "ASCII_41":
                depth -= 1
                if depth == 0:
                    return j
        raise ValueError("unbalanced parentheses")

    def next_named(self, i: int, name: str) -> int:
        """Index of the next token called ``name`` at parenthesis depth 0 from i."""
        depth = 0
        for j in range(i, len(self.toks)):
            n = self.toks[j].name
            if depth == 0 and n == name:
                return j
            if n == "ASCII_40":
                depth += 1
            elif n == "ASCII_41":
                depth -= 1
        raise ValueError(f"no {name} token")

    def call_end(self, loc: int) -> int:
        """Byte offset just after a function call ``name(...)`` starting at loc."""
        i = self.index(loc)
        while self.toks[i].name != "ASCII_40":
            i += 1
        return self.toks[self.close_paren(i)].end + 1

    def keyword_end(self, loc: int, with_precision: bool) -> int:
        i = self.index(loc)
        if with_precision:
            j = i + 1
            while self.toks[j].name in ("C_COMMENT", "SQL_COMMENT"):
                j += 1
            if self.toks[j].name == "ASCII_40":
                return self.toks[self.close_paren(j)].end + 1
        return self.toks[i].end + 1


Edit = tuple[int, int, str]  # byte start, byte end, replacement text


def splice(data: bytes, edits: Sequence[Edit]) -> bytes:
    """Apply non-overlapping edits (byte ranges) to data."""
    out = data
    for start, end, text in sorted(edits, key=lambda e: e[0], reverse=True):
        out = out[:start] + text.encode() + out[end:]
    return out


MaterialiseFn = Callable[[ColumnInfo, bool], str]  # (column, runs once per row?)


def site_edits(sites: Sequence[Any], tokens: Tokens, now: datetime, rng: random.Random,
               materialise: MaterialiseFn) -> list[Edit]:
    """Turn analysis sites into byte edits. Random values are drawn in text order, so the
    same inputs always give the same text."""
    edits: list[Edit] = []
    for site in sorted(sites, key=lambda s: s.loc):
        if site.kind == "time":
            op, typmod = site.arg
            if op.startswith("SVFOP_"):
                end = tokens.keyword_end(site.loc, op.endswith("_N"))
            else:
                end = tokens.call_end(site.loc)
            edits.append((site.loc, end, time_literal(op, typmod, now)))
        elif site.kind == "once":
            edits.append((site.loc, tokens.call_end(site.loc), once_literal(site.arg, now, rng)))
        elif site.kind in ("default", "default-per-row"):
            i = tokens.index(site.loc)
            edits.append((site.loc, tokens.toks[i].end + 1,
                          materialise(site.arg, site.kind == "default-per-row")))
        elif site.kind == "default-values":
            info: TableInfo = site.arg
            i = tokens.next_named(tokens.index(site.loc), "DEFAULT")
            if tokens.toks[i + 1].name != "VALUES":
                raise ValueError("DEFAULT VALUES not found")
            cols = [c for c in info.columns if c.volatile_default]
            text = "({}) VALUES ({})".format(
                ", ".join(quote_ident(c.name) for c in cols),
                ", ".join(materialise(c, False) for c in cols))
            edits.append((tokens.toks[i].start, tokens.toks[i + 1].end + 1, text))
        elif site.kind == "append":
            explicit_list, add, nrows = site.arg
            i = tokens.index(site.loc)
            if explicit_list:
                j = tokens.next_named(i, "ASCII_40")
                k = tokens.close_paren(j)
                edits.append((tokens.toks[k].start, tokens.toks[k].start,
                              "".join(", " + quote_ident(c.name) for c in add)))
                i = k + 1
            j = tokens.next_named(i, "VALUES") + 1
            rows = 0
            while True:
                if tokens.toks[j].name != "ASCII_40":
                    raise ValueError("VALUES row not found")
                k = tokens.close_paren(j)
                vals = "".join(", " + (materialise(c, False) if c.volatile_default else "DEFAULT")
                               for c in add)
                edits.append((tokens.toks[k].start, tokens.toks[k].start, vals))
                rows += 1
                if k + 1 < len(tokens.toks) and tokens.toks[k + 1].name == "ASCII_44":
                    j = k + 2
                    continue
                break
            if rows != nrows:
                raise ValueError("VALUES rows do not match the parse tree")
        else:
            raise GateRefusal("unclassified", f"unknown rewrite site {site.kind}")
    return edits
