"""The job manager's link to nodes: their peer API over TLS (each certificate checked as role node before a
credential goes), a job's files and checkpoint image fetched, a checkpoint sent back for restore."""

from __future__ import annotations

import json
import logging
import math
import os
import ssl
import urllib.parse
from typing import Any

import aiohttp

from xos.checkpoint import transfer
from xos.errors import InvalidInput, NotFound, Unavailable
from xos.leader import EPOCH_HEADER
from xos.wire import codec, hostid

log = logging.getLogger(__name__)

MAX_OUTPUT_PART = 16 << 20  # what a node sends of a file at once
USAGE = ("cpu_seconds", "memory_peak", "bytes_in", "bytes_out", "wall_seconds")  # what accounting reads of it


class OutputTooLarge(InvalidInput):
    """A job's output is larger than the job manager keeps."""

    code = "output-too-large"


def ws_name(job_id: str) -> str:
    """The name of a job's workspace on its node."""
    return "job-" + job_id.replace(".", "-")


class Nodes:
    """Every node's peer URL and one connection pool to them."""

    def __init__(self, urls: dict[str, str], tls: ssl.SSLContext) -> None:
        self.urls = urls  # name -> peer URL
        self.tls = tls
        self.epoch = 0  # this job manager's (xos.leader), sent with every call: nodes refuse an older one's
        self._session: aiohttp.ClientSession | None = None

    @property
    def session(self) -> aiohttp.ClientSession:
        """The pool, made on first use (inside the event loop)."""
        if self._session is None:
            self._session = aiohttp.ClientSession(headers={EPOCH_HEADER: str(self.epoch)} if self.epoch else None)
        return self._session

    async def close(self) -> None:
        """Release the pool."""
        if self._session is not None:
            await self._session.close()
            self._session = None

    def url(self, node: str) -> str:
        """`node`'s peer URL; NotFound for a node this job manager does not know."""
        url = self.urls.get(node)
        if url is None:
            raise NotFound(f"no node {node!r}")
        return url

    async def call(self, method: str, node: str, path: str, body: Any = None) -> Any:
        """One call to `node`'s peer API: its JSON answer, or its bytes for anything else."""
        url = self.url(node)
        try:
            await hostid.check_server(url, self.tls, "node")  # credentials go to nodes only
            async with self.session.request(method, f"{url}{path}", json=body, ssl=self.tls,
                                            timeout=aiohttp.ClientTimeout(total=60, sock_connect=3)) as resp:
                if resp.content_type == "application/json":
                    data = await resp.json()
                    codec.check(resp.status, data)
                    return data
                raw = await resp.read()
                if resp.status >= 400:
                    raise Unavailable(f"node {node}: HTTP {resp.status}")
                return raw
        except (TimeoutError, aiohttp.ClientError, OSError) as e:
            raise Unavailable(f"node {node} at {url} is not reachable: {e}") from None

    async def workspaces(self, node: str) -> list[dict[str, Any]]:
        """The workspaces `node` lists, each checked (`checked_workspace`)."""
        listing = await self.call("GET", node, "/v1/peer/workspaces")
        if not isinstance(listing, list):
            raise _malformed(node, "its workspace listing is not a list")
        return [checked_workspace(node, ws) for ws in listing]

    async def workspace(self, node: str, job_id: str) -> dict[str, Any]:
        """A job's workspace as `node` describes it, checked (`checked_workspace`)."""
        return checked_workspace(node, await self.call("GET", node, f"/v1/peer/workspaces/{ws_name(job_id)}"))

    async def read_file(self, node: str, job_id: str, name: str, offset: int | str = 0) -> bytes:
        """Up to MAX_OUTPUT_PART bytes of the file `name` of a job's directory, from `offset` on."""
        data = await self.call("GET", node, f"/v1/peer/workspaces/{ws_name(job_id)}/file?"
                                            f"file={urllib.parse.quote(name)}&offset={offset}")
        return bytes(data)

    async def collect(self, node: str, job_id: str, name: str, dest: str, cap: int) -> None:
        """Copy the file `name` of the job's directory to `dest` (0600), whole, in parts, up to `cap` bytes
        (OutputTooLarge past it, the first `cap` bytes kept): a job's output must not fill our disk."""
        over = False
        with open(os.open(dest + ".part", os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600), "wb") as f:
            while True:
                part = await self.read_file(node, job_id, name, f.tell())
                if f.tell() + len(part) > cap:
                    f.write(part[:cap - f.tell()])
                    over = True
                    break
                f.write(part)
                if len(part) < MAX_OUTPUT_PART:
                    break
        os.replace(dest + ".part", dest)
        if over:
            raise OutputTooLarge(f"{name} is larger than the job manager keeps ({cap} bytes); its first {cap} "
                                 "bytes were kept", limit=cap)

    async def fetch_image(self, node: str, job_id: str, dest: str) -> dict[str, Any]:
        """Have `node` checkpoint the job and send the image, written to `dest` (0600); what it took."""
        url = f"{self.url(node)}/v1/peer/workspaces/{ws_name(job_id)}/checkpoint?send=1"
        try:
            await hostid.check_server(self.url(node), self.tls, "node")
            async with self.session.post(url, json={}, ssl=self.tls,
                                         timeout=aiohttp.ClientTimeout(total=None, sock_connect=3,
                                                                       sock_read=300)) as resp:
                if resp.status >= 400:  # a failure's body is JSON; a success's need not be
                    codec.check(resp.status, await resp.json(content_type=None))
                summary = json.loads(resp.headers.get("X-Checkpoint", "{}"))
                with open(os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600), "wb") as f:
                    async for block in resp.content.iter_chunked(1 << 20):
                        f.write(block)
        except (TimeoutError, aiohttp.ClientError, OSError, ValueError) as e:
            raise Unavailable(f"node {node} did not send the checkpoint of job {job_id}: {e}") from None
        times = summary.get("times", {})
        return {"bytes": summary.get("bytes", 0), "frozen": times.get("freeze", 0) + times.get("dump", 0)}

    async def restore(self, node: str, job_id: str, image: str) -> None:
        """Have `node` restore the job from the checkpoint image file `image`."""
        await transfer.peer_restore(self.url(node), self.tls, image, ws_name(job_id))


def checked_workspace(node: str, ws: Any) -> dict[str, Any]:
    """A workspace as node `node` described it, if it has the shape the job manager acts on: a name, how its
    program ended (an exit status or a signal number) once it has, and usage figures that are finite and
    not negative. Unavailable otherwise: a node's answer is hostile until checked, and one node's garbage
    must not stop the passes over every node's jobs."""
    if not isinstance(ws, dict) or not isinstance(ws.get("name"), str):
        raise _malformed(node, "a workspace without a name")
    ended = ws.get("main_exit")
    if ended is not None and not (isinstance(ended, dict) and len(ended) == 1 and
                                  all(k in ("exit", "signal") and _count(v) for k, v in ended.items())):
        raise _malformed(node, f"workspace {ws['name']!r} ended neither with an exit status nor a signal")
    usage = ws.get("usage", {})
    if not isinstance(usage, dict) or not all(_count(usage.get(k, 0)) for k in USAGE):
        raise _malformed(node, f"workspace {ws['name']!r} has usage figures that are not counts")
    return ws


def _count(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v) and 0 <= v < 1e18


def _malformed(node: str, what: str) -> Unavailable:
    log.warning("node %s answered %s", node, what)
    return Unavailable(f"node {node} answered {what}")
