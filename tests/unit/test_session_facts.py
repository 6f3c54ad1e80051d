"""The proxy reuses a session's facts only while nothing ran in the session since it read them."""

from __future__ import annotations

import asyncio
import json

import hook_fakes
from replicate.gate import Read
from replicate.pgwire import messages as m
from replicate.runtime import intercept
from replicate.runtime.intercept import ReplicateHooks, _Statement, session_sql
from replicate.runtime.relay import Action


class FakeSession(hook_fakes.FakeSession):
    """What the hooks use of a relay session; counts the facts queries."""

    def __init__(self) -> None:
        super().__init__(parameters={"TimeZone": "UTC", "DateStyle": "ISO, MDY"})
        self.facts_queries = 0
        self.role = "alice"
        self.hooked = frozenset()

    async def exchange(self, message) -> list:
        assert message == m.Query(session_sql())
        self.facts_queries += 1
        facts = [self.role, ["public"], '"$user", public', self.parameters["TimeZone"],
                 "ISO, MDY", "postgres", "1", "hex", "on", None, None]
        return [m.DataRow((json.dumps(facts).encode(),)), m.ReadyForQuery("I")]


class Hooks(ReplicateHooks):
    def __init__(self) -> None:
        super().__init__(engine=None, catalogs=None, default_consistency="local")

    def _may_matter(self, sql: str) -> bool:
        return False  # every statement in these tests is relayed untouched


def send(hooks: Hooks, session: FakeSession, message) -> Action:
    """One client message through the hooks, then what the relay does when it forwards it."""
    action = hooks.on_frontend(session, message)
    assert action is Action.FORWARD
    session.forwarded(message)
    return action


def test_facts_are_reused_until_something_runs_in_the_session() -> None:
    hooks, session = Hooks(), FakeSession()

    async def scenario() -> list:
        seen = [(await hooks._session(session))["role"]]
        seen.append((await hooks._session(session))["role"])     # reused
        for message in (m.Parse("s", "SELECT 1", ()), m.Bind("", "s", (), (), ()),
                        m.Describe("P", ""), m.Close("S", "s"), m.Flush(), m.Sync()):
            send(hooks, session, message)
        seen.append((await hooks._session(session))["role"])     # still reused
        session.role = "bob"                                     # e.g. SET ROLE bob
        send(hooks, session, m.Query("SET ROLE bob"))
        seen.append((await hooks._session(session))["role"])     # asked again
        session.executions += 1  # an Execute the hooks never saw (the relay counts it)
        seen.append((await hooks._session(session))["role"])     # asked again
        return seen

    assert asyncio.run(scenario()) == ["alice", "alice", "alice", "bob", "bob"]
    assert session.facts_queries == 3


def test_facts_are_asked_again_when_reported_settings_change_or_they_age() -> None:
    hooks, session = Hooks(), FakeSession()

    async def scenario() -> None:
        await hooks._session(session)
        await hooks._session(session)
        assert session.facts_queries == 1
        session.parameters["TimeZone"] = "Asia/Tokyo"  # a ParameterStatus from the node
        assert (await hooks._session(session))["TimeZone"] == "Asia/Tokyo"
        assert (await hooks._session(session))["TimeZone"] == "Asia/Tokyo"
        assert session.facts_queries == 2
        session.parameters["TimeZone"] = "UTC"
        assert (await hooks._session(session))["TimeZone"] == "UTC"
        assert session.facts_queries == 3
        hooks._state(session).facts_at -= intercept.FACTS_MAX_AGE
        await hooks._session(session)
        assert session.facts_queries == 4

    asyncio.run(scenario())


def test_executing_a_pure_read_keeps_the_facts() -> None:
    hooks, session = Hooks(), FakeSession()
    state = hooks._state(session)
    state.portals["pure"] = (_Statement("SELECT 1", (), Read(0, 8, pure=True)), None)
    state.portals["impure"] = (_Statement("SELECT 1", (), Read(0, 8, pure=False)), None)

    async def scenario() -> None:
        await hooks._session(session)
        send(hooks, session, m.Execute("pure", 0))
        send(hooks, session, m.Sync())
        await hooks._session(session)
        assert session.facts_queries == 1  # still current
        send(hooks, session, m.Execute("impure", 0))
        send(hooks, session, m.Sync())
        await hooks._session(session)
        assert session.facts_queries == 2

    asyncio.run(scenario())
