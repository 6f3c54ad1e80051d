"""The cluster configuration file, ``cluster.toml``.

Every command reads it (``--config FILE``, default ``./cluster.toml``).
``replicate up`` writes one for the local cluster it starts; operators write
the same file by hand for servers they run themselves::

    [cluster]
    name = "prod"
    read_consistency = "linearizable"   # local | session | linearizable

    [[nodes]]
    name = "n1"
    dsn = "host=10.0.0.1 port=5432 dbname=app user=replicate"
    proxy = "10.0.0.1:6432"

    [[nodes]]
    ...

Per node, ``data_dir`` is set only for nodes that ``replicate up`` manages
itself (a local PostgreSQL data directory). ``socket_dir`` (optional) is the
node's Unix-socket directory on the proxy's own machine: that node's proxy
then reaches its PostgreSQL through the socket (cheaper than loopback TCP),
trying ``dsn``'s own host next if the socket is missing; everyone else (other
proxies, the operator commands) uses ``dsn``. ``replicate up`` writes it.

Parsing is strict: unknown keys, duplicate names, bad addresses and
malformed DSNs are errors that say where they are, because a typo in a
replication config should never be silently ignored.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg.conninfo
import tomli_w

from replicate.errors import ConfigError

READ_CONSISTENCIES = ("local", "session", "linearizable")
DEFAULT_CONFIG = Path("cluster.toml")

_CLUSTER_KEYS = {"name", "read_consistency", "connect_timeout_s", "write_timeout_s",
                 "apply_timeout_ms", "apply_linger_ms", "apply_backlog", "read_lease_ms"}
_NODE_KEYS = {"name", "dsn", "proxy", "data_dir", "socket_dir"}


@dataclass(frozen=True, slots=True)
class NodeConfig:
    """One PostgreSQL server and the proxy that sits in front of it."""

    name: str
    dsn: str
    proxy: str
    data_dir: Path | None = None
    socket_dir: Path | None = None

    @property
    def local_dsn(self) -> str:
        """The DSN this node's own proxy uses: through ``socket_dir`` first, then ``dsn``.

        Without ``socket_dir`` it is ``dsn``. With it, a libpq multi-host DSN whose first
        host is the socket directory and whose second is ``dsn``'s own host (libpq,
        psycopg and the relay try them in order), with ``dsn``'s port and other parameters.
        """
        if self.socket_dir is None:
            return self.dsn
        params = psycopg.conninfo.conninfo_to_dict(self.dsn)
        host = str(params.pop("host", "") or "")
        hostaddr = str(params.pop("hostaddr", "") or "")
        port = str(params.pop("port", "") or "")
        if "," in host or "," in hostaddr or "," in port:
            raise ConfigError(f"node {self.name!r}: socket_dir needs a dsn with one host",
                              hint="leave socket_dir out, or list the socket directory as "
                                   "the dsn's first host yourself")
        hosts = [str(self.socket_dir)]
        if host or hostaddr:
            hosts.append(host or hostaddr)
        extra: dict[str, str] = {"host": ",".join(hosts)}
        if hostaddr and host:
            extra["hostaddr"] = "," + hostaddr   # the socket entry has none
        if port:
            extra["port"] = port                 # one port: used for every host
        return psycopg.conninfo.make_conninfo("", **extra, **params)

    @property
    def proxy_host(self) -> str:
        return split_address(self.proxy)[0]

    @property
    def proxy_port(self) -> int:
        return split_address(self.proxy)[1]


@dataclass(frozen=True, slots=True)
class ClusterConfig:
    """The whole cluster: its settings and its nodes, in file order."""

    nodes: tuple[NodeConfig, ...]
    name: str = "replicate"
    read_consistency: str = "linearizable"
    connect_timeout_s: float = 5.0
    write_timeout_s: float = 15.0
    apply_timeout_ms: int = 5000
    apply_linger_ms: int = 10
    apply_backlog: int = 100_000
    read_lease_ms: int = 500
    path: Path | None = field(default=None, compare=False)

    def node(self, name: str) -> NodeConfig:
        for node in self.nodes:
            if node.name == name:
                return node
        known = ", ".join(n.name for n in self.nodes)
        raise ConfigError(f"no node named {name!r} in the cluster configuration",
                          hint=f"known nodes: {known}")


def split_address(address: str) -> tuple[str, int]:
    """Split ``host:port`` (or ``[v6]:port``) into its parts, validating the port."""
    host, sep, port_text = address.rpartition(":")
    if not sep or not host:
        raise ConfigError(f"address {address!r} is not of the form host:port")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    try:
        port = int(port_text)
    except ValueError:
        raise ConfigError(f"address {address!r} has a port that is not a number") from None
    if not 0 < port < 65536:
        raise ConfigError(f"address {address!r} has a port outside 1..65535")
    return host, port


def _check_keys(table: dict[str, Any], allowed: set[str], where: str) -> None:
    unknown = sorted(set(table) - allowed)
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {', '.join(unknown)}",
                          hint=f"allowed keys: {', '.join(sorted(allowed))}")


def _string(table: dict[str, Any], key: str, where: str) -> str:
    value = table.get(key)
    if not isinstance(value, str) or not value.strip():
        raise ConfigError(f"{where}: '{key}' must be a non-empty string")
    return value


def _positive(table: dict[str, Any], key: str, default: float) -> float:
    value = table.get(key, default)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
        raise ConfigError(f"[cluster]: {key} must be a positive number")
    return value


def parse_config(data: dict[str, Any], *, path: Path | None = None) -> ClusterConfig:
    """Validate an already-parsed TOML document and build a ClusterConfig."""
    _check_keys(data, {"cluster", "nodes"}, "top level")
    cluster = data.get("cluster", {})
    if not isinstance(cluster, dict):
        raise ConfigError("[cluster] must be a table")
    _check_keys(cluster, _CLUSTER_KEYS, "[cluster]")

    read_consistency = cluster.get("read_consistency", "linearizable")
    if read_consistency not in READ_CONSISTENCIES:
        raise ConfigError(f"[cluster]: read_consistency {read_consistency!r} is not one of "
                          + ", ".join(READ_CONSISTENCIES))
    timeout = _positive(cluster, "connect_timeout_s", 5.0)
    write_timeout = _positive(cluster, "write_timeout_s", 15.0)
    apply_timeout = _positive(cluster, "apply_timeout_ms", 5000)
    if not isinstance(apply_timeout, int):
        raise ConfigError("[cluster]: apply_timeout_ms must be a whole number of milliseconds")
    apply_linger = cluster.get("apply_linger_ms", 10)
    if isinstance(apply_linger, bool) or not isinstance(apply_linger, int) or apply_linger < 0:
        raise ConfigError("[cluster]: apply_linger_ms must be a whole number of milliseconds, "
                          ">= 0")
    apply_backlog = cluster.get("apply_backlog", 100_000)
    if isinstance(apply_backlog, bool) or not isinstance(apply_backlog, int) \
            or apply_backlog < 1:
        raise ConfigError("[cluster]: apply_backlog must be a whole number of slots, >= 1")
    read_lease = cluster.get("read_lease_ms", 500)
    if isinstance(read_lease, bool) or not isinstance(read_lease, int) \
            or not 0 <= read_lease <= 10_000:
        raise ConfigError("[cluster]: read_lease_ms must be a whole number of milliseconds "
                          "from 0 (no read leases) to 10000")
    name = cluster.get("name", "replicate")
    if not isinstance(name, str) or not name:
        raise ConfigError("[cluster]: name must be a non-empty string")

    raw_nodes = data.get("nodes")
    if not isinstance(raw_nodes, list) or not raw_nodes:
        raise ConfigError("the configuration has no [[nodes]]",
                          hint="add one [[nodes]] table per PostgreSQL server, "
                               "each with name, dsn and proxy")
    nodes: list[NodeConfig] = []
    for index, raw in enumerate(raw_nodes, start=1):
        where = f"[[nodes]] #{index}"
        if not isinstance(raw, dict):
            raise ConfigError(f"{where} must be a table")
        _check_keys(raw, _NODE_KEYS, where)
        node_name = _string(raw, "name", where)
        where = f"node {node_name!r}"
        dsn = _string(raw, "dsn", where)
        try:
            psycopg.conninfo.conninfo_to_dict(dsn)
        except psycopg.ProgrammingError as exc:
            raise ConfigError(f"{where}: dsn is not a valid libpq connection string: {exc}") from None
        proxy = _string(raw, "proxy", where)
        split_address(proxy)
        data_dir = raw.get("data_dir")
        if data_dir is not None and not isinstance(data_dir, str):
            raise ConfigError(f"{where}: data_dir must be a string")
        socket_dir = raw.get("socket_dir")
        if socket_dir is not None and (not isinstance(socket_dir, str)
                                       or not socket_dir.startswith("/") or "," in socket_dir):
            raise ConfigError(f"{where}: socket_dir must be an absolute directory path "
                              "(without commas)",
                              hint="the directory of PostgreSQL's unix_socket_directories "
                                   "that holds .s.PGSQL.<port>")
        node_config = NodeConfig(node_name, dsn, proxy, Path(data_dir) if data_dir else None,
                                 Path(socket_dir) if socket_dir else None)
        node_config.local_dsn  # noqa: B018 - validates the combination of dsn and socket_dir
        nodes.append(node_config)

    seen: set[str] = set()
    for node in nodes:
        if node.name in seen:
            raise ConfigError(f"node name {node.name!r} appears twice")
        seen.add(node.name)
    proxies = [n.proxy for n in nodes]
    if len(set(proxies)) != len(proxies):
        raise ConfigError("two nodes share one proxy address")
    return ClusterConfig(nodes=tuple(nodes), name=name, read_consistency=read_consistency,
                         connect_timeout_s=float(timeout), write_timeout_s=float(write_timeout),
                         apply_timeout_ms=apply_timeout, apply_linger_ms=apply_linger,
                         apply_backlog=apply_backlog, read_lease_ms=read_lease, path=path)


def load_config(path: Path | str = DEFAULT_CONFIG) -> ClusterConfig:
    """Read and validate ``cluster.toml``."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"configuration file {path} does not exist",
                          hint="pass --config FILE, or run `replicate up` to create a local cluster"
                          ) from None
    except OSError as exc:
        raise ConfigError(f"cannot read configuration file {path}: {exc.strerror}") from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path} is not valid TOML: {exc}") from None
    return parse_config(data, path=path)


def dump_config(config: ClusterConfig) -> str:
    """Render a ClusterConfig as TOML that ``load_config`` reads back unchanged."""
    nodes = []
    for node in config.nodes:
        entry: dict[str, Any] = {"name": node.name, "dsn": node.dsn, "proxy": node.proxy}
        if node.data_dir is not None:
            entry["data_dir"] = str(node.data_dir)
        if node.socket_dir is not None:
            entry["socket_dir"] = str(node.socket_dir)
        nodes.append(entry)
    document = {
        "cluster": {
            "name": config.name,
            "read_consistency": config.read_consistency,
            "connect_timeout_s": config.connect_timeout_s,
            "write_timeout_s": config.write_timeout_s,
            "apply_timeout_ms": config.apply_timeout_ms,
            "apply_linger_ms": config.apply_linger_ms,
            "apply_backlog": config.apply_backlog,
            "read_lease_ms": config.read_lease_ms,
        },
        "nodes": nodes,
    }
    return tomli_w.dumps(document)


def write_config(config: ClusterConfig, path: Path) -> None:
    """Write the file atomically, so a crash never leaves half a config behind."""
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(dump_config(config), encoding="utf-8")
    tmp.replace(path)
