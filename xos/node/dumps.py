"""A workspace's process tree through CRIU: which processes it cannot take, dumps (whole, pre-dumps, and
lazy ones whose memory a page server hands out), and the restore that rebuilds the workspace around a
restored tree (its cgroup first, its directory, its veth pair and shaping)."""

from __future__ import annotations

import errno
import os
from typing import Any

from xos.checkpoint import criu as criu_mod
from xos.checkpoint import image
from xos.errors import KernelError
from xos.kernel import netlink as rtnl
from xos.kernel import spawn as sp
from xos.kernel.cgroup import Cgroup
from xos.kernel.procs import parent, start_time
from xos.node import network
from xos.paths import WORK

QUANTUM = 10 * (network.MTU + 14)


class WorkspaceDumps:
    """The part of a workspace that CRIU works on."""

    ctx: Any  # NodeContext
    rec: Any  # WorkspaceRecord
    cgroup: Cgroup
    raw: Any
    init_pidfd: int
    host_index: int
    eth0_index: int

    @property
    def host_link(self) -> str:
        raise NotImplementedError  # the workspace's

    @property
    def tag(self) -> str:
        raise NotImplementedError  # the workspace's

    def grid_mounts(self) -> list[Any]:
        raise NotImplementedError  # the workspace's

    def grid_clients(self) -> Any:
        raise NotImplementedError  # the workspace's

    def _grid_externals(self) -> list[str]:
        raise NotImplementedError  # the workspace's

    def credential_key(self) -> tuple[str, bytes] | None:
        raise NotImplementedError  # the workspace's

    async def _open_netns(self) -> None:
        raise NotImplementedError  # the workspace's

    def tree_outsiders(self) -> list[int]:
        """Processes of the workspace outside init's tree (started with exec): CRIU cannot take them."""
        procs = set(self.cgroup.procs())
        out = []
        for pid in procs:
            p: int | None = pid
            while p is not None and p not in (0, 1, self.rec.init_pid):
                p = parent(p)
            if p != self.rec.init_pid and pid != self.rec.init_pid:
                out.append(pid)
        return sorted(out)

    async def dump(self, criu: criu_mod.Criu, images: str, leave_running: bool, keep_log: str,
                   prev: str | None = None, pre: bool = False, workdir: str | None = None) -> criu_mod.Run:
        """CRIU-dump init's process tree into `images`, stopped through the freezer; killed unless leave_running.

        Declared outside the tree: the workspace directory (an external mount, re-bound at restore),
        the host's mounts (auto-detected), the veth pair (re-made at restore), the cgroup (ours).
        `pre`: a pre-dump (memory only, the tree runs on); `prev`: the pre-dump beside `images`
        whose unchanged pages are not written again."""
        args = ["pre-dump" if pre else "dump", "-t", str(self.rec.init_pid), "--manage-cgroups=ignore",
                "--external", "mnt[]", "--external", f"mnt[{WORK}]:{criu_mod.WORK_KEY}",
                *self._grid_externals(), "--freeze-cgroup", self.cgroup.freezer_dir()]
        if not pre:
            args.append("--tcp-established")
        if prev is not None or pre:
            args.append("--track-mem")
        if prev is not None:
            args += ["--prev-images-dir", os.path.relpath(prev, images)]
        if leave_running and not pre:
            args.append("--leave-running")
        return await criu_mod.run(criu, args, images, "dump.log", keep_log=keep_log, workdir=workdir)

    async def dump_lazy(self, criu: criu_mod.Criu, images: str, address: str, port: int, keep_log: str,
                        workdir: str) -> criu_mod.Running:
        """Dump everything but memory into `images` and serve the memory on `address`:`port` to the target's
        lazy-pages daemon (post-copy). Returns once the page server listens; the tree stays stopped here
        until every page has gone (then CRIU kills it), or runs on if the run is aborted."""
        args = ["dump", "-t", str(self.rec.init_pid), "--manage-cgroups=ignore", "--external", "mnt[]",
                "--external", f"mnt[{WORK}]:{criu_mod.WORK_KEY}", *self._grid_externals(),
                "--freeze-cgroup", self.cgroup.freezer_dir(),
                "--tcp-established", "--lazy-pages", "--address", address, "--port", str(port)]
        run = criu_mod.start(criu, args, images, "dump.log", keep_log=keep_log, workdir=workdir)
        await run.ready()
        return run

    async def _restore(self, criu: criu_mod.Criu, images: str, work: str, keep_log: str,
                       workdir: str, lazy: bool = False) -> criu_mod.Run:
        ctx, rec = self.ctx, self.rec
        self.cgroup = ctx.hierarchy.create(self.cgroup.rel)
        self.cgroup.apply(rec.alloc)
        wdir = ctx.directory(rec)
        image.move_tree(work, wdir)  # from scratch, perhaps on tmpfs
        pidfile = os.path.join(workdir, "restored.pid")
        staged = [f"mnt[{m.key}]:{await self.grid_clients().mount(m, None)}" for m in self.grid_mounts()]
        cgfd, procs = self.cgroup.spawn_target()
        args = ["restore", "--restore-detached", "--restore-sibling", "--pidfile", pidfile, "--manage-cgroups=ignore",
                "--tcp-established", "--root", "/", "--external", "mnt[]",
                "--external", f"mnt[{criu_mod.WORK_KEY}]:{wdir}",
                "--external", f"veth[eth0]:{self.host_link}@{ctx.config.bridge}"] + (["--lazy-pages"] if lazy else [])
        args += [a for ext in staged for a in ("--external", ext)]
        run = await criu_mod.run(criu, args, images, "restore.log", cgroup_fd=cgfd, cgroup_procs_fds=procs,
                                 key=self.credential_key(), keep_log=keep_log, workdir=workdir)
        with open(pidfile) as f:
            pid = int(f.read().strip())
        self.init_pidfd = sp.pidfd_open(pid)  # a sibling of criu: our child
        rec.init_pid, rec.init_start = pid, start_time(pid) or 0
        ctx.store.update_workspace(rec)
        await self._open_netns()
        assert self.raw is not None
        hidx, pidx = rtnl.link_index(ctx.raw, self.host_link), rtnl.link_index(self.raw, "eth0")
        if hidx is None or pidx is None:
            raise KernelError(f"restored workspace {rec.name} has no veth pair", errno.ENODEV)
        self.host_index, self.eth0_index = hidx, pidx
        rtnl.set_link(ctx.raw, hidx, alias=self.tag)
        gateway = rec.checkpoint.get("foreign_gateway")
        if gateway:
            rtnl.host_address(ctx.raw, True, ctx.bridge, gateway)
            rtnl.host_route(ctx.raw, True, rec.address, oif=ctx.bridge)
            network.proxy_arp(ctx.config.bridge)  # the rest of its old subnet is reached through us
        for raw, index, rate in ((self.raw, self.eth0_index, rec.alloc.egress),
                                 (ctx.raw, self.host_index, rec.alloc.ingress)):
            rtnl.htb_root(raw, index)
            rtnl.htb_class(raw, index, rate, QUANTUM, create=True)
        return run
