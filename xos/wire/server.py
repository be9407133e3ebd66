"""Serving: an app (aiohttp's, or the lean server's) on a TCP address until SIGTERM or SIGINT, with one
background task beside it; the shape every TCP daemon of xos shares."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import socket
import ssl
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from xos.errors import InvalidInput, XosError
from xos.wire import lean

log = logging.getLogger(__name__)
HANDSHAKE_TIMEOUT = 10.0  # seconds a client has to finish its TLS handshake


def _feed(proto: asyncio.BaseProtocol, data: bytes) -> None:
    """Bytes to a protocol, buffered or not."""
    if hasattr(proto, "get_buffer"):  # uvloop's TLS protocol is one without asyncio.BufferedProtocol's class
        view = memoryview(data)
        while view:
            buf = memoryview(proto.get_buffer(len(view)))
            n = min(len(buf), len(view))
            buf[:n] = view[:n]
            proto.buffer_updated(n)  # type: ignore[attr-defined]
            view = view[n:]
    else:
        proto.data_received(data)  # type: ignore[attr-defined]


class _Gate(asyncio.Protocol):
    """The app's place while the handshake is made: what TLS hands on before the app has its transport (the
    request that came with the client's Finished) waits here."""

    def __init__(self) -> None:
        self.early: list[bytes] = []
        self.eof = False
        self.lost: tuple[Exception | None] | None = None

    def data_received(self, data: bytes) -> None:
        self.early.append(bytes(data))

    def eof_received(self) -> None:
        self.eof = True  # (TLS closes the connection on EOF whatever this answers, and warns if it is True)

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = (exc,)


class TlsAcceptor(asyncio.Protocol):
    """A TCP connection whose TLS handshake is made here before `factory`'s protocol gets it, so that a
    refused one is said: asyncio and uvloop log a failed server handshake at debug level only. A client that
    leaves mid-handshake is not worth a line (as with the OSD's native threads)."""

    def __init__(self, factory: Callable[[], asyncio.BaseProtocol], tls: ssl.SSLContext) -> None:
        self.factory, self.tls = factory, tls
        self.early: list[bytes] = []  # read before TLS took the connection (uvloop reads at once)
        self.task: asyncio.Task[None] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # (uvloop's TCP transport is no asyncio.Transport by class, though it is one by what it does)
        self.task = asyncio.ensure_future(self._handshake(transport))  # type: ignore[arg-type]

    def data_received(self, data: bytes) -> None:
        self.early.append(bytes(data))

    def connection_lost(self, exc: Exception | None) -> None:
        if self.task is not None and not self.task.done():
            self.task.cancel()

    async def _handshake(self, transport: asyncio.Transport) -> None:
        loop = asyncio.get_running_loop()
        gate = _Gate()
        starting = asyncio.ensure_future(loop.start_tls(transport, gate, self.tls, server_side=True,
                                                        ssl_handshake_timeout=HANDSHAKE_TIMEOUT))
        await asyncio.sleep(0)  # its first step has put TLS on the transport and queued its connection_made

        def hand_on() -> None:  # after that connection_made: what was read before goes to TLS
            tls_protocol = transport.get_protocol()
            for data in self.early:
                _feed(tls_protocol, data)
            self.early.clear()

        if self.early:
            loop.call_soon(hand_on)
        try:
            app_transport = await starting
        except Exception as e:  # noqa: BLE001 - whatever failed the handshake, the connection goes
            if isinstance(e, ssl.SSLError) and not isinstance(e, (ssl.SSLEOFError, ssl.SSLZeroReturnError)):
                peer = transport.get_extra_info("peername") or ("?", 0)
                log.info("TLS from %s refused: %s", peer[0], getattr(e, "reason", None) or e)
            transport.abort()
            return
        if app_transport is None or gate.lost is not None:
            transport.abort()
            return
        proto = self.factory()
        proto.connection_made(app_transport)
        app_transport.set_protocol(proto)
        for data in gate.early:
            _feed(proto, data)
        if gate.eof and hasattr(proto, "eof_received"):
            proto.eof_received()


class TlsSite(web.BaseSite):
    """aiohttp's TCP site over TLS, its handshakes made by a TlsAcceptor (refusals said)."""

    __slots__ = ("_host", "_port")

    def __init__(self, runner: web.BaseRunner, host: str, port: int, tls: ssl.SSLContext) -> None:
        super().__init__(runner, ssl_context=tls)
        self._host, self._port = host, port

    @property
    def name(self) -> str:
        """Where it listens."""
        return f"https://{self._host}:{self._port}"

    async def start(self) -> None:
        """Listen."""
        await super().start()
        server, tls = self._runner.server, self._ssl_context
        assert server is not None and tls is not None
        self._server = await asyncio.get_running_loop().create_server(
            lambda: TlsAcceptor(server, tls), self._host, self._port, backlog=self._backlog, reuse_address=True)


async def start_site(runner: web.BaseRunner, host: str, port: int, tls: ssl.SSLContext | None) -> None:
    """`runner`'s app on HOST:PORT: over TLS (refused handshakes said) with `tls`, else plain."""
    if tls is None:
        await web.TCPSite(runner, host, port, reuse_address=True).start()
    else:
        await TlsSite(runner, host, port, tls).start()


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
                await start_site(runner, host or "0.0.0.0", int(port), ctx)
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
            if tls is None:
                server = await loop.create_server(lambda: lean.Connection(app), host, int(port), reuse_address=True)
            else:
                server = await loop.create_server(lambda: TlsAcceptor(lambda: lean.Connection(app), tls), host,
                                                  int(port), reuse_address=True)
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
