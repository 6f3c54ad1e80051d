"""``replicate proxy``: one proxy process = the engine for one node + its listener.

The proxy runs on uvloop when it can be imported (it is a dependency; the
relay's per-message callbacks cost less on it), else on asyncio's own loop.
``REPLICATE_EVENT_LOOP=asyncio`` chooses asyncio's loop even when uvloop is
there (to compare, or to rule uvloop out); ``=uvloop`` makes a missing uvloop
an error instead of a fallback.

A node with ``socket_dir`` in cluster.toml is reached by its own proxy through
that Unix socket (client sessions, the engine's acceptor link, applier and
local reads, the gate's catalog), with ``dsn``'s TCP address as the second
choice when the socket is missing: ``local_config``.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import signal
from collections.abc import Callable
from pathlib import Path

from replicate.config import ClusterConfig
from replicate.errors import ConfigError
from replicate.runtime.engine import Engine, EngineSettings
from replicate.runtime.intercept import CatalogCache, ReplicateHooks
from replicate.runtime.server import ProxyServer

log = logging.getLogger("replicate.proxy")


def settings_for(config: ClusterConfig) -> EngineSettings:
    return EngineSettings(submit_timeout_s=config.write_timeout_s,
                          apply_timeout_ms=config.apply_timeout_ms,
                          apply_linger_s=config.apply_linger_ms / 1000,
                          apply_backlog=config.apply_backlog,
                          read_lease_ms=config.read_lease_ms,
                          connect_timeout_s=min(config.connect_timeout_s, 2.0))


def local_config(config: ClusterConfig, node: str) -> ClusterConfig:
    """``config`` as the proxy of ``node`` uses it: its own node's dsn is ``local_dsn``.

    Only the own node changes (through its ``socket_dir``, when it has one); the other
    nodes are reached through their ``dsn`` as before.
    """
    me = config.node(node)
    if me.socket_dir is None:
        return config
    nodes = tuple(dataclasses.replace(n, dsn=n.local_dsn) if n.name == me.name else n
                  for n in config.nodes)
    return dataclasses.replace(config, nodes=nodes)


def _check_socket(config: ClusterConfig, node: str) -> None:
    me = config.node(node)
    if me.socket_dir is None:
        return
    if not Path(me.socket_dir).is_dir():
        log.warning("socket_dir %s of node %s is not a directory here: the proxy reaches its "
                    "node through %s instead (fix socket_dir in %s, or remove it)",
                    me.socket_dir, me.name, me.dsn, config.path or "the configuration")
    else:
        log.info("reaching node %s through its Unix socket in %s", me.name, me.socket_dir)


async def serve(config: ClusterConfig, node: str, settings: EngineSettings | None = None) -> None:
    """Run until SIGTERM or SIGINT."""
    settings = settings or settings_for(config)
    _check_socket(config, node)
    config = local_config(config, node)
    me = config.node(node)
    engine = Engine(config, node, settings)
    server = ProxyServer(engine, me.proxy_host, me.proxy_port)
    server.hooks = ReplicateHooks(engine, CatalogCache(engine, me.dsn), config.read_consistency)
    await server.start()
    log.info("proxy %s listening on %s (event loop: %s)", node, me.proxy, loop_name())
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    starting = asyncio.create_task(engine.start())
    # start() retries while the node is unreachable; anything else (a schema newer than this
    # replicate knows) ends the proxy with that error rather than leaving it "starting".
    starting.add_done_callback(lambda task: task.cancelled() or task.exception() is None
                               or stop.set())
    await stop.wait()
    failed = starting.exception() if starting.done() and not starting.cancelled() else None
    if failed is not None:
        log.error("proxy %s cannot start its engine: %s", node, failed)
    log.info("proxy %s stopping", node)
    starting.cancel()
    await asyncio.gather(starting, return_exceptions=True)
    await server.stop()
    await engine.stop()
    if failed is not None:
        raise failed


EVENT_LOOPS = ("uvloop", "asyncio")


def loop_factory(choice: str | None = None) -> Callable[[], asyncio.AbstractEventLoop] | None:
    """The event loop factory for the proxy: uvloop's if it can be had, None for asyncio's.

    ``choice`` (default: ``$REPLICATE_EVENT_LOOP``, else "auto") is "auto", "uvloop" or
    "asyncio".
    """
    choice = (choice if choice is not None else os.environ.get("REPLICATE_EVENT_LOOP", "")) \
        or "auto"
    if choice not in ("auto", *EVENT_LOOPS):
        raise ConfigError(f"REPLICATE_EVENT_LOOP={choice!r} is not one of auto, uvloop, asyncio")
    if choice == "asyncio":
        return None
    try:
        import uvloop
    except ImportError as exc:
        if choice == "uvloop":
            raise ConfigError("REPLICATE_EVENT_LOOP=uvloop but uvloop cannot be imported: "
                              f"{exc}", hint="pip install uvloop") from None
        log.info("uvloop cannot be imported (%s): running on asyncio's event loop", exc)
        return None
    return uvloop.new_event_loop


def loop_name(loop: asyncio.AbstractEventLoop | None = None) -> str:
    """"uvloop" or "asyncio": what the (running) loop is."""
    loop = loop or asyncio.get_running_loop()
    return "uvloop" if type(loop).__module__.startswith("uvloop") else "asyncio"


def run(config: ClusterConfig, node: str) -> None:
    # `replicate up` holds SIGINT/SIGTERM while it starts us, and a child inherits that mask.
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT, signal.SIGTERM})
    logging.basicConfig(level=logging.INFO,
                        format=f"%(asctime)s {node} %(levelname)s %(name)s: %(message)s")
    with asyncio.Runner(loop_factory=loop_factory()) as runner:
        runner.run(serve(config, node))
