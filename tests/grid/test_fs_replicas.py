"""Replicas of the grid file system: failover, rebuilding, corruption, and an MRC killed and restarted."""

from __future__ import annotations

import errno
import hashlib
import os
import signal
import threading
import time
from typing import Any

import pytest

from xos.fs.layout import INLINE_MAX
from xos.testing import wait_for
from xos.testing.fsgrid import FsGrid, fs_grid

# What the tests below provoke on purpose: OSDs killed, objects corrupted.
PROVOKED = ["unreachable", "refused", "replica", "not reachable", "does not match its checksum", "object-corrupt",
            "dropped"]


@pytest.fixture
def grid():
    with fs_grid({"rep": {"replicas": 2}}, PROVOKED, osds=3, clients=1, grace=2.0) as g:
        yield g


def _replicas(grid, path, volume="rep"):
    c = grid.client(volume)
    try:
        return c.replicas(path)
    finally:
        c.close()


def _write_pattern(path, mib):
    h = hashlib.sha256()
    with open(path, "wb") as f:
        for i in range(mib):
            block = hashlib.sha512(str(i).encode()).digest() * (1 << 14)
            h.update(block)
            f.write(block)
    return h.hexdigest()


def test_small_random_reads_fail_over_when_the_osd_they_use_is_killed(grid):
    mp = grid.mount(0, "rep")
    payload = os.urandom(4 << 20)
    with open(os.path.join(mp, "small"), "wb") as f:
        f.write(payload)
    first = _replicas(grid, "/small")["xloc"]["replicas"][0]["osds"][0]
    victim = next(i for i, h in enumerate(grid.osds) if h.name == first)
    offsets = [(i * 7919 * 4096) % len(payload) for i in range(200)]
    fd = os.open(os.path.join(mp, "small"), os.O_RDONLY)
    try:
        for n, off in enumerate(offsets):
            if n == 50:  # the OSD the small reads go to dies between two of them
                grid.osds[victim].procs[0].stop(signal.SIGKILL)
            assert os.pread(fd, 4096, off) == payload[off:off + 4096], off
    finally:
        os.close(fd)


def test_read_survives_an_osd_killed_mid_read_and_the_replica_count_comes_back(grid):
    mp = grid.mount(0, "rep")
    digest = _write_pattern(os.path.join(mp, "big"), 500)
    info = _replicas(grid, "/big")
    assert len(info["xloc"]["replicas"]) == 2
    first = info["xloc"]["replicas"][0]["osds"][0]
    victim = next(i for i, h in enumerate(grid.osds) if h.name == first)
    h = hashlib.sha256()
    done = threading.Event()
    with open(os.path.join(mp, "big"), "rb") as f:
        for n in range(500):
            chunk = f.read(1 << 20)
            h.update(chunk)
            if n == 100:  # a fifth of the way in, the OSD the reader uses dies
                grid.osds[victim].procs[0].stop(signal.SIGKILL)
                done.set()
        assert f.read() == b""
    assert done.is_set()
    assert h.hexdigest() == digest

    def restored():
        x = _replicas(grid, "/big")["xloc"]
        return len(x["replicas"]) == 2 and all(first not in r["osds"] for r in x["replicas"])

    wait_for(restored, 120, "the lost replica to be rebuilt on another OSD")
    x = _replicas(grid, "/big")["xloc"]
    survivors = {o for r in x["replicas"] for o in r["osds"]}
    assert survivors == {h.name for h in grid.osds} - {first}
    with open(os.path.join(mp, "big"), "rb") as f:
        assert hashlib.sha256(f.read()).hexdigest() == digest


def test_a_corrupt_object_is_detected_and_read_from_another_replica(grid):
    mp = grid.mount(0, "rep")
    payload = os.urandom(3 << 20)
    with open(os.path.join(mp, "c"), "wb") as f:
        f.write(payload)
    info = _replicas(grid, "/c")
    fid, first = info["fid"], info["xloc"]["replicas"][0]["osds"][0]
    i = next(i for i, h in enumerate(grid.osds) if h.name == first)
    obj = os.path.join(grid.osd_dir(i), "objects", fid[:2], fid, "1")
    with open(obj, "r+b") as f:  # one flipped byte in the middle of object 1, checksum left alone
        f.seek(12345)
        b = f.read(1)
        f.seek(12345)
        f.write(bytes([b[0] ^ 0xFF]))
    c = grid.client("rep")
    try:
        with c.open("/c") as f:
            assert f.read() == payload
    finally:
        c.close()
    with open(os.path.join(mp, "c"), "rb") as f:
        assert f.read() == payload


def test_a_mount_succeeds_and_reads_while_an_osd_is_down(grid):
    c = grid.client("rep")
    payload = os.urandom(2 << 20)
    try:
        with c.open("/f", "wb") as f:
            f.write(payload)
    finally:
        c.close()
    grid.osds[0].procs[0].stop(signal.SIGKILL)
    mp = grid.mount(0, "rep")
    with open(os.path.join(mp, "f"), "rb") as f:
        assert f.read() == payload
    with open(os.path.join(mp, "new"), "wb") as f:  # and writes go to the live ones
        f.write(payload)
    with open(os.path.join(mp, "new"), "rb") as f:
        assert f.read() == payload


def test_mrc_killed_and_restarted_loses_nothing_acknowledged(grid):
    mp = grid.mount(0, "rep")
    for i in range(50):
        with open(os.path.join(mp, f"f{i}"), "wb") as f:
            f.write(f"file {i}".encode() * (i * 2000 + 1))
    os.mkdir(os.path.join(mp, "dir"))
    os.rename(os.path.join(mp, "f0"), os.path.join(mp, "dir", "moved"))
    grid.mrc.procs[0].stop(signal.SIGKILL)
    grid.mrc.procs.pop(0)
    grid.start_mrc()
    c = grid.client("rep")
    try:
        names = c.listdir("/")
        assert sorted(names) == sorted(["dir"] + [f"f{i}" for i in range(1, 50)])
        for i in range(1, 50):
            with c.open(f"/f{i}") as f:
                assert f.read() == f"file {i}".encode() * (i * 2000 + 1)
        assert c.listdir("/dir") == ["moved"]
    finally:
        c.close()


def test_replicate_and_unreplicate_by_hand_and_unread_extras_are_dropped(grid):
    c = grid.client("rep")
    payload = os.urandom(3 << 20)
    try:
        with c.open("/r", "wb") as f:
            f.write(payload)
        with pytest.raises(Exception) as e:
            c.op("replicate", path="/r")
        assert "read-only first" in str(e.value)
        c.op("seal", path="/r")
        with pytest.raises(Exception) as e:
            c.open("/r", "r+b")
        assert getattr(e.value, "code", "") == "not-permitted"
        x = c.replicas("/r")["xloc"]
        used = {o for r in x["replicas"] for o in r["osds"]}
        spare = next(h.name for h in grid.osds if h.name not in used)
        x = c.op("replicate", path="/r", osds=[spare])["xloc"]
        assert len(x["replicas"]) == 3 and [spare] in [r["osds"] for r in x["replicas"]]
        i = next(i for i, h in enumerate(grid.osds) if h.name == spare)
        fid = c.replicas("/r")["fid"]
        assert len(os.listdir(os.path.join(grid.osd_dir(i), "objects", fid[:2], fid))) == 3
        x = c.op("unreplicate", path="/r", osd=spare)["xloc"]
        assert len(x["replicas"]) == 2
        assert not os.path.exists(os.path.join(grid.osd_dir(i), "objects", fid[:2], fid))
        with c.open("/r") as f:
            assert f.read() == payload
    finally:
        c.close()


def test_unread_replicas_beyond_the_policy_are_dropped():
    with FsGrid(osds=3, clients=1, grace=2.0, idle=2.0) as g:
        g.mkvol("one", replicas=1)
        c = g.client("one")
        try:
            with c.open("/r", "wb") as f:
                f.write(os.urandom(2 << 20))
            c.op("seal", path="/r")
            c.op("replicate", path="/r")
            assert len(c.replicas("/r")["xloc"]["replicas"]) == 2
            wait_for(lambda: len(c.replicas("/r")["xloc"]["replicas"]) == 1, 30, "the unread replica to go")
        finally:
            c.close()


READER = """
import ctypes, os, signal, sys
signal.signal(signal.SIGALRM, lambda *a: None)
signal.siginterrupt(signal.SIGALRM, True)
libc = ctypes.CDLL(None, use_errno=True)
fd = os.open(sys.argv[1], os.O_RDONLY | os.O_DIRECT)
buf = ctypes.create_string_buffer(1 << 16)
signal.setitimer(signal.ITIMER_REAL, 1.0)
n = libc.read(fd, buf, 1 << 16)
print(n, ctypes.get_errno())
"""


def test_a_read_from_frozen_osds_returns_eintr_when_interrupted(grid):
    # O_DIRECT: a buffered read waits on the page cache, which the kernel makes killable (SIGKILL
    # ends the reader at once) but not interruptible; a direct read waits on the request itself.
    mp = grid.mount(0, "rep")
    with open(os.path.join(mp, "slow"), "wb") as f:
        f.write(os.urandom(2 << 20))
    for osd in grid.osds:  # every replica stops answering, and stays so
        osd.procs[0].send(signal.SIGSTOP)
    try:
        import subprocess
        import sys

        out = subprocess.run([sys.executable, "-c", READER, os.path.join(mp, "slow")], capture_output=True,
                             text=True, timeout=25)
        assert out.stdout.split() == ["-1", str(errno.EINTR)], out
    finally:
        for osd in grid.osds:
            osd.procs[0].send(signal.SIGCONT)
    with open(os.path.join(mp, "slow"), "rb") as f:  # and the mount still works afterwards
        assert len(f.read()) == 2 << 20


def test_files_kept_open_past_their_capability_go_on_reading_and_writing():
    from xos.fs import capability

    with FsGrid(osds=2, clients=1, cap_ttl=2.0) as g:
        g.mkvol("short", replicas=2)
        mp = g.mount(0, "short")
        c = g.client("short")
        first, second = os.urandom(3 << 20), os.urandom(3 << 20)
        try:
            with c.open("/w", "wb") as api_file, open(os.path.join(mp, "m"), "wb") as mounted:
                api_file.write(first)
                mounted.write(first)
                mounted.flush()
                os.fsync(mounted.fileno())
                cap = capability.verify(open(g.key, "rb").read().strip(), api_file._st.cap)
                wait_for(lambda: time.time() > cap.exp + 0.5, 10, "the capabilities to expire")
                api_file.write(second)
                mounted.write(second)
                mounted.flush()
                os.fsync(mounted.fileno())
            with c.open("/w") as f:
                assert f.read() == first + second
            with open(os.path.join(mp, "m"), "rb") as f:
                assert f.read() == first + second
            reader = c.open("/w")
            assert reader.read(1 << 20) == first[:1 << 20]
            exp = capability.verify(open(g.key, "rb").read().strip(), reader._st.cap, now=0).exp
            wait_for(lambda: time.time() > exp + 0.5, 10, "the reader's capability to expire")
            assert reader.read() == first[1 << 20:] + second
            reader.close()
        finally:
            c.close()


def test_an_appended_file_fsynced_past_its_capability_has_its_bytes_and_size_taken():
    """A log appended and fsynced sends the write and the size commit at once; with the capability expired,
    both are refused, and both go again under a renewed one: the bytes and the size are at the MRC and
    the OSDs when the fsync returns (another client reads them before the file is closed)."""
    from xos.fs import capability

    with FsGrid(osds=2, clients=1, cap_ttl=2.0) as g:
        g.mkvol("short", replicas=2)
        mp = g.mount(0, "short")
        c = g.client("short")
        try:
            with open(os.path.join(mp, "log"), "wb") as f:
                data = _log_synced(f)  # every replica synced: the fsyncs after it send their writes synced
                for i in range(2):
                    _append(f, data)
                    if i:
                        h = c.open_handle("/log")  # a capability issued after the mount's
                        cap = capability.verify(open(g.key, "rb").read().strip(), h.cap)
                        c.release(h)
                        wait_for(lambda exp=cap.exp: time.time() > exp + 0.5, 10, "the capabilities to expire")
                    _synced_reads_back(f, c, data)
        finally:
            c.close()


def _log_synced(f: Any) -> bytearray:
    """Write a file past the inline limit through `f` and fsync it; what it holds."""
    data = bytearray(os.urandom(INLINE_MAX + 100))
    f.write(data)
    os.fsync(f.fileno())
    return data


def _append(f: Any, data: bytearray) -> None:
    """Append a few KiB through `f` (to the mount: flushed), and to `data`."""
    more = os.urandom(4120)
    f.write(more)
    f.flush()
    data += more


def _synced_reads_back(f: Any, c: Any, data: bytearray) -> None:
    """fdatasync `f`: another client then reads `data` from the file whole."""
    os.fdatasync(f.fileno())
    with c.open("/log") as other:
        assert other.read() == bytes(data)


def _object_files(grid, fid, osd_name):
    i = next(i for i, h in enumerate(grid.osds) if h.name == osd_name)
    d = os.path.join(grid.osd_dir(i), "objects", fid[:2], fid)
    out = {}
    for name in os.listdir(d):
        with open(os.path.join(d, name), "rb") as f:
            out[int(name)] = f.read()
    return out


def test_a_replica_rebuilt_while_the_file_is_written_misses_no_write(grid):
    c = grid.client("rep")
    stop = threading.Event()
    written = [0]
    errors: list[BaseException] = []

    def chunk(i):
        return hashlib.sha512(str(i).encode()).digest() * 1024  # 64 KiB

    def writer():
        try:
            with c.open("/live", "wb") as f:
                i = 0
                while not stop.is_set():
                    f.write(chunk(i))
                    f.flush()  # each chunk out to the OSDs: many small writes while the copy runs
                    i += 1
                    written[0] = i
        except BaseException as e:
            errors.append(e)

    t = threading.Thread(target=writer)
    t.start()
    try:
        wait_for(lambda: written[0] >= 32 or errors, 60, "2 MiB to be written")
        x = _replicas(grid, "/live")["xloc"]
        victim_name = x["replicas"][1]["osds"][0]
        next(h for h in grid.osds if h.name == victim_name).procs[0].stop(signal.SIGKILL)

        def rebuilt():
            reps = _replicas(grid, "/live")["xloc"]["replicas"]
            return len(reps) == 2 and all(victim_name not in r["osds"] for r in reps)

        wait_for(rebuilt, 120, "the replica to be rebuilt while the file is written")
        after = written[0]
        wait_for(lambda: written[0] >= after + 32 or errors, 60, "2 MiB more to be written")
    finally:
        stop.set()
        t.join()
    assert not errors, errors
    total = written[0]
    try:
        with c.open("/live") as f:
            assert f.read() == b"".join(chunk(i) for i in range(total))
        info = _replicas(grid, "/live")
    finally:
        c.close()
    a, b = (_object_files(grid, info["fid"], r["osds"][0]) for r in info["xloc"]["replicas"])
    assert a.keys() == b.keys() and all(a[k] == b[k] for k in a), "the replicas differ"


def test_a_replica_that_misses_a_write_is_dropped_on_the_primarys_word(grid):
    """The primary OSD, not the client, reports a replica its forward did not reach: the MRC has dropped it
    before the write is acknowledged, so no read can go to it; and the client's own word counts for nothing."""
    c = grid.client("rep")
    try:
        with c.open("/w", "wb") as f:
            f.write(b"x" * (1 << 20))
        before = c.replicas("/w")["xloc"]["replicas"]
        assert len(before) == 2
        second = before[1]["osds"][0]
        # the client's commit naming a healthy replica "behind" drops nothing
        st = c.open_handle("/w", write=True)
        c.op("commit", ino=st.ino, cap=st.cap, size=1 << 20, mtime=time.time(), inline=None, spilled=True,
             behind=[grid.osd_url(int(second[3:]))])
        c.release(st)
        assert len(c.replicas("/w")["xloc"]["replicas"]) == 2
        grid.osds[int(second[3:])].procs[0].stop(signal.SIGKILL)
        with c.open("/w", "r+b") as f:
            f.write(b"y" * 4096)  # the primary cannot forward this to the second replica
            f.flush()
            after = c.replicas("/w")["xloc"]["replicas"]
        assert [r["osds"] for r in after] == [before[0]["osds"]], after
        with c.open("/w", "rb") as f:
            assert f.read(4096) == b"y" * 4096
    finally:
        c.close()


def test_deleting_a_tree_does_not_walk_every_file_per_name(grid):
    """Each unlink wakes the replica manager to delete the file's objects: those passes delete them without
    the walk over every file (for replica counts), which rm -rf made back to back."""
    c = grid.client("rep")
    try:
        c.mkdir("/tree")
        for i in range(100):
            with c.open(f"/tree/f{i}", "wb") as f:
                f.write(os.urandom(INLINE_MAX + 1))  # objects on the OSDs
        fids = [c.replicas(f"/tree/f{i}")["fid"] for i in range(100)]
        before = c._json("GET", f"{grid.mrc_url}/v1/stats")
        for i in range(100):
            c.unlink(f"/tree/f{i}")

        def left() -> list[str]:
            return [f for f in fids for i in range(len(grid.osds))
                    if os.path.exists(os.path.join(grid.osd_dir(i), "objects", f[:2], f))]

        wait_for(lambda: not left(), 20, "the unlinked files' objects to be deleted")
        after = c._json("GET", f"{grid.mrc_url}/v1/stats")
        passes = after["replica_passes"] - before["replica_passes"]
        walked = after["replica_walks"] - before["replica_walks"]
        assert passes >= 1 and walked < passes, f"{walked} of {passes} passes walked every file"
    finally:
        c.close()


def test_an_append_fsynced_after_its_osd_restarted_goes_again_on_a_new_connection(grid):
    """A mount keeps its connections to the OSDs: with the OSD of a log's last object killed and started
    again, the one kept is dead, and the append's synced write (sent with the size commit at once) meets
    it. The write goes again on a new connection: the fsync holds, and another client reads every byte."""
    mp = grid.mount(0, "rep")
    c = grid.client("rep")
    try:
        with open(os.path.join(mp, "log"), "wb") as f:
            data = _log_synced(f)
            for i in range(2):
                if i:  # the OSD the append goes to first, killed and started again
                    st = c.open_handle("/log")
                    url = st.xloc.urls[st.xloc.replicas[0].osd_of(0)]
                    c.release(st)
                    k = next(k for k in range(len(grid.osds)) if grid.osd_url(k) == url)
                    grid.osds[k].procs[0].stop(signal.SIGKILL)
                    grid.osds[k].procs.pop(0)
                    proc = grid.start_osd(k)
                    wait_for(lambda proc=proc, url=url: grid._answers(proc, url), 20, "the OSD to answer again")
                _append(f, data)
                _synced_reads_back(f, c, data)
    finally:
        c.close()


def test_a_truncate_interrupted_while_the_mrc_is_slow_leaves_the_handle_as_the_mrc_has_the_file(grid):
    """A truncate of a file open for writing, interrupted while the MRC has not answered yet (the caller got
    a signal), may still be done there: the handle is opened again either way, so what it commits later
    does not bring the old size back."""
    c = grid.client("rep")
    try:
        st = c.create_handle("/shrunk")
        c.write(st, os.urandom(300_000), 0)
        c.flush(st)
        fired = threading.Event()

        def once() -> bool:  # the first look after the MRC froze says "interrupted", none after
            if fired.is_set():
                return False
            fired.set()
            return True

        mrc = grid.mrc.procs[0]
        mrc.send(signal.SIGSTOP)
        failed: list[BaseException] = []

        def shrink() -> None:
            try:
                c.truncate("/shrunk", 1000, st.ino)
            except BaseException as e:  # what the caller gets is the point
                failed.append(e)

        c.interrupted = once
        t = threading.Thread(target=shrink)
        try:
            t.start()
            assert fired.wait(10), "the truncate did not wait for the MRC"
        finally:
            mrc.send(signal.SIGCONT)
        t.join(30)
        c.interrupted = lambda: False
        assert len(failed) == 1 and isinstance(failed[0], InterruptedError), failed
        now = c.stat("/shrunk")["size"]
        assert now == 1000, "the truncate the MRC was sent does not show"
        c.write(st, b"y" * 10, 0)
        c.flush(st)
        assert c.stat("/shrunk")["size"] == 1000
        c.release(st)
    finally:
        c.close()
