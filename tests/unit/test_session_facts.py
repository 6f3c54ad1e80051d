"""The proxy reuses a session's facts only while nothing ran in the session since it read them."""

from __future__ import annotations

import asyncio

from replicate.pgwire import messages as m
from replicate.runtime import intercept
from replicate.runtime.intercept import SESSION_SQL, ReplicateHooks
from replicate.runtime.relay import Action

FACTS = (b"alice", b"public", b'"$user", public', b"UTC", b"ISO, MDY", b"postgres", b"1",
         b"hex", b"on", None)


class FakeSession:
    """What ``ReplicateHooks._session`` uses of a relay session; counts facts queries."""

    def __init__(self) -> None:
        self.extra: dict = {}
        self.parameters = {"TimeZone": "UTC", "DateStyle": "ISO, MDY"}
        self.encoding = "utf-8"
        self.facts_queries = 0
        self.role = b"alice"

    async def exchange(self, message) -> list:
        assert message == m.Query(SESSION_SQL)
        self.facts_queries += 1
        row = (self.role,) + FACTS[1:3] + (self.parameters["TimeZone"].encode(),) + FACTS[4:]
        return [m.DataRow(row), m.ReadyForQuery("I")]


class Hooks(ReplicateHooks):
    def __init__(self) -> None:
        super().__init__(engine=None, catalogs=None, default_consistency="local")

    def _may_matter(self, sql: str) -> bool:
        return False  # every statement in these tests is relayed untouched


def test_facts_are_reused_until_something_runs_in_the_session() -> None:
    hooks, session = Hooks(), FakeSession()

    async def scenario() -> list:
        seen = [(await hooks._session(session))["role"]]
        seen.append((await hooks._session(session))["role"])     # reused
        for message in (m.Parse("s", "SELECT 1", ()), m.Bind("", "s", (), (), ()),
                        m.Describe("P", ""), m.Close("S", "s"), m.Flush(), m.Sync()):
            assert hooks.on_frontend(session, message) is Action.FORWARD
        seen.append((await hooks._session(session))["role"])     # still reused
        session.role = b"bob"                                    # e.g. SET ROLE bob
        assert hooks.on_frontend(session, m.Query("SET ROLE bob")) is Action.FORWARD
        seen.append((await hooks._session(session))["role"])     # asked again
        assert hooks.on_frontend(session, m.Execute("", 0)) is Action.FORWARD
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
    from replicate.gate import Read
    from replicate.runtime.intercept import _Statement
    hooks, session = Hooks(), FakeSession()
    state = hooks._state(session)
    state.portals["pure"] = (_Statement("SELECT 1", (), Read(0, 8, pure=True)), None)
    state.portals["impure"] = (_Statement("SELECT 1", (), Read(0, 8, pure=False)), None)

    async def scenario() -> None:
        await hooks._session(session)
        assert hooks.on_frontend(session, m.Execute("pure", 0)) is Action.FORWARD
        hooks.on_frontend(session, m.Sync())
        await hooks._session(session)
        assert session.facts_queries == 1  # still current
        assert hooks.on_frontend(session, m.Execute("impure", 0)) is Action.FORWARD
        hooks.on_frontend(session, m.Sync())
        await hooks._session(session)
        assert session.facts_queries == 2

    asyncio.run(scenario())
