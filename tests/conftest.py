"""Shared pytest fixtures: real local PostgreSQL nodes, quickly.

- ``pg_template``: one initdb'd data directory per test session; every
  cluster a test makes is copied from it (a copy takes ~50 ms, initdb ~1 s).
- ``cluster``: a session-wide running 3-node LocalCluster. Tests must not
  kill, pause or reconfigure it; they get isolation through ``fresh_db``.
- ``fresh_db``: a new empty database on every node of ``cluster``, dropped
  after the test: the DSNs, one per node, in node order.
- ``make_cluster``: a factory for tests that crash, pause or restart nodes;
  each cluster it makes is destroyed (processes and files) after the test.

Nodes run with fsync off: tests kill processes, not the operating system, so
what PostgreSQL wrote is in the page cache and survives; benchmarks and real
deployments keep fsync on.
"""

from __future__ import annotations

import os
import random
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from replicate.cluster import LocalCluster, find_binaries, find_free_range
from replicate.cluster.node import init_template


def _scratch_dir(prefix: str) -> Path:
    """A directory the postgres OS user can reach (pytest's tmp_path is private to root)."""
    path = Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))
    os.chmod(path, 0o755)
    return path


def _random_base_port(count: int) -> int:
    # Random start so that concurrent test runs on one machine rarely probe the same range.
    start = random.Random(os.getpid() ^ uuid.uuid4().int).randrange(20000, 60000)
    return find_free_range(count, start=start)


@pytest.fixture(scope="session")
def pg_binaries():
    return find_binaries()


@pytest.fixture(scope="session")
def pg_template(pg_binaries) -> Iterator[Path]:
    root = _scratch_dir("replicate-template-")
    template = root / "data"
    init_template(pg_binaries, template)
    yield template
    shutil.rmtree(root, ignore_errors=True)


class ClusterFactory:
    """Makes clusters copied from the session template; ``destroy_all`` removes them."""

    def __init__(self, binaries, template: Path) -> None:
        self.binaries = binaries
        self.template = template
        self.made: list[LocalCluster] = []

    def __call__(self, nodes: int = 3, *, start: bool = True) -> LocalCluster:
        cluster = LocalCluster.create(_scratch_dir("replicate-test-") / "cluster", nodes=nodes,
                                      base_port=_random_base_port(2 * nodes), fsync=False,
                                      binaries=self.binaries, template=self.template)
        self.made.append(cluster)
        if start:
            cluster.start()
        return cluster

    def destroy_all(self) -> None:
        for cluster in self.made:
            cluster.destroy()
            shutil.rmtree(cluster.directory.parent, ignore_errors=True)


@pytest.fixture(scope="session")
def cluster(pg_binaries, pg_template) -> Iterator[LocalCluster]:
    factory = ClusterFactory(pg_binaries, pg_template)
    yield factory(3)
    factory.destroy_all()


@pytest.fixture(scope="module")
def make_module_cluster(pg_binaries, pg_template) -> Iterator[ClusterFactory]:
    """Like ``make_cluster``, for a cluster that every test of one module shares."""
    factory = ClusterFactory(pg_binaries, pg_template)
    yield factory
    factory.destroy_all()


@pytest.fixture
def make_cluster(pg_binaries, pg_template) -> Iterator[ClusterFactory]:
    factory = ClusterFactory(pg_binaries, pg_template)
    yield factory
    factory.destroy_all()


@pytest.fixture
def fresh_db(cluster) -> Iterator[list[str]]:
    cluster.start()  # in case an earlier test left a node down by mistake
    dbname = f"t_{uuid.uuid4().hex[:12]}"
    for node in cluster.nodes:
        with psycopg.connect(node.dsn, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{dbname}"')
    yield [node.dsn_for(dbname) for node in cluster.nodes]
    for node in cluster.nodes:
        with psycopg.connect(node.dsn, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{dbname}" WITH (FORCE)')
