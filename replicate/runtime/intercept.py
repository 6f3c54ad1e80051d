"""Interception: statements on registered tables go through the SQL gate and the engine.

One ``ReplicateHooks`` per client session plugs into the relay's seam
(``replicate.runtime.relay``). Everything that cannot touch a registered table
is forwarded on a fast path (one substring scan per statement, no parse, no
await). For the rest:

- **Session state comes from the node.** Before classifying, the hook asks
  the client's own backend for its search_path, current role and the
  settings that change results (``SESSION_SQL``): SET, SET LOCAL, RESET and
  rollbacks are then exactly PostgreSQL's. The answer is reused while the
  session has run nothing on the node since: the relay counts every Query,
  Execute and FunctionCall it forwards (``Session.executions``, also for
  messages the hooks never see), and only replicated writes (which run in
  the log, not in the session, and are not forwarded) and pure reads
  (``Read.pure``: registered tables only, no volatile function) may have
  run since; the settings
  the node reports itself (ParameterStatus) are unchanged, and it is less
  than ``FACTS_MAX_AGE`` seconds old (a configuration reload changes defaults
  without a message; PostgreSQL backends pick reloads up asynchronously too).
  A loop of writes pays one round trip for the facts per second, not one
  per statement.
- **Writes** (``Replicate``): a log entry with the rewritten text, the bind
  parameters as the client sent them, the settings and the role is submitted
  to the engine; the client gets exactly what PostgreSQL would send
  (RowDescription/DataRows for RETURNING in the formats it asked for,
  CommandComplete, or the ErrorResponse with its SQLSTATE) from the outcome
  on this proxy's own node.
- **Refusals** carry the gate's SQLSTATE, message and hint.
- **Reads** of registered tables wait for the session's read consistency
  (``local``, ``session``: this session's last write applied here,
  ``linearizable``: a leader-confirmed read index applied here), then go to
  the node.
- **Transactions**: a replicated write inside BEGIN ... COMMIT is refused
  with 0A000 and the node's transaction is put into the failed state, as a
  PostgreSQL error would. A simple Query string holding a replicated write
  and any other statement is refused the same way (it would be one implicit
  transaction spanning several log slots).
- ``SET replicate.read_consistency = ...`` is validated here and then stored
  by the node as a custom setting (so SET LOCAL and RESET behave as usual);
  ``SHOW replicate.read_consistency`` reports it, or the cluster default.

Extended protocol: Parse, Bind and Describe of a replicated statement are
forwarded too (the node prepares the statement but never executes it, so
ParameterDescription and RowDescription are the node's own); the Execute is
answered by the hook after everything before it was answered (``settle``).
After an error the hook swallows messages until Sync, and at the Sync fails
the node's implicit or explicit transaction the way PostgreSQL would. A
prepared write executed again in the usual shape (Bind, Describe, Execute,
Sync of the unnamed portal, nothing run in the session since the node last
accepted a Bind of it) is answered without the node at all
(``ReplicateHooks._prepared_write``).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import functools
import json
import logging
import random
from dataclasses import dataclass, field
from typing import Any

import psycopg
import pglast

from replicate.command import Entry, Outcome, Param, carried_settings
from replicate.config import READ_CONSISTENCIES
from replicate.errors import ReplicateError
from replicate.gate import Catalog, Read, Refuse, Relay, Replicate, classify, load_catalog
from replicate.gate.catalog import registered_names
from replicate.gate.classify import mentions_registered
from replicate.gate.template import numeric_template, reusable, reuse
from replicate.pgwire import codec
from replicate.pgwire import messages as m
from replicate.runtime.applier import NODE_STARTED_SQL
from replicate.runtime.engine import Engine
from replicate.runtime.relay import Action, Hooks, Session

log = logging.getLogger("replicate.intercept")

SETTING = "replicate.read_consistency"
FACTS_MAX_AGE = 1.0  # seconds a session's facts are reused (see the module docstring)
_REPORTED = ("TimeZone", "DateStyle", "IntervalStyle", "standard_conforming_strings")
# One round trip: what the gate and the log entry need from the client's session, as one
# JSON array in one column (one field to describe and decode instead of ten; the schemas
# as a JSON array, so a schema name with a comma in it stays one name). The last element
# maps the name of each registered table to the schema that name resolves to in this
# session (``to_regclass``: temporary tables first, then the search_path, as PostgreSQL
# resolves it), so that a table of the same name earlier on the path, which the proxy's
# catalog may not know (created since it was loaded, or the session's own temporary table),
# hides the registered one from the gate as it does from PostgreSQL.
_SESSION_SQL = (
    "SELECT json_build_array(current_user, current_schemas(false), "
    "current_setting('search_path'), current_setting('TimeZone'), current_setting('DateStyle'), "
    "current_setting('IntervalStyle'), current_setting('extra_float_digits'), "
    "current_setting('bytea_output'), current_setting('standard_conforming_strings'), "
    f"current_setting('{SETTING}', true), {{resolved}}, {NODE_STARTED_SQL})::text")
# The names go as hex (no quoting or standard_conforming_strings to get wrong).
_RESOLVED_SQL = (
    "(SELECT json_object_agg(r.name, n.nspname) FROM unnest(ARRAY[{names}]::text[]) AS r(name) "
    "LEFT JOIN pg_class c ON c.oid = to_regclass(quote_ident(r.name)) "
    "LEFT JOIN pg_namespace n ON n.oid = c.relnamespace)")
_FACT_KEYS = ("role", "schemas", "search_path", "TimeZone", "DateStyle", "IntervalStyle",
              "extra_float_digits", "bytea_output", "standard_conforming_strings", SETTING,
              "resolved", "node_started")


@functools.lru_cache(maxsize=8)
def session_sql(names: tuple[str, ...] = ()) -> str:
    """The facts query, resolving the (unqualified, sorted) table ``names`` in the session;
    built once per set of registered names."""
    if not names:
        return _SESSION_SQL.format(resolved="NULL")
    hexed = ", ".join(f"convert_from(decode('{n.encode().hex()}', 'hex'), 'UTF8')"
                      for n in names)
    return _SESSION_SQL.format(resolved=_RESOLVED_SQL.format(names=hexed))


class CatalogCache:
    """The gate's catalog for this proxy: registered tables, reloaded when the log changes them."""

    def __init__(self, engine: Engine, dsn: str) -> None:
        self.engine = engine
        self.dsn = dsn
        self.catalog: Catalog | None = None
        self._version = -1
        self._lock = asyncio.Lock()

    def current(self) -> Catalog | None:
        """The catalog if it is up to date with the applied log, else None (reload first)."""
        return self.catalog if self._version == self.engine.control_version else None

    async def load(self) -> Catalog:
        await self.engine.ready.wait()  # the schema is installed and the log position known
        async with self._lock:
            version = self.engine.control_version
            if self.catalog is None or self._version != version:
                self.catalog = await self._load_complete()
                self._version = version
            return self.catalog

    async def _load_complete(self) -> Catalog:
        """The catalog of a node state that holds every control entry this proxy applied.

        Applies commit asynchronously: a node that crashed may come back without its last
        applied slots while this proxy still counts them, and a registration among them would
        make a registered table look unregistered, its reads sent to the node unwaited. Then
        the engine reads the node's position again (queueing the lost slots) and the catalog
        is read once the node applied them again."""
        engine = self.engine
        while True:
            needed = engine.control_slot
            catalog, node_applied = await asyncio.to_thread(self._load)
            if node_applied >= needed:
                return catalog
            await engine.recheck_node()
            await engine.wait_applied(needed)

    def _load(self) -> tuple[Catalog, int]:
        """The catalog and the node's applied slot, read before it (the catalog holds at
        least the control entries up to that slot)."""
        with psycopg.connect(self.dsn, autocommit=True, connect_timeout=5,
                             application_name="replicate catalog") as conn:
            (applied,) = conn.execute("SELECT slot FROM replicate.applied").fetchone()
            names = registered_names(conn)  # includes tables whose guard is installed
            return load_catalog(conn, names), int(applied)


@dataclass(slots=True)
class _Statement:
    """A prepared statement as the hook classified it."""

    sql: str
    param_types: tuple[int, ...]
    decision: Any = None          # a gate decision, or None for "forward untouched"
    special: str | None = None    # "set" / "show" of replicate.read_consistency
    # session.executions when the node last accepted a Bind of it (-1: never): while nothing
    # ran in the session since, the statement still exists there (no DEALLOCATE can have run)
    confirmed: int = -1
    no_data: bool = False         # an execution returned no columns (no RETURNING)
    resolution: Any = None        # how the session resolved names when it was classified


@dataclass(slots=True)
class _SessionState:
    statements: dict[str, _Statement] = field(default_factory=dict)
    # the Bind is kept for writes; a read's portal passed undecoded has None (pass_raw)
    portals: dict[str, tuple[_Statement, m.Bind | None]] = field(default_factory=dict)
    last_write_slot: int = 0
    failed: bool = False          # an error was sent in this extended batch: skip until Sync
    mid_batch: bool = False       # extended-protocol messages came before the one handled now
    facts: dict | None = None     # the session facts last read from the node
    facts_catalog: Any = None     # the catalog whose table names they resolved
    facts_executions: int = -1    # session.executions when they were read (-1: stale)
    facts_at: float = 0.0         # when they were read (event loop time)
    pure_read: bool = False       # the Query being forwarded holds only pure reads
    # Decisions kept per numeric template (gate/template.py), for the facts and catalog in
    # ``decided_for``: a text that differs only in its numbers is not parsed again.
    decided: dict[str, tuple[Any, int]] = field(default_factory=dict)
    decided_for: tuple = (None, None)


_SYNC_CODE, _DESCRIBE_CODE, _FLUSH_CODE, _EXECUTE_CODE, _BIND_CODE, _QUERY_CODE = b"SDHEBQ"


def _cstring(data: bytes, start: int, end: int, encoding: str) -> tuple[str, int] | None:
    """The NUL-terminated string at ``data[start:]`` before ``end`` and the position after
    its NUL; None if there is none."""
    nul = data.find(0, start, end)
    if nul < 0:
        return None
    try:
        return data[start:nul].decode(encoding), nul + 1
    except UnicodeError:
        return None


def _sql_error(sqlstate: str, message: str, hint: str | None = None,
               detail: str | None = None) -> m.ErrorResponse:
    return codec.error_response("ERROR", sqlstate, message, detail=detail, hint=hint)


# Execute of the unnamed portal, all rows; then Sync: what follows a prepared write's Bind
# when the proxy may answer all three itself (ReplicateHooks._prepared_write).
_EXECUTE_AND_SYNC = [codec.encode(m.Execute("", 0)), codec.encode(m.Sync())]
_DESCRIBE_EXECUTE_AND_SYNC = [codec.encode(m.Describe("P", "")), *_EXECUTE_AND_SYNC]
_BIND_COMPLETE = codec.encode(m.BindComplete())
_NO_DATA = codec.encode(m.NoData())
_READY_IDLE = codec.encode(codec.ready_for_query("I"))
_DECIDED_MAX = 64  # numeric templates kept per session


def _resolution(facts: dict) -> tuple:
    """What decides which tables a statement's names stand for in the session."""
    return facts["schemas"], facts.get("resolved")


def _params(stmt: _Statement, bind: m.Bind) -> tuple[Param, ...]:
    """The bind parameters of ``bind`` as the client sent them, with the types it declared."""
    return tuple(Param(value, stmt.param_types[i] if i < len(stmt.param_types) else 0,
                       bool(bind.param_format(i)))
                 for i, value in enumerate(bind.params))


def _pure_reads(sql: str, decisions: list) -> bool:
    """Every statement of ``sql`` is a read that cannot change the session's settings."""
    return all(isinstance(d, Read) and d.pure for d in decisions if sql[d.start:d.end].strip())


def _result_binary(formats: tuple[int, ...]) -> bool | None:
    """All-text (False), all-binary (True), or mixed (None, not supported)."""
    if not formats:
        return False
    if all(f == formats[0] for f in formats):
        return bool(formats[0])
    return None


def _consistency_statement(sql: str) -> tuple[str, str | None] | None:
    """("set", value) / ("reset", None) / ("show", None) for our setting, else None."""
    if "read_consistency" not in sql.lower():
        return None
    try:
        stmts = pglast.parse_sql(sql)
    except pglast.parser.ParseError:
        return None
    if len(stmts) != 1:
        return None
    node = stmts[0].stmt
    kind = type(node).__name__
    if kind == "VariableShowStmt" and node.name.lower() == SETTING:
        return ("show", None)
    if kind == "VariableSetStmt" and (node.name or "").lower() == SETTING:
        if node.kind.name == "VAR_SET_VALUE" and node.args and len(node.args) == 1:
            arg = node.args[0]
            value = getattr(getattr(arg, "val", None), "sval", None)
            if value is None:
                value = getattr(getattr(arg, "val", None), "ival", None)
            return ("set", str(value) if value is not None else None)
        return ("reset", None)
    return None


# The message types the hooks must see (``Session.hooked``). While a session has no prepared
# statement or portal on a registered table and no failed batch (``_QUIET``), only Query and
# Parse can change anything: Bind/Execute/Describe/Close/Flush/Sync of other statements are
# forwarded undecoded. The first Parse that may matter switches back to ``_ALL`` before it
# is classified; a Sync with nothing kept switches to ``_QUIET`` again.
_ALL = frozenset(b"QPBDESCH")
_CACHED_TEXTS = 4096        # statement texts whose _may_matter answer is remembered
_CACHED_TEXT_MAX = 8192     # ... each at most this long
_QUIET = frozenset(b"QP")


class ReplicateHooks(Hooks):
    """The hooks of a proxy (see the module docstring); per-session state in ``session.extra``."""

    def __init__(self, engine: Engine, catalogs: CatalogCache, default_consistency: str) -> None:
        self.engine = engine
        self.catalogs = catalogs
        self.default_consistency = default_consistency
        self._matters: dict[str, bool] = {}   # statement text -> may it matter (_may_matter)
        self._matters_catalog: Catalog | None = None
        # Draws the literals for random() and gen_random_uuid() in writes. Seeded once from
        # the OS: a new Random per statement read 2.5 KB from os.urandom each time (6% of the
        # proxy's time on local reads, which never draw from it).
        self._rng = random.Random()

    @staticmethod
    def _state(session: Session) -> _SessionState:
        state = session.extra.get("replicate")
        if state is None:
            state = session.extra["replicate"] = _SessionState()
            session.hooked = _QUIET
        return state

    # ---------------------------------------------------------------- dispatch
    def on_frontend(self, session: Session, message: Any) -> Any:
        action = self._dispatch(session, message)
        if action is Action.FORWARD and type(message) is m.Execute:
            self._executing(session, self._state(session).portals.get(message.portal))
        elif action is not Action.FORWARD and action is not Action.HANDLED:
            return self._after(session, action)
        return action

    def pass_raw(self, session: Session, code: int, data: bytes, start: int, end: int) -> bool:
        """The relay's undecoded path (``replicate.runtime.relay``) for the messages of a
        prepared read, and for a Query that cannot matter: each decision here is the one
        ``_dispatch`` makes for the decoded message, taken from its bytes; anything else says
        False and goes to ``_dispatch``."""
        state = session.extra.get("replicate")
        if state is None or state.failed:
            return False
        if code == _QUERY_CODE:
            sql = _cstring(data, start + 5, end, session.encoding)
            if sql is None or sql[1] != end or self._may_matter(sql[0]):
                return False
            state.mid_batch = False
            return True
        if code == _SYNC_CODE:
            if end - start != 5:
                return False
            self._synced(session, state)
            return True
        if code == _DESCRIBE_CODE or code == _FLUSH_CODE:
            state.mid_batch = session.in_batch
            return True
        if code == _EXECUTE_CODE:
            portal = _cstring(data, start + 5, end, session.encoding)
            if portal is None:
                return False
            entry = state.portals.get(portal[0])
            if entry is not None and isinstance(entry[0].decision, Replicate):
                return False
            state.mid_batch = session.in_batch
            self._executing(session, entry)
            return True
        if code == _BIND_CODE:
            portal = _cstring(data, start + 5, end, session.encoding)
            name = portal and _cstring(data, portal[1], end, session.encoding)
            if not name:
                return False
            stmt = state.statements.get(name[0])
            state.mid_batch = session.in_batch
            if stmt is None:
                state.portals.pop(portal[0], None)
                return True
            if isinstance(stmt.decision, Read) and self._reads_ready(session, state):
                state.portals[portal[0]] = (stmt, None)
                return True
        return False

    def _executing(self, session: Session, portal: tuple | None) -> None:
        """An Execute of ``portal`` (None: not one of ours) is being forwarded."""
        if portal is not None and isinstance(portal[0].decision, Read) \
                and portal[0].decision.pure:
            self._pure_execution(session)

    def _pure_execution(self, session: Session) -> None:
        """The message being forwarded executes only pure reads: current facts stay current."""
        state = self._state(session)
        if state.facts_executions == session.executions:
            state.facts_executions += 1  # the relay counts this execution once it forwards it

    async def _after(self, session: Session, pending: Any) -> Action:
        state = self._state(session)
        state.pure_read = False
        action = await pending
        if action is Action.FORWARD and state.pure_read:
            self._pure_execution(session)
        return action

    def _dispatch(self, session: Session, message: Any) -> Any:
        state = self._state(session)
        t = type(message)
        if state.failed and t is not m.Sync:
            return Action.HANDLED  # PostgreSQL discards everything until Sync after an error
        if t is m.Sync:
            if state.failed:
                return self._sync_after_error(session)
            self._synced(session, state)
            return Action.FORWARD
        # whether extended-protocol messages went out before this one since the last Sync
        state.mid_batch = session.in_batch and t is not m.Query
        if t is m.Query:
            if self._may_matter(message.sql):
                return self._query_now(session, state, message.sql)
            return Action.FORWARD
        if t is m.Parse:
            if self._may_matter(message.sql):
                session.hooked = _ALL  # a statement we keep: every message may matter now
                return self._parse_now(session, state, message)
            state.statements.pop(message.name, None)
            return Action.FORWARD
        if t is m.Bind:
            stmt = state.statements.get(message.statement)
            if stmt is None:
                state.portals.pop(message.portal, None)
                return Action.FORWARD
            if type(stmt.decision) is Replicate and stmt.confirmed == session.executions \
                    and not message.portal and not session.in_batch \
                    and session.transaction_status == "I" and self._facts_current(session, state) \
                    and _result_binary(message.result_formats) is not None:
                rest = session.peek_frames(3)
                describe = rest == _DESCRIBE_EXECUTE_AND_SYNC
                if (describe and stmt.no_data) or rest[:2] == _EXECUTE_AND_SYNC:
                    state.portals.pop("", None)
                    return self._prepared_write(session, stmt, message, describe)
            state.portals[message.portal] = (stmt, message)
            if isinstance(stmt.decision, Read):
                # PostgreSQL takes the portal's snapshot at Bind: wait before it, not at Execute
                if self._reads_ready(session, state):
                    return Action.FORWARD  # nothing to wait for: no hook task
                return self._bind_read(session)
            if isinstance(stmt.decision, Replicate) and not state.mid_batch \
                    and session.transaction_status != "E" \
                    and not self._facts_current(session, state):
                # A prepared write executed again: its batch starts here, the last point
                # where the session's facts (role, settings: SET ROLE may have run since the
                # Parse) can be asked for (see _session)
                return self._bind_write(session)
            return Action.FORWARD
        if t is m.Execute:
            entry = state.portals.get(message.portal)
            if entry is not None and isinstance(entry[0].decision, Replicate):
                return self._execute(session, message, *entry)
            return Action.FORWARD
        if t is m.Close:
            (state.statements if message.kind == "S" else state.portals).pop(message.name, None)
        return Action.FORWARD

    @staticmethod
    def _synced(session: Session, state: _SessionState) -> None:
        """A Sync is being forwarded (not after an error)."""
        if not state.statements and not state.portals:
            session.hooked = _QUIET

    def _reads_ready(self, session: Session, state: _SessionState) -> bool:
        """A read may go to the node now, without awaiting (``_facts_fresh``, ``_reads_met``)."""
        catalog = self.catalogs.catalog if self.catalogs is not None else None
        return self._facts_fresh(session, state, catalog) and self._reads_met(state)

    def _may_matter(self, sql: str) -> bool:
        catalog = self.catalogs.current()
        if catalog is None:
            return True  # not loaded, or the log registered something since: look closer
        # The answer depends only on the text and the catalog: remembered per catalog for
        # texts that come again (a driver's or pool's statements), bounded in count and size.
        cache = self._matters
        if self._matters_catalog is not catalog:
            cache.clear()
            self._matters_catalog = catalog
        hit = cache.get(sql)
        if hit is None:
            hit = mentions_registered(sql, catalog) or "read_consistency" in sql.lower()
            if len(sql) <= _CACHED_TEXT_MAX:
                if len(cache) >= _CACHED_TEXTS:
                    cache.clear()
                cache[sql] = hit
        return hit

    # ---------------------------------------------------------------- session facts
    async def _session(self, session: Session) -> dict[str, str | None]:
        """The session's facts: asked from the node between batches, else the last answer.

        A simple Query sent in the middle of an extended-protocol batch would commit the
        batch's implicit transaction and replace the unnamed portal, so inside a batch the
        facts from its start are used, with the settings the node reports by itself
        (ParameterStatus) kept current.
        """
        state = self._state(session)
        if state.mid_batch:
            if state.facts is None or state.facts_executions != session.executions:
                # Something ran in the session since the facts were read (or they never
                # were): they may be stale, and a Query here would break the batch.
                raise ReplicateError("cannot read the session's settings inside a pipeline",
                                     hint="send a Sync between other statements and a write "
                                          "to a replicated table", sqlstate="0A000")
            facts = dict(state.facts)
            for name in _REPORTED:
                if name in session.parameters:
                    facts[name] = session.parameters[name]
            return facts
        catalog = self.catalogs.catalog if self.catalogs is not None else None
        if self._facts_current(session, state) and state.facts_catalog is catalog:
            return state.facts
        names = tuple(sorted({t.name for t in catalog.tables})) if catalog is not None else ()
        replies = await session.exchange(m.Query(session_sql(names)))
        rows = [r for r in replies if type(r) is m.DataRow]
        if not rows:
            err = next((r for r in replies if type(r) is m.ErrorResponse), None)
            raise ReplicateError("cannot read the session's settings from the node",
                                 detail=err.fields.get("M") if err else None, sqlstate="XX000")
        values = json.loads(rows[0].values[0].decode(session.encoding))
        facts = dict(zip(_FACT_KEYS, values))
        facts["schemas"] = tuple(facts["schemas"] or ())
        facts["resolved"] = facts.get("resolved") or {}
        if facts.get("node_started") is not None:
            # The node may have restarted since the engine read its applied slot: a read
            # below must not trust that slot before the engine has read it again.
            await self.engine.check_node(int(facts["node_started"]))
        state.facts = facts
        state.facts_catalog = catalog
        state.facts_executions = session.executions
        state.facts_at = asyncio.get_running_loop().time()
        return facts

    @staticmethod
    def _facts_current(session: Session, state: _SessionState) -> bool:
        """The facts last read still hold (see the module docstring)."""
        facts = state.facts
        if facts is None or state.facts_executions != session.executions \
                or asyncio.get_running_loop().time() - state.facts_at >= FACTS_MAX_AGE:
            return False
        reported = session.parameters
        for name in _REPORTED:  # a loop, not all(...): this runs for every read
            value = reported.get(name)
            if value is not None and value != facts.get(name):
                return False
        return True

    def _facts_fresh(self, session: Session, state: _SessionState, catalog: Any) -> bool:
        """The facts last read may be used as they are, without awaiting: current
        (``_facts_current``) and resolved against ``catalog``. Inside a batch too: there
        ``_session`` would return the same facts (it cannot ask the node, and it overlays
        only the reported settings, which ``_facts_current`` found unchanged)."""
        return state.facts_catalog is catalog and self._facts_current(session, state)

    def _reads_met(self, state: _SessionState) -> bool:
        """With fresh facts: the session's read consistency asks for nothing the local node
        lacks (``local``; ``session`` with its last write applied; ``linearizable`` at a leader
        holding a read lease, its index applied), so a read may go to the node at once. Else
        ``_wait_for_reads`` decides, awaiting."""
        mode = self._consistency(state.facts)
        if mode == "local":
            return True
        engine = self.engine
        if mode == "session":
            return state.last_write_slot <= engine.applied_upto
        index = engine.lease_read_index()
        return index is not None and index <= engine.applied_upto

    def _consistency(self, facts: dict[str, str | None]) -> str:
        value = facts.get(SETTING) or self.default_consistency
        return value if value in READ_CONSISTENCIES else self.default_consistency

    async def _classify(self, session: Session, sql: str) -> tuple[list, dict, Catalog]:
        catalog = await self.catalogs.load()
        facts = await self._session(session)
        return self._decide(self._state(session), sql, catalog, facts), facts, catalog

    def _decide(self, state: _SessionState, sql: str, catalog: Catalog, facts: dict) -> list:
        """The gate's decisions for ``sql`` under ``facts`` and ``catalog``; for a text with
        the numeric template of one decided before under the same two (or the same text, when
        it has no template), that decision again (a single read, or a single write the gate
        did not rewrite: gate/template.py)."""
        key = numeric_template(sql)
        if key is None and len(sql) <= _CACHED_TEXT_MAX:
            key = sql  # the same text again (e.g. a Parse with $1): it lexes the same
        if key is not None:
            decided = state.decided
            if state.decided_for[0] is not facts or state.decided_for[1] is not catalog:
                decided.clear()
                state.decided_for = (facts, catalog)
            hit = decided.get(key)
            if hit is not None:
                return [reuse(hit[0], hit[1], sql)]
        decisions = classify(sql, catalog, search_path=facts["schemas"] or ("public",),
                             now=dt.datetime.now(dt.timezone.utc), rng=self._rng,
                             resolved=facts.get("resolved"))
        if key is not None:
            kept = reusable(sql, decisions)
            if kept is not None:
                if len(decided) >= _DECIDED_MAX:
                    decided.clear()
                decided[key] = (kept, len(sql))
        return decisions

    def _entry(self, text: str, facts: dict, params: tuple[Param, ...] = (),
               binary_results: bool = False) -> Entry:
        return Entry(text, params=params, settings=carried_settings(facts), role=facts["role"],
                     binary_results=binary_results)

    async def _wait_for_reads(self, session: Session, facts: dict) -> None:
        mode = self._consistency(facts)
        if mode == "session" and self._state(session).last_write_slot:
            await self.engine.wait_applied(self._state(session).last_write_slot)
        elif mode == "linearizable":
            index = await self.engine.read_index()
            await self.engine.wait_applied(index)

    async def _submit(self, session: Session, entry: Entry) -> Outcome | ReplicateError:
        try:
            outcome = await self.engine.submit(entry)
        except ReplicateError as exc:
            return exc
        state = self._state(session)
        state.last_write_slot = max(state.last_write_slot, outcome.slot)
        return outcome

    # ---------------------------------------------------------------- simple protocol
    def _query_now(self, session: Session, state: _SessionState, sql: str) -> Any:
        """A Query that mentions registered tables: classified at once when the catalog and the
        session's facts are current, and forwarded without awaiting anything when it only
        reads and its reads are ready (``_reads_met``); else ``_query`` (a coroutine) with
        the decisions made here, if any."""
        catalog = self.catalogs.current() if self.catalogs is not None else None
        if catalog is None or not self._facts_fresh(session, state, catalog) \
                or _consistency_statement(sql) is not None:
            return self._query(session, sql)
        facts = state.facts
        decisions = self._decide(state, sql, catalog, facts)
        kinds = {type(d) for d in decisions}
        if kinds <= {Read, Relay} and (Read not in kinds or self._reads_met(state)):
            if _pure_reads(sql, decisions):
                self._pure_execution(session)  # only reads that cannot change the settings
            return Action.FORWARD
        return self._query(session, sql, (decisions, facts))

    async def _query(self, session: Session, sql: str,
                     classified: tuple[list, dict] | None = None) -> Action:
        special = _consistency_statement(sql)
        if special is not None:
            return await self._consistency_query(session, special)
        if classified is not None:
            decisions, facts = classified
        else:
            try:
                decisions, facts, _ = await self._classify(session, sql)
            except ReplicateError as exc:
                return await self._refuse_query(session, exc.sqlstate, exc.message, exc.hint)
        refused = next((d for d in decisions if isinstance(d, Refuse)), None)
        if refused is not None:
            err = refused.error
            return await self._refuse_query(session, err.sqlstate, err.message, err.hint)
        writes = [d for d in decisions if isinstance(d, Replicate)]
        if not writes:
            if any(isinstance(d, Read) for d in decisions):
                try:
                    await self._wait_for_reads(session, facts)
                except ReplicateError as exc:
                    return await self._refuse_query(session, exc.sqlstate, exc.message, exc.hint)
            # only reads that cannot change the session's settings: its facts stay current
            self._state(session).pure_read = _pure_reads(sql, decisions)
            return Action.FORWARD
        if len([d for d in decisions if sql[d.start:d.end].strip()]) > 1:
            return await self._refuse_query(
                session, "0A000", "a write to a replicated table must be sent as a statement "
                "of its own, not together with other statements in one query string",
                "send each statement separately")
        if session.transaction_status == "E":
            return Action.FORWARD  # the node answers 25P02, as PostgreSQL does
        if session.transaction_status == "T":
            return await self._refuse_query(
                session, "0A000", "writes to replicated tables inside a transaction block "
                "(BEGIN ... COMMIT) are not supported yet",
                "run the write in autocommit mode, outside BEGIN ... COMMIT")
        write = writes[0]
        if write.copy_in:
            return await self._refuse_query(session, "0A000", "COPY FROM STDIN into a "
                                            "replicated table is not supported yet",
                                            "use INSERT statements")
        result = await self._submit(session, self._entry(write.text, facts))
        session.write_client(b"".join(self._outcome_messages(session, result, describe=True))
                             + codec.encode(codec.ready_for_query("I")))
        return Action.HANDLED

    async def _refuse_query(self, session: Session, sqlstate: str, message: str,
                            hint: str | None) -> Action:
        error = codec.encode(_sql_error(sqlstate, message, hint), session.encoding)
        await session.wait_idle()
        if session.transaction_status == "I":
            session.write_client(error + codec.encode(codec.ready_for_query("I")))
            return Action.HANDLED
        # Inside a transaction block: fail the node's transaction too, as PostgreSQL would.
        self._state(session).facts_executions = -1  # the rollback undoes SET LOCAL and such
        replies = await session.exchange(m.Query(_FAIL_TRANSACTION))
        ready = next((r for r in replies if type(r) is m.ReadyForQuery), codec.ready_for_query("E"))
        session.write_client(error + codec.encode(ready))
        return Action.HANDLED

    async def _consistency_query(self, session: Session, special: tuple[str, str | None]) -> Action:
        kind, value = special
        if kind == "show":
            facts = await self._session(session)
            await session.wait_idle()
            enc = session.encoding
            session.write_client(
                codec.encode(codec.row_description([(SETTING, 25)]), enc)
                + codec.encode(codec.data_row([self._consistency(facts).encode(enc)]), enc)
                + codec.encode(codec.command_complete("SHOW"), enc)
                + codec.encode(codec.ready_for_query(session.transaction_status), enc))
            return Action.HANDLED
        if kind == "set" and value not in READ_CONSISTENCIES:
            return await self._refuse_query(
                session, "22023", f'invalid value for parameter "{SETTING}": "{value}"',
                "one of: " + ", ".join(READ_CONSISTENCIES))
        return Action.FORWARD  # the node keeps it as a custom setting

    # ---------------------------------------------------------------- extended protocol
    async def _parse(self, session: Session, message: m.Parse) -> Action:
        special = _consistency_statement(message.sql)
        if special is not None:
            if special[0] == "set" and special[1] not in READ_CONSISTENCIES:
                return await self._fail_batch(session, _sql_error(
                    "22023", f'invalid value for parameter "{SETTING}": "{special[1]}"',
                    "one of: " + ", ".join(READ_CONSISTENCIES)))
            if special[0] == "show":
                # The node answers it: the custom setting, or this cluster's default.
                session.write_backend(m.Parse(message.name, _show_sql(self.default_consistency),
                                              message.param_types))
                self._state(session).statements.pop(message.name, None)
                return Action.HANDLED
            self._state(session).statements.pop(message.name, None)
            return Action.FORWARD
        try:
            decisions, facts, _ = await self._classify(session, message.sql)
        except ReplicateError as exc:
            return await self._fail_batch(session, _sql_error(exc.sqlstate, exc.message, exc.hint))
        action = self._keep(session, message, decisions, facts)
        return action if action is Action.FORWARD else await action

    def _parse_now(self, session: Session, state: _SessionState, message: m.Parse) -> Any:
        """A Parse that mentions registered tables, decided at once when the catalog and the
        session's facts are current (as ``_query_now``); else ``_parse`` (a coroutine)."""
        catalog = self.catalogs.current() if self.catalogs is not None else None
        if catalog is None or not self._facts_fresh(session, state, catalog) \
                or _consistency_statement(message.sql) is not None:
            return self._parse(session, message)
        decisions = self._decide(state, message.sql, catalog, state.facts)
        return self._keep(session, message, decisions, state.facts)

    def _keep(self, session: Session, message: m.Parse, decisions: list, facts: dict) -> Any:
        """Keep the statement ``message`` prepares as classified: FORWARD, or the coroutine
        that fails the batch (a refusal, several statements)."""
        meaningful = [d for d in decisions if message.sql[d.start:d.end].strip()]
        refused = next((d for d in meaningful if isinstance(d, Refuse)), None)
        if refused is not None:
            err = refused.error
            return self._fail_batch(session, _sql_error(err.sqlstate, err.message, err.hint))
        if all(isinstance(d, Relay) for d in meaningful):
            self._state(session).statements.pop(message.name, None)
            return Action.FORWARD
        if len(meaningful) != 1:
            return self._fail_batch(session, _sql_error(
                "42601", "cannot insert multiple commands into a prepared statement"))
        stmt = _Statement(message.sql, message.param_types, meaningful[0])
        stmt.resolution = _resolution(facts)
        self._state(session).statements[message.name] = stmt
        return Action.FORWARD

    async def _execute(self, session: Session, message: m.Execute, stmt: _Statement,
                       bind: m.Bind) -> Action:
        decision = stmt.decision
        if not isinstance(decision, Replicate):
            return Action.FORWARD
        if await session.settle():
            return Action.HANDLED  # an earlier message failed: PostgreSQL skips this one
        stmt.confirmed = session.executions  # the node bound it: it exists there
        if session.transaction_status == "T":
            return await self._fail_batch(session, _sql_error(
                "0A000", "writes to replicated tables inside a transaction block "
                "(BEGIN ... COMMIT) are not supported yet",
                "run the write in autocommit mode, outside BEGIN ... COMMIT"), settled=True)
        binary = _result_binary(bind.result_formats)
        if binary is None:
            return await self._fail_batch(session, _sql_error(
                "0A000", "mixed text and binary result formats are not supported for writes "
                "to replicated tables"), settled=True)
        params = _params(stmt, bind)
        try:
            facts = await self._session(session)
        except ReplicateError as exc:
            return await self._fail_batch(session, _sql_error(exc.sqlstate, exc.message,
                                                              exc.hint), settled=True)
        if _resolution(facts) != stmt.resolution:
            # The session resolves names differently than when the statement was prepared
            # (SET search_path, a temporary table): PostgreSQL plans it again, so the gate
            # decides again.
            decision = await self._reclassify(session, stmt, facts)
            if not isinstance(decision, Replicate):
                if isinstance(decision, Refuse):
                    err = decision.error
                    return await self._fail_batch(session, _sql_error(
                        err.sqlstate, err.message, err.hint), settled=True)
                return Action.FORWARD  # no registered table now: the node runs it
        result = await self._submit(session, self._entry(decision.text, facts, params, binary))
        if isinstance(result, ReplicateError) or not result.ok:
            session.write_client(b"".join(self._outcome_messages(session, result,
                                                                 describe=False)))
            self._state(session).failed = True
            return Action.HANDLED
        if not result.columns:
            stmt.no_data = True
        session.write_client(b"".join(self._outcome_messages(session, result, describe=False)))
        return Action.HANDLED

    async def _reclassify(self, session: Session, stmt: _Statement, facts: dict) -> Any:
        """The gate's decision for ``stmt`` under the session's current names. A write
        decision is kept for the next executions; any other is made again each time (the
        session may resolve the names back)."""
        catalog = await self.catalogs.load()
        decisions = classify(stmt.sql, catalog, search_path=facts["schemas"] or ("public",),
                             now=dt.datetime.now(dt.timezone.utc), rng=self._rng,
                             resolved=facts.get("resolved"))
        meaningful = [d for d in decisions if stmt.sql[d.start:d.end].strip()]
        decision = meaningful[0] if len(meaningful) == 1 else Relay(0, len(stmt.sql))
        if isinstance(decision, Replicate):
            stmt.decision, stmt.resolution = decision, _resolution(facts)
        return decision

    async def _prepared_write(self, session: Session, stmt: _Statement, bind: m.Bind,
                              describe: bool) -> Action:
        """Bind, (Describe,) Execute and Sync of a prepared write, answered without the node.

        The common shape of a prepared write (libpq's PQsendQueryPrepared, so psycopg's and
        pgbench's: the unnamed portal, all rows, a Sync of its own, outside a transaction
        block) needs nothing from the client's own session: the write runs in the log, the
        session's facts are current, and the node accepted a Bind of this statement with
        nothing run in the session since. Forwarding the Bind (to see it accepted) and the Sync
        (for its ReadyForQuery) cost two round trips to the node per write, so the proxy
        answers them itself: BindComplete, NoData for a Describe (taken only for a statement
        seen to return no columns), the outcome, ReadyForQuery. A bad parameter value then
        fails in the apply, the same on every node, and the client gets that error after
        BindComplete instead of in its place.
        """
        session.skip_frames(3 if describe else 2)  # peeked at the Bind
        state = self._state(session)
        binary = _result_binary(bind.result_formats)
        entry = self._entry(stmt.decision.text, state.facts, _params(stmt, bind), bool(binary))
        result = await self._submit(session, entry)
        session.write_client(b"".join([_BIND_COMPLETE, _NO_DATA if describe else b"",
                                       *self._outcome_messages(session, result, describe=False),
                                       _READY_IDLE]))
        return Action.HANDLED

    async def _bind_write(self, session: Session) -> Action:
        try:
            await self._session(session)
        except ReplicateError as exc:
            return await self._fail_batch(session, _sql_error(exc.sqlstate, exc.message))
        return Action.FORWARD

    async def _bind_read(self, session: Session) -> Action:
        facts = await self._session(session)
        try:
            await self._wait_for_reads(session, facts)
        except ReplicateError as exc:
            return await self._fail_batch(session, _sql_error(exc.sqlstate, exc.message))
        return Action.FORWARD

    async def _fail_batch(self, session: Session, error: m.ErrorResponse, *,
                          settled: bool = False) -> Action:
        """Answer ``error`` in its place in the batch, then skip everything until Sync."""
        if not settled and await session.settle():
            return Action.HANDLED
        session.write_client(codec.encode(error, session.encoding))
        self._state(session).failed = True
        return Action.HANDLED

    async def _sync_after_error(self, session: Session) -> Action:
        """End a failed batch: roll the node's transaction back (or mark it failed) like PG."""
        self._state(session).failed = False
        self._state(session).facts_executions = -1  # the rollback undoes SET LOCAL and such
        replies = await session.exchange(m.Query(_FAIL_TRANSACTION))
        ready = next((r for r in replies if type(r) is m.ReadyForQuery), codec.ready_for_query("I"))
        session.write_client(codec.encode(ready))
        return Action.HANDLED

    # ---------------------------------------------------------------- replies
    def _outcome_messages(self, session: Session, result: Outcome | ReplicateError, *,
                          describe: bool) -> list[bytes]:
        enc = session.encoding
        if isinstance(result, ReplicateError):
            return [codec.encode(_sql_error(result.sqlstate, result.message, result.hint,
                                            result.detail), enc)]
        if not result.ok:
            return [codec.encode(_sql_error(result.sqlstate or "XX000", result.message or "",
                                            result.hint, result.detail), enc)]
        out = []
        if result.columns and describe:
            out.append(codec.encode(m.RowDescription(tuple(
                m.FieldDescription(c.name, type_oid=c.type_oid, type_size=c.type_size,
                                   type_modifier=c.type_modifier, format=int(c.binary))
                for c in result.columns)), enc))
        for row in result.rows:
            out.append(codec.encode(m.DataRow(tuple(row)), enc))
        out.append(codec.encode(m.CommandComplete(result.command_tag or ""), enc))
        return out


def _show_sql(default: str) -> str:
    literal = default.replace("'", "''")
    return (f"SELECT coalesce(nullif(current_setting('{SETTING}', true), ''), '{literal}') "
            f'AS "{SETTING}"')


# Fails the node's current (implicit or explicit) transaction without side effects.
_FAIL_TRANSACTION = ("DO $replicate$ BEGIN RAISE EXCEPTION 'replicate: statement refused' "
                     "USING ERRCODE = '0A000'; END $replicate$")
