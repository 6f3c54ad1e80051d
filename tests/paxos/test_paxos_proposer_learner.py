"""Phase-1 recovery, the batching window and commit index, and the learner's ordering."""

from __future__ import annotations

import pytest

from replicate.paxos import (
    NOOP, AcceptedEntry, Ballot, ChosenEntry, Leadership, Learner, Promise, Value, recover,
)

B1, B2, B3 = Ballot(1, 0), Ballot(1, 1), Ballot(2, 0)


def v(i: int) -> Value:
    return Value(f"q{i}", b"p")


def test_recover_takes_the_highest_ballot_per_slot_and_fills_holes() -> None:
    p1 = Promise(B3, 2, (AcceptedEntry(2, B1, v(1)), AcceptedEntry(5, B1, v(5))))
    p2 = Promise(B3, 2, (AcceptedEntry(2, B2, v(2)), AcceptedEntry(3, B1, v(3))))
    assert recover([p1, p2], 2) == [v(2), v(3), NOOP, v(5)]
    assert recover([Promise(B3, 1, ())], 1) == []


def test_window_bounds_batches_in_flight() -> None:
    lead = Leadership(B1, 3, 0, window=2, max_batch=3)
    for i in range(10):
        lead.enqueue(v(i))
    batches = lead.next_batches()
    assert [(b.first_slot, b.last_slot) for b in batches] == [(1, 3), (4, 6)]
    assert lead.in_flight() == 2 and lead.next_batches() == []
    lead.on_accepted(0, 1, 3, 0)
    assert lead.in_flight() == 2 and lead.commit_upto == 0   # one ack is not a majority
    lead.on_accepted(1, 1, 3, 0)
    assert lead.in_flight() == 1 and lead.commit_upto == 3
    assert [(b.first_slot, b.last_slot) for b in lead.next_batches()] == [(7, 9)]


def test_commit_index_needs_a_contiguous_chosen_prefix() -> None:
    lead = Leadership(B1, 3, 0, window=4, max_batch=1)
    for i in range(3):
        lead.enqueue(v(i))
    lead.next_batches()
    for j in (0, 1):
        lead.on_accepted(j, 2, 2, 0)
    assert lead.commit_upto == 0  # slot 1 not chosen yet
    for j in (0, 2):
        lead.on_accepted(j, 1, 1, 0)
    assert lead.commit_upto == 2


def test_marked_batches_only_after_an_acceptor_that_accepted_confirms() -> None:
    lead = Leadership(B1, 3, 0, window=4, max_batch=2)
    lead.enqueue(v(1))
    lead.next_batches()
    lead.on_accepted(0, 1, 1, 0)
    lead.on_accepted(1, 1, 1, 0)
    assert lead.take_marked() == []          # chosen, but no acceptor marked it yet
    lead.on_committed(2, 1)                  # a2 never accepted it: its mark means nothing
    assert lead.take_marked() == []
    lead.on_committed(1, 1)
    assert [b.first_slot for b in lead.take_marked()] == [1]


def test_duplicate_request_ids_are_queued_once_per_leadership() -> None:
    lead = Leadership(B1, 3, 0, window=4, max_batch=8)
    assert lead.enqueue(v(1)) and not lead.enqueue(v(1))
    assert lead.enqueue(v(1), force=True)  # recovery keeps every slot's value
    assert lead.enqueue(NOOP) and lead.enqueue(NOOP)


def test_a_leadership_remembers_only_the_newest_request_ids() -> None:
    lead = Leadership(B1, 3, 0, window=4, max_batch=8, remembered_ids=3)
    for i in range(1, 6):
        assert lead.enqueue(v(i))
    assert not lead.enqueue(v(5)) and not lead.enqueue(v(3))   # the newest three are refused
    assert lead.enqueue(v(1))         # forgotten: queued again (the applier applies it once)
    assert not lead.enqueue(v(1))
    assert not lead.enqueue(v(4)) and lead.enqueue(v(3))       # 1 pushed 3 out
    assert len(lead._ids) == len(lead._id_order) == 3


def test_leadership_parameters_are_checked() -> None:
    with pytest.raises(ValueError):
        Leadership(B1, 3, 0, window=0, max_batch=1)


def test_learner_delivers_in_order_without_gaps_each_once() -> None:
    ln = Learner(delivered_upto=2)
    ln.learn(4, v(4))
    ln.learn(2, v(2))               # already delivered: ignored
    assert ln.take() == [] and ln.known_upto() == 2 and ln.lagging()
    ln.learn(3, v(3))
    ln.learn(3, v(33))              # first learned value wins; a conflict is the sim's to catch
    assert ln.take() == [ChosenEntry(3, v(3)), ChosenEntry(4, v(4))]
    assert ln.take() == [] and ln.delivered_upto == 4 and not ln.lagging()
    ln.hint(6)
    assert ln.lagging()
