"""CRIU, driven through its command line: which binary, whether it works, dump and restore.

Every run writes a log of errors and warnings (-v2; at -v4 a dump of 64 MiB to 1 GiB took 1.33-1.39
times bare CRIU's, at -v2 1.03-1.26); a failed run keeps it and its last errors go into the exception,
so "restore failed" always comes with CRIU's own reason. `--display-stats` gives CRIU's own
figures (frozen time, pages written) for every dump.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import re
import shutil
import signal
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

from xos.errors import ExternalError, Unavailable
from xos.kernel import spawn as sp

CANDIDATES = ("/usr/local/sbin/criu", "/usr/sbin/criu", "/usr/bin/criu")
WORK_KEY = "work"  # the cookie naming the workspace directory, an external mount in every image
RUN_TIMEOUT = float(os.environ.get("XOS_CRIU_TIMEOUT", "600"))  # seconds any one CRIU run may take
LOG_KEPT = 1 << 20  # bytes of a failed run's log kept


class CriuError(ExternalError):
    """CRIU itself failed: its log says why, and it is kept."""

    code = "criu-failed"


class CriuUnavailable(Unavailable):
    """No CRIU >= 4 passing `criu check` on this node."""

    code = "checkpoint-unavailable"


class LiveUnavailable(Unavailable):
    """The kernel can neither track dirty memory (CONFIG_MEM_SOFT_DIRTY, for pre-dump rounds) nor hand page
    faults to CRIU (userfaultfd, for post-copy)."""

    code = "live-migration-unavailable"


@dataclass
class Criu:
    """One CRIU binary and what `criu check` said of it."""

    path: str
    version: str
    ok: bool
    reason: str = ""
    dirty_tracking: bool = False  # the kernel's soft-dirty bits: what iterative pre-dumps (live migration) need
    lazy_pages: bool = False  # userfaultfd: memory restored on demand (post-copy live migration)

    @property
    def live(self) -> str:
        """How this node migrates live: "pre-copy" (dirty tracking), "post-copy" (userfaultfd), or ""."""
        return "pre-copy" if self.dirty_tracking else "post-copy" if self.lazy_pages else ""

    @property
    def major(self) -> int:
        """The major version."""
        return int(self.version.split(".")[0]) if self.version[:1].isdigit() else 0

    def require(self) -> Criu:
        """This CRIU, or CriuUnavailable with the reason."""
        if not self.ok:
            raise CriuUnavailable(f"checkpoint is not available on this node: {self.reason}")
        return self


@functools.lru_cache(maxsize=1)
def find() -> Criu:
    """The first CRIU >= 4 that passes `criu check` (XOS_CRIU overrides the search); checked once."""
    paths = [os.environ["XOS_CRIU"]] if os.environ.get("XOS_CRIU") else \
        [p for p in CANDIDATES if os.access(p, os.X_OK)] + ([shutil.which("criu")] if shutil.which("criu") else [])
    if not paths:
        return Criu("", "", False, "no criu binary found (make setup builds one)")
    reasons = []
    for path in dict.fromkeys(p for p in paths if p):
        try:
            out = subprocess.run([path, "--version"], capture_output=True, text=True, timeout=10).stdout
        except OSError as e:
            reasons.append(f"{path}: {e}")
            continue
        m = re.search(r"Version: (\S+)", out)
        version = m.group(1) if m else "unknown"
        c = Criu(path, version, False)
        if c.major < 4:
            reasons.append(f"{path} is version {version}, 4 or later is needed")
            continue
        check = subprocess.run([path, "check"], capture_output=True, text=True, timeout=60)
        if check.returncode != 0:
            last = (check.stderr or check.stdout).strip().splitlines()[-1:] or ["no output"]
            reasons.append(f"{path} {version} fails criu check: {last[0]}")
            continue
        c.ok = True
        c.dirty_tracking = subprocess.run([path, "check", "--feature", "mem_dirty_track"], capture_output=True,
                                          timeout=60).returncode == 0
        c.lazy_pages = subprocess.run([path, "check", "--feature", "uffd-noncoop"], capture_output=True,
                                      timeout=60).returncode == 0
        return c
    return Criu(paths[0] or "", "", False, "; ".join(reasons))


@dataclass
class Run:
    """What one CRIU run reported."""

    seconds: float
    stats: dict[str, float] = field(default_factory=dict)


STAT = re.compile(r"^\s*([A-Za-z][A-Za-z ]+?):\s+([0-9.]+)", re.M)


def _stats(text: str) -> dict[str, float]:
    # --display-stats prints "Freezing time: 1234 us", "Memory pages written: 42", ...
    out = {}
    for name, value in STAT.findall(text):
        key = name.strip().lower().replace(" ", "_")
        if key.endswith("time"):
            key += "_us"
        out[key] = float(value)
    return out


async def run(criu: Criu, args: Sequence[str], images: str, log_name: str, *, cgroup_fd: int = -1,
              cgroup_procs_fds: Sequence[int] = (), key: tuple[str, bytes] | None = None,
              keep_log: str | None = None, workdir: str | None = None, timeout: float = RUN_TIMEOUT) -> Run:
    """Run `criu ARGS -D images`, wait for it without blocking the loop; CriuError with its log on failure.

    With a cgroup, criu itself runs there (restored tasks are its children and stay in it);
    it always gets a fresh session keyring, with `key` in it, which restored tasks inherit."""
    proc = start(criu, args, images, log_name, cgroup_fd=cgroup_fd, cgroup_procs_fds=cgroup_procs_fds, key=key,
                 keep_log=keep_log, workdir=workdir)
    return await proc.finish(timeout)


class Running:
    """A CRIU run under way: one that serves pages after its dump (lazy migration), or a lazy-pages daemon.

    Its --status-fd is its stdin, the write end of a pipe: `ready()` returns once CRIU wrote there."""

    def __init__(self, criu: Criu, args: Sequence[str], pid: int, status_fd: int, log_path: str, out_path: str,
                 keep_log: str | None) -> None:
        self.args = list(args)
        self.pidfd = sp.pidfd_open(pid)
        self.status_fd = status_fd
        self.log_path, self.out_path, self.keep_log = log_path, out_path, keep_log
        self.t0 = time.perf_counter()
        self.result: Run | None = None

    async def ready(self, timeout: float = RUN_TIMEOUT) -> None:
        """Wait until CRIU says it is ready (its status byte), or CriuError if it ended or hung first."""
        status_fd = self.status_fd  # the number, kept: abort() closes it
        if not await _readable(status_fd, timeout):
            await self.abort(signal.SIGKILL)
            raise CriuError(f"criu {self.args[0]} was not ready within {timeout:.0f}s and was killed "
                            f"({last_errors(self.log_path)})", log=self.log_path)
        if not os.read(status_fd, 1):  # it ended without a word: its exit says why
            await self.finish(timeout)
            raise CriuError(f"criu {self.args[0]} ended before it was ready", log=self.log_path)

    async def finish(self, timeout: float = RUN_TIMEOUT) -> Run:
        """Wait for it to end; CriuError with its log if it failed or took longer than `timeout`."""
        if self.result is not None:
            return self.result
        pidfd = self.pidfd
        try:
            ended = await _readable(pidfd, timeout)
        except BaseException:  # cancelled: CRIU carries on without us
            self._close()
            raise
        if not ended:
            # CRIU that never ends (its restorer spins on some bad images): stopped, and said so.
            sp.pidfd_send_signal(pidfd, signal.SIGKILL)
            os.waitid(os.P_PIDFD, pidfd, os.WEXITED)
            self._close()
            raise CriuError(f"criu {self.args[0]} did not finish within {timeout:.0f}s and was killed "
                            f"({last_errors(self.log_path)})", log=self.log_path)
        info = os.waitid(os.P_PIDFD, pidfd, os.WEXITED)
        self._close()
        seconds = time.perf_counter() - self.t0
        with open(self.out_path, errors="replace") as f:
            text = f.read()
        status = info.si_status if info is not None and info.si_code == os.CLD_EXITED else -1
        if status != 0:
            kept = self.log_path
            if self.keep_log:
                os.makedirs(os.path.dirname(self.keep_log), exist_ok=True)
                _keep_tail(self.log_path, self.keep_log)
                kept = self.keep_log
            raise CriuError(f"criu {self.args[0]} failed (status {status}): {last_errors(self.log_path, text)} "
                            f"(log: {kept})", log=kept)
        self.result = Run(seconds, _stats(text))
        return self.result

    async def abort(self, sig: int = signal.SIGTERM) -> None:
        """Stop it and wait: a lazy dump stopped this way lets its tasks run on, as a failed dump does."""
        if self.pidfd < 0:
            return
        with contextlib.suppress(ProcessLookupError, OSError):
            sp.pidfd_send_signal(self.pidfd, sig)
        with contextlib.suppress(CriuError):
            await self.finish(30)

    def _close(self) -> None:
        for fd in (self.pidfd, self.status_fd):
            with contextlib.suppress(OSError):
                os.close(fd)
        self.pidfd = self.status_fd = -1


async def _readable(fd: int, timeout: float) -> bool:
    """Wait until `fd` is readable (a status byte, a pidfd whose process ended); False after `timeout`."""
    loop = asyncio.get_running_loop()
    fut: asyncio.Future[None] = loop.create_future()
    loop.add_reader(fd, lambda: None if fut.done() else fut.set_result(None))
    try:
        await asyncio.wait_for(fut, timeout)
        return True
    except TimeoutError:
        return False
    finally:
        loop.remove_reader(fd)


def start(criu: Criu, args: Sequence[str], images: str, log_name: str, *, cgroup_fd: int = -1,
          cgroup_procs_fds: Sequence[int] = (), key: tuple[str, bytes] | None = None, keep_log: str | None = None,
          workdir: str | None = None) -> Running:
    """Start `criu ARGS -D images --status-fd 0`; the run, to wait for it to be ready and to end."""
    workdir = workdir or images  # logs and pid files go there: an image restored stays as it was
    log_path = os.path.join(workdir, log_name)
    argv = [criu.path, *args, "-D", images, "-W", workdir, "-o", log_name, "-v2", "--display-stats",
            "--status-fd", "0"]
    out_path = os.path.join(workdir, log_name + ".out")
    out = os.open(out_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    r, w = os.pipe2(os.O_CLOEXEC)
    try:
        pid = sp.spawn(sp.SpawnSpec(argv=argv, env={"PATH": sp.DEFAULT_PATH}, cwd=workdir, stdin=w, stdout=out,
                                    stderr=out, cgroup_fd=cgroup_fd, cgroup_procs_fds=cgroup_procs_fds,
                                    new_keyring=True, key=key))
    except BaseException:
        os.close(r)
        raise
    finally:
        os.close(out)
        os.close(w)
    return Running(criu, args, pid, r, log_path, out_path, keep_log)


def _keep_tail(src: str, dst: str) -> None:
    """Keep the last LOG_KEPT bytes of a log: the reason is at its end, and a runaway log is huge."""
    with contextlib.suppress(OSError), open(src, "rb") as f, open(dst, "wb") as out:
        f.seek(max(0, os.fstat(f.fileno()).st_size - LOG_KEPT))
        out.write(f.read(LOG_KEPT))


def last_errors(log_path: str, fallback: str = "") -> str:
    """The last few Error lines of a CRIU log, joined (read from its tail)."""
    try:
        with open(log_path, "rb") as f:
            f.seek(max(0, os.fstat(f.fileno()).st_size - LOG_KEPT))
            tail = f.read(LOG_KEPT).decode(errors="replace")
        lines = [ln.strip() for ln in tail.splitlines() if "Error" in ln and "RLIMIT_NOFILE" not in ln]
    except OSError:
        lines = [ln.strip() for ln in fallback.splitlines() if ln.strip()]
    return " | ".join(lines[-3:]) or "no error in its log"
