"""replicate: keep chosen PostgreSQL tables identical on several servers.

Every write to a registered table is ordered through a Multi-Paxos log whose
acceptor state lives in the PostgreSQL servers themselves, and every server
applies that log in the same order, exactly once.

Packages, and the one way data flows through them:

- ``paxos``   pure Multi-Paxos core (no I/O, no clocks, no randomness of its own)
- ``gate``    SQL classification and deterministic rewriting
- ``cluster`` local PostgreSQL nodes for ``replicate up``, the demo and the tests
- ``config``  the cluster configuration file (``cluster.toml``)
- ``errors``  the one error hierarchy, each error with a SQLSTATE
- ``cli``     thin typer commands; rich rendering lives only there
"""

__version__ = "0.1.0"
