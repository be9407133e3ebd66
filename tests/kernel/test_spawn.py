"""The native spawn path: failures in the child come back as (step, errno)."""

import errno
import os
import subprocess
import sys

import pytest

from xos.errors import SpawnError
from xos.kernel import spawn as sp
from xos.node.workspace import init_program


def run(spec: sp.SpawnSpec) -> tuple[int, bytes]:
    r, w = os.pipe()
    try:
        pid = sp.spawn(sp.SpawnSpec(**{**spec.__dict__, "stdout": w}))
    finally:
        os.close(w)
    with os.fdopen(r, "rb") as f:
        out = f.read()
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status), out


def test_runs_with_ids_env_and_cwd():
    code, out = run(sp.SpawnSpec(argv=["sh", "-c", "id -u; id -g; id -G; pwd; echo $GREETING; exit 5"],
                                 env={"PATH": sp.DEFAULT_PATH, "GREETING": "hi"}, cwd="/usr/share",
                                 uid=65534, gid=65534, groups=[65534]))
    assert code == 5
    assert out.decode().split("\n")[:5] == ["65534", "65534", "65534", "/usr/share", "hi"]


@pytest.mark.parametrize("spec,step,err", [
    (sp.SpawnSpec(argv=["no-such-program-xos"]), "exec", errno.ENOENT),
    (sp.SpawnSpec(argv=["/etc/passwd"]), "exec", errno.EACCES),
    (sp.SpawnSpec(argv=["/bin/true"], cwd="/no/such/dir"), "chdir", errno.ENOENT),
    (sp.SpawnSpec(argv=["/bin/true"], ns_pidfd=987654, ns_flags=sp.CLONE_NEWNET), "setns", errno.EBADF),
])
def test_child_failures_name_step_and_errno(spec, step, err):
    with pytest.raises(SpawnError) as e:
        sp.spawn(spec)
    assert (e.value.step, e.value.errno) == (step, err)
    assert e.value.code == "spawn-failed" and step in str(e.value)


def test_cgroup_join_failure(tmp_path):
    ro = os.open(tmp_path / "x", os.O_RDONLY | os.O_CREAT)
    try:
        with pytest.raises(SpawnError) as e:
            sp.spawn(sp.SpawnSpec(argv=["/bin/true"], cgroup_procs_fds=[ro]))
    finally:
        os.close(ro)
    assert (e.value.step, e.value.errno) == ("cgroup", errno.EBADF)


def test_bad_uid_is_refused_by_the_kernel():
    # An unprivileged caller may not become root: the kernel refuses at the setuid step.
    code = ("import os; from xos.kernel import spawn as sp; from xos.errors import SpawnError\n"
            "os.setresuid(65534, 65534, 65534)\n"
            "try: sp.spawn(sp.SpawnSpec(argv=['/bin/true'], uid=0))\n"
            "except SpawnError as e: print(e.step, e.errno)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["setuid", str(errno.EPERM)]


def test_no_descriptor_leaks_into_the_child():
    leak = os.open("/dev/null", os.O_RDONLY)  # inheritable on purpose
    os.set_inheritable(leak, True)
    try:
        code, out = run(sp.SpawnSpec(argv=["ls", "/proc/self/fd"], env={"PATH": sp.DEFAULT_PATH}))
    finally:
        os.close(leak)
    fds = sorted(int(x) for x in out.split())
    assert code == 0 and fds == [0, 1, 2, 3]  # 3 is ls's own directory handle


def test_joined_process_is_inside_the_namespaces_and_our_child():
    r, w = os.pipe()
    init = sp.spawn(sp.SpawnSpec(argv=[init_program()], new_ns_flags=sp.CLONE_NEWPID | sp.CLONE_NEWNS
                                 | sp.CLONE_NEWNET, stdout=w))
    os.close(w)
    pidfd = sp.pidfd_open(init)
    try:
        assert os.read(r, 64).startswith(b"ready 1")
        code, out = run(sp.SpawnSpec(argv=["sh", "-c", "echo $$; ls /proc | grep -c '^[0-9]'; cat /proc/net/dev"],
                                     env={"PATH": sp.DEFAULT_PATH}, ns_pidfd=pidfd,
                                     ns_flags=sp.CLONE_NEWPID | sp.CLONE_NEWNS | sp.CLONE_NEWNET))
        lines = out.decode().splitlines()
        assert code == 0  # waitpid in run() worked: the process is our child
        assert lines[0] == "2"  # pid 1 is xos-init
        assert int(lines[1]) <= 4  # its own /proc: init, sh, ls/grep
        assert [ln.split(":")[0].strip() for ln in lines[4:]] == ["lo"]  # its own network namespace
    finally:
        os.close(r)
        sp.pidfd_send_signal(pidfd)
        os.waitpid(init, 0)
        os.close(pidfd)
