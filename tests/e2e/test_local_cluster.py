"""Local PostgreSQL nodes: settings, isolation, crash, pause and restart, on real servers."""

import os
import signal
import stat

import psycopg
import pytest

from replicate.errors import ClusterError

from .procs import processes_under

pytestmark = pytest.mark.e2e


def test_nodes_share_deterministic_settings(cluster) -> None:
    ports = set()
    for node in cluster.nodes:
        with psycopg.connect(node.dsn) as conn:
            settings = dict(conn.execute(
                "SELECT name, setting FROM pg_settings WHERE name IN "
                "('server_encoding', 'listen_addresses', 'port', "
                "'unix_socket_directories')").fetchall())
            # from PostgreSQL 16 on, the collation is only the database's (not a setting)
            assert conn.execute("SELECT datcollate FROM pg_database "
                                "WHERE datname = current_database()").fetchone() == ("C",)
        assert settings["server_encoding"] == "UTF8"
        assert settings["listen_addresses"] == "127.0.0.1"
        assert settings["unix_socket_directories"] == str(node.socket_dir)
        assert stat.S_IMODE(os.stat(node.socket_dir).st_mode) == 0o700
        ports.add(int(settings["port"]))
    assert ports == {node.port for node in cluster.nodes}


def test_fresh_db_is_empty_and_private(fresh_db, cluster) -> None:
    assert len(fresh_db) == len(cluster.nodes)
    for dsn in fresh_db:
        with psycopg.connect(dsn) as conn:
            assert conn.execute("SELECT count(*) FROM pg_tables WHERE schemaname = 'public'"
                                ).fetchone() == (0,)
            conn.execute("CREATE TABLE t (id int)")
    names = {psycopg.conninfo.conninfo_to_dict(d)["dbname"] for d in fresh_db}
    assert len(names) == 1 and names != {"postgres"}


def test_sigkill_then_start_keeps_committed_data(make_cluster) -> None:
    cluster = make_cluster(1)
    node = cluster.nodes[0]
    with psycopg.connect(node.dsn, autocommit=True) as conn:
        conn.execute("CREATE TABLE kept (v int)")
        conn.execute("INSERT INTO kept VALUES (42)")
    victim = psycopg.connect(node.dsn)
    old_pid = node.kill(signal.SIGKILL)
    assert node.status() == "stopped"
    with pytest.raises(psycopg.OperationalError):
        victim.execute("SELECT 1")
    victim.close()
    assert cluster.start() == [node.name]
    assert node.pid() not in (None, old_pid)
    with psycopg.connect(node.dsn) as conn:
        assert conn.execute("SELECT v FROM kept").fetchall() == [(42,)]


def test_kill_whole_tree_leaves_no_backend(make_cluster) -> None:
    cluster = make_cluster(1)
    node = cluster.nodes[0]
    node.kill(signal.SIGKILL, whole_tree=True)
    assert processes_under(node.data_dir) == []
    node.start()
    assert node.status() == "running"


def test_pause_hangs_node_and_resume_recovers(make_cluster) -> None:
    cluster = make_cluster(2)
    paused, other = cluster.nodes
    paused.pause()
    assert paused.status() == "paused"
    with pytest.raises(psycopg.OperationalError):
        psycopg.connect(paused.dsn, connect_timeout=1)
    with psycopg.connect(other.dsn) as conn:  # the other node is not affected
        assert conn.execute("SELECT 1").fetchone() == (1,)
    paused.resume()
    assert paused.status() == "running"
    with psycopg.connect(paused.dsn, connect_timeout=5) as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)


def test_stop_modes_and_restart(make_cluster) -> None:
    cluster = make_cluster(1)
    node = cluster.nodes[0]
    node.stop(mode="immediate")
    assert node.status() == "stopped"
    node.restart()
    assert node.status() == "running"
    node.pause()
    node.stop()  # a paused node is resumed, then stopped
    assert node.status() == "stopped"
    assert processes_under(node.data_dir) == []
    with pytest.raises(ClusterError, match="not running"):
        node.kill()


def test_create_refuses_busy_port_and_existing_cluster(make_cluster, pg_binaries) -> None:
    import socket

    from replicate.cluster import LocalCluster
    cluster = make_cluster(1, start=False)
    with pytest.raises(ClusterError, match="already holds a cluster"):
        LocalCluster.create(cluster.directory, nodes=1, binaries=pg_binaries)
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        with pytest.raises(ClusterError, match=f"ports already in use: {port}"):
            LocalCluster.create(cluster.directory.parent / "other", nodes=1, base_port=port,
                                binaries=pg_binaries)
