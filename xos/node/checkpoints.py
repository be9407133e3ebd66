"""Checkpoint and restore of a node's workspaces: what `xos ws checkpoint|restore` ask the daemon for."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import platform
import secrets
import shutil
import signal
import socket
import ssl
import time
import urllib.parse
from typing import TYPE_CHECKING, Any

from xos.allocation import Allocation
from xos.checkpoint import creds, image, transfer
from xos.checkpoint import criu as criu_mod
from xos.errors import (
    Conflict,
    ExternalError,
    InvalidInput,
    NotFound,
    OverCapacity,
    Unavailable,
    WorkspaceExists,
    XosError,
)
from xos.kernel import safepath
from xos.node.migration import Migration, Phase
from xos.node.store import WorkspaceRecord, WorkspaceState
from xos.node.workspace import Workspace, check_name

if TYPE_CHECKING:
    from xos.node.service import NodeService



log = logging.getLogger(__name__)


class NotCheckpointable(Conflict):
    """The workspace holds something a checkpoint cannot take."""

    code = "not-checkpointable"


class CheckpointFailed(ExternalError):
    """Writing the image failed (a full disk, an I/O error); the workspace runs on."""

    code = "checkpoint-failed"
    http_status = 507


FAST_SCRATCH = "/dev/shm"
FAST_SHARE = 0.25  # of the memory tmpfs could still take, at most, for one transient image


def scratch(svc: NodeService, what: str, size: int = 0) -> str:
    """A fresh private directory for one checkpoint, restore or migration.

    A transient image of `size` bytes (a migration's: it lives seconds) goes to tmpfs when it fits
    in a quarter of what tmpfs has left: written to disk, a 1 GiB image spent seconds in writeback
    on each node, inside the downtime. Everything else stays under the node's home."""
    path = os.path.join(svc.config.home, "checkpoints", f"{what}-{secrets.token_hex(4)}")
    if size:
        with contextlib.suppress(OSError):
            st = os.statvfs(FAST_SCRATCH)
            if size < st.f_bavail * st.f_frsize * FAST_SHARE:
                path = os.path.join(FAST_SCRATCH, f"xos-{svc.config.name}-{what}-{secrets.token_hex(4)}")
    os.makedirs(path, mode=0o700)
    return path


def sweep(svc: NodeService) -> None:
    """Remove the scratch of checkpoints and migrations a previous daemon did not finish."""
    top = os.path.join(svc.config.home, "checkpoints")
    leftovers = [os.path.join(top, n) for n in (os.listdir(top) if os.path.isdir(top) else [])
                 if n.split("-")[0] in ("dump", "restore", "migrate", "incoming")]
    with contextlib.suppress(OSError):
        leftovers += [os.path.join(FAST_SCRATCH, n) for n in os.listdir(FAST_SCRATCH)
                      if n.startswith(f"xos-{svc.config.name}-")]
    for path in leftovers:
        shutil.rmtree(path, ignore_errors=True)


def log_path(svc: NodeService, name: str, what: str) -> str:
    """Where a failed run's CRIU log is kept."""
    return os.path.join(svc.config.home, "checkpoints", "logs", f"{name}-{what}-{int(time.time())}.log")


async def checkpoint(svc: NodeService, name: str, out: str, leave_running: bool = False,
                     prev: str | None = None, lazy: tuple[str, int] | None = None) -> dict[str, Any]:
    """Freeze and dump workspace `name` into the image directory `out`; the workspace is removed unless
    leave_running. `prev`: a pre-dump whose unchanged pages this dump does not repeat (live migration),
    found at ../../<its name> from the image's criu/ (beside the image). `lazy` (address, port): memory
    stays out of the image and is served from there (post-copy); the result's "lazy" is the CRIU run
    serving it, and the workspace stays, stopped, for the caller to remove or resume. The result has
    per-phase times and CRIU's own statistics.

    The workspace directory is copied while the tasks are frozen and before CRIU runs (CRIU ends them
    once it has dumped them): a copy that fails (a full disk, a directory the user changed under it)
    leaves them running, never gone with no image."""
    if not isinstance(out, str) or not out:
        raise InvalidInput("give the image to write (out)", field="out")
    criu = criu_mod.find().require()
    ws = svc.get(name)
    out = os.path.abspath(out)
    if not os.path.isdir(os.path.dirname(out)):
        raise InvalidInput(f"cannot write the image {out}: no such directory", field="out")
    if os.path.lexists(out):
        raise InvalidInput(f"the image {out} exists already", field="out")
    async with ws.lock:
        if ws.rec.state != WorkspaceState.RUNNING:
            raise NotCheckpointable(f"workspace {name} is {ws.rec.state}; only a running workspace is checkpointed")
        outsiders = ws.tree_outsiders()
        if outsiders:
            raise NotCheckpointable(f"workspace {name} has {len(outsiders)} process(es) started with exec "
                                    f"(pids {outsiders[:5]}); only the main program's tree can be checkpointed")
        part = out + ".part"  # renamed into place once sealed: a half-made image never looks whole
        images = os.path.join(part, "criu")
        logs = scratch(svc, "dump")
        times: dict[str, float] = {}
        serving: criu_mod.Running | None = None  # a lazy dump, serving memory after it returned
        try:
            os.makedirs(images, mode=0o700)
            t0 = time.perf_counter()
            ws.cgroup.set_frozen(True)  # the directory below and the memory CRIU reads are one moment
            times["freeze"] = time.perf_counter() - t0
            try:
                ws.sample()
                t1 = time.perf_counter()
                try:
                    image.copy_tree(svc.context().directory(ws.rec), os.path.join(part, "work"))
                except safepath.UnsafePath as e:
                    raise NotCheckpointable(f"workspace {name}'s directory changed under the copy: "
                                            f"{e.message}") from None
                times["copy"] = time.perf_counter() - t1
                if lazy is not None:
                    serving = await ws.dump_lazy(criu, images, lazy[0], lazy[1], log_path(svc, name, "dump"), logs)
                    run = criu_mod.Run(time.perf_counter() - serving.t0)
                else:
                    run = await ws.dump(criu, images, leave_running, log_path(svc, name, "dump"), prev,
                                        workdir=logs)
            except BaseException:
                if ws.cgroup.exists():  # CRIU let go of the tasks, or never took them: they run on
                    ws.cgroup.set_frozen(False)
                raise
            times["dump"] = run.seconds
            try:
                t2 = time.perf_counter()
                manifest = image.seal(part, {
                    "workspace": {"name": ws.rec.name, "id": ws.rec.id, "allocation": ws.rec.alloc.to_json(),
                                  "uid": ws.rec.uid, "gid": ws.rec.gid, "address": ws.rec.address,
                                  "gateway": ws.rec.checkpoint.get("foreign_gateway") or svc.context().subnet.gateway,
                                  "grid": list(ws.rec.checkpoint.get("grid", []))},
                    "identity": ws.rec.identity, "node": svc.config.name, "criu": criu.version,
                    "kernel": platform.release(), "arch": platform.machine(), "created": time.time(),
                    "stats": run.stats, "parts": [os.path.basename(prev)] if prev else [],
                })
                os.rename(part, out)
                times["pack"] = times["copy"] + time.perf_counter() - t2
            except BaseException:
                if serving is not None:  # its tasks run on
                    await serving.abort()
                    if ws.cgroup.exists():
                        ws.cgroup.set_frozen(False)
                raise
            finally:
                if leave_running and ws.cgroup.exists():
                    ws.cgroup.set_frozen(False)
        except BaseException as e:
            shutil.rmtree(part, ignore_errors=True)
            shutil.rmtree(logs, ignore_errors=True)
            if isinstance(e, OSError):  # a full disk, a vanished directory: said as such, not "internal"
                alive = ws.cgroup.exists() and bool(ws.cgroup.procs())
                raise CheckpointFailed(f"checkpoint of {name} failed ({e}); "
                                       + ("it runs on" if alive else "its processes had ended"),
                                       errno=e.errno) from None
            raise
        if serving is None:
            shutil.rmtree(logs, ignore_errors=True)
        else:  # its log is still being written: the caller removes it when the run has ended
            size = sum(os.path.getsize(os.path.join(out, arc)) for arc in manifest["files"])
            return {"workspace": name, "image": out, "bytes": size, "times": times, "lazy": serving,
                    "logs": logs, "files": len(manifest["files"])}
        if not leave_running:
            t3 = time.perf_counter()
            await ws.destroy(f"checkpointed to {out}")
            svc.workspaces.pop(name, None)
            times["remove"] = time.perf_counter() - t3
    log.info("workspace %s checkpointed to %s", name, out, extra={"workspace": name, **times})
    size = sum(os.path.getsize(os.path.join(out, arc)) for arc in manifest["files"])
    return {"workspace": name, "image": out, "bytes": size, "times": times,
            "criu": run.stats, "left_running": leave_running, "files": len(manifest["files"])}


def _owner_accepted(svc: NodeService, identity: dict[str, Any], uid: int, gid: int) -> None:
    """An image another host sends runs for a grid identity whose credential it carries and this node
    accepts now (not expired, revoked, or of a member who left the VO), or as this node's account for
    workspaces of nobody in particular: never as one of its local accounts."""
    vo, user, token = identity.get("vo"), identity.get("user"), identity.get("credential")
    if not vo and (uid, gid) == (svc.config.default_uid, svc.config.default_gid):
        return
    if not vo or not user or not isinstance(token, str):
        raise image.ImageRefused(f"an image from a peer runs as uid {uid}, gid {gid} with no grid identity: only "
                                 "a grid identity with its credential, or this node's default account, comes "
                                 "from another host")
    try:
        claims = svc.identity.verify(token)
    except XosError as e:
        raise image.ImageRefused(f"the credential of {user} of VO {vo} is not accepted here: {e.message}") from None
    if (claims.vo, claims.sub) != (vo, user):
        raise image.ImageRefused(f"the image runs as {user} of VO {vo}; its credential is {claims.sub} of {claims.vo}")


async def restore(svc: NodeService, path: str, name: str | None = None, parts: dict[str, str] | None = None,
                  verified: bool = False, lazy: tuple[str, int] | None = None,
                  from_peer: bool = False) -> tuple[Workspace, dict[str, Any]]:
    """Verify the image at `path` (a directory, or a tar of one) and restore it as a new workspace
    (`name`, or the one it had). The image itself is left as it was.

    `parts`: verified pre-dump directories (by name) the image's dump builds on (live migration).
    `lazy` (address, port): the image's memory is served there (post-copy): a lazy-pages daemon fetches
    it on demand and in the background; if that fails, the workspace, missing memory, is removed.
    Every task of the image must run as the image's mapped owner with no capability (`creds.check`);
    `from_peer`: the image came from another host, which may never ask for root's identity."""
    if not isinstance(path, str) or not path:
        raise InvalidInput("give the image to restore (image)", field="image")
    path = os.path.abspath(path)
    if not os.path.exists(path):
        raise InvalidInput(f"no image {path}", field="image")
    criu = criu_mod.find().require()
    times: dict[str, float] = {}
    t0 = time.perf_counter()
    work = scratch(svc, "restore", _image_bytes(path) if not os.path.isdir(path) else 0)
    try:
        if os.path.isdir(path):
            # Whole before CRIU reads a byte of it: CRIU 4.1.1's restorer spins forever, logging, on a
            # truncated pages file (seen here: a 17 GB log in ten minutes).
            manifest, top = (image.manifest_of(path) if verified else image.verify(path)), path
        else:
            top = os.path.join(work, "image")
            manifest = image.unpack(path, top)
        image.check_compatible(manifest, criu.version)
        have = dict(parts or {})
        part = (manifest.get("parts") or [""])[0]
        while part:
            # A dump's parent chain: pre-dumps beside the image, each linking to the one before.
            if part not in have or not os.path.isdir(have[part]):
                raise image.ImageInvalid(f"image builds on pre-dump {part!r}, which did not arrive")
            beside = os.path.join(os.path.dirname(top), part)
            if os.path.abspath(have[part]) != beside:
                shutil.move(have[part], beside)
            link = os.path.join(beside, "parent")
            part = os.path.basename(os.readlink(link)) if os.path.islink(link) else ""
        spec = manifest.get("workspace") or {}
        try:
            alloc = Allocation(**spec["allocation"])
            uid, gid, address = int(spec["uid"]), int(spec["gid"]), str(spec["address"])
        except (KeyError, TypeError, ValueError) as e:
            raise image.ImageInvalid(f"image manifest lacks a workspace spec: {e}") from None
        name = name or str(spec.get("name", ""))
        identity = dict(manifest.get("identity") or {})
        if from_peer and (uid == 0 or gid == 0):
            raise image.ImageRefused(f"image from a peer asks to run as uid {uid}, gid {gid}: root's identity is "
                                     "never restored for another host")
        if from_peer:
            _owner_accepted(svc, identity, uid, gid)
        if uid != 0:
            creds.check(os.path.join(top, "criu"), uid, gid)
        times["verify"] = time.perf_counter() - t0
        if identity.get("vo"):
            if svc.identity.idmap is None:
                raise image.ImageInvalid(f"image runs as {identity['user']} of VO {identity['vo']}, and this node "
                                         "maps no grid identities")
            acct = svc.identity.idmap.map(identity["vo"], identity["user"])
            if (acct.uid, acct.gid) != (uid, gid):
                raise image.ImageInvalid(f"image runs as uid {uid}; this node maps {identity['user']} of VO "
                                         f"{identity['vo']} to uid {acct.uid}")
        ctx = svc.context()
        async with svc.admission:
            check_name(name)
            if name in svc.workspaces:
                raise WorkspaceExists(f"workspace {name!r} exists already", name=name)
            ctx.config.capacity.admit(alloc, [w.rec.alloc for w in svc.workspaces.values()])
            svc.unforward(address)  # a workspace coming home
            used = {w.rec.address for w in svc.workspaces.values()}
            ours = address in ctx.subnet.hosts()
            if address in used or (ours and address == ctx.subnet.gateway):
                raise OverCapacity(f"address {address} of the image is taken on this node")
            # An address from another node's subnet comes along (its TCP connections with it): the
            # bridge answers for that subnet's gateway, and a host route leads to the workspace.
            extra: dict[str, Any] = {} if ours else {"foreign_gateway": str(spec.get("gateway", ""))}
            grid = spec.get("grid") or []
            if not isinstance(grid, list) or not all(isinstance(g, str) for g in grid):
                raise image.ImageInvalid("image manifest's grid mounts are not a list of MRC_URL/VOLUME")
            if grid:
                extra["grid"] = grid
            extra["origin"] = {"node": str(manifest.get("node", "")), "workspace": str(spec.get("id", ""))}
            rec = WorkspaceRecord(id=secrets.token_hex(4), name=name, state=WorkspaceState.CREATING, alloc=alloc,
                                  uid=uid, gid=gid, address=address, identity=identity, checkpoint=extra)
            t1 = time.perf_counter()
            wdir = os.path.join(work, "work")
            if top.startswith(work + os.sep):
                image.move_tree(os.path.join(top, "work"), wdir)  # ours to take
            else:
                image.copy_tree(os.path.join(top, "work"), wdir)  # the caller's image stays whole
            pager = None
            if lazy is not None:  # listening (in `work`, which restore shares) before restore asks it
                pager = criu_mod.start(criu, ["lazy-pages", "--page-server", "--address", lazy[0], "--port",
                                              str(lazy[1])], os.path.join(top, "criu"), "lazy-pages.log",
                                       keep_log=log_path(svc, name, "lazy-pages"), workdir=work)
                await pager.ready()
            try:
                ws, run = await Workspace.restore(ctx, rec, criu, os.path.join(top, "criu"), wdir,
                                                  log_path(svc, name, "restore"), workdir=work, lazy=pager is not None)
            except BaseException:
                if pager is not None:
                    await pager.abort(signal.SIGKILL)
                raise
            times["restore"] = time.perf_counter() - t1
            svc.workspaces[name] = ws
        ctx.store.save_usage(ws.usage_rec)
        if pager is not None:  # the scratch holds its socket and images until every page is in
            task = asyncio.create_task(_follow_pages(svc, ws, pager, work))
            svc.background.add(task)
            task.add_done_callback(svc.background.discard)
            work = ""
    finally:
        if work:
            with contextlib.suppress(OSError):
                shutil.rmtree(work)
    log.info("workspace %s restored from %s", name, path, extra={"workspace": name, **times})
    return ws, {"times": times, "criu": run.stats, "from_node": manifest.get("node")}


async def _follow_pages(svc: NodeService, ws: Workspace, pager: criu_mod.Running, work: str) -> None:
    """Wait for a post-copy restore's memory to be in whole. If the source stops serving it first, the
    workspace cannot go on (its missing pages would read as zeros): it is removed, and said so."""
    name = ws.rec.name
    try:
        run = await pager.finish(POSTCOPY_TIMEOUT)
        log.info("workspace %s: all of its memory arrived", name, extra={"workspace": name,
                                                                         "seconds": run.seconds})
    except criu_mod.CriuError as e:
        log.warning("workspace %s lost the source of its memory (%s); removed", name, e,
                    extra={"workspace": name})
        if svc.workspaces.get(name) is ws:
            with contextlib.suppress(Exception):
                await svc.destroy(name)
    except asyncio.CancelledError:  # the daemon stops: CRIU carries on; the next start sweeps the scratch
        raise
    shutil.rmtree(work, ignore_errors=True)


class MigrationFailed(Conflict):
    """The target did not take the workspace; it runs at the source again."""

    code = "migration-failed"


PRE_DUMP_ROUNDS = 10  # at most, as LXD
POSTCOPY_TIMEOUT = 600.0  # seconds a post-copy migration's memory may take to arrive whole
PRE_DUMP_SHRINK = 0.7  # stop pre-dumping when a round wrote more than this share of the one before


async def migrate(svc: NodeService, name: str, to: str, live: bool = False) -> dict[str, Any]:
    """Move `name` to node `to`: checkpoint, stream the image, restore there, remove here.

    `live`: pre-dump while the workspace runs, round after round, each part sent to the target at
    once, until the dirty set stops shrinking; then only the last dirty pages are dumped and sent
    while it is stopped. Until the target confirms, the image stays here; any failure (refusal, a
    target that dies mid-transfer, a failed restore) restores it here again: never two running
    copies, never none."""
    url, tls = svc.config.peer_url(to), svc.config.host().client_context()
    svc.get(name)
    progress = svc.progress.setdefault(name, Migration(name, to))
    try:
        done = await _migrate(svc, name, to, url, tls, live, progress)
        progress.enter(Phase.DONE, f"runs on {to}")
        return {**done, "phases": [t.to_json() for t in progress.history]}
    except BaseException as e:
        progress.enter(Phase.FAILED, str(e) or type(e).__name__)
        raise
    finally:
        svc.progress.pop(name, None)


async def _migrate(svc: NodeService, name: str, to: str, url: str, tls: ssl.SSLContext, live: bool,
                   progress: Migration) -> dict[str, Any]:
    mode = criu_mod.find().require().live if live else ""
    if live and not mode:
        raise criu_mod.LiveUnavailable(f"live migration needs the kernel to track dirty memory "
                                       f"(CONFIG_MEM_SOFT_DIRTY) or userfaultfd; this node's {platform.release()} "
                                       f"has neither: migrate {name} without --live")
    if mode == "post-copy":
        return await _postcopy(svc, name, to, url, tls, progress)
    ws = svc.get(name)
    work = scratch(svc, "migrate", 3 * max(ws.sample().memory_peak, ws.rec.alloc.memory // 4, 64 << 20))
    path = os.path.join(work, "image")
    stage = secrets.token_hex(8) if live else None
    rounds: list[dict[str, float]] = []
    parts: dict[str, str] = {}
    t_start = time.perf_counter()
    try:
        prev = None
        if live:
            progress.enter(Phase.PRE_DUMP)
            prev = await _pre_dumps(svc, name, work, url, tls, stage, rounds, parts)
        t0 = time.perf_counter()
        progress.enter(Phase.DUMP)
        cp = await checkpoint(svc, name, path, prev=prev)
        times = dict(cp["times"])
        t1 = time.perf_counter()
        try:
            progress.sending(cp["bytes"])
            target = await transfer.peer_restore(url, tls, path, name, stage, progress.sent_more)
        except Exception as e:
            landed = await _landed(svc, url, tls, name, ws.rec.id, e, path)
            if landed is None:
                log.warning("migration of %s to %s failed, resuming here: %s", name, to, e,
                            extra={"workspace": name})
                progress.enter(Phase.RESUMING_HERE, f"{to} did not take it: {e}")
                t2 = time.perf_counter()
                await restore(svc, path, name, parts)
                raise MigrationFailed(f"migration of {name} to {to} failed ({e}); it runs here again "
                                      f"(down {time.perf_counter() - t0:.2f}s, resumed in "
                                      f"{time.perf_counter() - t2:.2f}s)", cause=getattr(e, "code", "error")) from None
            log.warning("migration of %s to %s: its answer was lost (%s), and it runs there", name, to, e,
                        extra={"workspace": name})
            target = {**landed, "restore": {"times": {}}}
        _phases(times, target, t0, t1)
        times["total"] = time.perf_counter() - t_start
        svc.forward(target["address"], url)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    log.info("workspace %s migrated to %s", name, to, extra={"workspace": name, **times})
    return {"workspace": name, "to": url, "address": target["address"], "uid": target["uid"],
            "allocation": target["allocation"], "times": times, "bytes": cp["bytes"], "criu": cp["criu"],
            "live": live, "mode": "pre-copy" if live else "stop-and-copy", "rounds": rounds}


LANDED_TRIES = 5


async def _landed(svc: NodeService, url: str, tls: ssl.SSLContext, name: str, source_id: str, error: Exception,
                  image_path: str) -> dict[str, Any] | None:
    """After a restore request failed: the target's workspace if it did restore ours (its answer was lost),
    else None (resume here). A target that refused says so in its answer; one that cannot be asked is
    tried again a few times, and if it stays silent nothing is resumed here, so it never runs twice: the
    image is kept for the admin."""
    if not isinstance(error, transfer.AnswerLost):
        return None  # the target refused, or never had the image whole: nothing runs there
    delay = 0.2
    for attempt in range(LANDED_TRIES):
        try:
            got = await transfer.peer_get(url, tls, f"/v1/peer/workspaces/{name}")
        except NotFound:
            return None
        except Unavailable:
            if attempt == LANDED_TRIES - 1:
                kept = os.path.join(svc.config.home, "checkpoints", f"{name}-unknown-{int(time.time())}.img")
                shutil.move(image_path, kept)
                raise MigrationUnknown(f"node {url} took the image of {name} and then stopped answering; it is not "
                                       f"resumed here, so it never runs twice: once that node is known not to run "
                                       f"it, `xos ws restore {kept}`", workspace=name, image=kept) from None
            await asyncio.sleep(delay)
            delay *= 2
            continue
        origin = got.get("origin") or {}
        return got if origin.get("workspace") == source_id else None
    return None


class MigrationUnknown(Conflict):
    """The target took the image and did not say whether it runs there; the source keeps the image."""

    code = "migration-unknown"


def _phases(times: dict[str, float], target: dict[str, Any], t0: float, t1: float) -> None:
    """A migration's transfer, verify, restore and downtime: the target's own times taken out of the
    wait since the dump (t1) and the stop (t0)."""
    remote = target["restore"]["times"]
    times["verify"], times["restore"] = remote.get("verify", 0), remote.get("restore", 0)
    times["transfer"] = time.perf_counter() - t1 - times["verify"] - times["restore"]
    times["downtime"] = time.perf_counter() - t0


async def _postcopy(svc: NodeService, name: str, to: str, url: str, tls: ssl.SSLContext,
                    progress: Migration) -> dict[str, Any]:
    """Live migration on a kernel without dirty-page tracking: everything but memory is dumped and sent
    while the workspace is stopped, and it runs at the target at once; its memory follows, fetched on
    demand (userfaultfd) and in the background from a page server here. Until the target has restored
    it, any failure resumes it here. Once it runs there, the source must stay up until every page is
    across: that is post-copy's price (pre-copy has none), and the result says how long it took."""
    ws = svc.get(name)
    host = urllib.parse.urlsplit(svc.config.own_peer_url()).hostname or ""
    with socket.socket() as probe:  # a free port on the grid address, for CRIU's page server
        probe.bind((host, 0))
        port = probe.getsockname()[1]
    work = scratch(svc, "migrate")
    path = os.path.join(work, "image")
    t0 = time.perf_counter()
    logs = ""
    try:
        progress.enter(Phase.DUMP)
        cp = await checkpoint(svc, name, path, lazy=(host, port))
        serving: criu_mod.Running = cp.pop("lazy")
        logs = cp.pop("logs")
        times = dict(cp["times"])
        t1 = time.perf_counter()
        try:
            progress.sending(cp["bytes"])
            target = await transfer.peer_restore(url, tls, path, name, on_sent=progress.sent_more,
                                                 lazy=(host, port))
        except Exception as e:
            log.warning("migration of %s to %s failed, resuming here: %s", name, to, e, extra={"workspace": name})
            await serving.abort()
            if ws.cgroup.exists():
                ws.cgroup.set_frozen(False)
            raise MigrationFailed(f"migration of {name} to {to} failed ({e}); it runs here again "
                                  f"(down {time.perf_counter() - t0:.2f}s)",
                                  cause=getattr(e, "code", "error")) from None
        _phases(times, target, t0, t1)
        progress.enter(Phase.MEMORY_FOLLOWING)
        try:
            run = await serving.finish(POSTCOPY_TIMEOUT)
        except criu_mod.CriuError as e:
            # The target lost its memory's source: it removes its copy. Whether ours lives on depends on how
            # far CRIU got; say which.
            alive = bool(ws.cgroup.exists() and ws.cgroup.procs())
            if alive:
                ws.cgroup.set_frozen(False)
            raise MigrationFailed(f"memory of {name} did not reach {to} ({e}); "
                                  + ("it runs here again" if alive else "its processes are lost"),
                                  cause="postcopy-failed") from None
        times["postcopy"] = time.perf_counter() - t0 - times["downtime"]
        times["total"] = time.perf_counter() - t0
        await ws.destroy(f"migrated to {to}")
        svc.workspaces.pop(name, None)
        svc.forward(target["address"], url)
    finally:
        shutil.rmtree(work, ignore_errors=True)
        if logs:
            shutil.rmtree(logs, ignore_errors=True)
    log.info("workspace %s migrated to %s (post-copy)", name, to, extra={"workspace": name, **times})
    return {"workspace": name, "to": url, "address": target["address"], "uid": target["uid"],
            "allocation": target["allocation"], "times": times, "bytes": cp["bytes"], "criu": run.stats,
            "live": True, "mode": "post-copy", "rounds": []}


async def _pre_dumps(svc: NodeService, name: str, work: str, url: str, tls: ssl.SSLContext, stage: str | None,
                     rounds: list[dict[str, float]], parts: dict[str, str]) -> str:
    """Pre-dump rounds, each sent to the target's stage at once; the last round's directory."""
    criu = criu_mod.find().require()
    ws = svc.get(name)
    prev = None
    for i in range(1, PRE_DUMP_ROUNDS + 1):
        images = os.path.join(work, f"pre{i}")
        os.makedirs(images)
        async with ws.lock:
            if ws.tree_outsiders():
                raise NotCheckpointable(f"workspace {name} has processes started with exec; only the main "
                                        "program's tree can be migrated")
            run = await ws.dump(criu, images, True, log_path(svc, name, "pre-dump"), prev, pre=True)
        t = time.perf_counter()
        part = os.path.join(work, f"pre{i}.tar")
        image.pack(part, images, None, {"part": f"pre{i}", "node": svc.config.name})
        await transfer.peer_stage(url, tls, part, stage or "", f"pre{i}")
        os.unlink(part)
        pages = run.stats.get("memory_pages_written", 0.0)
        rounds.append({"pages": pages, "dump": run.seconds, "send": time.perf_counter() - t})
        parts[f"pre{i}"] = images
        prev = images
        if i > 1 and pages > PRE_DUMP_SHRINK * rounds[-2]["pages"]:
            break  # the dirty set no longer shrinks enough: stop and copy the rest
    assert prev is not None
    return prev


def _image_bytes(path: str) -> int:
    """What unpacking the image file at `path` will take: about its size."""
    try:
        return os.path.getsize(path)
    except OSError:
        return 0
