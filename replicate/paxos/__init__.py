"""Pure Multi-Paxos core (placeholder docstring, replaced below)."""

from replicate.paxos.acceptor import (
    Acceptor, AcceptorState, AcceptorStorage, AcceptorWrite, InMemoryAcceptorStorage,
)
from replicate.paxos.ballot import Ballot
from replicate.paxos.learner import Learner
from replicate.paxos.messages import (
    NOOP, Accept, Accepted, AcceptedEntry, Addr, ChosenEntry, Commit, Committed, Envelope, Fetch,
    Fetched, Forward, Heartbeat, Message, Nack, Prepare, Promise, Value, acceptor_addr, replica_addr,
)
from replicate.paxos.proposer import Batch, Leadership, recover
from replicate.paxos.replica import (
    Config, HardState, ProposeOutcome, Ready, Replica, Role,
)

__all__ = [
    "Accept", "Accepted", "AcceptedEntry", "Acceptor", "AcceptorState", "AcceptorStorage",
    "AcceptorWrite", "Addr", "Ballot", "Batch", "ChosenEntry", "Commit", "Committed", "Config",
    "Envelope", "Fetch", "Fetched", "Forward", "HardState", "Heartbeat", "InMemoryAcceptorStorage",
    "Leadership", "Learner", "Message", "NOOP", "Nack", "Prepare", "Promise", "ProposeOutcome",
    "Ready", "Replica", "Role", "Value", "acceptor_addr", "recover", "replica_addr",
]
