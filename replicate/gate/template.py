"""Texts that differ only in their numbers are decided alike: a key for reusing a decision.

A client on the simple protocol sends a new text for every execution (pgbench, ORMs that
inline values): ``SELECT ... WHERE id = 41``, then ``... = 42``. Parsing and analysing each
one costs ~70-140 us in the proxy. :func:`numeric_template` gives such texts one key: the text
with every run of digits that starts a token replaced by a NUL character (which no query text
can hold: the protocol ends strings with it). Everything else (strings,
quoted names, comments, operators, the letters around the numbers) stays, so two texts with
the same key lex into the same tokens in the same order, with numeric constants of possibly
different values in the same places.

What the gate decides does not depend on a numeric constant's value, except for an EXPLAIN
option given as a number: ``EXPLAIN (ANALYZE 0) DELETE ...`` only plans the DELETE, ``ANALYZE 1``
runs it. A text mentioning ``explain`` gets no key. Neither does one the scanner below does
not follow exactly:
anything with ``$`` (dollar quotes, parameters), a backslash (escape strings, and strings
read with standard_conforming_strings off), ``/*`` comments, or ``&`` (``U&`` escapes).

:func:`reuse` turns the decision made for one text into the decision for another text of
the same key. It only reuses what cannot depend on the values: a single statement read, or
a single replicated statement whose text was not rewritten (a rewrite may embed a value, such
as a clock reading or a precision). The test in ``tests/gate/test_gate_template.py`` checks
over the whole gate corpus that a text with other numbers is decided as :func:`reuse` says.
"""

from __future__ import annotations

import re

from replicate.gate.decisions import Decision, Read, Replicate

_BAIL = ("$", "\\", "/*", "&", "\x00")


# A digit run that starts a token: not inside a word (``t1``, ``x1F``); strings, quoted
# names and comments are cut out before this runs.
_NUMBER = re.compile("(?<![A-Za-z0-9_\\x80-\\U0010ffff])[0-9]+")
_QUOTED = re.compile("'(?:[^']|'')*'|\"(?:[^\"]|\"\")*\"|--[^\\n]*")


def numeric_template(sql: str) -> str | None:
    """``sql`` with each digit run that starts a token replaced by NUL; None if the text
    has something this scanner does not follow (see the module docstring)."""
    if any(b in sql for b in _BAIL) or "explain" in sql.lower():
        return None
    if "'" not in sql and '"' not in sql and "--" not in sql:
        return _NUMBER.sub("\x00", sql)
    parts: list[str] = []
    last = 0
    for quoted in _QUOTED.finditer(sql):
        parts.append(_NUMBER.sub("\x00", sql[last:quoted.start()]))
        parts.append(quoted.group())
        last = quoted.end()
    parts.append(_NUMBER.sub("\x00", sql[last:]))
    if any(("'" in p or '"' in p) for p in parts[::2]):
        return None  # a quote that does not end: the parser will say so, uncached
    return "".join(parts)


def reusable(sql: str, decisions: list[Decision]) -> Decision | None:
    """The decision to keep for ``sql``'s key, or None when it may depend on the numbers."""
    if len(decisions) != 1:
        return None
    d = decisions[0]
    if isinstance(d, Read):
        return d
    if isinstance(d, Replicate) and not d.copy_in and d.text == sql[d.start:d.end]:
        return d
    return None


def reuse(kept: Decision, kept_len: int, sql: str) -> Decision:
    """``kept`` (decided for a text of length ``kept_len`` with ``sql``'s key) for ``sql``.

    The statement starts where it started (only whitespace and comments come before it, and
    no number outside them) and ends as far from the end (only ``;``, whitespace and
    comments follow it)."""
    end = len(sql) - (kept_len - kept.end)
    if isinstance(kept, Replicate):
        return Replicate(kept.start, end, sql[kept.start:end], kept.writes, kept.reads,
                         kept.copy_in, kept.search_path)
    assert isinstance(kept, Read)
    return Read(kept.start, end, kept.tables, pure=kept.pure)
