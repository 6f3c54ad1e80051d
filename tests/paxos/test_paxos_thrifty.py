"""A thrifty leader: each Accept to a majority, the others at the heartbeat, probes and ranks."""

from __future__ import annotations

from leaders import elected

from replicate.paxos import (
    Accept, Accepted, Ballot, Commit, Config, Envelope, Replica, Value, acceptor_addr,
)
from replicate.paxos.proposer import LAZY_VALUES, PROBE_EVERY, Batch, Leadership

B1 = Ballot(1, 0)


def leader(thrifty: bool = True, n: int = 3) -> Replica:
    return elected(Config(n=n, election_ticks=10, heartbeat_ticks=3, window=64, max_batch=1,
                          thrifty=thrifty))


def sent(r: Replica) -> tuple[dict[int, list[Accept]], set[int]]:
    """What the replica sends now: its Accepts by acceptor, and who gets a Commit."""
    rd = r.ready()
    r.advance(rd)
    out: dict[int, list[Accept]] = {}
    commits = set()
    for env in rd.messages:
        if isinstance(env.msg, Accept):
            out.setdefault(env.dst.id, []).append(env.msg)
        elif isinstance(env.msg, Commit):
            commits.add(env.dst.id)
    return out, commits


def accepts(r: Replica) -> dict[int, list[Accept]]:
    return sent(r)[0]


def propose(r: Replica, name: str) -> dict[int, list[Accept]]:
    r.propose(Value(name, b"p"))
    return accepts(r)


def ack(r: Replica, acceptor: int, msg: Accept) -> None:
    last = msg.first_slot + len(msg.values) - 1
    r.step(Envelope(acceptor_addr(acceptor), r.addr, Accepted(msg.ballot, msg.first_slot, last, 0)))


def heartbeat(r: Replica) -> tuple[dict[int, list[Accept]], set[int]]:
    """Tick up to the heartbeat: its Accepts by acceptor, and who got a Commit."""
    for _ in range(3):
        r.tick()
    return sent(r)


def test_a_thrifty_leader_sends_to_a_majority_and_the_skipped_acceptor_gets_the_values_later():
    r = leader()
    first = propose(r, "v1")  # a leadership's first batch is a probe: every acceptor
    assert sorted(first) == [0, 1, 2]
    ack(r, 0, first[0][0])
    ack(r, 1, first[1][0])
    sent = [propose(r, f"v{i}") for i in range(2, 5)]
    assert [sorted(s) for s in sent] == [[0, 1]] * 3  # its own acceptor and the next one
    for s in sent:
        ack(r, 0, s[0][0])
        ack(r, 1, s[1][0])
    assert r.commit_index == 4
    lazy, commits = heartbeat(r)
    assert commits == {0, 1, 2}
    # the three batches acceptor 2 missed, consecutive: one Accept
    assert list(lazy) == [2]
    (msg,) = lazy[2]
    assert (msg.first_slot, [v.request_id for v in msg.values]) == (2, ["v2", "v3", "v4"])
    assert msg.ballot == r.ballot and msg.commit_upto == 4
    assert heartbeat(r)[0] == {}  # sent once


def test_every_probe_ranks_the_majority_that_answered_first():
    r = leader()
    probe = propose(r, "v1")
    ack(r, 0, probe[0][0])
    ack(r, 2, probe[2][0])  # acceptor 2 answers before acceptor 1
    assert r.commit_index == 1
    between = []
    for i in range(2, PROBE_EVERY + 1):
        s = propose(r, f"v{i}")
        between.append(sorted(s))
        ack(r, 0, s[0][0])
        ack(r, 2, s[2][0])
    assert between == [[0, 2]] * (PROBE_EVERY - 1)
    probe = propose(r, "probe")  # the next probe goes to every acceptor again
    assert sorted(probe) == [0, 1, 2]
    ack(r, 1, probe[1][0])  # now acceptor 1 is quicker than its own
    ack(r, 2, probe[2][0])
    assert sorted(propose(r, "after")) == [1, 2]


def test_a_silent_majority_member_is_passed_over_after_the_heartbeats_retransmit():
    r = leader()
    probe = propose(r, "v1")
    ack(r, 0, probe[0][0])
    ack(r, 1, probe[1][0])
    s = propose(r, "v2")
    assert sorted(s) == [0, 1]
    ack(r, 0, s[0][0])  # acceptor 1 went silent
    assert r.commit_index == 1
    resent, _ = heartbeat(r)
    assert sorted(resent) == [1, 2]
    (retransmit,) = resent[2]  # once: the retransmit, not also as a lazy Accept
    assert (retransmit.first_slot, len(retransmit.values)) == (2, 1)
    ack(r, 2, retransmit)
    assert r.commit_index == 2
    assert sorted(propose(r, "v3")) == [0, 2]


def test_without_thrifty_every_accept_goes_to_every_acceptor():
    r = leader(thrifty=False)
    for i in range(PROBE_EVERY + 2):
        s = propose(r, f"v{i}")
        assert sorted(s) == [0, 1, 2]
        ack(r, 0, s[0][0])
        ack(r, 1, s[1][0])
    assert heartbeat(r)[0] == {}


def test_five_acceptors_send_to_three():
    r = leader(n=5)
    probe = propose(r, "v1")
    for j in (0, 3, 4):
        ack(r, j, probe[j][0])
    s = propose(r, "v2")
    assert sorted(s) == [0, 3, 4]
    for j in (0, 3, 4):
        ack(r, j, s[j][0])
    lazy, _ = heartbeat(r)
    assert sorted(lazy) == [1, 2]
    assert all([m.first_slot for m in lazy[j]] == [2] for j in (1, 2))


def test_lazy_accepts_split_at_gaps_and_at_their_size_limit():
    lead = Leadership(B1, 3, 0, window=10**6, max_batch=1, thrifty=True, own=1)
    assert lead.rank == [1, 2, 0]

    def batch(first: int, n: int, chosen: bool = True) -> Batch:
        b = Batch(first, tuple(Value(f"r{first + i}", b"") for i in range(n)))
        b.chosen = chosen
        return b

    lead.lazy = {0: [batch(1, 2), batch(3, 1), batch(7, 1)],
                 2: [batch(1, LAZY_VALUES - 1), batch(LAZY_VALUES, 2)]}
    out = [(j, first, len(values)) for j, first, values in lead.take_lazy()]
    assert out == [(0, 1, 3), (0, 7, 1), (2, 1, LAZY_VALUES - 1), (2, LAZY_VALUES, 2)]
    assert lead.lazy == {} and lead.take_lazy() == []
    # not chosen yet (the retransmit sends it), or accepted already: left out, and a gap
    accepted = batch(4, 1)
    accepted.acks.add(0)
    lead.lazy = {0: [batch(1, 2), batch(3, 1, chosen=False), accepted, batch(5, 1)],
                 2: [batch(9, 1, chosen=False)]}
    out = [(j, first, len(values)) for j, first, values in lead.take_lazy()]
    assert out == [(0, 1, 2), (0, 5, 1)]
    assert lead.lazy == {}
