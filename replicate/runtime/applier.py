"""The applier: chosen log entries into the local PostgreSQL node, in slot order, exactly once.

One transaction per batch of consecutive chosen slots (DESIGN.md "Applying"):

1. ``SET LOCAL replicate.applying = on`` (the guard trigger lets the write
   through) and ``synchronous_commit = off`` (safe: the durable log replays);
2. per entry, a savepoint; the entry's role and result-changing settings
   (fixed defaults where the entry has none, so node configuration never
   leaks into results); the statement with its bind parameters exactly as
   the client sent them;
3. per slot, the outcome row, the request id, and the new applied slot, all
   in the same transaction, so a slot is applied exactly once across crashes.

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
from psycopg.pq import Format

from replicate.command import Column, Entry, EntryKind, Outcome, Param, Status
from replicate.errors import ReplicateError
from replicate.paxos.messages import ChosenEntry

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

# Where an entry does not carry a setting, every node uses this value, not its own default.
CANONICAL_SETTINGS = {
    "search_path": '"$user", public',
    "TimeZone": "UTC",
    "DateStyle": "ISO, MDY",
    "IntervalStyle": "postgres",
    "extra_float_digits": "1",
    "bytea_output": "hex",
    "standard_conforming_strings": "on",
}
_PRELUDE = "SELECT set_config('role', $1, true), " + ", ".join(
    f"set_config('{name}', ${i + 2}, true)" for i, name in enumerate(CANONICAL_SETTINGS))


# nextval() is not transactional: a batch rolled back for a local reason, or crash recovery,
# can leave a sequence ahead on one node. Each batch first puts every sequence owned by a
# registered table back to the state committed with the applied slot, and records the new
# state in the same transaction (sql/003_sequences.sql); a table unregistered in the batch
# drops out of that state, so its sequence is left alone afterwards.
_RESTORE_SEQUENCES = """
SELECT setval(to_regclass(sequence_name), last_value, is_called)
FROM replicate.sequence_state
WHERE to_regclass(sequence_name) IS NOT NULL"""
_SAVE_SEQUENCES = """
INSERT INTO replicate.sequence_state (sequence_name, last_value, is_called)
SELECT DISTINCT quote_ident(s.schemaname) || '.' || quote_ident(s.sequencename),
       coalesce(s.last_value, s.start_value), s.last_value IS NOT NULL
FROM replicate.registered_tables r
JOIN pg_depend d ON d.refobjid = to_regclass(r.table_name)
                AND d.refclassid = 'pg_class'::regclass AND d.classid = 'pg_class'::regclass
                AND d.deptype IN ('a', 'i')
JOIN pg_class c ON c.oid = d.objid AND c.relkind = 'S'
JOIN pg_namespace n ON n.oid = c.relnamespace
JOIN pg_sequences s ON s.schemaname = n.nspname AND s.sequencename = c.relname"""


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


class _NeedSavepoints(Exception):
    """A deterministic error in the fast path: apply the batch again, entry by entry."""


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


class Applier:
    """Applies batches of chosen entries to one node over one connection."""

    def __init__(self, dsn: str, *, connect_timeout: float = 5.0,
                 apply_timeout_ms: int = 5000) -> None:
        self.dsn = dsn
        self.connect_timeout = connect_timeout
        self.apply_timeout_ms = apply_timeout_ms
        self._conn: psycopg.AsyncConnection | None = None
        self._session_key: tuple | None = None

    async def _connection(self) -> psycopg.AsyncConnection:
        if self._conn is None or self._conn.closed or self._conn.broken:
            conn = await psycopg.AsyncConnection.connect(
                self.dsn, connect_timeout=max(1, int(self.connect_timeout)),
                application_name="replicate applier")
            conn.adapters.register_dumper(_RawParam, _RawDumper)
            self._conn = conn
        return self._conn

    async def close(self) -> None:
        if self._conn is not None:
            await self._conn.close()
            self._conn = None

    async def applied_slot(self) -> int:
        conn = await self._connection()
        async with conn.transaction():
            row = await (await conn.execute("SELECT slot FROM replicate.applied")).fetchone()
        return int(row[0]) if row else 0

    async def apply(self, entries: Sequence[ChosenEntry]) -> list[Outcome]:
        """Apply ``entries`` (consecutive slots, the first one right after the applied slot)."""
        try:
            conn = await self._connection()
        except psycopg.Error as exc:
            raise LocalApplyError(f"cannot connect to the local node: {exc}") from None
        try:
            try:
                # Fast: no savepoint per entry. A deterministic error is rare; it sends the
                # whole batch through the careful path, where each entry has its savepoint.
                async with conn.transaction():
                    return await self._apply(conn, entries, careful=False)
            except _NeedSavepoints:
                async with conn.transaction():
                    return await self._apply(conn, entries, careful=True)
        except LocalApplyError:
            raise
        except psycopg.Error as exc:
            raise LocalApplyError(f"applying slots {entries[0].slot}..{entries[-1].slot} failed "
                                  f"({exc.sqlstate or 'no SQLSTATE'}): {exc}",
                                  sqlstate=exc.sqlstate or "58000") from None

    async def _apply(self, conn: psycopg.AsyncConnection, entries: Sequence[ChosenEntry], *,
                     careful: bool) -> list[Outcome]:
        cur = AsyncRawCursor(conn)
        self._session_key = None  # role and settings set in this transaction
        await cur.execute("SELECT slot FROM replicate.applied FOR UPDATE")
        row = await cur.fetchone()
        applied = int(row[0]) if row else 0
        if entries[0].slot != applied + 1:
            raise ApplyGap(applied, entries[0].slot)
        # A lock held on this node past the apply timeout stalls it (a local cause); a
        # statement may run longer than that before it counts as stuck.
        await cur.execute("SELECT set_config('replicate.applying', 'on', true), "
                          "set_config('synchronous_commit', 'off', true), "
                          "set_config('lock_timeout', $1, true), "
                          "set_config('statement_timeout', $2, true)",
                          [str(self.apply_timeout_ms), str(4 * self.apply_timeout_ms)])
        await cur.execute(_RESTORE_SEQUENCES)
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
                records.append(_Record(Outcome(chosen.slot, rid, Status.ERROR, sqlstate="XX001",
                                               message=str(exc))))
                continue
            if entry.kind is EntryKind.CONTROL:
                records.append(await self._control(cur, chosen.slot, rid, entry))
                self._session_key = None
                continue
            records.append(await self._statement(cur, chosen.slot, rid, entry, careful))
        await self._record(cur, records)
        await cur.execute("DELETE FROM replicate.sequence_state")  # only registered tables
        await cur.execute(_SAVE_SEQUENCES)
        await cur.execute("UPDATE replicate.applied SET slot = $1", [entries[-1].slot])
        return [r.outcome for r in records]

    async def _statement(self, cur: AsyncRawCursor, slot: int, rid: str, entry: Entry,
                         careful: bool) -> _Record:
        key = (entry.role, entry.settings)
        if careful:
            await cur.execute("SAVEPOINT replicate_entry")
        try:
            if key != self._session_key:  # most entries share their predecessor's settings
                settings = dict(CANONICAL_SETTINGS)
                settings.update(entry.settings)
                await cur.execute(_PRELUDE, [entry.role or "none", *settings.values()])
                self._session_key = key
            await cur.execute(entry.sql, _params(entry), binary=entry.binary_results)
        except psycopg.Error as exc:
            if not is_deterministic(exc.sqlstate):
                raise
            if not careful:
                raise _NeedSavepoints() from None
            await cur.execute("ROLLBACK TO SAVEPOINT replicate_entry")
            self._session_key = None  # the rollback undid the settings made after it
            diag = exc.diag
            return _Record(Outcome(slot, rid, Status.ERROR, sqlstate=exc.sqlstate,
                                   message=diag.message_primary or str(exc),
                                   detail=diag.message_detail, hint=diag.message_hint))
        result = cur.pgresult
        columns: tuple[Column, ...] = ()
        rows: tuple[tuple[bytes | None, ...], ...] = ()
        if result is not None and result.nfields:
            columns = tuple(Column(result.fname(i).decode(), result.ftype(i), result.fmod(i),
                                   result.fsize(i), bool(result.fformat(i)))
                            for i in range(result.nfields))
            rows = tuple(tuple(result.get_value(r, c) for c in range(result.nfields))
                         for r in range(result.ntuples))
        tag = cur.statusmessage
        rowcount = cur.rowcount if cur.rowcount >= 0 else None
        if careful:
            await cur.execute("RELEASE SAVEPOINT replicate_entry")
        return _Record(Outcome(slot, rid, Status.OK, tag, rowcount, columns, rows),
                       rows_digest(rows) if columns else None)

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

    async def _record(self, cur: AsyncRawCursor, records: list[_Record]) -> None:
        outs = [r.outcome for r in records]
        await cur.execute(
            "INSERT INTO replicate.outcomes (slot, request_id, status, command_tag, "
            "rows_affected, sqlstate, message, detail, hint, result) "
            "SELECT * FROM unnest($1::bigint[], $2::text[], $3::text[], $4::text[], "
            "$5::bigint[], $6::text[], $7::text[], $8::text[], $9::text[], $10::bytea[])",
            [[o.slot for o in outs], [o.request_id for o in outs], [o.status.value for o in outs],
             [o.command_tag for o in outs], [o.rows_affected for o in outs],
             [o.sqlstate for o in outs], [o.message for o in outs], [o.detail for o in outs],
             [o.hint for o in outs], [r.digest for r in records]])
        first_seen: dict[str, int] = {}
        for o in outs:
            if o.request_id and o.status is not Status.DUPLICATE:
                first_seen.setdefault(o.request_id, o.slot)
        if first_seen:
            await cur.execute("INSERT INTO replicate.requests (request_id, slot) "
                              "SELECT * FROM unnest($1::text[], $2::bigint[])",
                              [list(first_seen), list(first_seen.values())])
