"""Ballots order totally and messages validate on construction."""

from __future__ import annotations

import pytest

from replicate.paxos import (
    NOOP, Accept, Accepted, Ballot, Fetch, Forward, Prepare, Value, acceptor_addr, replica_addr,
)


def test_ballots_order_by_round_then_proposer() -> None:
    ballots = [Ballot(2, 0), Ballot(1, 2), Ballot(1, 0), Ballot(0, 0), Ballot(2, 1)]
    assert sorted(ballots) == [Ballot(0, 0), Ballot(1, 0), Ballot(1, 2), Ballot(2, 0), Ballot(2, 1)]
    assert Ballot(1, 5) < Ballot(2, 0)
    assert Ballot(3, 1) == Ballot(3, 1) and Ballot(3, 1) != Ballot(3, 2)
    assert Ballot.ZERO <= Ballot(0, 0) < Ballot(1, 0)


def test_ballots_are_unique_per_proposer() -> None:
    # two proposers never produce equal ballots, whatever rounds they pick
    assert {Ballot(r, p) for r in range(5) for p in range(3)}.__len__() == 15


@pytest.mark.parametrize("args", [(-1, 0), (0, -1), (1.0, 0), ("1", 0)])
def test_bad_ballots_are_refused(args) -> None:
    with pytest.raises(ValueError):
        Ballot(*args)


def test_values_and_noop() -> None:
    assert NOOP.is_noop and not Value("r1", b"x").is_noop
    with pytest.raises(ValueError):
        Value("", b"payload without id")
    with pytest.raises(TypeError):
        Value("r1", "not bytes")  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        Forward(NOOP)


def test_messages_validate() -> None:
    b = Ballot(1, 0)
    with pytest.raises(ValueError):
        Prepare(b, 0)
    with pytest.raises(ValueError):
        Accept(b, 1, (), 0)
    with pytest.raises(TypeError):
        Accept(b, 1, (b"raw",), 0)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        Prepare((1, 0), 1)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        Accepted(b, 3, 2, 0)
    with pytest.raises(ValueError):
        Fetch(1, 0)
    assert Accept(b, 4, (NOOP, NOOP, NOOP), 0).last_slot == 6


def test_messages_are_frozen() -> None:
    p = Prepare(Ballot(1, 0), 1)
    with pytest.raises(AttributeError):
        p.from_slot = 2  # type: ignore[misc]
    assert str(acceptor_addr(2)) == "a2" and str(replica_addr(0)) == "r0"
