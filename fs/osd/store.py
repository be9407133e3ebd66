"""An OSD's objects on local disk: DIR/objects/<fid[:2]>/<fid>/<objno>, each with the CRC-32 of every 64 KiB
block in the extended attribute user.xos.crc32, so a bit flipped on disk is found on the next read.
Large aligned writes and large reads go around the page cache (O_DIRECT); a file's fencing state (its
truncate epoch and replica-list version) is kept on its directory, so it survives a restart."""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import errno
import logging
import mmap
import os
import shutil
import struct
import threading

from isal.isal_zlib import crc32  # zlib's CRC-32, 5x faster: 64 KiB in 6 us, not 30 (and 1 MiB in 95, not 324)

from xos._native._osd import lib as _osd
from xos.errors import NoSpace, NoSuchFile, ObjectCorrupt, XosError

log = logging.getLogger(__name__)

_libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)

CRC = "user.xos.crc32"  # the CRC-32 of each BLOCK of the object, big-endian, one after the other
# The checksums an object is being written to, set before its bytes change and removed once CRC holds them:
# a write cut short (the OSD killed between the two) leaves each block as it was or as it was to be, and
# either verifies; a block torn in the middle verifies as neither and is read from another replica.
PENDING = "user.xos.crc32.pending"
FENCE = "user.xos.fence"  # on a file's directory: its truncate epoch and replica-list version, two big-endian u64
BLOCK = 64 << 10  # a 4 KiB read checks 64 KiB, not the whole object
MAX_OBJECT = 16 << 20  # at most 256 checksums: 1 KiB, within one extended-attribute block
HEARTBEAT = 1.0
SMALL = 256 << 10  # reads up to this size run on the event loop
DIRECT_MIN = 256 << 10  # aligned writes and threaded reads from this size on go around the page cache
ALIGN = 4096  # what O_DIRECT asks of offsets, lengths and buffers: a multiple of any logical block size


class ObjectLock:
    """The lock one object's bytes and checksums change under, shared with the native read threads, which read
    a block that failed its checksum once more under it."""

    __slots__ = ("fid", "objno")

    def __init__(self, fid: str, objno: int) -> None:
        self.fid, self.objno = fid.encode(), objno

    def __enter__(self) -> None:
        _osd.xo_lock(self.fid, self.objno)  # CFFI lets the GIL go while it waits

    def __exit__(self, *exc: object) -> None:
        _osd.xo_unlock(self.fid, self.objno)


class ObjectStore:
    """Objects and their checksums on a local directory."""

    def __init__(self, root: str) -> None:
        self.root = os.path.join(root, "objects")
        os.makedirs(self.root, exist_ok=True)
        probe = os.path.join(root, ".xattr-probe")
        with open(probe, "wb") as f:
            try:
                os.setxattr(f.fileno(), CRC, b"\0\0\0\0")
            except OSError as e:
                raise XosError(f"{root} does not support user extended attributes, which hold object "
                               f"checksums: {e.strerror}") from None
        os.unlink(probe)
        self.direct = True  # until the file system refuses O_DIRECT (tmpfs before Linux 6.6, many FUSE file systems)
        self._local = threading.local()

    def dir(self, fid: str) -> str:
        return os.path.join(self.root, fid[:2], fid)

    def path(self, fid: str, objno: int) -> str:
        return os.path.join(self.root, fid[:2], fid, str(objno))

    @staticmethod
    def _lock(fid: str, objno: int) -> ObjectLock:
        """An object's content and its checksums change together: two writes of one object at once lost one's
        checksum update (two mounts writing one file, a truncate racing a write)."""
        return ObjectLock(fid, objno)

    def write(self, fid: str, objno: int, offset: int, data: bytes | memoryview) -> None:
        """Write `data` at `offset` of an object and bring the checksums of the blocks it touched up to date."""
        with self._lock(fid, objno):
            self._write(fid, objno, offset, data)

    def _write(self, fid: str, objno: int, offset: int, data: bytes | memoryview) -> None:
        path = self.path(fid, objno)
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        except FileNotFoundError:
            os.makedirs(os.path.dirname(path), exist_ok=True)
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            size = os.fstat(fd).st_size
            crcs = self._baseline(fd, fid, objno, size)
            end = offset + len(data)
            new_size = max(size, end)
            del crcs[(new_size + BLOCK - 1) // BLOCK:]
            crcs.extend([0] * ((new_size + BLOCK - 1) // BLOCK - len(crcs)))
            mv = memoryview(data)
            # every block from the old end (a gap reads as zeros) or the write's start to its end, as it will be
            for b in range(min(offset, size) // BLOCK, (new_size - 1) // BLOCK + 1 if new_size else 0):
                lo, hi = b * BLOCK, min((b + 1) * BLOCK, new_size)
                if offset <= lo and hi <= end:
                    crcs[b] = crc32(mv[lo - offset:hi - offset])
                else:
                    block = bytearray(os.pread(fd, hi - lo, lo)).ljust(hi - lo, b"\0")
                    start, stop = max(lo, offset), min(hi, end)
                    if start < stop:
                        block[start - lo:stop - lo] = mv[start - offset:stop - offset]
                    crcs[b] = crc32(block)
            packed = struct.pack(f">{len(crcs)}I", *crcs)
            os.setxattr(fd, PENDING, packed)
            try:
                self._pwrite(fd, data, offset)
            except OSError as e:
                with contextlib.suppress(OSError):
                    os.ftruncate(fd, size)  # what it appended goes again: the checksums still fit the object
                    os.removexattr(fd, PENDING)
                if e.errno in (errno.ENOSPC, errno.EDQUOT):
                    raise NoSpace("the OSD's disk is full") from None
                raise
            os.setxattr(fd, CRC, packed)
            os.removexattr(fd, PENDING)
        finally:
            os.close(fd)

    def _pending(self, fd: int, size: int) -> list[int] | None:
        """The checksums a write cut short was taking the object to, if they fit its size."""
        try:
            raw = os.getxattr(fd, PENDING)
        except OSError:
            return None
        n = (size + BLOCK - 1) // BLOCK
        return list(struct.unpack(f">{n}I", raw)) if len(raw) == 4 * n else None

    def _baseline(self, fd: int, fid: str, objno: int, size: int) -> list[int]:
        """The checksums of the object as it is, to change: after a write cut short, each block's as it
        was or as it was to be, whichever its bytes match (a torn block keeps its old one: still caught)."""
        try:
            crcs: list[int] | None = self._crcs(fd, fid, objno, size)
        except ObjectCorrupt:
            crcs = None
        pending = self._pending(fd, size)
        if pending is None:
            if crcs is None:
                raise ObjectCorrupt(f"object {fid}/{objno} has checksums for another size than its {size} bytes")
            return crcs
        out = []
        for b, want in enumerate(pending):
            have = crc32(os.pread(fd, min(BLOCK, size - b * BLOCK), b * BLOCK))
            out.append(have if have == want or (crcs is not None and have == crcs[b]) else
                       crcs[b] if crcs is not None else want)
        return out

    def _pwrite(self, fd: int, data: bytes | memoryview, offset: int) -> None:
        """Write `data` at `offset`: large aligned writes with O_DIRECT, the rest through the page cache.

        A sequential write spent most of the OSDs' CPU copying into freshly allocated cache pages
        (and their writeback later): 1 GiB in 1 MiB objects took 2.9-3.2 s of CPU after a cache drop,
        0.7-1.5 s with O_DIRECT, and the fsync that follows has nothing left to write."""
        n = len(data)
        if self.direct and n >= DIRECT_MIN and not offset % ALIGN and not n % ALIGN:
            dfd = self._open_direct(fd, os.O_WRONLY)
            if dfd is not None:
                buf = self._buffer(n)
                buf[:n] = data
                try:
                    if os.pwrite(dfd, buf[:n], offset) != n:
                        raise OSError(errno.ENOSPC, "short write")
                    return
                finally:
                    os.close(dfd)
        if os.pwrite(fd, data, offset) != n:  # on a regular file: the disk filled up
            raise OSError(errno.ENOSPC, "short write")

    def _open_direct(self, fd: int, flags: int) -> int | None:
        """The file open at `fd` opened again with O_DIRECT, or None (and buffered I/O from now on) if its file
        system refuses it. Through /proc/self/fd, not its path: the object may be deleted or replaced
        in between, and a write or read then still goes to the file the checksums were taken from."""
        try:
            return os.open(f"/proc/self/fd/{fd}", flags | os.O_DIRECT)
        except OSError as e:
            if e.errno != errno.EINVAL:
                raise
        log.warning("%s refuses O_DIRECT; objects are written and read through the page cache", self.root)
        self.direct = False
        return None

    def _buffer(self, n: int) -> memoryview:
        """A page-aligned buffer of at least `n` bytes for direct I/O, kept per thread: its pages stay warm."""
        buf = getattr(self._local, "buf", None)
        if buf is None or len(buf) < n:
            buf = self._local.buf = memoryview(mmap.mmap(-1, max(-(-n // ALIGN) * ALIGN, DIRECT_MIN)))
        return buf

    def _crcs(self, fd: int, fid: str, objno: int, size: int) -> list[int]:
        """The block checksums of an object of `size` bytes."""
        try:
            raw = os.getxattr(fd, CRC)
        except OSError:
            raw = b""
        n = (size + BLOCK - 1) // BLOCK
        if len(raw) != 4 * n:
            raise ObjectCorrupt(f"object {fid}/{objno} has {len(raw) // 4} block checksums for {n} blocks")
        return list(struct.unpack(f">{n}I", raw))

    def read(self, fid: str, objno: int, offset: int, length: int, direct: bool = False,
             copy: bool = True) -> bytes | memoryview | None:
        """A range of an object, its blocks checked against their checksums; None if the object does not exist.

        NoSuchFile when the OSD holds nothing of the file at all (a replica removed since the
        client learnt of it): the client then reads another replica rather than a hole. `direct`
        reads a span of DIRECT_MIN or more around the page cache: it always waits for the disk, so
        only off the event loop. A direct read with `copy` False may return a view of this thread's
        buffer, good until the thread's next direct read or write."""
        try:
            return self._read(fid, objno, offset, length, direct, copy)
        except ObjectCorrupt:
            with self._lock(fid, objno):  # or read between a write's bytes and its checksums: once more, alone
                return self._read(fid, objno, offset, length, direct, copy)

    def _read(self, fid: str, objno: int, offset: int, length: int, direct: bool,
              copy: bool) -> bytes | memoryview | None:
        try:
            fd = os.open(self.path(fid, objno), os.O_RDONLY)
        except FileNotFoundError:
            if not os.path.isdir(self.dir(fid)):
                raise NoSuchFile(f"this OSD holds no objects of file {fid}") from None
            return None
        try:
            size = os.fstat(fd).st_size
            end = min(size, offset + length)
            if offset >= end:
                return b""
            try:
                crcs: list[int] | None = self._crcs(fd, fid, objno, size)
            except ObjectCorrupt:
                crcs = None  # a write cut short may have changed its size: its pending checksums say
            first, last = offset // BLOCK, (end - 1) // BLOCK
            lo, n = first * BLOCK, min(size, (last + 1) * BLOCK) - first * BLOCK
            span: bytes | memoryview | None = None
            if direct and self.direct and n >= DIRECT_MIN:
                span = self._pread_direct(fd, n, lo)
            if span is None:
                span = os.pread(fd, n, lo)
            mv = memoryview(span)
            pending: list[int] | None = None
            for b in range(first, last + 1):
                have = crc32(mv[(b - first) * BLOCK:(b - first + 1) * BLOCK])
                if crcs is not None and have == crcs[b]:
                    continue
                if pending is None:
                    pending = self._pending(fd, size) or []
                if b >= len(pending) or have != pending[b]:
                    raise ObjectCorrupt(f"object {fid}/{objno} block {b} does not match its checksum")
        finally:
            os.close(fd)
        out = span[offset - lo:end - lo]
        return bytes(out) if copy and isinstance(out, memoryview) else out  # the thread's buffer is read into again

    def _pread_direct(self, fd: int, n: int, offset: int) -> memoryview | None:
        """`n` bytes at `offset` (BLOCK-aligned) read around the page cache into this thread's buffer, or None
        if the file system refuses O_DIRECT.

        A cold object read through the page cache spent most of its CPU filling the cache and copying out of
        it; read directly, it is copied once."""
        dfd = self._open_direct(fd, os.O_RDONLY)
        if dfd is None:
            return None
        try:
            buf = self._buffer(n)
            got = os.preadv(dfd, [buf[:-(-n // ALIGN) * ALIGN]], offset)  # whole pages; the object's end stops it
        finally:
            os.close(dfd)
        return buf[:min(got, n)]

    def truncate(self, fid: str, size: int, stripe: int) -> None:
        """Cut a file to `size`: objects past it go, the one it ends in is shortened."""
        last, inner = divmod(size, stripe)
        for objno in self.objects(fid):
            path = self.path(fid, objno)
            if objno > last or (objno == last and inner == 0):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(path)
            elif objno == last:
                with self._lock(fid, objno):
                    self._shorten(fid, objno, inner)

    def _shorten(self, fid: str, objno: int, inner: int) -> None:
        fd = os.open(self.path(fid, objno), os.O_RDWR)
        try:
            have = os.fstat(fd).st_size
            if have > inner:
                crcs = self._baseline(fd, fid, objno, have)[:(inner + BLOCK - 1) // BLOCK]
                if inner % BLOCK:
                    b = inner // BLOCK
                    crcs[b] = crc32(os.pread(fd, inner - b * BLOCK, b * BLOCK))
                packed = struct.pack(f">{len(crcs)}I", *crcs)
                os.setxattr(fd, PENDING, packed)
                os.ftruncate(fd, inner)
                os.setxattr(fd, CRC, packed)
                os.removexattr(fd, PENDING)
        finally:
            os.close(fd)

    def count(self) -> int:
        """How many objects are stored (a walk of the tree: run it off the event loop)."""
        n = 0
        for _, _, files in os.walk(self.root):
            n += sum(1 for f in files if f.isdigit())
        return n

    def objects(self, fid: str) -> list[int]:
        try:
            return sorted(int(n) for n in os.listdir(self.dir(fid)) if n.isdigit())
        except FileNotFoundError:
            return []

    def delete(self, fid: str) -> None:
        shutil.rmtree(self.dir(fid), ignore_errors=True)

    def fences(self, fid: str) -> tuple[int, int]:
        """A file's fencing state as last persisted: (truncate epoch, replica-list version); (0, 0) if none."""
        try:
            raw = os.getxattr(self.dir(fid), FENCE)
        except OSError:
            return 0, 0
        epoch, xver = struct.unpack(">QQ", raw) if len(raw) == 16 else (0, 0)
        return int(epoch), int(xver)

    def set_fences(self, fid: str, epoch: int, xver: int) -> None:
        """Persist a file's fencing state before it takes effect: an OSD restarted after it refuses what it
        refused before (a write under a capability older than a truncate, or than the replica list)."""
        d = self.dir(fid)
        os.makedirs(d, exist_ok=True)
        fd = os.open(d, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            os.setxattr(fd, FENCE, struct.pack(">QQ", epoch, xver))
            os.fsync(fd)
        finally:
            os.close(fd)

    def fsync(self, fid: str) -> None:
        """Put a file's objects, and their names, on disk: one syncfs of the OSD's file system rather than an
        fsync per object, each of which was a journal commit (a 512 MiB file's 512 objects: 0.48 s)."""
        fd = os.open(self.dir(fid) if os.path.isdir(self.dir(fid)) else self.root, os.O_RDONLY | os.O_DIRECTORY)
        try:
            if _libc.syncfs(fd) != 0:
                err = ctypes.get_errno()
                raise OSError(err, f"syncfs: {os.strerror(err)}")
        finally:
            os.close(fd)
