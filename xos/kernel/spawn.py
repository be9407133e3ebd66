"""Starting processes through the native fork-to-exec path (native/node/spawn.c)."""

from __future__ import annotations

import os
import resource
import signal
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from xos._native._sys import ffi, lib
from xos.errors import SpawnError

# Mirrors native/node/spawn.h.
STEPS = {
    1: "pipe",
    2: "clone",
    3: "cgroup",
    4: "setns",
    5: "setsid",
    6: "stdio",
    7: "rlimit",
    8: "setgroups",
    9: "setgid",
    10: "setuid",
    11: "chdir",
    12: "pdeathsig",
    13: "close-fds",
    14: "exec",
    15: "keyring",
}

CLONE_NEWNS = lib.CLONE_NEWNS
CLONE_NEWPID = lib.CLONE_NEWPID
CLONE_NEWNET = lib.CLONE_NEWNET

DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


@dataclass(frozen=True)
class SpawnSpec:
    """Everything the child does between clone and exec."""

    argv: Sequence[str]
    env: Mapping[str, str] = field(default_factory=dict)
    cwd: str | None = None
    uid: int = -1
    gid: int = -1
    groups: Sequence[int] = ()
    cgroup_fd: int = -1
    cgroup_procs_fds: Sequence[int] = ()
    ns_pidfd: int = -1
    ns_flags: int = 0
    new_ns_flags: int = 0
    stdin: int = -1
    stdout: int = -1
    stderr: int = -1
    rlimits: Mapping[int, tuple[int, int]] = field(default_factory=dict)
    pdeathsig: int = 0
    setsid: bool = False
    new_keyring: bool = False
    key: tuple[str, bytes] | None = None  # (description, data) of a "user" key in the new session keyring


def _candidates(program: str, env: Mapping[str, str]) -> list[bytes]:
    if "/" in program:
        return [os.fsencode(program)]
    path = env.get("PATH", DEFAULT_PATH)
    return [os.fsencode(os.path.join(d or ".", program)) for d in path.split(":")]


def _rlim(v: int) -> int:
    return 0xFFFFFFFFFFFFFFFF if v == resource.RLIM_INFINITY else v


def spawn(spec: SpawnSpec) -> int:
    """Start `spec.argv`; the pid, or SpawnError naming the failed step and errno."""
    if not spec.argv:
        raise ValueError("argv must not be empty")
    keep = []  # cffi buffers must outlive the call

    def cstr(s: str | bytes) -> object:
        b = ffi.new("char[]", os.fsencode(s))
        keep.append(b)
        return b

    def cstrv(items: Sequence[str | bytes]) -> object:
        arr = ffi.new("char *[]", [cstr(i) for i in items] + [ffi.NULL])
        keep.append(arr)
        return arr

    paths = _candidates(spec.argv[0], spec.env)
    a = ffi.new("struct xos_spawn_args *")
    a.paths = cstrv(paths)
    a.n_paths = len(paths)
    a.argv = cstrv(list(spec.argv))
    a.envp = cstrv([f"{k}={v}" for k, v in spec.env.items()])
    a.cwd = cstr(spec.cwd) if spec.cwd is not None else ffi.NULL
    a.uid = spec.uid
    a.gid = spec.gid
    groups = ffi.new("gid_t[]", list(spec.groups) or [0])
    a.ngroups = len(spec.groups)
    a.groups = groups
    a.cgroup_fd = spec.cgroup_fd
    procs = ffi.new("int[]", list(spec.cgroup_procs_fds) or [0])
    a.cgroup_procs_fds = procs
    a.n_cgroup_procs = len(spec.cgroup_procs_fds)
    a.ns_pidfd = spec.ns_pidfd
    a.ns_flags = spec.ns_flags
    a.new_ns_flags = spec.new_ns_flags
    a.stdin_fd, a.stdout_fd, a.stderr_fd = spec.stdin, spec.stdout, spec.stderr
    res = list(spec.rlimits)
    a.n_rlimits = len(res)
    rl_res = ffi.new("int[]", res or [0])
    rl_cur = ffi.new("uint64_t[]", [_rlim(spec.rlimits[r][0]) for r in res] or [0])
    rl_max = ffi.new("uint64_t[]", [_rlim(spec.rlimits[r][1]) for r in res] or [0])
    a.rlimit_res, a.rlimit_cur, a.rlimit_max = rl_res, rl_cur, rl_max
    a.pdeathsig = spec.pdeathsig
    a.setsid = int(spec.setsid)
    if spec.key is not None and not spec.new_keyring:
        raise ValueError("a key goes into a new session keyring only")
    a.new_keyring = int(spec.new_keyring)
    a.key_desc = a.key_data = ffi.NULL
    if spec.key is not None:
        a.key_desc, a.key_data, a.key_len = cstr(spec.key[0]), cstr(spec.key[1]), len(spec.key[1])

    out = ffi.new("int[3]")
    rc = lib.xos_spawn(a, out, out + 1, out + 2)
    if rc != 0:
        raise SpawnError(STEPS.get(out[1], str(out[1])), out[2], spec.argv[0])
    return int(out[0])


def pidfd_open(pid: int) -> int:
    """A pidfd for `pid` (a child of ours, so the pid cannot have been reused)."""
    fd = lib.xos_pidfd_open(pid, 0)
    if fd < 0:
        err = ffi.errno
        raise OSError(err, os.strerror(err))
    return int(fd)


def pidfd_send_signal(pidfd: int, sig: int = signal.SIGKILL) -> None:
    """Signal the process behind a pidfd, never a recycled pid."""
    if lib.xos_pidfd_send_signal(pidfd, sig, 0) < 0:
        err = ffi.errno
        raise OSError(err, os.strerror(err))


def setns(fd: int, nstype: int = 0) -> None:
    """Enter the namespace(s) of `fd` (a namespace file or a pidfd)."""
    if lib.setns(fd, nstype) < 0:
        err = ffi.errno
        raise OSError(err, os.strerror(err))


def unshare(flags: int) -> None:
    """Leave namespaces of the given CLONE_NEW* kinds."""
    if lib.unshare(flags) < 0:
        err = ffi.errno
        raise OSError(err, os.strerror(err))


def mount(source: str | None, target: str, fstype: str | None, flags: int = 0, data: str | None = None) -> None:
    """mount(2), without spawning mount(8)."""
    src = os.fsencode(source) if source is not None else ffi.NULL
    fst = os.fsencode(fstype) if fstype is not None else ffi.NULL
    dat = os.fsencode(data) if data is not None else ffi.NULL
    if lib.mount(src, os.fsencode(target), fst, flags, dat) < 0:
        err = ffi.errno
        raise OSError(err, os.strerror(err), target)


def umount(target: str, flags: int = 0) -> None:
    """umount2(2)."""
    if lib.umount2(os.fsencode(target), flags) < 0:
        err = ffi.errno
        raise OSError(err, os.strerror(err), target)
