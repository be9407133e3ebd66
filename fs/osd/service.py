"""The object storage device: a file's objects on local disk, byte ranges in and out, a capability per request.

Objects live at DIR/objects/<fid[:2]>/<fid>/<objno>, each with the CRC-32 of every 64 KiB block
in the extended attribute user.xos.crc32, so a bit flipped on disk is found on the next read and
the client reads another replica. Large aligned writes and large reads bypass the page cache
(O_DIRECT); a large read is made and sent by a worker thread, beside the event loop. Writes to a
replicated file arrive at the first replica's OSD (the primary), which forwards them to the others
and answers only when every live one has them.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import ctypes.util
import errno
import logging
import mmap
import os
import re
import shutil
import socket
import struct
import threading
import time
from dataclasses import dataclass
from typing import Any

import aiohttp
from aiohttp import web
from isal.isal_zlib import crc32  # zlib's CRC-32, 5x faster: 64 KiB in 6 us, not 30 (and 1 MiB in 95, not 324)

from xos._native._osd import ffi as _ffi
from xos._native._osd import lib as _osd
from xos.errors import (
    BadRequest,
    CapabilityInvalid,
    NoSpace,
    NoSuchFile,
    ObjectCorrupt,
    StaleCapability,
    Unavailable,
    XosError,
)
from xos.fs.auth import Authenticator, Identity
from xos.fs.capability import Capability, Verifier, service_token
from xos.vo.follow import RevocationFeeds
from xos.wire import lean as httpd
from xos.wire import server as wire_server
from xos.wire.codec import json_response, read_body

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
SERVICE_GRANT = 60.0  # seconds the native read threads take the MRC's service token on one check
SMALL = 256 << 10  # reads up to this size run on the event loop
DIRECT_MIN = 256 << 10  # aligned writes and threaded reads from this size on go around the page cache
ALIGN = 4096  # what O_DIRECT asks of offsets, lengths and buffers: a multiple of any logical block size


FID = re.compile(r"[0-9a-f]{8,64}")


def _fid(text: str) -> str:
    if not FID.fullmatch(text):
        raise BadRequest(f"bad file id {text[:70]!r}")
    return text


def _bytes(request: web.Request, name: str, default: int) -> int:
    """A byte count or offset from the query: a whole number within an object; BadRequest otherwise."""
    text = request.query.get(name)
    if text is None:
        return default
    # the length first: int() refuses more than 4,300 digits with a ValueError, which answered 500
    if len(text) > len(str(MAX_OBJECT)) or not text.isascii() or not text.isdigit() or int(text) > MAX_OBJECT:
        raise BadRequest(f"bad {name}={text[:20]!r}: a whole number of bytes up to {MAX_OBJECT}")
    return int(text)


def _objno(request: web.Request) -> int:
    """The object number from the path (the route lets only digits through); BadRequest if absurdly long."""
    text = request.match_info["objno"]
    if len(text) > 18:  # past any file's objects, and int() refuses more than 4,300 digits
        raise BadRequest(f"bad object number {text[:20]!r}...")
    return int(text)


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

        A cold 1 MiB object read through the page cache cost 0.7-1.0 ms of CPU here, most of it
        filling the cache and copying out of it; read directly and copied once, 0.3 ms."""
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


@dataclass
class OsdConfig:
    id: str
    dir: str
    listen: str
    url: str
    mrc: str
    secret: bytes
    trust: str
    vo_urls: tuple[str, ...] = ()  # VO services whose revocations are followed: their credentials refused


class OSD:
    """The OSD's request handlers and its heartbeat to the MRC."""

    def __init__(self, cfg: OsdConfig) -> None:
        self.cfg = cfg
        self.store = ObjectStore(cfg.dir)
        self.auth = Authenticator(cfg.trust, cfg.secret)
        self.caps = Verifier(cfg.secret)
        self.epochs: dict[str, int] = {}  # highest truncate epoch seen per file (persisted: store.fences)
        self.xvers: dict[str, int] = {}  # replica-list version the MRC fenced each file at (persisted too)
        self.writing: dict[str, int] = {}  # writes in progress per file
        self.quiet = asyncio.Condition()  # notified when a file has no write in progress
        self.reads: dict[str, float] = {}  # files read since the last heartbeat
        self.busy = 0
        self.fsyncs = 0  # fsync requests served: the files put on stable storage at a client's asking
        self.session: aiohttp.ClientSession | None = None

    def _check(self, request: web.Request, fid: str, write: bool) -> tuple[Identity, Capability | None]:
        return self._grant(request.headers.get("Authorization", ""), request.headers.get("X-Xos-Cap", ""), fid,
                           write, bool(request.headers.get("X-Xos-Forwarded")))

    def read_grant(self, authorization: str, cap_token: str, fid: str) -> float:
        """Until when (epoch seconds) a client sending these headers may read file `fid`; XosError if it may not."""
        who, cap = self._grant(authorization, cap_token, fid, write=False, forwarded=False)
        if cap is None:
            return time.time() + SERVICE_GRANT
        return min(who.exp, cap.exp)

    def _grant(self, authorization: str, cap_token: str, fid: str, write: bool,
               forwarded: bool) -> tuple[Identity, Capability | None]:
        who = self.auth.authorization(authorization, service_ok=True)
        if who.service:
            return who, None
        cap = self.caps.check(cap_token)
        if cap.fid != fid:
            raise CapabilityInvalid(f"capability is for file {cap.fid}, not {fid}")
        if cap.client != who.who:
            raise CapabilityInvalid(f"capability was issued to {cap.client}, not {who.who}")
        if not cap.allows(write):
            raise CapabilityInvalid(f"capability allows {cap.mode!r}, not {'writing' if write else 'reading'}")
        if write:
            self._load_fences(fid)
        if write and cap.epoch < self.epochs.get(fid, 0):
            raise StaleCapability(f"file {fid} was truncated since this capability was issued: open it again")
        # A write the primary already took under an older list is passed on whatever the list is now:
        # the MRC waits for those before it copies (see fence).
        if write and cap.xver < self.xvers.get(fid, 0) and not forwarded:
            raise StaleCapability(f"the replicas of file {fid} changed since this capability was issued")
        return who, cap

    def _load_fences(self, fid: str) -> None:
        """What a previous run of this OSD persisted of the file's fencing, once per run."""
        if fid not in self.epochs:
            epoch, xver = self.store.fences(fid)
            self.epochs[fid] = max(epoch, self.epochs.get(fid, 0))
            self.xvers[fid] = max(xver, self.xvers.get(fid, 0))

    def _fence(self, fid: str, epoch: int | None = None, xver: int | None = None) -> None:
        """Raise the file's fencing state, persisted first."""
        self._load_fences(fid)
        new_epoch = max(epoch or 0, self.epochs[fid])
        new_xver = max(xver or 0, self.xvers[fid])
        if (new_epoch, new_xver) != (self.epochs[fid], self.xvers[fid]):
            self.store.set_fences(fid, new_epoch, new_xver)
            self.epochs[fid], self.xvers[fid] = new_epoch, new_xver

    async def put(self, request: web.Request) -> web.Response:
        fid = _fid(request.match_info["fid"])
        objno = _objno(request)
        who, cap = self._check(request, fid, write=True)
        self.writing[fid] = self.writing.get(fid, 0) + 1  # counted from the check on: a fence waits for it
        self.busy += 1
        try:
            offset = _bytes(request, "off", 0)
            data = await request.read()
            if offset + len(data) > MAX_OBJECT:
                raise BadRequest(f"an object holds at most {MAX_OBJECT} bytes")
            forwards = [u for u in request.headers.get("X-Xos-Forward", "").split(",") if u]
            strangers = sorted(set(forwards) - set(cap.osds)) if cap is not None else []
            if strangers:  # a write goes on only to the file's replicas, as the MRC named them
                raise CapabilityInvalid(f"a write of {fid} is forwarded only to the OSDs of its replicas, which "
                                        f"its capability names; not to {', '.join(strangers)}")
            sends = [self._forward(u, request, fid, objno, offset, data) for u in forwards]
            results = await asyncio.gather(asyncio.to_thread(self.store.write, fid, objno, offset, data), *sends,
                                           return_exceptions=True)
        finally:
            self.busy -= 1
            self.writing[fid] -= 1
            if not self.writing[fid]:
                del self.writing[fid]
                async with self.quiet:
                    self.quiet.notify_all()
        if isinstance(results[0], BaseException):
            raise results[0]
        behind = [u for u, r in zip(forwards, results[1:], strict=True) if r is not True]
        if behind:  # stale from now on: the MRC drops them before this write is acknowledged
            await self._report_behind(fid, behind)
        return json_response({"written": len(data), "behind": behind})

    async def _report_behind(self, fid: str, urls: list[str]) -> None:
        """Tell the MRC that the replicas at `urls` missed a write of `fid` this OSD took (it drops them; they
        are rebuilt). A write nobody could mark so is refused: the client tries again."""
        assert self.session is not None
        headers = {"Authorization": f"Service {service_token(self.cfg.secret, 'osd:' + self.cfg.id)}"}
        try:
            async with self.session.post(f"{self.cfg.mrc}/v1/osds/behind", json={"osd": self.cfg.id, "fid": fid,
                                         "behind": urls}, headers=headers,
                                         timeout=aiohttp.ClientTimeout(total=10)) as resp:
                if resp.status == 200:
                    return
                why = f"HTTP {resp.status} {await resp.text()}"
        except (TimeoutError, aiohttp.ClientError, OSError) as e:
            why = str(e)
        raise Unavailable(f"replicas {', '.join(urls)} missed a write of {fid} and the MRC could not be told: {why}")

    async def _forward(self, url: str, request: web.Request, fid: str, objno: int, offset: int, data: bytes) -> bool:
        """Send a write on to another replica; whether it has it."""
        assert self.session is not None
        headers = {k: v for k, v in request.headers.items() if k in ("Authorization", "X-Xos-Cap")}
        headers["X-Xos-Forwarded"] = "1"
        try:
            async with self.session.put(f"{url}/v1/o/{fid}/{objno}", params={"off": str(offset)}, data=data,
                                        headers=headers, timeout=aiohttp.ClientTimeout(total=10)) as resp:
                if resp.status == 200:
                    return True
                log.warning("replica %s refused a write of %s/%s: HTTP %s", url, fid, objno, resp.status)
        except (TimeoutError, aiohttp.ClientError, OSError) as e:
            log.warning("replica %s unreachable for %s/%s: %s", url, fid, objno, e)
        return False

    async def get(self, request: web.Request) -> web.StreamResponse | httpd.Sent:
        fid = _fid(request.match_info["fid"])
        objno = _objno(request)
        self._check(request, fid, write=False)
        offset = _bytes(request, "off", 0)
        length = _bytes(request, "len", MAX_OBJECT)
        resp: web.StreamResponse | httpd.Sent
        self.busy += 1
        try:
            if length <= SMALL:  # a page-cache read of a few blocks costs less than the hop to a thread
                data = self.store.read(fid, objno, offset, length)
                resp = (web.Response(body=b"", headers={"X-Xos-Hole": "1"}) if data is None
                        else web.Response(body=data, content_type="application/octet-stream"))
            else:
                def answer() -> tuple[bytes | memoryview, list[tuple[str, str]]]:
                    data = self.store.read(fid, objno, offset, length, direct=True, copy=False)
                    if data is None:
                        return b"", [("X-Xos-Hole", "1")]
                    return data, [("Content-Type", "application/octet-stream")]

                resp = await httpd.reply_from_thread(request, answer)
        finally:
            self.busy -= 1
        self.reads[fid] = time.time()
        return resp

    async def listing(self, request: web.Request) -> web.Response:
        fid = _fid(request.match_info["fid"])
        self._check(request, fid, write=False)
        out = []
        for n in self.store.objects(fid):
            with contextlib.suppress(FileNotFoundError):
                out.append([n, os.stat(self.store.path(fid, n)).st_size])
        return json_response({"objects": out})

    async def truncate(self, request: web.Request) -> web.Response:
        fid = _fid(request.match_info["fid"])
        _who, cap = self._check(request, fid, write=True)
        body = await read_body(request)
        size, stripe = int(body["size"]), int(body["stripe_size"])
        # The epoch a client's truncate fences others with is the one the MRC signed into its capability,
        # never one it names itself (a huge one would refuse every other writer's capability for good).
        epoch = cap.epoch if cap is not None else int(body["epoch"])
        await asyncio.to_thread(self._fence, fid, epoch)
        await asyncio.to_thread(self.store.truncate, fid, size, stripe)
        return json_response({"size": size})

    async def fence(self, request: web.Request) -> web.Response:
        """The MRC's word that a file's replica list is now `xver`: writes under an older one are refused from
        now on, and the answer waits until those already taken are done everywhere they go."""
        fid = _fid(request.match_info["fid"])
        who = self.auth.request(request, service_ok=True)
        if not who.service:
            raise CapabilityInvalid("only the MRC fences files")
        body = await read_body(request)
        await asyncio.to_thread(self._fence, fid, None, int(body["xver"]))
        async with self.quiet:
            await self.quiet.wait_for(lambda: fid not in self.writing)
        return json_response({"xver": self.xvers[fid]})

    async def fsync(self, request: web.Request) -> web.Response:
        fid = _fid(request.match_info["fid"])
        self._check(request, fid, write=True)
        await asyncio.to_thread(self.store.fsync, fid)
        self.fsyncs += 1
        return json_response({})

    async def delete(self, request: web.Request) -> web.Response:
        fid = _fid(request.match_info["fid"])
        who = self.auth.request(request, service_ok=True)
        if not who.service:
            raise CapabilityInvalid("only the MRC deletes files")
        await asyncio.to_thread(self.store.delete, fid)
        self.epochs.pop(fid, None)
        self.xvers.pop(fid, None)
        return json_response({})

    def status(self) -> dict[str, Any]:
        st = os.statvfs(self.cfg.dir)
        return {"id": self.cfg.id, "url": self.cfg.url, "capacity": st.f_blocks * st.f_frsize,
                "free": st.f_bavail * st.f_frsize, "load": float(self.busy + _osd.xo_busy())}

    async def info(self, request: web.Request) -> web.Response:
        return json_response({**self.status(), "native_reads": int(_osd.xo_served()), "fsyncs": self.fsyncs,
                              "http": httpd.stats()})

    async def heartbeat(self) -> None:
        """Tell the MRC this OSD lives, its room and load, and which files were read, every second."""
        assert self.session is not None
        headers = {"Authorization": f"Service {service_token(self.cfg.secret, 'osd:' + self.cfg.id)}"}
        while True:
            self.reads.update(dict.fromkeys(native_reads(), time.time()))
            reads, self.reads = self.reads, {}
            try:
                async with self.session.post(f"{self.cfg.mrc}/v1/osds/heartbeat", json={**self.status(),
                                             "reads": reads}, headers=headers,
                                             timeout=aiohttp.ClientTimeout(total=5)) as resp:
                    if resp.status != 200:
                        log.warning("MRC refused the heartbeat: HTTP %s %s", resp.status, await resp.text())
            except (TimeoutError, aiohttp.ClientError, OSError) as e:
                self.reads.update(reads)
                log.info("MRC %s not reachable: %s", self.cfg.mrc, e)
            await asyncio.sleep(HEARTBEAT)


def make_app(osd: OSD) -> httpd.App:
    app = httpd.App(client_max_size=MAX_OBJECT + (1 << 20))
    app.router.add_put("/v1/o/{fid}/{objno:[0-9]+}", osd.put)
    app.router.add_get("/v1/o/{fid}/{objno:[0-9]+}", osd.get)
    app.router.add_get("/v1/o/{fid}", osd.listing)
    app.router.add_post("/v1/o/{fid}/truncate", osd.truncate)
    app.router.add_post("/v1/o/{fid}/fsync", osd.fsync)
    app.router.add_post("/v1/o/{fid}/fence", osd.fence)
    app.router.add_delete("/v1/o/{fid}", osd.delete)
    app.router.add_get("/v1/status", osd.info)
    return app


async def serve_osd(cfg: OsdConfig) -> None:
    """Run an OSD until SIGTERM or SIGINT: object reads on native threads, the rest on the event loop."""
    osd = OSD(cfg)
    app = make_app(osd)
    osd.session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=64))
    log.info("OSD %s serving %s on %s", cfg.id, cfg.dir, cfg.listen)

    async def revoked(taken: list[dict[str, Any]]) -> None:
        _osd.xo_forget()  # the native readers' grants: the next read of each asks again

    feeds = RevocationFeeds(list(cfg.vo_urls), osd.auth.trust, apply=revoked)
    osd.auth.revoked = feeds.revoked
    feeds.start()
    try:
        await wire_server.serve_tcp(app, cfg.listen, osd.heartbeat(), accept=lambda sock: NativeReads(osd, app, sock))
    finally:
        await feeds.stop()
        await osd.session.close()


# Object reads on native threads (native/osdread.c)

_native: NativeReads | None = None


class NativeReads:
    """The OSD's listening socket served by native threads: object GETs answered there, every other request
    (and every GET they give up on: a refusal, a missing file, a corrupt block) by `app` on the event loop."""

    def __init__(self, osd: OSD, app: httpd.App, sock: socket.socket) -> None:
        self.osd, self.app, self.sock = osd, app, sock
        self.loop = asyncio.get_running_loop()

    def __enter__(self) -> NativeReads:
        global _native
        if _native is not None:
            raise XosError("an OSD's native reads are already running in this process")
        err = _osd.xo_start(self.sock.fileno(), self.osd.store.root.encode(), int(self.osd.store.direct))
        if err:
            raise XosError(f"cannot start the native read threads: {os.strerror(-err)}")
        _native = self
        return self

    def __exit__(self, *exc: object) -> None:
        global _native
        _osd.xo_stop()
        _native = None

    def adopt(self, fd: int, prefix: bytes) -> None:
        """Take a connection the native threads gave up, in the loop."""
        try:
            sock = socket.socket(fileno=fd)
        except OSError:
            os.close(fd)
            return
        task = asyncio.ensure_future(httpd.adopt(self.app, sock, prefix))
        task.add_done_callback(_adopted)


def _adopted(task: asyncio.Future[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error("adopting a connection failed: %s", task.exception())


def native_reads() -> list[str]:
    """The files the native threads read since the last call."""
    out: list[str] = []
    buf = _ffi.new("char[]", 1 << 16)
    while True:
        n = _osd.xo_reads(buf, len(buf))
        raw = _ffi.unpack(buf, len(buf))
        out.extend(x.decode() for x in raw.split(b"\0")[:n])
        if n == 0 or len(out) > 100000:
            return out


@_ffi.def_extern(error=1)  # type: ignore[misc]
def xo_check(auth: Any, cap: Any, fid: Any, until: Any) -> int:
    """Whether a native thread may answer reads of `fid` for these headers, and until when."""
    reads = _native
    if reads is None:
        return 1
    try:
        until[0] = reads.osd.read_grant(_ffi.string(auth).decode("latin-1"), _ffi.string(cap).decode("latin-1"),
                                        _ffi.string(fid).decode())
    except Exception:  # the event loop's handler answers it, with the reason
        return 1
    return 0


@_ffi.def_extern()  # type: ignore[misc]
def xo_adopt(fd: int, buf: Any, n: int) -> None:
    """A native thread gives its connection to the event loop, with the bytes it has read of it."""
    prefix = bytes(_ffi.buffer(buf, n))
    reads = _native
    try:
        if reads is None:
            raise RuntimeError("stopped")
        reads.loop.call_soon_threadsafe(reads.adopt, fd, prefix)
    except RuntimeError:  # the loop is closed: the OSD is stopping
        os.close(fd)
