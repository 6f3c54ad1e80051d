"""Decisions reused across texts that differ only in their numbers (replicate/gate/template.py):
the key keeps everything but the numbers, and over the whole gate corpus a text with other
numbers is decided exactly as the reused decision says."""

from __future__ import annotations

import random
from datetime import datetime, timedelta, timezone

import pytest

from gate_corpus import corpus_catalog, load_cases
from replicate.gate import Read, Refuse, Relay, Replicate, TableName, classify
from replicate.gate.template import numeric_template, reusable, reuse

NOW = datetime(2026, 11, 26, 8, 0, 0, 123456, tzinfo=timezone.utc)
CATALOG = corpus_catalog()
ACCOUNTS = frozenset({TableName("public", "accounts")})


@pytest.mark.parametrize("sql, key", [
    ("SELECT * FROM accounts WHERE id = 42", "SELECT * FROM accounts WHERE id = \0"),
    ("select -1.5e3, t1.c2 from t1", "select -\0.\0e3, t1.c2 from t1"),
    ("SELECT '42', \"col 7\", x -- 9 'not a string\n, 8", "SELECT '42', \"col 7\", x -- 9 "
     "'not a string\n, \0"),
    ("SELECT 'it''s 5' || 6", "SELECT 'it''s 5' || \0"),
    ("SELECT data ? 'k' FROM t WHERE id = 5", "SELECT data ? 'k' FROM t WHERE id = \0"),
    ("SELECT 0x1F, 1abc", "SELECT \0x1F, \0abc"),
    ("SELECT 1", "SELECT \0"),
    ("SELECT name FROM accounts", "SELECT name FROM accounts"),
])
def test_the_key_replaces_numbers_and_keeps_everything_else(sql: str, key: str) -> None:
    assert numeric_template(sql) == key


@pytest.mark.parametrize("sql", [
    "SELECT $1", "SELECT $$5$$", "SELECT E'\\x41' || 5", "SELECT 1 /* 2 */", "SELECT U&'d' || 5",
    "EXPLAIN (ANALYZE 0) DELETE FROM accounts", "explain analyze select 1",
    "SELECT 'unterminated 5", 'SELECT "unterminated 5', "SELECT \0 5",
])
def test_texts_the_scanner_does_not_follow_get_no_key(sql: str) -> None:
    assert numeric_template(sql) is None


def test_a_question_mark_operator_does_not_meet_a_number() -> None:
    assert numeric_template("SELECT a ? 'k' FROM t WHERE id = 5") != \
        numeric_template("SELECT a 5 'k' FROM t WHERE id = ?")


def test_only_single_reads_and_unrewritten_writes_are_reused() -> None:
    read = "SELECT balance FROM accounts WHERE id = 5;"
    kept = reusable(read, classify(read, CATALOG, now=NOW, rng=random.Random(1)))
    assert isinstance(kept, Read) and kept.tables == ACCOUNTS
    other = "SELECT balance FROM accounts WHERE id = 123456;"
    assert reuse(kept, len(read), other) == Read(0, len(other) - 1, ACCOUNTS, pure=kept.pure)
    write = "UPDATE accounts SET balance = balance + 1 WHERE id = 5"
    kept = reusable(write, classify(write, CATALOG, now=NOW, rng=random.Random(1)))
    assert isinstance(kept, Replicate) and kept.text == write
    assert reuse(kept, len(write), write.replace("5", "77")).text == write.replace("5", "77")
    for sql in ("INSERT INTO accounts (id, owner, balance) VALUES (5, 'x', 1)",  # defaults
                "UPDATE accounts SET balance = 1 WHERE id = 5; SELECT 1",       # two
                "SELECT 1"):                                                      # a relay
        assert reusable(sql, classify(sql, CATALOG, now=NOW, rng=random.Random(1))) is None


def _with_numbers(key: str, numbers: list[str]) -> str:
    parts = key.split("\0")
    return "".join(p + (numbers[i] if i < len(numbers) else "") for i, p in enumerate(parts))


@pytest.mark.parametrize("case", load_cases(), ids=lambda c: c.id)
def test_a_reused_decision_is_what_the_gate_decides_for_other_numbers(case) -> None:
    """Over the corpus: whatever would be kept for a text is exactly the gate's decision for
    the same text with other numbers (another clock and random source too)."""
    key = numeric_template(case.sql)
    decisions = classify(case.sql, CATALOG, search_path=case.search_path, now=NOW,
                         rng=random.Random(1))
    kept = reusable(case.sql, decisions)
    if key is None or kept is None:
        assert kept is None or key is None
        return
    runs = key.count("\0")
    rng = random.Random(case.id)
    for numbers in (["0"] * runs, ["7"] * runs, ["1234567"] * runs, ["007"] * runs,
                    [str(rng.randrange(1, 10**6)) for _ in range(runs)]):
        other = _with_numbers(key, numbers)
        assert numeric_template(other) == key
        got = classify(other, CATALOG, search_path=case.search_path,
                       now=NOW + timedelta(days=3), rng=random.Random(2))
        assert got == [reuse(kept, len(case.sql), other)], (case.sql, other)


def test_the_corpus_has_texts_that_are_reused() -> None:
    """The corpus test above is not empty: many of its texts have numbers and are kept."""
    kept = [c for c in load_cases() if numeric_template(c.sql) not in (None, c.sql)
            and reusable(c.sql, classify(c.sql, CATALOG, search_path=c.search_path, now=NOW,
                                         rng=random.Random(1)))]
    assert len(kept) >= 20
    assert any(isinstance(reusable(c.sql, classify(c.sql, CATALOG, now=NOW,
                                                   rng=random.Random(1))), Replicate)
               for c in kept)
    assert Relay not in {type(reusable(c.sql, [Relay(0, 1)])) for c in kept}



def test_explain_options_are_why_explain_gets_no_key() -> None:
    """The one place a number's value changes the gate's decision."""
    decide = [classify(f"EXPLAIN (ANALYZE {n}) DELETE FROM accounts WHERE id = 1", CATALOG,
                       now=NOW, rng=random.Random(1)) for n in (0, 1)]
    assert [type(d[0]) for d in decide] == [Relay, Refuse]
    assert numeric_template("EXPLAIN (ANALYZE 0) DELETE FROM accounts WHERE id = 1") is None
