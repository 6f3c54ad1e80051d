"""Values and messages: everything that crosses a process boundary, as typed frozen dataclasses.

Each message is validated on construction, so a malformed message fails where it is built (or,
in the runtime, where it is decoded), never deep inside the protocol.

Addresses: ``Addr("acceptor", i)`` is the acceptor in PostgreSQL node ``i``; ``Addr("replica",
i)`` is proxy ``i`` (proposer + learner). An ``Envelope`` carries one message from one address to
another.

Messages, by direction:

- replica -> acceptor (requests, one acceptor transaction each): ``Prepare``, ``Accept``,
  ``Commit``, ``Fetch``
- acceptor -> replica (replies): ``Promise``, ``Accepted``, ``Committed``, ``Nack``, ``Leased``,
  ``Fetched``
- replica -> replica: ``Heartbeat`` and ``Chosen`` (leader to followers), ``Forward`` (a
  proposal to the leader)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Union

from replicate.paxos.ballot import Ballot


def _check_slot(name: str, slot: int, minimum: int = 0) -> None:
    if type(slot) is not int or slot < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, got {slot!r}")


def _check_ballot(ballot: object) -> None:
    if not isinstance(ballot, Ballot):
        raise TypeError(f"ballot must be a Ballot, got {ballot!r}")


@dataclass(frozen=True, slots=True)
class Value:
    """A log entry as the core sees it: a request id and opaque payload bytes.

    The request id makes retries idempotent: the same request may be chosen in two slots (a
    client retried through another replica), and the applier applies it at most once. The
    no-op (empty request id, empty payload) fills holes during recovery.
    """

    request_id: str
    payload: bytes

    def __post_init__(self) -> None:
        if not isinstance(self.request_id, str):
            raise TypeError(f"request_id must be str, got {self.request_id!r}")
        if not isinstance(self.payload, bytes):
            raise TypeError(f"payload must be bytes, got {type(self.payload).__name__}")
        if not self.request_id and self.payload:
            raise ValueError("a value without a request id must be the no-op (empty payload)")

    @property
    def is_noop(self) -> bool:
        return not self.request_id

    def __str__(self) -> str:
        return "noop" if self.is_noop else f"{self.request_id}={self.payload!r}"


NOOP = Value("", b"")


@dataclass(frozen=True, slots=True)
class Addr:
    """Where a message goes: an acceptor (PostgreSQL node) or a replica (proxy)."""

    role: Literal["acceptor", "replica"]
    id: int

    def __post_init__(self) -> None:
        if self.role not in ("acceptor", "replica"):
            raise ValueError(f"role must be 'acceptor' or 'replica', got {self.role!r}")
        _check_slot("id", self.id)

    def __str__(self) -> str:
        return f"{self.role[0]}{self.id}"


def acceptor_addr(i: int) -> Addr:
    return Addr("acceptor", i)


def replica_addr(i: int) -> Addr:
    return Addr("replica", i)


@dataclass(frozen=True, slots=True)
class AcceptedEntry:
    """What an acceptor holds for one slot: accepted ballot and value, and the chosen mark."""

    slot: int
    ballot: Ballot
    value: Value
    chosen: bool = False

    def __post_init__(self) -> None:
        _check_slot("slot", self.slot, 1)
        _check_ballot(self.ballot)


@dataclass(frozen=True, slots=True)
class ChosenEntry:
    """A slot and the value chosen for it."""

    slot: int
    value: Value

    def __post_init__(self) -> None:
        _check_slot("slot", self.slot, 1)


# --- replica -> acceptor -------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Prepare:
    """Phase 1a: promise ``ballot`` for every slot >= ``from_slot``."""

    ballot: Ballot
    from_slot: int

    def __post_init__(self) -> None:
        _check_ballot(self.ballot)
        _check_slot("from_slot", self.from_slot, 1)


@dataclass(frozen=True, slots=True)
class Accept:
    """Phase 2a for a batch: accept ``values`` in slots ``first_slot..`` under ``ballot``.

    ``commit_upto`` is the proposer's commit index: every slot <= it that this acceptor holds
    under ``ballot`` is chosen.
    """

    ballot: Ballot
    first_slot: int
    values: tuple[Value, ...]
    commit_upto: int

    def __post_init__(self) -> None:
        _check_ballot(self.ballot)
        _check_slot("first_slot", self.first_slot, 1)
        _check_slot("commit_upto", self.commit_upto)
        if not isinstance(self.values, tuple) or not self.values:
            raise ValueError("values must be a non-empty tuple")
        for v in self.values:
            if not isinstance(v, Value):
                raise TypeError(f"values must hold Value objects, got {v!r}")

    @property
    def last_slot(self) -> int:
        return self.first_slot + len(self.values) - 1


@dataclass(frozen=True, slots=True)
class Commit:
    """Heartbeat to an acceptor: slots <= ``commit_upto`` accepted under ``ballot`` are chosen.

    With ``lease > 0`` it also asks for a read lease: an acceptor whose promise is ``ballot``
    promises no higher ballot for ``lease`` units of its own clock (milliseconds in
    PostgreSQL). ``stamp`` is the sender's clock when it sent the request; the acceptor does
    not read it, the reply carries it back (see ``lease.LeaseTracker``).
    """

    ballot: Ballot
    commit_upto: int
    lease: int = 0
    stamp: int = 0

    def __post_init__(self) -> None:
        _check_ballot(self.ballot)
        _check_slot("commit_upto", self.commit_upto)
        _check_slot("lease", self.lease)
        _check_slot("stamp", self.stamp)


@dataclass(frozen=True, slots=True)
class Fetch:
    """Catch-up: at most ``limit`` chosen entries this acceptor knows, at slots >= ``from_slot``."""

    from_slot: int
    limit: int

    def __post_init__(self) -> None:
        _check_slot("from_slot", self.from_slot, 1)
        _check_slot("limit", self.limit, 1)


# --- acceptor -> replica -------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Promise:
    """Phase 1b: ``ballot`` is promised from ``from_slot`` on; ``accepted`` is what the acceptor
    holds there (ascending, with chosen marks)."""

    ballot: Ballot
    from_slot: int
    accepted: tuple[AcceptedEntry, ...]

    def __post_init__(self) -> None:
        _check_ballot(self.ballot)
        _check_slot("from_slot", self.from_slot, 1)
        if not isinstance(self.accepted, tuple):
            raise TypeError("accepted must be a tuple")


@dataclass(frozen=True, slots=True)
class Accepted:
    """Phase 2b: the acceptor durably accepted slots ``first_slot..last_slot`` under ``ballot``
    and applied ``commit_upto``."""

    ballot: Ballot
    first_slot: int
    last_slot: int
    commit_upto: int

    def __post_init__(self) -> None:
        _check_ballot(self.ballot)
        _check_slot("first_slot", self.first_slot, 1)
        _check_slot("last_slot", self.last_slot, self.first_slot)
        _check_slot("commit_upto", self.commit_upto)


@dataclass(frozen=True, slots=True)
class Committed:
    """The acceptor applied ``Commit(ballot, commit_upto)``; ``lease`` is the read lease it
    granted (0: none, e.g. its promise is lower than ``ballot``), ``stamp`` the request's."""

    ballot: Ballot
    commit_upto: int
    lease: int = 0
    stamp: int = 0

    def __post_init__(self) -> None:
        _check_ballot(self.ballot)
        _check_slot("commit_upto", self.commit_upto)
        _check_slot("lease", self.lease)
        _check_slot("stamp", self.stamp)


@dataclass(frozen=True, slots=True)
class Nack:
    """A request under ``ballot`` was refused: the acceptor promised ``promised`` > ``ballot``."""

    ballot: Ballot
    promised: Ballot

    def __post_init__(self) -> None:
        _check_ballot(self.ballot)
        _check_ballot(self.promised)


@dataclass(frozen=True, slots=True)
class Leased:
    """A request under ``ballot`` would raise the promise ``holder`` while the read lease the
    acceptor granted ``holder`` runs: refused, nothing written. For the sender it is as if the
    acceptor had not answered (it is neither a promise nor a higher ballot)."""

    ballot: Ballot
    holder: Ballot

    def __post_init__(self) -> None:
        _check_ballot(self.ballot)
        _check_ballot(self.holder)
        if not self.holder < self.ballot:
            raise ValueError("a lease refuses only ballots above its holder's")


@dataclass(frozen=True, slots=True)
class Fetched:
    """Reply to ``Fetch``: chosen entries in ascending slot order (possibly with gaps)."""

    from_slot: int
    entries: tuple[ChosenEntry, ...]

    def __post_init__(self) -> None:
        _check_slot("from_slot", self.from_slot, 1)
        if not isinstance(self.entries, tuple):
            raise TypeError("entries must be a tuple")


# --- replica -> replica --------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Heartbeat:
    """Leader to followers: I lead under ``ballot``; slots <= ``commit_upto`` are chosen and
    marked at some acceptor (fetch them if you lack them)."""

    ballot: Ballot
    commit_upto: int

    def __post_init__(self) -> None:
        _check_ballot(self.ballot)
        _check_slot("commit_upto", self.commit_upto)


@dataclass(frozen=True, slots=True)
class Chosen:
    """Leader to followers: ``values`` are chosen in slots ``first_slot``, ``first_slot + 1``,
    ... (a majority accepted them under ``ballot``), maybe not yet marked at any acceptor: a
    follower may apply them, but learns a slot (for campaign and fetch) only once this message
    or a Heartbeat says it is marked: every slot <= ``marked_upto`` is."""

    ballot: Ballot
    first_slot: int
    values: tuple[Value, ...]
    marked_upto: int = 0

    def __post_init__(self) -> None:
        _check_ballot(self.ballot)
        _check_slot("first_slot", self.first_slot, 1)
        _check_slot("marked_upto", self.marked_upto)
        if not isinstance(self.values, tuple) or not self.values:
            raise ValueError("values must be a non-empty tuple")
        for v in self.values:
            if not isinstance(v, Value):
                raise TypeError(f"values must hold Value, got {v!r}")

    @property
    def last_slot(self) -> int:
        return self.first_slot + len(self.values) - 1


@dataclass(frozen=True, slots=True)
class Forward:
    """A follower hands a client's proposal to the leader it knows."""

    value: Value

    def __post_init__(self) -> None:
        if not isinstance(self.value, Value) or self.value.is_noop:
            raise ValueError("only a client value (not the no-op) can be forwarded")


AcceptorRequest = Union[Prepare, Accept, Commit, Fetch]
AcceptorReply = Union[Promise, Accepted, Committed, Nack, Leased, Fetched]
Message = Union[Prepare, Accept, Commit, Fetch, Promise, Accepted, Committed, Nack, Leased,
                Fetched, Heartbeat, Chosen, Forward]


@dataclass(frozen=True, slots=True)
class Envelope:
    """One message from ``src`` to ``dst``."""

    src: Addr
    dst: Addr
    msg: Message

    def __str__(self) -> str:
        return f"{self.src}->{self.dst} {self.msg}"
