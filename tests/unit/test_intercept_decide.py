"""The proxy decides a simple-protocol text once per numeric template (gate/template.py): a
text that differs only in its numbers gets the decision again, fitted to its own text, as long
as the session's facts and the catalog are the ones it was decided under."""

from __future__ import annotations

from replicate.gate import Catalog, ColumnInfo, Read, Replicate, TableInfo, TableName
from replicate.runtime import intercept
from replicate.runtime.intercept import ReplicateHooks, _SessionState

ACCOUNTS = TableName("public", "accounts")
CATALOG = Catalog(tables={ACCOUNTS: TableInfo(
    ACCOUNTS, (ColumnInfo("id", "integer"), ColumnInfo("balance", "numeric")), (("id",),))},
    relations=frozenset({ACCOUNTS}))
FACTS = {"schemas": ("public",), "resolved": {}}


def decider(monkeypatch) -> tuple[ReplicateHooks, list[str]]:
    parsed: list[str] = []
    real = intercept.classify

    def counting(sql, *args, **kwargs):
        parsed.append(sql)
        return real(sql, *args, **kwargs)
    monkeypatch.setattr(intercept, "classify", counting)
    return ReplicateHooks(engine=None, catalogs=None, default_consistency="local"), parsed


def test_texts_differing_in_numbers_are_parsed_once(monkeypatch) -> None:
    hooks, parsed = decider(monkeypatch)
    state = _SessionState()
    first = hooks._decide(state, "SELECT balance FROM accounts WHERE id = 7;", CATALOG, FACTS)
    again = hooks._decide(state, "SELECT balance FROM accounts WHERE id = 123456;", CATALOG,
                          FACTS)
    assert parsed == ["SELECT balance FROM accounts WHERE id = 7;"]
    assert first == [Read(0, 41, frozenset({ACCOUNTS}), pure=True)]
    assert again == [Read(0, 46, frozenset({ACCOUNTS}), pure=True)]
    write = "UPDATE accounts SET balance = balance + {} WHERE id = {}"
    for n in (1, 22, 333):
        decided = hooks._decide(state, write.format(n, n), CATALOG, FACTS)
        assert decided == [Replicate(0, len(write.format(n, n)), write.format(n, n),
                                     frozenset({ACCOUNTS}), frozenset(),
                                     search_path=("public",))]
    assert parsed[1:] == [write.format(1, 1)]


def test_new_facts_or_catalog_or_a_rewrite_decide_again(monkeypatch) -> None:
    hooks, parsed = decider(monkeypatch)
    state = _SessionState()
    read = "SELECT balance FROM accounts WHERE id = {}"
    hooks._decide(state, read.format(1), CATALOG, FACTS)
    hooks._decide(state, read.format(2), CATALOG, dict(FACTS))          # facts read again
    hooks._decide(state, read.format(3), Catalog(tables=CATALOG.tables,
                                                 relations=CATALOG.relations), FACTS)
    rewritten = "UPDATE accounts SET balance = random() * {} WHERE id = 1"
    hooks._decide(state, rewritten.format(4), CATALOG, FACTS)
    hooks._decide(state, rewritten.format(5), CATALOG, FACTS)         # embeds a drawn value
    assert parsed == [read.format(1), read.format(2), read.format(3), rewritten.format(4),
                      rewritten.format(5)]
