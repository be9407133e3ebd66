"""cgroup v2 (unified): one directory, cgroup.freeze and cgroup.kill, CLONE_INTO_CGROUP."""

from __future__ import annotations

import errno
import os

from xos.allocation import Allocation
from xos.errors import KernelError, MissingFeature
from xos.kernel.cgroup.base import (
    CPU_PERIOD_US,
    NEEDED,
    Cgroup,
    Hierarchy,
    Mount,
    read_file,
    register,
    wait_until,
    write_file,
)


class V2Cgroup(Cgroup):
    """A cgroup of the unified hierarchy."""

    def __init__(self, rel: str, mount: str) -> None:
        super().__init__(rel)
        self._dir = os.path.join(mount, rel)
        self._dirfd = -1

    def path(self, name: str = "") -> str:
        """The file `name` of this cgroup."""
        return os.path.join(self._dir, name)

    def dirs(self) -> list[str]:
        return [self._dir]

    def apply(self, alloc: Allocation, old: Allocation | None = None) -> None:
        quota = max(int(alloc.cpu * CPU_PERIOD_US), 1000)
        # One write of the whole "quota period" pair: writing the quota alone resets nothing,
        # but other tools' habit of writing half of it did (runc #4225, #2456).
        write_file(self.path("cpu.max"), f"{quota} {CPU_PERIOD_US}")
        write_file(self.path("cpu.weight"), str(min(max(int(alloc.cpu * 100), 1), 10000)))
        write_file(self.path("memory.max"), str(alloc.memory))
        if os.path.exists(self.path("memory.swap.max")):
            write_file(self.path("memory.swap.max"), "0")
        write_file(self.path("pids.max"), str(alloc.pids))
        got = self.limits()
        if got["cpu"] != round(quota / CPU_PERIOD_US, 4) or got["pids"] != alloc.pids:
            raise KernelError(f"cgroup {self.rel} holds {got} after writing {alloc.describe()}", errno.EIO)

    def limits(self) -> dict[str, float | int | None]:
        quota, period = read_file(self.path("cpu.max")).split()
        mem = read_file(self.path("memory.max"))
        pids = read_file(self.path("pids.max"))
        return {
            "cpu": None if quota == "max" else round(int(quota) / int(period), 4),
            "memory": None if mem == "max" else int(mem),
            "pids": None if pids == "max" else int(pids),
        }

    def counter_specs(self) -> list[tuple[str, str]]:
        return [
            (self.path("cpu.stat"), "usage_usec"),
            (self.path("memory.current"), ""),
            (self.path("memory.peak"), ""),
            (self.path("pids.current"), ""),
            (self.path("memory.events"), "oom_kill"),
            (self.path("pids.events"), "max"),
        ]

    def cpu_scale(self) -> int:
        return 1000

    def freezer_dir(self) -> str:
        return self._dir

    def set_frozen(self, frozen: bool) -> None:
        write_file(self.path("cgroup.freeze"), "1" if frozen else "0")
        want = f"frozen {1 if frozen else 0}"
        wait_until(lambda: want in read_file(self.path("cgroup.events")).splitlines(), 5.0,
                   f"cgroup {self.rel} to report {want}")

    def frozen(self) -> bool:
        return read_file(self.path("cgroup.freeze")) == "1"

    def procs_file(self) -> str:
        return self.path("cgroup.procs")

    def spawn_target(self) -> tuple[int, list[int]]:
        if self._dirfd < 0:
            try:
                self._dirfd = os.open(self._dir, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
            except OSError as e:
                raise KernelError(f"cannot open cgroup {self.rel}", e.errno or errno.EIO) from None
        return self._dirfd, []

    def kill(self, spare: int = 0, timeout: float = 5.0) -> None:
        if spare == 0 and os.path.exists(self.path("cgroup.kill")):
            write_file(self.path("cgroup.kill"), "1")
            wait_until(lambda: "populated 0" in read_file(self.path("cgroup.events")).splitlines(), timeout,
                       f"cgroup {self.rel} to empty")
            return
        super().kill(spare, timeout)

    def close(self) -> None:
        super().close()
        if self._dirfd >= 0:
            os.close(self._dirfd)
            self._dirfd = -1


class V2Hierarchy(Hierarchy):
    """The unified hierarchy with cpu, memory and pids delegated to the node's root."""

    name = "v2"

    def __init__(self, found: list[Mount]) -> None:
        unified = [m for m in found if m.version == 2]
        if not unified:
            raise MissingFeature("no cgroup v2 mount")
        self.mount = unified[0].path
        missing = [c for c in NEEDED if c not in unified[0].controllers]
        if missing:
            raise MissingFeature(f"cgroup v2 at {self.mount} lacks controller(s) {', '.join(missing)}",
                                 missing=missing)

    def prepare(self, root: str) -> None:
        parent = self.mount
        for part in root.split("/"):
            write_file(os.path.join(parent, "cgroup.subtree_control"), " ".join(f"+{c}" for c in NEEDED))
            parent = os.path.join(parent, part)
            os.makedirs(parent, exist_ok=True)
        write_file(os.path.join(parent, "cgroup.subtree_control"), " ".join(f"+{c}" for c in NEEDED))

    def cgroup(self, rel: str) -> V2Cgroup:
        return V2Cgroup(rel, self.mount)

    def create(self, rel: str) -> V2Cgroup:
        cg = self.cgroup(rel)
        try:
            os.mkdir(cg.path())
        except OSError as e:
            raise KernelError(f"cannot create cgroup {rel}", e.errno or errno.EIO) from None
        return cg

    def children(self, root: str) -> list[str]:
        try:
            return sorted(e.name for e in os.scandir(os.path.join(self.mount, root)) if e.is_dir())
        except FileNotFoundError:
            return []


register("v2")(V2Hierarchy)
