"""Images between hosts: a checkpoint streamed as a tar made on the fly to a node's peer API over TLS.

Used by a node migrating a workspace and by the job manager resuming a job elsewhere; it loads nothing
of the node (no netlink, cgroups or native modules).
"""

from __future__ import annotations

import asyncio
import os
import ssl
from collections.abc import Callable
from typing import Any

import aiohttp

from xos.checkpoint import image
from xos.errors import Unavailable
from xos.wire import codec, hostid


async def peer_stage(url: str, tls: ssl.SSLContext, path: str, stage: str, part: str) -> None:
    """Send one pre-dump part to the target, which verifies and keeps it for the restore."""
    await _peer_put(url, tls, path, "/v1/peer/stage", {"stage": stage, "part": part})


async def peer_restore(url: str, tls: ssl.SSLContext, path: str, name: str, stage: str | None = None,
                       on_sent: Callable[[int], None] | None = None,
                       lazy: tuple[str, int] | None = None) -> dict[str, Any]:
    """Stream the image directory at `path`, as a tar made on the fly, to the peer API at `url` and have
    it restored there (`lazy`: its memory from the page server at that address and port)."""
    params = {"name": name}
    if stage:
        params["stage"] = stage
    if lazy:
        params.update(lazy_address=lazy[0], lazy_port=str(lazy[1]))
    return await _peer_put(url, tls, path, "/v1/peer/restore", params, on_sent)


async def _peer_put(url: str, tls: ssl.SSLContext, path: str, route: str, params: dict[str, str],
                    on_sent: Callable[[int], None] | None = None) -> dict[str, Any]:
    sent_all = False

    async def chunks() -> Any:
        nonlocal sent_all
        loop = asyncio.get_running_loop()
        blocks = image.stream(path) if os.path.isdir(path) else _file_blocks(path)
        while (block := await loop.run_in_executor(None, next, blocks, None)) is not None:
            yield block
            if on_sent is not None:
                on_sent(len(block))
        sent_all = True

    headers: dict[str, str] = {}
    if os.path.isdir(path):  # the tar is made as it goes: its length is known only at the end
        files = image.manifest_of(path)["files"]
        headers["X-Image-Bytes"] = str(sum(os.path.getsize(os.path.join(path, a)) for a in files))
    else:
        headers["Content-Length"] = str(os.path.getsize(path))
    timeout = aiohttp.ClientTimeout(total=None, sock_connect=5, sock_read=300)
    try:
        await hostid.check_server(url, tls, "node")  # a node's, before any byte of the image goes
        async with aiohttp.ClientSession(timeout=timeout, connector=aiohttp.TCPConnector(ssl=tls)) as session:
            async with session.put(
                    f"{url}{route}", params=params, data=chunks(), headers=headers) as resp:
                data = await resp.json(content_type=None)
                codec.check(resp.status, data)
                return dict(data)
    except (aiohttp.ClientError, OSError, ValueError) as e:
        if sent_all:  # it has the image whole: whether it acted on it is not known here
            raise AnswerLost(f"node {url} took the image and did not answer: {e}") from None
        raise Unavailable(f"node {url} did not take the image: {e}") from None


class AnswerLost(Unavailable):
    """A peer was sent a request whole and its answer did not come back: it may have acted on it."""

    code = "answer-lost"


async def peer_get(url: str, tls: ssl.SSLContext, route: str) -> dict[str, Any]:
    try:
        await hostid.check_server(url, tls, "node")
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10),
                                         connector=aiohttp.TCPConnector(ssl=tls)) as session, \
                session.get(f"{url}{route}") as resp:
            data = await resp.json(content_type=None)
            codec.check(resp.status, data)
            return dict(data)
    except (aiohttp.ClientError, OSError, ValueError, TimeoutError) as e:
        raise Unavailable(f"node {url} did not answer: {e}") from None



def _file_blocks(path: str) -> Any:
    with open(path, "rb") as f:
        while block := f.read(image.CHUNK):
            yield block
