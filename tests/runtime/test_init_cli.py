"""`replicate init --config FILE` as an operator runs it: the real console script, real nodes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import psycopg
import pytest

from replicate.runtime.schema import SCHEMA_VERSION

pytestmark = pytest.mark.e2e

REPLICATE = str(Path(sys.executable).parent / "replicate")  # the installed console script


def replicate(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([REPLICATE, *args], capture_output=True, text=True, timeout=timeout,
                          env=dict(os.environ))


def test_init_installs_then_is_idempotent_and_reports_failed_nodes(make_cluster) -> None:
    cluster = make_cluster(3)
    config = str(cluster.config_path)

    first = replicate("init", "--config", config, "--json")
    assert first.returncode == 0, first.stderr
    report = json.loads(first.stdout)
    assert report["ok"] is True and report["schema_version"] == SCHEMA_VERSION
    assert [(n["name"], n["before"], n["after"], n["error"]) for n in report["nodes"]] == [
        (name, None, SCHEMA_VERSION, None) for name in ("n1", "n2", "n3")]
    assert report["warning"] is None  # one PostgreSQL for the whole local cluster
    for node, reported in zip(cluster.config.nodes, report["nodes"]):
        with psycopg.connect(node.dsn, connect_timeout=10) as conn:
            assert conn.execute("SELECT value FROM replicate.meta WHERE key = 'schema_version'"
                                ).fetchone() == (str(SCHEMA_VERSION),)
            assert reported["postgresql"] == conn.execute("SHOW server_version").fetchone()[0]

    again = replicate("init", "--config", config)  # human output, already up to date
    assert again.returncode == 0, again.stderr
    assert again.stdout.count("up to date") == 3

    # One node down, one with a newer schema: both reported, the third still fine, exit 1.
    with psycopg.connect(cluster.config.node("n3").dsn, autocommit=True) as conn:
        conn.execute("UPDATE replicate.meta SET value = %s WHERE key = 'schema_version'",
                      (str(SCHEMA_VERSION + 1),))
    cluster.node("n2").stop(mode="immediate")
    broken = replicate("init", "--config", config, "--json")
    assert broken.returncode == 1
    nodes = {n["name"]: n for n in json.loads(broken.stdout)["nodes"]}
    assert nodes["n1"]["error"] is None and nodes["n1"]["before"] == SCHEMA_VERSION
    assert nodes["n2"]["sqlstate"] == "08006" and nodes["n2"]["error"]
    assert nodes["n3"]["sqlstate"] == "55000" and "newer" in nodes["n3"]["error"]
    assert "n2, n3" in broken.stderr


def test_init_with_a_missing_config_fails_cleanly(tmp_path: Path) -> None:
    result = replicate("init", "--config", str(tmp_path / "nope.toml"))
    assert result.returncode == 1
    assert "F0000" in result.stderr and "does not exist" in result.stderr
