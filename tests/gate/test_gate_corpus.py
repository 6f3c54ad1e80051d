"""Every corpus case: classification, rewritten text, refusal reason and SQLSTATE."""

from __future__ import annotations

import random
import re
from datetime import datetime, timezone

import pytest

from replicate.gate import Read, Refuse, Relay, Replicate, classify
from gate_corpus import corpus_catalog, load_cases, table_set

NOW = datetime(2026, 11, 26, 8, 0, 0, 123456, tzinfo=timezone.utc)
CASES = load_cases()
CATALOG = corpus_catalog()


def test_corpus_is_large_enough() -> None:
    assert len(CASES) >= 150


def _check(decision: object, expect: str) -> None:
    words = re.findall(r'(?:[^\s"]|"[^"]*")+', expect)
    kind, opts = words[0], dict(w.split("=", 1) for w in words[1:] if "=" in w)
    if kind == "relay":
        assert isinstance(decision, Relay), decision
    elif kind == "read":
        assert isinstance(decision, Read), decision
        assert decision.tables == table_set(opts.get("tables", ""))
    elif kind == "replicate":
        assert isinstance(decision, Replicate), decision
        assert decision.writes == table_set(opts.get("writes", ""))
        assert decision.reads == table_set(opts.get("reads", ""))
        assert decision.copy_in == (opts.get("copy_in") == "yes")
    elif kind == "refuse":
        assert isinstance(decision, Refuse), decision
        assert decision.error.reason == words[1], decision.error
        assert decision.error.sqlstate == words[2]
        assert decision.error.hint and decision.error.message
    else:
        raise AssertionError(f"bad expectation {expect!r}")


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_case(case) -> None:
    decisions = classify(case.sql, CATALOG, search_path=case.search_path, now=NOW,
                         rng=random.Random(7))
    if len(case.expects) == 1 and len(decisions) == 1 and case.expects[0] == "relay":
        pass
    elif all(e == "relay" for e in case.expects) and len(decisions) == 1 \
            and isinstance(decisions[0], Relay) and decisions[0].end == len(case.sql):
        return  # fast path: one Relay for the whole string
    assert len(decisions) == len(case.expects), decisions
    for i, (d, e) in enumerate(zip(decisions, case.expects)):
        _check(d, e)
        if i in case.texts:
            assert d.text == case.texts[i]
        elif isinstance(d, Replicate):
            assert d.text == case.sql[d.start:d.end], "unexpected rewrite"
