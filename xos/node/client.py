"""Python API of a node: the verbs of `xos ws`, over the node daemon's Unix socket."""

from __future__ import annotations

import base64
import json
import os
from collections.abc import AsyncIterator, Callable
from typing import Any, TypeVar

import aiohttp

from xos.errors import Unavailable
from xos.paths import node_socket
from xos.wire import client as rpc
from xos.wire import codec

Output = Callable[[bytes], None]
T = TypeVar("T")


def _alloc(cpu: Any = None, memory: Any = None, pids: Any = None, egress: Any = None,
           ingress: Any = None) -> dict[str, Any]:
    return {k: v for k, v in dict(cpu=cpu, memory=memory, pids=pids, egress=egress, ingress=ingress).items()
            if v is not None}


class Client(rpc.HttpClient):
    """An asyncio client of one node daemon; use as `async with Client() as node:`."""

    def __init__(self, socket_path: str | None = None, timeout: float = 60.0) -> None:
        super().__init__(socket_path or node_socket(), timeout=timeout, what="node daemon")

    async def info(self) -> dict[str, Any]:
        """The node: name, cgroup hierarchy, capacity, what is allocated."""
        return await self._call("GET", "/v1/node")

    async def offer(self, cpu: float | str | None = None, memory: int | str | None = None) -> dict[str, Any]:
        """Change what the node hands out while it runs; running workspaces keep theirs."""
        return await self._call("PATCH", "/v1/node", {k: v for k, v in (("cpu", cpu), ("memory", memory)) if v})

    async def ad(self) -> dict[str, Any]:
        """The node's ClassAd (HTCondor attribute names), as a job manager matches against it."""
        return await self._call("GET", "/v1/node/ad")

    async def create(self, name: str, *, uid: int | None = None, gid: int | None = None, vo: str | None = None,
                     user: str | None = None, credential: str | None = None, main: list[str] | None = None,
                     out: str | None = None, env: dict[str, str] | None = None, err: str | None = None,
                     stdin: str | None = None, input: bytes | None = None, grid: list[str] | None = None,
                     **alloc: Any) -> dict[str, Any]:
        """Create a workspace running as uid/gid or as the account a grid identity (vo and user, or a
        credential's subject) maps to; allocation keywords: cpu, memory, pids, egress, ingress. The main
        program's stdio: `stdin`, `out`, `err` (names in the workspace directory, or absolute paths
        opened as its user); `input` is written to `stdin` first."""
        body: dict[str, Any] = {"name": name, "allocation": _alloc(**alloc)}
        if credential is not None:
            body["credential"] = credential
        if grid:  # MRC_URL/VOLUME each, mounted at /run/xos-work/grid/VOLUME with the credential
            body["grid"] = grid
        if main is not None:  # the program init starts: the workload a checkpoint takes whole
            body["main"] = {"argv": main, "out": out, "env": env, "err": err, "in": stdin}
            if input is not None:
                body["main"]["input"] = base64.b64encode(input).decode()
        if vo is not None or user is not None:
            body.update(vo=vo, user=user)
        if uid is not None:
            body["uid"] = uid
        if gid is not None:
            body["gid"] = gid
        return await self._call("POST", "/v1/workspaces", body, read_timeout=120)

    async def sample(self) -> dict[str, Any]:
        """Sample every workspace now; how many and how long the sweep took inside the daemon."""
        return await self._call("POST", "/v1/node/sample")

    async def ls(self) -> list[dict[str, Any]]:
        """Every live workspace."""
        return await self._call("GET", "/v1/workspaces")

    async def stat(self, name: str) -> dict[str, Any]:
        """Allocation (as the kernel holds it), usage, address and state of a workspace."""
        return await self._call("GET", f"/v1/workspaces/{name}")

    async def set(self, name: str, checkpoint_every: str | float | None = None, keep: int | None = None,
                  **alloc: Any) -> dict[str, Any]:
        """Renegotiate the allocation of a running workspace; periodic checkpoints every `checkpoint_every`
        ("10m"; 0 stops them), keeping the newest `keep`."""
        body: dict[str, Any] = {"allocation": _alloc(**alloc)}
        if checkpoint_every is not None or keep is not None:
            body["checkpoint"] = {"every": checkpoint_every if checkpoint_every is not None else 0, "keep": keep}
        return await self._call("PATCH", f"/v1/workspaces/{name}", body)

    async def checkpoint(self, name: str, out: str, leave_running: bool = False) -> dict[str, Any]:
        """Dump a workspace's main program tree into the image file `out` (removed unless leave_running)."""
        return await self._call("POST", f"/v1/workspaces/{name}/checkpoint",
                                {"out": os.path.abspath(out), "leave_running": leave_running}, read_timeout=600)

    async def restore(self, image: str, name: str | None = None) -> dict[str, Any]:
        """Restore an image file as a new workspace (named `name`, or as it was)."""
        body: dict[str, Any] = {"image": os.path.abspath(image)}
        if name is not None:
            body["name"] = name
        return await self._call("POST", "/v1/restore", body, read_timeout=600)

    async def migrate(self, name: str, to: str, live: bool = False) -> dict[str, Any]:
        """Move a workspace to another node (a peer name or its peer API URL); per-phase times.
        `live`: iterative pre-dumps while it runs, so only the last dirty pages move while it is stopped."""
        return await self._call("POST", f"/v1/workspaces/{name}/migrate", {"to": to, "live": live},
                                read_timeout=900)

    async def migration(self, name: str) -> dict[str, Any]:
        """Where a migration under way is: phase, bytes sent, bytes in all (not-found when none)."""
        return await self._call("GET", f"/v1/workspaces/{name}/migrate")

    async def freeze(self, name: str) -> dict[str, Any]:
        """Freeze every process."""
        return await self._call("POST", f"/v1/workspaces/{name}/freeze")

    async def thaw(self, name: str) -> dict[str, Any]:
        """Thaw a frozen workspace."""
        return await self._call("POST", f"/v1/workspaces/{name}/thaw")

    async def kill(self, name: str) -> dict[str, Any]:
        """Kill every process; the workspace stays."""
        return await self._call("POST", f"/v1/workspaces/{name}/kill")

    async def rm(self, name: str) -> dict[str, Any]:
        """Destroy a workspace; returns its final usage."""
        return await self._call("DELETE", f"/v1/workspaces/{name}", read_timeout=120)

    async def usage(self, name: str | None = None) -> list[dict[str, Any]]:
        """Usage records, kept after workspaces are destroyed."""
        return await self._call("GET", "/v1/usage" + (f"?name={name}" if name else ""))

    async def processes(self, name: str) -> list[dict[str, Any]]:
        """Processes started in a workspace and how they ended."""
        return await self._call("GET", f"/v1/workspaces/{name}/processes")

    async def metrics(self) -> str:
        """The Prometheus text of the node."""
        return await self._call("GET", "/metrics")

    async def spawn(self, name: str, argv: list[str], *, env: dict[str, str] | None = None,
                    cwd: str | None = None, stdout: str = "stdout", stderr: str = "stderr") -> int:
        """Start a detached process whose output goes to files in the workspace directory; its pid."""
        body = {"argv": argv, "env": env, "cwd": cwd, "detach": True, "stdout": stdout, "stderr": stderr}
        return int((await self._call("POST", f"/v1/workspaces/{name}/exec", body))["pid"])

    async def exec(self, name: str, argv: list[str], *, env: dict[str, str] | None = None, cwd: str | None = None,
                   on_stdout: Output | None = None, on_stderr: Output | None = None,
                   stdin: AsyncIterator[bytes] | bytes | None = None) -> dict[str, Any]:
        """Run `argv` in the workspace, streaming stdin in and output out; the exit record."""
        if self._session is None:
            raise RuntimeError("use Client as an async context manager")
        head = json.dumps({"argv": argv, "env": env, "cwd": cwd}).encode() + b"\n"

        async def body() -> AsyncIterator[bytes]:
            yield head
            if isinstance(stdin, bytes):
                yield stdin
            elif stdin is not None:
                async for chunk in stdin:
                    yield chunk

        try:
            async with self._session.post(f"{self.base_url}/v1/workspaces/{name}/exec", data=body(),
                                          timeout=aiohttp.ClientTimeout(total=None, sock_connect=5)) as resp:
                if resp.status >= 400:  # a failure's body is JSON; a success's need not be
                    codec.check(resp.status, await resp.json())
                while True:
                    try:
                        head = await resp.content.readexactly(codec.FRAME.size)
                    except Exception:
                        raise Unavailable("node closed the exec stream before the exit status") from None
                    channel, length = codec.FRAME.unpack(head)
                    payload = await resp.content.readexactly(length)
                    if channel == codec.EXIT:
                        return json.loads(payload)
                    sink = on_stdout if channel == codec.STDOUT else on_stderr
                    if sink is not None:
                        sink(payload)
        except (aiohttp.ClientConnectionError, FileNotFoundError, ConnectionRefusedError) as e:
            raise Unavailable(f"{self.what} at {self.where} is not reachable: {e}") from None

    async def run(self, name: str, argv: list[str], *, uid: int | None = None, gid: int | None = None,
                  credential: str | None = None, on_stdout: Output | None = None, on_stderr: Output | None = None,
                  **alloc: Any) -> dict[str, Any]:
        """Create a workspace, run `argv` in it, destroy it; the exit record."""
        await self.create(name, uid=uid, gid=gid, credential=credential, **alloc)
        try:
            return await self.exec(name, argv, on_stdout=on_stdout, on_stderr=on_stderr)
        finally:
            await self.rm(name)


class SyncClient(rpc.Sync):
    """The node verbs without asyncio, for scripts, the demo and tests: `with SyncClient() as node:`."""

    client: Client

    def __init__(self, socket_path: str | None = None, timeout: float = 60.0) -> None:
        super().__init__(Client(socket_path, timeout))
