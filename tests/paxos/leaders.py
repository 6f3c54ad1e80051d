"""A replica elected leader by a majority's promises, for the tests of what a leader sends."""

from __future__ import annotations

import random

from replicate.paxos import Config, Envelope, Promise, Replica, Role, acceptor_addr


def elected(config: Config) -> Replica:
    """Replica 0 under ``config``, after the promises of acceptors 0 .. n // 2 (nothing
    accepted anywhere): the leader of a fresh log."""
    r = Replica(0, config, random.Random(7))
    r.campaign()
    r.advance(r.ready())
    for j in range(config.n // 2 + 1):
        r.step(Envelope(acceptor_addr(j), r.addr, Promise(r.ballot, 1, ())))
    r.advance(r.ready())
    assert r.role is Role.LEADER
    return r
