"""Scripted interaction tests for the classic Paxos scenarios, checked against golden
transcripts in ``tests/sim/testdata/*.txt``.

A mismatch fails with a unified diff. After an intended change of behaviour, regenerate the
transcripts with ``REPLICATE_UPDATE_TRANSCRIPTS=1 pytest tests/sim/test_sim_transcripts.py`` and
review the diff in git before committing it.
"""

from __future__ import annotations

import difflib
import os
from pathlib import Path

import pytest

from replicate.paxos import Accept, Commit, Config, Fetch, Heartbeat, Prepare, Role
from paxos_script import Script, both, kind, to

TESTDATA = Path(__file__).parent / "testdata"
UPDATE = os.environ.get("REPLICATE_UPDATE_TRANSCRIPTS") == "1"


def check_transcript(name: str, got: str) -> None:
    path = TESTDATA / f"{name}.txt"
    if UPDATE:
        path.write_text(got)
        return
    want = path.read_text() if path.exists() else ""
    if got != want:
        diff = "".join(difflib.unified_diff(want.splitlines(True), got.splitlines(True),
                                            f"{path} (golden)", "got"))
        pytest.fail(f"transcript {name} differs (REPLICATE_UPDATE_TRANSCRIPTS=1 regenerates):\n"
                    f"{diff}")


def test_dueling_proposers() -> None:
    """r0 wins phase 1 at a0 a1 and sends x; r1 then wins phase 1 at a1 a2 with a higher
    ballot and sends y. r0's accept lands only at a0 (a1 a2 nack it), r0 steps down, y is
    chosen, and r0 forwards its next proposal to r1."""
    s = Script()
    s.campaign(0)
    s.campaign(1)
    s.deliver(lambda e: str(e.src) == "r0" and str(e.dst) in ("a0", "a1"), "r0's prepare to a0 a1")
    s.deliver(to("r0"), "promises to r0")
    s.propose(0, "x")
    s.deliver(lambda e: str(e.src) == "r1" and str(e.dst) in ("a1", "a2"), "r1's prepare to a1 a2")
    s.deliver(to("r1"), "promises to r1")
    s.propose(1, "y")
    s.deliver(lambda e: str(e.src) == "r0" and str(e.dst).startswith("a"), "r0's accepts and prepare")
    s.deliver(to("r0"), "replies to r0")
    s.deliver(lambda e: str(e.src) == "r1" and str(e.dst).startswith("a"), "r1's messages to acceptors")
    s.deliver(to("r1"), "replies to r1")
    s.deliver(to("a0", "a1", "a2"), "r1's commit")
    s.deliver(to("r1"), "committed")
    s.propose(0, "z")
    s.acceptors()
    r0, r1, _ = s.replicas
    assert r0 is not None and r1 is not None
    assert r0.role is Role.FOLLOWER and r1.role is Role.LEADER
    assert s.applied[1] == 1 and s.storages[0].entry(1).value.request_id == "y"
    check_transcript("dueling_proposers", s.transcript())


def test_leader_crash_between_phase_1_and_phase_2() -> None:
    """r0 wins phase 1 and sends its accept, which reaches only a0, then crashes. r1's phase 1
    finds x at a0 and re-proposes it in slot 1: the half-done write survives."""
    s = Script()
    s.campaign(0)
    s.deliver(to("a0", "a1", "a2"))
    s.deliver(to("r0"))
    s.propose(0, "x")
    s.deliver(both(kind(Accept), to("a0")), "r0's accept reaches a0 only")
    s.crash(0)
    s.drop(lambda e: True, "everything else in flight")
    s.campaign(1)
    s.deliver(to("a0", "a2"), "r1's prepare to a0 a2")
    s.deliver(to("r1"), "promises")
    s.deliver(to("a0", "a1", "a2"), "accepts")
    s.deliver(to("r1"))
    s.deliver(to("a0", "a1", "a2"), "commit")
    s.deliver(to("r1"))
    s.acceptors()
    assert s.applied[1] == 1
    assert s.storages[2].entry(1).value.request_id == "x"
    check_transcript("leader_crash_between_phases", s.transcript())


def test_recovery_of_half_accepted_slots() -> None:
    """r0 proposes x, y, z in three batches. x is accepted by a0 a1 (chosen), y is lost, z
    reaches a0 only. r0 crashes. r1's phase 1 over a0 a2 re-proposes x and z in their slots
    and fills the hole at slot 2 with a no-op; a restarted r0 then catches up by fetching."""
    s = Script(config=Config(n=3, max_batch=1, election_ticks=1000, heartbeat_ticks=3))
    s.campaign(0)
    s.deliver(to("a0", "a1", "a2"))
    s.deliver(to("r0"))
    s.propose(0, "x")
    s.propose(0, "y")
    s.propose(0, "z")
    s.deliver(lambda e: isinstance(e.msg, Accept) and (
        (e.msg.first_slot == 1 and str(e.dst) in ("a0", "a1"))
        or (e.msg.first_slot == 3 and str(e.dst) == "a0")), "x to a0 a1, z to a0")
    s.crash(0)
    s.drop(lambda e: True, "everything else in flight")
    s.campaign(1)
    s.deliver(to("a0", "a2"), "r1's prepare to a0 a2")
    s.deliver(to("r1"), "promises")
    s.deliver(to("a0", "a1", "a2"), "accepts")
    s.deliver(to("r1"), "accepted: chosen, r1 applies them before any mark")
    s.acceptors()
    s.restart(0)
    s.drop(lambda e: True, "pushes and everything else in flight")
    s.tick(1, 3)
    s.deliver(kind(Commit), "the heartbeat's commit marks every acceptor")
    s.deliver(to("r1"), "r1 learns that the marks exist")
    s.drop(lambda e: True, "that heartbeat (it predates the marks)")
    s.tick(1, 3)
    s.deliver(both(kind(Heartbeat), to("r0")), "r1's next heartbeat reaches r0")
    s.drop(lambda e: True, "the rest")
    s.tick(0, 2)
    s.deliver(kind(Fetch), "r0 fetches")
    s.deliver(to("r0"))
    assert s.applied[0] == s.applied[1] == 3
    assert [s.storages[2].entry(i).value.request_id for i in (1, 2, 3)] == ["x", "", "z"]
    check_transcript("recovery_of_half_accepted_slots", s.transcript())
