"""A PostgreSQL connection driven through libpq directly, for the engine's hot paths.

The acceptor links and the appliers send a few statements thousands of times a second. psycopg's
cursor layer (adaptation, query conversion, result sets, generators) cost ~65 us of CPU per
call on our 2-core test machine; driving libpq itself (``psycopg.pq``) costs ~20 us (see
docs/decisions.md, "Hot paths on libpq"). Callers encode their parameters themselves
(``Query``: SQL, parameter bytes, type OIDs, formats) and read raw ``PGresult``s.

    conn = await PqConnection.connect(dsn, application_name="replicate acceptor")
    results = await conn.run([Query("SELECT $1::int8 + 1", (b"41",), (20,))])
    results[0].get_value(0, 0)  # b"42"

``run`` sends its queries in one pipeline followed by one Sync, so a batch costs one round trip;
each SQL text is prepared once per connection (an LRU of ``max_prepared`` names; evicted ones
are closed on the server). If a query fails, the rest of the pipeline does not run and ``run``
raises psycopg's exception for it (same classes, ``.sqlstate`` and ``.diag`` as anywhere else);
an explicit transaction the pipeline opened is then still open, aborted, for the caller to roll
back. A connection that broke, or whose ``run`` was cancelled half-way, is ``broken`` and must
be closed. ``run`` calls must not overlap (the callers are serial by design).
"""

from __future__ import annotations

import asyncio
import struct
from collections import OrderedDict
from dataclasses import dataclass
from typing import Sequence

import psycopg
from psycopg import pq
from psycopg.errors import error_from_result

_EXEC = pq.ExecStatus

INT4_OID, INT8_OID, TEXT_OID, BYTEA_OID = 23, 20, 25, 17
TEXT_ARRAY_OID, BYTEA_ARRAY_OID, INT8_ARRAY_OID = 1009, 1001, 1016


@dataclass(frozen=True, slots=True)
class Query:
    """One statement with its parameters already encoded (``None`` is SQL NULL)."""

    sql: str
    params: Sequence[bytes | None] = ()
    types: Sequence[int] = ()        # parameter type OIDs (0: let the server infer)
    formats: Sequence[int] = ()      # per parameter: 0 text, 1 binary (empty: all text)
    binary_results: bool = False
    # What else decides how the server parses the text (PostgreSQL lexes a prepared statement
    # once, e.g. under one standard_conforming_strings): part of the prepared statement's key.
    parse_context: tuple = ()


# -- binary encoding of the parameter types the engine uses ---------------------------------
def int8(value: int) -> bytes:
    return struct.pack("!q", value)


def int4(value: int) -> bytes:
    return struct.pack("!i", value)


def array(element_oid: int, items: Sequence[bytes | None]) -> bytes:
    """A one-dimensional array in PostgreSQL's binary format."""
    if not items:
        return struct.pack("!iii", 0, 0, element_oid)
    has_null = any(x is None for x in items)
    parts = [struct.pack("!iiiii", 1, int(has_null), element_oid, len(items), 1)]
    for x in items:
        parts.append(b"\xff\xff\xff\xff" if x is None else struct.pack("!i", len(x)) + x)
    return b"".join(parts)


def read_int(value: bytes) -> int:
    """An int2/int4/int8 column in binary format."""
    return int.from_bytes(value, "big", signed=True)


class PqConnection:
    """See the module docstring."""

    def __init__(self, owner: psycopg.AsyncConnection, *, max_prepared: int = 256) -> None:
        self._owner = owner  # keeps the socket, closes it; never used for queries
        self._pg = owner.pgconn
        self._pg.nonblocking = 1
        self._pg.enter_pipeline_mode()
        self._loop = asyncio.get_running_loop()
        self._fd = self._pg.socket
        self._waiter: asyncio.Future | None = None
        self._failure: BaseException | None = None
        self._prepared: OrderedDict[tuple, bytes] = OrderedDict()  # (sql, types) -> name
        self._to_close: list[bytes] = []
        self._names = 0
        self.max_prepared = max_prepared
        self.encoding = owner.info.encoding
        self.broken = False
        self.closed = False
        self._loop.add_reader(self._fd, self._on_readable)

    @classmethod
    async def connect(cls, dsn: str, *, connect_timeout: float = 5.0,
                      application_name: str = "replicate") -> "PqConnection":
        owner = await psycopg.AsyncConnection.connect(
            dsn, autocommit=True, connect_timeout=max(1, int(connect_timeout)),
            application_name=application_name)
        return cls(owner)

    @property
    def transaction_status(self) -> pq.TransactionStatus:
        return self._pg.transaction_status

    async def close(self) -> None:
        if self.closed:
            return
        self.closed = self.broken = True
        self._stop_reading()
        await self._owner.close()

    def _stop_reading(self) -> None:
        try:
            self._loop.remove_reader(self._fd)
        except (ValueError, OSError):  # the loop or the socket is already gone
            pass

    def _on_readable(self) -> None:
        try:
            self._pg.consume_input()
        except psycopg.OperationalError as exc:
            self._fail(exc)
            return
        waiter = self._waiter
        if waiter is not None and not waiter.done() and not self._pg.is_busy():
            waiter.set_result(None)

    def _fail(self, exc: BaseException) -> None:
        self.broken = True
        if self._failure is None:
            self._failure = exc
        self._stop_reading()
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_exception(exc)

    async def run(self, queries: Sequence[Query]) -> list[pq.abc.PGresult]:
        """Run ``queries`` in one pipeline; their results, in order (see the module docstring)."""
        if self.broken:
            raise psycopg.OperationalError(f"the connection is broken: {self._failure}")
        try:
            return await self._run(queries)
        except psycopg.Error as exc:
            if isinstance(exc, psycopg.OperationalError):
                self._fail(exc)
            raise
        except BaseException as exc:  # cancelled or worse half-way: the state is unknown
            self._fail(psycopg.OperationalError(f"interrupted: {exc!r}"))
            raise

    async def _run(self, queries: Sequence[Query]) -> list[pq.abc.PGresult]:
        pg = self._pg
        expected: list[bool] = []  # per result stream: True for a query's, False to skip
        fresh: list[tuple] = []
        for name in self._to_close:
            pg.send_close_prepared(name)
            expected.append(False)
        self._to_close = []
        for q in queries:
            key = (q.sql, tuple(q.types), q.parse_context)  # fixed when it is prepared
            name = self._prepared.get(key)
            if name is None:
                self._names += 1
                name = b"r%d" % self._names
                pg.send_prepare(name, q.sql.encode(self.encoding), q.types or None)
                expected.append(False)
                self._prepared[key] = name
                fresh.append(key)
                if len(self._prepared) > self.max_prepared:
                    _, old = self._prepared.popitem(last=False)
                    self._to_close.append(old)
            else:
                self._prepared.move_to_end(key)
            pg.send_query_prepared(name, q.params or None, q.formats or None,
                                   1 if q.binary_results else 0)
            expected.append(True)
        pg.pipeline_sync()
        await self._flush()
        results: list[pq.abc.PGresult] = []
        error: pq.abc.PGresult | None = None
        for wanted in expected:
            result = await self._next_result()
            status = result.status
            if status == _EXEC.FATAL_ERROR and error is None:
                error = result
            if wanted:
                results.append(result)
            await self._end_of_query()
        sync = await self._next_result()
        if sync.status != _EXEC.PIPELINE_SYNC:
            raise psycopg.OperationalError(f"pipeline out of step: got {_EXEC(sync.status).name}")
        if error is not None:
            for key in fresh:  # a statement prepared in a failed pipeline may not exist
                self._prepared.pop(key, None)
            raise error_from_result(error, encoding=self.encoding)
        return results

    async def _flush(self) -> None:
        while self._pg.flush():
            done = self._loop.create_future()
            self._loop.add_writer(self._fd, lambda: done.done() or done.set_result(None))
            try:
                await done
            finally:
                self._loop.remove_writer(self._fd)

    async def _wait(self) -> None:
        if self._failure is not None:
            raise self._failure
        self._waiter = self._loop.create_future()
        try:
            await self._waiter
        finally:
            self._waiter = None

    async def _next_result(self) -> pq.abc.PGresult:
        while True:
            if not self._pg.is_busy():
                result = self._pg.get_result()
                if result is not None:
                    return result
                raise psycopg.OperationalError("pipeline out of step: no result where one "
                                               "was due")
            await self._wait()

    async def _end_of_query(self) -> None:
        """Consume the NULL that ends one query's results in a pipeline."""
        while self._pg.is_busy():
            await self._wait()
        extra = self._pg.get_result()
        if extra is not None:
            raise psycopg.OperationalError("pipeline out of step: a query returned several "
                                           f"results ({_EXEC(extra.status).name})")
