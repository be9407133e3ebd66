"""Directories on a mount: listings read through an open directory, from the MRC or, where they hold, from
the native table; and fsync of a directory."""

from __future__ import annotations

import os
import stat
import struct
import threading
import time
from typing import Any

from xos._native._fuse import ffi, lib
from xos.errors import XosError
from xos.fs.client.client import Client
from xos.fs.client.files import Dir

LIST_HERE = 1024  # the most names of a directory a listing takes from the table (larger ones: from the MRC)
# A listing the MRC gave this long ago is as good as a new one: a change elsewhere meanwhile is one whose answer
# could have taken that long to come (a lookup trusts a listing for the whole attribute TTL)
LIST_AGAIN = 0.005


class Listings:
    """The part of the mount that serves open directories."""

    c: Client
    _lock: threading.Lock
    _handles: dict[int, Any]
    _lately: set[int]  # directories leased here of late and not recalled

    def path(self, node: int) -> str:
        raise NotImplementedError  # the mount's

    def child(self, parent: int, name: Any) -> tuple[str, str]:
        raise NotImplementedError  # the mount's

    def _fill(self, node: int, listing: tuple[int, list[list[Any]]]) -> None:
        raise NotImplementedError  # the mount's

    def _handle(self, what: Any) -> int:
        raise NotImplementedError  # the mount's

    def send_made(self) -> None:
        raise NotImplementedError  # the mount's

    def _made_behind(self, node: int, node2: int) -> bool:
        raise NotImplementedError  # the mount's

    def _take_lease(self, node: int, path: str, lease: dict[str, Any] | None, dir_version: tuple[int, ...],
                    sent: float) -> None:
        raise NotImplementedError  # the made files'

    def opendir(self, req: Any, c: Any) -> None:
        # The listing is taken at the first readdir: a directory opened only to be a descriptor (fts's
        # openat base, fchdir; rm -rf opens each directory twice) costs the MRC nothing. The kernel checked
        # the read permission already.
        if lib.xf_reply_open(req, c.fi, self._handle(Dir(None)), 0) != 0:
            pass  # interrupted: no releasedir will come

    def _listed_here(self, node: int) -> list[list[Any]] | None:
        """Directory `node`'s rows (name, inode number, mode) as the table holds them while the directory is
        leased here, or its listing came from the MRC a moment ago (rm -rf reads each directory twice, back
        to back); None: ask the MRC."""
        names = ffi.new("char[]", LIST_HERE * 64)
        inos, modes = ffi.new("uint64_t[]", LIST_HERE), ffi.new("uint32_t[]", LIST_HERE)
        n = lib.xf_list(node, LIST_AGAIN, names, LIST_HERE * 64, inos, modes, LIST_HERE)
        if n < 0:
            return None
        raw = ffi.buffer(names, LIST_HERE * 64)[:].split(b"\0", n)[:n]  # not the zeros after them: 65,536 pieces
        return sorted(([os.fsdecode(raw[i]), inos[i], modes[i]] for i in range(n)), key=lambda r: str(r[0]))

    def _listing(self, node: int) -> tuple[int, list[list[Any]]]:
        """Directory `node`'s listing from the MRC, into the table. A directory this mount held a lease on of late,
        and was not asked to hand back, is leased again with it if the MRC grants it: rm -rf lists a directory,
        then removes every name in it, and each name removed then goes without a call."""
        path = self.path(node)
        if node not in self._lately:
            listing = self.c.listing(path)
            self._fill(node, listing)
            return listing
        sent = time.monotonic()
        listing, lease = self.c.leased_listing(path)
        self._fill(node, listing)
        self._take_lease(node, path, lease, (listing[0], listing[0]), sent)
        return listing

    def readdir(self, req: Any, c: Any) -> None:
        d = self._handles[c.fh]
        assert isinstance(d, Dir)
        if d.rows is None or c.off == 0:  # opened, or rewound: the listing as it is now
            rows = self._listed_here(c.node)
            if rows is None:
                if self._made_behind(c.node, 0):
                    self.send_made()  # skipped for it on the way in: the MRC's listing shows what was made here
                listing = self._listing(c.node)
                rows = listing[1]
            d.rows = rows
        out = bytearray()
        names = [(".", stat.S_IFDIR, 1), ("..", stat.S_IFDIR, 1)] if c.off < 2 else []
        first = max(c.off - 2, 0)
        i = c.off
        for name, mode, ino in names[c.off:] + [(r[0], r[2], r[1]) for r in d.rows[first:]]:
            raw = os.fsencode(name)
            size = 24 + len(raw)
            padded = (size + 7) & ~7
            if len(out) + padded > c.size:
                break
            i += 1
            out += struct.pack("<QQII", ino, i, len(raw), stat.S_IFMT(mode) >> 12) + raw + bytes(padded - size)
        lib.fuse_reply_buf(req, bytes(out), len(out))

    def _same_file(self, parent: int, name: Any, parent2: int, name2: Any) -> dict[str, Any] | None:
        """The attributes of the file two names are of, if they are of one (the table's inode numbers say so,
        the MRC's agree)."""
        a, b = ffi.new("struct xf_attr *"), ffi.new("struct xf_attr *")
        if not (lib.xf_peek(parent, name, a) and lib.xf_peek(parent2, name2, b) and a.ino == b.ino):
            return None
        try:
            one = self.c.op("getattr", path=self.child(parent, name)[0])
            return dict(one) if one["ino"] == self.c.op("getattr", path=self.child(parent2, name2)[0])["ino"] else None
        except XosError:
            return None

    def fsyncdir(self, req: Any, c: Any) -> None:
        """The names made and removed here are at the MRC, on its disk (every MRC change is, once answered)."""
        self.send_made()
        lib.fuse_reply_err(req, 0)

    def releasedir(self, req: Any, c: Any) -> None:
        with self._lock:
            self._handles.pop(c.fh, None)
        lib.fuse_reply_err(req, 0)

