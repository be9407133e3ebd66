"""A lean HTTP/1.1 server for the grid file system's daemons (MRC, OSD): aiohttp's handlers and
responses, without aiohttp's request machinery.

aiohttp's server spends about as long on a small request as the daemon's own work does (DEVELOPERS.md,
"Measurements behind the code"), and a file system makes a request per create, per stat that misses,
per random read. Handlers keep aiohttp's interface: they
get a `Request` with the parts of `web.Request` the daemons use (method, path, match_info, query,
headers, content_length, read(), content.read()) and return `web.Response` objects; failures go
through `codec.error_middleware` as before, so every error keeps its JSON body and stable code.

Bodies need a Content-Length (every client of these daemons sends one); chunked ones are refused
(411). Requests on one connection are answered in order, one at a time. A handler whose answer is
large and made by blocking work (an OSD's object read) can make and send it from a worker thread
with `reply_from_thread`, away from the event loop and the GIL.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import resource
import socket
import ssl
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any
from urllib.parse import parse_qsl, unquote

from aiohttp import web
from multidict import CIMultiDict, CIMultiDictProxy, MultiDict, MultiDictProxy

from xos.wire.codec import error_body, error_middleware
from xos.wire.metrics import Registry
from xos.wire.metrics import handler as metrics_handler
from xos.wire.threaded import Sent, _head

log = logging.getLogger(__name__)

# Handlers are written against aiohttp's web.Request; they get a Request here, which quacks the same.
Handler = Callable[[Any], Awaitable["web.StreamResponse | Sent"]]
MAX_HEAD = 64 << 10
HEAD_BUFFER = 64 << 10  # where heads arrive; bodies that fit come with them
BODY_FIRST = 256 << 10  # a body's buffer starts at most this large, then doubles as its bytes come ...
BODY_STEP = 2 << 20  # ... by at most this at a time: never to a declared length at once
BODY_BUDGET = 128 << 20  # bytes of bodies all connections may hold; past it, they are read from as it frees
PIPELINE = 8  # requests a connection may have waiting for answers before it is read from again
STALLED = 30.0  # seconds a request may stay half received without a byte coming
class Body:
    """`request.content` as rpc.read_body reads it."""

    def __init__(self, data: bytes | bytearray) -> None:
        self._data = memoryview(data)
        self._pos = 0

    async def read(self, n: int = -1) -> bytes:
        """Up to `n` bytes of the body (all of what is left if n < 0)."""
        end = len(self._data) if n < 0 else min(len(self._data), self._pos + n)
        out = bytes(self._data[self._pos:end])
        self._pos = end
        return out


class Request:
    """One request, with the parts of aiohttp's `web.Request` the daemons use."""

    def __init__(self, method: str, path: str, query: str, headers: CIMultiDict[str],
                 body: bytes | bytearray, connection: Connection | None = None, close: bool = False) -> None:
        self.method = method
        self.path = path
        self.query: MultiDictProxy[str] = MultiDictProxy(MultiDict(_query(query)))
        self.headers: CIMultiDictProxy[str] = CIMultiDictProxy(headers)
        self.content_length = len(body)
        self.match_info: dict[str, str] = {}
        self._body = body
        self.content = Body(body)
        self.connection = connection  # None for a request made up outside a connection (tests)
        self.close = close  # the client asked for the connection to close after the answer
        self.app: App | None = None  # the app serving it (its metrics)
        self.route = ""  # the pattern of the route that took it

    @property
    def transport(self) -> Connection | None:
        """What aiohttp's request.transport is for hostid.peer_of: the connection, which knows its peer's
        certificate."""
        return self.connection

    async def read(self) -> bytes | bytearray:
        """The whole body."""
        return self._body


def _query(query: str) -> list[tuple[str, str]]:
    """parse_qsl's pairs; plain ones (an OSD's off=...&len=...) without its machinery, a tenth of its cost."""
    if not query:
        return []
    if "%" in query or "+" in query:
        return parse_qsl(query, keep_blank_values=True)
    return [(k, v) for k, _, v in (part.partition("=") for part in query.split("&") if part)]


class Router:
    """aiohttp's route patterns ("/v1/o/{fid}/{objno:[0-9]+}"), matched in the order they were added."""

    def __init__(self) -> None:
        self.routes: list[tuple[re.Pattern[str], str, dict[str, Handler]]] = []
        self._by_pattern: dict[str, dict[str, Handler]] = {}

    def _add(self, method: str, pattern: str, handler: Handler) -> None:
        methods = self._by_pattern.get(pattern)
        if methods is None:
            regex = re.sub(r"\{(\w+)(?::([^}]+))?\}", lambda m: f"(?P<{m[1]}>{m[2] or '[^/]+'})", pattern)
            methods = self._by_pattern[pattern] = {}
            self.routes.append((re.compile(f"^{regex}$"), pattern, methods))
        methods[method] = handler

    def add_get(self, pattern: str, handler: Handler) -> None:
        self._add("GET", pattern, handler)

    def add_post(self, pattern: str, handler: Handler) -> None:
        self._add("POST", pattern, handler)

    def add_put(self, pattern: str, handler: Handler) -> None:
        self._add("PUT", pattern, handler)

    def add_delete(self, pattern: str, handler: Handler) -> None:
        self._add("DELETE", pattern, handler)

    def resolve(self, request: Request) -> Handler:
        """The handler of a request (its match_info filled), or one raising 404 or 405."""
        for regex, pattern, methods in self.routes:
            m = regex.match(request.path)
            if m is None:
                continue
            handler = methods.get(request.method)
            if handler is None:
                return _raise(web.HTTPMethodNotAllowed(request.method, list(methods)))
            request.match_info = m.groupdict()
            request.route = pattern
            return handler
        return _raise(web.HTTPNotFound())


def _raise(exc: Exception) -> Handler:
    async def handler(request: Request) -> web.StreamResponse:
        raise exc

    return handler


class App:
    """Routes and the largest body a request may carry."""

    def __init__(self, client_max_size: int, metrics: Registry | None = None) -> None:
        self.router = Router()
        self.client_max_size = client_max_size
        self.metrics = metrics  # counted by codec.error_middleware
        if metrics is not None:
            self.router.add_get("/metrics", metrics_handler(metrics))


def _error(status: int, code: str, message: str) -> bytes:
    body = error_body(code, message)
    return _head(status, [("Content-Type", "application/json")], len(body), True) + body


class Connection(asyncio.BufferedProtocol):
    """One client connection: requests parsed as they arrive, answered in order.

    Heads (and the small bodies that come with them) arrive in one buffer; a larger body is received
    straight into a buffer of its own size. Appending each chunk of a 1 MiB body to a buffer and then
    copying the body out of it were a quarter of an OSD's CPU per MiB written."""

    def __init__(self, app: App, prefix: bytes = b"", peercert: dict[str, Any] | None = None) -> None:
        self.app = app
        self.prefix = prefix  # what a connection adopted from elsewhere sent before it came here
        # The verified certificate of the peer, where the TLS ended before this connection (an OSD's native
        # threads relay its bytes): as ssl's getpeercert() gives it.
        self.peercert = peercert
        self.buf = bytearray(HEAD_BUFFER)
        self.have = 0  # bytes of buf received and not yet consumed
        self.body: bytearray | None = None  # a body being received in place, and how much of it came
        self.got = 0
        # Requests read and not yet answered, each with the bytes of the body budget it holds until then.
        self.queue: asyncio.Queue[tuple[Request, bool, int] | None] = asyncio.Queue()
        self.transport: asyncio.Transport | None = None
        self.writable = asyncio.Event()
        self.writable.set()
        self.worker: asyncio.Task[None] | None = None
        self.closing = False
        # The head of the request being received: (method, target, version, headers, body start, length).
        self._head: tuple[str, str, str, CIMultiDict[str], int, int] | None = None
        self.length = 0  # the declared length of the body being received in place
        self.held = 0  # bytes of the budget this connection's body buffer holds
        self.paused = False
        self.grow_by = 0  # bytes the body's buffer is to grow by before the next read (reserved already)
        self.stall: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        global _open
        _open += 1
        self.transport = transport  # type: ignore[assignment]  # uvloop's is not asyncio.Transport's subclass
        self.worker = asyncio.ensure_future(self._serve())
        view, self.prefix = memoryview(self.prefix), b""
        while view and not self.closing:  # before the transport reads on: these bytes came first
            with self.get_buffer(len(view)) as buf:  # released before the protocol may resize what it views
                k = min(len(buf), len(view))
                buf[:k] = view[:k]
            self.buffer_updated(k)
            view = view[k:]

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        """The transport's extra information; the peer's certificate also where the TLS ended elsewhere."""
        if name == "peercert" and self.peercert is not None:
            return self.peercert
        return self.transport.get_extra_info(name, default) if self.transport is not None else default

    def connection_lost(self, exc: Exception | None) -> None:
        global _open
        _open -= 1
        self.closing = True
        self.writable.set()
        self._release()
        if self.stall is not None:
            self.stall.cancel()
        if self.worker is not None:
            self.worker.cancel()

    # -- what connections may hold: bodies grow as bytes come, under one budget, and stalls end --------

    def _take(self, n: int) -> bool:
        """Grow this connection's share of the body budget by `n`; False if that would overspend it."""
        global _held
        if _held + n > BODY_BUDGET:
            return False
        _held += n
        self.held += n
        return True

    def _grow(self) -> None:
        """Room for more of the body being received: a step more if the budget allows, else stop reading
        this connection until another gives some back."""
        assert self.body is not None
        step = min(BODY_STEP, max(BODY_FIRST, len(self.body)), self.length - len(self.body))
        if self._take(step):
            self.grow_by = step  # made at the next get_buffer: the transport may still hold a view of it now
            self._resume()
        else:
            self._pause()
            if self not in _waiting:
                _waiting.append(self)

    def _release(self) -> None:
        """Give back the budget of the body being received, and of requests read and never answered."""
        held, self.held = self.held, 0
        while not self.queue.empty():
            item = self.queue.get_nowait()
            if item is not None:
                held += item[2]
        _give_back(held)

    @staticmethod
    def _wake() -> None:
        """Let connections waiting for the body budget read again, as far as it goes."""
        for other in list(_waiting):  # once round: one that still finds no room goes to the back again
            if _held >= BODY_BUDGET:
                break
            _waiting.remove(other)
            if other.body is not None and not other.closing:
                other._grow()

    def _pause(self) -> None:
        if not self.paused and self.transport is not None and not self.closing:
            self.paused = True
            self.transport.pause_reading()

    def _resume(self) -> None:
        if self.paused and self.transport is not None and not self.closing:
            self.paused = False
            self.transport.resume_reading()

    def _watch(self) -> None:
        """(Re)start the stall timer while a request is half received; stop it when none is."""
        if self.stall is not None:
            self.stall.cancel()
            self.stall = None
        if not self.closing and (self.body is not None or self._head is not None or self.have):
            self.stall = asyncio.get_running_loop().call_later(STALLED, self._stalled)

    def _stalled(self) -> None:
        log.info("closing a connection whose request stalled half received for %.0fs", STALLED)
        self.closing = True
        self._release()
        if self.transport is not None:
            self.transport.close()

    async def drained(self) -> None:
        """Wait until everything written to the transport has gone to the kernel."""
        assert self.transport is not None
        if not self.transport.get_write_buffer_size():
            return
        low, high = self.transport.get_write_buffer_limits()
        self.transport.set_write_buffer_limits(high=0)  # pauses writing until the buffer is empty
        try:
            await self.writable.wait()
        finally:
            if not self.transport.is_closing():  # uvloop refuses limits on a closed transport
                self.transport.set_write_buffer_limits(high=high, low=low)

    def pause_writing(self) -> None:
        self.writable.clear()

    def resume_writing(self) -> None:
        self.writable.set()

    def get_buffer(self, sizehint: int) -> memoryview:
        if self.closing:  # refused or stalled: the transport may read on until the answers before go out
            return memoryview(_DROPPED)
        if self.body is not None:  # never full here: a full one is grown or paused (_grow) before the next read
            if self.grow_by:
                self.body.extend(bytes(self.grow_by))
                self.grow_by = 0
            return memoryview(self.body)[self.got:]
        # Resized only here: while buffer_updated runs, the loop still holds a view of the buffer it
        # filled, and resizing an exported bytearray raises (a fatal error on the transport).
        if len(self.buf) - self.have < 4096:
            self.buf.extend(bytes(len(self.buf)))
        elif len(self.buf) > 4 * HEAD_BUFFER and self.have < HEAD_BUFFER:
            del self.buf[HEAD_BUFFER:]  # a long head or a body that fitted made it grow
        return memoryview(self.buf)[self.have:]

    def buffer_updated(self, nbytes: int) -> None:
        if self.closing:
            return
        if self.body is not None:
            self.got += nbytes
            if self.got < self.length:
                if self.got == len(self.body):
                    self._grow()
                self._watch()
                return
            body, self.body = self.body, None
            held, self.held = self.held, 0
            self._request(body, held)  # its budget goes back once it is answered
        else:
            self.have += nbytes
        self._consume()
        self._watch()

    def _consume(self) -> None:
        """Parse what the head buffer holds into requests, as far as it goes."""
        while not self.closing:
            if self._head is None:
                end = self.buf.find(b"\r\n\r\n", 0, min(self.have, MAX_HEAD + 4))
                if end < 0:
                    if self.have > MAX_HEAD:
                        self._refuse(431, "too-large", "request head over 64 KiB")
                    return
                try:
                    method, target, version, headers = self._parse(bytes(self.buf[:end]))
                except ValueError as e:
                    self._refuse(400, "bad-request", f"malformed request: {e}")
                    return
                if "chunked" in headers.get("Transfer-Encoding", "").lower():
                    self._refuse(411, "bad-request", "a body needs a Content-Length (chunked bodies are not taken)")
                    return
                try:
                    length = int(headers.get("Content-Length", "0"))
                    if length < 0:
                        raise ValueError
                except ValueError:
                    self._refuse(400, "bad-request", "bad Content-Length")
                    return
                if length > self.app.client_max_size:
                    self._refuse(413, "too-large", f"request body over {self.app.client_max_size} bytes")
                    return
                self._head = (method, target, version, headers, end + 4, length)
            start, length = self._head[4], self._head[5]
            if self.have - start < length:
                if len(self.buf) >= start + length:
                    return  # the body will fit where it is
                # The rest is received in place, into a buffer that grows as it comes: a declared length is
                # only a promise, and 200 connections promising 17 MB each must not cost 3.4 GB at once.
                self.got = self.have - start
                self.body = bytearray(self.buf[start:self.have])
                self.have, self.length = 0, length
                self._grow()  # a first step, or wait for room
                return
            done = start + length
            payload = bytes(self.buf[start:done])
            rest = self.have - done
            self.buf[:rest] = self.buf[done:self.have]
            self.have = rest
            self._request(payload, 0)

    def _request(self, body: bytes | bytearray, held: int) -> None:
        assert self._head is not None
        method, target, version, headers, _, _ = self._head
        self._head = None
        path, _, query = target.partition("?")
        conn = headers.get("Connection", "").lower()
        close = conn == "close" or (version == "HTTP/1.0" and conn != "keep-alive")
        self.queue.put_nowait((Request(method, unquote(path), query, headers, body, self, close), close, held))
        if close:
            self.closing = True
        elif self.queue.qsize() >= PIPELINE:
            self._pause()  # pipelined faster than answered: read on once the worker catches up

    @staticmethod
    def _parse(head: bytes) -> tuple[str, str, str, CIMultiDict[str]]:
        lines = head.decode("latin-1").split("\r\n")
        parts = lines[0].split(" ")
        if len(parts) != 3 or not parts[1].startswith("/") or parts[2] not in ("HTTP/1.1", "HTTP/1.0"):
            raise ValueError(f"request line {lines[0][:80]!r}")
        headers: CIMultiDict[str] = CIMultiDict()
        for line in lines[1:]:
            name, sep, value = line.partition(":")
            if not sep or not name or name != name.strip():
                raise ValueError(f"header line {line[:80]!r}")
            headers.add(name, value.strip())
        return parts[0], parts[1], parts[2], headers

    def _refuse(self, status: int, code: str, message: str) -> None:
        """Answer a request that cannot be read, after those before it, and close."""
        self.closing = True
        self.buf, self.have, self.body = bytearray(), 0, None
        self.queue.put_nowait(None)
        self._refusal = _error(status, code, message)

    def _write(self, resp: web.StreamResponse, close: bool) -> None:
        assert self.transport is not None
        body = resp.body if isinstance(resp, web.Response) else b""
        if not isinstance(body, bytes | bytearray | memoryview):
            body = bytes(body or b"")  # type: ignore[arg-type]
        headers = list(resp.headers.items())
        if "Content-Type" not in resp.headers and isinstance(resp, web.Response) and body:
            headers.append(("Content-Type", resp.content_type))
        self.transport.write(_head(resp.status, headers, len(body), close) + body if len(body) < 65536
                             else _head(resp.status, headers, len(body), close))
        if len(body) >= 65536:
            self.transport.write(body)  # no copy of a large body into the head's buffer

    async def _serve(self) -> None:
        assert self.transport is not None
        try:
            while True:
                item = await self.queue.get()
                if self.paused and self.queue.qsize() < PIPELINE // 2 and self not in _waiting:
                    self._resume()
                if item is None:
                    self.transport.write(self._refusal)
                    self.transport.close()
                    return
                request, close, held = item
                try:
                    request.app = self.app
                    handler = self.app.router.resolve(request)
                    resp = await error_middleware(request, handler)  # type: ignore[arg-type]
                finally:
                    _give_back(held)
                if isinstance(resp, Sent):
                    close = close or not resp.ok
                else:
                    self._write(resp, close)
                if close:
                    self.transport.close()
                    return
                await self.writable.wait()
        except asyncio.CancelledError:
            pass
        except Exception:  # a bug here must not leave the client waiting forever
            log.exception("HTTP connection failed")
            with contextlib.suppress(Exception):
                self.transport.close()


_DROPPED = bytearray(HEAD_BUFFER)  # bytes after a refusal are read here and dropped (an empty buffer is fatal)
_open = 0  # connections being served
_held = 0  # bytes of request bodies all connections hold, against BODY_BUDGET
_waiting: list[Connection] = []  # connections paused until the budget frees


def stats() -> dict[str, int]:
    """Connections served, bytes of request bodies held against the budget, connections waiting for it."""
    return {"connections": _open, "body_bytes_held": _held, "waiting_for_budget": len(_waiting)}


def _give_back(n: int) -> None:
    """Bytes of the body budget freed: connections waiting for it read again."""
    global _held
    _held -= n
    if n:
        Connection._wake()


async def adopt(app: App, sock: socket.socket, prefix: bytes, peercert: dict[str, Any] | None = None,
                tls: ssl.SSLContext | None = None) -> None:
    """Serve a connection accepted elsewhere (an OSD's native read threads), starting with the bytes it has
    already sent there; `peercert`: the certificate its peer showed there; `tls`: its TLS begins here."""
    sock.setblocking(False)
    try:
        await asyncio.get_running_loop().connect_accepted_socket(lambda: Connection(app, prefix, peercert), sock,
                                                                 ssl=tls, ssl_handshake_timeout=10 if tls else None)
    except OSError as e:
        log.debug("adopted connection gone: %s", e)
        sock.close()


def run(main: Coroutine[Any, Any, Any]) -> Any:
    """asyncio.run on uvloop's event loop, on which this server's round trips were measured faster than on
    asyncio's own (DEVELOPERS.md, "Measurements behind the code")."""
    import uvloop

    return uvloop.run(main)


def open_files_up_to_the_hard_limit() -> None:
    """Raise this process's soft limit on open files to its hard one: a service of many clients must not
    stop accepting at the 1,024 a login shell's soft limit often is (asyncio then pauses accepting for a
    second, the OSD's native acceptor sleeps)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = 1 << 20 if hard == resource.RLIM_INFINITY else hard  # the kernel's default fs.nr_open
    if soft != resource.RLIM_INFINITY and soft < want:
        with contextlib.suppress(ValueError, OSError):  # a lower fs.nr_open: keep what there is
            resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
