"""Calling a daemon: an asyncio JSON client over its Unix socket or a URL (TLS checked against the grid's
CA), a synchronous wrapper, and one retry helper with backoff for transient failures."""

from __future__ import annotations

import asyncio
import json
import random
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import aiohttp

from xos.errors import Unavailable
from xos.wire import codec

T = TypeVar("T")
C = TypeVar("C", bound="HttpClient")
S = TypeVar("S", bound="Sync")


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
                codec.check(resp.status, data)
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
