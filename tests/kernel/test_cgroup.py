"""Cgroup hierarchy conformance, run against the hierarchy this machine has."""

import os
import secrets
import signal

import pytest

from xos.allocation import Allocation
from xos.kernel import spawn as sp
from xos.kernel.cgroup import detect
from xos.testing import wait_for


@pytest.fixture
def cgroup():
    h = detect()
    root = f"xos.test-{secrets.token_hex(3)}"
    h.prepare(root)
    cg = h.create(f"{root}/ws-test")
    yield cg
    try:
        cg.kill()
    finally:
        cg.remove()
        h.remove_root(root)
        assert not cg.exists()


BUSY = ["sh", "-c", "while :; do :; done"]


def cpu_ticks(pid: int) -> int:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])  # utime + stime


def start_in(cg, argv):
    fd, procs = cg.spawn_target()
    return sp.spawn(sp.SpawnSpec(argv=argv, env={"PATH": sp.DEFAULT_PATH}, cgroup_fd=fd, cgroup_procs_fds=procs))


def test_limits_written_whole_and_read_back(cgroup):
    cgroup.apply(Allocation(cpu=0.25, memory=64 << 20, pids=16))
    assert cgroup.limits() == {"cpu": 0.25, "memory": 64 << 20, "pids": 16}


def test_changing_one_limit_keeps_the_others(cgroup):
    a = Allocation(cpu=0.25, memory=64 << 20, pids=16)
    cgroup.apply(a)
    cgroup.apply(Allocation(cpu=0.25, memory=128 << 20, pids=16), a)
    assert cgroup.limits() == {"cpu": 0.25, "memory": 128 << 20, "pids": 16}
    cgroup.apply(Allocation(cpu=1.5, memory=128 << 20, pids=16), a)
    assert cgroup.limits() == {"cpu": 1.5, "memory": 128 << 20, "pids": 16}


def test_process_is_in_the_cgroup_before_its_first_instruction(cgroup):
    r, w = os.pipe()
    fd, procs = cgroup.spawn_target()
    pid = sp.spawn(sp.SpawnSpec(argv=["cat", "/proc/self/cgroup"], env={"PATH": sp.DEFAULT_PATH}, cgroup_fd=fd,
                                cgroup_procs_fds=procs, stdout=w))
    os.close(w)
    out = os.read(r, 4096).decode()
    os.close(r)
    os.waitpid(pid, 0)
    assert cgroup.rel in out
    assert all(cgroup.rel in line for line in out.splitlines() if any(c in line for c in (":pids:", ":memory:")))


def test_freeze_kill_and_counters(cgroup):
    cgroup.apply(Allocation(cpu=1, memory=64 << 20, pids=16))
    pid = start_in(cgroup, ["sh", "-c", "while :; do :; done"])
    assert cgroup.procs() == [pid]
    cgroup.set_frozen(True)
    assert cgroup.frozen()
    before = cgroup.usage().cpu_ns
    # While a busy loop outside the cgroup burns 0.2 s of CPU, the frozen one must gain none.
    ref = sp.spawn(sp.SpawnSpec(argv=BUSY, env={"PATH": sp.DEFAULT_PATH}))
    try:
        wait_for(lambda: cpu_ticks(ref) >= 20, 30, "the reference loop to run")
    finally:
        os.kill(ref, signal.SIGKILL)
        os.waitpid(ref, 0)
    assert cgroup.usage().cpu_ns == before
    cgroup.set_frozen(False)
    assert not cgroup.frozen()
    cgroup.kill()
    assert cgroup.procs() == []
    _, status = os.waitpid(pid, 0)
    assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL
    u = cgroup.usage()
    assert u.cpu_ns > 0 and u.pids == 0
