"""`xos serve node`: the node's service with its local API on a Unix socket, its peer API on TCP over TLS
and its ad pushes to job managers, until SIGTERM or SIGINT."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal

from aiohttp import web

from xos.node.advertise import advertise
from xos.node.api import make_app
from xos.node.config import NodeConfig
from xos.node.peer_api import make_peer_app
from xos.node.service import NodeService
from xos.paths import node_socket
from xos.wire import server as wire_server

log = logging.getLogger(__name__)


async def serve_node(config: NodeConfig) -> None:
    """Run the node daemon until SIGTERM or SIGINT."""
    svc = NodeService(config)
    await svc.start()
    runner = web.AppRunner(make_app(svc), access_log=None, handle_signals=False, shutdown_timeout=5)
    await runner.setup()
    path = node_socket(config.run)
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)
    old = os.umask(0o077)  # root only until the identity layer says who else may talk to us
    try:
        site = web.UnixSite(runner, path)
        await site.start()
    finally:
        os.umask(old)
    peer_runner = None
    if config.listen:
        tls = config.host().server_context()  # refuse to start without one rather than answer everyone
        host, _, port = config.listen.rpartition(":")
        peer_runner = web.AppRunner(make_peer_app(svc), access_log=None, handle_signals=False, shutdown_timeout=5)
        await peer_runner.setup()
        await wire_server.start_site(peer_runner, host or "0.0.0.0", int(port), tls)
        log.info("node %s peer API on %s", config.name, config.listen)
    pushers = [asyncio.create_task(advertise(svc, url)) for url in config.aem_urls]
    if pushers:
        config.own_peer_url()  # refuse to start with an ad no job manager could act on
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    log.info("node %s serving on %s", config.name, path)
    try:
        await stop.wait()
    finally:
        for task in pushers:
            task.cancel()
        if peer_runner is not None:
            await peer_runner.cleanup()
        await runner.cleanup()
        await svc.stop()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
