"""CRIU, driven through its command line: which binary, whether it works, dump and restore.

Every run writes a verbose log; a failed run keeps it and its last errors go into the exception,
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

from xos import spawn as sp
from xos.errors import ExternalError, Unavailable

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
    """The kernel cannot track dirty memory (CONFIG_MEM_SOFT_DIRTY), which pre-dump rounds need."""

    code = "live-migration-unavailable"


@dataclass
class Criu:
    """One CRIU binary and what `criu check` said of it."""

    path: str
    version: str
    ok: bool
    reason: str = ""
    dirty_tracking: bool = False  # the kernel's soft-dirty bits: what iterative pre-dumps (live migration) need

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
    workdir = workdir or images  # logs and pid files go there: an image restored stays as it was
    log_path = os.path.join(workdir, log_name)
    argv = [criu.path, *args, "-D", images, "-W", workdir, "-o", log_name, "-v4", "--display-stats"]
    out_path = os.path.join(workdir, log_name + ".out")
    out = os.open(out_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    null = os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
    t0 = time.perf_counter()
    try:
        pid = sp.spawn(sp.SpawnSpec(argv=argv, env={"PATH": sp.DEFAULT_PATH}, cwd=workdir, stdin=null, stdout=out,
                                    stderr=out, cgroup_fd=cgroup_fd, cgroup_procs_fds=cgroup_procs_fds,
                                    new_keyring=True, key=key))
    finally:
        os.close(out)
        os.close(null)
    pidfd = sp.pidfd_open(pid)
    try:
        loop = asyncio.get_running_loop()
        done: asyncio.Future[None] = loop.create_future()
        loop.add_reader(pidfd, lambda: done.done() or done.set_result(None))
        try:
            await asyncio.wait_for(done, timeout)
        except TimeoutError:
            # CRIU that never ends (its restorer spins on some bad images): stopped, and said so.
            sp.pidfd_send_signal(pidfd, signal.SIGKILL)
            os.waitid(os.P_PIDFD, pidfd, os.WEXITED)
            raise CriuError(f"criu {args[0]} did not finish within {timeout:.0f}s and was killed "
                            f"({last_errors(log_path)})", log=log_path) from None
        finally:
            loop.remove_reader(pidfd)
        info = os.waitid(os.P_PIDFD, pidfd, os.WEXITED)
    finally:
        os.close(pidfd)
    seconds = time.perf_counter() - t0
    with open(out_path, errors="replace") as f:
        text = f.read()
    status = info.si_status if info is not None and info.si_code == os.CLD_EXITED else -1
    if status != 0:
        kept = log_path
        if keep_log:
            os.makedirs(os.path.dirname(keep_log), exist_ok=True)
            _keep_tail(log_path, keep_log)
            kept = keep_log
        raise CriuError(f"criu {args[0]} failed (status {status}): {last_errors(log_path, text)} (log: {kept})",
                        log=kept)
    return Run(seconds, _stats(text))


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
