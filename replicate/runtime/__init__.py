"""The only I/O: asyncio driver, node connections, acceptor storage over sql/, applier, proxy server."""
