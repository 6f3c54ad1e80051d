"""The proxy's event loop choice (uvloop, with a fallback) and the Unix-socket address of its node."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import psycopg
import pytest

from replicate.config import ClusterConfig, NodeConfig, load_config, parse_config, write_config
from replicate.errors import ConfigError
from replicate.runtime import proxy
from replicate.runtime.relay import backend_addresses, describe_address

# --------------------------------------------------------------------------- event loop


def test_uvloop_is_installed_and_chosen_by_default(monkeypatch) -> None:
    uvloop = pytest.importorskip("uvloop")  # a dependency: missing only on odd platforms
    monkeypatch.delenv("REPLICATE_EVENT_LOOP", raising=False)
    assert proxy.loop_factory() is uvloop.new_event_loop
    with asyncio.Runner(loop_factory=proxy.loop_factory()) as runner:
        assert runner.run(_running_loop_name()) == "uvloop"


def test_asyncio_on_request_and_when_uvloop_cannot_be_imported(monkeypatch) -> None:
    monkeypatch.setenv("REPLICATE_EVENT_LOOP", "asyncio")
    assert proxy.loop_factory() is None
    monkeypatch.delenv("REPLICATE_EVENT_LOOP")
    monkeypatch.setitem(sys.modules, "uvloop", None)  # `import uvloop` raises ImportError
    assert proxy.loop_factory() is None
    with asyncio.Runner(loop_factory=proxy.loop_factory()) as runner:
        assert runner.run(_running_loop_name()) == "asyncio"
    with pytest.raises(ConfigError, match="uvloop cannot be imported"):
        proxy.loop_factory("uvloop")
    with pytest.raises(ConfigError, match="not one of"):
        proxy.loop_factory("tokio")


async def _running_loop_name() -> str:
    return proxy.loop_name()


# --------------------------------------------------------------------------- socket_dir

def _node(dsn: str, socket_dir: str | None = "/run/pg") -> NodeConfig:
    return NodeConfig("n1", dsn, "127.0.0.1:6432", None, Path(socket_dir) if socket_dir else None)


@pytest.mark.parametrize("dsn, addresses", [
    ("host=127.0.0.1 port=5433 dbname=x", [("/run/pg", 5433), ("127.0.0.1", 5433)]),
    ("postgresql://u@db.example:5/app", [("/run/pg", 5), ("db.example", 5)]),
    ("host=db hostaddr=10.0.0.1 dbname=x", [("/run/pg", 5432), ("10.0.0.1", 5432)]),
    ("dbname=x", [("/run/pg", 5432)]),
])
def test_local_dsn_tries_the_socket_first_then_the_dsn(dsn: str, addresses: list) -> None:
    node = _node(dsn)
    local = node.local_dsn
    assert list(backend_addresses(local)) == addresses
    params = psycopg.conninfo.conninfo_to_dict(local)
    original = psycopg.conninfo.conninfo_to_dict(dsn)
    for key in ("dbname", "user"):
        assert params.get(key) == original.get(key)
    assert _node(dsn, None).local_dsn == dsn


def test_backend_addresses_of_plain_dsns() -> None:
    assert backend_addresses("host=127.0.0.1 port=5 dbname=x") == (("127.0.0.1", 5),)
    assert backend_addresses("dbname=x") == (("127.0.0.1", 5432),)
    assert backend_addresses("host=/s,h1,h2 port=1,2,3") == (("/s", 1), ("h1", 2), ("h2", 3))
    assert describe_address(("/s", 1)) == "/s/.s.PGSQL.1"
    assert describe_address(("h", 2)) == "h:2"


def test_socket_dir_round_trips_and_only_the_own_node_changes(tmp_path: Path) -> None:
    config = ClusterConfig(nodes=(
        NodeConfig("n1", "host=127.0.0.1 port=5 dbname=postgres", "127.0.0.1:6",
                   Path("/tmp/n1"), Path("/tmp/n1/sock")),
        NodeConfig("n2", "host=127.0.0.1 port=7 dbname=postgres", "127.0.0.1:8",
                   Path("/tmp/n2"), Path("/tmp/n2/sock"))))
    write_config(config, tmp_path / "cluster.toml")
    assert load_config(tmp_path / "cluster.toml") == config
    local = proxy.local_config(config, "n1")
    assert local.nodes[0].dsn == config.nodes[0].local_dsn != config.nodes[0].dsn
    assert local.nodes[1] == config.nodes[1]   # other nodes: their TCP dsn, as before
    plain = parse_config({"nodes": [{"name": "a", "dsn": "dbname=x", "proxy": "h:1"}]})
    assert proxy.local_config(plain, "a") is plain


@pytest.mark.parametrize("socket_dir, dsn, words", [
    ("relative/dir", "dbname=x", "absolute directory"),
    ("/a,/b", "dbname=x", "absolute directory"),
    (5, "dbname=x", "absolute directory"),
    ("/run/pg", "host=a,b dbname=x", "one host"),
])
def test_bad_socket_dir_is_an_error(socket_dir, dsn: str, words: str) -> None:
    with pytest.raises(ConfigError, match=words):
        parse_config({"nodes": [{"name": "a", "dsn": dsn, "proxy": "h:1",
                                 "socket_dir": socket_dir}]})
