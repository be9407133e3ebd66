"""The node daemon's HTTP API on its Unix socket, and `xos serve node`."""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import json
import logging
import os
import re
import shutil
import signal
import time
from typing import Any

from aiohttp import web

from xos.allocation import Allocation
from xos.checkpoint import image
from xos.errors import InvalidInput, NotFound, PermissionDenied, XosError
from xos.kernel import safepath
from xos.node import checkpoints
from xos.node.config import NodeConfig
from xos.node.service import NodeService
from xos.paths import node_socket
from xos.wire import codec, hostid

log = logging.getLogger(__name__)

SERVICE: web.AppKey[NodeService] = web.AppKey("service", NodeService)
OUTPUT_NAME_MAX = 255
MAX_INPUT = 16 << 20  # a main program's stdin sent along with its workspace
MAX_CREATE = MAX_INPUT * 4 // 3 + codec.MAX_BODY  # that, in base64, and the rest of the request


def _svc(request: web.Request) -> NodeService:
    return request.app[SERVICE]


async def node_info(request: web.Request) -> web.Response:
    return codec.json_response(_svc(request).node_info())


async def set_offer(request: web.Request) -> web.Response:
    body = await codec.read_body(request)
    return codec.json_response(_svc(request).offer(body.get("cpu"), body.get("memory")))


async def node_ad(request: web.Request) -> web.Response:
    return codec.json_response(_svc(request).classad())


async def sample(request: web.Request) -> web.Response:
    svc = _svc(request)
    t0 = time.perf_counter()
    svc.sample()
    return codec.json_response({"workspaces": len(svc.workspaces), "seconds": time.perf_counter() - t0})


async def list_workspaces(request: web.Request) -> web.Response:
    svc = _svc(request)
    return codec.json_response([await ws.describe() for ws in svc.workspaces.values()])


async def create_workspace(request: web.Request) -> web.Response:
    svc = _svc(request)
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
    svc = _svc(request)
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
    svc = _svc(request)
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
    svc = _svc(request)
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
    svc = _svc(request)
    name = request.match_info["name"]
    usage = svc.get(name).usage_rec
    await svc.destroy(name)
    return codec.json_response({"name": name, "state": "destroyed", "usage": usage.to_json()})


async def control(request: web.Request) -> web.Response:
    svc = _svc(request)
    name, verb = request.match_info["name"], request.match_info["verb"]
    actions = {"freeze": svc.freeze, "thaw": svc.thaw, "kill": svc.kill}
    if verb not in actions:
        raise web.HTTPNotFound(reason=f"unknown action {verb!r}: use freeze, thaw or kill")
    await actions[verb](name)
    return codec.json_response(await svc.get(name).describe())


async def processes(request: web.Request) -> web.Response:
    svc = _svc(request)
    ws = svc.get(request.match_info["name"])
    assert svc.store is not None
    return codec.json_response([p.__dict__ for p in svc.store.processes(ws.rec.id)])


async def usage(request: web.Request) -> web.Response:
    svc = _svc(request)
    svc.sample(persist=True)  # the records below come from the store
    assert svc.store is not None
    name = request.query.get("name")
    return codec.json_response([u.to_json() for u in svc.store.usage(name)])


async def metrics(request: web.Request) -> web.Response:
    return web.Response(text=_svc(request).metrics(), content_type="text/plain", charset="utf-8",
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
    svc = _svc(request)
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
    svc = _svc(request)
    body = await codec.read_body(request)
    out = codec.field(body, "out", str, None)
    result = await svc.checkpoint(request.match_info["name"], out,
                                  bool(codec.field(body, "leave_running", bool, False)))
    return codec.json_response(result)


async def restore(request: web.Request) -> web.Response:
    svc = _svc(request)
    body = await codec.read_body(request)
    ws, result = await svc.restore(codec.field(body, "image", str, None), codec.field(body, "name", str))
    return codec.json_response({**await ws.describe(), "restore": result}, status=201)


async def migrate(request: web.Request) -> web.Response:
    svc = _svc(request)
    body = await codec.read_body(request)
    to = codec.field(body, "to", str, None)
    if not to:
        raise InvalidInput("give the node to migrate to (to)", field="to")
    return codec.json_response(await svc.migrate(request.match_info["name"], to,
                                               bool(codec.field(body, "live", bool, False))))


async def peer_checkpoint(request: web.Request) -> web.StreamResponse:
    """A checkpoint a job manager asks for; the workspace runs on. With `send=1` the image comes back as
    the answer (a tar, streamed; the summary in X-Checkpoint) and nothing stays here: a job manager keeps
    it where a lost node cannot take it along. Otherwise it stays on this node, where the node puts it
    (a peer names no paths here)."""
    svc = _svc(request)
    name = request.match_info["name"]
    if request.query.get("send") != "1":
        where = os.path.join(svc.config.home, "checkpoints", "requested")
        os.makedirs(where, exist_ok=True)
        out = os.path.join(where, f"{name}-{int(time.time() * 1000)}.img")
        return codec.json_response({**await svc.checkpoint(name, out, True), "image": out})
    work = checkpoints.scratch(svc, "dump")
    try:
        out = os.path.join(work, "image")
        result = await svc.checkpoint(name, out, True)
        resp = web.StreamResponse(headers={"Content-Type": "application/x-tar",
                                           "X-Checkpoint": json.dumps({k: result[k] for k in ("bytes", "times")})})
        await resp.prepare(request)
        loop = asyncio.get_running_loop()
        blocks = image.stream(out)
        while (block := await loop.run_in_executor(None, next, blocks, None)) is not None:
            await resp.write(block)
        await resp.write_eof()
        return resp
    finally:
        shutil.rmtree(work, ignore_errors=True)


async def migration_progress(request: web.Request) -> web.Response:
    svc = _svc(request)
    name = request.match_info["name"]
    if name not in svc.progress:
        raise NotFound(f"no migration of {name!r} under way", name=name)
    return codec.json_response(svc.progress[name])


# -- the peer API: what other hosts of the grid may ask (TLS, each host's own certificate) --------

@web.middleware
async def peer_auth(request: web.Request, handler: Any) -> web.StreamResponse:
    """Who may use the peer API, and on what: another node or a job manager (its certificate from the grid's
    CA says which; the TLS handshake already refused any other), only on workspaces peers may see."""
    svc = _svc(request)
    try:
        hostid.require(request.transport, "node", "aem")
    except PermissionDenied as e:
        log.warning("peer API: refused %s: %s", request.remote, e.message)
        raise
    name = request.match_info.get("name")
    if name is not None and not _peers_may(svc, svc.get(name)):
        raise NotFound(f"no workspace {name!r}", name=name)
    return await handler(request)


def _peers_may(svc: NodeService, ws: Any) -> bool:
    """Whether peers may see and act on a workspace: one of a grid identity, or one run as the node's account
    for nobody in particular (what moves between nodes); never one of a local account."""
    return bool(ws.rec.identity.get("vo")) or (ws.rec.uid, ws.rec.gid) == (svc.config.default_uid,
                                                                          svc.config.default_gid)


async def peer_list_workspaces(request: web.Request) -> web.Response:
    """The workspaces peers may see: a peer learns nothing of the node's local accounts' ones."""
    svc = _svc(request)
    return codec.json_response([await ws.describe() for ws in svc.workspaces.values() if _peers_may(svc, ws)])


async def peer_create_workspace(request: web.Request) -> web.Response:
    """A workspace a peer (a job manager) asks for: always for the owner of the credential it brings, verified
    here; never a uid, gid or grid identity of the peer's choosing (the key it holds is no user's)."""
    svc = _svc(request)
    body = await codec.read_body(request, MAX_CREATE)
    chosen = sorted(k for k in ("uid", "gid", "vo", "user") if body.get(k) is not None)
    if chosen:
        log.warning("peer API: refused a workspace from %s that names its %s", request.remote, ", ".join(chosen))
        raise PermissionDenied(f"a peer cannot choose a workspace's {', '.join(chosen)}: it runs as the owner of "
                               "the credential it comes with")
    if not isinstance(body.get("credential"), str):
        raise PermissionDenied("a peer creates a workspace only with its owner's credential (credential)")
    alloc = Allocation.parse(codec.field(body, "allocation", dict, {}))
    ws = await svc.create(codec.field(body, "name", str, None), alloc,
                          credential=codec.field(body, "credential", str), main=codec.field(body, "main", dict),
                          grid=codec.field(body, "grid", list))
    return codec.json_response(await ws.describe(), status=201)


STAGE = re.compile(r"^[0-9a-f]{16}$")
PART = re.compile(r"^pre[0-9]{1,2}$")
STAGE_TTL = 600.0  # seconds a live migration's pre-dumps wait for their final image


def _stage_dir(svc: NodeService, stage: str) -> str:
    if not STAGE.match(stage):
        raise InvalidInput("stage must be 16 hex digits", field="stage")
    return os.path.join(svc.config.home, "checkpoints", f"stage-{stage}")


async def _receive(request: web.Request, path: str) -> float:
    t0 = time.perf_counter()
    with open(path, "wb") as f:
        async for block in request.content.iter_chunked(1 << 20):
            f.write(block)
    return time.perf_counter() - t0


async def _unpack_streamed(request: web.Request, dest: str) -> float:
    """Extract the image tar of the request body into `dest` as it arrives, checksums verified on the way:
    a thread extracts from a pipe this handler fills. The time it took."""
    loop = asyncio.get_running_loop()
    r, w = os.pipe2(os.O_CLOEXEC)
    t0 = time.perf_counter()

    def extract() -> None:
        with os.fdopen(r, "rb") as src:
            image.unpack(src, dest)

    done = loop.run_in_executor(None, extract)
    try:
        async for block in request.content.iter_chunked(1 << 22):
            view = memoryview(block)
            while view:  # a refusing extractor closed its end: EPIPE ends the copy
                n = await loop.run_in_executor(None, os.write, w, view)
                view = view[n:]
    except BrokenPipeError:
        pass
    finally:
        os.close(w)
    await done
    return time.perf_counter() - t0


async def peer_stage(request: web.Request) -> web.Response:
    """Receive one pre-dump of a live migration; verified now, kept for the restore that follows."""
    svc = _svc(request)
    part = request.query.get("part", "")
    if not PART.match(part):
        raise InvalidInput("part must be preN", field="part")
    stage = _stage_dir(svc, request.query.get("stage", ""))
    top = os.path.dirname(stage)
    for old in os.listdir(top) if os.path.isdir(top) else []:  # stages whose migration never finished
        p = os.path.join(top, old)
        if old.startswith("stage-") and time.time() - os.stat(p).st_mtime > STAGE_TTL:
            shutil.rmtree(p, ignore_errors=True)
    os.makedirs(stage, mode=0o700, exist_ok=True)
    work = checkpoints.scratch(svc, "incoming", 2 * int(request.headers.get("Content-Length") or 0))
    try:
        received = await _receive(request, os.path.join(work, "part"))
        manifest = image.unpack(os.path.join(work, "part"), os.path.join(work, "unpacked"))
        if manifest.get("part") != part:
            raise image.ImageInvalid(f"part {part} holds {manifest.get('part')!r}")
        os.replace(os.path.join(work, "unpacked", "criu"), os.path.join(stage, part))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return codec.json_response({"part": part, "receive": received})


async def peer_restore(request: web.Request) -> web.Response:
    """Receive an image, streamed, and restore it (with a live migration's staged pre-dumps)."""
    svc = _svc(request)
    name = request.query.get("name") or None
    stage = _stage_dir(svc, request.query["stage"]) if request.query.get("stage") else None
    lazy = None
    if request.query.get("lazy_address"):  # post-copy: memory from the source's page server
        port = request.query.get("lazy_port", "")
        if not port.isdigit() or not 0 < int(port) < 65536:
            raise InvalidInput("lazy_port must be a port number", field="lazy_port")
        try:
            lazy = (str(ipaddress.ip_address(request.query["lazy_address"])), int(port))
        except ValueError:
            raise InvalidInput("lazy_address must be an IP address", field="lazy_address") from None
    work = checkpoints.scratch(svc, "incoming", int(request.headers.get("X-Image-Bytes") or 1 << 30))
    try:
        received = await _unpack_streamed(request, os.path.join(work, "image"))
        parts = {p: os.path.join(stage, p) for p in os.listdir(stage)} if stage and os.path.isdir(stage) else {}
        ws, result = await svc.restore(os.path.join(work, "image"), name, parts, verified=True, lazy=lazy,
                                       from_peer=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
        if stage:
            shutil.rmtree(stage, ignore_errors=True)
    result["times"]["receive"] = received
    return codec.json_response({**await ws.describe(), "restore": result}, status=201)


AD_CHECK = 0.25  # seconds between looks at the ad for a change worth pushing at once
VOLATILE = ("LoadAvg",)  # changes all the time: pushed with the next interval, not at once


async def advertise(svc: NodeService, aem: str) -> None:
    """Push this node's ad to the job manager at `aem`: at once when what a job could get changes (a
    workspace made or gone, the offer changed), else every ad_interval, so the ad lives while the
    node does. A job manager that cannot be reached is tried again at the next push."""
    import aiohttp

    cfg = svc.config
    url = f"{aem.rstrip('/')}/v1/peer/ads/{cfg.name}"
    last: dict[str, Any] | None = None
    sent_at = 0.0
    down = False
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5, sock_connect=2),
                                     connector=aiohttp.TCPConnector(ssl=cfg.host().client_context())) as session:
        while True:
            ad = svc.classad()
            stable = {k: v for k, v in ad.items() if k not in VOLATILE}
            if stable != last or time.monotonic() - sent_at >= svc.config.ad_interval:
                try:
                    async with session.put(url, json={"url": cfg.own_peer_url(), "ad": ad}) as r:
                        codec.check(r.status, await r.json(content_type=None))
                    last, sent_at = stable, time.monotonic()
                    if down:
                        log.info("job manager %s takes this node's ad again", aem)
                    down = False
                except (aiohttp.ClientError, OSError, TimeoutError, ValueError, XosError) as e:
                    if not down:
                        log.info("job manager %s did not take this node's ad: %s", aem, e)
                    down, sent_at = True, time.monotonic()  # tried: again at the next interval or change
                    last = stable
            await asyncio.sleep(AD_CHECK)


def make_peer_app(svc: NodeService) -> web.Application:
    """The routes other nodes may use."""
    app = web.Application(middlewares=[codec.error_middleware, peer_auth], client_max_size=MAX_CREATE)
    app[SERVICE] = svc
    app.add_routes([
        web.get("/v1/peer/node", node_info),
        web.get("/v1/peer/ad", node_ad),
        # what a job manager holding the grid's key does with workspaces
        web.post("/v1/peer/workspaces", peer_create_workspace),
        web.get("/v1/peer/workspaces", peer_list_workspaces),
        web.get("/v1/peer/workspaces/{name}", get_workspace),
        web.get("/v1/peer/workspaces/{name}/file", workspace_file),
        web.delete("/v1/peer/workspaces/{name}", delete_workspace),
        web.post("/v1/peer/workspaces/{name}/checkpoint", peer_checkpoint),
        web.post("/v1/peer/workspaces/{name}/migrate", migrate),
        web.post("/v1/peer/workspaces/{name}/{verb}", control),
        web.put("/v1/peer/restore", peer_restore),
        web.put("/v1/peer/stage", peer_stage),
    ])
    return app


def make_app(svc: NodeService) -> web.Application:
    """The node's routes."""
    app = web.Application(middlewares=[codec.error_middleware], client_max_size=codec.MAX_BODY)
    app[SERVICE] = svc
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


async def serve_node(config: NodeConfig) -> None:
    """Run the node daemon until SIGTERM or SIGINT."""
    svc = NodeService(config)
    await svc.start()
    runner = web.AppRunner(make_app(svc), access_log=None, handle_signals=False, shutdown_timeout=5)
    await runner.setup()
    path = node_socket(config.run)
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)
    old = os.umask(0o077)  # root only until the identity layer says who else may talk to us
    try:
        site = web.UnixSite(runner, path)
        await site.start()
    finally:
        os.umask(old)
    peer_runner = None
    if config.listen:
        tls = config.host().server_context()  # refuse to start without one rather than answer everyone
        host, _, port = config.listen.rpartition(":")
        peer_runner = web.AppRunner(make_peer_app(svc), access_log=None, handle_signals=False, shutdown_timeout=5)
        await peer_runner.setup()
        await web.TCPSite(peer_runner, host or "0.0.0.0", int(port), ssl_context=tls).start()
        log.info("node %s peer API on %s", config.name, config.listen)
    pushers = [asyncio.create_task(advertise(svc, url)) for url in config.aem_urls]
    if pushers:
        config.own_peer_url()  # refuse to start with an ad no job manager could act on
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    log.info("node %s serving on %s", config.name, path)
    try:
        await stop.wait()
    finally:
        for task in pushers:
            task.cancel()
        if peer_runner is not None:
            await peer_runner.cleanup()
        await runner.cleanup()
        await svc.stop()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
