"""Attacks by a workspace user on what root does in the workspace's directory: the main program's
status, the files served as a job's output, the directory copied into a checkpoint image."""

from __future__ import annotations

import os
import subprocess
import tarfile

import pytest

from tests.security.helpers import GUEST, error_code, keys, node_still_serves, peer_get
from tests.workloads import COUNTER, PY, lines
from xos.identity import credential
from xos.testing import TestGrid, TestNode, wait_for


@pytest.fixture
def victim(grid: TestGrid) -> str:
    """A root-owned 0600 file the guest must never change nor read through the node."""
    path = os.path.join(grid.base, "victim")
    with open(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "w") as f:
        f.write("root's own\n")
    return path


def _main_ended(node: TestNode, name: str) -> dict[str, object]:
    with node.client() as c:
        wait_for(lambda: c.stat(name)["processes"] == 0, 20, "the main program to end")
        return c.stat(name)


def test_status_through_a_symlink_never_writes_roots_file(node: TestNode, victim: str) -> None:
    """.main.status written by xos-init: a symlink to a root file is not followed."""
    with node.client() as c:
        c.create("s1", uid=GUEST, gid=GUEST, main=["/bin/sh", "-c", f"ln -s {victim} .main.status; exit 3"])
        d = _main_ended(node, "s1")
        assert "main_exit" not in d  # no status rather than a forged one
        with open(victim) as f:
            assert f.read() == "root's own\n"
        assert os.stat(victim).st_mode & 0o777 == 0o600 and os.stat(victim).st_uid == 0
        c.rm("s1")
    node_still_serves(node)


def test_status_through_a_dangling_symlink_creates_nothing(node: TestNode, grid: TestGrid) -> None:
    """.main.status written by xos-init: a dangling symlink makes root create no file."""
    target = os.path.join(grid.base, "made-by-root")
    with node.client() as c:
        c.create("s2", uid=GUEST, gid=GUEST, main=["/bin/sh", "-c", f"ln -s {target} .main.status; exit 4"])
        _main_ended(node, "s2")
        assert not os.path.lexists(target)
        c.rm("s2")
    node_still_serves(node)


def test_status_fifo_blocks_neither_init_nor_the_node(node: TestNode) -> None:
    """.main.status as a FIFO: xos-init does not block writing it, and main_exit()/describe() do not
    block reading it (the node daemon, its identity socket and logins would all hang)."""
    with node.client() as c:
        c.create("s3", uid=GUEST, gid=GUEST, main=["/bin/sh", "-c", "mkfifo .main.status; exit 5"])
        d = _main_ended(node, "s3")
        assert "main_exit" not in d
        ls = [w["name"] for w in c.ls()]  # describe() of every workspace: answered, not hung
        assert "s3" in ls
        c.rm("s3")
    node_still_serves(node)


def test_a_guest_cannot_signal_its_init_away(node: TestNode) -> None:
    """init runs as the guest: the guest's own SIGTERM to it (pid 1 of its namespace) is ignored."""
    with node.client() as c:
        ws = c.create("s4", uid=GUEST, gid=GUEST,
                      main=["/bin/sh", "-c", "kill -TERM 1; kill -INT 1; touch signalled; exec sleep 30"])
        init = ws["init_pid"]
        with open(f"/proc/{init}/status") as f:
            uids = next(line for line in f if line.startswith("Uid:")).split()[1:]
        assert uids == [str(GUEST)] * 4  # no task of the workspace holds root's identity
        wait_for(lambda: os.path.exists(os.path.join(ws["directory"], "signalled")), 10, "init to be signalled")
        assert os.path.exists(f"/proc/{init}") and c.stat("s4")["state"] == "running"
        c.rm("s4")
    node_still_serves(node)


SWAP = """
import os, sys
os.chdir('/run/xos-work')
open('real', 'w').write('mine\\n')
os.symlink(sys.argv[1], 'link')
while True:  # stdout is the real file, then the link, then the real file again ...
    os.link('real', 'tmp') if not os.path.exists('tmp') else None
    os.rename('tmp', 'stdout')
    os.symlink(sys.argv[1], 'tmp2') if not os.path.lexists('tmp2') else None
    os.rename('tmp2', 'stdout')
"""


def member(node: TestNode) -> str:
    """A credential of a member of VO bio, which the node trusts."""
    return credential.issue(keys[node.tag], "alice", "bio", ["member"], [], 600)[0]


def test_output_served_never_through_a_swapped_symlink(grid: TestGrid, node: TestNode) -> None:
    """Job output served by the node: `stdout` swapped for a symlink to /etc/shadow between a check and
    the open is refused, never read."""
    with node.client() as c:
        c.create("o1", credential=member(node), main=[PY, "-c", SWAP, "/etc/shadow"])  # a job, as peers see them
        shadow = open("/etc/shadow", "rb").read()
        served = refused = 0
        for _ in range(400):
            status, body = peer_get(grid, node, "/v1/peer/workspaces/o1/file?file=stdout")
            assert body != shadow and b"root:" not in body
            if status == 200:
                served += 1
            else:
                assert status in (400, 404) and error_code(body) in ("unsafe-path", "not-found"), body
                refused += 1
        assert served and refused  # both sides of the swap were met
        c.rm("o1")
    node_still_serves(node)


def test_output_fifo_is_refused_at_once(grid: TestGrid, node: TestNode) -> None:
    """Job output served by the node: a FIFO named `stdout` gets an unsafe-path answer, not a hung loop."""
    with node.client() as c:
        c.create("o2", credential=member(node), main=["/bin/sh", "-c", "mkfifo stdout; sleep 30"])
        wait_for(lambda: os.path.exists(os.path.join(c.stat("o2")["directory"], "stdout")), 10, "the FIFO")
        status, body = peer_get(grid, node, "/v1/peer/workspaces/o2/file?file=stdout", timeout=5)
        assert status == 400 and error_code(body) == "unsafe-path"
        status, body = peer_get(grid, node, "/v1/peer/workspaces/o2/file?file=../../../etc/passwd")
        assert status == 400 and error_code(body) == "unsafe-path"
        c.rm("o2")
    node_still_serves(node)


COPY_RACE = """
import os, sys
os.chdir(sys.argv[1])
open('real', 'w').write('mine\\n')
while True:
    os.link('real', 'tmp') if not os.path.exists('tmp') else None
    os.rename('tmp', 'data')
    os.symlink('/etc/shadow', 'tmp2') if not os.path.lexists('tmp2') else None
    os.rename('tmp2', 'data')
"""


def test_checkpoint_copy_never_takes_a_swapped_in_link(node: TestNode) -> None:
    """The checkpoint copy of the workspace directory: the user's process outside the workspace swaps a
    file for a symlink to /etc/shadow while it is copied; the image holds the link, never the file."""
    with node.client() as c:
        ws = c.create("c1", uid=GUEST, gid=GUEST, main=["/bin/sleep", "600"])
        racer = subprocess.Popen([PY, "-c", COPY_RACE, ws["directory"]], user=GUEST, group=GUEST)
        try:
            wait_for(lambda: os.path.lexists(os.path.join(ws["directory"], "data")), 10, "the racer")
            taken = 0
            for i in range(15):
                image = os.path.join(node.home, f"c1-{i}.img")
                try:
                    c.checkpoint("c1", image, leave_running=True)
                except Exception as e:  # refusing a directory that keeps changing is fine too
                    assert getattr(e, "code", "") == "not-checkpointable", e
                    continue
                taken += 1
                data = os.path.join(image, "work", "data")
                if os.path.islink(data):
                    assert os.readlink(data) == "/etc/shadow"
                else:
                    st = os.lstat(data)
                    assert st.st_uid == GUEST and open(data).read() == "mine\n"
            assert taken and c.stat("c1")["state"] == "running"
        finally:
            racer.kill()
            racer.wait()
        c.rm("c1")
    node_still_serves(node)


SOCKET_AND_FIFO = """
import os, socket
os.chdir('/run/xos-work')
s = socket.socket(socket.AF_UNIX)
s.bind('ctl.sock')
s.listen()
os.mkfifo('queue')
""" + COUNTER  # then it counts, as the checkpoint tests' counter does


def test_unix_socket_and_fifo_in_the_directory_checkpoint(node: TestNode) -> None:
    """A main program with a bound Unix socket and a FIFO in its directory (as Redis or PostgreSQL)
    checkpoints and restores, and goes on counting."""
    with node.client() as c:
        ws = c.create("k1", uid=GUEST, gid=GUEST, main=[PY, "-c", SOCKET_AND_FIFO], out="count.log")
        wait_for(lambda: len(lines(os.path.join(ws["directory"], "count.log"))) > 3, 10, "the counter")
        image = os.path.join(node.home, "k1.img")
        c.checkpoint("k1", image)
        back = c.restore(image)
        log = os.path.join(back["directory"], "count.log")
        n0 = len(lines(log))
        wait_for(lambda: len(lines(log)) > n0 + 3, 10, "the restored counter to go on")
        nums = [int(x) for x in lines(log)]
        assert nums == list(range(1, len(nums) + 1))  # from where it was: no restart, no gap
        assert os.path.exists(os.path.join(back["directory"], "ctl.sock"))
        c.rm("k1")
    node_still_serves(node)


FILLED = """
b = bytearray(b'x' * (64 << 20))  # an image larger than the disk it goes to
open('/run/xos-work/filled', 'w').close()
"""


def test_full_disk_during_checkpoint_loses_nothing(node: TestNode, grid: TestGrid) -> None:
    """The image's file system fills up after CRIU dumped: a clear error, and the workload runs on
    where it was (it used to be killed with no image left)."""
    small = os.path.join(grid.base, "small")
    os.mkdir(small)
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", small], check=True)
    try:
        with node.client() as c:
            ws = c.create("f1", uid=GUEST, gid=GUEST, memory="256M",
                          main=[PY, "-c", FILLED + "import signal\nsignal.pause()\n"])
            wait_for(lambda: os.path.exists(os.path.join(ws["directory"], "filled")), 20, "64 MiB to be filled")
            node.expect_warning("criu dump failed|checkpoint-failed")
            big = os.path.join(ws["directory"], "big")
            with open(big, "wb") as f:  # first the directory's copy fills the disk, then CRIU's pages do
                f.write(b"y" * (4 << 20))
            for code in ("checkpoint-failed", "criu-failed"):
                with pytest.raises(Exception) as e:
                    c.checkpoint("f1", os.path.join(small, "f1.img"))
                assert getattr(e.value, "code", "") == code and "No space" in str(e.value), e.value
                d = c.stat("f1")
                assert d["state"] == "running" and d["processes"] == 1, d
                assert os.listdir(small) == []  # nothing half-made
                os.unlink(big) if os.path.exists(big) else None
            c.rm("f1")
        node_still_serves(node)
    finally:
        subprocess.run(["umount", small], check=True)


def test_forged_image_from_a_peer_asking_for_root_is_refused(node: TestNode, grid: TestGrid) -> None:
    """Restoring an image never grants more than its manifest's mapped identity: an image whose tasks run
    as root, or whose members are hard links or devices, is refused."""
    with node.client() as c:
        c.create("r1", uid=0, gid=0, main=["/bin/sleep", "600"])  # a root workspace, made locally
        image = os.path.join(node.home, "r1.img")
        c.checkpoint("r1", image)
    tar = os.path.join(grid.base, "r1.tar")
    with tarfile.open(tar, "w") as t:
        for top in sorted(os.listdir(image)):
            t.add(os.path.join(image, top), arcname=top)
    with open(tar, "rb") as f:
        status, answer = peer_get(grid, node, "/v1/peer/restore?name=r2", 60, "PUT", f.read())
    assert status == 400 and error_code(answer) == "image-refused", answer
    with node.client() as c:
        assert "r2" not in [w["name"] for w in c.ls()]
    node_still_serves(node)


def _criu_dump_pid() -> int | None:
    """The CRIU dumping, not a child it forked for a moment (same command line): killing one of those once
    let the dump finish."""
    dumps: dict[int, int] = {}  # pid -> parent
    for p in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{p}/cmdline", "rb") as f:
                argv = f.read().split(b"\0")
            with open(f"/proc/{p}/stat") as f:
                parent = int(f.read().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        if argv and argv[0].endswith(b"criu") and b"dump" in argv[1:3]:
            dumps[int(p)] = parent
    return next((p for p, parent in sorted(dumps.items()) if parent not in dumps), None)


def test_criu_killed_mid_dump_leaves_the_workload_running(node: TestNode) -> None:
    """CRIU killed in the middle of a dump: the checkpoint fails with a clear error, and the workload runs
    on where it was, counting from where it was."""
    import signal
    import threading

    node.expect_warning("criu dump failed|criu-failed|checkpoint")
    with node.client() as c:
        ws = c.create("m1", uid=GUEST, gid=GUEST, memory="512M", main=[PY, "-c", FILLED + COUNTER],
                      out="count.log")
        wait_for(lambda: os.path.exists(os.path.join(ws["directory"], "filled")), 20, "64 MiB to be filled")
        errors: list[BaseException] = []

        def checkpoint() -> None:
            try:
                with node.client() as c2:
                    c2.checkpoint("m1", os.path.join(node.home, "m1.img"))
            except BaseException as e:  # the failure this test causes
                errors.append(e)

        t = threading.Thread(target=checkpoint)
        t.start()
        # looked for every few milliseconds, not at intervals grown to 0.2 s: a 64 MiB dump is over in a
        # fraction of a second, and found late it was once done before the kill landed
        found: list[int | None] = [None]

        def dumping() -> bool:
            found[0] = _criu_dump_pid()
            return found[0] is not None or not t.is_alive()

        wait_for(dumping, 30, "CRIU to start dumping", interval=0.002, cap=0.002)
        pid = found[0]
        assert pid is not None, "the dump ended before it could be killed"
        os.kill(pid, signal.SIGKILL)
        t.join(60)
        assert errors and getattr(errors[0], "code", "") == "criu-failed", errors
        d = c.stat("m1")
        assert d["state"] == "running" and d["processes"] == 1, d
        log = os.path.join(ws["directory"], "count.log")
        n = len(lines(log))
        wait_for(lambda: len(lines(log)) >= n + 3, 20, "the counter to go on")
        nums = [int(x) for x in lines(log)]
        assert nums == list(range(1, len(nums) + 1))
        assert not os.path.exists(os.path.join(node.home, "m1.img"))
        c.rm("m1")
    node_still_serves(node)
