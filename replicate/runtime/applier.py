"""The applier: chosen log entries into the local PostgreSQL node, in slot order, exactly once.

One transaction per batch of consecutive chosen slots (DESIGN.md "Applying"). In it:
``replicate.applying = on`` (the guard trigger lets the write through) and
``synchronous_commit = off`` (safe: the durable log replays; a register or unregister entry
commits synchronously, see ``_control``); each entry's role and
result-changing settings (fixed defaults where the entry has none, so node configuration never
leaks into results); the statement with its bind parameters exactly as the client sent them;
and, per slot, the outcome row, the request id and the new applied slot, so a slot is applied
exactly once across crashes.

Two paths. The **pipelined** path (the common case) sends the whole batch in one pipeline:
``replicate.apply_begin`` (checks the slot is next, sets the settings, restores sequences,
refuses request ids applied before), the statements, then ``replicate.apply_finish`` and
COMMIT: two round trips per batch, whatever its size (sql/006_apply.sql). The **careful** path
runs each entry in a savepoint and looks request ids up first; it takes batches with control
entries, repeated request ids or undecodable payloads, and any batch the pipelined path rolled
back because a statement raised a deterministic error or a request id was applied before.

Errors split in two. A deterministic error (the classes in
``DETERMINISTIC_CLASSES``: data, integrity, syntax and privilege ...) happens
the same on every node: it is rolled back to the entry's savepoint, recorded
as the slot's outcome, and the batch goes on. Any other error (a lock held
past the apply timeout, out of disk, connection lost) is local: the whole
transaction is rolled back and ``LocalApplyError`` raised; the caller retries
the same batch later and never skips a slot.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any, Sequence

import psycopg
from psycopg import AsyncRawCursor
from psycopg.adapt import Dumper
from psycopg.pq import Format, TransactionStatus

from replicate.command import (
    CANONICAL_SETTINGS, Column, Entry, EntryKind, Outcome, Param, Status, applied_settings,
)
from replicate.errors import ReplicateError
from replicate.paxos.messages import ChosenEntry
from replicate.runtime import pqconn
from replicate.runtime.pqconn import (
    BYTEA_ARRAY_OID, BYTEA_OID, INT4_OID, INT8_ARRAY_OID, INT8_OID, TEXT_ARRAY_OID, TEXT_OID,
    PqConnection, Query,
)

# SQLSTATE classes whose errors every node raises identically from identical state.
DETERMINISTIC_CLASSES = frozenset({
    "0A",  # feature not supported
    "0L",  # invalid grantor
    "0P",  # invalid role specification
    "21",  # cardinality violation
    "22",  # data exception
    "23",  # integrity constraint violation
    "27",  # triggered data change violation
    "28",  # invalid authorization specification
    "2B",  # dependent privilege descriptors still exist
    "2F",  # SQL routine exception
    "38",  # external routine exception
    "39",  # external routine invocation exception
    "3F",  # invalid schema name
    "42",  # syntax error or access rule violation
    "44",  # WITH CHECK OPTION violation
    "P0",  # PL/pgSQL raise / assert
})

_PRELUDE = "SELECT set_config('role', $1, true), " + ", ".join(
    f"set_config('{name}', ${i + 2}, true)" for i, name in enumerate(CANONICAL_SETTINGS))


# The bookkeeping of a batch, in the node (sql/006_apply.sql, sql/007_apply_bookkeeping.sql):
# outcomes, request ids, the state of registered tables' sequences (nextval() is not
# transactional, see sql/003_sequences.sql) and the applied slot, in the transaction that
# applied the batch.
_FINISH = "SELECT replicate.apply_finish($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)"
_FINISH_TYPES = (INT8_OID, INT8_ARRAY_OID) + (TEXT_ARRAY_OID,) * 3 + (INT8_ARRAY_OID,) \
    + (TEXT_ARRAY_OID,) * 4 + (BYTEA_ARRAY_OID,)
_FINISH_FORMATS = (1,) * len(_FINISH_TYPES)


CHECK_BUCKETS = 256        # key-hash buckets per table in a consistency check
CHECK_ROW_LIMIT = 10000    # rows hashed one by one when narrowing a mismatch down
_TABLE_KEY_SQL = """
SELECT n.nspname, c.relname,
       coalesce((SELECT array_agg(a.attname ORDER BY k.ord)
                 FROM pg_index i, unnest(i.indkey) WITH ORDINALITY AS k(attnum, ord), pg_attribute a
                 WHERE i.indrelid = c.oid AND i.indisprimary
                   AND a.attrelid = c.oid AND a.attnum = k.attnum), '{}')
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE c.oid = $1::regclass"""


def _quote(identifier: str) -> str:
    return '"' + identifier.replace('"', '""') + '"'


def is_deterministic(sqlstate: str | None) -> bool:
    return sqlstate is not None and sqlstate[:2] in DETERMINISTIC_CLASSES


class LocalApplyError(ReplicateError):
    """Applying failed for a reason local to this node; the batch was rolled back."""

    sqlstate = "58000"


class _NeedCareful(Exception):
    """The pipelined path cannot apply this batch (a deterministic error, a repeated request
    id): it was rolled back; apply it again entry by entry with savepoints."""


class ApplyGap(LocalApplyError):
    """The node's applied slot is not the one before the batch.

    Apply transactions commit with ``synchronous_commit = off``: a node that crashes may come
    back with its last few applied slots lost (never acknowledged by it, but already handed
    out by the learner). The engine then fetches those chosen slots again and reapplies them.
    """

    def __init__(self, node_applied: int, first_slot: int) -> None:
        super().__init__(f"slot {first_slot} is not next: the node has applied up to "
                         f"{node_applied}")
        self.node_applied = node_applied


class _RawParam:
    """A bind parameter passed to the server byte for byte, with its own type OID and format."""

    __slots__ = ("param",)

    def __init__(self, param: Param) -> None:
        self.param = param


class _RawDumper(Dumper):
    def __init__(self, cls: type, context: Any = None, oid: int = 0,
                 fmt: Format = Format.TEXT) -> None:
        super().__init__(cls, context)
        self.oid = oid
        self.format = fmt

    def get_key(self, obj: _RawParam, format: Any) -> Any:
        return (_RawParam, obj.param.type_oid, obj.param.binary)

    def upgrade(self, obj: _RawParam, format: Any) -> "_RawDumper":
        return _RawDumper(_RawParam, None, obj.param.type_oid,
                          Format.BINARY if obj.param.binary else Format.TEXT)

    def dump(self, obj: _RawParam) -> bytes | None:
        return obj.param.value


def _params(entry: Entry) -> list[_RawParam | None]:
    return [None if p.value is None else _RawParam(p) for p in entry.params]


def rows_digest(rows: Sequence[Sequence[bytes | None]]) -> bytes:
    """A digest of returned rows, recorded per slot so nodes' results can be compared."""
    h = hashlib.sha256()
    for row in rows:
        for value in row:
            h.update(b"\xff" if value is None else len(value).to_bytes(4, "big") + value)
        h.update(b"\n")
    return h.digest()


@dataclass(slots=True)
class _Record:
    outcome: Outcome
    digest: bytes | None = None


def _prelude_params(entry: Entry) -> list[str]:
    return [entry.role or "none", *applied_settings(entry).values()]


def _parse_context(entry: Entry) -> tuple:
    """What decides how the server parses, analyses and plans the entry's text: part of the
    key of its prepared statement (``Query.parse_context``). PostgreSQL keeps a prepared
    statement's parse (standard_conforming_strings lexes the text; DateStyle, TimeZone and
    IntervalStyle coerce typed literals; search_path, with ``$user`` the role, resolves names)
    and may keep a generic plan (expressions folded under bytea_output, extra_float_digits
    ...). Keyed by the role and every setting the entry carries, a prepared statement only
    ever runs under the settings it was parsed and planned with, as on every other node."""
    return (entry.role, entry.settings)


def _decode(entries: Sequence[ChosenEntry],
            known: dict[bytes, Entry] | None = None) -> list[Entry | None] | None:
    """The entries of a batch the pipelined path can apply (None for a no-op), or None if the
    batch needs the careful path: a control entry, a request id twice, undecodable bytes.
    ``known`` maps payloads to the entries they encode (``Applier.submitted``)."""
    out: list[Entry | None] = []
    ids: set[str] = set()
    for chosen in entries:
        value = chosen.value
        if value.is_noop:
            out.append(None)
            continue
        if value.request_id in ids:
            return None
        ids.add(value.request_id)
        entry = known.get(value.payload) if known else None
        if entry is None:
            try:
                entry = Entry.decode(value.payload)
            except ValueError:
                return None
        if entry.kind is EntryKind.CONTROL:
            return None
        out.append(entry)
    return out


def _undecodable(slot: int, rid: str, exc: ValueError) -> _Record:
    return _Record(Outcome(slot, rid, Status.ERROR, sqlstate="XX001", message=str(exc)))


def _result(result: Any, slot: int, rid: str) -> _Record:
    """The outcome of a statement, from its result (a libpq ``PGresult``)."""
    columns: tuple[Column, ...] = ()
    rows: tuple[tuple[bytes | None, ...], ...] = ()
    if result.nfields:
        columns = tuple(Column(result.fname(i).decode(), result.ftype(i), result.fmod(i),
                               result.fsize(i), bool(result.fformat(i)))
                        for i in range(result.nfields))
        rows = tuple(tuple(result.get_value(r, c) for c in range(result.nfields))
                     for r in range(result.ntuples))
    status = result.command_status
    return _Record(Outcome(slot, rid, Status.OK, status.decode() if status else None,
                           result.command_tuples, columns, rows),
                   rows_digest(rows) if columns else None)


_BEGIN, _COMMIT, _ROLLBACK = Query("BEGIN"), Query("COMMIT"), Query("ROLLBACK")
# The start time as an integer: its text does not depend on the session's settings.
NODE_STARTED_SQL = "(extract(epoch FROM pg_postmaster_start_time()) * 1000000)::bigint"
# The node's applied slot, and the start it was read under.
NODE_POSITION_SQL = f"SELECT slot, {NODE_STARTED_SQL} FROM replicate.applied"
_POSITION = Query(NODE_POSITION_SQL)


def _texts(values: Sequence[str | None]) -> bytes:
    return pqconn.array(TEXT_OID, [None if v is None else v.encode() for v in values])


def _finish_query(last_slot: int, records: list[_Record]) -> Query:
    """``replicate.apply_finish`` for ``records``, every parameter in binary."""
    outs = [r.outcome for r in records]
    i8 = pqconn.int8
    params = (
        i8(last_slot), pqconn.array(INT8_OID, [i8(o.slot) for o in outs]),
        _texts([o.request_id for o in outs]), _texts([o.status.value for o in outs]),
        _texts([o.command_tag for o in outs]),
        pqconn.array(INT8_OID, [None if o.rows_affected is None else i8(o.rows_affected)
                                for o in outs]),
        _texts([o.sqlstate for o in outs]), _texts([o.message for o in outs]),
        _texts([o.detail for o in outs]), _texts([o.hint for o in outs]),
        pqconn.array(BYTEA_OID, [r.digest for r in records]))
    return Query(_FINISH, params, _FINISH_TYPES, _FINISH_FORMATS)


def _finish_params(last_slot: int, records: list[_Record]) -> list[Any]:
    outs = [r.outcome for r in records]
    return [last_slot, [o.slot for o in outs], [o.request_id for o in outs],
            [o.status.value for o in outs], [o.command_tag for o in outs],
            [o.rows_affected for o in outs], [o.sqlstate for o in outs],
            [o.message for o in outs], [o.detail for o in outs], [o.hint for o in outs],
            [r.digest for r in records]]



class Applier:
    """Applies batches of chosen entries to one node over one connection."""

    def __init__(self, dsn: str, *, connect_timeout: float = 5.0,
                 apply_timeout_ms: int = 5000) -> None:
        self.dsn = dsn
        self.connect_timeout = connect_timeout
        self.apply_timeout_ms = apply_timeout_ms
        self._conn: psycopg.AsyncConnection | None = None  # careful path, opened when needed
        self._pq: PqConnection | None = None               # pipelined path
        self._session_key: tuple | None = None
        # Entries submitted through this proxy, by payload (``Engine.submit`` keeps one here
        # while it waits for it): the pipelined path takes the entry instead of decoding the
        # payload it was encoded into (docs/decisions.md, "Leader proxy CPU per write").
        self.submitted: dict[bytes, Entry] = {}
        self._preludes: dict[tuple, Query] = {}  # (role, settings) -> its settings query

    async def _connection(self) -> psycopg.AsyncConnection:
        if self._conn is None or self._conn.closed or self._conn.broken:
            # prepare_threshold=None: psycopg would prepare a text after five executions and
            # keep its parse under whatever settings came first (see _parse_context)
            conn = await psycopg.AsyncConnection.connect(
                self.dsn, autocommit=True, connect_timeout=max(1, int(self.connect_timeout)),
                application_name="replicate applier", prepare_threshold=None)
            conn.adapters.register_dumper(_RawParam, _RawDumper)
            self._conn = conn
        return self._conn

    async def close(self) -> None:
        if self._conn is not None:
            await self._conn.close()
            self._conn = None
        if self._pq is not None:
            await self._pq.close()
            self._pq = None

    async def apply(self, entries: Sequence[ChosenEntry]) -> list[Outcome]:
        """Apply ``entries`` (consecutive slots, the first one right after the applied slot)."""
        try:
            decoded = _decode(entries, self.submitted)
            if decoded is not None:
                try:
                    return await self._apply_pipelined(entries, decoded)
                except _NeedCareful:
                    pass
            conn = await self._connection()
            async with conn.transaction():
                return await self._apply_careful(conn, entries)
        except LocalApplyError:
            raise
        except psycopg.Error as exc:
            raise LocalApplyError(f"applying slots {entries[0].slot}..{entries[-1].slot} failed "
                                  f"({exc.sqlstate or 'no SQLSTATE'}): {exc}",
                                  sqlstate=exc.sqlstate or "58000") from None

    async def _pipeline_connection(self) -> PqConnection:
        if self._pq is None or self._pq.broken:
            if self._pq is not None:
                await self._pq.close()
                self._pq = None
            self._pq = await PqConnection.connect(self.dsn, connect_timeout=self.connect_timeout,
                                                  application_name="replicate applier")
        return self._pq

    async def node_position(self) -> tuple[int, int]:
        """The node's applied slot and when its postmaster started (microseconds since the
        epoch): a restarted node may have lost its last applied slots (asynchronous commits)."""
        try:
            (result,) = await (await self._pipeline_connection()).run([_POSITION])
        except psycopg.OperationalError:  # an idle connection learns of a restart when used
            (result,) = await (await self._pipeline_connection()).run([_POSITION])
        return int(result.get_value(0, 0)), int(result.get_value(0, 1))

    def _prelude_query(self, key: tuple, entry: Entry) -> Query:
        """The settings query of ``entry`` (``key``: its role and settings), built once per key:
        nearly every entry carries the same ones."""
        query = self._preludes.get(key)
        if query is None:
            if len(self._preludes) >= 64:
                self._preludes.clear()
            query = self._preludes[key] = Query(
                _PRELUDE, tuple(v.encode() for v in _prelude_params(entry)))
        return query

    async def _apply_pipelined(self, entries: Sequence[ChosenEntry],
                               decoded: list[Entry | None]) -> list[Outcome]:
        """The common case in two round trips (sql/006_apply.sql): no savepoints, no lookups.

        Raises ``_NeedCareful`` (after rolling back) when the batch needs the careful path: a
        deterministic error in a statement, or a request id applied before.
        """
        try:
            conn = await self._pipeline_connection()
        except psycopg.Error as exc:
            raise LocalApplyError(f"cannot connect to the local node: {exc}") from None
        # A request applied before is found by the unique index on replicate.outcomes' request
        # ids when apply_finish records the batch (unique_violation, deterministic: the careful
        # path), not looked up here (sql/009_apply_begin_without_lookup.sql,
        # sql/012_requests_in_outcomes.sql).
        queries = [_BEGIN, Query(
            "SELECT replicate.apply_begin($1, NULL, $2)",
            (pqconn.int8(entries[0].slot), pqconn.int4(self.apply_timeout_ms)),
            (INT8_OID, INT4_OID), (1, 1))]
        where: list[int | None] = []  # per entry: its statement's index in queries
        key: tuple | None = None
        for entry in decoded:
            if entry is None:
                where.append(None)
                continue
            if (entry.role, entry.settings) != key:
                key = (entry.role, entry.settings)
                queries.append(self._prelude_query(key, entry))
            where.append(len(queries))
            queries.append(Query(entry.sql, [p.value for p in entry.params],
                                 [p.type_oid for p in entry.params],
                                 [int(p.binary) for p in entry.params], entry.binary_results,
                                 _parse_context(entry)))
        try:
            results = await conn.run(queries)
            records = [_Record(Outcome(chosen.slot, "", Status.NOOP)) if i is None
                       else _result(results[i], chosen.slot, chosen.value.request_id)
                       for chosen, i in zip(entries, where)]
            await conn.run([_finish_query(entries[-1].slot, records), _COMMIT])
        except psycopg.Error as exc:
            if not conn.broken and conn.transaction_status != TransactionStatus.IDLE:
                await conn.run([_ROLLBACK])
            if exc.sqlstate == "RP001":
                raise ApplyGap(int(exc.diag.message_detail or 0), entries[0].slot) from None
            if exc.sqlstate == "RP002" or is_deterministic(exc.sqlstate):
                raise _NeedCareful() from None
            raise
        return [r.outcome for r in records]

    async def _apply_careful(self, conn: psycopg.AsyncConnection,
                             entries: Sequence[ChosenEntry]) -> list[Outcome]:
        """Entry by entry, each in a savepoint: deterministic errors, repeats, control entries."""
        cur = AsyncRawCursor(conn)
        self._session_key = None  # role and settings set in this transaction
        try:
            await cur.execute("SELECT replicate.apply_begin($1, NULL, $2)",
                              [entries[0].slot, self.apply_timeout_ms])
        except psycopg.Error as exc:
            if exc.sqlstate == "RP001":
                raise ApplyGap(int(exc.diag.message_detail or 0), entries[0].slot) from None
            raise
        ids = [c.value.request_id for c in entries if not c.value.is_noop]
        await cur.execute("SELECT request_id, slot FROM replicate.requests "
                          "WHERE request_id = ANY($1::text[])", [ids])
        applied_before = {rid: int(slot) for rid, slot in await cur.fetchall()}
        seen: dict[str, int] = {}
        records: list[_Record] = []
        for chosen in entries:
            value = chosen.value
            rid = value.request_id
            if value.is_noop:
                records.append(_Record(Outcome(chosen.slot, "", Status.NOOP)))
                continue
            earlier = seen.get(rid, applied_before.get(rid))
            if earlier is not None:
                records.append(_Record(await self._duplicate(cur, chosen.slot, rid, earlier,
                                                             records)))
                continue
            seen[rid] = chosen.slot
            try:
                entry = Entry.decode(value.payload)
            except ValueError as exc:  # the same bytes fail the same way everywhere
                records.append(_undecodable(chosen.slot, rid, exc))
                continue
            if entry.kind is EntryKind.CONTROL:
                records.append(await self._control(cur, chosen.slot, rid, entry))
                self._session_key = None
                continue
            records.append(await self._statement(cur, chosen.slot, rid, entry))
        await cur.execute(_FINISH, _finish_params(entries[-1].slot, records))
        return [r.outcome for r in records]

    async def _statement(self, cur: AsyncRawCursor, slot: int, rid: str,
                         entry: Entry) -> _Record:
        key = (entry.role, entry.settings)
        await cur.execute("SAVEPOINT replicate_entry")
        try:
            if key != self._session_key:  # most entries share their predecessor's settings
                await cur.execute(_PRELUDE, _prelude_params(entry))
                self._session_key = key
            await cur.execute(entry.sql, _params(entry), binary=entry.binary_results)
        except psycopg.Error as exc:
            if not is_deterministic(exc.sqlstate):
                raise
            await cur.execute("ROLLBACK TO SAVEPOINT replicate_entry")
            self._session_key = None  # the rollback undid the settings made after it
            diag = exc.diag
            return _Record(Outcome(slot, rid, Status.ERROR, sqlstate=exc.sqlstate,
                                   message=diag.message_primary or str(exc),
                                   detail=diag.message_detail, hint=diag.message_hint))
        record = _result(cur.pgresult, slot, rid)
        await cur.execute("RELEASE SAVEPOINT replicate_entry")
        return record

    async def _control(self, cur: AsyncRawCursor, slot: int, rid: str, entry: Entry) -> _Record:
        """Register or unregister a table, or run a check: every node at this slot."""
        action, *args = entry.control
        await cur.execute("SAVEPOINT replicate_entry")
        try:
            if action == "check":
                await cur.execute(_PRELUDE, ["none", *CANONICAL_SETTINGS.values()])
                await self._check(cur, slot, args[0], json.loads(args[1]))
                await cur.execute("RELEASE SAVEPOINT replicate_entry")
                return _Record(Outcome(slot, rid, Status.CONTROL, command_tag="CHECK"))
            # regclass resolves the name exactly as PostgreSQL would (quoting, case) or fails
            await cur.execute("SELECT n.nspname, c.relname FROM pg_class c JOIN pg_namespace n "
                              "ON n.oid = c.relnamespace WHERE c.oid = $1::regclass", [args[0]])
            schema, relname = await cur.fetchone()
            table = f"{_quote(schema)}.{_quote(relname)}"
            if action == "register_table":
                await cur.execute("SELECT 1 FROM pg_trigger WHERE tgrelid = $1::regclass "
                                  "AND tgname = 'replicate_guard'", [table])
                if await cur.fetchone() is None:
                    await cur.execute(f"CREATE TRIGGER replicate_guard BEFORE INSERT OR UPDATE "
                                      f"OR DELETE OR TRUNCATE ON {table} FOR EACH STATEMENT "
                                      f"EXECUTE FUNCTION replicate.guard()")
                await cur.execute("INSERT INTO replicate.registered_tables (table_name, "
                                  "since_slot) VALUES ($1, $2) ON CONFLICT DO NOTHING",
                                  [table, slot])
            else:
                await cur.execute(f"DROP TRIGGER IF EXISTS replicate_guard ON {table}")
                await cur.execute("DELETE FROM replicate.registered_tables WHERE table_name = $1",
                                  [table])
            # the sequences whose state apply_begin restores (sql/007_apply_bookkeeping.sql)
            await cur.execute("SELECT replicate.track_sequences()")
            # A registration is not lost in a crash, unlike other applies: until it was applied
            # again, the node's guard would let direct writes through, and the proxy's catalog
            # would miss the table. Rare entries: one WAL flush each.
            await cur.execute("SELECT set_config('synchronous_commit', 'on', true)")
        except psycopg.Error as exc:
            if not is_deterministic(exc.sqlstate):
                raise
            await cur.execute("ROLLBACK TO SAVEPOINT replicate_entry")
            return _Record(Outcome(slot, rid, Status.ERROR, sqlstate=exc.sqlstate,
                                   message=exc.diag.message_primary or str(exc)))
        await cur.execute("RELEASE SAVEPOINT replicate_entry")
        return _Record(Outcome(slot, rid, Status.CONTROL, command_tag=entry.sql))

    async def _check(self, cur: AsyncRawCursor, slot: int, check_id: str, spec: dict) -> None:
        """Hash each table per bucket of key hashes (and per row in ``spec['buckets']``)."""
        for name in spec["tables"]:
            await cur.execute(_TABLE_KEY_SQL, [name])
            schema, relname, keys = await cur.fetchone()
            table = f"{_quote(schema)}.{_quote(relname)}"
            key = (f"row({', '.join('t.' + _quote(k) for k in keys)})::text" if keys
                   else "t::text")
            bucket = f"(abs(hashtext({key})) % {CHECK_BUCKETS})"
            row_hash = "('x' || substr(md5(t::text), 1, 15))::bit(60)::bigint"
            await cur.execute(
                f"INSERT INTO replicate.check_results (check_id, slot, table_name, bucket, "
                f"row_count, hash) SELECT $1, $2, $3, {bucket}, count(*), sum({row_hash})::text "
                f"FROM {table} t GROUP BY 4", [check_id, slot, table])
            if spec.get("buckets"):
                await cur.execute(
                    f"INSERT INTO replicate.check_rows (check_id, table_name, row_key, row_hash) "
                    f"SELECT $1, $2, {key}, md5(t::text) FROM {table} t "
                    f"WHERE {bucket} = ANY($3::int[]) ORDER BY 3 LIMIT {CHECK_ROW_LIMIT}",
                    [check_id, table, spec["buckets"]])

    async def _duplicate(self, cur: AsyncRawCursor, slot: int, rid: str, earlier: int,
                         records: list[_Record]) -> Outcome:
        """The outcome of a request already applied at ``earlier``: not run again."""
        for record in records:
            if record.outcome.slot == earlier:
                first = record.outcome
                break
        else:
            await cur.execute("SELECT status, command_tag, rows_affected, sqlstate, message, "
                              "detail, hint FROM replicate.outcomes WHERE slot = $1", [earlier])
            row = await cur.fetchone()
            if row is None:
                return Outcome(slot, rid, Status.DUPLICATE)
            first = Outcome(earlier, rid, Status(row[0]), row[1], row[2], sqlstate=row[3],
                            message=row[4], detail=row[5], hint=row[6])
        return Outcome(slot, rid, Status.DUPLICATE, first.command_tag, first.rows_affected, first.columns, first.rows,
                       first.sqlstate, first.message, first.detail, first.hint)
