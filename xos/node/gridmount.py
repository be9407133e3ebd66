"""A workspace's own grid file system mounts, which checkpoints and migrations keep.

The host's FUSE mounts never reach a workspace (xos-init drops them: a FUSE mount serves its
owner's credential to whoever reaches it). A workspace asks for volumes instead; the node runs a
FUSE client for each with the workspace's own credential, outside the workspace's process tree,
its mount at `/run/xos-work/grid/VOLUME` inside the workspace's mount namespace. CRIU is told the
mount is external; at restore the node mounts the volume again, on a staging directory of its
own, and CRIU binds that in: files the processes hold open there are reopened by path.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import json
import os
import re
import shutil
import signal
import sys
import time
import urllib.parse
from dataclasses import dataclass

from xos.errors import InvalidInput, KernelError
from xos.kernel import spawn as sp
from xos.kernel.procs import start_time
from xos.paths import GRID

VOLUME = re.compile(r"^[A-Za-z0-9._-]{1,64}$")
STATE = "clients.json"  # the running clients, for a daemon started after a restart
MOUNT_TIMEOUT = 20.0  # seconds a client may take to mount
STOP_TIMEOUT = 5.0


class GridMountFailed(KernelError):
    """A workspace's grid file system client did not mount."""

    code = "grid-mount-failed"


@dataclass(frozen=True)
class GridMount:
    """One volume of a grid file system, as a workspace mounts it."""

    url: str  # the MRC
    volume: str

    @classmethod
    def parse(cls, spec: object) -> GridMount:
        """`MRC_URL/VOLUME`, as `xos fs mount` takes it."""
        parts = urllib.parse.urlsplit(spec) if isinstance(spec, str) else None
        volume = parts.path.strip("/") if parts else ""
        if parts is None or parts.scheme not in ("http", "https") or not parts.netloc or not VOLUME.match(volume):
            raise InvalidInput(f"grid mount {spec!r} is not MRC_URL/VOLUME", field="grid")
        return cls(f"{parts.scheme}://{parts.netloc}", volume)

    @property
    def spec(self) -> str:
        return f"{self.url}/{self.volume}"

    @property
    def point(self) -> str:
        """Where the workspace sees it."""

        return f"{GRID}/{self.volume}"

    @property
    def key(self) -> str:
        """Its name as an external mount in checkpoint images."""
        return f"grid-{self.volume}"


class Clients:
    """The FUSE clients of one workspace's grid mounts."""

    def __init__(self, run_dir: str, wsid: str, credential: str, uid: int, gid: int, ca: str | None = None) -> None:
        self.dir = os.path.join(run_dir, "grid", wsid)
        self.credential, self.uid, self.gid = credential, uid, gid
        self.ca = ca  # the grid CA's certificate the file system's servers are checked against
        self.running: list[tuple[int, int, str, bool]] = []  # (pid, pidfd, mount point from there, staged)

    @classmethod
    def load(cls, run_dir: str, wsid: str) -> Clients | None:
        """The clients a previous node daemon started for workspace `wsid` and left running, to stop them."""
        c = cls(run_dir, wsid, "", -1, -1)
        try:
            with open(os.path.join(c.dir, STATE)) as f:
                saved = json.load(f)
        except (OSError, ValueError):
            return None if not os.path.isdir(c.dir) else c
        for pid, start, where, staged in saved:
            with contextlib.suppress(OSError):
                if start_time(pid) == start:
                    c.running.append((pid, sp.pidfd_open(pid), where, staged))
        return c

    def _save(self) -> None:
        tmp = os.path.join(self.dir, STATE + ".tmp")
        with open(tmp, "w") as f:
            json.dump([[pid, start_time(pid), where, staged] for pid, _, where, staged in self.running], f)
        os.replace(tmp, os.path.join(self.dir, STATE))

    async def mount(self, m: GridMount, mntns: int | None) -> str:
        """Mount `m` inside the mount namespace `mntns` (an fd) at its point, or with None on a staging
        directory of the node's own (a restore binds it in); where it is mounted, as seen from there."""
        os.makedirs(self.dir, mode=0o700, exist_ok=True)
        cred = os.path.join(self.dir, "credential")
        if not os.path.exists(cred):
            with open(os.open(cred, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600), "w") as f:
                f.write(self.credential)
        where = m.point if mntns is not None else os.path.join(self.dir, m.volume)
        if mntns is None:
            os.makedirs(where, mode=0o700, exist_ok=True)
        argv = [sys.executable, "-m", "xos", "fs", "mount", m.spec, where, "--foreground", "--cred", cred,
                "--uid", str(self.uid), "--gid", str(self.gid), "--allow-other",
                *(["--ca", self.ca] if self.ca else [])]
        logfd = os.open(os.path.join(self.dir, f"{m.volume}.log"),
                        os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600)
        null = os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
        try:
            pid = sp.spawn(sp.SpawnSpec(argv=argv, env={"PATH": sp.DEFAULT_PATH, "PYTHONPATH": ":".join(sys.path)},
                                        stdin=null, stdout=logfd, stderr=logfd, cwd="/",
                                        ns_pidfd=-1 if mntns is None else mntns,
                                        ns_flags=0 if mntns is None else sp.CLONE_NEWNS))
        finally:
            os.close(logfd)
            os.close(null)
        pidfd = sp.pidfd_open(pid)
        self.running.append((pid, pidfd, where, mntns is None))
        self._save()  # a daemon started after a restart of ours stops them still
        table = f"/proc/{pid}/mountinfo"
        deadline = time.monotonic() + MOUNT_TIMEOUT
        while not _mounted(table, where):
            if os.waitid(os.P_PIDFD, pidfd, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None:
                raise GridMountFailed(f"the grid file system client for {m.spec} exited: {self._log_tail(m)}",
                                      errno.EIO)
            if time.monotonic() > deadline:
                raise GridMountFailed(f"{m.spec} was not mounted within {MOUNT_TIMEOUT:g}s: {self._log_tail(m)}",
                                      errno.ETIMEDOUT)
            await asyncio.sleep(0.02)
        return where

    def _log_tail(self, m: GridMount) -> str:
        try:
            with open(os.path.join(self.dir, f"{m.volume}.log"), errors="replace") as f:
                lines = [ln for ln in f.read().splitlines() if ln.strip()]
        except OSError:
            lines = []
        return lines[-1][-300:] if lines else "no output"

    async def stop(self) -> None:
        """Stop every client (their mounts inside the workspace go with its namespace; staged ones are
        unmounted here) and forget the credential."""
        for pid, pidfd, where, staged in self.running:
            if staged:
                with contextlib.suppress(OSError, Exception):
                    sp.umount(where, sp.lib.MNT_DETACH)
            with contextlib.suppress(ProcessLookupError, OSError):
                sp.pidfd_send_signal(pidfd, signal.SIGTERM)
            deadline = time.monotonic() + STOP_TIMEOUT
            while not _gone(pid, pidfd):
                if time.monotonic() > deadline:
                    with contextlib.suppress(ProcessLookupError, OSError):
                        sp.pidfd_send_signal(pidfd, signal.SIGKILL)
                    deadline = time.monotonic() + STOP_TIMEOUT
                await asyncio.sleep(0.02)
            os.close(pidfd)
        self.running = []
        shutil.rmtree(self.dir, ignore_errors=True)


def _gone(pid: int, pidfd: int) -> bool:
    """Whether the client has exited (reaped when it is our child; a previous daemon's is not)."""
    try:
        return os.waitid(os.P_PIDFD, pidfd, os.WEXITED | os.WNOHANG) is not None
    except ChildProcessError:
        return not os.path.exists(f"/proc/{pid}") or start_time(pid) is None


def _mounted(mountinfo: str, where: str) -> bool:
    try:
        with open(mountinfo) as f:
            return any(line.split()[4] == where and " - fuse" in line for line in f)
    except OSError:
        return False
