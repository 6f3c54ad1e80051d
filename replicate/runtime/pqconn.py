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

The event loop watches a duplicate of libpq's socket descriptor, which only this object closes
(after it stopped watching it). libpq closes its own descriptor when it reads the end of the
stream; watching that number directly, a later ``close`` would have removed the watch of
whichever connection the number had been given to meanwhile (tests/runtime/test_pqconn.py).
"""

from __future__ import annotations

import asyncio
import os
import struct
from collections import OrderedDict
from typing import NamedTuple, Sequence

import psycopg
from psycopg import pq
from psycopg.errors import error_from_result

_EXEC = pq.ExecStatus
POKE_S = 1.0  # a waiting connection reads and re-registers after this long without a wake-up

INT4_OID, INT8_OID, TEXT_OID, BYTEA_OID = 23, 20, 25, 17
TEXT_ARRAY_OID, BYTEA_ARRAY_OID, INT8_ARRAY_OID = 1009, 1001, 1016


class Query(NamedTuple):
    """One statement with its parameters already encoded (``None`` is SQL NULL).

    A named tuple rather than a frozen dataclass: several are built per write on the hot path,
    and a tuple is built in a third of the time."""

    sql: str
    params: Sequence[bytes | None] = ()
    types: Sequence[int] = ()        # parameter type OIDs (0: let the server infer)
    formats: Sequence[int] = ()      # per parameter: 0 text, 1 binary (empty: all text)
    binary_results: bool = False
    # What else decides how the server parses the text (PostgreSQL lexes a prepared statement
    # once, e.g. under one standard_conforming_strings): part of the prepared statement's key.
    parse_context: tuple = ()


# -- binary encoding of the parameter types the engine uses ---------------------------------
_INT8, _INT4 = struct.Struct("!q"), struct.Struct("!i")
_ARRAY_EMPTY, _ARRAY_HEAD = struct.Struct("!iii"), struct.Struct("!iiiii")
_NULL = b"\xff\xff\xff\xff"


def int8(value: int) -> bytes:
    return _INT8.pack(value)


def int4(value: int) -> bytes:
    return _INT4.pack(value)


def array(element_oid: int, items: Sequence[bytes | None]) -> bytes:
    """A one-dimensional array in PostgreSQL's binary format."""
    if not items:
        return _ARRAY_EMPTY.pack(0, 0, element_oid)
    parts = [_ARRAY_HEAD.pack(1, int(None in items), element_oid, len(items), 1)]
    length = _INT4.pack
    for x in items:
        if x is None:
            parts.append(_NULL)
        else:
            parts.append(length(len(x)))
            parts.append(x)
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
        self._fd = os.dup(self._pg.socket)  # ours: see the module docstring
        self._waiter: asyncio.Future | None = None
        self._writable: asyncio.Future | None = None  # while _flush waits for the socket
        self._failure: BaseException | None = None
        self._running = False  # a run is reading its results (see _poke)
        self._poke_timer: asyncio.TimerHandle | None = None
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
        """Stop watching the socket and close our descriptor of it; once."""
        fd, self._fd = self._fd, -1
        if fd < 0:
            return
        try:
            self._loop.remove_reader(fd)
            if self._writable is not None:  # a _flush is waiting: it must not wait forever
                self._loop.remove_writer(fd)
                if not self._writable.done():
                    self._writable.set_exception(psycopg.OperationalError(
                        f"the connection is broken: {self._failure}"))
        except (ValueError, OSError, RuntimeError):  # the loop is already closed
            pass
        os.close(fd)

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
        prepared = self._prepared
        for q in queries:
            key = (q.sql, tuple(q.types), q.parse_context)  # fixed when it is prepared
            name = prepared.get(key)
            if name is None:
                self._names += 1
                name = b"r%d" % self._names
                pg.send_prepare(name, q.sql.encode(self.encoding), q.types or None)
                expected.append(False)
                prepared[key] = name
                fresh.append(key)
                if len(prepared) > self.max_prepared:
                    _, old = prepared.popitem(last=False)
                    self._to_close.append(old)
            else:
                prepared.move_to_end(key)
            pg.send_query_prepared(name, q.params or None, q.formats or None,
                                   1 if q.binary_results else 0)
            expected.append(True)
        pg.pipeline_sync()
        if pg.flush():
            await self._flush()
        # Results are read inline, waiting only while libpq is busy: they mostly arrive
        # together, and a coroutine per result or a timer per wait cost more than reading them
        # (docs/decisions.md, "Leader proxy CPU per write"). One poke timer covers the run.
        self._running = True
        try:
            results: list[pq.abc.PGresult] = []
            error: pq.abc.PGresult | None = None
            for wanted in expected:
                if pg.is_busy():
                    await self._until_not_busy()
                result = pg.get_result()
                if result is None:
                    raise psycopg.OperationalError("pipeline out of step: no result where one "
                                                   "was due")
                if result.status == _EXEC.FATAL_ERROR and error is None:
                    error = result
                if wanted:
                    results.append(result)
                # the NULL that ends this query's results
                if pg.is_busy():
                    await self._until_not_busy()
                extra = pg.get_result()
                if extra is not None:
                    raise psycopg.OperationalError("pipeline out of step: a query returned "
                                                   f"several results ({_EXEC(extra.status).name})")
            if pg.is_busy():
                await self._until_not_busy()
            sync = pg.get_result()
        finally:
            self._running = False
            if self._poke_timer is not None:
                self._poke_timer.cancel()
                self._poke_timer = None
        if sync is None:
            raise psycopg.OperationalError("pipeline out of step: no result where one was due")
        if sync.status != _EXEC.PIPELINE_SYNC:
            raise psycopg.OperationalError(f"pipeline out of step: got {_EXEC(sync.status).name}")
        if error is not None:
            for key in fresh:  # a statement prepared in a failed pipeline may not exist
                prepared.pop(key, None)
            raise error_from_result(error, encoding=self.encoding)
        return results

    async def _flush(self) -> None:
        while self._pg.flush():
            fd = self._fd
            if fd < 0:
                raise psycopg.OperationalError(f"the connection is broken: {self._failure}")
            done = self._writable = self._loop.create_future()
            self._loop.add_writer(fd, lambda: done.done() or done.set_result(None))
            try:
                await done
            finally:
                self._writable = None
                if self._fd == fd:  # else _stop_reading removed it and closed fd
                    self._loop.remove_writer(fd)

    async def _until_not_busy(self) -> None:
        """Wait until libpq can hand out the next result (or the NULL that ends a query's)."""
        if self._poke_timer is None:
            self._poke_timer = self._loop.call_later(POKE_S, self._poke)
        while self._pg.is_busy():
            if self._failure is not None:
                raise self._failure
            self._waiter = self._loop.create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None

    def _poke(self) -> None:
        """A run got no wake-up for POKE_S: read as if woken, and watch the socket afresh.

        The event loop's interest list was seen to lose a connection's socket (an applier
        waiting forever after its node was SIGKILLed and restarted, the socket open and not
        watched). Whatever drops the watch, a waiting connection finds out within POKE_S
        seconds: it reads what arrived (or the end of the stream) and registers again. One
        timer per ``run`` that had to wait (not one per wait): it fires every POKE_S while the
        run lasts.
        """
        self._poke_timer = None
        if not self._running:
            return
        if self._waiter is not None and not self._waiter.done():
            self._on_readable()
            if self._waiter is not None and not self._waiter.done() and self._fd >= 0:
                try:
                    self._loop.remove_reader(self._fd)
                except (ValueError, OSError):
                    pass
                self._loop.add_reader(self._fd, self._on_readable)
        if self._running and self._fd >= 0:
            self._poke_timer = self._loop.call_later(POKE_S, self._poke)
