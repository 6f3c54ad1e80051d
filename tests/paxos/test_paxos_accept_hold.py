"""A leader with ``hold_after``: after a chosen batch of that many values, with nothing in
flight, the next batch waits for ``release_accepts``, a tick, or a full batch."""

from __future__ import annotations

from leaders import elected

from replicate.paxos import Accept, Accepted, Config, Envelope, Replica, Value, acceptor_addr


def leader(hold_after: int = 3, max_batch: int = 8) -> Replica:
    return elected(Config(n=3, election_ticks=10, heartbeat_ticks=3, window=1,
                          max_batch=max_batch, hold_after=hold_after))


def accepts(r: Replica) -> list[Accept]:
    rd = r.ready()
    r.advance(rd)
    return list({env.msg for env in rd.messages if isinstance(env.msg, Accept)})


def propose(r: Replica, *names: str) -> None:
    for name in names:
        r.propose(Value(name, b"p"))


def choose(r: Replica, msg: Accept) -> None:
    for j in (0, 1):
        r.step(Envelope(acceptor_addr(j), r.addr,
                        Accepted(msg.ballot, msg.first_slot,
                                 msg.first_slot + len(msg.values) - 1, 0)))


def names(msg: Accept) -> list[str]:
    return [v.request_id for v in msg.values]


def busy_leader(hold_after: int = 3, max_batch: int = 8) -> Replica:
    """A leader that just had a batch of three values chosen and holds; 'd' and 'e' queued."""
    r = leader(hold_after, max_batch)
    propose(r, "a")
    (first,) = accepts(r)
    propose(r, "b", "c", "x")  # queued behind the batch in flight: the next batch holds three
    choose(r, first)
    (second,) = accepts(r)
    assert names(second) == ["b", "c", "x"]
    propose(r, "d", "e")
    choose(r, second)
    assert r.holds_accepts
    return r


def test_a_busy_leader_holds_its_next_batch_until_released() -> None:
    r = busy_leader()
    assert r.holds_accepts and accepts(r) == []  # d and e wait
    propose(r, "f")
    assert accepts(r) == []
    r.release_accepts()
    (msg,) = accepts(r)
    assert names(msg) == ["d", "e", "f"] and not r.holds_accepts


def test_a_tick_ends_the_hold() -> None:
    r = busy_leader()
    r.tick()
    (msg,) = accepts(r)
    assert names(msg) == ["d", "e"] and not r.holds_accepts


def test_a_full_batch_goes_at_once() -> None:
    r = busy_leader(max_batch=4)
    propose(r, "f")
    assert accepts(r) == []  # three queued
    propose(r, "g")          # four: a full batch
    (msg,) = accepts(r)
    assert names(msg) == ["d", "e", "f", "g"] and not r.holds_accepts


def test_small_batches_and_the_default_never_hold() -> None:
    for r in (leader(hold_after=4), leader(hold_after=0)):
        propose(r, "a")
        (first,) = accepts(r)
        propose(r, "b", "c", "x")
        choose(r, first)           # a batch of one: no hold
        (second,) = accepts(r)
        propose(r, "d")
        choose(r, second)          # three values: under 4, and 0 never holds
        assert not r.holds_accepts
        (msg,) = accepts(r)
        assert names(msg) == ["d"]
    assert Config(n=3).hold_after == 0
