"""OSD objects: block checksums stay right under any mix of writes and truncates, and catch a flipped bit."""

from __future__ import annotations

import errno
import os

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from xos.errors import NoSpace, NoSuchFile, ObjectCorrupt
from xos.fs.osd.store import ALIGN, BLOCK, DIRECT_MIN, PENDING, ObjectStore

FID = "ab" * 16
STRIPE = 8 * BLOCK

ops = st.lists(st.one_of(
    st.tuples(st.just("w"), st.integers(0, STRIPE - 1), st.integers(1, BLOCK + 5000)),
    # large aligned writes, which go around the page cache
    st.tuples(st.just("w"), st.integers(0, (STRIPE - DIRECT_MIN) // ALIGN).map(lambda k: k * ALIGN),
              st.integers(0, (STRIPE - DIRECT_MIN) // ALIGN).map(lambda k: DIRECT_MIN + k * ALIGN)),
    st.tuples(st.just("t"), st.integers(0, STRIPE), st.just(0))), min_size=1, max_size=12)


def _read(store, off, n, direct=False):
    try:
        return store.read(FID, 0, off, n, direct) or b""
    except NoSuchFile:  # nothing written yet: the client reads that as a hole too
        return b""


@settings(max_examples=60, deadline=None)
@given(ops)
def test_reads_match_a_model_after_any_writes_and_truncates(tmp_path_factory, sequence):
    store = ObjectStore(str(tmp_path_factory.mktemp("osd")))
    model = bytearray()
    for i, (op, a, b) in enumerate(sequence):
        if op == "w":
            b = min(b, STRIPE - a)
            data = bytes([(i * 37 + j) % 251 for j in range(b)])
            store.write(FID, 0, a, data)
            if a > len(model):
                model.extend(bytes(a - len(model)))
            model[a:a + b] = data
        else:
            store.truncate(FID, a, STRIPE)
            del model[a:]
        assert _read(store, 0, STRIPE) == bytes(model)
        assert _read(store, 0, STRIPE, direct=True) == bytes(model)
        assert _read(store, BLOCK + 17, STRIPE, direct=True) == bytes(model[BLOCK + 17:])
        for off in (0, 4095, BLOCK - 1, BLOCK + 17):
            assert _read(store, off, 4096) == bytes(model[off:off + 4096])


def test_a_flipped_bit_is_caught_in_its_block_only(tmp_path):
    store = ObjectStore(str(tmp_path))
    data = os.urandom(8 * BLOCK)
    store.write(FID, 0, 0, data)
    with open(store.path(FID, 0), "r+b") as f:
        f.seek(BLOCK + 10)
        f.write(bytes([data[BLOCK + 10] ^ 1]))
    assert store.read(FID, 0, 0, 4096) == data[:4096]
    assert store.read(FID, 0, 2 * BLOCK, 4096) == data[2 * BLOCK:2 * BLOCK + 4096]
    assert store.read(FID, 0, 2 * BLOCK, 6 * BLOCK, direct=True) == data[2 * BLOCK:]
    with pytest.raises(ObjectCorrupt):
        store.read(FID, 0, BLOCK, 4096)
    with pytest.raises(ObjectCorrupt):
        store.read(FID, 0, 0, 8 * BLOCK, direct=True)


def test_missing_checksums_are_corruption_and_a_removed_file_is_not_a_hole(tmp_path):
    store = ObjectStore(str(tmp_path))
    store.write(FID, 0, 0, b"x" * 100)
    os.removexattr(store.path(FID, 0), "user.xos.crc32")
    with pytest.raises(ObjectCorrupt):
        store.read(FID, 0, 0, 10)
    assert store.read(FID, 5, 0, 10) is None  # a hole in a file it holds
    store.delete(FID)
    with pytest.raises(Exception) as e:
        store.read(FID, 0, 0, 10)
    assert getattr(e.value, "code", "") == "no-such-file"


def _cached_pages(path: str) -> int:
    """How many of a file's pages are in the page cache (mincore of a mapping: it starts no I/O)."""
    import ctypes
    import mmap

    libc = ctypes.CDLL(None, use_errno=True)
    libc.mmap.restype = ctypes.c_void_p
    libc.mmap.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_long)
    libc.munmap.argtypes = (ctypes.c_void_p, ctypes.c_size_t)
    libc.mincore.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_void_p)
    size = os.path.getsize(path)
    vec = (ctypes.c_ubyte * ((size + mmap.PAGESIZE - 1) // mmap.PAGESIZE))()
    fd = os.open(path, os.O_RDONLY)
    try:
        addr = libc.mmap(None, size, mmap.PROT_READ, mmap.MAP_SHARED, fd, 0)
        assert addr != ctypes.c_void_p(-1).value, os.strerror(ctypes.get_errno())
        try:
            assert libc.mincore(addr, size, vec) == 0, os.strerror(ctypes.get_errno())
        finally:
            libc.munmap(addr, size)
    finally:
        os.close(fd)
    return sum(v & 1 for v in vec)


def test_large_aligned_writes_go_around_the_page_cache_and_read_back(tmp_path):
    store = ObjectStore(str(tmp_path))
    data = os.urandom(DIRECT_MIN)
    store.write(FID, 0, 0, data)
    assert _cached_pages(store.path(FID, 0)) == 0  # it went straight to the disk
    store.write(FID, 1, 0, data[:DIRECT_MIN - 1])  # unaligned: through the page cache
    assert _cached_pages(store.path(FID, 1)) > 0
    assert store.direct and store.read(FID, 0, 0, DIRECT_MIN) == data
    assert store.read(FID, 1, 0, DIRECT_MIN) == data[:DIRECT_MIN - 1]


def test_large_direct_reads_go_around_the_page_cache_and_see_buffered_writes(tmp_path):
    store = ObjectStore(str(tmp_path))
    data = os.urandom(2 * DIRECT_MIN + 1000)
    store.write(FID, 0, 0, data)  # unaligned: its pages are still dirty in the cache
    assert store.read(FID, 0, 0, len(data), direct=True) == data
    fd = os.open(store.path(FID, 0), os.O_RDONLY)
    try:
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)
    assert _cached_pages(store.path(FID, 0)) == 0
    assert store.read(FID, 0, 5000, DIRECT_MIN, direct=True) == data[5000:5000 + DIRECT_MIN]
    assert store.read(FID, 0, 0, 4 * DIRECT_MIN, direct=True) == data
    assert _cached_pages(store.path(FID, 0)) == 0
    assert store.read(FID, 0, 0, 4 * DIRECT_MIN) == data  # not direct: through the cache
    assert _cached_pages(store.path(FID, 0)) > 0


def test_a_direct_read_or_write_stays_on_the_object_it_opened_when_the_path_is_replaced(tmp_path, monkeypatch):
    store = ObjectStore(str(tmp_path))
    old, other = os.urandom(DIRECT_MIN), os.urandom(DIRECT_MIN)
    store.write(FID, 0, 0, old)
    store.write(FID, 1, 0, other)
    real_open = os.open

    def replacing(path, flags, *args):  # the object is replaced between its open and the direct open
        if flags & os.O_DIRECT:
            os.replace(store.path(FID, 1), store.path(FID, 0))
        return real_open(path, flags, *args)

    monkeypatch.setattr(os, "open", replacing)
    assert store.read(FID, 0, 0, DIRECT_MIN, direct=True) == old
    monkeypatch.undo()
    store.write(FID, 1, 0, other)
    fresh = os.urandom(DIRECT_MIN)
    monkeypatch.setattr(os, "open", replacing)
    store.write(FID, 0, 0, fresh)  # goes to the file it opened, which is no longer there
    monkeypatch.undo()
    assert store.read(FID, 0, 0, DIRECT_MIN, direct=True) == other  # the replacement, untouched


def test_concurrent_writes_to_one_object_keep_every_block_checksum(tmp_path):
    from concurrent.futures import ThreadPoolExecutor

    store = ObjectStore(str(tmp_path))
    chunk = 3000  # ranges that share blocks: each write rewrites its blocks' checksums
    data = os.urandom(64 * chunk)

    def put(i: int) -> None:
        store.write(FID, 0, i * chunk, data[i * chunk:(i + 1) * chunk])

    with ThreadPoolExecutor(8) as ex:
        list(ex.map(put, range(64)))
    assert store.read(FID, 0, 0, len(data)) == data


def test_a_full_disk_is_no_space_and_leaves_the_object_as_it_was(tmp_path):
    import subprocess

    root = tmp_path / "small"
    root.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "xos-test-osd", str(root)], check=True)
    try:
        store = ObjectStore(str(root))
        first = os.urandom(DIRECT_MIN)
        store.write(FID, 0, 0, first)
        for offset, n in ((DIRECT_MIN, 4 * DIRECT_MIN), (DIRECT_MIN, 4 * DIRECT_MIN - 1)):  # direct, buffered
            with pytest.raises(NoSpace):
                store.write(FID, 0, offset, os.urandom(n))
            assert os.path.getsize(store.path(FID, 0)) == DIRECT_MIN
            assert store.read(FID, 0, 0, 8 * DIRECT_MIN) == first
    finally:
        subprocess.run(["umount", str(root)], check=True)


@pytest.mark.parametrize("size, direct", [(2 * BLOCK, False), (DIRECT_MIN, True)])
def test_reads_during_writes_of_the_same_blocks_are_never_taken_for_corruption(tmp_path, size, direct):
    import threading

    store = ObjectStore(str(tmp_path))
    versions = [bytes([i]) * size for i in range(1, 6)]
    store.write(FID, 0, 0, versions[0])
    done = threading.Event()

    def writer() -> None:
        for _ in range(40):
            for v in versions:
                store.write(FID, 0, 0, v)
        done.set()

    t = threading.Thread(target=writer)
    t.start()
    try:
        while not done.is_set():
            assert store.read(FID, 0, 0, size, direct) in versions
    finally:
        t.join()


def _refusing_o_direct(real_open):
    def refusing(path, flags, *args):  # what tmpfs before Linux 6.6 and many FUSE file systems answer
        if flags & os.O_DIRECT:
            raise OSError(errno.EINVAL, "Invalid argument")
        return real_open(path, flags, *args)

    return refusing


def test_a_file_system_refusing_o_direct_gets_buffered_writes_and_reads(tmp_path, monkeypatch, caplog):
    store = ObjectStore(str(tmp_path))
    monkeypatch.setattr(os, "open", _refusing_o_direct(os.open))
    data = os.urandom(DIRECT_MIN)
    store.write(FID, 0, 0, data)
    store.write(FID, 1, 0, data)
    assert store.read(FID, 0, 0, DIRECT_MIN, direct=True) == data
    monkeypatch.undo()
    assert not store.direct and "refuses O_DIRECT" in caplog.text
    assert caplog.text.count("refuses O_DIRECT") == 1  # said once, not per write
    assert _cached_pages(store.path(FID, 0)) > 0  # written through the page cache
    assert store.read(FID, 0, 0, DIRECT_MIN) == data and store.read(FID, 1, 0, DIRECT_MIN) == data


def test_a_direct_read_refused_falls_back_to_the_page_cache(tmp_path, monkeypatch, caplog):
    store = ObjectStore(str(tmp_path))
    data = os.urandom(DIRECT_MIN)
    store.write(FID, 0, 0, data)
    monkeypatch.setattr(os, "open", _refusing_o_direct(os.open))
    assert store.read(FID, 0, 0, DIRECT_MIN, direct=True) == data
    monkeypatch.undo()
    assert not store.direct and caplog.text.count("refuses O_DIRECT") == 1


class _Cut(Exception):
    """The OSD killed between a write's bytes and its checksums."""


def _cut_after_the_bytes(monkeypatch, store):
    """Make the next write stop right after its bytes reached the object (before CRC is updated)."""
    real = store._pwrite

    def pwrite(fd, data, offset):
        real(fd, data, offset)
        raise _Cut()

    monkeypatch.setattr(store, "_pwrite", pwrite)


@pytest.mark.parametrize("offset,length", [(100, 1000), (BLOCK - 10, 20), (3 * BLOCK, 2 * BLOCK + 7), (0, 4 * BLOCK)])
def test_a_write_cut_between_its_bytes_and_its_checksums_reads_back_whole(tmp_path, monkeypatch, offset, length):
    """Data and checksums change together: a write cut short reads back as written (the pending checksums
    vouch for it), the next write goes on from there, and a block torn in the middle is still caught."""
    store = ObjectStore(str(tmp_path))
    old = os.urandom(2 * BLOCK + 300)
    store.write(FID, 0, 0, old)
    new = os.urandom(length)
    with monkeypatch.context() as m:
        _cut_after_the_bytes(m, store)
        with pytest.raises(_Cut):
            store.write(FID, 0, offset, new)
    fresh = ObjectStore(str(tmp_path))  # the OSD restarted
    want = bytearray(old)
    want[len(want):offset] = bytes(max(0, offset - len(want)))
    want[offset:offset + length] = new
    assert fresh.read(FID, 0, 0, len(want) + 10) == bytes(want)
    fresh.write(FID, 0, 5, b"after")  # the checksums settle on what the object holds
    want[5:10] = b"after"
    assert fresh.read(FID, 0, 0, len(want) + 10) == bytes(want)
    assert PENDING not in os.listxattr(fresh.path(FID, 0))


def test_a_block_torn_by_a_cut_write_is_caught(tmp_path, monkeypatch):
    store = ObjectStore(str(tmp_path))
    store.write(FID, 0, 0, b"a" * (2 * BLOCK))
    with monkeypatch.context() as m:
        real = store._pwrite

        def half(fd, data, off):  # only half the new block lands: it matches neither its old nor its new checksum
            real(fd, data[:BLOCK // 2], off)
            raise _Cut()

        m.setattr(store, "_pwrite", half)
        with pytest.raises(_Cut):
            store.write(FID, 0, 0, b"b" * BLOCK)
    fresh = ObjectStore(str(tmp_path))
    assert fresh.read(FID, 0, BLOCK, BLOCK) == b"a" * BLOCK  # the untouched block reads
    with pytest.raises(ObjectCorrupt):
        fresh.read(FID, 0, 0, BLOCK)
