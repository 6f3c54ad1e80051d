"""A hand-driven cluster for scripted interaction tests with golden transcripts (etcd rafttest
style). Nothing happens unless the script says so: messages wait in flight until delivered or
dropped, and every step is written to a readable transcript.
"""

from __future__ import annotations

import random
from typing import Callable

from replicate.paxos import (
    Accept, Accepted, Acceptor, Chosen, Commit, Committed, Config, Envelope, Fetch, Fetched,
    Forward,
    HardState, Heartbeat, InMemoryAcceptorStorage, Nack, Prepare, Promise, Replica, Value,
)


def fmt_value(v: Value) -> str:
    return "noop" if v.is_noop else v.request_id


def fmt(msg: object) -> str:
    """One message, short and readable."""
    if isinstance(msg, Prepare):
        return f"prepare b={msg.ballot} from={msg.from_slot}"
    if isinstance(msg, Promise):
        acc = " ".join(f"{e.slot}:{e.ballot}:{fmt_value(e.value)}{'*' if e.chosen else ''}"
                       for e in msg.accepted)
        return f"promise b={msg.ballot} from={msg.from_slot} accepted=[{acc}]"
    if isinstance(msg, Accept):
        vals = " ".join(fmt_value(v) for v in msg.values)
        return (f"accept b={msg.ballot} slots={msg.first_slot}..{msg.last_slot} [{vals}] "
                f"commit={msg.commit_upto}")
    if isinstance(msg, Accepted):
        return (f"accepted b={msg.ballot} slots={msg.first_slot}..{msg.last_slot} "
                f"commit={msg.commit_upto}")
    if isinstance(msg, Commit):
        return f"commit b={msg.ballot} upto={msg.commit_upto}"
    if isinstance(msg, Committed):
        return f"committed b={msg.ballot} upto={msg.commit_upto}"
    if isinstance(msg, Nack):
        return f"nack b={msg.ballot} promised={msg.promised}"
    if isinstance(msg, Fetch):
        return f"fetch from={msg.from_slot} limit={msg.limit}"
    if isinstance(msg, Fetched):
        entries = " ".join(f"{e.slot}:{fmt_value(e.value)}" for e in msg.entries)
        return f"fetched from={msg.from_slot} [{entries}]"
    if isinstance(msg, Heartbeat):
        return f"heartbeat b={msg.ballot} commit={msg.commit_upto}"
    if isinstance(msg, Chosen):
        vals = " ".join(fmt_value(v) for v in msg.values)
        return (f"chosen b={msg.ballot} slots={msg.first_slot}..{msg.last_slot} [{vals}] "
                f"marked={msg.marked_upto}")
    if isinstance(msg, Forward):
        return f"forward {fmt_value(msg.value)}"
    raise TypeError(msg)


Match = Callable[[Envelope], bool]


def to(*names: str) -> Match:
    """Match messages addressed to any of ``names`` ("a0", "r1", ...)."""
    return lambda env: str(env.dst) in names


def between(src: str, dst: str) -> Match:
    return lambda env: str(env.src) == src and str(env.dst) == dst


def kind(cls: type) -> Match:
    return lambda env: isinstance(env.msg, cls)


def both(*matches: Match) -> Match:
    return lambda env: all(m(env) for m in matches)


class Script:
    def __init__(self, n: int = 3, config: Config | None = None) -> None:
        self.n = n
        self.config = config or Config(n=n, election_ticks=1000, heartbeat_ticks=3)
        self.rules = Acceptor()
        self.storages = [InMemoryAcceptorStorage() for _ in range(n)]
        self.hard = [HardState() for _ in range(n)]
        self.applied = [0] * n
        self.replicas: list[Replica | None] = [self._replica(i) for i in range(n)]
        self.flight: list[Envelope] = []
        self.lines: list[str] = []
        self.chosen: dict[int, list[str]] = {i: [] for i in range(n)}

    def _replica(self, i: int) -> Replica:
        return Replica(i, self.config, random.Random(i), hard_state=self.hard[i],
                       delivered_upto=self.applied[i])

    def say(self, text: str) -> None:
        self.lines.append(text)

    def transcript(self) -> str:
        return "\n".join(self.lines) + "\n"

    def _drain(self, i: int) -> None:
        rep = self.replicas[i]
        assert rep is not None
        rd = rep.ready()
        if rd.hard_state is not None:
            self.hard[i] = rd.hard_state
            self.say(f"  r{i} persists round={rd.hard_state.round}")
        for env in rd.messages:
            self.flight.append(env)
            self.say(f"  r{i} sends {env.dst}: {fmt(env.msg)}")
        for e in rd.chosen:
            self.applied[i] = e.slot
            self.say(f"  r{i} applies slot {e.slot}: {fmt_value(e.value)}")
        rep.advance(rd)

    # -- commands
    def campaign(self, i: int) -> None:
        self.say(f"> campaign r{i}")
        rep = self.replicas[i]
        assert rep is not None
        rep.campaign()
        self._drain(i)

    def propose(self, i: int, request_id: str) -> None:
        rep = self.replicas[i]
        assert rep is not None
        out = rep.propose(Value(request_id, request_id.encode()))
        self.say(f"> propose r{i} {request_id}: {out.value}")
        self._drain(i)

    def tick(self, i: int, ticks: int = 1) -> None:
        self.say(f"> tick r{i} x{ticks}")
        rep = self.replicas[i]
        assert rep is not None
        for _ in range(ticks):
            rep.tick()
            self._drain(i)

    def deliver(self, match: Match = lambda env: True, note: str = "") -> None:
        """Deliver every in-flight message that matches (in send order), replies join the flight."""
        self.say(f"> deliver {note}".rstrip())
        todo = [e for e in self.flight if match(e)]
        self.flight = [e for e in self.flight if not match(e)]
        for env in todo:
            dst = env.dst
            if dst.role == "acceptor":
                req = env.msg
                write, reply = self.rules.handle(self.storages[dst.id], req)  # type: ignore[arg-type]
                self.storages[dst.id].apply(write)
                self.say(f"  {dst} <- {env.src}: {fmt(env.msg)}  => {fmt(reply)}")
                self.flight.append(Envelope(dst, env.src, reply))
            else:
                rep = self.replicas[dst.id]
                if rep is None:
                    self.say(f"  {dst} is down, lost: {fmt(env.msg)}")
                    continue
                role = rep.role
                self.say(f"  {dst} <- {env.src}: {fmt(env.msg)}")
                rep.step(env)
                if rep.role is not role:
                    self.say(f"  r{dst.id} is now {rep.role.value}")
                self._drain(dst.id)

    def drop(self, match: Match, note: str = "") -> None:
        self.say(f"> drop {note}".rstrip())
        for env in [e for e in self.flight if match(e)]:
            self.say(f"  lost {env.src}->{env.dst}: {fmt(env.msg)}")
        self.flight = [e for e in self.flight if not match(e)]

    def crash(self, i: int) -> None:
        self.say(f"> crash r{i} (keeps round={self.hard[i].round}, applied={self.applied[i]})")
        self.replicas[i] = None

    def restart(self, i: int) -> None:
        self.say(f"> restart r{i}")
        self.replicas[i] = self._replica(i)

    def acceptors(self) -> None:
        """Write every acceptor's state into the transcript."""
        self.say("> acceptors")
        for j, st in enumerate(self.storages):
            slots = " ".join(f"{s}:{e.ballot}:{fmt_value(e.value)}{'*' if e.chosen else ''}"
                             for s, e in sorted(st.entries().items()))
            self.say(f"  a{j} promised={st.promised()} [{slots}]")
