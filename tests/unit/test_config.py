"""cluster.toml parsing: valid files round-trip, every mistake is an error that says where."""

from pathlib import Path

import pytest

from replicate.config import (ClusterConfig, NodeConfig, dump_config, load_config, parse_config,
                              split_address, write_config)
from replicate.errors import ConfigError

GOOD = """
[cluster]
name = "prod"
read_consistency = "session"

[[nodes]]
name = "a"
dsn = "host=10.0.0.1 port=5432 dbname=app"
proxy = "10.0.0.1:6432"

[[nodes]]
name = "b"
dsn = "postgresql://10.0.0.2/app"
proxy = "[::1]:6433"
"""


def test_good_file_loads(tmp_path: Path) -> None:
    path = tmp_path / "cluster.toml"
    path.write_text(GOOD)
    config = load_config(path)
    assert [n.name for n in config.nodes] == ["a", "b"]
    assert config.read_consistency == "session"
    assert config.name == "prod"
    assert config.node("b").proxy_host == "::1"
    assert config.node("b").proxy_port == 6433
    assert config.node("a").data_dir is None


def test_defaults() -> None:
    config = parse_config({"nodes": [{"name": "a", "dsn": "dbname=x", "proxy": "h:1"}]})
    assert config.read_consistency == "linearizable"
    assert config.connect_timeout_s == 5.0
    assert config.apply_linger_ms == 10
    assert config.apply_backlog == 100_000
    assert config.read_lease_ms == 500


def test_the_proxy_takes_the_apply_settings_from_the_config() -> None:
    from replicate.runtime.proxy import settings_for
    config = parse_config({"cluster": {"apply_linger_ms": 25, "apply_timeout_ms": 900,
                                       "read_lease_ms": 0, "apply_backlog": 5000},
                           "nodes": [{"name": "a", "dsn": "dbname=x", "proxy": "h:1"}]})
    settings = settings_for(config)
    assert settings.apply_linger_s == 0.025 and settings.apply_timeout_ms == 900
    assert settings.read_lease_ms == 0 and settings.apply_backlog == 5000


def test_round_trip(tmp_path: Path) -> None:
    config = ClusterConfig(nodes=(NodeConfig("n1", "host=127.0.0.1 port=5 dbname=postgres",
                                             "127.0.0.1:6", Path("/tmp/n1")),
                                  NodeConfig("n2", "dbname=y", "127.0.0.1:7")),
                           name="c", read_consistency="local", connect_timeout_s=2.5,
                           write_timeout_s=3.0, apply_timeout_ms=700, apply_linger_ms=0,
                           apply_backlog=64, read_lease_ms=250)
    write_config(config, tmp_path / "cluster.toml")
    assert load_config(tmp_path / "cluster.toml") == config
    assert "data_dir" in dump_config(config)


@pytest.mark.parametrize("document, words", [
    ({}, "no [[nodes]]"),
    ({"nodes": []}, "no [[nodes]]"),
    ({"nodes": [{"name": "a", "dsn": "dbname=x"}]}, "'proxy' must be"),
    ({"nodes": [{"name": "a", "dsn": "dbname=x", "proxy": "nohost"}]}, "host:port"),
    ({"nodes": [{"name": "a", "dsn": "dbname=x", "proxy": "h:99999"}]}, "outside"),
    ({"nodes": [{"name": "a", "dsn": "dbname=x", "proxy": "h:p"}]}, "not a number"),
    ({"nodes": [{"name": "a", "dsn": "not a dsn", "proxy": "h:1"}]}, "libpq connection string"),
    ({"nodes": [{"name": "a", "dsn": "dbname=x", "proxy": "h:1", "prot": 1}]}, "unknown key(s) prot"),
    ({"nodes": [{"name": "a", "dsn": "dbname=x", "proxy": "h:1"},
                {"name": "a", "dsn": "dbname=y", "proxy": "h:2"}]}, "appears twice"),
    ({"nodes": [{"name": "a", "dsn": "dbname=x", "proxy": "h:1"},
                {"name": "b", "dsn": "dbname=y", "proxy": "h:1"}]}, "share one proxy"),
    ({"cluster": {"read_consistency": "eventual"},
      "nodes": [{"name": "a", "dsn": "dbname=x", "proxy": "h:1"}]}, "read_consistency"),
    ({"cluster": {"apply_timeout_ms": 1.5},
      "nodes": [{"name": "a", "dsn": "dbname=x", "proxy": "h:1"}]}, "whole number"),
    ({"cluster": {"apply_linger_ms": -1},
      "nodes": [{"name": "a", "dsn": "dbname=x", "proxy": "h:1"}]}, "apply_linger_ms"),
    ({"cluster": {"apply_linger_ms": 2.5},
      "nodes": [{"name": "a", "dsn": "dbname=x", "proxy": "h:1"}]}, "apply_linger_ms"),
    ({"cluster": {"apply_backlog": 0},
      "nodes": [{"name": "a", "dsn": "dbname=x", "proxy": "h:1"}]}, "apply_backlog"),
    ({"cluster": {"apply_backlog": "many"},
      "nodes": [{"name": "a", "dsn": "dbname=x", "proxy": "h:1"}]}, "apply_backlog"),
    ({"cluster": {"read_lease_ms": 10_001},
      "nodes": [{"name": "a", "dsn": "dbname=x", "proxy": "h:1"}]}, "read_lease_ms"),
    ({"cluster": {"read_lease_ms": True},
      "nodes": [{"name": "a", "dsn": "dbname=x", "proxy": "h:1"}]}, "read_lease_ms"),
    ({"cluster": {"connect_timeout_s": 0},
      "nodes": [{"name": "a", "dsn": "dbname=x", "proxy": "h:1"}]}, "connect_timeout_s"),
    ({"cluster": {"colour": "red"},
      "nodes": [{"name": "a", "dsn": "dbname=x", "proxy": "h:1"}]}, "[cluster]: unknown key"),
    ({"extra": 1, "nodes": [{"name": "a", "dsn": "dbname=x", "proxy": "h:1"}]}, "top level"),
])
def test_mistakes_are_errors(document: dict, words: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config(document)
    assert words in str(info.value)
    assert info.value.sqlstate == "F0000"


def test_missing_and_invalid_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist") as info:
        load_config(tmp_path / "nope.toml")
    assert "replicate up" in info.value.hint
    bad = tmp_path / "bad.toml"
    bad.write_text("[[nodes]\nname=")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(bad)


def test_unknown_node_name_lists_known() -> None:
    config = parse_config({"nodes": [{"name": "a", "dsn": "dbname=x", "proxy": "h:1"}]})
    with pytest.raises(ConfigError) as info:
        config.node("z")
    assert info.value.hint == "known nodes: a"


def test_split_address() -> None:
    assert split_address("127.0.0.1:5432") == ("127.0.0.1", 5432)
    assert split_address("[::1]:1") == ("::1", 1)
    with pytest.raises(ConfigError):
        split_address(":5432")
