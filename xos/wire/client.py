"""HTTP/JSON plumbing shared by every daemon and client: errors, bodies, stream frames, retries."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
import signal
import ssl
import struct
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import aiohttp
import orjson
from aiohttp import web

from xos.errors import BadRequest, InvalidInput, Unavailable, XosError, from_json

log = logging.getLogger(__name__)

MAX_BODY = 1 << 20
T = TypeVar("T")
C = TypeVar("C", bound="HttpClient")
S = TypeVar("S", bound="Sync")

# Stream frames: one channel byte, a 4-byte big-endian length, the payload.
FRAME = struct.Struct(">cI")
STDOUT, STDERR, EXIT = b"1", b"2", b"x"
STREAM_TYPE = "application/x-xos-stream"


def frame(channel: bytes, payload: bytes) -> bytes:
    """One frame of an exec stream."""
    return FRAME.pack(channel, len(payload)) + payload


async def read_body(request: web.Request, limit: int = MAX_BODY) -> dict[str, Any]:
    """The JSON object of a request, at most `limit` bytes; BadRequest for anything else."""
    if request.content_length is not None and request.content_length > limit:
        raise BadRequest(f"request body over {limit} bytes")
    # StreamReader.read(n) returns what has arrived so far, so a body in several TCP segments
    # needs the loop (found with 64 KiB inline files of the grid file system).
    chunks, size = [], 0
    while size <= limit:
        chunk = await request.content.read(limit + 1 - size)
        if not chunk:
            break
        chunks.append(chunk)
        size += len(chunk)
    raw = b"".join(chunks)
    if len(raw) > limit:
        raise BadRequest(f"request body over {limit} bytes")
    if not raw:
        return {}
    try:
        body = json.loads(raw)
    except ValueError as e:  # bad JSON or UTF-8, and a number of over 4,300 digits (not a JSONDecodeError)
        raise BadRequest(f"request body is not JSON: {str(e)[:200]}") from None
    if not isinstance(body, dict):
        raise BadRequest("request body must be a JSON object")
    return body


async def read_head(request: web.Request) -> dict[str, Any]:
    """The JSON object on the first line of a streamed body; what follows stays in request.content."""
    try:
        raw = await request.content.readline()
    except ValueError:
        raise BadRequest("the first line of the request body is too long") from None
    try:
        body = json.loads(raw) if raw.strip() else {}
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise BadRequest(f"request body does not start with a JSON line: {e}") from None
    if not isinstance(body, dict):
        raise BadRequest("request body must start with a JSON object")
    return body


def field(body: dict[str, Any], name: str, kind: type | tuple[type, ...], default: Any = None) -> Any:
    """body[name] if it has the right type, `default` if absent; InvalidInput naming the field otherwise."""
    value = body.get(name, default)
    if value is default:
        return value
    if not isinstance(value, kind) or (isinstance(value, bool) and kind is not bool):
        raise InvalidInput(f"field {name!r} has the wrong type", field=name)
    return value


def dumps(data: Any) -> bytes:
    """Compact JSON: orjson (a 10,000-entry directory listing: 37-43 ms with json, a tenth of it with
    orjson), json for what orjson refuses (integers past 64 bits)."""
    try:
        return orjson.dumps(data, option=orjson.OPT_NON_STR_KEYS)
    except TypeError:
        return json.dumps(data, separators=(",", ":")).encode()


def json_response(data: Any, status: int = 200) -> web.Response:
    """A JSON response."""
    return web.Response(body=dumps(data), status=status, content_type="application/json")


@web.middleware
async def error_middleware(request: web.Request,
                           handler: Callable[[web.Request], Awaitable[web.StreamResponse]]) -> web.StreamResponse:
    """Every failure as {"error": {"code", "message"}} with a stable code; never a traceback.

    Successful responses carry Server-Timing with the time spent inside the daemon.
    """
    t0 = time.perf_counter()
    try:
        resp = await handler(request)
        if not resp.prepared:
            resp.headers["Server-Timing"] = f"app;dur={(time.perf_counter() - t0) * 1000:.3f}"
        return resp
    except XosError as e:
        if e.http_status >= 500:
            log.warning("%s %s: %s", request.method, request.path, e)
        return json_response(e.to_json(), status=e.http_status)
    except web.HTTPException as e:
        if e.status < 400:
            raise
        code = {404: "not-found", 405: "method-not-allowed", 413: "too-large"}.get(e.status, "bad-request")
        return json_response({"error": {"code": code, "message": e.reason}}, status=e.status)
    except asyncio.CancelledError:
        raise
    except Exception as e:
        log.exception("%s %s failed", request.method, request.path)
        return json_response({"error": {"code": "internal", "message": f"internal error: {type(e).__name__}"}},
                             status=500)


async def retry(op: Callable[[], Awaitable[T]], attempts: int = 5, base: float = 0.05, cap: float = 1.0,
                retry_on: tuple[type[BaseException], ...] = (Unavailable, ConnectionError)) -> T:
    """Run `op`, retrying transient failures with jittered exponential backoff, a bounded number of times."""
    for i in range(attempts):
        try:
            return await op()
        except retry_on:
            if i == attempts - 1:
                raise
            await asyncio.sleep(min(cap, base * 2**i) * (0.5 + random.random() / 2))
    raise AssertionError("unreachable")


async def serve_tcp(app: web.Application, listen: str, background: Awaitable[Any] | None = None,
                    peers: tuple[web.Application, str, ssl.SSLContext] | None = None,
                    tls: ssl.SSLContext | None = None) -> None:
    """Serve `app` on HOST:PORT (over TLS with `tls`), with one background task beside it, until SIGTERM or
    SIGINT; with `peers`, also that app on its HOST:PORT over TLS (other hosts' links).

    The shape every TCP daemon of xos shares (MRC, OSD, job manager); the caller closes its own
    resources after this returns."""
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
            raise RuntimeError(f"the background loop of {listen} failed") from task.exception()
    finally:
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):  # its failure was raised above
                await task


class HttpClient:
    """An asyncio JSON client of one daemon, over its Unix socket or a base URL."""

    last_server_ms: float = 0.0  # time the daemon spent on the last call (its Server-Timing)

    def __init__(self, socket_path: str | None = None, base_url: str | None = None, timeout: float = 60.0,
                 what: str = "daemon", headers: dict[str, str] | None = None, ca: str | None = None) -> None:
        self.socket_path = socket_path
        self.ca = ca  # the grid's CA, for an https base URL (default: hostid.user_context's)
        self.base_url = base_url or "http://localhost"
        self.what = what
        self.headers = headers or {}  # sent with every request (a credential)
        self._timeout = aiohttp.ClientTimeout(total=None, sock_connect=5, sock_read=timeout)
        self._session: aiohttp.ClientSession | None = None

    @property
    def where(self) -> str:
        """Where the daemon is supposed to be, for messages."""
        return self.socket_path or self.base_url

    async def __aenter__(self: C) -> C:
        conn: aiohttp.BaseConnector
        if self.socket_path:
            conn = aiohttp.UnixConnector(path=self.socket_path)
        elif self.base_url.startswith("https://"):
            from xos.wire import hostid

            conn = aiohttp.TCPConnector(ssl=hostid.user_context(self.ca))
        else:
            conn = aiohttp.TCPConnector()
        self._session = aiohttp.ClientSession(connector=conn, timeout=self._timeout, headers=self.headers)
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        """Release the connection pool."""
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def _call(self, method: str, path: str, body: Any = None, read_timeout: float | None = None) -> Any:
        if self._session is None:
            raise RuntimeError("use the client as an async context manager")
        kw: dict[str, Any] = {}
        if body is not None:
            kw["json"] = body
        if read_timeout is not None:
            kw["timeout"] = aiohttp.ClientTimeout(total=None, sock_connect=5, sock_read=read_timeout)
        try:
            async with self._session.request(method, self.base_url + path, **kw) as resp:
                text = await resp.text()
                timing = resp.headers.get("Server-Timing", "")
                if "dur=" in timing:
                    self.last_server_ms = float(timing.split("dur=")[1])
                data = json.loads(text) if resp.content_type == "application/json" else text
                if resp.status >= 400:
                    raise from_json(data if isinstance(data, dict) else {}, resp.status)
                return data
        except (aiohttp.ClientConnectionError, FileNotFoundError, ConnectionRefusedError) as e:
            raise Unavailable(f"{self.what} at {self.where} is not reachable: {e}") from None


class Sync:
    """The verbs of an HttpClient without asyncio: each call runs on a private event loop."""

    def __init__(self, client: HttpClient) -> None:
        self._loop = asyncio.new_event_loop()
        self.client = client

    def __enter__(self: S) -> S:
        if self.client._session is None:
            self._loop.run_until_complete(self.client.__aenter__())
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Release the connection and the private event loop."""
        if not self._loop.is_closed():
            self._loop.run_until_complete(self.client.close())
            self._loop.close()

    def run(self, coro: Awaitable[T]) -> T:
        """Run one coroutine of `self.client` (or several, with asyncio.gather) to completion."""
        return self._loop.run_until_complete(coro)

    def __getattr__(self, verb: str) -> Callable[..., Any]:
        method = getattr(self.client, verb)
        if not asyncio.iscoroutinefunction(method):
            raise AttributeError(verb)

        def call(*args: Any, **kwargs: Any) -> Any:
            return self._loop.run_until_complete(method(*args, **kwargs))

        call.__doc__ = method.__doc__
        return call
