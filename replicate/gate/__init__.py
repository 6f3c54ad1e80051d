"""The SQL gate: exact classification and deterministic rewriting of client statements.

A statement replicates only if every node computes the same result from the same state.
The gate decides, for each statement a client sends, whether it is

- :class:`Relay` — touches no registered table: send the client's bytes as they are;
- :class:`Read` — reads registered tables only: apply the session's read consistency;
- :class:`Replicate` — writes registered tables only: log ``text``, the client's own text
  with clock and random calls replaced by literals spliced in at exact offsets;
- :class:`Refuse` — would not replicate safely: answer with ``error`` (a
  :class:`GateRefusal`: SQLSTATE, message, hint showing the deterministic way).

API the proxy calls::

    from replicate.gate import classify, load_catalog, Catalog

    catalog = load_catalog(conn, ["public.accounts"])      # once; psycopg connection
    decisions = classify(sql, catalog,
                         search_path=("public",),           # the session's effective path
                         now=transaction_start,             # aware datetime, the injected clock
                         rng=random.Random(seed))           # the injected RNG
    for d in decisions:                                     # one per statement, in order
        sql[d.start:d.end]                                  # the client's text of it

``classify`` is pure: no I/O, no clock, no randomness but ``now`` and ``rng``. The same
inputs give the same decisions, byte for byte. Offsets are character offsets into ``sql``
(PostgreSQL's parser reports bytes; the gate converts). When no statement can name a
registered table, the answer is a single ``Relay(0, len(sql))`` found without parsing.

What each decision carries:

- every decision: ``start``, ``end`` (the statement is ``sql[start:end]``) and ``kind``;
- ``Read.tables``: registered tables read;
- ``Replicate.text`` (rewritten), ``.writes`` (tables and owned sequences), ``.reads``,
  ``.copy_in`` (COPY FROM STDIN: data follows), ``.search_path`` (the path the statement
  was resolved under; ``SET search_path`` earlier in the same string changes it);
- ``Refuse.error``: a :class:`GateRefusal` (``.sqlstate``, ``.message``, ``.hint``,
  ``.reason`` — a key of :data:`REASONS`), and ``.tables`` it touches.

Modules: ``catalog`` (the frozen :class:`Catalog` and :func:`load_catalog`), ``analyze``
(one walk of PostgreSQL's parse tree collecting facts), ``classify`` (fast path, split,
decide), ``rewrite`` (literals and splicing at exact offsets), ``refusals`` (the table of
refusal classes), ``decisions``, ``explain`` (for ``replicate explain``).

Parser: pglast (libpg_query, PostgreSQL's own parser, version 17/18 grammar), chosen over
sqlglot on measurements recorded in ``docs/decisions.md``.
"""

from replicate.gate.catalog import (REPLICATED_SETTINGS, Catalog, ColumnInfo, TableInfo,
                                    TableName, load_catalog)
from replicate.gate.classify import DEFAULT_SEARCH_PATH, classify, mentions_registered
from replicate.gate.decisions import Decision, Read, Refuse, Relay, Replicate
from replicate.gate.explain import Explanation, StatementExplanation, explain
from replicate.gate.refusals import REASONS, GateRefusal

__all__ = [
    "Catalog", "ColumnInfo", "TableInfo", "TableName", "load_catalog", "REPLICATED_SETTINGS",
    "classify", "mentions_registered", "DEFAULT_SEARCH_PATH",
    "Decision", "Relay", "Read", "Replicate", "Refuse", "GateRefusal", "REASONS",
    "explain", "Explanation", "StatementExplanation",
]
