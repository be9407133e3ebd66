"""A workspace: a cgroup, PID/mount/network namespaces held by xos-init, a shaped veth pair."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import importlib.resources
import logging
import os
import re
import resource
import shutil
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from pyroute2 import AsyncIPRoute

from xos.allocation import Allocation
from xos.checkpoint import criu as criu_mod
from xos.errors import BadName, IllegalTransition, InvalidInput, KernelError, XosError
from xos.kernel import netlink as rtnl
from xos.kernel import safepath
from xos.kernel import spawn as sp
from xos.kernel.cgroup import Cgroup, Hierarchy
from xos.kernel.procs import start_time
from xos.node import network
from xos.node.config import NodeConfig
from xos.node.dumps import QUANTUM, WorkspaceDumps
from xos.node.gridmount import Clients, GridMount
from xos.node.store import WORKSPACE, NodeStore, UsageRecord, WorkspaceRecord, WorkspaceState
from xos.paths import WORK

log = logging.getLogger(__name__)


NAME = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,62}$")


def check_name(name: Any) -> str:
    """A workspace name: lower-case letters, digits, '.', '_', '-', at most 63."""
    if not isinstance(name, str) or not NAME.match(name):
        raise BadName(f"bad workspace name {name!r}: use 1-63 of a-z, 0-9, '.', '_', '-', starting with a "
                      "letter or digit", name=str(name))
    return name


class MainNotStarted(InvalidInput):
    """The workspace's main program could not be started: its stdio could not be opened, or its executable
    run, as the workspace's user."""

    code = "main-not-started"


NS_FLAGS = sp.CLONE_NEWPID | sp.CLONE_NEWNS | sp.CLONE_NEWNET


def _rlimits() -> dict[int, tuple[int, int]]:
    # Only ever lowered: raising a hard limit needs CAP_SYS_RESOURCE, which a node may not have.
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    cap = 65536 if hard == resource.RLIM_INFINITY else min(hard, 65536)
    return {resource.RLIMIT_NOFILE: (min(1024, cap), cap), resource.RLIMIT_CORE: (0, 0)}


RLIMITS = _rlimits()
INIT_TIMEOUT = 5.0
STATUS = ".main.status"  # where xos-init leaves the main program's end, in the workspace directory (init.c)
CREDENTIAL_KEY = "xos:credential"  # the description pam_xos gives it in a login's session keyring


def init_program() -> str:
    """Path of the xos-init executable built with the package."""
    return str(importlib.resources.files("xos._native") / "xos-init")


@dataclass
class MainProgram:
    """The program xos-init starts as its own child: the workload a checkpoint takes whole."""

    argv: list[str]
    env: dict[str, str]
    out: str | None = None  # stdout (and stderr unless `err`): in the workspace directory, or an absolute path
    err: str | None = None
    stdin: str | None = None  # opened, as the others, as the workspace's user
    input: bytes | None = None  # written to `stdin` in the workspace directory before the program starts


@dataclass
class NodeContext:
    """What every workspace of a node shares."""

    config: NodeConfig
    hierarchy: Hierarchy
    store: NodeStore
    rtnl: AsyncIPRoute
    bridge: int
    subnet: network.Subnet
    raw: rtnl.RawRtnl  # hand-encoded netlink of the node's namespace: shaping, link counters

    def cgroup_rel(self, wsid: str) -> str:
        """Where the workspace's cgroup lives, tagged with its id."""
        return f"{self.config.cgroup_root}/ws-{wsid}"

    def directory(self, rec: WorkspaceRecord) -> str:
        """The workspace's own directory, the default cwd of its processes."""
        return os.path.join(self.config.home, "workspaces", rec.id)


class Workspace(WorkspaceDumps):
    """A live workspace of this node."""

    def __init__(self, ctx: NodeContext, rec: WorkspaceRecord) -> None:
        self.ctx = ctx
        self.rec = rec
        self.cgroup: Cgroup = ctx.hierarchy.cgroup(ctx.cgroup_rel(rec.id))
        self.lock = asyncio.Lock()
        self.init_pidfd = -1
        self.nsfd = -1
        self.rtnl: AsyncIPRoute | None = None
        self.raw: rtnl.RawRtnl | None = None
        self.host_index = 0  # the bridge side of the veth pair, in the node's namespace
        self.eth0_index = 0  # the workspace side, in its own namespace
        self._stats: tuple[int, int] = (0, 0)
        self.usage_rec = UsageRecord(ws_id=rec.id, name=rec.name, started=rec.created)
        self._grid: Clients | None = None

    @property
    def host_link(self) -> str:
        """The bridge side of the veth pair."""
        return network.HOST_PREFIX + self.rec.id

    @property
    def tag(self) -> str:
        """Written on kernel objects so start-up can tell whose they are."""
        return f"xos:{self.ctx.config.name}:{self.rec.id}:{self.rec.name}"

    def transition(self, new: WorkspaceState, reason: str) -> None:
        """Move to `new` if the lifecycle allows it, persisted before returning."""
        self.ctx.store.transition(self.rec, WORKSPACE.step(self.rec.name, WorkspaceState(self.rec.state), new, reason))
        log.info("workspace %s: %s", self.rec.name, new, extra={"workspace": self.rec.name, "reason": reason})

    # -- creation, adoption, destruction -------------------------------------------------------

    @classmethod
    async def create(cls, ctx: NodeContext, rec: WorkspaceRecord, main: MainProgram | None = None) -> Workspace:
        """Make every kernel object of a new workspace; on failure remove what was made."""
        ws, _ = await cls._make(ctx, rec, lambda ws: ws._build(main), "creation")
        return ws

    @classmethod
    async def _make(cls, ctx: NodeContext, rec: WorkspaceRecord, build: Callable[[Workspace], Awaitable[Any]],
                    what: str) -> tuple[Workspace, Any]:
        """Record, then build (`what`: creation or restore); on failure remove what was made; then running."""
        ctx.store.add_workspace(rec)  # first, so a crash in the middle is reconciled at start-up
        ws = cls(ctx, rec)
        try:
            result = await build(ws)
        except BaseException as e:
            # What the caller got wrong (a stdout it cannot open) is theirs to read, not the node's to warn of.
            (log.info if isinstance(e, InvalidInput) else log.warning)("workspace %s: %s failed: %s", rec.name,
                                                                         what, e)
            with contextlib.suppress(Exception):
                await ws.destroy(f"{what} failed: {e}")
            raise
        ws.transition(WorkspaceState.RUNNING, {"creation": "created", "restore": "restored"}[what])
        return ws, result

    async def _build(self, main: MainProgram | None) -> None:
        ctx, rec = self.ctx, self.rec
        self.cgroup = ctx.hierarchy.create(self.cgroup.rel)
        self.cgroup.apply(rec.alloc)
        wdir = ctx.directory(rec)
        os.makedirs(wdir, mode=0o700)
        os.chown(wdir, rec.uid, rec.gid)

        argv, env = [init_program(), "--work", wdir], {}
        mounts = self.grid_mounts()
        if mounts:
            argv.append("--hold")  # the main program starts once its grid mounts are there
            for m in mounts:
                os.makedirs(os.path.join(wdir, "grid", m.volume), mode=0o755, exist_ok=True)
            os.chown(os.path.join(wdir, "grid"), rec.uid, rec.gid)
        if main is not None or rec.uid != 0:  # init becomes the user once it has started the main program
            argv += ["--uid", str(rec.uid), "--gid", str(rec.gid)]
        if main is not None:
            argv += [a for flag, v in (("--in", main.stdin), ("--out", main.out), ("--err", main.err)) if v
                     for a in (flag, v)]
            argv += ["--", *main.argv]
            env = main.env
            if main.input is not None and main.stdin:
                fd = safepath.open_beneath(wdir, main.stdin, os.O_WRONLY | os.O_CREAT | os.O_EXCL,
                                           as_user=(rec.uid, rec.gid))
                with open(fd, "wb") as f:
                    f.write(main.input)
        cgfd, procs = self.cgroup.spawn_target()
        r, w = os.pipe2(os.O_CLOEXEC)
        go_r, go_w = os.pipe2(os.O_CLOEXEC) if mounts else (-1, -1)
        try:
            null = os.open(os.devnull, os.O_RDWR | os.O_CLOEXEC)
            try:
                # The session keyring init joins (with the owner's credential) is its main program's.
                pid = sp.spawn(sp.SpawnSpec(argv=argv, env=env, new_ns_flags=NS_FLAGS, cgroup_fd=cgfd,
                                            cgroup_procs_fds=procs, stdin=go_r if mounts else null, stdout=w,
                                            stderr=null, setsid=True, cwd="/", rlimits=RLIMITS, new_keyring=True,
                                            key=self.credential_key()))
            finally:
                os.close(null)
            os.close(w)
            w = -1
            self.init_pidfd = sp.pidfd_open(pid)
            rec.init_pid, rec.init_start = pid, start_time(pid) or 0
            ctx.store.update_workspace(rec)
            line = await asyncio.wait_for(_read_line(r), INIT_TIMEOUT)
            if mounts and line.strip() == "mounted":
                mntns = os.open(f"/proc/{pid}/ns/mnt", os.O_RDONLY | os.O_CLOEXEC)
                try:
                    for m in mounts:
                        await self.grid_clients().mount(m, mntns)
                finally:
                    os.close(mntns)
                os.write(go_w, b"g")
                line = await asyncio.wait_for(_read_line(r), INIT_TIMEOUT)
        finally:
            for fd in (r, w, go_r, go_w):
                if fd >= 0:
                    os.close(fd)
        if not line.startswith("ready"):
            words = line.split()
            if main is not None and len(words) == 3 and words[0] == "error" and words[2].isdigit():
                stage, err = words[1], int(words[2])
                path = {"stdin": main.stdin, "stdout": main.out, "stderr": main.err}.get(stage)
                what = f"cannot open its {stage} {path}" if path else f"cannot {stage} {main.argv[0]}"
                raise MainNotStarted(f"the main program of {rec.name} did not start: {what}: {os.strerror(err)}",
                                     stage=stage, errno=err)
            raise KernelError(f"xos-init of {rec.name} failed: {line.strip() or 'no answer'}", errno.EIO)
        await self._open_netns()
        assert self.raw is not None
        self.host_index, self.eth0_index = network.attach(
            ctx.raw, self.raw, ctx.bridge, rec.id, self.tag, rec.init_pid, rec.address, ctx.subnet)
        # HTB needs an explicit quantum: its default derives from rate/r2q and is out of range
        # (and noisy in the kernel log) for both slow and fast classes.
        for raw, index, rate in ((self.raw, self.eth0_index, rec.alloc.egress),
                                 (ctx.raw, self.host_index, rec.alloc.ingress)):
            rtnl.htb_root(raw, index)
            rtnl.htb_class(raw, index, rate, QUANTUM, create=True)

    # -- checkpoint and restore ------------------------------------------------------------------

    @classmethod
    async def restore(cls, ctx: NodeContext, rec: WorkspaceRecord, criu: criu_mod.Criu, images: str, work: str,
                      keep_log: str, workdir: str, lazy: bool = False) -> tuple[Workspace, criu_mod.Run]:
        """A workspace made around a restored process tree: its cgroup pre-made (CRIU runs inside it, so
        every restored task starts there), its directory from the image, its veth pair re-made. `lazy`:
        its memory comes on demand from the lazy-pages daemon already listening in `workdir`."""
        ws, run = await cls._make(ctx, rec, lambda ws: ws._restore(criu, images, work, keep_log, workdir, lazy),
                                  "restore")
        return ws, run

    async def _open_netns(self) -> None:
        try:
            self.nsfd = os.open(f"/proc/{self.rec.init_pid}/ns/net", os.O_RDONLY | os.O_CLOEXEC)
        except OSError as e:
            raise KernelError(f"cannot open the network namespace of {self.rec.name}", e.errno or errno.EIO) from None
        self.rtnl = await network.open_rtnl(self.nsfd)
        self.raw = rtnl.RawRtnl(network.netlink_socket(self.nsfd))

    @classmethod
    async def adopt(cls, ctx: NodeContext, rec: WorkspaceRecord) -> Workspace | None:
        """Take over a workspace that outlived a daemon; None if it did not survive whole."""
        ws = cls(ctx, rec)
        if rec.state not in (WorkspaceState.RUNNING, WorkspaceState.FROZEN) or rec.init_pid <= 0:
            return None
        if start_time(rec.init_pid) != rec.init_start:
            return None
        try:
            ws.init_pidfd = sp.pidfd_open(rec.init_pid)
            if rec.init_pid not in ws.cgroup.procs():
                raise KernelError("init is not in the workspace cgroup", errno.ESRCH)
            await ws._open_netns()
            assert ws.rtnl is not None
            host, eth0 = await network.link_index(ctx.rtnl, ws.host_link), await network.link_index(ws.rtnl, "eth0")
            if host is None or eth0 is None:
                raise KernelError("veth pair is gone", errno.ENODEV)
            ws.host_index, ws.eth0_index = host, eth0
        except (OSError, XosError) as e:
            log.warning("workspace %s cannot be adopted: %s", rec.name, e)
            ws._close_handles()
            return None
        for u in ctx.store.usage(rec.name):
            if u.ws_id == rec.id:
                ws.usage_rec = u
        return ws

    async def destroy(self, reason: str) -> None:
        """Kill every process and remove every kernel object; the usage record stays."""
        if self.rec.state != WorkspaceState.DESTROYING:
            self.transition(WorkspaceState.DESTROYING, reason)
        if self.cgroup.exists():
            self.cgroup.kill()
            self._sample_cgroup()
        if self.init_pidfd >= 0:
            # A dying PID-namespace init waits until every process of its namespace is reaped, and the
            # processes we exec'd are our children: keep the event loop (and its reapers) running.
            await wait_exit(self.init_pidfd, 10.0)
            with contextlib.suppress(ChildProcessError, OSError):
                os.waitid(os.P_PIDFD, self.init_pidfd, os.WEXITED | os.WNOHANG)
        grid = self._grid or Clients.load(self.ctx.config.run, self.rec.id)  # or a previous daemon's
        if grid is not None:  # after the processes: their last writes went through their clients
            await grid.stop()
        if self.host_index:
            with contextlib.suppress(XosError, OSError):
                self._take_net(rtnl.link_counters(self.ctx.raw).get(self.host_index))
        if self.rec.checkpoint.get("foreign_gateway"):
            with contextlib.suppress(XosError, OSError):
                rtnl.host_route(self.ctx.raw, False, self.rec.address, oif=self.ctx.bridge)
        self.usage_rec.ended = time.time()
        self.ctx.store.save_usage(self.usage_rec)
        # Closing our handles lets the namespace go; the kernel then removes the veth pair itself,
        # in its batched namespace clean-up, instead of in an RCU-synchronous RTM_DELLINK (~20 ms).
        self._close_handles()
        self.cgroup.remove()
        shutil.rmtree(self.ctx.directory(self.rec), ignore_errors=True)
        self.transition(WorkspaceState.DESTROYED, reason)

    def _close_handles(self) -> None:
        if self.rtnl is not None:
            with contextlib.suppress(Exception):
                self.rtnl.close()
            self.rtnl = None
        if self.raw is not None:
            self.raw.close()
            self.raw = None
        for fd in (self.nsfd, self.init_pidfd):
            if fd >= 0:
                os.close(fd)
        self.nsfd = self.init_pidfd = -1
        self.cgroup.close()

    # -- control ------------------------------------------------------------------------------

    async def set_alloc(self, new: Allocation, reason: str = "renegotiated") -> None:
        """Apply a new allocation to the running processes; nothing else changes."""
        old = self.rec.alloc
        assert self.raw is not None
        self.cgroup.apply(new, old)
        if new.egress != old.egress:
            rtnl.htb_class(self.raw, self.eth0_index, new.egress, QUANTUM, create=False)
        if new.ingress != old.ingress:
            rtnl.htb_class(self.ctx.raw, self.host_index, new.ingress, QUANTUM, create=False)
        self.rec.alloc = new
        self.ctx.store.update_workspace(self.rec)
        log.info("workspace %s: allocation %s (%s)", self.rec.name, new.describe(), reason)

    def freeze(self) -> None:
        """Stop every process of the workspace where it is."""
        if self.rec.state == WorkspaceState.FROZEN:
            return
        self.transition(WorkspaceState.FROZEN, "freeze requested")
        self.cgroup.set_frozen(True)

    def thaw(self) -> None:
        """Let the processes run again."""
        if self.rec.state == WorkspaceState.RUNNING:
            return
        self.cgroup.set_frozen(False)
        self.transition(WorkspaceState.RUNNING, "thaw requested")

    def kill(self) -> None:
        """Kill every process of the workspace but its init; the workspace stays."""
        was_frozen = self.rec.state == WorkspaceState.FROZEN
        self.cgroup.kill(spare=self.rec.init_pid)
        if was_frozen:
            self.cgroup.set_frozen(True)

    def spawn(self, argv: list[str], env: dict[str, str], cwd: str | None, stdin: int, stdout: int,
              stderr: int) -> int:
        """Start a program inside the workspace as its user; the pid (a child of the daemon)."""
        if self.rec.state != WorkspaceState.RUNNING:
            raise IllegalTransition(f"workspace {self.rec.name} is {self.rec.state}; start processes only "
                                    "when it is running", state=self.rec.state)
        cgfd, procs = self.cgroup.spawn_target()
        return sp.spawn(sp.SpawnSpec(
            argv=argv, env=env, cwd=cwd or WORK, uid=self.rec.uid, gid=self.rec.gid,
            groups=[self.rec.gid], cgroup_fd=cgfd, cgroup_procs_fds=procs, ns_pidfd=self.init_pidfd,
            ns_flags=NS_FLAGS, stdin=stdin, stdout=stdout, stderr=stderr, rlimits=RLIMITS, setsid=True,
            new_keyring=True, key=self.credential_key()))

    def grid_mounts(self) -> list[GridMount]:
        """The grid file system volumes this workspace mounts."""
        return [GridMount.parse(spec) for spec in self.rec.checkpoint.get("grid", [])]

    def grid_clients(self) -> Clients:
        """The FUSE clients of its grid mounts (made on first use)."""
        if self._grid is None:
            token = self.rec.identity.get("credential")
            if not token:
                raise InvalidInput("grid mounts need the workspace's credential (create it with one)", field="grid")
            self._grid = Clients(self.ctx.config.run, self.rec.id, token, self.rec.uid, self.rec.gid,
                                 self.ctx.config.ca_file())
        return self._grid

    def _grid_externals(self) -> list[str]:
        return [a for m in self.grid_mounts() for a in ("--external", f"mnt[{m.point}]:{m.key}")]

    def credential_key(self) -> tuple[str, bytes] | None:
        """The key that carries the owner's credential into each process's session keyring, as a login's."""
        token = self.rec.identity.get("credential")
        return (CREDENTIAL_KEY, token.encode()) if token else None

    # -- accounting ---------------------------------------------------------------------------

    def _sample_cgroup(self) -> None:
        self.take(self.cgroup.counters().read(), None)

    def _take_net(self, rx_tx: tuple[int, int] | None) -> bool:
        rec = self.usage_rec
        if rx_tx is None or (rx_tx[0] <= rec.bytes_out and rx_tx[1] <= rec.bytes_in):
            return False
        # The bridge side receives what the workspace sends.
        rec.bytes_out = max(rec.bytes_out, rx_tx[0])
        rec.bytes_in = max(rec.bytes_in, rx_tx[1])
        return True

    def take(self, values: tuple[int, ...], rx_tx: tuple[int, int] | None) -> bool:
        """Fold one read of the cgroup counters and the link counters into the usage record; changed?"""
        rec = self.usage_rec
        cpu = values[0] * self.cgroup.cpu_scale()
        changed = cpu > rec.cpu_ns or values[2] > rec.memory_peak or values[4] > rec.oom_kills \
            or values[5] > rec.pids_refused
        if changed:
            rec.cpu_ns = max(rec.cpu_ns, cpu)
            rec.memory_peak = max(rec.memory_peak, values[2])
            rec.oom_kills = max(rec.oom_kills, values[4])
            rec.pids_refused = max(rec.pids_refused, values[5])
        return self._take_net(rx_tx) or changed

    def sample(self) -> UsageRecord:
        """Update the usage record from the kernel counters (not persisted)."""
        if self.rec.state in (WorkspaceState.RUNNING, WorkspaceState.FROZEN):
            self._sample_cgroup()
            self._take_net(rtnl.link_counters(self.ctx.raw).get(self.host_index))
        return self.usage_rec

    async def describe(self) -> dict[str, Any]:
        """State, allocation as the kernel holds it, usage, address."""
        rec = self.rec
        out: dict[str, Any] = {
            "name": rec.name, "id": rec.id, "state": rec.state, "address": rec.address,
            "uid": rec.uid, "gid": rec.gid, "allocation": rec.alloc.to_json(), "init_pid": rec.init_pid,
            "created": rec.created, "directory": self.ctx.directory(rec),
        }
        if rec.checkpoint.get("every"):
            out["checkpointing"] = {"every": rec.checkpoint["every"], "keep": rec.checkpoint.get("keep", 3),
                                    "last": rec.checkpoint.get("at")}
        if rec.checkpoint.get("origin"):
            out["origin"] = rec.checkpoint["origin"]  # the node and workspace it was restored from
        if rec.identity:
            out["owner"] = {"vo": rec.identity["vo"], "user": rec.identity["user"],
                            "credential": bool(rec.identity.get("credential"))}
        if rec.state in ("running", "frozen"):
            limits = dict(self.cgroup.limits())
            assert self.raw is not None
            limits["egress"] = rtnl.htb_rate(self.raw, self.eth0_index)
            limits["ingress"] = rtnl.htb_rate(self.ctx.raw, self.host_index)
            out["kernel"] = limits
            out["processes"] = len([p for p in self.cgroup.procs() if p != rec.init_pid])
        ended = self.main_exit()
        if ended is not None:
            out["main_exit"] = ended
        out["usage"] = self.usage_rec.to_json()
        return out

    def main_exit(self) -> dict[str, int] | None:
        """How the main program ended ({"exit": N} or {"signal": S}), None while it runs or if there is none.

        xos-init writes it into the workspace directory when its child ends; the workspace itself
        stays until it is removed, so a job manager reads the status and then collects the output."""
        try:
            data = safepath.read_small(self.ctx.directory(self.rec), STATUS, 64, as_user=(self.rec.uid, self.rec.gid))
        except (OSError, safepath.UnsafePath):
            return None  # the directory is gone, or the user put something else there: no status
        if data is None:
            return None
        kind, _, value = data.decode(errors="replace").strip().partition(" ")
        if kind in ("exit", "signal") and value.isdigit():
            return {kind: int(value)}
        return None


async def wait_exit(pidfd: int, timeout: float) -> None:
    """Wait until the process behind `pidfd` has exited (a pidfd polls readable then)."""
    loop = asyncio.get_running_loop()
    done: asyncio.Future[None] = loop.create_future()

    def readable() -> None:
        if not done.done():
            done.set_result(None)

    loop.add_reader(pidfd, readable)
    try:
        await asyncio.wait_for(done, timeout)
    except TimeoutError:
        raise KernelError(f"process behind pidfd {pidfd} did not exit", errno.ETIMEDOUT) from None
    finally:
        loop.remove_reader(pidfd)


async def _read_line(fd: int) -> str:
    """Read what the init writes until it closes its end."""
    loop = asyncio.get_running_loop()
    os.set_blocking(fd, False)
    chunks: list[bytes] = []
    done: asyncio.Future[None] = loop.create_future()

    def readable() -> None:
        try:
            data = os.read(fd, 256)
        except BlockingIOError:
            return
        if data:
            chunks.append(data)
            if b"\n" not in data:
                return
        loop.remove_reader(fd)
        if not done.done():
            done.set_result(None)

    loop.add_reader(fd, readable)
    try:
        await done
    finally:
        loop.remove_reader(fd)
    return b"".join(chunks).decode(errors="replace")
