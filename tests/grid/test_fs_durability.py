"""An acknowledged fsync survives kill -9 of the mount, the MRC or an OSD right after it: every byte, read
back through another client host's mount, with the file still open on the first when the kill came; and
a PostgreSQL server's every acknowledged transaction survives the kill of its mount."""

from __future__ import annotations

import errno
import os
import pwd
import re
import signal

import pytest

from xos.fs.layout import INLINE_MAX
from xos.testing.fsgrid import FsGrid, fs_grid
from xos.testing.postgres import TestPostgres

# an OSD killed and restarted answers "not heard from its MRC yet" until its first heartbeat's answer
PROVOKED = ["unreachable", "refused", "replica", "not reachable", "dropped", "disconnect", "mount",
            "has not heard from its MRC"]


@pytest.fixture
def grid():
    # "one": one replica, whose writes and fsyncs the OSDs' native threads answer; "dur": two, which Python's
    # forwarding writes
    with fs_grid({"dur": {"replicas": 2}, "one": {"replicas": 1}}, PROVOKED, osds=2, clients=2, grace=2.0) as g:
        yield g


def _write_and_fsync(mp: str) -> tuple[dict[str, bytes], list[int]]:
    """Three files written and fsynced, their descriptors left open: one on the OSDs across several objects,
    one the MRC holds inline, one extended in place after its first fsync."""
    files = {"big": os.urandom((5 << 20) + 12345), "small": os.urandom(INLINE_MAX // 2), "grown": b""}
    fds = []
    for name, data in files.items():
        fd = os.open(os.path.join(mp, name), os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644)
        os.write(fd, data)
        os.fsync(fd)
        fds.append(fd)
    grown = fds[-1]
    for i in range(3):  # written, fsynced, rewritten in part, fsynced again
        os.pwrite(grown, os.urandom(300000), i * 250000)
        os.fsync(grown)
    os.pwrite(grown, b"last words", 100)
    os.fdatasync(grown)
    files["grown"] = os.pread(grown, 1 << 20, 0)
    return files, fds


def _check(grid: FsGrid, files: dict[str, bytes], volume: str = "dur") -> None:
    other = grid.mount(1, volume)
    for name, data in files.items():
        with open(os.path.join(other, name), "rb") as f:
            got = f.read()
        assert len(got) == len(data), (name, len(got), len(data))
        assert got == data, name


def _close(fds: list[int]) -> None:
    for fd in fds:
        try:
            os.close(fd)
        except OSError:  # its mount is gone
            pass


@pytest.mark.parametrize("volume", ["dur", "one"])
def test_fsync_survives_kill_9_of_the_mount(grid, volume):
    mp = grid.mount(0, volume)
    files, fds = _write_and_fsync(mp)
    grid.mount_proc(mp).stop(signal.SIGKILL)
    _check(grid, files, volume)
    _close(fds)
    grid.umount(mp)


def test_fsync_of_files_written_under_a_lease_survives_kill_9_of_the_mount(grid):
    """Files made and written under a directory lease live in the mount until they go to the MRC in a batch:
    an fsync sends them first."""
    mp = grid.mount(0, "dur")
    d = os.path.join(mp, "leased")
    os.mkdir(d)
    for i in range(20):  # until the mount holds the directory's lease
        os.close(os.open(os.path.join(d, f"warm{i}"), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644))
    files, fds = {}, []
    for i in range(5):
        data = os.urandom(1000 + i)
        fd = os.open(os.path.join(d, f"f{i}"), os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
        os.write(fd, data)
        os.utime(fd, ns=(10**18, 10**18 + i * 1000))
        os.fsync(fd)
        files[f"leased/f{i}"] = data
        fds.append(fd)
    grid.mount_proc(mp).stop(signal.SIGKILL)
    _check(grid, files)
    other = grid.mounts[-1][0]
    assert os.stat(os.path.join(other, "leased", "f3")).st_mtime_ns == 10**18 + 3000
    _close(fds)
    grid.umount(mp)


@pytest.mark.parametrize("volume", ["dur", "one"])
def test_fsync_survives_kill_9_of_the_mrc_and_the_mount(grid, volume):
    mp = grid.mount(0, volume)
    files, fds = _write_and_fsync(mp)
    grid.mount_proc(mp).stop(signal.SIGKILL)  # nothing it still holds can make up for the MRC's loss
    grid.mrc.procs[0].stop(signal.SIGKILL)
    grid.mrc.procs.pop(0)
    grid.start_mrc()
    _check(grid, files, volume)
    _close(fds)
    grid.umount(mp)


def test_fsync_survives_kill_9_of_an_osd_and_reaches_every_replica(grid):
    """kill -9 of one OSD after the fsync, restarted; then the other OSD gone for good: what the fsync
    acknowledged is read from the first alone."""
    mp = grid.mount(0, "dur")
    files, fds = _write_and_fsync(mp)
    grid.osds[0].procs[0].stop(signal.SIGKILL)
    grid.osds[0].procs.pop(0)
    grid.start_osd(0)
    grid.osds[1].procs[0].stop(signal.SIGKILL)
    _check(grid, files)
    _close(fds)


def test_fsync_of_one_replica_survives_kill_9_of_the_mount_and_every_osd(grid):
    """The native threads' synced writes: the mount and both OSDs killed right after the fsyncs, the OSDs
    started again, every acknowledged byte read back."""
    mp = grid.mount(0, "one")
    files, fds = _write_and_fsync(mp)
    grid.mount_proc(mp).stop(signal.SIGKILL)
    for i in range(2):
        grid.osds[i].procs[0].stop(signal.SIGKILL)
        grid.osds[i].procs.pop(0)
    for i in range(2):
        grid.start_osd(i)
    _check(grid, files, "one")
    _close(fds)
    grid.umount(mp)


APPENDER = """
import ctypes, os, signal, sys
signal.signal(signal.SIGALRM, lambda *a: None)
signal.siginterrupt(signal.SIGALRM, True)
libc = ctypes.CDLL(None, use_errno=True)
fd = os.open(sys.argv[1], os.O_WRONLY | os.O_APPEND)
for i, part in enumerate(sys.argv[2:]):
    os.write(fd, bytes.fromhex(part))
    if i:
        signal.setitimer(signal.ITIMER_REAL, 1.0)
    print(libc.fdatasync(fd), ctypes.get_errno(), flush=True)
    sys.stdin.readline()
print(libc.fdatasync(fd), ctypes.get_errno(), flush=True)  # again, after the interrupted one
os.close(fd)
"""


def test_an_interrupted_fsync_of_an_append_loses_nothing_when_tried_again(grid):
    """An append's fsync interrupted while its OSD does not answer returns EINTR; the OSD is then killed,
    and what was on its way to it with it, and started again. The fsync tried again holds: every byte is
    there (the mount had given the append up with the interrupted call, and the retry synced nothing)."""
    import subprocess
    import sys

    mp = grid.mount(0, "one")
    path = os.path.join(mp, "log")
    data = os.urandom(INLINE_MAX + 100)
    with open(path, "wb") as f:  # on the OSDs, not inline
        f.write(data)
    first, second = os.urandom(4120), os.urandom(4120)
    p = subprocess.Popen([sys.executable, "-c", APPENDER, path, first.hex(), second.hex()], stdin=subprocess.PIPE,
                         stdout=subprocess.PIPE, text=True)
    try:
        assert p.stdout is not None and p.stdin is not None
        assert p.stdout.readline().split()[0] == "0"  # the first append synced: the next goes the short way
        for osd in grid.osds:
            osd.procs[0].send(signal.SIGSTOP)
        p.stdin.write("go\n")
        p.stdin.flush()
        assert p.stdout.readline().split() == ["-1", str(errno.EINTR)]
        for i, osd in enumerate(grid.osds):  # what the frozen OSDs had not read yet goes with them
            osd.procs[0].stop(signal.SIGKILL)
            osd.procs.pop(0)
            grid.start_osd(i)
        c = grid.client("one")
        try:  # a read waits until the OSDs take capabilities again (their first heartbeat's answer)
            with c.open("/log") as f:
                assert f.read(100) == data[:100]
        finally:
            c.close()
        p.stdin.write("go\n")
        p.stdin.flush()
        assert p.stdout.readline().split()[0] == "0"
        assert p.wait(30) == 0
    finally:
        for osd in grid.osds:
            if osd.procs:
                osd.procs[0].send(signal.SIGCONT)
        if p.poll() is None:
            p.kill()
    _check(grid, {"log": data + first + second}, "one")
    grid.umount(mp)


def _fsyncs(grid: FsGrid, what: str = "fsyncs") -> int:
    import json

    total = 0
    for i in range(len(grid.osds)):
        with grid.urlopen(f"{grid.osd_url(i)}/v1/status", timeout=5) as r:
            total += json.load(r)[what]
    return total


def test_fsync_sends_what_it_holds_as_writes_synced_at_every_replica(grid):
    """Once a file's replicas synced what the mount wrote, an fsync sends what it still holds as writes each
    replica puts on disk before it answers, beside the MRC's commit; only the OSDs that took writes unsynced
    since (sent early: the mount holds one run of bytes per object) are asked to sync as well, and an fsync
    with nothing written asks the OSDs nothing. Every acknowledged byte is there after kill -9."""
    mp = grid.mount(0, "dur")
    fd = os.open(os.path.join(mp, "wal"), os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644)
    data = bytearray(os.urandom(INLINE_MAX + 5000))
    os.write(fd, data)
    os.fsync(fd)

    def counts() -> tuple[int, int]:
        return _fsyncs(grid), _fsyncs(grid, "synced_writes")

    fsyncs, synced = counts()
    for i in range(3):  # appended, as a write-ahead log is
        more = os.urandom(3000 + i)
        os.pwrite(fd, more, len(data))
        data += more
        os.fdatasync(fd)
        assert counts() == (fsyncs, synced + 2 * (i + 1))  # one write, at both replicas; no sync beside
    more = os.urandom(5000)
    os.pwrite(fd, more, len(data))  # sent unsynced when the next write to its object does not follow it
    data += more
    os.pwrite(fd, b"header", 0)
    data[:6] = b"header"
    os.fsync(fd)
    assert counts() == (fsyncs + 2, synced + 8)
    os.fsync(fd)
    assert counts() == (fsyncs + 2, synced + 8)
    grid.mount_proc(mp).stop(signal.SIGKILL)
    _check(grid, {"wal": bytes(data)})
    _close([fd])
    grid.umount(mp)


def test_a_sync_close_mount_puts_a_file_on_disk_at_close(grid):
    """`--sync-close`: close() is an fsync at every replica (the OSDs count them), and survives the kill of
    the mount and the MRC; a plain mount's close asks for none."""
    plain, synced = grid.mount(0, "dur"), grid.mount(0, "dur", options=("--sync-close",))
    before = _fsyncs(grid)
    with open(os.path.join(plain, "plain"), "wb") as f:
        f.write(os.urandom(2 << 20))
    assert _fsyncs(grid) == before
    data = os.urandom((2 << 20) + 7)
    with open(os.path.join(synced, "synced"), "wb") as f:
        f.write(data)
    assert _fsyncs(grid) == before + 2  # both replicas
    grid.mount_proc(synced).stop(signal.SIGKILL)
    grid.mrc.procs[0].stop(signal.SIGKILL)
    grid.mrc.procs.pop(0)
    grid.start_mrc()
    _check(grid, {"synced": data})
    grid.umount(synced)


def test_postgresql_on_the_mount_recovers_every_commit_after_its_mount_is_killed(grid):
    """pgbench's transactions, each acknowledged only once PostgreSQL's fsync of its WAL returned, are all
    there after the mount and then the server are killed (what the mount had not yet sent is lost, as a
    power cut would lose it): the server started on another client host's mount recovers to a consistent
    bank, every page's checksum right."""
    pg = pwd.getpwnam("postgres")
    owner = ("--uid", str(pg.pw_uid), "--gid", str(pg.pw_gid), "--allow-other")  # the cluster's files are its
    first = grid.mount(0, "dur", options=owner)
    base = os.path.join(first, "cluster")
    os.mkdir(base, 0o700)
    with TestPostgres(base, checksums=True) as server:
        server.tool("pgbench", "-i", "-q", "-s", "1", "postgres")
        out = server.tool("pgbench", "-t", "150", "-c", "2", "--no-vacuum", "postgres")
        assert re.search(r"number of transactions actually processed: 300/300", out), out
        # the mount first, with the server's files open: what they wrote since their last fsync and is still
        # in the mount goes with it (a server stopped first closes its files, and a close sends it all)
        grid.mount_proc(first).stop(signal.SIGKILL)
        server.crash()  # no shutdown checkpoint: the next start replays the WAL
        second = grid.mount(1, "dur", options=owner)
        server.start(os.path.join(second, "cluster"))
        sums = server.tool("psql", "-Atc", "SELECT (SELECT count(*) FROM pgbench_history), "
                           "(SELECT sum(abalance) FROM pgbench_accounts), (SELECT sum(bbalance) FROM "
                           "pgbench_branches), (SELECT sum(tbalance) FROM pgbench_tellers), "
                           "(SELECT sum(delta) FROM pgbench_history)", "postgres").strip().split("|")
        assert sums[0] == "300", sums
        assert len(set(sums[1:])) == 1, f"balances and history disagree after recovery: {sums}"
        server.stop()
        assert "Bad checksums:  0" in server.tool("pg_checksums", "-c")
    grid.umount(first)
