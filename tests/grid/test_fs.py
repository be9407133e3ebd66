"""The grid file system through real FUSE mounts: POSIX behaviour, real programs, two mounts, security.

One grid (MRC, 3 OSDs, 2 client hosts in their own network namespaces) serves the whole module.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import os
import random
import re
import shutil
import sqlite3
import subprocess
import sys
import tarfile
import time
import urllib.request

import pytest

from tests.grid.helpers import http_answers
from xos.fs import capability
from xos.fs.capability import Capability
from xos.fs.client.mount import IO_SIZE
from xos.testing import wait_for
from xos.testing.fsgrid import fs_grid

BAD_INPUT_WARNINGS = ["refused", "unreachable"]
OSDS = [f"osd{i}" for i in range(3)]  # the grid's OSDs: a capability made here carries a seal for each


@pytest.fixture(scope="module")
def grid():
    with fs_grid({"data": {}, "striped": {"stripe_size": 65536, "stripe_width": 3},
                  "shared": {"acl": {"vo-b": "r"}}}, BAD_INPUT_WARNINGS, osds=3, clients=2) as g:
        yield g


@pytest.fixture(scope="module")
def mnt(grid):
    return grid.mount(0, "data")


@pytest.fixture
def d(mnt, request):
    """A fresh directory on the mount for one test."""
    path = os.path.join(mnt, request.node.name.replace("[", "_").replace("]", ""))
    os.mkdir(path)
    return path


def test_create_read_write_at_offsets_and_sparse(d):
    p = os.path.join(d, "f")
    with open(p, "wb") as f:
        f.write(b"a" * 100)
    with open(p, "r+b") as f:
        f.seek(50)
        f.write(b"B" * 10)
        f.seek(3 << 20)  # far past the end: a hole, then data in another object
        f.write(b"end")
    with open(p, "rb") as f:
        data = f.read()
    assert len(data) == (3 << 20) + 3
    assert data[:50] == b"a" * 50 and data[50:60] == b"B" * 10 and data[60:100] == b"a" * 40
    assert data[100:3 << 20] == bytes((3 << 20) - 100)
    assert data[-3:] == b"end"
    assert os.stat(p).st_size == (3 << 20) + 3


def test_truncate_shrinks_and_extends_with_zeros(d):
    p = os.path.join(d, "t")
    payload = os.urandom(2 << 20)
    with open(p, "wb") as f:
        f.write(payload)
    os.truncate(p, 1000)
    assert os.stat(p).st_size == 1000
    os.truncate(p, 3 << 20)
    with open(p, "rb") as f:
        data = f.read()
    assert data[:1000] == payload[:1000]
    assert data[1000:] == bytes((3 << 20) - 1000)
    small = os.path.join(d, "small")
    with open(small, "wb") as f:
        f.write(b"xyz")
    os.truncate(small, 5 << 20)  # an inline file extended past the inline limit
    with open(small, "rb") as f:
        assert f.read() == b"xyz" + bytes((5 << 20) - 3)


def test_rename_is_atomic_over_existing_and_across_directories(d):
    os.mkdir(os.path.join(d, "a"))
    os.mkdir(os.path.join(d, "b"))
    src, dst = os.path.join(d, "a", "new"), os.path.join(d, "b", "cur")
    with open(dst, "wb") as f:
        f.write(b"old")
    with open(src, "wb") as f:
        f.write(b"new contents")
    os.rename(src, dst)
    assert not os.path.exists(src)
    with open(dst, "rb") as f:
        assert f.read() == b"new contents"
    os.rename(os.path.join(d, "a"), os.path.join(d, "b", "moved"))
    assert os.listdir(os.path.join(d, "b")) == ["cur", "moved"] or sorted(os.listdir(os.path.join(d, "b"))) == [
        "cur", "moved"]
    with pytest.raises(OSError) as e:
        os.rename(os.path.join(d, "b"), os.path.join(d, "b", "moved", "inside"))
    assert e.value.errno == errno.EINVAL


def test_unlink_of_an_open_file_keeps_its_data_until_close(d):
    p = os.path.join(d, "open")
    with open(p, "wb") as f:
        f.write(b"still here" * 1000)
    f = open(p, "r+b")
    try:
        os.unlink(p)
        assert "open" not in os.listdir(d)
        assert f.read() == b"still here" * 1000
        assert os.fstat(f.fileno()).st_size == 10000  # fstat of a file open for writing: no handle comes
    finally:
        f.close()
    assert [n for n in os.listdir(d) if not n.startswith(".fuse_hidden")] == []


def test_last_closes_at_once_of_a_removed_file_remove_it_once(d):
    """A file removed while open lives under a hidden name until its last close; when its last handles
    close at once (their releases come on different threads), one of them removes it, the other leaves it
    be: no name is left behind and the mount raises nothing (the grid's log check)."""
    import threading

    for i in range(30):
        p = os.path.join(d, f"f{i}")
        with open(p, "wb") as f:
            f.write(b"x" * 100)
        fds = [os.open(p, os.O_RDONLY) for _ in range(4)]
        os.unlink(p)
        go = threading.Barrier(len(fds))

        def close(fd: int, go: threading.Barrier = go) -> None:
            go.wait()
            os.close(fd)

        threads = [threading.Thread(target=close, args=(fd,)) for fd in fds]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    wait_for(lambda: os.listdir(d) == [], 10, "every file moved aside to go at its last close")


def test_a_file_renamed_over_while_open_keeps_its_data_until_close(d):
    old, new = os.path.join(d, "cur"), os.path.join(d, "next")
    data = os.urandom(300 << 10)  # past the inline size: its objects are on OSDs, which drop orphans
    with open(old, "wb") as f:
        f.write(data)
    with open(new, "wb") as f:
        f.write(b"replacement")
    f = open(old, "rb")
    try:
        os.rename(new, old)
        assert open(old, "rb").read() == b"replacement"
        assert f.read() == data
    finally:
        f.close()
    wait_for(lambda: sorted(os.listdir(d)) == ["cur"], 10, "the replaced file to go at its last close")


def test_mkdir_rmdir_and_errors(d):
    sub = os.path.join(d, "sub")
    os.mkdir(sub)
    with pytest.raises(FileExistsError):
        os.mkdir(sub)
    open(os.path.join(sub, "x"), "wb").close()
    with pytest.raises(OSError) as e:
        os.rmdir(sub)
    assert e.value.errno == errno.ENOTEMPTY
    os.unlink(os.path.join(sub, "x"))
    os.rmdir(sub)
    assert not os.path.exists(sub)
    with pytest.raises(FileNotFoundError):
        os.stat(os.path.join(d, "nothing"))


def test_symlinks_and_hard_links(d):
    target = os.path.join(d, "target")
    with open(target, "wb") as f:
        f.write(b"T")
    os.symlink("target", os.path.join(d, "sym"))
    assert os.readlink(os.path.join(d, "sym")) == "target"
    with open(os.path.join(d, "sym"), "rb") as f:
        assert f.read() == b"T"
    os.link(target, os.path.join(d, "hard"))
    assert os.stat(target).st_nlink == 2
    assert os.stat(target).st_ino == os.stat(os.path.join(d, "hard")).st_ino
    os.unlink(target)
    with open(os.path.join(d, "hard"), "rb") as f:
        assert f.read() == b"T"
    assert os.stat(os.path.join(d, "hard")).st_nlink == 1


def test_chmod_chown_utimens(d):
    p = os.path.join(d, "m")
    open(p, "wb").close()
    os.chmod(p, 0o640)
    assert os.stat(p).st_mode & 0o7777 == 0o640
    os.utime(p, ns=(1_000_000_000_000_000_000, 1_500_000_000_123_456_000))
    st = os.stat(p)
    assert st.st_mtime_ns // 1000 == 1_500_000_000_123_456
    # the mounting identity shows as the mounting user; chown to oneself is allowed
    os.chown(p, os.getuid(), os.getgid())
    assert (st.st_uid, st.st_gid) == (os.getuid(), os.getgid())
    with pytest.raises(OSError) as e:
        os.chown(p, 12345, -1)  # no grid identity behind that account
    assert e.value.errno in (errno.EINVAL, errno.EPERM)


def test_user_xattrs(d):
    p = os.path.join(d, "x")
    open(p, "wb").close()
    os.setxattr(p, "user.colour", b"blue")
    assert os.getxattr(p, "user.colour") == b"blue"
    assert "user.colour" in os.listxattr(p)
    with pytest.raises(OSError) as e:
        os.setxattr(p, "user.colour", b"red", os.XATTR_CREATE)
    assert e.value.errno == errno.EEXIST
    os.removexattr(p, "user.colour")
    with pytest.raises(OSError) as e:
        os.getxattr(p, "user.colour")
    assert e.value.errno == errno.ENODATA


def test_statfs_and_fsync(d, grid):
    st = os.statvfs(d)
    assert st.f_blocks > 0 and st.f_bavail > 0
    p = os.path.join(d, "durable")
    with open(p, "wb") as f:
        f.write(os.urandom(3 << 20))
        f.flush()
        os.fsync(f.fileno())
        # fsync made the size known at the MRC before close: another client sees it
        c = grid.client("data")
        try:
            assert c.stat("/" + os.path.relpath(p, os.path.dirname(d)))["size"] == 3 << 20
        finally:
            c.close()


@contextlib.contextmanager
def _fuse_requests(mnt):
    """The kernel's FUSE requests to this mount while the block runs, as (opcode, length) pairs, from the
    fuse_request_send tracepoint in a tracing instance of the test's own (removed after, as is tracefs
    if the test mounted it)."""
    tracing, mounted = "/sys/kernel/tracing", False
    if not os.path.exists(os.path.join(tracing, "instances")):
        subprocess.run(["mount", "-t", "tracefs", "nodev", tracing], check=True)
        mounted = True
    inst = os.path.join(tracing, "instances", f"xos-test-{os.getpid()}")
    os.mkdir(inst)
    try:
        event = os.path.join(inst, "events", "fuse", "fuse_request_send")
        assert os.path.isdir(event), "this kernel has no fuse_request_send tracepoint"
        with open(os.path.join(event, "filter"), "w") as f:
            f.write(f"connection == {os.minor(os.stat(mnt).st_dev)}")
        with open(os.path.join(event, "enable"), "w") as f:
            f.write("1")
        seen: list[tuple[str, int]] = []
        yield seen
        with open(os.path.join(event, "enable"), "w") as f:
            f.write("0")
        with open(os.path.join(inst, "trace")) as f:
            for line in f:
                m = re.search(r"opcode \d+ \((\w+)\) len (\d+)", line)
                if m:
                    seen.append((m.group(1), int(m.group(2))))
    finally:
        os.rmdir(inst)
        if mounted:
            subprocess.run(["umount", tracing], check=True)


def test_writes_reach_the_mount_in_whole_1mib_requests(d, mnt):
    """libfuse 3 with 1 MiB max_write: a program's 1 MiB writes arrive whole, through a write-only handle
    (direct I/O) and through a read-write one (the page cache's writeback), never as 4 KiB requests."""
    block = os.urandom(IO_SIZE)
    header = 80  # fuse_in_header and fuse_write_in before the bytes
    for flags in (os.O_WRONLY, os.O_RDWR):
        p = os.path.join(d, f"w{flags}")
        with _fuse_requests(mnt) as seen:
            fd = os.open(p, flags | os.O_CREAT, 0o644)
            try:
                for _ in range(8):
                    os.write(fd, block)
                os.fsync(fd)
            finally:
                os.close(fd)
        writes = [n - header for op, n in seen if op == "FUSE_WRITE"]
        assert sum(writes) == 8 * IO_SIZE, writes
        # Direct I/O pins the caller's pages, at most 256 a request (fs.fuse.max_pages_limit): a 1 MiB
        # buffer that does not start on a page (Python's bytes do not) comes as 1 MiB less its offset
        # into its first page, then that offset.
        whole = [w for w in writes if w > IO_SIZE - 4096]
        assert len(whole) == 8 and len(writes) <= 16 and all(w < 4096 for w in writes if w not in whole), writes
        with open(p, "rb") as f:
            assert f.read() == block * 8


URING = "/sys/module/fuse/parameters/enable_uring"


def test_requests_come_through_rings_served_on_their_own_cpu(grid, mnt, d):
    """With FUSE over io_uring on (make setup turns it on), the kernel hands the mount its requests through
    io_uring rings, each CPU's served by threads bound to that CPU, not through /dev/fuse."""
    assert os.path.exists(URING), "this kernel has no FUSE over io_uring (CONFIG_FUSE_IO_URING, Linux 6.14+)"
    with open(URING) as f:
        assert f.read().strip() == "Y", f"{URING} is off: `make setup` turns FUSE over io_uring on"
    pid = grid.mount_proc(mnt).pid
    with open("/sys/devices/system/cpu/possible") as f:
        cpus = int(f.read().strip().rpartition("-")[2]) + 1
    bound = set()
    for tid in os.listdir(f"/proc/{pid}/task"):
        with open(f"/proc/{pid}/task/{tid}/status") as f:
            status = dict(line.split(":", 1) for line in f if ":" in line)
        name = status["Name"].strip()
        if name.startswith("xos-ring"):
            bound.add((name, status["Cpus_allowed_list"].strip()))
    assert bound == {(f"xos-ring{i}", str(i)) for i in range(cpus)}, bound
    before = grid.ring_completions(mnt)
    assert before is not None, "the mount holds no io_uring ring"
    with _fuse_requests(mnt) as seen:
        for i in range(200):
            assert not os.path.exists(os.path.join(d, f"absent{i}"))
    lookups = sum(op == "FUSE_LOOKUP" for op, _ in seen)
    assert lookups >= 200 and grid.ring_completions(mnt) - before >= lookups, (lookups, before)


def _mount_with(grid, knob, value):
    """Mount "data" on the second client with kernel setting `knob` at `value` while it starts (then as was)."""
    with open(knob) as f:
        was = f.read().strip()
    with open(knob, "w") as f:
        f.write(value)
    try:
        return grid.mount(1, "data")
    finally:
        with open(knob, "w") as f:
            f.write(was)


def test_with_io_uring_off_the_mount_serves_through_dev_fuse(grid):
    """A kernel that does not offer FUSE over io_uring gets the same file system through /dev/fuse."""
    other = _mount_with(grid, URING, "N")
    try:
        assert grid.ring_completions(other) is None
        d = os.path.join(other, "through-dev-fuse")
        os.mkdir(d)
        payload = os.urandom(3 * IO_SIZE + 5)
        with open(os.path.join(d, "f"), "wb") as f:
            f.write(payload)
        with open(os.path.join(d, "f"), "rb") as f:
            assert f.read() == payload
        assert os.listdir(d) == ["f"] and os.stat(os.path.join(d, "f")).st_size == len(payload)
    finally:
        grid.umount(other)


def test_a_kernel_refusing_new_rings_gets_the_mount_through_dev_fuse(grid):
    """FUSE over io_uring on, but io_uring refused to this process (kernel.io_uring_disabled): the mount
    says so and serves through /dev/fuse."""
    other = _mount_with(grid, "/proc/sys/kernel/io_uring_disabled", "2")
    try:
        assert grid.ring_completions(other) is None
        with open(os.path.join(other, "refused-rings"), "wb") as f:
            f.write(b"still here")
        with open(os.path.join(other, "refused-rings"), "rb") as f:
            assert f.read() == b"still here"
        with open(grid.mount_proc(other).log) as f:
            assert "no rings could be made (Operation not permitted): requests come through /dev/fuse" in f.read()
    finally:
        grid.umount(other)


def test_sequential_reads_keep_four_whole_requests_ahead(mnt):
    # The kernel reads ahead the smaller of the bdi's window and the INIT reply's max_readahead; with
    # only the first raised, a sequential read had one request ahead.
    dev = os.stat(mnt).st_dev
    with open(f"/sys/class/bdi/{os.major(dev)}:{os.minor(dev)}/read_ahead_kb") as f:
        assert int(f.read()) == 4 * IO_SIZE // 1024


def _native_reads(grid):
    total = 0
    for i in range(len(grid.osds)):
        with grid.urlopen(f"{grid.osd_url(i)}/v1/status", timeout=5) as r:
            total += json.loads(r.read())["native_reads"]
    return total


def test_a_sequential_reader_gets_whole_chunks_fetched_ahead_and_can_map_the_file_shared(grid, d):
    import mmap

    payload = os.urandom(8 * IO_SIZE + 12345)
    p = os.path.join(d, "big")
    with open(p, "wb") as f:
        f.write(payload)
    before = _native_reads(grid)
    got = bytearray()
    with open(p, "rb", buffering=0) as f:
        while chunk := f.read(128 << 10):  # as cat reads
            got += chunk
    assert got == payload
    # 73 reads of 128 KiB: the first one alone, then the file's 9 objects once each, fetched ahead
    assert _native_reads(grid) - before <= 10
    with open(p, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as m:  # MAP_SHARED, read-only
        assert m[:] == payload


def test_bytes_written_lately_read_back_without_the_osds_and_right_after_overwrites(grid, d):
    """A log written in small pieces reads back from what the mount wrote (no OSD read), and what later
    writes (large or small, over it or past its end) and a truncate made of it reads back, through a second
    descriptor whose open dropped the kernel's pages."""
    p = os.path.join(d, "log")
    fd = os.open(p, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644)
    want = bytearray(os.urandom(1 << 20))
    os.write(fd, want)
    os.fsync(fd)

    def put(data: bytes, off: int) -> None:
        os.pwrite(fd, data, off)
        want[off:off + len(data)] = data

    for i in range(60):  # frames of a write-ahead log
        put(os.urandom(4120), 300000 + i * 4120)

    def check(*offsets: int) -> None:
        other = os.open(p, os.O_RDONLY)
        try:
            for off in offsets:
                assert os.pread(other, 4096, off) == bytes(want[off:off + 4096]), off
        finally:
            os.close(other)

    def osd_reads() -> tuple[int, int]:
        out = [0, 0]
        for i in range(len(grid.osds)):
            with grid.urlopen(f"{grid.osd_url(i)}/v1/status", timeout=5) as r:
                st = json.loads(r.read())
            out[0] += st["native_reads"]
            out[1] += st["read_bytes"]
        return out[0], out[1]

    before = osd_reads()
    check(303104, 401408, 540672)
    assert osd_reads() == before  # from what the mount wrote
    put(os.urandom(200000), 350000)  # a large write over part of it
    put(os.urandom(3000), 500000)  # a small one inside
    check(352256, 401408, 499712, 540672)
    put(os.urandom(9000), 545000)  # past its end
    check(540672, 548864)
    os.ftruncate(fd, 520000)
    del want[520000:]
    os.ftruncate(fd, 560000)
    want.extend(bytes(40000))
    check(503808, 516096, 548864)
    os.close(fd)


def test_flock_and_fcntl_locks_among_processes(d):
    p = os.path.join(d, "lock")
    open(p, "wb").close()
    probe = ("import fcntl,sys\nf=open(sys.argv[1],'rb+')\n"
             "try:\n fcntl.{fn}(f, fcntl.LOCK_EX | fcntl.LOCK_NB{extra})\n print('got')\n"
             "except BlockingIOError:\n print('busy')\n")
    with open(p, "rb+") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        out = subprocess.run([sys.executable, "-c", probe.format(fn="flock", extra=""), p], capture_output=True,
                             text=True, check=True).stdout.strip()
        assert out == "busy"
        fcntl.flock(f, fcntl.LOCK_UN)
        fcntl.lockf(f, fcntl.LOCK_EX)
        out = subprocess.run([sys.executable, "-c", probe.format(fn="lockf", extra=""), p], capture_output=True,
                             text=True, check=True).stdout.strip()
        assert out == "busy"
    out = subprocess.run([sys.executable, "-c", probe.format(fn="lockf", extra=""), p], capture_output=True,
                         text=True, check=True).stdout.strip()
    assert out == "got"


def test_small_files_live_in_the_mrc(d, grid):
    p = os.path.join(d, "tiny")
    with open(p, "wb") as f:
        f.write(b"tiny file")
    c = grid.client("data")
    try:
        rel = "/" + os.path.relpath(p, os.path.dirname(d))
        info = c.replicas(rel)
        assert info["attrs"]["inline"] and info["xloc"] is None
        for i in range(3):
            assert not os.path.exists(os.path.join(grid.osd_dir(i), "objects", info["fid"][:2], info["fid"]))
    finally:
        c.close()


def test_tarball_unpacks_identically(d, tmp_path_factory):
    src = tmp_path_factory.mktemp("src")
    tree = src / "proj"
    for i in range(30):
        sub = tree / f"dir{i % 5}"
        sub.mkdir(parents=True, exist_ok=True)
        (sub / f"file{i}.c").write_bytes(os.urandom(100 + i * 3000))
    (tree / "link").symlink_to("dir0/file0.c")
    tarball = src / "proj.tar"
    with tarfile.open(tarball, "w") as t:
        t.add(tree, arcname="proj")
    subprocess.run(["tar", "-xf", str(tarball), "-C", d], check=True)
    diff = subprocess.run(["diff", "-r", "--no-dereference", str(tree), os.path.join(d, "proj")],
                          capture_output=True, text=True)
    assert diff.returncode == 0, diff.stdout + diff.stderr


def test_git_commit_of_200_files_passes_fsck(d):
    repo = os.path.join(d, "repo")
    env = {**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@x", "GIT_COMMITTER_NAME": "t",
           "GIT_COMMITTER_EMAIL": "t@x", "HOME": d}
    subprocess.run(["git", "init", "-q", repo], check=True, env=env)
    for i in range(200):
        with open(os.path.join(repo, f"f{i:03}.txt"), "w") as f:
            f.write(f"file {i}\n" * (i + 1))
    subprocess.run(["git", "-C", repo, "add", "."], check=True, env=env)
    subprocess.run(["git", "-C", repo, "commit", "-qm", "200 files"], check=True, env=env)
    fsck = subprocess.run(["git", "-C", repo, "fsck", "--full"], capture_output=True, text=True, env=env)
    assert fsck.returncode == 0, fsck.stderr
    files = subprocess.run(["git", "-C", repo, "ls-files"], capture_output=True, text=True, check=True, env=env)
    assert len(files.stdout.split()) == 200


def test_sqlite_inserts_10000_rows(d):
    db = sqlite3.connect(os.path.join(d, "t.db"))
    db.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT)")
    with db:
        db.executemany("INSERT INTO t (v) VALUES (?)", [(f"row {i}",) for i in range(10000)])
    db.close()
    db = sqlite3.connect(os.path.join(d, "t.db"))
    assert db.execute("SELECT count(*), sum(id) FROM t").fetchone() == (10000, 10000 * 10001 // 2)
    assert db.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    db.close()


def test_copy_of_1gib_compares_equal(d, tmp_path_factory):
    local = tmp_path_factory.mktemp("big") / "big"
    block = os.urandom(1 << 20)
    with open(local, "wb") as f:
        for i in range(1024):
            f.write(block[i:] + block[:i])
    dst = os.path.join(d, "big")
    subprocess.run(["cp", str(local), dst], check=True)
    assert subprocess.run(["cmp", str(local), dst]).returncode == 0
    os.unlink(dst)
    os.unlink(local)


def test_close_to_open_between_two_mounts_on_two_nodes(grid, mnt):
    other = grid.mount(1, "data", user="bob")
    try:
        payload = os.urandom(3 << 20) + b"tail"
        with open(os.path.join(mnt, "c2o"), "wb") as f:
            f.write(payload)
        with open(os.path.join(other, "c2o"), "rb") as f:
            assert f.read() == payload
        with open(os.path.join(mnt, "c2o"), "r+b") as f:
            f.write(b"CHANGED")
        with open(os.path.join(other, "c2o"), "rb") as f:
            assert f.read(7) == b"CHANGED"
    finally:
        grid.umount(other)


def test_a_file_created_on_another_node_opens_here_at_once_though_listed_just_before(grid, mnt, d):
    os.chmod(d, 0o777)  # bob writes there
    other = grid.mount(1, "data", user="bob")
    try:
        there = os.path.join(other, os.path.relpath(d, mnt))
        for i in range(20):
            assert f"n{i}" not in os.listdir(d)  # a fresh listing here, without the name
            with open(os.path.join(there, f"n{i}"), "wb") as f:
                f.write(b"made there %d" % i)
            with open(os.path.join(d, f"n{i}"), "rb") as f:  # closed there, so it opens here
                assert f.read() == b"made there %d" % i
    finally:
        grid.umount(other)


def test_a_directory_read_twice_in_a_row_is_listed_once(grid, mnt, d):
    """rm -rf reads each directory twice, back to back, and fts opens directories only to hold them: one
    listing from the MRC serves both reads, and a directory opened costs none until it is read. Another
    mount's change shows in a listing taken a moment later."""
    names = [f"f{i}" for i in range(5)]
    api = grid.client("data")
    for n in names:  # made elsewhere: this mount holds no lease on the directory
        with api.open(f"/{os.path.relpath(d, mnt)}/{n}", "wb"):
            pass
    other = grid.mount(1, "data")
    try:
        def readdirs():
            return api._json("GET", f"{grid.mrc_url}/v1/stats")["ops"].get("readdir", 0)

        before = readdirs()
        os.close(os.open(d, os.O_RDONLY | os.O_DIRECTORY))
        assert readdirs() == before
        assert sorted(os.listdir(d)) == names and sorted(os.listdir(d)) == names
        assert readdirs() - before == 1
        with open(os.path.join(other, os.path.relpath(d, mnt), "new"), "wb"):
            pass
        wait_for(lambda: sorted(os.listdir(d)) == names + ["new"], 0.5, "the other mount's file in a listing here")
    finally:
        grid.umount(other)
        api.close()


def test_a_listing_that_shows_a_new_size_replaces_what_the_kernel_holds_at_once(grid, mnt, d):
    """`ls -l` then `stat`: once a listing shows that a file grew elsewhere, a stat here says so too, not
    the size the kernel was told before, while that answer's TTL still runs (the mount tells the kernel)."""
    from xos.fs.client.mount import ATTR_TTL

    other = grid.mount(1, "data")
    try:
        for attempt in range(5):  # each attempt must fit in one attribute TTL: a slow one is tried again
            name = f"f{attempt}"
            with open(os.path.join(d, name), "wb") as f:
                f.write(b"x")  # its close has the kernel forget the attributes: the stat below asks anew
            t0 = time.monotonic()
            assert os.stat(os.path.join(d, name)).st_size == 1  # the kernel holds this for a TTL
            with open(os.path.join(other, os.path.relpath(d, mnt), name), "ab") as f:
                f.write(b"more")
            assert name in os.listdir(d)
            size = os.stat(os.path.join(d, name)).st_size
            if time.monotonic() - t0 < ATTR_TTL:
                assert size == 5, "a stat right after a listing showed the size the kernel held before"
                return
        pytest.fail(f"no attempt fitted in one attribute TTL ({ATTR_TTL} s)")
    finally:
        grid.umount(other)


def test_a_listing_kept_by_its_version_still_shows_changes_made_elsewhere(grid, mnt, d):
    """A listing is kept past its TTL when the MRC's listing version has not moved: every change that a
    listing shows must move it (chmod, a write's size, a rename, a removal), or this mount would show
    old attributes for ever."""
    for name in ("mode", "size", "gone", "moved"):
        with open(os.path.join(d, name), "wb") as f:
            f.write(b"x")
    os.chmod(os.path.join(d, "mode"), 0o666)
    other = grid.mount(1, "data")  # alice, on the other node
    try:
        there = os.path.join(other, os.path.relpath(d, mnt))
        os.listdir(d)  # the listing this mount then keeps
        st = {n: os.stat(os.path.join(d, n)) for n in ("mode", "size")}
        os.chmod(os.path.join(there, "mode"), 0o604)
        with open(os.path.join(there, "size"), "ab") as f:
            f.write(b"more")
        wait_for(lambda: (os.stat(os.path.join(d, "mode")).st_mode & 0o777 == 0o604
                          and os.stat(os.path.join(d, "size")).st_size == 5), 10,
                 "attributes changed on the other node to show here")
        os.unlink(os.path.join(there, "gone"))
        os.rename(os.path.join(there, "moved"), os.path.join(there, "arrived"))
        wait_for(lambda: [n for n in ("mode", "size", "gone", "moved", "arrived")
                          if os.path.exists(os.path.join(d, n))] == ["mode", "size", "arrived"], 10,
                 "names changed on the other node to show here")
        assert st["mode"].st_mode & 0o777 == 0o666 and st["size"].st_size == 1
    finally:
        grid.umount(other)


def test_listings_run_out_together_are_revalidated_in_one_call_and_a_changed_one_is_not_kept(grid, mnt, d):
    """Past the TTL, the first directory revalidated asks the MRC for the other listings this mount used
    of late in the same call: ten directories cost one call, and one changed elsewhere meanwhile is not
    refreshed with the rest (its stat shows the change at once)."""
    from xos.fs.client.mount import ATTR_TTL

    dirs = [os.path.join(d, f"d{i}") for i in range(10)]
    for p in dirs:
        os.mkdir(p)
        with open(os.path.join(p, "f"), "wb"):
            pass
    api = grid.client("data")
    other = grid.mount(1, "data")
    try:
        def dirversions():
            return api._json("GET", f"{grid.mrc_url}/v1/stats")["ops"].get("dirversion", 0)

        for p in dirs:
            os.listdir(p)
            os.stat(os.path.join(p, "f"))
        time.sleep(ATTR_TTL * 1.5)  # every listing above has run out: the TTL is a timer, not a condition
        before = dirversions()
        for p in dirs:
            os.stat(os.path.join(p, "f"))
        assert dirversions() - before <= 2  # this directory's parent or its first child, with all the rest

        os.chmod(os.path.join(other, os.path.relpath(dirs[9], mnt), "f"), 0o604)
        time.sleep(ATTR_TTL * 1.5)
        before = dirversions()
        os.stat(os.path.join(dirs[0], "f"))  # revalidates d0 and, in the same call, d1..d9
        assert os.stat(os.path.join(dirs[9], "f")).st_mode & 0o777 == 0o604
        assert dirversions() - before == 1  # d9's listing, found changed, was dropped: not asked for again
    finally:
        grid.umount(other)
        api.close()


def test_a_directory_removed_while_open_does_not_disturb_the_revalidation_of_the_others(d):
    """A listing used of late whose directory is gone (removed here, still open, so the table keeps its
    node but it has no path) is left out of the next batched revalidation, not an error of the lookup."""
    from xos.fs.client.mount import ATTR_TTL

    gone, kept = os.path.join(d, "gone"), os.path.join(d, "kept")
    os.mkdir(gone)
    os.mkdir(kept)
    with open(os.path.join(kept, "f"), "wb"):
        pass
    os.listdir(gone)
    os.listdir(kept)
    fd = os.open(gone, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.rmdir(gone)
        time.sleep(ATTR_TTL * 1.5)  # both listings run out: the TTL is a timer
        assert os.stat(os.path.join(kept, "f")).st_size == 0
        assert os.fstat(fd).st_nlink == 0 and os.listdir(fd) == []  # as on a local disk
    finally:
        os.close(fd)


def test_the_mrc_answers_other_listing_versions_or_null_and_refuses_a_bad_list(grid, mnt, d):
    os.mkdir(os.path.join(d, "sub"))
    with open(os.path.join(d, "file"), "wb"):
        pass
    inner = "/" + os.path.relpath(d, mnt)
    c = grid.client("data")
    try:
        c.listing_version(inner + "/sub")  # made on the mount, which leased it with the mkdir: handed back now
        version, also = c.listing_versions(inner, [inner + "/sub", inner + "/file", inner + "/none", "/../.."])
        assert version == c.listing_version(inner) and also[0] == c.listing_version(inner + "/sub")
        assert also[1:] == [None, None, None]
        for bad in ("x", [1], [inner] * 65):
            with pytest.raises(Exception) as e:
                c.op("dirversion", path=inner, also=bad)
            assert getattr(e.value, "code", "") == "invalid-input" and "also" in str(e.value)
    finally:
        c.close()


def test_names_removed_elsewhere_leave_the_listing_of_the_directory_they_were_moved_to(grid, mnt, d):
    """The table finds a directory's names by their parent (not by walking every node): a name renamed
    here into another directory, and the table grown past its first size meanwhile, must be found
    under its new parent when a listing there drops it, and no longer under its old one."""
    many, into = os.path.join(d, "many"), os.path.join(d, "into")
    os.mkdir(many)
    os.mkdir(into)
    for i in range(5000):  # past the table's first 4,096 nodes: it grows and chains every node again
        os.close(os.open(os.path.join(many, f"f{i}"), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644))
    os.listdir(many)
    os.listdir(into)
    other = grid.mount(1, "data")
    try:
        there = os.path.relpath(d, mnt)
        os.rename(os.path.join(many, "f7"), os.path.join(into, "f7"))
        assert "f7" in os.listdir(into) and "f7" not in os.listdir(many)
        os.stat(os.path.join(into, "f7"))  # its attributes fresh here for a TTL
        os.stat(os.path.join(many, "f8"))
        os.unlink(os.path.join(other, there, "into", "f7"))
        os.unlink(os.path.join(other, there, "many", "f8"))
        wait_for(lambda: os.listdir(into) == [] and "f8" not in os.listdir(many), 10,
                 "names removed on the other node to leave their listings here")
        # The kernel's own entries hold for their TTL whatever a listing says; with them dropped, a
        # lookup is the table's, which the listings just told that both names are gone.
        with open("/proc/sys/vm/drop_caches", "w") as f:
            f.write("2")
        assert not os.path.exists(os.path.join(into, "f7")) and not os.path.exists(os.path.join(many, "f8"))
        assert len(os.listdir(many)) == 4998
    finally:
        grid.umount(other)


def test_stripe_width_3_puts_objects_on_3_osds(grid):
    mp = grid.mount(0, "striped")
    try:
        payload = os.urandom(64 * 1024 * 10)
        with open(os.path.join(mp, "s"), "wb") as f:
            f.write(payload)
        with open(os.path.join(mp, "s"), "rb") as f:
            assert f.read() == payload
        c = grid.client("striped")
        try:
            info = c.replicas("/s")
        finally:
            c.close()
        assert info["xloc"]["stripe_width"] == 3 and len(set(info["xloc"]["replicas"][0]["osds"])) == 3
        holders = [i for i in range(3) if os.listdir(os.path.join(grid.osd_dir(i), "objects", info["fid"][:2],
                                                                   info["fid"]))]
        assert holders == [0, 1, 2]
    finally:
        grid.umount(mp)


def test_small_reads_of_a_striped_sparse_file_return_its_bytes(grid):
    mp = grid.mount(0, "striped")
    try:
        expect = bytearray(3 << 20)
        with open(os.path.join(mp, "sparse"), "wb") as f:
            for off in (0, 65536 - 100, 5 * 65536 + 7, (3 << 20) - 5000):
                data = os.urandom(5000)
                f.seek(off)
                f.write(data)
                expect[off:off + 5000] = data
        fd = os.open(os.path.join(mp, "sparse"), os.O_RDONLY)
        try:
            rng = random.Random(3)
            probes = [(rng.randrange(0, len(expect) + 8192), rng.choice((1, 512, 4096, 65536, 100000)))
                      for _ in range(300)]
            probes += [(65536 - 50, 100), (len(expect) - 10, 4096), (len(expect), 10), (2 * 65536, 4096)]
            for off, size in probes:  # within objects, across them, in holes, past the end
                assert os.pread(fd, size, off) == bytes(expect[off:off + size]), (off, size)
        finally:
            os.close(fd)
    finally:
        grid.umount(mp)


def test_a_reader_sees_what_a_writer_on_the_same_mount_wrote_before_it_closed(d):
    p = os.path.join(d, "rw")
    with open(p, "wb") as f:
        f.write(os.urandom(1 << 20))  # on OSDs, not inline
    reader = os.open(p, os.O_RDONLY)
    writer = os.open(p, os.O_WRONLY)
    try:
        os.pread(reader, 4096, 0)
        # part of a page nobody read here: the kernel keeps no page of it, and the bytes wait in this
        # mount's write buffer, not yet at the OSDs
        os.pwrite(writer, b"new bytes", 300000)
        assert os.pread(reader, 9, 300000) == b"new bytes"
    finally:
        os.close(writer)
        os.close(reader)


def _osd_get(grid, fid, token, cred, query="", objno="0"):
    req = urllib.request.Request(f"{grid.osd_url(0)}/v1/o/{fid}/{objno}{query}",
                                 headers={"Authorization": f"Bearer {cred}", "X-Xos-Cap": token})
    try:
        with grid.urlopen(req, timeout=5) as r:
            return r.status, {}
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())["error"]


def _file_on_an_osd(grid, path, size, mode):
    """A file of `size` random bytes written by alice: its bytes, handle, first OSD's URL and the request
    headers (her credential, a capability of `mode` signed with the grid's key)."""
    c = grid.client("data")
    try:
        payload = os.urandom(size)
        with c.open(path, "wb") as f:
            f.write(payload)
        st = c.open_handle(path)
        url = st.xloc.urls[st.xloc.replicas[0].osds[0]]
    finally:
        c.close()
    with open(grid.key, "rb") as f:
        secret = f.read().strip()
    token = capability.sign(secret, Capability(st.fid, mode, time.time() + 60, st.epoch, 1, "alice@vo-a"), OSDS)
    return payload, st, url, f"Authorization: Bearer {grid.credential('alice')}\r\nX-Xos-Cap: {token}\r\n"


def test_object_reads_and_writes_are_served_natively_and_the_rest_on_the_same_connection_by_python(grid):

    payload, st, url, auth = _file_on_an_osd(grid, "/native", 300_000, "rw")

    def native():
        with grid.urlopen(f"{url}/v1/status", timeout=5) as r:
            got = json.loads(r.read())
            return got["native_reads"], got["native_writes"], got["fsyncs"]

    def get(objno, off, n):
        return f"GET /v1/o/{st.fid}/{objno}?off={off}&len={n} HTTP/1.1\r\n{auth}\r\n".encode()

    def put(objno, off, data):
        head = f"PUT /v1/o/{st.fid}/{objno}?off={off} HTTP/1.1\r\n{auth}Content-Length: {len(data)}\r\n\r\n"
        return head.encode() + data

    fsync = f"POST /v1/o/{st.fid}/fsync HTTP/1.1\r\n{auth}Content-Length: 0\r\n\r\n".encode()
    listing = f"GET /v1/o/{st.fid} HTTP/1.1\r\n{auth}\r\n".encode()
    before = native()
    host, _, port = url.partition("//")[2].rpartition(":")
    with grid.connect(host, int(port)) as s:
        # reads, writes (one within a block, one across a block's end and past the object's), an fsync, the
        # object's listing, a read behind it: all pipelined on one connection, answered in order
        s.sendall(get(0, 0, 4096) + get(0, 100_000, 50_000) + get(9, 0, 10) + put(5, 0, b"new")
                  + put(0, 65_530, b"across") + put(0, 299_998, b"beyond") + get(0, 65_528, 10) + fsync
                  + listing + get(0, 299_990, 20))
        answers = http_answers(s, 10)
    assert [a[0] for a in answers] == [200] * 10
    assert answers[0][2] == payload[:4096] and answers[1][2] == payload[100_000:150_000]
    assert answers[2][1].get("x-xos-hole") == "1" and answers[2][2] == b""  # no such object: a hole
    assert [json.loads(a[2])["written"] for a in answers[3:6]] == [3, 6, 6]
    assert answers[6][2] == payload[65_528:65_530] + b"across" + payload[65_536:65_538]
    assert json.loads(answers[7][2]) == {}
    assert [5, 3] in json.loads(answers[8][2])["objects"] and [0, 300_004] in json.loads(answers[8][2])["objects"]
    assert answers[9][2] == payload[299_990:299_998] + b"beyond"
    # all but the listing and what followed it were answered by the native threads
    reads, writes, fsyncs = native()
    assert (reads - before[0], writes - before[1], fsyncs - before[2]) == (4, 3, 1)
    # and the checksums they wrote are those the OSD's Python checks: the whole object, read by its store
    from xos.fs.osd.store import ObjectStore

    want = bytearray(payload)
    want[65_530:65_536] = b"across"
    want[299_998:] = b"beyond"
    i = next(i for i in range(len(grid.osds)) if grid.osd_url(i) == url)
    assert ObjectStore(grid.osd_dir(i)).read(st.fid, 0, 0, 1 << 20) == bytes(want)


def test_a_write_the_native_threads_give_up_after_its_body_is_done_by_python_whole(grid):
    """A write onto an object a write cut short left with pending checksums is Python's to do (it finds which
    blocks are as they were and which as they were to be): the native threads hand it over with its body
    and the request pipelined behind it, and both are answered in order."""
    payload, st, url, auth = _file_on_an_osd(grid, "/pending", 200_000, "rw")
    i = next(i for i in range(len(grid.osds)) if grid.osd_url(i) == url)
    obj = os.path.join(grid.osd_dir(i), "objects", st.fid[:2], st.fid, "0")
    os.setxattr(obj, "user.xos.crc32.pending", os.getxattr(obj, "user.xos.crc32"))  # cut short, nothing changed

    def writes():
        with grid.urlopen(f"{url}/v1/status", timeout=5) as r:
            return json.loads(r.read())["native_writes"]

    before = writes()
    host, _, port = url.partition("//")[2].rpartition(":")
    data = os.urandom(3000)  # the request behind it comes in the same read as the write: the hand-over has it
    with grid.connect(host, int(port)) as s:
        s.sendall(f"PUT /v1/o/{st.fid}/0?off=1000 HTTP/1.1\r\n{auth}Content-Length: {len(data)}\r\n\r\n".encode()
                  + data + f"GET /v1/o/{st.fid}/0?off=0&len=80000 HTTP/1.1\r\n{auth}\r\n".encode())
        answers = http_answers(s, 2)
    assert [a[0] for a in answers] == [200, 200], answers
    assert json.loads(answers[0][2])["written"] == len(data)
    assert answers[1][2] == payload[:1000] + data + payload[4000:80_000]
    assert writes() == before  # Python wrote it
    with pytest.raises(OSError):
        os.getxattr(obj, "user.xos.crc32.pending")  # and settled the checksums


def test_connections_past_what_the_native_threads_hold_are_answered_by_python(grid):
    import resource

    payload, st, url, auth = _file_on_an_osd(grid, "/many", 100_000, "r")
    host, _, port = url.partition("//")[2].rpartition(":")
    osd = next(h for h in grid.osds if h.address == host).procs[0]
    with open(f"/proc/{osd.pid}/limits") as f:
        soft, hard = next(line.split()[3:5] for line in f if line.startswith("Max open files"))
    assert soft == hard, "an OSD opens files up to its hard limit"

    def native():
        with grid.urlopen(f"{url}/v1/status", timeout=5) as r:
            return json.loads(r.read())["native_reads"]

    def read(n=4096):
        with grid.connect(host, int(port)) as s:
            s.sendall(f"GET /v1/o/{st.fid}/0?off=0&len={n} HTTP/1.1\r\n{auth}\r\n".encode())
            return http_answers(s, 1)[0]

    before = native()
    limits = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(limits[0], min(limits[1], 4096)), limits[1]))
    held = []
    try:
        for _ in range(1024):  # each one a native thread waiting for a request: the most it holds
            held.append(grid.connect(host, int(port)))
        status, _, body = read()
        assert status == 200 and body == payload[:4096]
        assert native() == before, "the read past the native limit was Python's"
    finally:
        for s in held:
            s.close()
        resource.setrlimit(resource.RLIMIT_NOFILE, limits)
    # the threads see their connections closed and let go of them: reads are native again
    wait_for(lambda: read()[2] == payload[:4096] and native() > before, 30, "a native read after the close")


def test_odd_object_requests_go_from_the_native_threads_to_python_and_get_a_clear_answer(grid):

    payload, st, url, auth = _file_on_an_osd(grid, "/odd", 200_000, "r")
    target = f"/v1/o/{st.fid}/0"
    cases = [  # (request, statuses it may get, body expected on a 200)
        (f"GET {target}?off=10&len=20 HTTP/1.1\r\n{auth}X-Pad: {'p' * 20000}\r\n\r\n", {200}, payload[10:30]),
        (f"GET {target}?off=10&len=20 HTTP/1.0\r\n{auth}\r\n", {200}, payload[10:30]),
        (f"GET {target}?off=1&off=2&len=3 HTTP/1.1\r\n{auth}\r\n", {200, 400}, None),
        (f"GET {target}?len=5&off=7 HTTP/1.1\r\n{auth}\r\n", {200}, payload[7:12]),
        (f"GET {target}?off=1&what=2 HTTP/1.1\r\n{auth}\r\n", {200}, payload[1:]),
        (f"GET {target}?off=010&len=2 HTTP/1.1\r\n{auth}\r\n", {200}, payload[10:12]),
        (f"GET {target}?off=99999999&len=2 HTTP/1.1\r\n{auth}\r\n", {400}, None),
        (f"GET /v1/o/ZZ{st.fid[2:]}/0 HTTP/1.1\r\n{auth}\r\n", {400}, None),
        (f"GET {target} HTTP/1.1\r\n{auth}Broken header\r\n\r\n", {400}, None),
        (f"GET {target} HTTP/1.1\r\n{auth}Spaced name : x\r\n\r\n", {400}, None),
        (f"GET {target} HTTP/1.1\r\n{auth}: nameless\r\n\r\n", {400}, None),
        (f"GET {target} HTTP/1.1\r\n{auth}Content-Length: 3\r\n\r\nabc", {200}, payload),
        (f"GET {target} HTTP/1.1\r\n\r\n", {401}, None),
        (f"GET {target} HTTP/1.1\r\nAuthorization: Bearer x\r\n{auth}\r\n", {200, 401}, None),
        ("\x00\xff\x10garbage\r\n\r\n", {400}, None),
    ]
    host, _, port = url.partition("//")[2].rpartition(":")
    for request, statuses, body in cases:
        with grid.connect(host, int(port)) as s:
            s.sendall(request.encode("latin-1"))
            [(status, _, got)] = http_answers(s, 1)
        assert status in statuses, (request[:80], status, got[:200])
        if status == 200 and body is not None:
            assert got == body, request[:80]
        elif status != 200:
            assert json.loads(got)["error"]["code"], got
    before = _native_reads(grid)
    with grid.connect(host, int(port)) as s:  # and the native threads still answer
        s.sendall(f"GET {target}?off=0&len=4096 HTTP/1.1\r\n{auth}\r\n".encode())
        [(status, _, got)] = http_answers(s, 1)
    assert status == 200 and got == payload[:4096] and _native_reads(grid) == before + 1


def test_odd_writes_get_a_clear_answer_and_change_only_what_they_say(grid):
    """Writes of shapes the native threads do not take go to Python and get its answer; a write refused, or
    whose body never came whole, changes no byte; and the native threads still write after them."""
    from xos.fs.osd.store import ObjectStore

    payload, st, url, auth = _file_on_an_osd(grid, "/odd-writes", 200_000, "rw")
    t = f"/v1/o/{st.fid}/0"
    cases = [  # (offset written, request, statuses it may get): each at its own offset, 3 bytes "abc"
        (1000, f"PUT {t}?off=1000&len=3 HTTP/1.1\r\n{auth}Content-Length: 3\r\n\r\nabc", {200, 400}),
        (2000, f"PUT {t}?off=2000 HTTP/1.1\r\n{auth}Content-Length: 3\r\nContent-Length: 3\r\n\r\nabc", {200, 400}),
        (3000, f"PUT {t}?off=3000 HTTP/1.1\r\n{auth}X-Xos-Sync: yes\r\nContent-Length: 3\r\n\r\nabc", {400}),
        (4000, f"PUT {t}?off=4000 HTTP/1.1\r\n{auth}X-Xos-Forward: https://198.51.100.1:1\r\n"
               f"Content-Length: 3\r\n\r\nabc", {403}),
        (5000, f"PUT {t}?off=5000 HTTP/1.1\r\n{auth}Transfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
         {400, 411}),
        (6000, f"PUT {t}?off=6000 HTTP/1.1\r\nX-Xos-Cap: x\r\nContent-Length: 3\r\n\r\nabc", {401, 403}),
        (None, f"PUT {t}?off=16777215 HTTP/1.1\r\n{auth}Content-Length: 3\r\n\r\nabc", {400}),
        (None, f"PUT {t}?off=7000 HTTP/1.1\r\n{auth}Content-Length: 0\r\n\r\n", {200}),
        (None, f"PUT /v1/o/{st.fid}/fsync HTTP/1.1\r\n{auth}Content-Length: 3\r\n\r\nabc", {404, 405}),
        (None, f"POST {t[:-2]}/fsync?now=1 HTTP/1.1\r\n{auth}Content-Length: 2\r\n\r\n{{}}", {200}),
    ]
    host, _, port = url.partition("//")[2].rpartition(":")
    want = bytearray(payload)
    for at, request, statuses in cases:
        with grid.connect(host, int(port)) as s:
            s.sendall(request.encode("latin-1"))
            [(status, _, got)] = http_answers(s, 1)
        assert status in statuses, (request[:90], status, got[:200])
        if status != 200:
            assert json.loads(got)["error"]["code"], got
        elif at is not None:
            want[at:at + 3] = b"abc"
    def held():
        with grid.urlopen(f"{url}/v1/status", timeout=5) as r:
            return json.loads(r.read())["native_body_bytes"]

    with grid.connect(host, int(port)) as s:  # a body that never comes whole: nothing written
        s.sendall(f"PUT {t}?off=8000 HTTP/1.1\r\n{auth}Content-Length: 10\r\n\r\nabcde".encode())
        wait_for(lambda: held() == 10, 10, "the native threads to wait for the rest of the body")
    wait_for(lambda: held() == 0, 10, "the native threads to let the closed connection go")
    with grid.connect(host, int(port)) as s:  # and the native threads still write
        s.sendall(f"PUT {t}?off=9000 HTTP/1.1\r\n{auth}Content-Length: 3\r\n\r\nxyz".encode())
        [(status, _, got)] = http_answers(s, 1)
    assert status == 200
    want[9000:9003] = b"xyz"
    i = next(i for i in range(len(grid.osds)) if grid.osd_url(i) == url)
    assert ObjectStore(grid.osd_dir(i)).read(st.fid, 0, 0, 1 << 20) == bytes(want)


@pytest.mark.parametrize("listen", ["192.0.2.1:32640", "127.0.0.1:99999", "127.0.0.1:port"])
def test_an_osd_that_cannot_listen_says_so_in_one_line(grid, tmp_path, listen):
    p = subprocess.run([sys.executable, "-m", "xos", "serve", "osd", "--dir", str(tmp_path),
                        "--host-dir", os.path.join(grid.base, "osd0", "host"),
                        "--listen", listen, "--mrc", grid.mrc_url, "--trust", grid.trust],
                       capture_output=True, text=True, timeout=60)
    errors = [line for line in p.stderr.splitlines() if not line.startswith("{")]  # the rest are JSON log records
    assert p.returncode != 0 and len(errors) == 1, p.stderr
    assert errors[0].startswith("xos: error invalid-input: cannot listen on"), p.stderr


def test_forged_expired_foreign_and_other_file_capabilities_are_refused(grid):
    alice, bob = grid.credential("alice"), grid.credential("bob")
    with open(grid.key, "rb") as f:
        secret = f.read().strip()
    fid = "ab" * 16
    good = Capability(fid, "rw", time.time() + 60, 0, 1, "alice@vo-a")
    status, err = _osd_get(grid, fid, capability.sign(secret, good, OSDS), alice)
    assert status == 404 and err["code"] == "no-such-file"  # let in: the OSD just holds nothing of it
    forged = capability.sign(b"not the key at all", good, OSDS)
    expired = capability.sign(secret, Capability(fid, "rw", time.time() - 1, 0, 1, "alice@vo-a"), OSDS)
    other_file = capability.sign(secret, Capability("cd" * 16, "rw", time.time() + 60, 0, 1, "alice@vo-a"), OSDS)
    for token, cred, words in ((forged, alice, "signature"), (expired, alice, "expired"),
                               (capability.sign(secret, good, OSDS), bob, "issued to alice@vo-a"),
                               (other_file, alice, "is for file")):
        status, err = _osd_get(grid, fid, token, cred)
        assert status == 403 and err["code"] == "capability-invalid" and words in err["message"], err
    status, err = _osd_get(grid, fid, capability.sign(secret, good, OSDS), "garbage")
    assert status == 401 and err["code"] == "credential-malformed"


@pytest.mark.parametrize("query", ["?off=-5&len=4096", "?off=abc", "?off=0&len=-1", "?len=%C2%B2",
                                   "?off=99999999999&len=10", "?off=0&len=99999999999", "?off=" + "9" * 5000])
def test_a_bad_byte_range_is_a_clear_error(grid, query):
    with open(grid.key, "rb") as f:
        secret = f.read().strip()
    fid = "ab" * 16
    token = capability.sign(secret, Capability(fid, "r", time.time() + 60, 0, 1, "alice@vo-a"), OSDS)
    status, err = _osd_get(grid, fid, token, grid.credential("alice"), query)
    assert status == 400 and err["code"] == "bad-request" and "a whole number of bytes" in err["message"], err


def test_an_absurd_object_number_is_a_clear_error(grid):
    with open(grid.key, "rb") as f:
        secret = f.read().strip()
    fid = "ab" * 16
    token = capability.sign(secret, Capability(fid, "r", time.time() + 60, 0, 1, "alice@vo-a"), OSDS)
    status, err = _osd_get(grid, fid, token, grid.credential("alice"), objno="9" * 5000)
    assert status == 400 and err["code"] == "bad-request" and "object number" in err["message"], err


def test_other_vo_refused_unless_the_acl_lets_them_in(grid):
    carol = grid.client("data", "carol", "vo-b")
    try:
        with pytest.raises(Exception) as e:
            carol.listdir("/")
        assert getattr(e.value, "code", "") == "access-denied"
    finally:
        carol.close()
    alice = grid.client("shared")
    try:
        with alice.open("/readme", "wb") as f:
            f.write(b"for everyone")
    finally:
        alice.close()
    carol = grid.client("shared", "carol", "vo-b")
    try:
        with carol.open("/readme") as f:
            assert f.read() == b"for everyone"
        with pytest.raises(Exception) as e:
            carol.open("/mine", "wb")
        assert getattr(e.value, "code", "") == "access-denied"
    finally:
        carol.close()


@pytest.mark.parametrize("path", ["/../etc", "/a/../../x", "/a\0b", "relative", "/" + "n" * 300])
def test_paths_never_escape_a_volume(grid, path):
    c = grid.client("data")
    try:
        with pytest.raises(Exception) as e:
            c.mkdir(path)
        assert getattr(e.value, "code", "") in ("bad-path", "name-too-long")
    finally:
        c.close()


def test_garbage_on_the_mrc_and_osd_sockets_gets_a_clear_error(grid):
    for url in (f"{grid.mrc_url}/v1/volumes/data/fs/getattr", f"{grid.osd_url(1)}/v1/o/zz/0"):
        req = urllib.request.Request(url, data=b"\x00\xffnot json", method="POST",
                                     headers={"Authorization": f"Bearer {grid.credential('alice')}"})
        with pytest.raises(urllib.error.HTTPError) as e:
            grid.urlopen(req, timeout=5)
        assert e.value.code in (400, 405)
        assert "error" in json.loads(e.value.read())
    # JSON, but a number Python's int() refuses (over 4,300 digits): answered 500 before
    req = urllib.request.Request(f"{grid.mrc_url}/v1/volumes/data/fs/getattr", method="POST",
                                 data=b'{"path": "/", "n": ' + b"9" * 5000 + b"}",
                                 headers={"Authorization": f"Bearer {grid.credential('alice')}"})
    with pytest.raises(urllib.error.HTTPError) as e:
        grid.urlopen(req, timeout=5)
    assert e.value.code == 400 and json.loads(e.value.read())["error"]["code"] == "bad-request"
    c = grid.client("data")
    try:
        assert c.stat("/")["mode"] & 0o040000
    finally:
        c.close()


def test_a_file_removed_leaves_no_objects_behind(grid, d):
    p = os.path.join(d, "gone")
    with open(p, "wb") as f:
        f.write(os.urandom(2 << 20))
    c = grid.client("data")
    try:
        fid = c.replicas("/" + os.path.relpath(p, os.path.dirname(d)))["fid"]
    finally:
        c.close()
    where = [os.path.join(grid.osd_dir(i), "objects", fid[:2], fid) for i in range(3)]
    assert any(os.path.exists(w) for w in where)
    os.unlink(p)
    from xos.testing import wait_for
    wait_for(lambda: not any(os.path.exists(w) for w in where), 20, "the objects of a removed file to go")


def test_a_file_removed_on_another_node_while_open_reads_as_stale_not_zeros(grid, mnt, d):
    p = os.path.join(d, "doomed")
    with open(p, "wb") as f:
        f.write(os.urandom(2 << 20))
    c = grid.client("data")
    try:
        fid = c.replicas("/" + os.path.relpath(p, mnt))["fid"]
    finally:
        c.close()
    other = grid.mount(1, "data", user="bob")
    try:
        with open(os.path.join(other, os.path.relpath(p, mnt)), "rb") as f:
            os.unlink(p)
            where = [os.path.join(grid.osd_dir(i), "objects", fid[:2], fid) for i in range(3)]
            wait_for(lambda: not any(os.path.exists(w) for w in where), 20, "the objects of a removed file to go")
            with pytest.raises(OSError) as e:
                f.read()
            assert e.value.errno == errno.ESTALE
    finally:
        grid.umount(other)


def test_sha_of_a_file_written_through_the_python_api_matches_the_mount(grid, mnt):
    c = grid.client("data")
    payload = os.urandom((5 << 20) + 17)
    try:
        with c.open("/api-file", "wb") as f:
            f.write(payload)
    finally:
        c.close()
    with open(os.path.join(mnt, "api-file"), "rb") as f:
        assert hashlib.sha256(f.read()).digest() == hashlib.sha256(payload).digest()
    shutil.copy(os.path.join(mnt, "api-file"), os.path.join(mnt, "copy"))
    assert os.stat(os.path.join(mnt, "copy")).st_size == len(payload)


def test_chown_gives_a_file_away_only_by_a_vo_admin_and_within_the_vo(grid, mnt):
    with open(os.path.join(mnt, "given"), "wb") as f:
        f.write(b"x")
    alice = grid.client("data")
    admin = grid.client("data", "root", roles=("member", "admin"))
    try:
        with pytest.raises(Exception) as e:
            alice.setattr("/given", owner="bob@vo-a")
        assert getattr(e.value, "code", "") == "not-permitted"
        with pytest.raises(Exception) as e:
            admin.setattr("/given", owner="carol@vo-b")
        assert getattr(e.value, "code", "") == "not-permitted"
        admin.setattr("/given", owner="bob@vo-a")
        assert alice.stat("/given")["owner"] == "bob@vo-a"
    finally:
        alice.close()
        admin.close()
    # bob has no account on this client host: the mount shows the file as nobody's
    from xos.testing import wait_for
    wait_for(lambda: os.stat(os.path.join(mnt, "given")).st_uid == 65534, 5, "the new owner to show")


def test_other_local_users_cannot_reach_a_mount_lent_no_one(mnt):
    as_nobody = ["setpriv", "--reuid", "65534", "--regid", "65534", "--clear-groups", "ls", mnt]
    p = subprocess.run(as_nobody, capture_output=True, text=True)
    assert p.returncode != 0 and "Permission denied" in p.stderr, p


def _osd_post(grid, url, path, token, cred, body, data=None):
    req = urllib.request.Request(f"{url}{path}", data=data if data is not None else json.dumps(body).encode(),
                                 method="PUT" if data is not None else "POST",
                                 headers={"Authorization": f"Bearer {cred}", "X-Xos-Cap": token})
    try:
        with grid.urlopen(req, timeout=10) as r:
            return r.status, ""
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())["error"]["code"]


def test_truncate_epochs_come_from_the_capability_and_survive_an_osd_restart(grid):
    """Fencing: a client's truncate fences others with the epoch the MRC signed into its capability, not
    one it names (a huge one refused every other writer for good); and an OSD killed and started again
    still refuses a capability older than a truncate it took (the epochs lived in its memory only)."""
    import signal

    c = grid.client("data")
    try:
        with c.open("/fenced", "wb") as f:
            f.write(os.urandom(300_000))
        st = c.open_handle("/fenced")
        primary = st.xloc.replicas[0].osds[0]
        url = st.xloc.urls[primary]
    finally:
        c.close()
    with open(grid.key, "rb") as f:
        secret = f.read().strip()
    cred = grid.credential("alice")
    old = capability.sign(secret, Capability(st.fid, "rw", time.time() + 60, st.epoch, st.xloc.version,
                                             "alice@vo-a"), OSDS)
    body = {"size": 300_000, "stripe_size": st.xloc.striping.size, "epoch": 10 ** 15}
    assert _osd_post(grid, url, f"/v1/o/{st.fid}/truncate", old, cred, body) == (200, "")
    assert _osd_post(grid, url, f"/v1/o/{st.fid}/0?off=0", old, cred, None, b"still mine") == (200, "")

    mp = grid.mount(0, "data")
    os.truncate(os.path.join(mp, "fenced"), 1000)  # through the MRC: a new epoch, told to every OSD
    assert _osd_post(grid, url, f"/v1/o/{st.fid}/0?off=0", old, cred, None, b"stale") == (409, "capability-stale")
    host = next(h for h in grid.osds if h.name == primary)
    host.procs[0].stop(signal.SIGKILL)
    host.procs.pop(0)
    proc = grid.start_osd(grid.osds.index(host))
    wait_for(lambda: grid._answers(proc, url), 20, "the OSD to answer again")
    assert _osd_post(grid, url, f"/v1/o/{st.fid}/0?off=0", old, cred, None, b"stale") == (409, "capability-stale")
    with open(os.path.join(mp, "fenced"), "rb") as f:
        assert len(f.read()) == 1000


def test_a_file_rewritten_elsewhere_reads_whole_here_at_once(grid, mnt, d):
    """Close-to-open within the attribute TTL: a file read here, then rewritten longer on another mount and
    closed there, opens here with all of its new bytes (the kernel had kept its old end)."""
    other = grid.mount(1, "data")
    try:
        there = os.path.join(other, os.path.relpath(d, mnt), "f")
        for i in range(1, 6):
            with open(there, "wb") as f:
                f.write(b"x" * (100 * i))
            with open(os.path.join(d, "f"), "rb") as f:
                assert f.read() == b"x" * (100 * i)
    finally:
        grid.umount(other)


def test_a_file_read_while_open_for_writing_keeps_its_size_after_the_reader_closes(grid, mnt, d):
    """A handle opened to read and closed while another writes: the writer still counts, so the size written
    and not yet at the MRC is what a stat shows, also once the directory was listed again from the MRC (whose
    listing has the size of the reader's close)."""
    from xos.fs.client.mount import ATTR_TTL

    p = os.path.join(d, "f")
    other = grid.mount(1, "data")
    try:
        with open(p, "wb") as w:
            w.write(b"a" * 10)
            w.flush()
            with open(p, "rb") as r:
                r.read()
            w.write(b"b" * 5000)
            w.flush()
            time.sleep(ATTR_TTL + 0.2)  # the kernel asks again
            os.listdir(os.path.join(other, os.path.relpath(d, mnt)))  # the lease on the directory goes back
            os.listdir(d)  # listed by the MRC
            assert os.stat(p).st_size == 5010
    finally:
        grid.umount(other)


def test_two_names_of_one_file_open_here(grid, mnt, d):
    """Hard links as a local disk keeps them, each name being its own node here: what is written or truncated
    through one shows at once through the other, a rename of one onto the other does nothing (both stay), and
    both removed while the file is open leave no name behind and a link count that counts what is left."""
    a, b, c = (os.path.join(d, n) for n in ("a", "b", "c"))
    fd = os.open(a, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        os.write(fd, b"x" * 100)
        os.link(a, b)
        assert os.stat(b).st_size == 100
        os.write(fd, b"y" * 1000)
        assert os.stat(b).st_size == 1100
        os.truncate(b, 50)
        assert os.stat(a).st_size == 50 and os.fstat(fd).st_size == 50
        os.close(os.open(b, os.O_WRONLY | os.O_TRUNC))
        assert os.stat(a).st_size == 0
        os.rename(a, b)  # two names of one file: nothing happens
        assert os.stat(a).st_ino == os.stat(b).st_ino and os.stat(a).st_nlink == 2
        os.link(b, c)
        os.unlink(a)  # open here: kept aside
        assert os.stat(b).st_nlink == 2 and os.stat(c).st_nlink == 2
        os.unlink(b)  # the same file's second name kept aside
        assert not os.path.exists(b) and not os.path.exists(a)
        assert os.stat(c).st_nlink == 1
        os.unlink(c)
        os.pwrite(fd, b"still open", 0)
        assert os.pread(fd, 10, 0) == b"still open"
    finally:
        os.close(fd)
    assert os.listdir(d) == []
    api = grid.client("data")
    try:
        assert api.listdir("/" + os.path.relpath(d, mnt)) == []  # as the MRC has it
    finally:
        api.close()
