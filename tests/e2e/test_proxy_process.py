"""The proxy process: its event loop (uvloop), its shutdown on signals, and how it reaches its node.

``replicate up`` writes ``socket_dir`` for every local node, so the proxy's
relay and its engine reach their node through the Unix socket; a socket_dir
that does not exist falls back to the DSN's TCP address and says so in the log.
"""

from __future__ import annotations

import importlib.util
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import psycopg
import pytest

from replicate.config import load_config, write_config
from replicate.runtime.schema import SCHEMA_VERSION, install

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(120)]

HAVE_UVLOOP = importlib.util.find_spec("uvloop") is not None


def _proxy_dsn(cluster) -> str:
    proxy = cluster.proxies[0]
    return f"host={proxy.host} port={proxy.port} user=postgres dbname=postgres"


def _stop_with(proxy, sig: int) -> int | None:
    """Send ``sig``; return the exit status once the process is gone (None if not ours to reap)."""
    pid = proxy.pid()
    assert pid is not None
    os.kill(pid, sig)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            done, status = os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:  # reaped elsewhere: just wait until it is gone
            if not Path(f"/proc/{pid}").exists():
                return None
        else:
            if done:
                return os.waitstatus_to_exitcode(status)
        time.sleep(0.05)
    raise AssertionError(f"the proxy did not exit after signal {sig}")


def _wait_for(predicate, what: str, timeout: float = 30.0):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)


@pytest.mark.skipif(not HAVE_UVLOOP, reason="uvloop is not installed")
def test_the_proxy_runs_on_uvloop_and_stops_cleanly_on_sigterm_and_sigint(make_cluster) -> None:
    cluster = make_cluster(1)
    for sig in (signal.SIGTERM, signal.SIGINT):
        cluster.start_proxies()
        proxy = cluster.proxies[0]
        maps = Path(f"/proc/{proxy.pid()}/maps").read_text()
        assert "uvloop" in maps                        # uvloop's extension is loaded ...
        assert "(event loop: uvloop)" in proxy.log_file.read_text()   # ... and runs the loop
        with psycopg.connect(_proxy_dsn(cluster), autocommit=True) as conn:
            assert conn.execute("SELECT 1").fetchone() == (1,)
            assert _stop_with(proxy, sig) in (0, None)
        log = proxy.log_file.read_text()
        assert log.count("proxy n1 stopping") == (1 if sig == signal.SIGTERM else 2)
        assert "Traceback" not in log


def test_the_asyncio_loop_on_request(make_cluster, monkeypatch) -> None:
    monkeypatch.setenv("REPLICATE_EVENT_LOOP", "asyncio")  # inherited by the proxy process
    cluster = make_cluster(1)
    cluster.start_proxies()
    proxy = cluster.proxies[0]
    assert "(event loop: asyncio)" in proxy.log_file.read_text()
    assert "uvloop" not in Path(f"/proc/{proxy.pid()}/maps").read_text()
    with psycopg.connect(_proxy_dsn(cluster), autocommit=True) as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)
    assert _stop_with(proxy, signal.SIGTERM) in (0, None)


def _connections(node) -> dict[str, set]:
    """application_name -> client addresses (None: Unix socket) of the node's other sessions."""
    with psycopg.connect(node.dsn, autocommit=True) as conn:
        rows = conn.execute("SELECT application_name, client_addr FROM pg_stat_activity "
                            "WHERE backend_type = 'client backend' AND pid <> pg_backend_pid()"
                            ).fetchall()
    out: dict[str, set] = {}
    for name, addr in rows:
        out.setdefault(name, set()).add(None if addr is None else str(addr))
    return out


def test_local_cluster_proxy_reaches_its_node_through_the_unix_socket(make_cluster) -> None:
    cluster = make_cluster(1)
    node = cluster.nodes[0]
    assert cluster.config.nodes[0].socket_dir == node.socket_dir
    cluster.start_proxies()
    with psycopg.connect(_proxy_dsn(cluster), autocommit=True,
                         application_name="through the proxy") as conn:
        assert conn.execute("SELECT inet_client_addr()").fetchone() == (None,)
        engine = {"replicate engine", "replicate acceptor"}  # the applier's comes and goes

        def engine_connected():
            now = _connections(node)
            return now if engine <= set(now) else None

        seen = _wait_for(engine_connected, "the engine's connections")
        for name in {n for n in seen if n.startswith("replicate")} | {"through the proxy"}:
            assert seen[name] == {None}, (name, seen[name])
    assert "reaching node n1 through its Unix socket" in cluster.proxies[0].log_file.read_text()


def test_a_missing_socket_dir_falls_back_to_tcp_and_says_so(make_cluster) -> None:
    cluster = make_cluster(1)
    config = load_config(cluster.config_path)
    missing = Path("/nonexistent-replicate-socket-dir")
    write_config(type(config)(nodes=(type(config.nodes[0])(
        config.nodes[0].name, config.nodes[0].dsn, config.nodes[0].proxy,
        config.nodes[0].data_dir, missing),), name=config.name), cluster.config_path)
    cluster.start_proxies()
    with psycopg.connect(_proxy_dsn(cluster), autocommit=True) as conn:
        assert conn.execute("SELECT inet_client_addr()::text").fetchone() == ("127.0.0.1/32",)
    log = cluster.proxies[0].log_file.read_text()
    assert f"socket_dir {missing} of node n1 is not a directory here" in log
    assert f"cannot reach the PostgreSQL node at {missing}/.s.PGSQL.{cluster.nodes[0].port}" in log


def _run_proxy(cluster) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "replicate", "proxy", "--node", "n1",
                           "--config", str(cluster.config_path)],
                          capture_output=True, text=True, timeout=60)


def test_a_node_with_a_newer_schema_ends_the_proxy_with_the_reason(make_cluster) -> None:
    """The engine cannot use a schema newer than it knows: the proxy exits and says why,
    rather than listening on with its engine never started (role "starting", nothing logged)."""
    cluster = make_cluster(1)
    with psycopg.connect(cluster.nodes[0].dsn, autocommit=True) as conn:
        install(conn)
        conn.execute("UPDATE replicate.meta SET value = %s WHERE key = 'schema_version'",
                     [str(SCHEMA_VERSION + 1)])
    done = _run_proxy(cluster)
    assert done.returncode == 1, done.stderr
    assert "error (55000)" in done.stderr and f"version {SCHEMA_VERSION + 1}" in done.stderr
    assert "cannot start its engine" in done.stderr and "Traceback" not in done.stderr


def test_a_taken_proxy_port_is_a_clear_error(make_cluster) -> None:
    cluster = make_cluster(1)
    proxy = cluster.proxies[0]
    with socket.socket() as taken:
        taken.bind((proxy.host, proxy.port))
        taken.listen()
        done = _run_proxy(cluster)
    assert done.returncode == 1, done.stderr
    assert "error (58000)" in done.stderr and f"{proxy.host}:{proxy.port}" in done.stderr
    assert "Traceback" not in done.stderr
