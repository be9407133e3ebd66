"""The node's peer API: what other hosts of the grid may ask, over TLS with each host's own certificate.

Nodes stage and restore migrating workspaces; a job manager starts, watches, checkpoints and removes
the workspaces of its jobs. None of them may ask for uid 0 or for someone's workspace without that
person's credential."""

from __future__ import annotations

import asyncio
import ipaddress
import json
import logging
import os
import re
import shutil
import time
from typing import Any

from aiohttp import web

from xos.allocation import Allocation
from xos.checkpoint import image
from xos.errors import InvalidInput, NotFound, PermissionDenied
from xos.leader import EPOCH_HEADER, NotActive
from xos.node import checkpoints
from xos.node.api import (
    MAX_CREATE,
    SERVICE,
    control,
    delete_workspace,
    get_workspace,
    migrate,
    node_ad,
    node_info,
    svc_of,
    workspace_file,
)
from xos.node.service import NodeService
from xos.wire import codec, hostid
from xos.wire.metrics import METRICS

log = logging.getLogger(__name__)


async def peer_checkpoint(request: web.Request) -> web.StreamResponse:
    """A checkpoint a job manager asks for; the workspace runs on. With `send=1` the image comes back as
    the answer (a tar, streamed; the summary in X-Checkpoint) and nothing stays here: a job manager keeps
    it where a lost node cannot take it along. Otherwise it stays on this node, where the node puts it
    (a peer names no paths here)."""
    svc = svc_of(request)
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


@web.middleware
async def peer_auth(request: web.Request, handler: Any) -> web.StreamResponse:
    """Who may use the peer API, and on what: another node or a job manager (its certificate from the grid's
    CA says which; the TLS handshake already refused any other), only on workspaces peers may see."""
    svc = svc_of(request)
    try:
        peer = hostid.require(request.transport, "node", "aem")
    except PermissionDenied as e:
        log.warning("peer API: refused %s: %s", request.remote, e.message)
        raise
    if "aem" in peer.roles:
        fenced(svc, request)
    name = request.match_info.get("name")
    if name is not None:
        making = svc.creating.get(name)
        if making is not None:  # being made: the outcome, not "no such workspace" meanwhile
            await making.wait()
        if not _peers_may(svc, svc.get(name)):
            raise NotFound(f"no workspace {name!r}", name=name)
    return await handler(request)


def fenced(svc: NodeService, request: web.Request) -> None:
    """Refuse a job manager's call sent before a newer one took over (its epoch, xos.leader, is older than one
    this node has seen); remember a newer epoch. A call without one (a job manager on SQLite) is not fenced."""
    raw = request.headers.get(EPOCH_HEADER)
    if raw is None:
        return
    if not raw.isdigit() or len(raw) > 18:
        raise InvalidInput(f"{EPOCH_HEADER} is a job manager's epoch: a number", field=EPOCH_HEADER)
    epoch = int(raw)
    if epoch < svc.aem_epoch:
        log.info("peer API: refused %s %s of job manager epoch %d (epoch %d took over)", request.method,
                 request.path, epoch, svc.aem_epoch)
        raise NotActive(f"a newer job manager (epoch {svc.aem_epoch}) took over from epoch {epoch}")
    svc.aem_epoch = epoch


def _peers_may(svc: NodeService, ws: Any) -> bool:
    """Whether peers may see and act on a workspace: one of a grid identity, or one run as the node's account
    for nobody in particular (what moves between nodes); never one of a local account."""
    return bool(ws.rec.identity.get("vo")) or (ws.rec.uid, ws.rec.gid) == (svc.config.default_uid,
                                                                          svc.config.default_gid)


async def peer_list_workspaces(request: web.Request) -> web.Response:
    """The workspaces peers may see: a peer learns nothing of the node's local accounts' ones."""
    svc = svc_of(request)
    return codec.json_response([await ws.describe() for ws in svc.workspaces.values() if _peers_may(svc, ws)])


async def peer_create_workspace(request: web.Request) -> web.Response:
    """A workspace a peer (a job manager) asks for: always for the owner of the credential it brings, verified
    here; never a uid, gid or grid identity of the peer's choosing (the key it holds is no user's)."""
    svc = svc_of(request)
    body = await codec.read_body(request, MAX_CREATE)
    chosen = sorted(k for k in ("uid", "gid", "vo", "user") if body.get(k) is not None)
    if chosen:
        log.warning("peer API: refused a workspace from %s that names its %s", request.remote, ", ".join(chosen))
        raise PermissionDenied(f"a peer cannot choose a workspace's {', '.join(chosen)}: it runs as the owner of "
                               "the credential it comes with")
    if not isinstance(body.get("credential"), str):
        raise PermissionDenied("a peer creates a workspace only with its owner's credential (credential)")
    alloc = Allocation.parse(codec.field(body, "allocation", dict, {}))
    if "aem" in hostid.require(request.transport, "node", "aem").roles:
        fenced(svc, request)  # again: a newer job manager may have asked for this name while the body came
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
    svc = svc_of(request)
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
    svc = svc_of(request)
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


def make_peer_app(svc: NodeService) -> web.Application:
    """The routes other nodes may use."""
    app = web.Application(middlewares=[codec.error_middleware, peer_auth], client_max_size=MAX_CREATE)
    app[SERVICE] = svc
    app[METRICS] = svc.requests
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
