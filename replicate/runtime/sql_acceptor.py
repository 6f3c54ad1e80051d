"""The acceptor in a PostgreSQL node: Paxos requests as calls of the ``sql/`` functions.

``encode(request)`` gives the SQL and its parameters, ``decode(request, rows)`` turns the rows
the function returned into the core's reply; both are pure. ``call`` runs a request on a
psycopg connection (tools, tests); ``acall`` on a ``PqConnection`` (the engine's acceptor
links: libpq directly, ``query(request)`` encodes the same call for it). One request is one
function call, which on an autocommit connection is one transaction: the reply is durable when
it is decoded.

==============  ====================================================  ====================
request         SQL                                                   reply
==============  ====================================================  ====================
``Prepare``     ``replicate.prepare(round, proposer, from_slot)``     ``Promise | Nack |
                                                                      Leased``
``Accept``      ``replicate.accept(round, proposer, first_slot,       ``Accepted | Nack |
                                                                      Leased``
                request_ids[], payloads[], commit_upto)``
``Commit``      ``replicate.commit(round, proposer, commit_upto,      ``Committed | Nack``
                lease_ms)``
``Fetch``       ``replicate.fetch(from_slot, limit)``                 ``Fetched``
==============  ====================================================  ====================

Hot path: every parameter is typed (``int8``/``int4``, ``text[]``, ``bytea[]``) and sent in
binary, and results come back in binary, so payloads never go through hex; the SQL text is
constant per operation and prepared once per connection.
"""

from __future__ import annotations

from typing import Any, Sequence

import psycopg
from psycopg.types.numeric import Int4, Int8

from replicate.runtime import pqconn
from replicate.runtime.pqconn import (
    BYTEA_ARRAY_OID, BYTEA_OID, INT4_OID, INT8_OID, TEXT_ARRAY_OID, TEXT_OID, PqConnection, Query,
)

from replicate.errors import ProtocolError
from replicate.paxos.ballot import Ballot
from replicate.paxos.messages import (
    Accept, Accepted, AcceptedEntry, AcceptorReply, AcceptorRequest, ChosenEntry, Commit,
    Committed, Fetch, Fetched, Leased, Nack, Prepare, Promise, Value,
)

PREPARE_SQL = "SELECT * FROM replicate.prepare(%b, %b, %b)"
ACCEPT_SQL = "SELECT * FROM replicate.accept(%b, %b, %b, %b::text[], %b::bytea[], %b)"
COMMIT_SQL = "SELECT * FROM replicate.commit(%b, %b, %b, %b)"
FETCH_SQL = "SELECT * FROM replicate.fetch(%b, %b)"


def encode(request: AcceptorRequest) -> tuple[str, tuple[Any, ...]]:
    """The SQL and parameters that perform ``request`` in one node."""
    if isinstance(request, Accept):
        b = request.ballot
        return ACCEPT_SQL, (Int8(b.round), Int4(b.proposer), Int8(request.first_slot),
                            [v.request_id for v in request.values],
                            [v.payload for v in request.values], Int8(request.commit_upto))
    if isinstance(request, Commit):
        b = request.ballot
        return COMMIT_SQL, (Int8(b.round), Int4(b.proposer), Int8(request.commit_upto),
                            Int4(request.lease))
    if isinstance(request, Prepare):
        b = request.ballot
        return PREPARE_SQL, (Int8(b.round), Int4(b.proposer), Int8(request.from_slot))
    if isinstance(request, Fetch):
        return FETCH_SQL, (Int8(request.from_slot), Int4(request.limit))
    raise TypeError(f"not an acceptor request: {request!r}")


_PQ_SQL = {Prepare: "SELECT * FROM replicate.prepare($1, $2, $3)",
           Accept: "SELECT * FROM replicate.accept($1, $2, $3, $4, $5, $6)",
           Commit: "SELECT * FROM replicate.commit($1, $2, $3, $4)",
           Fetch: "SELECT * FROM replicate.fetch($1, $2)"}
_I8, _I4 = pqconn.int8, pqconn.int4


# The leader sends one Accept object to several acceptors: its arrays (every payload of the
# batch) are encoded once, not once per link. Keyed by identity; the entry keeps the request
# alive, so its id cannot be reused while it is cached.
_ENCODED_ACCEPTS: dict[int, tuple[Accept, Query]] = {}
_ENCODED_MAX = 8


def query(request: AcceptorRequest) -> Query:
    """``request`` as one binary ``Query`` for a ``PqConnection`` (same call as ``encode``)."""
    if type(request) is Accept:
        hit = _ENCODED_ACCEPTS.get(id(request))
        if hit is not None and hit[0] is request:
            return hit[1]
        encoded = _query(request)
        if len(_ENCODED_ACCEPTS) >= _ENCODED_MAX:
            _ENCODED_ACCEPTS.clear()
        _ENCODED_ACCEPTS[id(request)] = (request, encoded)
        return encoded
    return _query(request)


def _query(request: AcceptorRequest) -> Query:
    if isinstance(request, Accept):
        b = request.ballot
        params: tuple = (
            _I8(b.round), _I4(b.proposer), _I8(request.first_slot),
            pqconn.array(TEXT_OID, [v.request_id.encode() for v in request.values]),
            pqconn.array(BYTEA_OID, [v.payload for v in request.values]),
            _I8(request.commit_upto))
        types: tuple = (INT8_OID, INT4_OID, INT8_OID, TEXT_ARRAY_OID, BYTEA_ARRAY_OID, INT8_OID)
    elif isinstance(request, Commit):
        b = request.ballot
        params = (_I8(b.round), _I4(b.proposer), _I8(request.commit_upto), _I4(request.lease))
        types = (INT8_OID, INT4_OID, INT8_OID, INT4_OID)
    elif isinstance(request, Prepare):
        b = request.ballot
        params = (_I8(b.round), _I4(b.proposer), _I8(request.from_slot))
        types = (INT8_OID, INT4_OID, INT8_OID)
    elif isinstance(request, Fetch):
        params, types = (_I8(request.from_slot), _I4(request.limit)), (INT8_OID, INT4_OID)
    else:
        raise TypeError(f"not an acceptor request: {request!r}")
    return Query(_PQ_SQL[type(request)], params, types, (1,) * len(params), binary_results=True)


_BOOL_OID, _INT_OIDS = 16, frozenset({21, INT4_OID, INT8_OID})


def _column(oid: int):
    if oid == _BOOL_OID:
        return lambda v: v == b"\x01"
    if oid in _INT_OIDS:
        return pqconn.read_int
    if oid == TEXT_OID:
        return lambda v: v.decode()
    if oid == BYTEA_OID:
        return bytes
    raise ProtocolError(f"unexpected column type {oid} from an acceptor function")


def rows_of(result: Any) -> list[tuple[Any, ...]]:
    """The rows of a binary result of an acceptor function, as Python values."""
    convert = [_column(result.ftype(i)) for i in range(result.nfields)]
    return [tuple(None if (v := result.get_value(r, c)) is None else convert[c](v)
                  for c in range(result.nfields))
            for r in range(result.ntuples)]


def _one(rows: Sequence[Sequence[Any]], what: str) -> Sequence[Any]:
    if len(rows) != 1:
        raise ProtocolError(f"replicate.{what} returned {len(rows)} rows, expected one")
    return rows[0]


def _refusal(request: Prepare | Accept | Commit, promised: Ballot) -> AcceptorReply:
    """ok=false: a higher promise (Nack), or a lower one that a read lease keeps (Leased)."""
    if promised < request.ballot:
        return Leased(request.ballot, promised)
    return Nack(request.ballot, promised)


def _ok_or_nack(request: Accept | Commit, rows: Sequence[Sequence[Any]], what: str,
                reply: AcceptorReply) -> AcceptorReply:
    ok, promised_round, promised_proposer = _one(rows, what)[:3]
    if ok:
        return reply
    return _refusal(request, Ballot(promised_round, promised_proposer))


def decode(request: AcceptorRequest, rows: Sequence[Sequence[Any]]) -> AcceptorReply:
    """The core's reply to ``request``, from the rows its function returned."""
    if isinstance(request, Accept):
        return _ok_or_nack(request, rows, "accept", Accepted(
            request.ballot, request.first_slot, request.last_slot, request.commit_upto))
    if isinstance(request, Commit):
        granted = _one(rows, "commit")[3]
        return _ok_or_nack(request, rows, "commit", Committed(
            request.ballot, request.commit_upto, granted, request.stamp))
    if isinstance(request, Prepare):
        if not rows:
            raise ProtocolError("replicate.prepare returned no rows")
        first = rows[0]
        if not first[0]:
            _one(rows, "prepare")
            return _refusal(request, Ballot(first[1], first[2]))
        accepted = tuple(
            AcceptedEntry(slot, Ballot(ballot_round, ballot_proposer),
                          Value(request_id, bytes(payload)), chosen)
            for _, _, _, slot, ballot_round, ballot_proposer, request_id, payload, chosen in rows
            if slot is not None)
        return Promise(request.ballot, request.from_slot, accepted)
    if isinstance(request, Fetch):
        return Fetched(request.from_slot, tuple(
            ChosenEntry(slot, Value(request_id, bytes(payload)))
            for slot, request_id, payload in rows))
    raise TypeError(f"not an acceptor request: {request!r}")


def call(conn: psycopg.Connection, request: AcceptorRequest) -> AcceptorReply:
    """Perform ``request`` in the node behind ``conn`` (autocommit: one transaction)."""
    if not conn.autocommit:
        raise ValueError("the acceptor connection must be in autocommit mode")
    sql, params = encode(request)
    rows = conn.execute(sql, params, binary=True).fetchall()
    return decode(request, rows)


async def acall(conn: PqConnection, request: AcceptorRequest) -> AcceptorReply:
    """Perform ``request`` in the node behind ``conn`` (the engine's acceptor links)."""
    (result,) = await conn.run([query(request)])
    return decode(request, rows_of(result))
