"""Calling a daemon: an asyncio JSON client over its Unix socket or a URL (TLS checked against the grid's
CA), a synchronous wrapper, and one retry helper with backoff for transient failures."""

from __future__ import annotations

import asyncio
import json
import random
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import aiohttp

from xos.errors import InvalidInput, Unavailable
from xos.leader import NotActive
from xos.wire import codec

T = TypeVar("T")
FAILOVER = 15.0  # seconds a client of a daemon with standbys keeps looking for the active one
C = TypeVar("C", bound="HttpClient")
S = TypeVar("S", bound="Sync")


def alternatives(url: str) -> list[str]:
    """The URLs of a daemon and its standbys (xos.leader), from one string: hosts comma-separated in the
    address as libpq takes them (`https://mrc-a:7400,mrc-b:7400/data` is https://mrc-a:7400/data and
    https://mrc-b:7400/data), or whole URLs comma-separated."""
    if "," not in url:
        return [url]
    if url.count("://") > 1:
        return [u.strip() for u in url.split(",") if u.strip()]
    scheme, sep, rest = url.partition("://")
    netloc, slash, path = rest.partition("/")
    hosts = [h.strip() for h in netloc.split(",")]
    if not sep or not all(hosts):
        raise InvalidInput(f"{url!r} is not URL or SCHEME://HOST:PORT,HOST:PORT/PATH")
    return [f"{scheme}://{h}{slash}{path}" for h in hosts]


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


class HttpClient:
    """An asyncio JSON client of one daemon, over its Unix socket or a base URL."""

    last_server_ms: float = 0.0  # time the daemon spent on the last call (its Server-Timing)

    def __init__(self, socket_path: str | None = None, base_url: str | None = None, timeout: float = 60.0,
                 what: str = "daemon", headers: dict[str, str] | None = None, ca: str | None = None) -> None:
        self.socket_path = socket_path
        self.ca = ca  # the grid's CA, for an https base URL (default: hostid.user_context's)
        # Several URLs, comma-separated, are an active daemon and its standbys: calls go to the one that answers.
        self.urls = [u.rstrip("/") for u in alternatives(base_url or "http://localhost")]
        self.base_url = self.urls[0]
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
        kw: dict[str, Any] = {}
        if body is not None:
            kw["json"] = body
        if read_timeout is not None:
            kw["timeout"] = aiohttp.ClientTimeout(total=None, sock_connect=5, sock_read=read_timeout)

        async def read(resp: aiohttp.ClientResponse) -> Any:
            text = await resp.text()
            timing = resp.headers.get("Server-Timing", "")
            if "dur=" in timing:
                self.last_server_ms = float(timing.split("dur=")[1])
            data = json.loads(text) if resp.content_type == "application/json" else text
            codec.check(resp.status, data)
            return data

        return await self._send(method, path, read, **kw)

    async def _send(self, method: str, path: str, read: Callable[[aiohttp.ClientResponse], Awaitable[T]],
                    **kw: Any) -> T:
        """One request, its answer through `read`. With several URLs, a daemon that cannot be reached or says it
        is not the active one (nothing was done) makes the call go to the next, round after round for up to
        FAILOVER seconds: a standby takes over within a few. A request whose answer was lost is tried again
        elsewhere only if it changes nothing (GET)."""
        if self._session is None:
            raise RuntimeError("use the client as an async context manager")
        deadline = asyncio.get_running_loop().time() + FAILOVER
        tried = 0
        while True:
            url = self.base_url
            try:
                try:
                    async with self._session.request(method, url + path, **kw) as resp:
                        return await read(resp)
                except aiohttp.ClientConnectorError:
                    raise
                except (aiohttp.ClientConnectionError, TimeoutError) as e:
                    if method != "GET":
                        raise Unavailable(f"{self.what} at {url} did not answer (it may or may not have done it): "
                                          f"{e or type(e).__name__}") from None
                    raise
            except (aiohttp.ClientConnectionError, FileNotFoundError, ConnectionRefusedError, TimeoutError,
                    NotActive) as e:
                if len(self.urls) == 1:
                    if isinstance(e, NotActive):
                        raise
                    raise Unavailable(f"{self.what} at {self.where} is not reachable: {e}") from None
                tried += 1
                self.base_url = self.urls[(self.urls.index(url) + 1) % len(self.urls)]
                left = deadline - asyncio.get_running_loop().time()
                if left <= 0:
                    raise Unavailable(f"no {self.what} at {', '.join(self.urls)} answers as the active one: "
                                      f"{e}") from None
                if tried % len(self.urls) == 0:  # a round without an answer: a takeover under way
                    await asyncio.sleep(min(0.25, left))


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
