"""A leader with ``lazy_chosen``: the followers' Chosen held until a flush, a heartbeat, or a
value the follower forwarded; several batches in one message."""

from __future__ import annotations

from leaders import elected

from replicate.paxos import (
    Accept, Accepted, Chosen, Committed, Config, Envelope, Forward, Heartbeat, Replica, Value,
    acceptor_addr, replica_addr,
)
from replicate.paxos.proposer import LAZY_VALUES


def leader(lazy: bool = True) -> Replica:
    return elected(Config(n=3, election_ticks=10, heartbeat_ticks=3, window=10**6, max_batch=1,
                          lazy_chosen=lazy))


def sent(r: Replica) -> list[Envelope]:
    rd = r.ready()
    r.advance(rd)
    return list(rd.messages)


def chosen_to(envelopes: list[Envelope]) -> dict[int, list[Chosen]]:
    out: dict[int, list[Chosen]] = {}
    for env in envelopes:
        if isinstance(env.msg, Chosen):
            out.setdefault(env.dst.id, []).append(env.msg)
    return out


def choose(r: Replica, name: str, *, forwarded_by: int | None = None) -> list[Envelope]:
    """Propose ``name`` (or receive it forwarded), have acceptors 0 and 1 accept it; what the
    leader sends once it is chosen."""
    value = Value(name, b"p")
    if forwarded_by is None:
        r.propose(value)
    else:
        r.step(Envelope(replica_addr(forwarded_by), r.addr, Forward(value)))
    accepts = [env.msg for env in sent(r) if isinstance(env.msg, Accept)]
    (msg,) = {m for m in accepts}
    for j in (0, 1):
        r.step(Envelope(acceptor_addr(j), r.addr,
                        Accepted(msg.ballot, msg.first_slot, msg.first_slot, 0)))
    return sent(r)


def test_chosen_batches_wait_for_a_flush_and_go_together():
    r = leader()
    assert chosen_to(choose(r, "v1")) == {}
    assert chosen_to(choose(r, "v2")) == {}
    assert r.commit_index == 2 and r.holds_chosen
    r.flush_chosen()
    out = chosen_to(sent(r))
    assert sorted(out) == [1, 2]
    for msgs in out.values():
        (msg,) = msgs
        assert (msg.first_slot, [v.request_id for v in msg.values]) == (1, ["v1", "v2"])
        assert msg.marked_upto <= msg.last_slot and msg.ballot == r.ballot
    assert not r.holds_chosen
    r.flush_chosen()
    assert chosen_to(sent(r)) == {}


def test_a_follower_that_forwarded_a_value_hears_at_once_with_all_it_missed():
    r = leader()
    choose(r, "v1")
    out = chosen_to(choose(r, "f2", forwarded_by=2))
    # follower 2's client waits for f2: it gets everything held for it; follower 1 waits
    assert list(out) == [2]
    assert [v.request_id for v in out[2][0].values] == ["v1", "f2"]
    assert r.holds_chosen
    r.flush_chosen(1)
    out = chosen_to(sent(r))
    assert list(out) == [1] and [v.request_id for v in out[1][0].values] == ["v1", "f2"]
    assert not r.holds_chosen


def test_the_heartbeat_sends_held_values_before_its_marks():
    r = leader()
    choose(r, "v1")
    for _ in range(3):
        r.tick()
    envelopes = sent(r)
    for follower in (1, 2):
        kinds = [type(env.msg) for env in envelopes if env.dst == replica_addr(follower)]
        assert kinds == [Chosen, Heartbeat]
    assert not r.holds_chosen


def test_a_long_hold_is_split_at_the_message_size_limit():
    r = leader()
    for i in range(LAZY_VALUES + 3):
        choose(r, f"v{i}")
    # an acceptor marked every slot: the leader knows them all marked
    r.step(Envelope(acceptor_addr(0), r.addr, Committed(r.ballot, LAZY_VALUES + 3)))
    sent(r)
    assert r.learner.known_upto() == LAZY_VALUES + 3
    r.flush_chosen(1)
    msgs = chosen_to(sent(r))[1]
    assert [(m.first_slot, len(m.values)) for m in msgs] == [(1, LAZY_VALUES),
                                                             (LAZY_VALUES + 1, 3)]
    # a mark beyond a message's slots rides on the next message, not on this one
    assert [m.marked_upto for m in msgs] == [LAZY_VALUES, LAZY_VALUES + 3]


def test_without_lazy_chosen_every_batch_goes_to_the_followers_at_once():
    r = leader(lazy=False)
    out = chosen_to(choose(r, "v1"))
    assert sorted(out) == [1, 2] and not r.holds_chosen
