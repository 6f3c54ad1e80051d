"""The replica's duties: persist before send, ballots that never repeat, step-down, forwarding."""

from __future__ import annotations

import random

from replicate.paxos import (
    Accept, Accepted, Ballot, Chosen, ChosenEntry, Commit, Committed, Config, Envelope, Fetch,
    Fetched, HardState,
    Heartbeat, Nack, Prepare, ProposeOutcome, Promise, Replica, Role, Value, acceptor_addr,
    replica_addr,
)

CFG = Config(n=3, election_ticks=10, heartbeat_ticks=3)


def make(i: int = 0, **kw) -> Replica:
    return Replica(i, CFG, random.Random(7), **kw)


def take(r: Replica):
    rd = r.ready()
    r.advance(rd)
    return rd


def elect(r: Replica) -> None:
    r.campaign()
    take(r)
    for j in range(2):
        r.step(Envelope(acceptor_addr(j), r.addr, Promise(r.ballot, 1, ())))
    take(r)
    assert r.role is Role.LEADER


def test_campaign_persists_the_round_in_the_same_ready_as_the_prepares() -> None:
    r = make(hard_state=HardState(4))
    r.campaign()
    rd = take(r)
    assert rd.hard_state == HardState(5)
    assert [e.msg for e in rd.messages] == [Prepare(Ballot(5, 0), 1)] * 3
    assert r.ready().empty


def test_a_restarted_replica_never_reuses_a_ballot() -> None:
    r = make()
    r.campaign()
    used = take(r).hard_state
    again = make(hard_state=used)
    again.campaign()
    assert again.ballot > r.ballot


def test_election_timeout_is_randomized_and_counted_in_ticks() -> None:
    timeouts = set()
    for seed in range(20):
        r = Replica(1, CFG, random.Random(seed))
        ticks = 0
        while r.role is Role.FOLLOWER:
            r.tick()
            ticks += 1
        timeouts.add(ticks)
    assert min(timeouts) >= 10 and max(timeouts) < 20 and len(timeouts) > 3


def test_heartbeats_keep_a_follower_from_campaigning() -> None:
    r = make(1)
    for _ in range(100):
        r.tick()
        r.step(Envelope(replica_addr(0), r.addr, Heartbeat(Ballot(1, 0), 0)))
    assert r.role is Role.FOLLOWER and r.leader == 0


def test_leader_batches_and_steps_down_on_a_nack() -> None:
    r = make()
    elect(r)
    for i in range(3):
        assert r.propose(Value(f"q{i}", b"")) is ProposeOutcome.PROPOSED
    accepts = [e.msg for e in take(r).messages if isinstance(e.msg, Accept)]
    assert accepts and accepts[0].first_slot == 1
    r.step(Envelope(acceptor_addr(1), r.addr, Nack(r.ballot, Ballot(9, 2))))
    assert r.role is Role.FOLLOWER
    r.campaign()
    assert r.ballot == Ballot(10, 0)  # above the ballot the nack revealed


def test_without_early_apply_the_leader_delivers_after_majority_and_mark() -> None:
    r = Replica(0, Config(n=3, election_ticks=10, heartbeat_ticks=3, early_apply=0),
                random.Random(7))
    elect(r)
    r.propose(Value("q", b"p"))
    take(r)
    r.step(Envelope(acceptor_addr(0), r.addr, Accepted(r.ballot, 1, 1, 0)))
    r.step(Envelope(acceptor_addr(1), r.addr, Accepted(r.ballot, 1, 1, 0)))
    rd = take(r)
    assert rd.chosen == ()  # chosen, but not yet marked at any acceptor
    assert not any(type(e.msg) is Commit for e in rd.messages)  # the index waits for a carrier
    for _ in range(CFG.heartbeat_ticks):
        r.tick()
    commits = [e for e in take(r).messages if type(e.msg) is Commit]
    assert sorted(e.dst.id for e in commits) == [0, 1, 2] and commits[0].msg.commit_upto == 1
    r.step(Envelope(acceptor_addr(0), r.addr, Committed(r.ballot, 1)))
    assert [c.slot for c in take(r).chosen] == [1]


def test_the_leader_delivers_at_majority_and_learns_at_mark() -> None:
    r = make()
    elect(r)
    r.propose(Value("q", b"p"))
    take(r)
    r.step(Envelope(acceptor_addr(0), r.addr, Accepted(r.ballot, 1, 1, 0)))
    assert take(r).chosen == ()  # one acceptor is not a majority
    r.step(Envelope(acceptor_addr(1), r.addr, Accepted(r.ballot, 1, 1, 0)))
    assert [c.slot for c in take(r).chosen] == [1]  # applied at once ...
    assert r.delivered_upto == 1 and r.learner.delivered_upto == 0  # ... not learned yet
    r.step(Envelope(acceptor_addr(0), r.addr, Committed(r.ballot, 1)))
    assert take(r).chosen == ()  # the mark is learned; slot 1 is not handed out twice
    assert r.learner.delivered_upto == 1


def test_a_leader_that_loses_office_before_the_mark_recovers_the_slot_again() -> None:
    r = make()
    elect(r)
    r.propose(Value("q", b"p"))
    take(r)
    for j in range(2):
        r.step(Envelope(acceptor_addr(j), r.addr, Accepted(r.ballot, 1, 1, 0)))
    assert [c.slot for c in take(r).chosen] == [1]
    r.campaign()  # e.g. its election timed out: no acceptor has marked slot 1
    prepares = [e.msg for e in take(r).messages if type(e.msg) is Prepare]
    assert prepares and all(p.from_slot == 1 for p in prepares)  # slot 1 is re-proposed


def test_early_apply_stays_within_its_window_of_the_marked_prefix() -> None:
    cfg = Config(n=3, election_ticks=10, heartbeat_ticks=3, early_apply=2, max_batch=1,
                 window=8)
    r = Replica(0, cfg, random.Random(7))
    elect(r)
    for i in range(4):
        r.propose(Value(f"q{i}", b"p"))
    take(r)
    for slot in range(1, 5):
        for j in range(2):
            r.step(Envelope(acceptor_addr(j), r.addr, Accepted(r.ballot, slot, slot, 0)))
    assert [c.slot for c in take(r).chosen] == [1, 2]  # two ahead of the marked prefix
    r.step(Envelope(acceptor_addr(0), r.addr, Committed(r.ballot, 2)))
    assert [c.slot for c in take(r).chosen] == [3, 4]


def test_a_restarted_replica_relearns_its_last_early_applied_slots() -> None:
    r = make(delivered_upto=1000)
    assert r.delivered_upto == 1000  # never handed out again ...
    assert r.learner.delivered_upto == 1000 - CFG.early_apply  # ... but maybe never marked
    r.campaign()
    assert {e.msg.from_slot for e in take(r).messages if type(e.msg) is Prepare} == {
        1000 - CFG.early_apply + 1}


def test_follower_forwards_or_drops() -> None:
    r = make(2)
    assert r.commit_index is None and r.recovered_upto is None
    assert r.propose(Value("q", b"")) is ProposeOutcome.DROPPED
    r.step(Envelope(replica_addr(1), r.addr, Heartbeat(Ballot(1, 1), 0)))
    assert r.propose(Value("q", b"")) is ProposeOutcome.FORWARDED
    assert take(r).messages[-1].dst == replica_addr(1)


def test_a_leader_no_majority_answers_steps_down() -> None:
    r = make()
    elect(r)
    ticks = 0
    while r.role is Role.LEADER and ticks < 100:
        r.tick()
        ticks += 1
        # only a0 answers the commits
        r.step(Envelope(acceptor_addr(0), r.addr, Committed(r.ballot, 0)))
    # the promises count for the first window of 2 election timeouts, then one is not enough
    assert ticks == 4 * CFG.election_ticks
    assert r.role is Role.FOLLOWER and r.leader is None


def test_a_leader_a_majority_answers_stays() -> None:
    r = make()
    elect(r)
    for _ in range(10 * CFG.election_ticks):
        r.tick()
        for j in (0, 2):
            r.step(Envelope(acceptor_addr(j), r.addr, Committed(r.ballot, 0)))
    assert r.role is Role.LEADER


def test_recovered_upto_marks_the_end_of_phase_1_recovery() -> None:
    from replicate.paxos import AcceptedEntry
    r = make()
    r.campaign()
    take(r)
    old = Ballot(0, 1)
    r.step(Envelope(acceptor_addr(0), r.addr,
                    Promise(r.ballot, 1, (AcceptedEntry(3, old, Value("q", b"")),))))
    r.step(Envelope(acceptor_addr(1), r.addr, Promise(r.ballot, 1, ())))
    assert r.role is Role.LEADER and r.recovered_upto == 3 and r.commit_index == 0
    accepts = [e.msg for e in take(r).messages if isinstance(e.msg, Accept)]
    assert [v.request_id for v in accepts[0].values] == ["", "", "q"]  # holes become no-ops


def test_a_candidate_nobody_answers_retries_the_same_ballot() -> None:
    r = make()
    r.campaign()
    first = take(r)
    assert first.hard_state == HardState(1)
    for _ in range(20):
        r.tick()
    again = take(r)
    assert again.hard_state is None  # no new round: the same prepare again
    assert [e.msg for e in again.messages] == [Prepare(Ballot(1, 0), 1)] * 3


def test_a_candidate_a_majority_refused_takes_a_higher_ballot() -> None:
    r = make()
    r.campaign()
    take(r)
    for j in (0, 1):
        r.step(Envelope(acceptor_addr(j), r.addr, Nack(r.ballot, Ballot(1, 2))))
    r.campaign()
    assert r.ballot == Ballot(2, 0)


def test_a_cut_off_candidate_yields_to_a_live_leader_with_a_lower_ballot() -> None:
    r = make(2)
    r.campaign()
    take(r)
    for _ in range(20):  # first attempt times out unanswered
        r.tick()
    assert r.role is Role.CANDIDATE
    r.step(Envelope(replica_addr(0), r.addr, Heartbeat(Ballot(1, 0), 0)))
    assert r.role is Role.FOLLOWER and r.leader == 0


def test_a_fresh_candidate_ignores_a_leader_with_a_lower_ballot() -> None:
    r = make(2)
    r.campaign()
    r.step(Envelope(replica_addr(0), r.addr, Heartbeat(Ballot(0, 0), 0)))
    assert r.role is Role.CANDIDATE


def test_a_follower_applies_pushed_values_and_learns_them_once_marked() -> None:
    r = make(2)
    leader = Ballot(1, 0)
    r.step(Envelope(replica_addr(0), r.addr, Chosen(leader, 1, (Value("a", b"1"),
                                                               Value("b", b"2")))))
    rd = take(r)
    assert [(c.slot, c.value.request_id) for c in rd.chosen] == [(1, "a"), (2, "b")]
    assert r.leader == 0 and r.learner.delivered_upto == 0  # applied, not learned
    r.step(Envelope(replica_addr(0), r.addr, Heartbeat(leader, 2)))  # both are marked now
    rd = take(r)
    assert rd.chosen == () and not any(type(e.msg) is Fetch for e in rd.messages)
    assert r.learner.delivered_upto == 2
    r.step(Envelope(replica_addr(0), r.addr, Heartbeat(leader, 3)))  # slot 3 never pushed
    assert [e.msg for e in take(r).messages if type(e.msg) is Fetch] == [Fetch(3, CFG.fetch_limit)]
    # a push also carries the marks the leader knows of
    r.step(Envelope(replica_addr(0), r.addr, Chosen(leader, 4, (Value("d", b"4"),), 4)))
    assert take(r).chosen == ()  # slot 3 is still missing: nothing past it is applied
    r.step(Envelope(acceptor_addr(1), r.addr, Fetched(3, (ChosenEntry(3, Value("c", b"3")),))))
    assert [c.slot for c in take(r).chosen] == [3, 4] and r.learner.delivered_upto == 4


def test_a_follower_that_campaigns_recovers_what_it_applied_unmarked() -> None:
    r = make(2)
    r.step(Envelope(replica_addr(0), r.addr, Chosen(Ballot(1, 0), 1, (Value("a", b"1"),))))
    assert [c.slot for c in take(r).chosen] == [1]
    r.campaign()
    assert {e.msg.from_slot for e in take(r).messages if type(e.msg) is Prepare} == {1}


def test_a_lagging_follower_fetches_again_as_soon_as_a_reply_teaches_it_something() -> None:
    # catching up at one Fetch per round trip, not fetch_limit slots per fetch period: a node
    # that came back 43,000 slots behind took 105 s at one Fetch of 64 per 100 ms
    r = make(2)
    leader = Ballot(1, 0)
    r.step(Envelope(replica_addr(0), r.addr, Heartbeat(leader, 200)))  # 200 slots behind
    fetches = [e for e in take(r).messages if type(e.msg) is Fetch]
    assert [f.msg for f in fetches] == [Fetch(1, CFG.fetch_limit)]
    src = fetches[0].dst.id
    first = tuple(ChosenEntry(s, Value(f"v{s}", b"x")) for s in range(1, CFG.fetch_limit + 1))
    r.step(Envelope(acceptor_addr(src), r.addr, Fetched(1, first)))
    again = [e for e in take(r).messages if type(e.msg) is Fetch]
    assert [(e.dst.id, e.msg) for e in again] == [(src, Fetch(CFG.fetch_limit + 1,
                                                              CFG.fetch_limit))]
    # the same reply again (a fetch a tick started) teaches nothing: no second chain of fetches
    r.step(Envelope(acceptor_addr(src), r.addr, Fetched(1, first)))
    assert not [e for e in take(r).messages if type(e.msg) is Fetch]
    # nor does a reply from an acceptor that lacks the slots
    r.step(Envelope(acceptor_addr(1), r.addr, Fetched(CFG.fetch_limit + 1, ())))
    assert not [e for e in take(r).messages if type(e.msg) is Fetch]
    # caught up: no more fetches
    rest = tuple(ChosenEntry(s, Value(f"v{s}", b"x")) for s in range(CFG.fetch_limit + 1, 201))
    r.step(Envelope(acceptor_addr(src), r.addr, Fetched(CFG.fetch_limit + 1, rest)))
    assert not [e for e in take(r).messages if type(e.msg) is Fetch]
    assert r.learner.delivered_upto == 200
