"""Files made on a mount under a directory lease: the native loop makes them, and they go to the MRC in
batches, a call per directory, with what was written to them, their mode and their times when they were
used before the MRC heard of them (`Unborn`). The leases themselves are taken, recalled and handed back
here too."""

from __future__ import annotations

import base64
import logging
import os
import threading
import time
from typing import Any

from xos._native._fuse import ffi, lib
from xos.errors import Unavailable, XosError
from xos.fs.client.client import Client, Open
from xos.fs.layout import INLINE_MAX

log = logging.getLogger(__name__)

LEASE_MARGIN = 0.25  # a lease ends here this long before the MRC's term, which counts from later
MADE_BATCH = 512
MADE_BYTES = 512 << 10  # a call's worth of made files (content in base64): half of what the MRC takes (codec.MAX_BODY)
GATHER = 0.01  # seconds the sender lets files made here gather before it sends them: a batch per call


def wall_ns() -> int:
    """Now, in whole microseconds as nanoseconds: what the MRC's times carry exactly (as the native loop's)."""
    t = time.time_ns()
    return t - t % 1000


class Unborn:
    """A file made here under a directory lease and used before the MRC heard of it. What is written to it
    (up to the inline limit), its mode and its times stay here and go to the MRC with the file itself, a
    batch of files per call: cp, tar x and git write a file, set its times and mode and close it, and
    each of those would otherwise be a round trip. Once sent, the handle is opened at the MRC on its
    next use; until then `lock` orders the sender against the handle's writes."""

    def __init__(self, node: int, fh: int, attr: Any) -> None:
        self.node, self.fh, self.attr = node, fh, attr  # attr: struct xf_attr, as the kernel is told
        self.data = bytearray()
        self.lock = threading.Lock()
        self.sent = False  # on its way to the MRC or there: the handle must be opened there to go on
        self.lost = False  # the MRC did not take it (the lease had run out and the name was taken)
        self.closed = False

    def content(self) -> dict[str, Any]:
        """What goes to the MRC with the file (under `lock`)."""
        a = self.attr
        return {"inline": base64.b64encode(bytes(self.data)).decode(), "atime": a.atime_ns / 1e9,
                "mtime": a.mtime_ns / 1e9, "ctime": a.ctime_ns / 1e9}


class MadeHere:
    """The part of the mount that keeps files made here until the MRC has them."""

    c: Client
    ttl: float
    accounts: Any
    stopping: threading.Event
    _lock: threading.Lock
    _made_lock: threading.Lock
    _made_buf: Any
    _handles: dict[int, Any]
    _unborn: dict[int, Unborn]
    _leased: dict[int, int]

    def _fill(self, node: int, listing: tuple[int, list[list[Any]]]) -> None:
        raise NotImplementedError  # the mount's

    def _may_stay_here(self, c: Any) -> bool:
        """Whether request `c` is on a file made here that may not need the MRC."""
        if c.op in (lib.XF_WRITE, lib.XF_READ, lib.XF_FLUSH, lib.XF_RELEASE, lib.XF_FSYNC):
            return bool(c.fh & lib.XF_LOCAL_FH)
        if c.op in (lib.XF_GETATTR, lib.XF_SETATTR):
            u = self._unborn.get(c.node)
            return u is not None and not u.sent
        return False

    def _unborn_of(self, fh: int, node: int) -> Unborn | None:
        """The Unborn behind local handle `fh`: made on its first use while the file is still queued for
        the MRC (the sender holds the made lock while it sends, so a queued file is not half sent)."""
        what = self._handles.get(fh)
        if isinstance(what, Unborn) or what is not None or not fh & lib.XF_LOCAL_FH:
            return what if isinstance(what, Unborn) else None
        a = ffi.new("struct xf_attr *")
        with self._lock:  # the sender looks for Unborns under it, after it took the files from the queue
            u = None
            if fh not in self._handles and lib.xf_queued(node) and lib.xf_attr_of(node, a):
                u = self._handles[fh] = self._unborn[node] = Unborn(node, fh, a)
        if u is None:
            with self._made_lock:  # taken to be sent: the MRC has it once the sender lets go
                return None
        lib.xf_written(fh, 1)  # its FLUSH and RELEASE come here
        lib.xf_writers(node, 1)  # and its GETATTRs: its size and times are here
        return u

    def _set_here(self, req: Any, u: Unborn, c: Any) -> bool:
        """Apply a SETATTR to a file still here, and answer it: whether it could be."""
        a = u.attr
        if c.to_set & lib.FUSE_SET_ATTR_UID and c.uid not in (0xFFFFFFFF, a.uid):
            return False
        if c.to_set & lib.FUSE_SET_ATTR_GID and c.gid not in (0xFFFFFFFF, a.gid):
            return False
        if c.to_set & lib.FUSE_SET_ATTR_SIZE and c.size > INLINE_MAX:
            return False
        if any(abs(t) >= (1 << 40) * 10**9 for t in (c.atime_ns, c.mtime_ns)):  # past what the MRC takes with a file
            return False
        with u.lock:
            if u.sent or u.lost:
                return False
            now = wall_ns()
            if c.to_set & lib.FUSE_SET_ATTR_MODE:
                a.mode = (a.mode & ~0o7777) | (c.mode & 0o7777)
            if c.to_set & lib.FUSE_SET_ATTR_ATIME:
                a.atime_ns = now if c.atime_ns == -1 else (c.atime_ns + 500) // 1000 * 1000
            if c.to_set & lib.FUSE_SET_ATTR_MTIME:
                a.mtime_ns = now if c.mtime_ns == -1 else (c.mtime_ns + 500) // 1000 * 1000
            if c.to_set & lib.FUSE_SET_ATTR_SIZE:  # as the MRC truncates: the mtime is the change's time
                del u.data[c.size:]
                u.data.extend(bytes(c.size - len(u.data)))
                a.size, a.mtime_ns = c.size, now
            a.ctime_ns = now
            lib.xf_reply_attr(req, c.node, a, self.ttl, 0)
        return True

    def _write_here(self, req: Any, u: Unborn, c: Any) -> bool:
        """Write into a file still here, and answer: whether it could be (it stays within the inline limit)."""
        end = c.off + c.len
        with u.lock:
            if u.sent or u.lost or end > INLINE_MAX:
                return False
            if c.off > len(u.data):
                u.data.extend(bytes(c.off - len(u.data)))
            u.data[c.off:end] = ffi.buffer(c.buf, c.len)
            u.attr.size = len(u.data)
            u.attr.mtime_ns = u.attr.ctime_ns = wall_ns()
        lib.fuse_reply_write(req, c.len)
        return True

    def _take_lease(self, node: int, path: str, st: Open, sent: float) -> None:
        """Use the lease a create brought on directory `node`: the native loop answers absent names there
        and makes files there itself, once the table holds the directory's listing as it is now."""
        lease = st.lease
        if not lease or not lease.get("term"):
            return
        had = ffi.new("uint64_t *")
        if not lib.xf_listing(node, had) or len(st.dir_version) != 2 or had[0] != st.dir_version[1]:
            self._fill(node, self.c.listing(path))  # the lease holds the names still: this listing is whole
        lo, hi = lease.get("inos") or (0, 0)
        self._leased[lease["dir"]] = node
        lib.xf_lease(node, lease["dir"], sent + lease["term"] - LEASE_MARGIN, self.accounts.gid, lo, hi)

    def send_made(self) -> None:
        """Tell the MRC about the files made here, in the order they were made, a call per directory."""
        with self._made_lock:
            while n := lib.xf_take_made(self._made_buf, MADE_BATCH, 0):
                batches: dict[tuple[int, int], list[tuple[str, int, int, float, int]]] = {}
                for m in self._made_buf[0:n]:
                    batches.setdefault((m.dir_ino, m.dir_node), []).append(
                        (os.fsdecode(ffi.string(m.name)), m.ino, m.mode, m.time_ns / 1e9, m.node))
                for (dir_ino, dir_node), files in batches.items():
                    self._send_batch(dir_ino, dir_node, files)

    def _described(self, f: tuple[str, int, int, float, int]) -> list[Any]:
        """A made file as the MRC takes it: with its content, mode and times if it was used here."""
        with self._lock:
            u = self._unborn.get(f[4])
        if u is None:
            return list(f[:4])
        with u.lock:
            u.sent = True
            return [f[0], f[1], u.attr.mode, f[3], u.content()]

    def _send_batch(self, dir_ino: int, dir_node: int, files: list[tuple[str, int, int, float, int]]) -> None:
        """Send files made in one directory, in calls that stay well within what the MRC takes in one body."""
        described = [self._described(f) for f in files]
        start, size = 0, 0
        for i, d in enumerate(described):
            more = 300 + (len(d[4]["inline"]) if len(d) == 5 else 0)
            if i > start and size + more > MADE_BYTES:
                self._send_part(dir_ino, dir_node, files[start:i], described[start:i])
                start, size = i, 0
            size += more
        self._send_part(dir_ino, dir_node, files[start:], described[start:])

    def _send_part(self, dir_ino: int, dir_node: int, files: list[tuple[str, int, int, float, int]],
                   described: list[list[Any]]) -> None:
        deadline = time.monotonic() + self.c.deadline
        while True:
            try:
                r = self.c.op("made", dir=dir_ino, files=described)
                break
            except Unavailable as e:
                if time.monotonic() < deadline and not self.stopping.is_set():
                    time.sleep(0.2)
                    continue
                r, err = {"made": {}, "refused": {}}, str(e)
            except XosError as e:
                r, err = {"made": {}, "refused": {}}, str(e)
            log.error("files made here in directory %d are lost, the MRC did not take them: %s", dir_ino, err)
            break
        for name, _, _, _, node in files:
            lib.xf_confirm(node, r["made"].get(name, 0))
            u = self._unborn.get(node)
            if u is not None:
                u.lost = name not in r["made"]
                if u.closed:
                    with self._lock:
                        self._unborn.pop(node, None)
        for name, code in r["refused"].items():
            log.error("file %s made here in directory %d is lost (%s): the lease had run out", name, dir_ino, code)
        if len(r.get("dir_version") or ()) == 2:
            lib.xf_advance(dir_node, *r["dir_version"])
        # The directory's times need no refresh: each create here set them to the file's time, which the MRC
        # took as the directory's too (asking again cut creates across 10 directories from 15,900/s to 1,100).

    def sender(self) -> None:
        """Send files made here as they come, a few milliseconds' worth at a time."""
        while not self.stopping.is_set():
            if lib.xf_take_made(ffi.NULL, 0, 0.5):
                time.sleep(GATHER)
                self.send_made()

    def recaller(self) -> None:
        """Hand back the directories the MRC recalls: made files first, so whoever waits finds them."""
        while not self.stopping.is_set():
            try:
                dirs = self.c.op("recalls")["dirs"]
                if dirs:
                    self.hand_back(dirs)
            except XosError as e:
                log.warning("directory leases: %s", e)
                self.stopping.wait(0.5)

    def hand_back(self, dirs: list[int]) -> None:
        for ino in dirs:
            node = self._leased.pop(ino, None)
            if node is not None:
                lib.xf_lease(node, ino, 0, 0, 0, 0)
        self.send_made()
        self.c.op("hand_back", dirs=dirs)

    def stop(self) -> None:
        """Unmounted: what was made here goes to the MRC, the leases back to it."""
        self.stopping.set()
        self.send_made()
        if self._leased:
            try:
                self.hand_back(list(self._leased))
            except XosError as e:
                log.warning("directory leases not handed back (they run out): %s", e)
