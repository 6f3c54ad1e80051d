"""Properties of the gate beyond the corpus: the fast path never lets a reference through,
offsets are exact with non-ASCII text, decisions are deterministic and pure."""

from __future__ import annotations

import random
import uuid
from datetime import datetime, timedelta, timezone

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gate_corpus import corpus_catalog, load_cases
from replicate.gate import (Catalog, Read, Refuse, Relay, Replicate, TableName, classify,
                            mentions_registered)
from replicate.gate.rewrite import round_to_precision, time_literal, uuid7

NOW = datetime(2026, 11, 26, 8, 0, 0, 123456, tzinfo=timezone.utc)
CATALOG = corpus_catalog()


def _full(sql: str, catalog: Catalog, path=("public",)):
    """Classify without the fast path: what the parser says."""
    import sys
    mod = sys.modules["replicate.gate.classify"]
    c = mod.classify
    saved = mod.mentions_registered
    mod.mentions_registered = lambda *_: True
    try:
        return c(sql, catalog, search_path=path, now=NOW, rng=random.Random(1))
    finally:
        mod.mentions_registered = saved


@pytest.mark.parametrize("case", load_cases(), ids=lambda c: c.id)
def test_fast_path_agrees_with_the_parser(case) -> None:
    """Whenever the pre-check says "cannot mention", the parser finds only relays."""
    if not mentions_registered(case.sql, CATALOG):
        assert all(isinstance(d, Relay) for d in _full(case.sql, CATALOG, case.search_path))


def _spellings(draw, name: str) -> str:
    style = draw(st.sampled_from(["plain", "upper", "mixed", "quoted", "qualified",
                                  "unicode"]))
    if style == "plain":
        return name
    if style == "upper":
        return name.upper()
    if style == "mixed":
        return "".join(ch.upper() if draw(st.booleans()) else ch for ch in name)
    if style == "quoted":
        return '"' + name + '"'
    if style == "qualified":
        return 'public."' + name + '"' if draw(st.booleans()) else "PUBLIC." + name.upper()
    return 'U&"' + "".join(f"\\{ord(ch):04x}" for ch in name) + '"'


@st.composite
def references(draw):
    name = draw(st.sampled_from(["accounts", "ledger", "items", "städte"]))
    ref = _spellings(draw, name)
    template = draw(st.sampled_from([
        "SELECT * FROM {}", "UPDATE {} SET x = 1", "DELETE FROM {} WHERE true",
        "INSERT INTO {} VALUES (1)", "select 1;\nselect * from {} /* c */", "TRUNCATE {}",
    ]))
    return template.format(ref)


@settings(max_examples=300, deadline=None)
@given(references())
def test_fast_path_never_misses_a_reference(sql: str) -> None:
    parsed = _full(sql, CATALOG)
    if any(not isinstance(d, Relay) for d in parsed):
        assert mentions_registered(sql, CATALOG), sql


def test_fast_path_with_many_tables_uses_words_and_keeps_long_names() -> None:
    long = "t" * 63
    cat = Catalog.of(*[f"public.table_{i}" for i in range(30)], TableName("public", long),
                     TableName("public", 'we"ird'))
    assert mentions_registered("SELECT * FROM TABLE_7", cat)
    assert not mentions_registered("SELECT * FROM table_77x", cat)
    # an identifier longer than 63 bytes is truncated to the registered name
    assert mentions_registered("SELECT * FROM " + long + "zzzz", cat)
    assert mentions_registered('SELECT * FROM "we""ird"', cat)
    assert not mentions_registered("SELECT 1", cat)


def test_offsets_are_characters_not_bytes() -> None:
    sql = "SELECT 'ü€🙂'; UPDATE städte SET n = now() WHERE name = 'Köln'; SELECT 'é'"
    ds = classify(sql, CATALOG, now=NOW, rng=random.Random(3))
    assert [type(d) for d in ds] == [Relay, Replicate, Relay]
    assert sql[ds[0].start:ds[0].end] == "SELECT 'ü€🙂'"
    assert sql[ds[1].start:ds[1].end] == \
        "UPDATE städte SET n = now() WHERE name = 'Köln'"
    assert sql[ds[2].start:ds[2].end] == "SELECT 'é'"
    assert isinstance(ds[1], Replicate) is True


def test_refused_per_row_random_after_non_ascii() -> None:
    sql = "SELECT '🙂🙂'; INSERT INTO städte (name, n) VALUES ('ö', random()), ('ä', now())"
    d = classify(sql, CATALOG, now=NOW, rng=random.Random(3))[1]
    assert isinstance(d, Replicate)
    assert d.text.startswith("INSERT INTO städte (name, n) VALUES ('ö', '")
    assert d.text.endswith("('ä', '2026-11-26 08:00:00.123456+00'::timestamptz)")


def test_same_inputs_same_decisions() -> None:
    sql = "INSERT INTO accounts (owner) VALUES ('a'), ('b'); UPDATE ledger SET at = now()"
    a = classify(sql, CATALOG, now=NOW, rng=random.Random(9))
    b = classify(sql, CATALOG, now=NOW, rng=random.Random(9))
    assert a == b
    c = classify(sql, CATALOG, now=NOW + timedelta(seconds=1), rng=random.Random(10))
    assert a[0].text != c[0].text and a[1].text != c[1].text


def test_classify_reads_no_clock_and_no_global_random(monkeypatch) -> None:
    import time as time_mod
    import random as random_mod

    def boom(*_a, **_k):
        raise AssertionError("the gate must only use the injected clock and rng")

    monkeypatch.setattr(time_mod, "time", boom)
    monkeypatch.setattr(time_mod, "time_ns", boom)
    monkeypatch.setattr(random_mod, "random", boom)
    monkeypatch.setattr(random_mod, "getrandbits", boom)
    for case in load_cases():
        classify(case.sql, CATALOG, search_path=case.search_path, now=NOW,
                 rng=random.Random(1))


def test_naive_clock_is_rejected() -> None:
    with pytest.raises(ValueError):
        classify("UPDATE ledger SET at = now()", CATALOG, now=datetime(2026, 1, 1),
                 rng=random.Random(1))


def test_clock_in_another_zone_is_written_in_utc() -> None:
    berlin = timezone(timedelta(hours=1))
    t = datetime(2026, 11, 26, 9, 0, 0, 5, tzinfo=berlin)
    assert time_literal("now", -1, t) == "'2026-11-26 08:00:00.000005+00'::timestamptz"


@pytest.mark.parametrize("micros,p,want", [
    (123456, 2, 120000), (125000, 2, 130000), (124999, 2, 120000), (999999, 3, 1000000),
    (500000, 0, 1000000), (499999, 0, 0), (123456, 6, 123456),
])
def test_rounding_is_half_up_like_postgres(micros, p, want) -> None:
    t = datetime(2026, 1, 1, tzinfo=timezone.utc) + timedelta(microseconds=micros)
    got = round_to_precision(t, p) - datetime(2026, 1, 1, tzinfo=timezone.utc)
    assert got == timedelta(microseconds=want)


def test_every_refusal_carries_sqlstate_message_and_hint() -> None:
    seen = set()
    for case in load_cases():
        for d in classify(case.sql, CATALOG, search_path=case.search_path, now=NOW,
                          rng=random.Random(1)):
            if isinstance(d, Refuse):
                assert len(d.error.sqlstate) == 5 and d.error.message and d.error.hint
                assert str(d.error).startswith(d.error.message)
                seen.add(d.error.reason)
    from replicate.gate import REASONS
    assert seen == set(REASONS), set(REASONS) - seen


def test_reads_are_left_untouched() -> None:
    (d,) = classify("SELECT now(), random() FROM ledger", CATALOG, now=NOW,
                    rng=random.Random(1))
    assert isinstance(d, Read) and d.tables == {TableName("public", "ledger")}


def test_empty_catalog_relays_everything_fast() -> None:
    assert classify("DELETE FROM accounts", Catalog(), now=NOW, rng=random.Random(1)) == \
        [Relay(0, 20)]


def test_replicate_carries_the_search_path_it_was_resolved_under() -> None:
    ds = classify("UPDATE ledger SET amount = 1; SET search_path = app, public; "
                  "UPDATE counters SET n = 1", CATALOG, now=NOW, rng=random.Random(1))
    assert ds[0].search_path == ("public",)
    assert ds[2].search_path == ("app", "public")
    assert ds[2].writes == {TableName("app", "counters")}


@st.composite
def mangled(draw):
    case = draw(st.sampled_from(load_cases()))
    sql = case.sql
    op = draw(st.sampled_from(["prefix", "suffix", "splice", "same"]))
    if op == "prefix":
        return sql[:draw(st.integers(0, len(sql)))]
    if op == "suffix":
        return sql[draw(st.integers(0, len(sql))):]
    if op == "splice":
        other = draw(st.sampled_from(load_cases())).sql
        i = draw(st.integers(0, len(sql)))
        return sql[:i] + draw(st.sampled_from([";", " ", "(", "'", "$$", "--", "/*"])) + \
            other + sql[i:]
    return sql


@settings(max_examples=400, deadline=None)
@given(mangled())
def test_any_text_gets_decisions_covering_valid_offsets(sql: str) -> None:
    ds = classify(sql, CATALOG, now=NOW, rng=random.Random(1))
    assert ds
    last = 0
    for d in ds:
        assert last <= d.start <= d.end <= len(sql)
        last = d.end
        if isinstance(d, Refuse):
            assert d.error.reason in ("syntax", "unclassified") or d.error.message


@pytest.mark.parametrize("sql, pure", [
    ("SELECT * FROM accounts WHERE id = $1", True),
    ("SELECT owner, balance * 2 FROM accounts WHERE id IN (SELECT id FROM ledger)", True),
    ("SELECT count(*), max(now()) FROM accounts", True),            # stable functions
    ("SELECT set_config('search_path', 'x', false) FROM accounts", False),  # volatile
    ("SELECT random() FROM accounts", False),
    ("SELECT myschema.f(id) FROM accounts", False),                 # unknown function
    ("SELECT * FROM accounts JOIN plain_table USING (id)", False),  # may be a view
])
def test_a_read_is_pure_only_if_it_cannot_change_the_session(sql: str, pure: bool) -> None:
    (decision,) = classify(sql, CATALOG, now=NOW, rng=random.Random(1))
    assert isinstance(decision, Read) and decision.pure is pure


def _one(sql: str, path=("public",), resolved=None):
    (decision,) = classify(sql, CATALOG, search_path=path, now=NOW, rng=random.Random(1),
                           resolved=resolved)
    return decision


def test_the_sessions_own_resolution_of_a_name_wins_over_the_catalog() -> None:
    """A relation the catalog does not know (a temporary table, or one created since it was
    loaded) hides a registered table when the session resolves the name to it."""
    write = "INSERT INTO accounts (id, owner, balance) VALUES (1, 'a', 1)"
    assert isinstance(_one(write), Replicate)
    assert isinstance(_one(write, resolved={"accounts": "public"}), Replicate)
    assert isinstance(_one(write, resolved={"accounts": "pg_temp_3"}), Relay)
    assert isinstance(_one("SELECT * FROM accounts", resolved={"accounts": "late"}), Relay)
    # a qualified name means what it says; an unresolved name falls back to the catalog
    assert isinstance(_one("INSERT INTO public.accounts (id, owner, balance) VALUES (1, 'a', 1)",
                           resolved={"accounts": "late"}), Replicate)
    assert isinstance(_one(write, resolved={"accounts": None}), Replicate)
    # after a SET search_path in the same string the session's answer no longer holds
    decisions = classify("SET search_path = public, app; " + write, CATALOG, now=NOW,
                         rng=random.Random(1), resolved={"accounts": "late"})
    assert isinstance(decisions[1], Replicate)


def test_a_temporary_table_may_take_a_registered_tables_name() -> None:
    assert isinstance(_one("CREATE TEMP TABLE accounts (id int)"), Relay)
    # but not one that copies or references the registered table, nor a permanent one
    assert isinstance(_one("CREATE TEMP TABLE accounts (LIKE accounts)"), Refuse)
    assert isinstance(_one("CREATE TEMP TABLE t (id int REFERENCES accounts)"), Refuse)
    assert isinstance(_one("CREATE TABLE accounts (id int)"), Refuse)


@pytest.mark.parametrize("now", [
    datetime(2026, 11, 26, 8, 0, 0, 123456, tzinfo=timezone.utc),
    datetime(1970, 1, 1, 0, 0, 0, 999, tzinfo=timezone.utc),
    datetime(2026, 11, 26, 9, 0, 0, 999999, tzinfo=timezone(timedelta(hours=1))),
])
def test_uuidv7_literal_carries_the_clock_like_postgresql(now: datetime) -> None:
    made = uuid7(now, random.Random(3))
    micros = (now - datetime(1970, 1, 1, tzinfo=timezone.utc)) // timedelta(microseconds=1)
    assert made.version == 7 and made.variant == uuid.RFC_4122
    assert made.int >> 80 == micros // 1000                       # Unix time in milliseconds
    assert (made.int >> 64) & 0xFFF == (micros % 1000) * 4096 // 1000  # sub-millisecond part
    assert made == uuid7(now, random.Random(3)) != uuid7(now, random.Random(4))
