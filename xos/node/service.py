"""The node daemon's core: workspaces, admission control, accounting, reconciliation."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import errno
import grp
import logging
import os
import pwd
import re
import secrets
import shutil
import signal
import socket
import time
import urllib.parse
from dataclasses import dataclass, replace
from typing import Any

from xos import units
from xos.allocation import Allocation
from xos.checkpoint import criu as criu_mod
from xos.errors import (
    BadConfig,
    InvalidInput,
    OverCapacity,
    UnknownUser,
    WorkspaceExists,
    WorkspaceNotFound,
    XosError,
)
from xos.kernel import netlink as rtnl_raw
from xos.kernel import spawn as sp
from xos.kernel.cgroup import detect
from xos.node import checkpoints, network
from xos.node.accounting import Accounting
from xos.node.config import NodeConfig
from xos.node.gridmount import GridMount
from xos.node.logins import NodeIdentity
from xos.node.migration import Migration
from xos.node.store import NodeStore, ProcessRecord, UsageRecord, WorkspaceRecord, WorkspaceState, open_store
from xos.node.workspace import MainProgram, NodeContext, Workspace, check_name
from xos.paths import WORK
from xos.wire.metrics import Registry

log = logging.getLogger(__name__)


ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
MAX_ARGV = 4096


@dataclass
class Process:
    """A process the daemon started in a workspace and waits for."""

    ws: Workspace
    pid: int
    pidfd: int
    row: int
    ooms_before: int
    done: asyncio.Future[dict[str, Any]]


class NodeService(Accounting):
    """Everything `xos serve node` does, independent of the HTTP layer."""

    def __init__(self, config: NodeConfig, store: NodeStore | None = None) -> None:
        self.config = config
        self.store = store
        self.ctx: NodeContext | None = None
        self.background: set[asyncio.Task[None]] = set()  # work that outlives its request (post-copy memory)
        self.workspaces: dict[str, Workspace] = {}
        self.creating: dict[str, asyncio.Event] = {}  # names being made now: set when that ends either way
        self.aem_epoch = 0  # the newest job manager's epoch seen (xos.leader): an older one's calls are refused
        self.admission = asyncio.Lock()
        self.forwarded: dict[str, str] = {}  # address of a workspace that migrated away -> its node
        self.progress: dict[str, Migration] = {}  # migrations under way, by workspace
        self.requests = Registry("node")  # its APIs' requests (the workspaces' metrics are accounting's)
        self.processes: dict[int, Process] = {}
        self._sampler: asyncio.Task[None] | None = None
        self._checkpointer: asyncio.Task[None] | None = None
        self._sweeps = 0
        self._dirty: dict[str, UsageRecord] = {}
        self.identity = NodeIdentity(config)

    # -- start-up and shutdown ----------------------------------------------------------------

    async def start(self) -> None:
        """Open state, cgroups and netlink; reconcile with what the kernel has; start sampling."""
        cfg = self.config
        os.makedirs(os.path.join(cfg.home, "workspaces"), mode=0o711, exist_ok=True)
        _check_reachable(os.path.join(cfg.home, "workspaces"))
        os.makedirs(cfg.run, mode=0o755, exist_ok=True)
        os.makedirs(WORK, mode=0o755, exist_ok=True)  # the mount point of every workspace's own directory
        if self.store is None:
            self.store = open_store(cfg.db or os.path.join(cfg.home, "node.db"))
        hierarchy = detect(cfg.cgroup)
        hierarchy.prepare(cfg.cgroup_root)
        subnet = network.Subnet.parse(cfg.subnet)
        ipr = await network.open_rtnl()
        bridge = await network.ensure_bridge(ipr, cfg.bridge, subnet)
        raw = rtnl_raw.RawRtnl(network.netlink_socket())
        self.ctx = NodeContext(cfg, hierarchy, self.store, ipr, bridge, subnet, raw)
        await self.reconcile()
        self.forwarded = self.store.forwards()
        checkpoints.sweep(self)
        self._sampler = asyncio.create_task(self._sample_loop())
        self._checkpointer = asyncio.create_task(self._checkpoint_loop())
        await self.identity.start(self)
        c = await asyncio.to_thread(criu_mod.find)
        log.info("node %s up: cgroup %s, bridge %s %s, %d workspace(s) adopted; checkpoint %s", cfg.name,
                 hierarchy.name, cfg.bridge, cfg.subnet, len(self.workspaces),
                 f"with CRIU {c.version} ({c.path})" if c.ok else f"unavailable: {c.reason}")

    async def stop(self) -> None:
        """Stop serving; workspaces keep running and are adopted by the next start."""
        await self.identity.stop()
        for task in (self._sampler, self._checkpointer, *self.background):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        self.sample(persist=True)
        for ws in self.workspaces.values():
            ws._close_handles()
        if self.ctx is not None:
            self.ctx.rtnl.close()
            self.ctx.raw.close()
        if self.store is not None:
            self.store.close()

    async def reconcile(self, adopt: bool = True) -> dict[str, list[str]]:
        """Adopt live workspaces, remove remains of dead ones and orphans nobody recorded."""
        ctx = self._ctx()
        report: dict[str, list[str]] = {"adopted": [], "removed": [], "orphans": []}
        for rec in ctx.store.workspaces():
            ws = await Workspace.adopt(ctx, rec) if adopt else None
            if ws is not None:
                self.workspaces[rec.name] = ws
                report["adopted"].append(rec.name)
                continue
            log.warning("workspace %s (%s) did not survive; removing its remains", rec.name, rec.state)
            await Workspace(ctx, rec).destroy("found dead at start-up")
            report["removed"].append(rec.name)
        known = {ws.rec.id for ws in self.workspaces.values()}
        for child in ctx.hierarchy.children(ctx.config.cgroup_root):
            if child.startswith("ws-") and child[3:] not in known:
                cg = ctx.hierarchy.cgroup(f"{ctx.config.cgroup_root}/{child}")
                cg.kill()
                cg.remove()
                report["orphans"].append(f"cgroup {child}")
        for name in rtnl_raw.link_names(ctx.raw, network.HOST_PREFIX):
            if name[len(network.HOST_PREFIX):] not in known:
                await network.remove_link(ctx.rtnl, name)
                report["orphans"].append(f"link {name}")
        wroot = os.path.join(ctx.config.home, "workspaces")
        for entry in os.listdir(wroot):
            if entry not in known:
                shutil.rmtree(os.path.join(wroot, entry), ignore_errors=True)
        if report["orphans"]:
            log.warning("removed orphans: %s", ", ".join(report["orphans"]))
        return report

    async def purge(self) -> None:
        """Destroy every workspace and remove the node's bridge and cgroup root."""
        ctx = self._ctx()
        for name in list(self.workspaces):
            await self.destroy(name)
        await network.remove_link(ctx.rtnl, ctx.config.bridge)
        ctx.hierarchy.remove_root(ctx.config.cgroup_root)

    def _ctx(self) -> NodeContext:
        if self.ctx is None:
            raise RuntimeError("node service not started")
        return self.ctx

    def context(self) -> NodeContext:
        """What every workspace of this node shares (the service must be started)."""
        return self._ctx()

    def offer(self, cpu: Any = None, memory: Any = None) -> dict[str, Any]:
        """Change what this node hands out while it runs: its owner takes some back, or gives more.

        Running workspaces keep their allocations. When they hold more than the new offer, the ad says
        by how much (OverCpus, OverMemory) and a job manager moves jobs away until they fit. Flags
        decide the offer again at the next start."""
        changes: dict[str, Any] = {}
        if cpu is not None:
            changes["cpu"] = units.parse_cpus(cpu)
        if memory is not None:
            changes["memory"] = units.parse_size(memory)
            if changes["memory"] <= 0:
                raise InvalidInput("memory must be more than 0", field="memory")
        if not changes:
            raise InvalidInput("give what the node offers: cpu, memory or both")
        self.config = replace(self.config, **changes)
        self._ctx().config = self.config
        log.info("node %s now offers %s", self.config.name, ", ".join(f"{k}={v:g}" for k, v in changes.items()))
        return self.node_info()

    # -- checkpoints ----------------------------------------------------------------------------

    async def checkpoint(self, name: str, out: str, leave_running: bool = False) -> dict[str, Any]:
        """Dump workspace `name` into the image file `out` (see xos.node.checkpoints)."""
        return await checkpoints.checkpoint(self, name, out, leave_running)

    async def restore(self, path: str, name: str | None = None, parts: dict[str, str] | None = None,
                      verified: bool = False, lazy: tuple[str, int] | None = None,
                      from_peer: bool = False) -> tuple[Workspace, dict[str, Any]]:
        """Restore the image at `path` as a new workspace (`verified`: checked already, on the way in;
        `lazy`: its memory from a page server at that address and port; `from_peer`: sent by another host)."""
        return await checkpoints.restore(self, path, name, parts, verified, lazy, from_peer)

    async def set_checkpointing(self, name: str, every: Any, keep: Any) -> Workspace:
        """Checkpoint workspace `name` every `every` (seconds or "10m"; 0 stops), keeping the newest `keep`."""
        ws = self.get(name)
        seconds = units.parse_duration(every)
        if 0 < seconds < 1:
            raise InvalidInput("checkpoint every second at most", field="every")
        count = units.parse_count(keep, "keep") if keep is not None else int(ws.rec.checkpoint.get("keep", 3))
        if count > 100:
            raise InvalidInput("keep at most 100 periodic checkpoints", field="keep")
        if seconds:
            criu_mod.find().require()
        ws.rec.checkpoint.update(every=seconds, keep=count)
        self._ctx().store.update_workspace(ws.rec)
        return ws

    def periodic_images(self, ws: Workspace) -> list[str]:
        """The periodic checkpoint images of a workspace, oldest first."""
        d = os.path.join(self.config.home, "checkpoints", "periodic", ws.rec.id)
        try:
            return [os.path.join(d, n) for n in sorted(os.listdir(d)) if n.endswith(".img")]
        except FileNotFoundError:
            return []

    async def _checkpoint_loop(self) -> None:
        """Take the periodic checkpoints that are due (checked every second), pruning to `keep`."""
        while True:
            await asyncio.sleep(1.0)
            now = time.time()
            for ws in list(self.workspaces.values()):
                every = float(ws.rec.checkpoint.get("every", 0) or 0)
                if (not every or ws.rec.state != WorkspaceState.RUNNING
                        or now - float(ws.rec.checkpoint.get("at", 0)) < every):
                    continue
                d = os.path.join(self.config.home, "checkpoints", "periodic", ws.rec.id)
                os.makedirs(d, mode=0o700, exist_ok=True)
                ws.rec.checkpoint["at"] = now
                try:
                    await checkpoints.checkpoint(self, ws.rec.name, os.path.join(d, f"{int(now * 1000):015d}.img"),
                                             leave_running=True)
                except Exception as e:  # a failed round is logged; the schedule goes on
                    log.warning("periodic checkpoint of %s failed: %s", ws.rec.name, e,
                                extra={"workspace": ws.rec.name})
                    continue
                images = self.periodic_images(ws)
                for old in images[: max(0, len(images) - int(ws.rec.checkpoint.get("keep", 3)))]:
                    shutil.rmtree(old, ignore_errors=True)
                if ws.rec.state == WorkspaceState.RUNNING:
                    self._ctx().store.update_workspace(ws.rec)

    async def migrate(self, name: str, to: str, live: bool = False) -> dict[str, Any]:
        """Move workspace `name` to node `to` (stop-and-copy, or live; see xos.node.checkpoints)."""
        return await checkpoints.migrate(self, name, to, live)

    def forward(self, address: str, url: str) -> None:
        """Route a workspace address of ours that moved to the node at `url` there, and keep it taken."""
        host = urllib.parse.urlsplit(url).hostname or ""
        try:
            via = socket.gethostbyname(host)
        except OSError as e:
            log.warning("cannot forward %s to %s: %s", address, url, e)
            return
        ctx = self._ctx()
        if address in ctx.subnet.hosts():
            rtnl_raw.host_route(ctx.raw, True, address, gateway=via)
            self.forwarded[address] = via
            ctx.store.set_forward(address, via)  # the route outlives us; so must the address's being taken
            # Our workspaces reach it on-link: the bridge answers ARP for it now, and what they
            # remember of its old link goes.
            network.proxy_arp(ctx.config.bridge)
            for ws in self.workspaces.values():
                if ws.raw is not None and ws.eth0_index:
                    rtnl_raw.forget_neighbour(ws.raw, ws.eth0_index, address)

    def unforward(self, address: str) -> None:
        """A forwarded address comes home: its route to the other node goes."""
        via = self.forwarded.pop(address, None)
        if via is not None:
            self._ctx().store.set_forward(address, None)
            with contextlib.suppress(XosError, OSError):
                rtnl_raw.host_route(self._ctx().raw, False, address, gateway=via)

    # -- workspaces ---------------------------------------------------------------------------

    def get(self, name: str) -> Workspace:
        """The live workspace called `name`."""
        ws = self.workspaces.get(name)
        if ws is None:
            raise WorkspaceNotFound(f"no workspace named {name!r} on node {self.config.name}", name=name)
        return ws

    async def create(self, name: str, alloc: Allocation, uid: int | None = None,
                     gid: int | None = None, owner: tuple[str, str] | None = None,
                     credential: str | None = None, main: dict[str, Any] | None = None,
                     grid: list[str] | None = None) -> Workspace:
        """Admit and build a workspace, run as `uid`/`gid` or as the account a grid identity maps to:
        `owner` (vo, user), or the subject of `credential`, verified here, which its processes then
        find in their session keyring as a login does. `main` ({argv, env, out}) is the program the
        workspace's init starts as its child: the workload a checkpoint takes whole. Nothing is left
        behind if that fails."""
        check_name(name)
        if name in self.creating or name in self.workspaces:
            raise WorkspaceExists(f"workspace {name!r} exists already", name=name)
        # Known as being made from here on, with no wait before: a peer asking for it meanwhile waits for the
        # outcome instead of hearing "no such workspace" (a job manager taking over must not start it twice).
        self.creating[name] = made = asyncio.Event()
        try:
            return await self._create(name, alloc, uid, gid, owner, credential, main, grid)
        finally:
            del self.creating[name]
            made.set()

    async def _create(self, name: str, alloc: Allocation, uid: int | None, gid: int | None,
                      owner: tuple[str, str] | None, credential: str | None, main: dict[str, Any] | None,
                      grid: list[str] | None) -> Workspace:
        ctx = self._ctx()
        mounts = [GridMount.parse(g) for g in grid or []]
        if len({m.volume for m in mounts}) != len(mounts):
            raise InvalidInput("each grid volume once", field="grid")
        if mounts and credential is None:
            raise InvalidInput("grid mounts need the workspace's credential (create it with one)", field="grid")
        if main is not None:
            _check_command(main.get("argv"), main.get("env"))
            for key in ("out", "err", "in"):
                v = main.get(key)
                if v is not None and (not isinstance(v, str) or not v or "\0" in v or v in (".", "..") or
                                      len(v) > 4096 or (not v.startswith("/") and "/" in v)):
                    raise InvalidInput(f"{key} must be a file name in the workspace directory or an absolute "
                                       "path", field=key)
            if main.get("input") is not None:
                if not isinstance(main["input"], str) or not isinstance(main.get("in"), str) or "/" in main["in"]:
                    raise InvalidInput("input (base64) needs in, a file name in the workspace directory", field="input")
                try:
                    main["input"] = base64.b64decode(main["input"], validate=True)
                except ValueError:
                    raise InvalidInput("input must be base64", field="input") from None
        identity: dict[str, str] = {}
        if credential is not None:
            claims = self.identity.verify(credential)
            if owner is not None and owner != (claims.vo, claims.sub):
                raise InvalidInput(f"the credential is {claims.sub} of {claims.vo}, not {owner[1]} of {owner[0]}")
            owner = (claims.vo, claims.sub)
            identity["credential"] = credential
        if owner is not None:
            if uid is not None or gid is not None:
                raise InvalidInput("give a grid identity (vo and user, or a credential) or a uid and gid, not both")
            if self.identity.idmap is None:
                raise InvalidInput("this node maps no grid identities")
            acct = self.identity.idmap.map(*owner)  # the same mapping and lease as a login
            uid, gid = acct.uid, acct.gid
            identity.update(vo=owner[0], user=owner[1])
        else:
            uid = self.config.default_uid if uid is None else uid
            gid = self.config.default_gid if gid is None else gid
            _check_ids(uid, gid)
        async with self.admission:
            if name in self.workspaces:
                raise WorkspaceExists(f"workspace {name!r} exists already", name=name)
            ctx.config.capacity.admit(alloc, [w.rec.alloc for w in self.workspaces.values()])
            used = {w.rec.address for w in self.workspaces.values()} | set(self.forwarded)
            address = next((a for a in ctx.subnet.hosts() if a not in used), None)
            if address is None:
                raise OverCapacity(f"no free address left in subnet {ctx.config.subnet}")
            rec = WorkspaceRecord(id=secrets.token_hex(4), name=name, state=WorkspaceState.CREATING, alloc=alloc,
                                  uid=uid, gid=gid, address=address, identity=identity,
                                  checkpoint={"grid": [m.spec for m in mounts]} if mounts else {})
            program = None
            if main is not None:
                program = MainProgram(list(main["argv"]), {**self.base_env(rec), **(main.get("env") or {})},
                                      main.get("out"), main.get("err"), main.get("in"), main.get("input"))
            ws = await Workspace.create(ctx, rec, program)
            self.workspaces[name] = ws
        ctx.store.save_usage(ws.usage_rec)
        return ws

    async def set_alloc(self, name: str, changes: dict[str, Any]) -> Workspace:
        """Renegotiate a running workspace's allocation, admitted against the others."""
        ws = self.get(name)
        new = Allocation.parse(changes, base=ws.rec.alloc)
        async with self.admission, ws.lock:
            others = [w.rec.alloc for w in self.workspaces.values() if w is not ws]
            self._ctx().config.capacity.admit(new, others)
            await ws.set_alloc(new)
        return ws

    async def destroy(self, name: str) -> None:
        """Remove a workspace and everything it had."""
        ws = self.get(name)
        async with ws.lock:
            await ws.destroy("destroy requested")  # writes the final usage record itself
            self.workspaces.pop(name, None)
            shutil.rmtree(os.path.join(self.config.home, "checkpoints", "periodic", ws.rec.id), ignore_errors=True)
            self._dirty.pop(ws.rec.id, None)

    async def freeze(self, name: str) -> None:
        """Freeze every process of a workspace."""
        ws = self.get(name)
        async with ws.lock:
            ws.freeze()

    async def thaw(self, name: str) -> None:
        """Thaw a frozen workspace."""
        ws = self.get(name)
        async with ws.lock:
            ws.thaw()

    async def kill(self, name: str) -> None:
        """Kill every process of a workspace; it stays, empty."""
        ws = self.get(name)
        async with ws.lock:
            ws.kill()

    # -- processes ----------------------------------------------------------------------------

    def start_process(self, name: str, argv: Any, env: Any = None, cwd: Any = None, stdin: int = -1,
                      stdout: int = -1, stderr: int = -1) -> Process:
        """Start `argv` in workspace `name`; the returned Process's `done` resolves with its exit."""
        ws = self.get(name)
        _check_command(argv, env)
        if cwd is not None and (not isinstance(cwd, str) or not cwd.startswith("/")):
            raise InvalidInput("cwd must be an absolute path", field="cwd")
        full_env = self.base_env(ws.rec)
        full_env.update(env or {})
        ooms = ws.cgroup.usage().oom_kills
        pid = ws.spawn(argv, full_env, cwd, stdin, stdout, stderr)
        pidfd = sp.pidfd_open(pid)
        row = self._ctx().store.add_process(ProcessRecord(ws.rec.id, pid, argv, time.time()))
        loop = asyncio.get_running_loop()
        proc = Process(ws, pid, pidfd, row, ooms, loop.create_future())
        self.processes[pid] = proc
        loop.add_reader(pidfd, self._reap, proc)
        return proc

    def base_env(self, rec: WorkspaceRecord) -> dict[str, str]:
        """The environment every process of a workspace starts with."""
        try:
            user = pwd.getpwuid(rec.uid).pw_name
        except KeyError:
            user = str(rec.uid)
        return {"PATH": sp.DEFAULT_PATH, "HOME": WORK, "USER": user, "LOGNAME": user,
                "LANG": "C.UTF-8", "XOS_WORKSPACE": rec.name}

    def _reap(self, proc: Process) -> None:
        loop = asyncio.get_running_loop()
        try:
            info = os.waitid(os.P_PIDFD, proc.pidfd, os.WEXITED | os.WNOHANG)
        except ChildProcessError:
            info = None
        if info is None and _alive(proc.pidfd):
            return
        loop.remove_reader(proc.pidfd)
        os.close(proc.pidfd)
        self.processes.pop(proc.pid, None)
        code = sig = None
        if info is not None and info.si_code == os.CLD_EXITED:
            code = info.si_status
        elif info is not None:
            sig = info.si_status
        oom = False
        if sig == signal.SIGKILL and proc.ws.rec.state != WorkspaceState.DESTROYED:
            with contextlib.suppress(OSError, XosError):
                oom = proc.ws.cgroup.usage().oom_kills > proc.ooms_before
        self._ctx().store.end_process(proc.row, time.time(), code, sig, oom)
        result = {"pid": proc.pid, "exit_code": code, "signal": sig, "oom_killed": oom,
                  "status": code if code is not None else 128 + (sig or 0)}
        if not proc.done.done():
            proc.done.set_result(result)


def _alive(pidfd: int) -> bool:
    try:
        sp.pidfd_send_signal(pidfd, 0)
    except OSError as e:
        return e.errno != errno.ESRCH
    return True


def _check_reachable(path: str) -> None:
    """Workspace users must be able to reach their directories: every ancestor searchable by others."""
    parts = os.path.abspath(path).split("/")
    for i in range(2, len(parts) + 1):
        d = "/".join(parts[:i])
        if not os.stat(d).st_mode & 0o001:
            raise BadConfig(f"{d} is not searchable by others, so workspace users could not reach their "
                            f"directories under {path}: choose another XOS_HOME or chmod o+x {d}", path=d)


def _check_ids(uid: Any, gid: Any) -> None:
    if not isinstance(uid, int) or isinstance(uid, bool) or not 0 <= uid < 2**32 - 1:
        raise InvalidInput(f"uid {uid!r} is not a number", field="uid")
    if not isinstance(gid, int) or isinstance(gid, bool) or not 0 <= gid < 2**32 - 1:
        raise InvalidInput(f"gid {gid!r} is not a number", field="gid")
    try:
        pwd.getpwuid(uid)
    except KeyError:
        raise UnknownUser(f"uid {uid} does not exist on this node", uid=uid) from None
    try:
        grp.getgrgid(gid)
    except KeyError:
        raise UnknownUser(f"gid {gid} does not exist on this node", gid=gid) from None


def _check_command(argv: Any, env: Any) -> None:
    if (not isinstance(argv, list) or not argv or len(argv) > MAX_ARGV
            or not all(isinstance(a, str) and "\0" not in a for a in argv)):
        raise InvalidInput("argv must be a non-empty list of strings without NUL bytes", field="argv")
    if env is not None and (not isinstance(env, dict) or not all(
            isinstance(k, str) and ENV_NAME.match(k) and isinstance(v, str) and "\0" not in v
            for k, v in env.items())):
        raise InvalidInput("env must map variable names to strings", field="env")
