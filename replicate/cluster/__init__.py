"""Local PostgreSQL nodes for ``replicate up``, the demo and the tests.

``LocalCluster`` creates N nodes in one directory (copying one initdb'd
template), starts them concurrently on free loopback ports with private
unix-socket directories, and writes the ``cluster.toml`` every other command
reads. ``LocalNode`` is one server: start, stop (fast or immediate), restart,
SIGKILL, SIGSTOP/SIGCONT. As root, PostgreSQL runs as the ``postgres`` OS user.
"""

from replicate.cluster.binaries import PgBinaries, find_binaries
from replicate.cluster.local import LocalCluster, find_free_range
from replicate.cluster.node import LocalNode

__all__ = ["LocalCluster", "LocalNode", "PgBinaries", "find_binaries", "find_free_range"]
