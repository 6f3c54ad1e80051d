"""The relay's undecoded path for prepared reads decides exactly as the decoded one.

``ReplicateHooks.pass_raw`` looks at the bytes of Bind, Describe, Execute, Sync and Flush and
either lets a message pass with the same book-keeping ``on_frontend`` would do for it, or says
no and leaves everything as it was. Each scenario runs twice, once through ``pass_raw``
(falling back to ``on_frontend``) and once through ``on_frontend`` only, and compares the
session state after every message.
"""

from __future__ import annotations

import asyncio
import inspect

import pytest
from hook_fakes import FakeSession

from replicate.gate import Read, Replicate
from replicate.pgwire import codec
from replicate.pgwire import messages as m
from replicate.runtime import intercept
from replicate.runtime.intercept import ReplicateHooks, _SessionState, _Statement

# a decoded path that would start a hook task returns a coroutine; the test only closes it
pytestmark = pytest.mark.filterwarnings("ignore:coroutine .* was never awaited:RuntimeWarning")

FACTS = {"role": "alice", "TimeZone": "UTC"}


class FakeEngine:
    applied_upto = 10

    def __init__(self, lease_index: int | None) -> None:
        self.lease_index = lease_index

    def lease_read_index(self) -> int | None:
        return self.lease_index


def statements() -> dict[str, _Statement]:
    return {
        "read": _Statement("SELECT * FROM t WHERE id = $1", (23,), Read(0, 29, pure=True)),
        "impure": _Statement("SELECT f(id) FROM t", (), Read(0, 19, pure=False)),
        "write": _Statement("UPDATE t SET v = 1", (), Replicate(0, 18, "UPDATE t SET v = 1")),
        "plain": _Statement("SELECT 1", (), None),
        "stätement": _Statement("SELECT * FROM t", (), Read(0, 15, pure=True)),
    }


class Hooks(ReplicateHooks):
    def _may_matter(self, sql: str) -> bool:
        return "registered" in sql  # the catalog's answer, without a catalog


def setup(*, consistency: str = "local", lease_index: int | None = None,
          fresh: bool = True, failed: bool = False, kept: bool = True):
    hooks = Hooks(engine=FakeEngine(lease_index), catalogs=None,
                  default_consistency=consistency)
    session = FakeSession(parameters={"TimeZone": "UTC"})
    state = session.extra["replicate"] = _SessionState()
    if kept:
        state.statements = statements()
    state.failed = failed
    state.facts = dict(FACTS)
    state.facts_executions = 0 if fresh else -1
    state.facts_at = asyncio.get_running_loop().time()
    return hooks, session


def snapshot(session: FakeSession) -> tuple:
    state = session.extra["replicate"]
    return (sorted((name, stmt.sql) for name, (stmt, _) in state.portals.items()),
            state.mid_batch, state.failed, state.facts_executions, session.hooked,
            session.executions, session.in_batch)


def kind(action) -> str:
    if inspect.isawaitable(action):
        action.close()  # a hook task the relay would run: not run here
        return "await"
    return action.value


def run(messages, **kw) -> tuple[list[bool], list[tuple], list[tuple]]:
    """Both paths over ``messages``: what pass_raw said to each, and the two state traces."""

    async def scenario():
        raw_hooks, raw_session = setup(**kw)
        hooks, session = setup(**kw)
        passed, raw_trace, trace = [], [], []
        for message in messages:
            data = codec.encode(message)
            ok = raw_hooks.pass_raw(raw_session, data[0], b"xx" + data + b"yy", 2,
                                    2 + len(data))
            passed.append(ok)
            raw_action = "forward" if ok else kind(raw_hooks.on_frontend(raw_session, message))
            action = kind(hooks.on_frontend(session, message))
            assert raw_action == action, message
            if action == "forward":
                raw_session.forwarded(message)
                session.forwarded(message)
            raw_trace.append(snapshot(raw_session))
            trace.append(snapshot(session))
        return passed, raw_trace, trace

    return asyncio.run(scenario())


READ = [m.Bind("", "read", (), (b"7",), ()), m.Describe("P", ""), m.Execute("", 0), m.Sync()]


def test_a_prepared_read_passes_undecoded_with_the_same_book_keeping() -> None:
    passed, raw_trace, trace = run(READ + READ)
    assert passed == [True] * 8
    assert raw_trace == trace
    # the pure read kept the facts current: the second read did not need them again
    assert trace[-1][3] == 2 and trace[-1][5] == 2


@pytest.mark.parametrize("name", ["stätement", "plain", "unknown"])
def test_other_statements_and_names_in_other_scripts(name: str) -> None:
    messages = [m.Bind("pörtal", name, (), (), ()), m.Execute("pörtal", 0),
                m.Close("P", "pörtal"), m.Sync()]
    passed, raw_trace, trace = run(messages)
    assert raw_trace == trace
    if name == "stätement":
        assert passed == [True, True, False, True]
        assert trace[0][0] == [("pörtal", "SELECT * FROM t")]


def test_an_impure_read_does_not_keep_the_facts_current() -> None:
    messages = [m.Bind("", "impure", (), (), ()), m.Execute("", 0), m.Sync()]
    passed, raw_trace, trace = run(messages)
    assert passed == [True, True, True]
    assert raw_trace == trace and trace[-1][3] == 0  # facts_executions not bumped


def test_writes_stale_facts_and_waiting_reads_take_the_decoded_path() -> None:
    write = [m.Bind("", "write", (), (), ()), m.Describe("P", ""), m.Execute("", 0), m.Sync()]
    passed, raw_trace, trace = run(write)
    assert passed[0] is False and passed[2] is False
    assert raw_trace == trace

    passed, raw_trace, trace = run(READ, fresh=False)  # the facts must be read again first
    assert passed[0] is False and raw_trace == trace

    # linearizable without a lease: the Bind waits for a read index (a hook task)
    passed, raw_trace, trace = run(READ, consistency="linearizable", lease_index=None)
    assert passed[0] is False and raw_trace == trace
    passed, raw_trace, trace = run(READ, consistency="linearizable", lease_index=10)
    assert passed == [True] * 4 and raw_trace == trace
    passed, _, _ = run(READ, consistency="linearizable", lease_index=11)  # not applied here
    assert passed[0] is False


def test_after_an_error_every_message_is_decoded() -> None:
    passed, raw_trace, trace = run(READ, failed=True)
    assert passed == [False] * 4
    assert raw_trace == trace


def test_a_sync_with_nothing_kept_quiets_the_session_on_both_paths() -> None:
    passed, raw_trace, trace = run([m.Sync()], kept=False)
    assert passed == [True]
    assert raw_trace == trace and trace[-1][4] == intercept._QUIET


def test_a_query_that_cannot_matter_passes_and_one_that_may_is_decoded() -> None:
    messages = [m.Query("SELECT 1"), m.Query("SELECT * FROM registered"), m.Query("SELECT 2")]
    passed, raw_trace, trace = run(messages)
    assert passed == [True, False, True]
    assert raw_trace == trace and trace[-1][5] == 2  # the relay counted the two forwarded
    passed, _, _ = run(messages, failed=True)
    assert passed == [False] * 3


def test_malformed_messages_are_left_to_the_decoder() -> None:
    async def scenario():
        hooks, session = setup()
        for data in (b"B\x00\x00\x00\x06ab",          # no NUL after the portal name
                     b"B\x00\x00\x00\x07a\x00b",      # none after the statement name
                     b"E\x00\x00\x00\x05x",           # none after the portal name
                     b"S\x00\x00\x00\x05x",           # a Sync with a body
                     b"Q\x00\x00\x00\x07a\x00b",      # bytes after the query's NUL
                     b"Q\x00\x00\x00\x05a",           # no NUL
                     b"B\x00\x00\x00\x08\xff\x00r\x00"):  # a name that is not UTF-8
            assert hooks.pass_raw(session, data[0], data, 0, len(data)) is False, data
        return snapshot(session)

    assert asyncio.run(scenario())[0] == []
