"""Operator actions behind `replicate status`, `table add/remove/list` and `log`.

Each function takes a ``ClusterConfig`` and returns a typed, frozen result
(with ``to_dict()`` for ``--json``); rendering is the CLI's business. Errors
are ``ReplicateError``s carrying a SQLSTATE.

Registering a table (``add_table``), in this order:

1. One catalog query per node gives the table's *schema fingerprint*
   (columns with type, NOT NULL and default, constraints, indexes, triggers
   other than ``replicate_guard``, primary key). Nodes are compared with the
   pure ``schema_differences``; any difference refuses the table.
2. The guard trigger is installed on every node directly, so that even a
   proxy lagging behind the registration already refuses direct writes.
3. A hash of all rows in primary-key order, and the position of every sequence
   the table owns (serial, identity: replicated inserts draw from them), are
   compared across nodes; with the guards in place no direct write can slip
   in between the check and the registration. On a mismatch the guards this
   call created are dropped again. With ``copy_from``, the rows and sequence
   positions of that node are first copied to the others (each target in one
   transaction, past its guard), and then compared all the same.
4. ``register_table`` goes through the log (first reachable proxy): every node
   switches at the same slot.

Identifiers put into SQL always come from the catalog (``psycopg.sql.Identifier``),
never from the name the operator typed, which is only ever a bind parameter.
"""

from __future__ import annotations

import asyncio
import struct
import uuid
from dataclasses import asdict, dataclass, field
from typing import Any, Awaitable, Callable, Sequence, TypeVar

import psycopg
from psycopg import sql

from replicate.command import (
    Entry, Outcome, Status, applied_settings, register_table, unregister_table,
)
from replicate.config import ClusterConfig, NodeConfig
from replicate.errors import NodeUnavailable, ReplicateError
from replicate.runtime.client import ProxyClient

T = TypeVar("T")

# Row text (t::text) depends on these; every node hashes with the same values.
_HASH_SETTINGS = ("SET TimeZone = 'UTC'", "SET DateStyle = 'ISO, MDY'",
                  "SET IntervalStyle = 'postgres'", "SET extra_float_digits = 1",
                  "SET bytea_output = 'hex'", "SET lock_timeout = '5s'")


# -- connections -------------------------------------------------------------


def connect(node: NodeConfig, timeout: float = 5.0) -> psycopg.Connection:
    """An autocommit connection to ``node``'s PostgreSQL, or NodeUnavailable."""
    try:
        conn = psycopg.connect(node.dsn, autocommit=True, connect_timeout=max(1, int(timeout)),
                               application_name="replicate admin")
    except psycopg.Error as exc:
        raise NodeUnavailable(f"{node.name}: cannot connect to PostgreSQL: "
                              f"{str(exc).strip() or type(exc).__name__}") from None
    for statement in _HASH_SETTINGS:
        conn.execute(statement)
    return conn


def _db_error(node: str, exc: psycopg.Error, doing: str) -> ReplicateError:
    message = exc.diag.message_primary if exc.diag.message_primary else str(exc).strip()
    return ReplicateError(f"{node}: {doing}: {message}", sqlstate=exc.sqlstate or "XX000",
                          hint=exc.diag.message_hint)


def _first_reachable(config: ClusterConfig,
                     node: str | None) -> tuple[NodeConfig, psycopg.Connection]:
    """The named node, or the first node (in file order) whose PostgreSQL answers."""
    if node is not None:
        conf = config.node(node)
        return conf, connect(conf, config.connect_timeout_s)
    failures = []
    for conf in config.nodes:
        try:
            return conf, connect(conf, min(config.connect_timeout_s, 3))
        except NodeUnavailable as exc:
            failures.append(exc.message)
    raise NodeUnavailable("no node's PostgreSQL answers", detail="; ".join(failures))


async def _via_proxy(config: ClusterConfig,
                     call: Callable[[ProxyClient], Awaitable[T]]) -> tuple[str, T]:
    """Run ``call`` against the first proxy that accepts a connection."""
    failures = []
    for conf in config.nodes:
        client = ProxyClient(conf.proxy_host, conf.proxy_port)
        try:
            await client.connect(timeout=min(config.connect_timeout_s, 3))
        except NodeUnavailable as exc:
            failures.append(f"{conf.name}: {exc.message}")
            continue
        try:
            return conf.name, await call(client)
        finally:
            await client.close()
    raise NoProxy("no proxy answers", detail="; ".join(failures),
                  hint="start the proxies (`replicate up`, or `replicate proxy --node N`)")


class NoProxy(NodeUnavailable):
    """No proxy accepted a connection: nothing was submitted."""


def submit(config: ClusterConfig, entry: Entry) -> tuple[str, Outcome]:
    """Submit ``entry`` through the first proxy that answers: (that proxy's node, outcome)."""
    request_id = f"admin-{uuid.uuid4()}"

    async def call(client: ProxyClient) -> Outcome:
        try:
            return await client.submit(entry, request_id=request_id,
                                       timeout=config.write_timeout_s)
        except asyncio.TimeoutError:
            raise ReplicateError(f"no outcome within {config.write_timeout_s} s for {entry.sql}",
                                 sqlstate="57014",
                                 hint="check `replicate status`: is there a leader and a "
                                      "majority?") from None

    return asyncio.run(_via_proxy(config, call))


# -- status ------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class AcceptorLink:
    node: str
    connected: bool
    last_error: str | None = None


@dataclass(frozen=True, slots=True)
class NodeStatus:
    """One node as its proxy (or, when the proxy is down, its database) reports it."""

    name: str
    proxy: str
    state: str                      # "ok" | "stalled" | "down" (the proxy does not answer)
    role: str | None = None         # leader | follower | candidate | starting
    ballot: str | None = None
    applied_upto: int | None = None
    commit_upto: int | None = None
    lag: int | None = None          # slots behind the leader's commit index
    stalled: str | None = None      # why the node cannot apply, from its proxy
    pending_apply: int | None = None
    shed_slots: int | None = None   # chosen slots dropped beyond apply_backlog, to fetch again
    shed_pending: int | None = None  # of those, not fetched yet
    acceptors: tuple[AcceptorLink, ...] = ()
    proxy_error: str | None = None
    database: str | None = None     # for a down proxy: "up" | "down" (checked directly)
    database_error: str | None = None


@dataclass(frozen=True, slots=True)
class ClusterStatus:
    cluster: str
    leader: str | None
    ballot: str | None
    commit_upto: int | None
    nodes: tuple[NodeStatus, ...]

    @property
    def reachable(self) -> int:
        return sum(n.state != "down" for n in self.nodes)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


async def _proxy_status(node: NodeConfig, timeout: float) -> dict[str, Any] | str:
    client = ProxyClient(node.proxy_host, node.proxy_port)
    try:
        await client.connect(timeout=timeout)
        return await client.status(timeout=timeout)
    except (ReplicateError, OSError, asyncio.TimeoutError) as exc:
        return getattr(exc, "message", None) or f"{type(exc).__name__}: {exc}".rstrip(": ")
    finally:
        await client.close()


def _database_state(node: NodeConfig, timeout: float) -> tuple[str, str | None, int | None]:
    try:
        with psycopg.connect(node.dsn, connect_timeout=max(1, int(timeout)),
                             application_name="replicate status") as conn:
            try:
                row = conn.execute("SELECT slot FROM replicate.applied").fetchone()
            except psycopg.Error:
                return "up", None, None
            return "up", None, row[0] if row else None
    except psycopg.Error as exc:
        return "down", str(exc).strip().splitlines()[0] if str(exc).strip() else None, None


def summarize(config: ClusterConfig, reports: Sequence[dict[str, Any] | str],
              databases: dict[str, tuple[str, str | None, int | None]]) -> ClusterStatus:
    """Combine per-node proxy status documents (or error text) into one view (pure)."""
    answering = {conf.name: r for conf, r in zip(config.nodes, reports) if isinstance(r, dict)}
    leaders = [name for name, r in answering.items() if r.get("role") == "leader"]
    # Two self-declared leaders can briefly coexist: the higher ballot is the real one.
    leader = max(leaders, key=lambda n: _ballot_key(answering[n].get("ballot")), default=None)
    if leader is None:
        named = [r.get("leader") for r in answering.values() if r.get("leader")]
        leader = max(set(named), key=named.count) if named else None
    source = answering.get(leader) if leader else None
    if source is not None:
        commit = source.get("commit_upto")
    else:  # the leader does not answer: the furthest any reachable node knows of
        known = [r.get(k) for r in answering.values()
                 for k in ("commit_upto", "delivered_upto", "applied_upto") if r.get(k) is not None]
        commit = max(known) if known else None
    nodes = []
    for conf, report in zip(config.nodes, reports):
        if not isinstance(report, dict):
            db, db_error, applied = databases.get(conf.name, (None, None, None))
            nodes.append(NodeStatus(conf.name, conf.proxy, "down", applied_upto=applied,
                                    lag=None if applied is None or commit is None
                                    else max(0, commit - applied),
                                    proxy_error=report, database=db, database_error=db_error))
            continue
        applied = report.get("applied_upto")
        nodes.append(NodeStatus(
            conf.name, conf.proxy, "stalled" if report.get("stalled") else "ok",
            role=report.get("role"), ballot=report.get("ballot"), applied_upto=applied,
            commit_upto=report.get("commit_upto"),
            lag=None if applied is None or commit is None else max(0, commit - applied),
            stalled=report.get("stalled"), pending_apply=report.get("pending_apply"),
            shed_slots=report.get("shed_slots"), shed_pending=report.get("shed_pending"),
            acceptors=tuple(AcceptorLink(a["node"], bool(a["connected"]), a.get("last_error"))
                            for a in report.get("acceptors", ()))))
    return ClusterStatus(config.name, leader, source.get("ballot") if source else None, commit,
                         tuple(nodes))


def _ballot_key(ballot: str | None) -> tuple[int, int]:
    try:
        rnd, _, proposer = (ballot or "").partition(".")
        return int(rnd), int(proposer)
    except ValueError:
        return -1, -1


def cluster_status(config: ClusterConfig, timeout: float = 2.0) -> ClusterStatus:
    """Ask every proxy for its status; check the database of each proxy that does not answer."""

    async def gather() -> ClusterStatus:
        reports = await asyncio.gather(*(_proxy_status(n, timeout) for n in config.nodes))
        down = [n for n, r in zip(config.nodes, reports) if not isinstance(r, dict)]
        states = await asyncio.gather(*(asyncio.to_thread(_database_state, n, timeout)
                                        for n in down))
        return summarize(config, reports, {n.name: s for n, s in zip(down, states)})

    return asyncio.run(gather())


# -- schema fingerprint --------------------------------------------------------

# One catalog query per node. $1 is the operator's table name, resolved by to_regclass
# exactly as PostgreSQL resolves it (quoting, case, search_path).
_FINGERPRINT = """
WITH rel AS (SELECT to_regclass(%s::text) AS oid)
SELECT n.nspname, c.relname, quote_ident(n.nspname) || '.' || quote_ident(c.relname), c.relkind,
  (SELECT coalesce(json_agg(json_build_array(a.attname, format_type(a.atttypid, a.atttypmod),
                                             a.attnotnull, pg_get_expr(d.adbin, d.adrelid))
                            ORDER BY a.attnum), '[]')
     FROM pg_attribute a LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
    WHERE a.attrelid = rel.oid AND a.attnum > 0 AND NOT a.attisdropped),
  (SELECT coalesce(json_agg(json_build_array(conname, pg_get_constraintdef(oid))
                            ORDER BY conname), '[]')
     FROM pg_constraint WHERE conrelid = rel.oid),
  (SELECT coalesce(json_agg(json_build_array(ic.relname, pg_get_indexdef(i.indexrelid))
                            ORDER BY ic.relname), '[]')
     FROM pg_index i JOIN pg_class ic ON ic.oid = i.indexrelid WHERE i.indrelid = rel.oid),
  (SELECT coalesce(json_agg(json_build_array(tgname, pg_get_triggerdef(oid)) ORDER BY tgname),
                   '[]')
     FROM pg_trigger WHERE tgrelid = rel.oid AND NOT tgisinternal AND tgname <> 'replicate_guard'),
  (SELECT coalesce(json_agg(json_build_array(a.attname, a.attcollation <> 0) ORDER BY k.ord),
                   '[]')
     FROM pg_index i CROSS JOIN LATERAL unnest(i.indkey) WITH ORDINALITY AS k(attnum, ord)
     JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum
    WHERE i.indrelid = rel.oid AND i.indisprimary),
  EXISTS (SELECT 1 FROM pg_trigger WHERE tgrelid = rel.oid AND tgname = 'replicate_guard'),
  (SELECT min(since_slot) FROM replicate.registered_tables
    WHERE to_regclass(table_name) = rel.oid)
FROM rel LEFT JOIN pg_class c ON c.oid = rel.oid LEFT JOIN pg_namespace n ON n.oid = c.relnamespace
"""


@dataclass(frozen=True, slots=True)
class ColumnDef:
    name: str
    type: str
    not_null: bool
    default: str | None


@dataclass(frozen=True, slots=True)
class Fingerprint:
    """What must be equal on every node for a table to be replicated (``None``: no such table)."""

    schema: str
    name: str
    qualified: str                  # as quote_ident quotes it: what goes into the log
    kind: str
    columns: tuple[ColumnDef, ...]
    constraints: tuple[tuple[str, str], ...] = ()
    indexes: tuple[tuple[str, str], ...] = ()
    triggers: tuple[tuple[str, str], ...] = ()
    primary_key: tuple[tuple[str, bool], ...] = ()   # (column, collatable)
    guarded: bool = field(default=False, compare=False)
    registered_since: int | None = field(default=None, compare=False)



def read_fingerprint(conn: psycopg.Connection, table: str) -> Fingerprint | None:
    from replicate.gate.catalog import split_qualified_name

    try:  # PostgreSQL 16 and later answer a malformed name with NULL, not with 42602
        split_qualified_name(table)
    except ValueError as exc:
        raise ReplicateError(f"invalid table name {table!r}: {exc}", sqlstate="42602",
                             hint='write it as PostgreSQL would: name, schema.name, '
                                  'or with double quotes ("Odd Name")') from None
    row = conn.execute(_FINGERPRINT, [table]).fetchone()
    if row is None or row[0] is None:
        return None
    schema, name, qualified, kind, columns, constraints, indexes, triggers, pk, guarded, since = row
    return Fingerprint(schema, name, qualified, kind, tuple(ColumnDef(*c) for c in columns),
                       tuple(map(tuple, constraints)), tuple(map(tuple, indexes)),
                       tuple(map(tuple, triggers)), tuple((c, bool(k)) for c, k in pk),
                       bool(guarded), since)


def _named_differences(what: str, node: str, ref_node: str, mine: Sequence[tuple[str, str]],
                       ref: Sequence[tuple[str, str]]) -> list[str]:
    a, b = dict(mine), dict(ref)
    out = []
    for key in b:
        if key not in a:
            out.append(f"{node}: {what} {key} is missing ({ref_node} has {b[key]})")
        elif a[key] != b[key]:
            out.append(f"{node}: {what} {key} is {a[key]}, {ref_node} has {b[key]}")
    out += [f"{node}: has an extra {what} {key} ({a[key]}), {ref_node} has none"
            for key in a if key not in b]
    return out


def schema_differences(ref_node: str, ref: Fingerprint, node: str,
                       mine: Fingerprint) -> list[str]:
    """Every way ``mine`` (on ``node``) differs from ``ref`` (on ``ref_node``), one line each."""
    out = []
    if (mine.schema, mine.name) != (ref.schema, ref.name):
        out.append(f"{node}: the name resolves to {mine.qualified}, on {ref_node} to "
                   f"{ref.qualified}")
    if mine.kind != ref.kind:
        out.append(f"{node}: relation kind {mine.kind!r}, {ref_node} has {ref.kind!r}")
    theirs = {c.name: c for c in ref.columns}
    ours = {c.name: c for c in mine.columns}
    for c in ref.columns:
        m = ours.get(c.name)
        if m is None:
            out.append(f"{node}: column {c.name} is missing ({ref_node} has it as {c.type})")
            continue
        if m.type != c.type:
            out.append(f"{node}: column {c.name} is {m.type}, {ref_node} has {c.type}")
        if m.not_null != c.not_null:
            out.append(f"{node}: column {c.name} is {_nullness(m)}, {ref_node} has {_nullness(c)}")
        if m.default != c.default:
            out.append(f"{node}: column {c.name} has default {m.default or '(none)'}, "
                       f"{ref_node} has {c.default or '(none)'}")
    out += [f"{node}: has an extra column {c.name} {c.type}, {ref_node} has none"
            for c in mine.columns if c.name not in theirs]
    common_mine = [c.name for c in mine.columns if c.name in theirs]
    common_ref = [c.name for c in ref.columns if c.name in ours]
    if common_mine != common_ref:
        out.append(f"{node}: columns are in the order {', '.join(common_mine)}, {ref_node} has "
                   f"{', '.join(common_ref)}")
    out += _named_differences("constraint", node, ref_node, mine.constraints, ref.constraints)
    out += _named_differences("index", node, ref_node, mine.indexes, ref.indexes)
    out += _named_differences("trigger", node, ref_node, mine.triggers, ref.triggers)
    if mine.primary_key != ref.primary_key and not out:
        out.append(f"{node}: primary key ({', '.join(c for c, _ in mine.primary_key)}), "
                   f"{ref_node} has ({', '.join(c for c, _ in ref.primary_key)})")
    return out


def _nullness(column: ColumnDef) -> str:
    return "NOT NULL" if column.not_null else "nullable"


# -- table add / remove / list --------------------------------------------------


@dataclass(frozen=True, slots=True)
class NodeTable:
    node: str
    rows: int
    digest: str
    guard_created: bool


@dataclass(frozen=True, slots=True)
class AddResult:
    table: str
    already: bool                    # it was registered before: nothing was done
    slot: int | None                 # the slot that registers it (or registered it)
    via: str | None = None           # the proxy the registration went through
    nodes: tuple[NodeTable, ...] = ()
    copied_from: str | None = None
    warnings: tuple[str, ...] = ()   # what may still break determinism (see ``lint``)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _table_ident(fp: Fingerprint) -> sql.Composed:
    return sql.SQL(".").join([sql.Identifier(fp.schema), sql.Identifier(fp.name)])


def _content_query(fp: Fingerprint) -> sql.Composed:
    order = sql.SQL(", ").join(
        sql.SQL("t.{} COLLATE \"C\"" if collatable else "t.{}").format(sql.Identifier(col))
        for col, collatable in fp.primary_key)
    return sql.SQL("SELECT count(*), md5(coalesce(string_agg(t::text, E'\\n' ORDER BY {}), '')) "
                   "FROM {} AS t").format(order, _table_ident(fp))


def _guard_statement(fp: Fingerprint, drop: bool = False) -> sql.Composed:
    if drop:
        return sql.SQL("DROP TRIGGER IF EXISTS replicate_guard ON {}").format(_table_ident(fp))
    return sql.SQL("CREATE TRIGGER replicate_guard BEFORE INSERT OR UPDATE OR DELETE OR TRUNCATE "
                   "ON {} FOR EACH STATEMENT EXECUTE FUNCTION replicate.guard()"
                   ).format(_table_ident(fp))


def fingerprints(table: str,
                 conns: dict[str, psycopg.Connection]) -> dict[str, Fingerprint | None]:
    out = {}
    for name, conn in conns.items():
        try:
            out[name] = read_fingerprint(conn, table)
        except psycopg.Error as exc:
            raise _db_error(name, exc, "cannot read the catalog") from None
    return out


def check_schemas(table: str, prints: dict[str, Fingerprint | None]) -> Fingerprint:
    """The common fingerprint, or a ReplicateError saying which node differs and how."""
    missing = [n for n, fp in prints.items() if fp is None]
    if missing:
        raise ReplicateError(f"table {table} does not exist on {', '.join(missing)}",
                             sqlstate="42P01",
                             hint="create it with the same definition and contents on every node")
    (ref_node, ref), *others = prints.items()
    assert ref is not None
    if ref.kind not in ("r", "p"):
        raise ReplicateError(f"{ref.qualified} is not a table (relkind {ref.kind!r})",
                             sqlstate="42809")
    problems = [line for node, fp in others for line in schema_differences(ref_node, ref, node, fp)]
    if problems:
        raise ReplicateError(f"table {ref.qualified} differs between nodes: {problems[0]}",
                             detail="\n".join(problems), sqlstate="0A000",
                             hint="make the definitions identical on every node, then run "
                                  "`replicate table add` again")
    if not ref.primary_key:
        raise ReplicateError(f"table {ref.qualified} has no primary key",
                             sqlstate="0A000",
                             hint="replicate compares and checks rows by primary key: add one "
                                  "(on every node) first")
    return ref


# The sequences the table owns (serial, identity), with the state the applier restores.
_SEQUENCES = """
SELECT quote_ident(s.schemaname) || '.' || quote_ident(s.sequencename),
       coalesce(s.last_value, s.start_value), s.last_value IS NOT NULL
FROM pg_depend d
JOIN pg_class c ON c.oid = d.objid AND c.relkind = 'S'
JOIN pg_namespace n ON n.oid = c.relnamespace
JOIN pg_sequences s ON s.schemaname = n.nspname AND s.sequencename = c.relname
WHERE d.refobjid = %s::regclass AND d.refclassid = 'pg_class'::regclass
  AND d.classid = 'pg_class'::regclass AND d.deptype IN ('a', 'i')
ORDER BY 1
"""


# What may break determinism once the table is registered: (kind, object, other object).
_LINT = """
SELECT 'references', conname, confrelid::regclass::text FROM pg_constraint
 WHERE conrelid = %s::regclass AND contype = 'f' AND confrelid <> conrelid
   AND NOT EXISTS (SELECT 1 FROM replicate.registered_tables r
                    WHERE to_regclass(r.table_name) = confrelid)
UNION ALL
SELECT 'referenced-by', conname, conrelid::regclass::text FROM pg_constraint
 WHERE confrelid = %s::regclass AND contype = 'f' AND confrelid <> conrelid
   AND NOT EXISTS (SELECT 1 FROM replicate.registered_tables r
                    WHERE to_regclass(r.table_name) = conrelid)
UNION ALL
SELECT 'volatile-trigger', t.tgname, t.tgfoid::regprocedure::text
  FROM pg_trigger t JOIN pg_proc p ON p.oid = t.tgfoid
 WHERE t.tgrelid = %s::regclass AND NOT t.tgisinternal AND t.tgname <> 'replicate_guard'
   AND p.provolatile = 'v'
ORDER BY 1, 2
"""


def lint(table: str, findings: Sequence[tuple[str, str, str]]) -> tuple[list[str], list[str]]:
    """(refusals, warnings) from the ``_LINT`` rows of a table (pure).

    A foreign key to an unregistered table is refused: its check would read a table that can
    differ between nodes, so one node could accept a write another rejects. A foreign key from
    an unregistered table, or a volatile trigger, is a warning: the former until that table is
    registered too, the latter because the gate refuses the writes that fire it.
    """
    refusals, warnings = [], []
    for kind, name, other in findings:
        if kind == "references":
            refusals.append(f"foreign key {name} of {table} references {other}, which is not "
                            f"registered: its check could pass on one node and fail on another")
        elif kind == "referenced-by":
            warnings.append(f"foreign key {name} of the unregistered table {other} references "
                            f"{table}: deleting or updating keys of {table} can fail or cascade "
                            f"differently on each node until {other} is registered too")
        elif kind == "volatile-trigger":
            warnings.append(f"trigger {name} calls the volatile function {other}: the proxy "
                            f"refuses writes that fire it (declare it STABLE if it only "
                            f"computes from NEW/OLD)")
    return refusals, warnings


SequenceState = tuple[str, int, bool]   # (sequence, last value, is_called)


def content_difference(table: str,
                       contents: dict[str, tuple[int, str, Sequence[SequenceState]]]) -> str | None:
    """Why the nodes' rows or owned sequences differ, or None (pure).

    ``contents`` maps a node to (row count, md5 of its rows, [(sequence, last value, called)]).
    """
    if len({digest for _, digest, _ in contents.values()}) > 1:
        return (f"table {table} holds different rows on different nodes: " + ", ".join(
            f"{name} has {rows} rows (md5 {digest[:12]})"
            for name, (rows, digest, _) in contents.items()))
    (ref_node, (_, _, ref)), *others = contents.items()
    for name, (_, _, sequences) in others:
        if tuple(sequences) == tuple(ref):
            continue
        mine = {seq: (value, called) for seq, value, called in sequences}
        theirs = {seq: (value, called) for seq, value, called in ref}
        for seq in sorted(set(mine) | set(theirs)):
            if mine.get(seq) != theirs.get(seq):
                return (f"sequence {seq} of table {table} is {_seq_state(mine.get(seq))} on "
                        f"{name}, {_seq_state(theirs.get(seq))} on {ref_node}")
    return None


def _seq_state(state: tuple[int, bool] | None) -> str:
    if state is None:
        return "missing"
    value, called = state
    return f"at {value}" if called else f"unused (starts at {value})"


Progress = Callable[[str, int, int], None]   # (target node, rows copied, rows in all)


def _copy_rows(fp: Fingerprint, source: str, conns: dict[str, psycopg.Connection],
               progress: Progress | None) -> None:
    """Replace the rows and owned sequence positions of every other node with ``source``'s."""
    table = _table_ident(fp)
    src = conns[source]
    total = src.execute(sql.SQL("SELECT count(*) FROM {}").format(table)).fetchone()[0]
    sequences = src.execute(_SEQUENCES, [fp.qualified]).fetchall()
    for name, conn in conns.items():
        if name == source:
            continue
        try:
            with conn.transaction():
                conn.execute("SET LOCAL replicate.applying = on")  # past the guard, this once
                conn.execute(sql.SQL("DELETE FROM {}").format(table))
                done = 0
                if progress:
                    progress(name, 0, total)
                with src.cursor().copy(sql.SQL("COPY {} TO STDOUT").format(table)) as out, \
                        conn.cursor().copy(sql.SQL("COPY {} FROM STDIN").format(table)) as into:
                    for block in out:
                        into.write(block)
                        done += bytes(block).count(b"\n")
                        if progress:
                            progress(name, done, total)
                for sequence, value, called in sequences:
                    conn.execute("SELECT setval(%s::regclass, %s, %s)", [sequence, value, called])
        except psycopg.Error as exc:
            raise _db_error(name, exc, f"cannot copy the rows from {source}") from None


def add_table(config: ClusterConfig, table: str, *, copy_from: str | None = None,
              progress: Progress | None = None) -> AddResult:
    """Check, guard and register ``table`` on every node (see the module docstring)."""
    if copy_from is not None:
        config.node(copy_from)  # a ConfigError naming the known nodes
    conns: dict[str, psycopg.Connection] = {}
    try:
        for node in config.nodes:  # every node must answer: a table is registered everywhere
            conns[node.name] = connect(node, config.connect_timeout_s)
        prints = fingerprints(table, conns)
        registered = [fp.registered_since for fp in prints.values()
                      if fp is not None and fp.registered_since is not None]
        if registered:
            fp = next(fp for fp in prints.values() if fp is not None)
            return AddResult(fp.qualified, True, min(registered))
        fp = check_schemas(table, prints)
        try:
            findings = conns[config.nodes[0].name].execute(_LINT, [fp.qualified] * 3).fetchall()
        except psycopg.Error as exc:
            raise _db_error(config.nodes[0].name, exc, "cannot read the catalog") from None
        refusals, warnings = lint(fp.qualified, findings)
        if refusals:
            raise ReplicateError(refusals[0], detail="\n".join(refusals[1:]) or None,
                                 sqlstate="0A000",
                                 hint="register the referenced table first: `replicate table "
                                      "add` it, then this one")
        created = {}
        for name, conn in conns.items():
            created[name] = not prints[name].guarded  # type: ignore[union-attr]
            if created[name]:
                try:
                    conn.execute(_guard_statement(fp))
                except psycopg.errors.DuplicateObject:  # a concurrent `table add`
                    created[name] = False
                except psycopg.Error as exc:
                    _drop_guards(conns, fp, created)
                    raise _db_error(name, exc, "cannot install the guard trigger") from None
        if copy_from is not None:
            try:
                _copy_rows(fp, copy_from, conns, progress)
            except ReplicateError:
                _drop_guards(conns, fp, created)
                raise
        contents: dict[str, tuple[int, str, Sequence[SequenceState]]] = {}
        for name, conn in conns.items():
            try:
                rows, digest = conn.execute(_content_query(fp)).fetchone()
                sequences = tuple(map(tuple, conn.execute(_SEQUENCES, [fp.qualified])))
            except psycopg.Error as exc:
                _drop_guards(conns, fp, created)
                raise _db_error(name, exc, "cannot hash the table's rows") from None
            contents[name] = (rows, digest, sequences)
        problem = content_difference(fp.qualified, contents)
        if problem:
            _drop_guards(conns, fp, created)
            raise ReplicateError(problem, sqlstate="0A000",
                                 hint="make the contents (and sequence positions) identical on "
                                      "every node, then run `replicate table add` again")
    finally:
        for conn in conns.values():
            conn.close()
    try:
        via, outcome = submit(config, register_table(fp.qualified))
    except NoProxy:
        _drop_guards_again(config, fp, created)
        raise
    except ReplicateError as exc:
        exc.hint = (f"the registration may still be applied: see `replicate table list`; "
                    f"`replicate table remove {fp.qualified}` undoes it and the guards")
        raise
    if not outcome.ok:  # failed the same way on every node: nothing is registered
        _drop_guards_again(config, fp, created)
    _raise_for(outcome, f"registering {fp.qualified}")
    return AddResult(fp.qualified, False, outcome.slot, via,
                     tuple(NodeTable(name, rows, digest, created[name])
                           for name, (rows, digest, _) in contents.items()), copy_from,
                     warnings)


def _drop_guards(conns: dict[str, psycopg.Connection], fp: Fingerprint,
                 created: dict[str, bool]) -> None:
    for name, made in created.items():
        if made:
            try:
                conns[name].execute(_guard_statement(fp, drop=True))
            except psycopg.Error:
                pass


def _drop_guards_again(config: ClusterConfig, fp: Fingerprint, created: dict[str, bool]) -> None:
    """Nothing was submitted: take back the guards this call installed (best effort)."""
    for node in config.nodes:
        if created.get(node.name):
            try:
                with connect(node, config.connect_timeout_s) as conn:
                    conn.execute(_guard_statement(fp, drop=True))
            except (ReplicateError, psycopg.Error):
                pass


def _raise_for(outcome: Outcome, doing: str) -> None:
    if outcome.status is Status.ERROR or outcome.sqlstate:
        raise ReplicateError(f"{doing} failed at slot {outcome.slot}: {outcome.message}",
                             sqlstate=outcome.sqlstate or "XX000", hint=outcome.hint,
                             detail=outcome.detail)


@dataclass(frozen=True, slots=True)
class RemoveResult:
    table: str
    registered: bool                 # False: it was not registered, nothing was done
    slot: int | None = None
    via: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def remove_table(config: ClusterConfig, table: str) -> RemoveResult:
    """Unregister ``table`` through the log: every node drops its guard at that slot."""
    node, conn = _first_reachable(config, None)
    with conn:
        try:
            fp = read_fingerprint(conn, table)
        except psycopg.Error as exc:
            raise _db_error(node.name, exc, "cannot read the catalog") from None
    if fp is None:
        raise ReplicateError(f"table {table} does not exist on {node.name}", sqlstate="42P01")
    if fp.registered_since is None and not fp.guarded:
        return RemoveResult(fp.qualified, False)
    via, outcome = submit(config, unregister_table(fp.qualified))
    _raise_for(outcome, f"unregistering {fp.qualified}")
    return RemoveResult(fp.qualified, True, outcome.slot, via)


@dataclass(frozen=True, slots=True)
class RegisteredTable:
    table: str
    since_slot: int
    rows: int | None
    error: str | None = None


@dataclass(frozen=True, slots=True)
class TableList:
    node: str
    applied_upto: int
    tables: tuple[RegisteredTable, ...]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def list_tables(config: ClusterConfig, node: str | None = None) -> TableList:
    conf, conn = _first_reachable(config, node)
    with conn:
        try:
            applied = conn.execute("SELECT slot FROM replicate.applied").fetchone()[0]
            rows = conn.execute(
                "SELECT coalesce(quote_ident(n.nspname) || '.' || quote_ident(c.relname), "
                "r.table_name), r.since_slot, n.nspname, c.relname "
                "FROM replicate.registered_tables r "
                "LEFT JOIN pg_class c ON c.oid = to_regclass(r.table_name) "
                "LEFT JOIN pg_namespace n ON n.oid = c.relnamespace ORDER BY 1").fetchall()
        except psycopg.Error as exc:
            raise _db_error(conf.name, exc, "cannot read replicate.registered_tables") from None
        tables = []
        for name, since, schema, relname in rows:
            if relname is None:
                tables.append(RegisteredTable(name, since, None, "the table no longer exists"))
                continue
            query = sql.SQL("SELECT count(*) FROM {}").format(
                sql.SQL(".").join([sql.Identifier(schema), sql.Identifier(relname)]))
            try:
                count = conn.execute(query).fetchone()[0]
            except psycopg.Error as exc:
                tables.append(RegisteredTable(name, since, None, str(exc).strip()))
                continue
            tables.append(RegisteredTable(name, since, count))
    return TableList(conf.name, applied, tuple(tables))


# -- log -----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class LogEntry:
    slot: int
    request_id: str
    kind: str                        # statement | control | noop | unknown
    statement: str | None
    status: str | None               # the outcome on this node
    command_tag: str | None = None
    rows_affected: int | None = None
    sqlstate: str | None = None
    message: str | None = None
    detail: str | None = None
    hint: str | None = None
    params: tuple[str | None, ...] | None = None   # only for --slot: text (or base64) values
    settings: dict[str, str] | None = None
    role: str | None = None


@dataclass(frozen=True, slots=True)
class LogView:
    node: str
    applied_upto: int
    entries: tuple[LogEntry, ...]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


_LOG = """
SELECT o.slot, o.request_id, o.status, o.command_tag, o.rows_affected, o.sqlstate, o.message,
       o.detail, o.hint,
       CASE WHEN l.chosen OR l.request_id = o.request_id THEN l.payload END
FROM replicate.outcomes o LEFT JOIN replicate.log_marked l USING (slot)
WHERE o.slot <= %s AND (%s::bigint IS NULL OR o.slot = %s)
ORDER BY o.slot DESC LIMIT %s
"""


# Binary-format parameters of these types are shown as their text; others as hex.
_BINARY_FORMATS = {16: "?", 20: ">q", 21: ">h", 23: ">i", 26: ">I", 700: ">f", 701: ">d"}
_TEXT_OIDS = {25, 1042, 1043, 19}


def param_text(value: bytes | None, type_oid: int, binary: bool) -> str | None:
    """A bind parameter as a person reads it (pure)."""
    if value is None:
        return None
    if binary and type_oid in _BINARY_FORMATS and len(value) == struct.calcsize(
            _BINARY_FORMATS[type_oid]):
        decoded = struct.unpack(_BINARY_FORMATS[type_oid], value)[0]
        return ("true" if decoded else "false") if type_oid == 16 else str(decoded)
    if not binary or type_oid in _TEXT_OIDS:
        try:
            return value.decode()
        except UnicodeDecodeError:
            pass
    return "\\x" + value.hex()


def decode_entry(payload: bytes | None, status: str | None,
                 full: bool) -> tuple[str, str | None, dict[str, Any]]:
    """(kind, statement, extras) of a log payload (pure)."""
    if status == Status.NOOP.value or payload == b"":
        return "noop", None, {}
    if payload is None:
        return "unknown", None, {}
    try:
        entry = Entry.decode(bytes(payload))
    except ValueError as exc:
        return "unknown", f"({exc})", {}
    extras: dict[str, Any] = {}
    if full:
        extras = {"params": tuple(param_text(p.value, p.type_oid, p.binary) for p in entry.params),
                  "settings": applied_settings(entry), "role": entry.role}
    return entry.kind.value, entry.sql, extras


def read_log(config: ClusterConfig, *, node: str | None = None, limit: int = 20,
             slot: int | None = None) -> LogView:
    """Recent applied entries (newest first) of ``node`` with their outcomes there."""
    conf, conn = _first_reachable(config, node)
    with conn:
        try:
            applied = conn.execute("SELECT slot FROM replicate.applied").fetchone()[0]
            rows = conn.execute(_LOG, [applied, slot, slot, limit]).fetchall()
        except psycopg.Error as exc:
            raise _db_error(conf.name, exc, "cannot read the log") from None
    if slot is not None and not rows:
        raise ReplicateError(f"slot {slot} is not applied on {conf.name} (applied up to "
                             f"{applied})", sqlstate="22023")
    entries = []
    for (s, rid, status, tag, count, sqlstate, message, detail, hint, payload) in rows:
        kind, statement, extras = decode_entry(payload, status, slot is not None)
        entries.append(LogEntry(s, rid, kind, statement, status, tag, count, sqlstate, message,
                                detail, hint, **extras))
    return LogView(conf.name, applied, tuple(entries))
