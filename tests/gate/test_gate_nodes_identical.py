"""The point of the gate: the same replicated texts, applied in the same order on three
nodes, leave the registered tables identical — and the client's original texts would not."""

from __future__ import annotations

import random
from datetime import datetime, timezone

import psycopg
import pytest

from gate_corpus import corpus_catalog, load_cases
from replicate.gate import Replicate, classify
from test_gate_rewrites_run import SCHEMA

pytestmark = pytest.mark.e2e

NOW = datetime(2026, 11, 26, 8, 0, 0, 123456, tzinfo=timezone.utc)
TABLES = ['accounts', 'ledger', 'items', 'events', '"Mixed Case"', 'app."Orders"',
          'app.counters', '"städte"']


def _apply(dsn: str, texts: list[tuple[str, tuple[str, ...]]]) -> dict[str, list]:
    with psycopg.connect(dsn) as conn:
        conn.execute(SCHEMA)
        conn.commit()
        for text, path in texts:
            conn.execute("SAVEPOINT s")
            conn.execute("SELECT set_config('search_path', %s, true)",
                         (", ".join(f'"{s}"' for s in path),))
            try:
                conn.execute(text)
                conn.execute("RELEASE SAVEPOINT s")
            except psycopg.Error:
                conn.execute("ROLLBACK TO SAVEPOINT s")
        conn.commit()
        conn.execute("SET search_path = public")
        return {t: conn.execute(f"SELECT * FROM {t} ORDER BY 1").fetchall() for t in TABLES}


def _replicated(rewrite: bool) -> list[tuple[str, tuple[str, ...]]]:
    out = []
    rng = random.Random(11)  # one proposer: one clock value, one RNG stream
    for case in load_cases():
        for d in classify(case.sql, corpus_catalog(), search_path=case.search_path, now=NOW,
                          rng=rng):
            if isinstance(d, Replicate) and not d.copy_in and "$1" not in d.text \
                    and not d.text.lstrip().upper().startswith("COPY"):
                out.append((d.text if rewrite else case.sql[d.start:d.end], d.search_path))
    return out


def test_replicated_corpus_leaves_nodes_identical(fresh_db) -> None:
    texts = _replicated(rewrite=True)
    states = [_apply(dsn, texts) for dsn in fresh_db]
    assert sum(len(rows) for rows in states[0].values()) > 10
    assert states[0] == states[1] == states[2]


def test_without_the_rewrites_nodes_diverge(fresh_db) -> None:
    texts = _replicated(rewrite=False)
    a = _apply(fresh_db[0], texts)
    b = _apply(fresh_db[1], texts)
    assert a["accounts"] != b["accounts"]  # gen_random_uuid() and now() defaults differ
