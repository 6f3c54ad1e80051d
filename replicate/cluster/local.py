"""A local cluster of N PostgreSQL nodes in one directory, as ``replicate up`` runs it.

Layout of the cluster directory::

    <dir>/cluster.toml   the cluster configuration (nodes, DSNs, proxy addresses)
    <dir>/.template      an initdb'd data directory that new nodes are copied from
    <dir>/n1, n2, ...    one LocalNode each

Ports: with ``base_port`` P and N nodes, the proxies listen on P .. P+N-1 and
PostgreSQL on P+N .. P+2N-1, so the ports a client uses come first. Without
``base_port`` the first free range at or above 15432 is taken.

Creating copies one initdb'd template instead of running initdb N times, and
nodes start concurrently: that is what makes ``up`` of 3 nodes take a few
seconds rather than ten.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import stat
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from psycopg.conninfo import conninfo_to_dict

from replicate.cluster.binaries import PgBinaries, find_binaries
from replicate.cluster.node import LocalNode, init_template, run_as_server, server_account
from replicate.cluster.proxy import LocalProxy
from replicate.config import ClusterConfig, NodeConfig, load_config, split_address, write_config
from replicate.errors import ClusterError, ConfigError

CONFIG_NAME = "cluster.toml"
DEFAULT_BASE_PORT = 15432


def port_is_free(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def find_free_range(count: int, start: int = DEFAULT_BASE_PORT, limit: int = 65000) -> int:
    """The first P >= start such that P .. P+count-1 are all free on 127.0.0.1."""
    base = start
    while base + count < limit:
        busy = [p for p in range(base, base + count) if not port_is_free(p)]
        if not busy:
            return base
        base = busy[-1] + 1
    raise ClusterError(f"no {count} consecutive free ports between {start} and {limit}")


def _check_reachable_by_server(directory: Path) -> None:
    """As root, PostgreSQL runs as `postgres`: it must be able to reach our directory."""
    account = server_account()
    if account is None:
        return
    result = run_as_server(["/bin/sh", "-c", 'test -x "$1" && test -r "$1"', "sh", str(directory)],
                           timeout=10, check=False)
    if result.returncode != 0:
        blocker = next((p for p in [directory, *directory.parents]
                        if not os.stat(p).st_mode & stat.S_IXOTH), directory)
        raise ClusterError(
            f"the {account.pw_name} OS user cannot reach {directory}",
            detail=f"{blocker} is not searchable by other users",
            hint=f"choose a directory under /tmp or /var/tmp, or `chmod o+x {blocker}`")


@dataclass(slots=True)
class LocalCluster:
    """N LocalNodes under one directory, with the cluster.toml that describes them."""

    directory: Path
    nodes: list[LocalNode]
    config: ClusterConfig

    @property
    def config_path(self) -> Path:
        return self.directory / CONFIG_NAME

    # -- creating and opening ------------------------------------------------

    @classmethod
    def create(cls, directory: Path, *, nodes: int = 3, base_port: int | None = None,
               fsync: bool = True, binaries: PgBinaries | None = None,
               template: Path | None = None) -> "LocalCluster":
        """initdb ``nodes`` nodes in ``directory`` and write its cluster.toml (does not start)."""
        if nodes < 1:
            raise ConfigError("a cluster needs at least one node")
        directory = directory.resolve()
        if (directory / CONFIG_NAME).exists():
            raise ClusterError(f"{directory} already holds a cluster")
        binaries = binaries or find_binaries()
        directory.mkdir(parents=True, exist_ok=True)
        os.chmod(directory, 0o755)
        _check_reachable_by_server(directory)
        if base_port is None:
            base_port = find_free_range(2 * nodes)
        elif not (0 < base_port and base_port + 2 * nodes <= 65536):
            raise ConfigError(f"--base-port {base_port} leaves no room for {2 * nodes} ports")
        busy = [p for p in range(base_port, base_port + 2 * nodes) if not port_is_free(p)]
        if busy:
            raise ClusterError(f"ports already in use: {', '.join(map(str, busy))}",
                               hint="choose another --base-port, or leave it out to pick free ports")
        if template is None:
            template = directory / ".template"
            if not (template / "PG_VERSION").exists():
                init_template(binaries, template)
        local_nodes = [LocalNode(f"n{i + 1}", directory / f"n{i + 1}", base_port + nodes + i,
                                 binaries) for i in range(nodes)]
        for node in local_nodes:
            node.create(template=template, fsync=fsync)
        config = ClusterConfig(
            nodes=tuple(NodeConfig(node.name, node.dsn, f"127.0.0.1:{base_port + i}", node.root,
                                   node.socket_dir)
                        for i, node in enumerate(local_nodes)),
            name=directory.name or "replicate")
        write_config(config, directory / CONFIG_NAME)
        return cls(directory, local_nodes, load_config(directory / CONFIG_NAME))

    @classmethod
    def open(cls, directory: Path, *, binaries: PgBinaries | None = None) -> "LocalCluster":
        """Open a cluster that ``create`` made earlier, from its cluster.toml."""
        directory = directory.resolve()
        config = load_config(directory / CONFIG_NAME)
        binaries = binaries or find_binaries()
        nodes = []
        for node in config.nodes:
            if node.data_dir is None:
                raise ConfigError(f"node {node.name!r} has no data_dir: it is not a local node "
                                  "that replicate manages")
            port = int(conninfo_to_dict(node.dsn).get("port", 5432))
            nodes.append(LocalNode(node.name, node.data_dir, port, binaries))
        return cls(directory, nodes, config)

    @classmethod
    def exists_in(cls, directory: Path) -> bool:
        return (directory / CONFIG_NAME).exists()

    # -- operating -----------------------------------------------------------

    def node(self, name: str) -> LocalNode:
        for node in self.nodes:
            if node.name == name:
                return node
        raise ClusterError(f"no node named {name!r}")

    def start(self, *, timeout: float = 60.0) -> list[str]:
        """Start every node that is not running, concurrently; return the names started."""
        todo = [n for n in self.nodes if n.status() != "running"]
        if todo:
            with ThreadPoolExecutor(max_workers=len(todo)) as pool:
                list(pool.map(lambda n: n.start(timeout=timeout), todo))
        return [n.name for n in todo]

    def stop(self, *, mode: str = "fast", timeout: float = 30.0) -> None:
        """Stop every proxy, then every node."""
        self.stop_proxies()
        with ThreadPoolExecutor(max_workers=len(self.nodes)) as pool:
            list(pool.map(lambda n: n.stop(mode=mode, timeout=timeout), self.nodes))

    def destroy(self) -> None:
        """Stop every node immediately and delete the cluster directory."""
        self.stop(mode="immediate")
        shutil.rmtree(self.directory, ignore_errors=True)

    def proxy_address(self, name: str) -> tuple[str, int]:
        return split_address(self.config.node(name).proxy)

    # -- proxies ---------------------------------------------------------------

    def proxy(self, name: str) -> LocalProxy:
        return LocalProxy(name, self.node(name).root, self.config_path,
                          *self.proxy_address(name))

    @property
    def proxies(self) -> list[LocalProxy]:
        return [self.proxy(node.name) for node in self.nodes]

    def start_proxies(self, *, timeout: float = 30.0) -> list[str]:
        """Start the proxy of every node that has none running; wait until they listen."""
        started = [p.name for p in self.proxies if p.start()]
        for proxy in self.proxies:
            proxy.wait_listening(timeout)
        return started

    def stop_proxies(self, *, timeout: float = 10.0) -> None:
        for proxy in self.proxies:
            proxy.stop(timeout=timeout)
        # A proxy whose pid file was lost (e.g. `up` killed while starting it) still names
        # this cluster's configuration on its command line.
        marker = f"--config\0{self.config_path}\0".encode()
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            try:
                cmdline = Path(f"/proc/{entry}/cmdline").read_bytes()
            except OSError:
                continue
            if marker in cmdline and b"proxy" in cmdline:
                try:
                    os.kill(int(entry), signal.SIGKILL)
                except ProcessLookupError:
                    pass
