"""Serving: an app (aiohttp's, or the lean server's) on a TCP address until SIGTERM or SIGINT, with one
background task beside it; the shape every TCP daemon of xos shares."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import socket
import ssl
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from xos.errors import InvalidInput, XosError
from xos.wire import lean


async def serve_tcp(app: web.Application | lean.App, listen: str, background: Awaitable[Any] | None = None,
                    peers: tuple[web.Application, str, ssl.SSLContext] | None = None,
                    tls: ssl.SSLContext | None = None,
                    accept: Callable[[socket.socket], contextlib.AbstractContextManager[Any]] | None = None) -> None:
    """Serve `app` on HOST:PORT (over TLS with `tls`), with one background task beside it, until SIGTERM or
    SIGINT; with `peers`, also that app on its HOST:PORT over TLS (other hosts' links).

    A lean app (the MRC's, the OSD's) is served by the lean server; with `accept`, its listening socket is
    handed to that instead (an OSD's native read threads). The caller closes its own resources after this
    returns."""
    if isinstance(app, lean.App):
        return await _serve_lean(app, listen, background, accept, tls)
    runners = []
    try:
        for one, where, ctx in [(app, listen, tls), *([peers] if peers else [])]:
            runner = web.AppRunner(one, access_log=None, handle_signals=False, shutdown_timeout=2)
            await runner.setup()
            runners.append(runner)
            host, _, port = where.rpartition(":")
            try:
                await web.TCPSite(runner, host or "0.0.0.0", int(port), reuse_address=True, ssl_context=ctx).start()
            except (OSError, ValueError) as e:
                raise InvalidInput(f"cannot listen on {where!r}: {e}") from None
    except BaseException:
        for runner in runners:
            await runner.cleanup()
        if asyncio.iscoroutine(background):
            background.close()
        raise
    try:
        await run_until_stopped(listen, background)
    finally:
        for runner in runners:
            await runner.cleanup()


async def run_until_stopped(listen: str, background: Awaitable[Any] | None = None) -> None:
    """Wait for SIGTERM or SIGINT with one background task beside; raise if that task failed."""
    task = asyncio.ensure_future(background) if background is not None else None
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    if task is not None:
        # A daemon whose loop died would answer requests and do nothing: it stops instead, with the reason.
        def ended(t: asyncio.Future[Any]) -> None:
            if not t.cancelled() and t.exception() is not None:
                stop.set()

        task.add_done_callback(ended)
    try:
        await stop.wait()
        if task is not None and task.done() and not task.cancelled() and task.exception() is not None:
            if isinstance(task.exception(), XosError):  # a reason to stop said as such (no longer the active one)
                raise task.exception()  # type: ignore[misc]
            raise RuntimeError(f"the background loop of {listen} failed") from task.exception()
    finally:
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):  # its failure was raised above
                await task


async def _serve_lean(app: lean.App, listen: str, background: Awaitable[Any] | None = None,
                      accept: Callable[[socket.socket], contextlib.AbstractContextManager[Any]] | None = None,
                      tls: ssl.SSLContext | None = None) -> None:
    lean.open_files_up_to_the_hard_limit()
    host, _, port = listen.rpartition(":")
    host = host.strip("[]") or "0.0.0.0"
    loop = asyncio.get_running_loop()
    try:
        if accept is None:
            server = await loop.create_server(lambda: lean.Connection(app), host, int(port), reuse_address=True,
                                              ssl=tls, ssl_handshake_timeout=10 if tls else None)
        else:
            sock = socket.create_server((host, int(port)), family=socket.AF_INET6 if ":" in host else socket.AF_INET,
                                        backlog=1024)
    except (OSError, ValueError, OverflowError) as e:
        if asyncio.iscoroutine(background):
            background.close()
        raise InvalidInput(f"cannot listen on {listen!r}: {e}") from None
    if accept is not None:
        try:
            with accept(sock):
                await run_until_stopped(listen, background)
        finally:
            sock.close()
        return
    try:
        await run_until_stopped(listen, background)
    finally:
        server.close()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(server.wait_closed(), 2)
