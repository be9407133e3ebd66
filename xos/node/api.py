"""The node daemon's HTTP API on its Unix socket: workspaces, checkpoints and the node itself, for root and
the local CLI."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import time
from typing import Any

from aiohttp import web

from xos.allocation import Allocation
from xos.errors import InvalidInput, NotFound, PermissionDenied
from xos.kernel import safepath
from xos.node.service import NodeService
from xos.wire import codec
from xos.wire.metrics import METRICS

log = logging.getLogger(__name__)

SERVICE: web.AppKey[NodeService] = web.AppKey("service", NodeService)
OUTPUT_NAME_MAX = 255
MAX_INPUT = 16 << 20  # a main program's stdin sent along with its workspace
MAX_CREATE = MAX_INPUT * 4 // 3 + codec.MAX_BODY  # that, in base64, and the rest of the request


def svc_of(request: web.Request) -> NodeService:
    return request.app[SERVICE]


async def node_info(request: web.Request) -> web.Response:
    return codec.json_response(svc_of(request).node_info())


async def set_offer(request: web.Request) -> web.Response:
    body = await codec.read_body(request)
    return codec.json_response(svc_of(request).offer(body.get("cpu"), body.get("memory")))


async def node_ad(request: web.Request) -> web.Response:
    return codec.json_response(svc_of(request).classad())


async def sample(request: web.Request) -> web.Response:
    svc = svc_of(request)
    t0 = time.perf_counter()
    svc.sample()
    return codec.json_response({"workspaces": len(svc.workspaces), "seconds": time.perf_counter() - t0})


async def list_workspaces(request: web.Request) -> web.Response:
    svc = svc_of(request)
    return codec.json_response([await ws.describe() for ws in svc.workspaces.values()])


async def create_workspace(request: web.Request) -> web.Response:
    svc = svc_of(request)
    body = await codec.read_body(request, MAX_CREATE)
    alloc_in = codec.field(body, "allocation", dict, {})
    alloc = Allocation.parse(alloc_in)
    vo, user = codec.field(body, "vo", str), codec.field(body, "user", str)
    if (vo is None) != (user is None):
        raise InvalidInput("a grid identity needs both vo and user")
    ws = await svc.create(codec.field(body, "name", str, None), alloc, codec.field(body, "uid", int),
                          codec.field(body, "gid", int), (vo, user) if vo is not None and user is not None else None,
                          codec.field(body, "credential", str), codec.field(body, "main", dict),
                          codec.field(body, "grid", list))
    return codec.json_response(await ws.describe(), status=201)


async def get_workspace(request: web.Request) -> web.Response:
    svc = svc_of(request)
    ws = svc.get(request.match_info["name"])
    ws.sample()
    out = await ws.describe()
    if "checkpointing" in out:
        out["checkpointing"]["images"] = svc.periodic_images(ws)
    return codec.json_response(out)


MAX_OUTPUT = 16 << 20


async def workspace_file(request: web.Request) -> web.Response:
    """A regular file of a workspace's directory (a job's output), opened beneath it as the workspace's
    user, never through a link: its last 16 MiB, or with `offset` up to 16 MiB from there (a reader
    following it, or fetching it whole in parts)."""
    svc = svc_of(request)
    ws = svc.get(request.match_info["name"])
    rel = request.query.get("file", "")
    offset = request.query.get("offset")
    if offset is not None and (not offset.isdigit() or len(offset) > 18):  # longer overflowed seek(): a 500
        raise InvalidInput("offset must be a byte count", field="offset")
    if not rel or rel.startswith("/"):
        raise InvalidInput("the file must be inside the workspace's directory", field="file")
    try:
        fd = safepath.open_beneath(svc.context().directory(ws.rec), rel, as_user=(ws.rec.uid, ws.rec.gid))
    except (FileNotFoundError, NotADirectoryError):
        raise NotFound(f"no file {rel!r} in workspace {ws.rec.name}") from None
    except PermissionError:
        raise PermissionDenied(f"{rel!r} in workspace {ws.rec.name} is not readable by its user") from None
    with open(fd, "rb") as f:
        if offset is None:
            f.seek(max(os.fstat(f.fileno()).st_size - MAX_OUTPUT, 0))
        else:
            f.seek(int(offset))
        data = f.read(MAX_OUTPUT)
    return web.Response(body=data, content_type="application/octet-stream")


async def set_workspace(request: web.Request) -> web.Response:
    svc = svc_of(request)
    body = await codec.read_body(request)
    name = request.match_info["name"]
    periodic = codec.field(body, "checkpoint", dict)
    alloc = codec.field(body, "allocation", dict, {})
    ws = svc.get(name)
    if periodic is not None:
        ws = await svc.set_checkpointing(name, periodic.get("every", 0), periodic.get("keep"))
    if alloc or periodic is None:
        ws = await svc.set_alloc(name, alloc)
    out = await ws.describe()
    if "checkpointing" in out:
        out["checkpointing"]["images"] = svc.periodic_images(ws)
    return codec.json_response(out)


async def delete_workspace(request: web.Request) -> web.Response:
    svc = svc_of(request)
    name = request.match_info["name"]
    usage = svc.get(name).usage_rec
    await svc.destroy(name)
    return codec.json_response({"name": name, "state": "destroyed", "usage": usage.to_json()})


async def control(request: web.Request) -> web.Response:
    svc = svc_of(request)
    name, verb = request.match_info["name"], request.match_info["verb"]
    actions = {"freeze": svc.freeze, "thaw": svc.thaw, "kill": svc.kill}
    if verb not in actions:
        raise web.HTTPNotFound(reason=f"unknown action {verb!r}: use freeze, thaw or kill")
    await actions[verb](name)
    return codec.json_response(await svc.get(name).describe())


async def processes(request: web.Request) -> web.Response:
    svc = svc_of(request)
    ws = svc.get(request.match_info["name"])
    assert svc.store is not None
    return codec.json_response([p.__dict__ for p in svc.store.processes(ws.rec.id)])


async def usage(request: web.Request) -> web.Response:
    svc = svc_of(request)
    svc.sample(persist=True)  # the records below come from the store
    assert svc.store is not None
    name = request.query.get("name")
    return codec.json_response([u.to_json() for u in svc.store.usage(name)])


async def metrics(request: web.Request) -> web.Response:
    svc = svc_of(request)
    return web.Response(text=svc.metrics() + svc.requests.text(), content_type="text/plain", charset="utf-8",
                        headers={"X-Format": "prometheus-0.0.4"})


def _output_file(svc: NodeService, name: str, rel: Any, field: str) -> int:
    """A file in the workspace directory for detached output, never following a link out of it."""
    if not isinstance(rel, str) or not rel or "/" in rel or rel in (".", "..") or len(rel) > OUTPUT_NAME_MAX:
        raise InvalidInput(f"{field} must be a plain file name inside the workspace directory", field=field)
    ws = svc.get(name)
    assert svc.ctx is not None
    try:  # made by, and so owned by, the workspace's user
        return safepath.open_beneath(svc.ctx.directory(ws.rec), rel, os.O_WRONLY | os.O_CREAT | os.O_APPEND,
                                     as_user=(ws.rec.uid, ws.rec.gid))
    except PermissionError:
        raise PermissionDenied(f"{field} {rel!r} cannot be written by the workspace's user") from None


async def exec_(request: web.Request) -> web.StreamResponse:
    svc = svc_of(request)
    name = request.match_info["name"]
    # The first line is the JSON request; anything after it is the program's stdin, streamed.
    body = await codec.read_head(request)
    argv, env, cwd = body.get("argv"), body.get("env"), body.get("cwd")
    null = os.open(os.devnull, os.O_RDWR | os.O_CLOEXEC)
    if codec.field(body, "detach", bool, False):
        fds = [null]
        try:
            out = _output_file(svc, name, body.get("stdout", "stdout"), "stdout")
            fds.append(out)
            err = _output_file(svc, name, body.get("stderr", "stderr"), "stderr")
            fds.append(err)
            proc = svc.start_process(name, argv, env, cwd, null, out, err)
        finally:
            for fd in fds:
                os.close(fd)
        return codec.json_response({"pid": proc.pid}, status=201)

    os.close(null)
    in_r, in_w = os.pipe2(os.O_CLOEXEC)
    out_r, out_w = os.pipe2(os.O_CLOEXEC)
    err_r, err_w = os.pipe2(os.O_CLOEXEC)
    try:
        proc = svc.start_process(name, argv, env, cwd, in_r, out_w, err_w)
    except BaseException:
        for fd in (out_r, err_r, in_w):
            os.close(fd)
        raise
    finally:
        for fd in (in_r, out_w, err_w):
            os.close(fd)
    feeder = asyncio.ensure_future(_feed_stdin(request, in_w))

    resp = web.StreamResponse(headers={"Content-Type": codec.STREAM_TYPE})
    queue: asyncio.Queue[tuple[bytes, bytes]] = asyncio.Queue()
    loop = asyncio.get_running_loop()
    open_fds = {out_r: codec.STDOUT, err_r: codec.STDERR}

    def readable(fd: int) -> None:
        try:
            data = os.read(fd, 65536)
        except BlockingIOError:
            return
        if not data:
            loop.remove_reader(fd)
            os.close(fd)
            del open_fds[fd]
        queue.put_nowait((open_fds.get(fd, b""), data))

    for fd in list(open_fds):
        os.set_blocking(fd, False)
        loop.add_reader(fd, readable, fd)
    try:
        await resp.prepare(request)
        while open_fds or not queue.empty():
            channel, data = await queue.get()
            if data:
                await resp.write(codec.frame(channel, data))
        result = await proc.done
        await resp.write(codec.frame(codec.EXIT, json.dumps(result).encode()))
        await resp.write_eof()
    except (ConnectionResetError, asyncio.CancelledError):
        # The client went away: its program goes too, as over ssh.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
        raise
    finally:
        feeder.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await feeder
        for fd in list(open_fds):
            loop.remove_reader(fd)
            os.close(fd)
    return resp


async def _feed_stdin(request: web.Request, fd: int) -> None:
    """Copy the rest of the request body into the program's stdin, with back-pressure; EOF at the end."""
    loop = asyncio.get_running_loop()
    pipe = os.fdopen(fd, "wb", buffering=0)
    transport, protocol = await loop.connect_write_pipe(lambda: asyncio.streams.FlowControlMixin(loop), pipe)
    writer = asyncio.StreamWriter(transport, protocol, None, loop)  # type: ignore[arg-type]
    try:
        async for chunk in request.content.iter_any():
            writer.write(chunk)
            await writer.drain()
    except (BrokenPipeError, ConnectionResetError):
        pass  # the program stopped reading: the rest of its input goes nowhere, as with a shell pipe
    finally:
        transport.close()


async def checkpoint(request: web.Request) -> web.Response:
    svc = svc_of(request)
    body = await codec.read_body(request)
    out = codec.field(body, "out", str, None)
    result = await svc.checkpoint(request.match_info["name"], out,
                                  bool(codec.field(body, "leave_running", bool, False)))
    return codec.json_response(result)


async def restore(request: web.Request) -> web.Response:
    svc = svc_of(request)
    body = await codec.read_body(request)
    ws, result = await svc.restore(codec.field(body, "image", str, None), codec.field(body, "name", str))
    return codec.json_response({**await ws.describe(), "restore": result}, status=201)


async def migrate(request: web.Request) -> web.Response:
    svc = svc_of(request)
    body = await codec.read_body(request)
    to = codec.field(body, "to", str, None)
    if not to:
        raise InvalidInput("give the node to migrate to (to)", field="to")
    return codec.json_response(await svc.migrate(request.match_info["name"], to,
                                               bool(codec.field(body, "live", bool, False))))


async def migration_progress(request: web.Request) -> web.Response:
    svc = svc_of(request)
    name = request.match_info["name"]
    if name not in svc.progress:
        raise NotFound(f"no migration of {name!r} under way", name=name)
    return codec.json_response(svc.progress[name].to_json())


def make_app(svc: NodeService) -> web.Application:
    """The node's routes."""
    app = web.Application(middlewares=[codec.error_middleware], client_max_size=codec.MAX_BODY)
    app[SERVICE] = svc
    app[METRICS] = svc.requests
    app.add_routes([
        web.get("/v1/node", node_info),
        web.patch("/v1/node", set_offer),
        web.get("/v1/node/ad", node_ad),
        web.post("/v1/node/sample", sample),
        web.get("/v1/workspaces", list_workspaces),
        web.post("/v1/workspaces", create_workspace),
        web.get("/v1/workspaces/{name}", get_workspace),
        web.patch("/v1/workspaces/{name}", set_workspace),
        web.delete("/v1/workspaces/{name}", delete_workspace),
        web.post("/v1/workspaces/{name}/exec", exec_),
        web.post("/v1/workspaces/{name}/checkpoint", checkpoint),
        web.post("/v1/restore", restore),
        web.post("/v1/workspaces/{name}/migrate", migrate),
        web.get("/v1/workspaces/{name}/migrate", migration_progress),
        web.get("/v1/workspaces/{name}/processes", processes),
        web.post("/v1/workspaces/{name}/{verb}", control),
        web.get("/v1/usage", usage),
        web.get("/metrics", metrics),
    ])
    return app
