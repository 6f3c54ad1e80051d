"""``replicate proxy``: one proxy process = the engine for one node + its listener."""

from __future__ import annotations

import asyncio
import logging
import signal

from replicate.config import ClusterConfig
from replicate.runtime.engine import Engine, EngineSettings
from replicate.runtime.intercept import CatalogCache, ReplicateHooks
from replicate.runtime.server import ProxyServer

log = logging.getLogger("replicate.proxy")


def settings_for(config: ClusterConfig) -> EngineSettings:
    return EngineSettings(submit_timeout_s=config.write_timeout_s,
                          apply_timeout_ms=config.apply_timeout_ms,
                          connect_timeout_s=min(config.connect_timeout_s, 2.0))


async def serve(config: ClusterConfig, node: str, settings: EngineSettings | None = None) -> None:
    """Run until SIGTERM or SIGINT."""
    settings = settings or settings_for(config)
    me = config.node(node)
    engine = Engine(config, node, settings)
    server = ProxyServer(engine, me.proxy_host, me.proxy_port)
    server.hooks = ReplicateHooks(engine, CatalogCache(engine, me.dsn), config.read_consistency)
    await server.start()
    log.info("proxy %s listening on %s", node, me.proxy)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    starting = asyncio.create_task(engine.start())
    await stop.wait()
    log.info("proxy %s stopping", node)
    starting.cancel()
    await asyncio.gather(starting, return_exceptions=True)
    await server.stop()
    await engine.stop()


def run(config: ClusterConfig, node: str) -> None:
    # `replicate up` holds SIGINT/SIGTERM while it starts us, and a child inherits that mask.
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT, signal.SIGTERM})
    logging.basicConfig(level=logging.INFO,
                        format=f"%(asctime)s {node} %(levelname)s %(name)s: %(message)s")
    asyncio.run(serve(config, node))
