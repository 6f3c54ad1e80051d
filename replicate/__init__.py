"""replicate: keep chosen PostgreSQL tables identical on several servers.

Every write to a registered table is ordered through a Multi-Paxos log whose
acceptor state lives in the PostgreSQL servers themselves, and every server
applies that log in the same order, exactly once.

Packages and modules, and the one way data flows through them::

    client -> runtime.relay (pgwire codec) -> runtime.intercept -> gate -> runtime.engine
           -> paxos (pure core) -> runtime.links / sql acceptor -> runtime.applier -> node

- ``paxos``    pure Multi-Paxos core (no I/O, no clocks, no randomness of its own)
- ``pgwire``   pure codec for the PostgreSQL wire protocol
- ``gate``     SQL classification and deterministic rewriting
- ``command``  the log entry schema (what a slot asks every node to do) and outcomes
- ``runtime``  the only I/O: engine, acceptor links, applier, proxy server, relay
- ``cluster``  local PostgreSQL nodes and proxies for ``replicate up``, the demo and tests
- ``admin``    operator actions: table add/remove/list, status, log
- ``check``    consistency checks through the log
- ``demo``     ``replicate demo``
- ``config``   the cluster configuration file (``cluster.toml``)
- ``errors``   the one error hierarchy, each error with a SQLSTATE
- ``cli``      thin typer commands; rich rendering lives only there
"""

__version__ = "0.1.0"
