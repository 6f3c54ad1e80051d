"""SharedRounds: a round covers exactly the reads that arrived before it began."""

import pytest

from replicate.runtime.readrounds import SharedRounds


def test_first_read_starts_a_round_later_ones_wait() -> None:
    rounds: SharedRounds[str] = SharedRounds()
    assert rounds.arrive("a") is True        # nothing in flight: start the loop
    assert rounds.arrive("b") is False       # the loop is about to begin its round
    assert rounds.begin() == ["a", "b"]
    assert rounds.arrive("c") is False       # in flight: c waits for the next round
    assert rounds.waiting == ["c"]
    assert rounds.end() == ["a", "b"]        # the first round answers a and b only
    assert rounds.begin() == ["c"]
    assert rounds.end() == ["c"]
    assert rounds.arrive("d") is False       # the loop is still running: it takes d next
    assert rounds.begin() == ["d"]
    rounds.end()
    assert rounds.begin() is None            # nothing waits: the loop ends
    assert rounds.waiting == [] and rounds.in_flight is None and rounds.rounds == 3
    assert rounds.arrive("e") is True        # so the next read starts a new loop


def test_one_round_at_a_time() -> None:
    rounds: SharedRounds[int] = SharedRounds()
    rounds.arrive(1)
    rounds.begin()
    rounds.arrive(2)
    with pytest.raises(RuntimeError):
        rounds.begin()
    rounds.end()
    with pytest.raises(RuntimeError):
        rounds.end()


def test_clear_returns_every_read() -> None:
    rounds: SharedRounds[int] = SharedRounds()
    rounds.arrive(1)
    rounds.begin()
    rounds.arrive(2)
    assert rounds.clear() == [1, 2]
    assert rounds.arrive(3) is True
