"""Thin native wrappers: keyrings, pidfds, and CLONE_INTO_CGROUP on the unified hierarchy."""

from __future__ import annotations

import errno
import os
import secrets
import signal
import subprocess
import sys

import pytest

from xos.kernel import spawn as sp
from xos.kernel.cgroup import mounts
from xos.kernel.cgroup.v2 import V2Cgroup


def test_keyring_add_search_read_revoke():
    # In a child process: joining a new session keyring must not touch the test runner's.
    code = (
        "import errno\nfrom xos.kernel import keyring as k\n"
        "ring = k.join_session('xos-test')\n"
        "key = k.add('xos:cred', b'token-bytes')\n"
        "assert k.search('xos:cred') == key\n"
        "assert k.read(key) == b'token-bytes'\n"
        "k.revoke(key)\n"
        "try:\n    k.read(key)\nexcept OSError as e:\n    print('revoked', e.errno == errno.EKEYREVOKED)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["revoked", "True"]


def test_pidfd_signal_never_reaches_a_recycled_pid():
    pid = sp.spawn(sp.SpawnSpec(argv=["sleep", "30"], env={"PATH": sp.DEFAULT_PATH}))
    fd = sp.pidfd_open(pid)
    sp.pidfd_send_signal(fd, signal.SIGKILL)
    os.waitpid(pid, 0)
    with pytest.raises(ProcessLookupError):
        sp.pidfd_send_signal(fd, signal.SIGKILL)
    os.close(fd)


def unified() -> str:
    found = [m.path for m in mounts() if m.version == 2]
    if not found:
        pytest.fail("this machine has no cgroup v2 mount: the v2 paths cannot be exercised")
    return found[0]


def test_clone_into_cgroup_freeze_and_kill_on_v2():
    """The v2 paths that need no controllers: CLONE_INTO_CGROUP, cgroup.freeze, cgroup.kill."""
    cg = V2Cgroup(f"xos.test-{secrets.token_hex(3)}", unified())
    os.mkdir(cg.path())
    try:
        fd, procs = cg.spawn_target()
        assert procs == []
        pid = sp.spawn(sp.SpawnSpec(argv=["sleep", "30"], env={"PATH": sp.DEFAULT_PATH}, cgroup_fd=fd))
        with open(f"/proc/{pid}/cgroup") as f:
            assert f"0::/{cg.rel}\n" in f.read()  # placed by clone3, never elsewhere
        assert cg.procs() == [pid]
        cg.set_frozen(True)
        assert cg.frozen()
        cg.set_frozen(False)
        cg.kill()
        _, status = os.waitpid(pid, 0)
        assert os.WTERMSIG(status) == signal.SIGKILL and cg.procs() == []
    finally:
        cg.remove()
    assert not cg.exists()


def test_clone_into_a_missing_cgroup_names_the_step():
    fd = os.open("/", os.O_PATH | os.O_DIRECTORY)
    try:
        with pytest.raises(Exception) as e:
            sp.spawn(sp.SpawnSpec(argv=["/bin/true"], cgroup_fd=fd))  # "/" is no cgroup directory
    finally:
        os.close(fd)
    assert getattr(e.value, "step", None) == "clone" and e.value.errno in (errno.EBADF, errno.EINVAL,
                                                                            errno.EOPNOTSUPP)
