"""What every cgroup hierarchy offers: the Cgroup and Hierarchy interfaces, mounts, the registry of implementations."""

from __future__ import annotations

import errno
import logging
import os
import signal
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from xos._native.cgstat import Counters
from xos.allocation import Allocation
from xos.errors import KernelError

log = logging.getLogger(__name__)

CPU_PERIOD_US = 100_000


@dataclass(frozen=True)
class Usage:
    """One sample of a cgroup's counters."""

    cpu_ns: int
    memory: int
    memory_peak: int
    pids: int
    oom_kills: int
    pids_refused: int


@dataclass(frozen=True)
class Mount:
    """A cgroup file system mount: its path, version and controllers."""

    path: str
    version: int
    controllers: frozenset[str]


def mounts(mountinfo: str = "/proc/self/mountinfo") -> list[Mount]:
    """Every cgroup mount of this mount namespace."""
    found = []
    with open(mountinfo) as f:
        for line in f:
            left, _, right = line.partition(" - ")
            fields = left.split()
            fstype, _source, superopts = (right.split() + ["", "", ""])[:3]
            path = fields[4].replace("\\040", " ")
            if fstype == "cgroup2":
                try:
                    with open(os.path.join(path, "cgroup.controllers")) as c:
                        ctrls = frozenset(c.read().split())
                except OSError:
                    ctrls = frozenset()
                found.append(Mount(path, 2, ctrls))
            elif fstype == "cgroup":
                ctrls = frozenset(o for o in superopts.split(",") if o not in ("rw", "ro") and "=" not in o)
                found.append(Mount(path, 1, ctrls))
    return found


def write_file(path: str, value: str) -> None:
    """Write a cgroup control file in one write(2), turning errors into KernelError."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
    except OSError as e:
        raise KernelError(f"cannot open {path}", e.errno or errno.EIO, path=path) from None
    try:
        os.write(fd, value.encode())
    except OSError as e:
        raise KernelError(f"cannot write {value!r} to {path}", e.errno or errno.EIO, path=path) from None
    finally:
        os.close(fd)


def read_file(path: str) -> str:
    """Read a cgroup control file."""
    with open(path) as f:
        return f.read().strip()


def wait_until(cond: Callable[[], bool], timeout: float, what: str) -> None:
    """Poll `cond` with backoff until true; KernelError(ETIMEDOUT) naming `what` otherwise."""
    deadline = time.monotonic() + timeout
    delay = 0.0005
    while not cond():
        if time.monotonic() > deadline:
            raise KernelError(f"timed out waiting for {what}", errno.ETIMEDOUT)
        time.sleep(delay)
        delay = min(delay * 2, 0.05)


class Cgroup(ABC):
    """One workspace's cgroup, in whichever hierarchy the node uses."""

    def __init__(self, rel: str) -> None:
        self.rel = rel
        self._counters: Counters | None = None

    @abstractmethod
    def dirs(self) -> list[str]:
        """Every directory that makes up this cgroup (one per v1 mount, one for v2)."""

    @abstractmethod
    def apply(self, alloc: Allocation, old: Allocation | None = None) -> None:
        """Set CPU, memory and pids limits; each written whole and read back."""

    @abstractmethod
    def limits(self) -> dict[str, float | int | None]:
        """The limits the kernel holds now (cpu in CPUs, memory in bytes, pids), None for none."""

    @abstractmethod
    def counter_specs(self) -> list[tuple[str, str]]:
        """(file, key) for cpu, memory, memory peak, pids, oom kills, refused forks."""

    @abstractmethod
    def cpu_scale(self) -> int:
        """Nanoseconds per unit of the CPU counter."""

    @abstractmethod
    def set_frozen(self, frozen: bool) -> None:
        """Freeze or thaw every process, and wait until the kernel says it is done."""

    @abstractmethod
    def frozen(self) -> bool:
        """Whether the cgroup is frozen now."""

    @abstractmethod
    def freezer_dir(self) -> str:
        """The directory whose freezer stops every process (CRIU's --freeze-cgroup)."""

    @abstractmethod
    def procs_file(self) -> str:
        """The cgroup.procs that lists every process of the cgroup."""

    @abstractmethod
    def spawn_target(self) -> tuple[int, list[int]]:
        """(directory fd for CLONE_INTO_CGROUP or -1, cgroup.procs fds the child writes itself into)."""

    def procs(self) -> list[int]:
        """Pids of every process in the cgroup."""
        try:
            return [int(p) for p in read_file(self.procs_file()).split()]
        except FileNotFoundError:
            return []

    def counters(self) -> Counters:
        """The kept-open counters (cpu, memory, peak, pids, oom kills, refused forks); see usage()."""
        if self._counters is None:
            self._counters = Counters(self.counter_specs())
        return self._counters

    def to_usage(self, values: tuple[int, ...]) -> Usage:
        """A Usage from one read of counters()."""
        cpu, mem, peak, pids, ooms, refused = values
        return Usage(max(cpu, 0) * self.cpu_scale(), max(mem, 0), max(peak, 0), max(pids, 0),
                     max(ooms, 0), max(refused, 0))

    def usage(self) -> Usage:
        """Sample the counters through descriptors kept open."""
        return self.to_usage(self.counters().read())

    def kill(self, spare: int = 0, timeout: float = 5.0) -> None:
        """SIGKILL every process but `spare`, frozen first so none can fork away, and wait."""
        def others() -> list[int]:
            return [p for p in self.procs() if p != spare]

        deadline = time.monotonic() + timeout
        while others():
            if time.monotonic() > deadline:
                raise KernelError(f"processes {others()} of cgroup {self.rel} survive SIGKILL", errno.EBUSY)
            self.set_frozen(True)
            for pid in others():
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            self.set_frozen(False)
            wait_until(lambda: not others(), max(deadline - time.monotonic(), 0.01), "killed processes to exit")

    def remove(self, timeout: float = 5.0) -> None:
        """Kill what is left and rmdir, retrying EBUSY within a bound."""
        self.close()
        deadline = time.monotonic() + timeout
        for d in self.dirs():
            delay = 0.001
            while True:
                try:
                    os.rmdir(d)
                    break
                except FileNotFoundError:
                    break
                except OSError as e:
                    if e.errno != errno.EBUSY or time.monotonic() > deadline:
                        raise KernelError(f"cannot remove cgroup {d}", e.errno or errno.EIO) from None
                    for pid in self.procs():
                        try:
                            os.kill(pid, signal.SIGKILL)
                        except ProcessLookupError:
                            pass
                    time.sleep(delay)
                    delay = min(delay * 2, 0.05)

    def exists(self) -> bool:
        """Whether any directory of this cgroup is still there."""
        return any(os.path.isdir(d) for d in self.dirs())

    def close(self) -> None:
        """Release descriptors held for sampling."""
        if self._counters is not None:
            self._counters.close()
            self._counters = None


class Hierarchy(ABC):
    """A way of laying out cgroups: v1 (one mount per controller) or v2 (unified)."""

    name: str

    @abstractmethod
    def prepare(self, root: str) -> None:
        """Create the node's own cgroup root (idempotent)."""

    @abstractmethod
    def cgroup(self, rel: str) -> Cgroup:
        """The handle of cgroup `rel` (relative to the mounts), existing or not."""

    @abstractmethod
    def create(self, rel: str) -> Cgroup:
        """Create cgroup `rel`; KernelError(EEXIST) if it exists."""

    @abstractmethod
    def children(self, root: str) -> list[str]:
        """Names of the cgroups directly under the node root."""

    def remove_root(self, root: str) -> None:
        """Remove the node's cgroup root once empty."""
        self.cgroup(root).remove()


REGISTRY: dict[str, Callable[[list[Mount]], Hierarchy]] = {}


def register(name: str) -> Callable[[Callable[[list[Mount]], Hierarchy]], Callable[[list[Mount]], Hierarchy]]:
    """Register a hierarchy implementation by name."""
    def deco(factory: Callable[[list[Mount]], Hierarchy]) -> Callable[[list[Mount]], Hierarchy]:
        REGISTRY[name] = factory
        return factory
    return deco


NEEDED = ("cpu", "memory", "pids")


def walk(path: str) -> Iterator[str]:
    """Directories under `path`, deepest first (the order rmdir needs)."""
    for dirpath, dirnames, _ in os.walk(path, topdown=False):
        for d in dirnames:
            yield os.path.join(dirpath, d)
