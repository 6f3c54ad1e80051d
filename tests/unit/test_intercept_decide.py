"""The proxy decides a simple-protocol text once per numeric template (gate/template.py): a
text that differs only in its numbers gets the decision again, fitted to its own text, as long
as the session's facts and the catalog are the ones it was decided under."""

from __future__ import annotations

from hook_fakes import FakeSession

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


def test_a_text_without_a_template_is_decided_once_per_text(monkeypatch) -> None:
    """A Parse with parameters ($1) or a dollar quote has no numeric template: the same text
    again gets the same decision; a rewritten one is still decided each time."""
    hooks, parsed = decider(monkeypatch)
    state = _SessionState()
    read = "SELECT balance FROM accounts WHERE id = $1"
    assert hooks._decide(state, read, CATALOG, FACTS) == hooks._decide(state, read, CATALOG,
                                                                        FACTS)
    quoted = "SELECT $$x$$, balance FROM accounts WHERE id = 2"
    hooks._decide(state, quoted, CATALOG, FACTS)
    hooks._decide(state, quoted, CATALOG, FACTS)
    hooks._decide(state, "SELECT $$x$$, balance FROM accounts WHERE id = 3", CATALOG, FACTS)
    rewritten = "UPDATE accounts SET balance = random() WHERE id = $1"
    hooks._decide(state, rewritten, CATALOG, FACTS)
    hooks._decide(state, rewritten, CATALOG, FACTS)
    assert parsed == [read, quoted, "SELECT $$x$$, balance FROM accounts WHERE id = 3",
                      rewritten, rewritten]


class Catalogs:
    catalog = CATALOG

    def current(self):
        return CATALOG


def test_a_parse_with_current_facts_is_kept_without_a_hook_task(monkeypatch) -> None:
    """Also inside a batch (a Parse after a Bind in a pipeline, or a Bind after its Parse):
    there the decoded path would use the same facts."""
    import asyncio

    from replicate.pgwire import messages as m
    from replicate.runtime.relay import Action

    hooks, parsed = decider(monkeypatch)
    hooks.catalogs = Catalogs()

    async def scenario(in_batch: bool):
        session = FakeSession(in_batch=in_batch)
        state = session.extra["replicate"] = _SessionState()
        state.facts, state.facts_catalog, state.facts_executions = dict(FACTS), CATALOG, 0
        state.facts_at = asyncio.get_running_loop().time()
        sql = "SELECT balance FROM accounts WHERE id = $1"
        actions = [hooks.on_frontend(session, m.Parse("", sql, ())),
                   hooks.on_frontend(session, m.Bind("", "", (), (b"1",), ())),
                   hooks.on_frontend(session, m.Parse("", sql, ()))]
        return actions, state.statements[""].decision

    for in_batch in (False, True):
        parsed.clear()
        actions, decision = asyncio.run(scenario(in_batch))
        assert actions == [Action.FORWARD] * 3
        assert decision == Read(0, 42, frozenset({ACCOUNTS}), pure=True)
        assert len(parsed) == 1
