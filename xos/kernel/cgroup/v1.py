"""cgroup v1 (and hybrid): one mount per controller, the freezer for freeze and kill."""

from __future__ import annotations

import errno
import os

from xos.allocation import Allocation
from xos.errors import KernelError, MissingFeature
from xos.kernel.cgroup.base import (
    CPU_PERIOD_US,
    Cgroup,
    Hierarchy,
    Mount,
    read_file,
    register,
    wait_until,
    write_file,
)

CONTROLLERS = ("cpu", "cpuacct", "memory", "pids", "freezer")


class V1Cgroup(Cgroup):
    """A cgroup made of one directory per v1 controller mount."""

    def __init__(self, rel: str, mounts: dict[str, str]) -> None:
        super().__init__(rel)
        self._mounts = mounts
        self._procs_fds: list[int] = []

    def path(self, controller: str, name: str = "") -> str:
        """The file `name` of this cgroup in `controller`'s mount."""
        return os.path.join(self._mounts[controller], self.rel, name)

    def dirs(self) -> list[str]:
        seen: list[str] = []
        for c in CONTROLLERS:
            d = self.path(c)
            if d not in seen:
                seen.append(d)
        return seen

    def apply(self, alloc: Allocation, old: Allocation | None = None) -> None:
        quota = max(int(alloc.cpu * CPU_PERIOD_US), 1000)
        # Quota and period are two files here; write the period first only if it changes, so the
        # quota is never reset by a write of the period (runc #4225).
        if int(read_file(self.path("cpu", "cpu.cfs_period_us"))) != CPU_PERIOD_US:
            write_file(self.path("cpu", "cpu.cfs_period_us"), str(CPU_PERIOD_US))
        write_file(self.path("cpu", "cpu.cfs_quota_us"), str(quota))
        write_file(self.path("cpu", "cpu.shares"), str(max(int(alloc.cpu * 1024), 2)))
        self._set_memory(alloc.memory)
        write_file(self.path("pids", "pids.max"), str(alloc.pids))
        got = self.limits()
        if got["cpu"] != round(quota / CPU_PERIOD_US, 4) or got["pids"] != alloc.pids:
            raise KernelError(f"cgroup {self.rel} holds {got} after writing {alloc.describe()}", errno.EIO)

    def _set_memory(self, limit: int) -> None:
        # With swap accounting, memsw must stay >= limit at every step: raise memsw first when
        # growing, the plain limit first when shrinking.
        memsw = self.path("memory", "memory.memsw.limit_in_bytes")
        plain = self.path("memory", "memory.limit_in_bytes")
        order = [plain]
        if os.path.exists(memsw):
            current = int(read_file(plain))
            order = [memsw, plain] if limit > current else [plain, memsw]
        for f in order:
            write_file(f, str(limit))
        write_file(self.path("memory", "memory.swappiness"), "0")

    def limits(self) -> dict[str, float | int | None]:
        quota = int(read_file(self.path("cpu", "cpu.cfs_quota_us")))
        period = int(read_file(self.path("cpu", "cpu.cfs_period_us")))
        mem = int(read_file(self.path("memory", "memory.limit_in_bytes")))
        pids = read_file(self.path("pids", "pids.max"))
        return {
            "cpu": None if quota < 0 else round(quota / period, 4),
            "memory": None if mem >= 1 << 62 else mem,
            "pids": None if pids == "max" else int(pids),
        }

    def counter_specs(self) -> list[tuple[str, str]]:
        return [
            (self.path("cpuacct", "cpuacct.usage"), ""),
            (self.path("memory", "memory.usage_in_bytes"), ""),
            (self.path("memory", "memory.max_usage_in_bytes"), ""),
            (self.path("pids", "pids.current"), ""),
            # oom_kill counts kills; "oom" counts every limit hit (containerd #6323).
            (self.path("memory", "memory.oom_control"), "oom_kill"),
            (self.path("pids", "pids.events"), "max"),
        ]

    def cpu_scale(self) -> int:
        return 1

    def freezer_dir(self) -> str:
        return self.path("freezer")

    def set_frozen(self, frozen: bool) -> None:
        want = "FROZEN" if frozen else "THAWED"
        state = self.path("freezer", "freezer.state")
        write_file(state, want)
        wait_until(lambda: read_file(state) == want, 5.0, f"freezer of {self.rel} to become {want}")

    def frozen(self) -> bool:
        return read_file(self.path("freezer", "freezer.state")) != "THAWED"

    def procs_file(self) -> str:
        return self.path("freezer", "cgroup.procs")

    def spawn_target(self) -> tuple[int, list[int]]:
        if not self._procs_fds:
            fds = []
            try:
                for d in self.dirs():
                    fds.append(os.open(os.path.join(d, "cgroup.procs"), os.O_WRONLY | os.O_CLOEXEC))
            except OSError as e:
                for fd in fds:
                    os.close(fd)
                raise KernelError(f"cannot open cgroup.procs of {self.rel}", e.errno or errno.EIO) from None
            self._procs_fds = fds
        return -1, list(self._procs_fds)

    def close(self) -> None:
        super().close()
        for fd in self._procs_fds:
            os.close(fd)
        self._procs_fds = []


class V1Hierarchy(Hierarchy):
    """cgroup v1 or hybrid: cpu, cpuacct, memory, pids, freezer each on a v1 mount."""

    name = "v1"

    def __init__(self, found: list[Mount]) -> None:
        self.mounts: dict[str, str] = {}
        for m in found:
            if m.version != 1:
                continue
            for c in m.controllers:
                if c in CONTROLLERS:
                    self.mounts.setdefault(c, m.path)
        missing = [c for c in CONTROLLERS if c not in self.mounts]
        if missing:
            raise MissingFeature(f"no cgroup v1 mount for controller(s) {', '.join(missing)} and no cgroup v2 "
                                 "hierarchy with cpu, memory and pids", missing=missing)

    def prepare(self, root: str) -> None:
        for d in self.cgroup(root).dirs():
            os.makedirs(d, exist_ok=True)
        # A child cgroup of cpuset v1 starts with no CPUs; xos does not use cpuset.

    def cgroup(self, rel: str) -> V1Cgroup:
        return V1Cgroup(rel, self.mounts)

    def create(self, rel: str) -> V1Cgroup:
        cg = self.cgroup(rel)
        made = []
        try:
            for d in cg.dirs():
                os.mkdir(d)
                made.append(d)
        except OSError as e:
            for d in reversed(made):
                os.rmdir(d)
            raise KernelError(f"cannot create cgroup {rel}", e.errno or errno.EIO) from None
        return cg

    def children(self, root: str) -> list[str]:
        try:
            return sorted(e.name for e in os.scandir(os.path.join(self.mounts["freezer"], root)) if e.is_dir())
        except FileNotFoundError:
            return []


register("v1")(V1Hierarchy)
