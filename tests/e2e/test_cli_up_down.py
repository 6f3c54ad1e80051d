"""`replicate up` and `replicate down` as an operator runs them: real processes, real signals."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psycopg
import pytest

from replicate.config import load_config

from .procs import processes_under

pytestmark = pytest.mark.e2e

REPLICATE = str(Path(sys.executable).parent / "replicate")  # the installed console script


def replicate(*args: str, env: dict | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([REPLICATE, *args], capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **(env or {})})


@pytest.fixture
def cluster_dir(tmp_path_factory):
    import tempfile
    root = Path(tempfile.mkdtemp(prefix="replicate-cli-", dir="/tmp"))
    os.chmod(root, 0o755)
    yield root / "c"
    replicate("down", "--dir", str(root / "c"), "--immediate")
    import shutil
    shutil.rmtree(root, ignore_errors=True)


def socket_open(host: str, port: str) -> bool:
    import socket
    try:
        with socket.create_connection((host, int(port)), timeout=1):
            return True
    except OSError:
        return False


def postmaster_pid(data_dir: Path) -> int:
    return int((data_dir / "postmaster.pid").read_text().split("\n", 1)[0])


def test_up_kill_up_down(cluster_dir: Path) -> None:
    result = replicate("up", "--nodes", "3", "--dir", str(cluster_dir), "--detach", "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["created"] is True
    assert [n["status"] for n in report["nodes"]] == ["running"] * 3
    assert [n["proxy_status"] for n in report["nodes"]] == ["running"] * 3

    config = load_config(cluster_dir / "cluster.toml")
    assert [n.name for n in config.nodes] == ["n1", "n2", "n3"]
    for node in config.nodes:
        with psycopg.connect(node.dsn, connect_timeout=5) as conn:
            assert conn.execute("SELECT 1").fetchone() == (1,)

    victim = config.node("n2")
    os.kill(postmaster_pid(victim.data_dir / "data"), signal.SIGKILL)
    time.sleep(0.2)
    again = replicate("up", "--dir", str(cluster_dir), "--detach", "--json")
    assert again.returncode == 0, again.stderr
    assert json.loads(again.stdout)["started"] == ["n2"]
    os.kill(json.loads(again.stdout)["nodes"][0]["proxy_pid"], signal.SIGKILL)
    time.sleep(0.2)
    third = replicate("up", "--dir", str(cluster_dir), "--detach", "--json")
    assert json.loads(third.stdout)["started"] == ["proxy n1"]
    with psycopg.connect(victim.dsn, connect_timeout=5) as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)

    (cluster_dir / "n3" / "proxy.pid").unlink()  # a lost pid file must not leak a proxy
    down = replicate("down", "--dir", str(cluster_dir), "--json")
    assert down.returncode == 0, down.stderr
    assert [n["status"] for n in json.loads(down.stdout)["nodes"]] == ["stopped"] * 3
    assert [n["proxy_status"] for n in json.loads(down.stdout)["nodes"]] == ["stopped"] * 3
    assert processes_under(cluster_dir) == []


@pytest.mark.parametrize("when", ["starting", "running"])
def test_up_in_foreground_stops_on_interrupt(cluster_dir: Path, when: str) -> None:
    proc = subprocess.Popen([REPLICATE, "up", "--nodes", "2", "--dir", str(cluster_dir)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if (cluster_dir / "cluster.toml").exists():
                config = load_config(cluster_dir / "cluster.toml")
                try:
                    for node in config.nodes:
                        psycopg.connect(node.dsn, connect_timeout=1).close()
                    # "starting": interrupt while the proxies may still be starting;
                    # "running": once every proxy listens
                    if when == "starting":
                        break
                    if all(socket_open(*n.proxy.rsplit(":", 1)) for n in config.nodes):
                        time.sleep(0.5)
                        break
                except psycopg.OperationalError:
                    pass
            time.sleep(0.2)
        else:
            pytest.fail("nodes never accepted connections")
        assert proc.poll() is None  # still in the foreground
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err
    assert "cluster stopped" in out
    assert processes_under(cluster_dir) == []


def test_up_with_other_node_count_is_refused(cluster_dir: Path) -> None:
    assert replicate("up", "--nodes", "1", "--dir", str(cluster_dir), "--detach").returncode == 0
    result = replicate("up", "--nodes", "2", "--dir", str(cluster_dir), "--detach")
    assert result.returncode == 1
    assert "already holds a cluster of 1 nodes, not 2" in result.stderr
    assert "F0000" in result.stderr


def test_missing_binaries_give_install_hint(cluster_dir: Path) -> None:
    result = replicate("up", "--dir", str(cluster_dir), "--detach",
                       env={"REPLICATE_PG_BINDIR": "/nonexistent/bin"})
    assert result.returncode == 1
    assert "PostgreSQL server binaries" in result.stderr
    assert "apt-get install postgresql" in result.stderr
    assert not (cluster_dir / "cluster.toml").exists()


def test_down_without_cluster_is_a_clear_error(cluster_dir: Path) -> None:
    result = replicate("down", "--dir", str(cluster_dir))
    assert result.returncode == 1
    assert "does not exist" in result.stderr
