"""Open files on a mount: handles, reads and writes through the client (or the native loop straight from the
OSDs), flush, fsync and the close that commits a file's size at the MRC."""

from __future__ import annotations

import errno
import logging
import os
import stat
import threading
import time
from typing import Any

from xos._native._fuse import ffi, lib
from xos.errors import XosError
from xos.fs.client.client import Open, errno_of
from xos.fs.client.delegated import Delegated
from xos.fs.client.made import MadeHere, Unborn

LEASE_INOS = 4096  # inode numbers asked for with a lease when fewer than half of these are left
# Requests that may change a file the MRC delegated here (OpenFiles._forget_changed)
CHANGES = frozenset((lib.XF_SETATTR, lib.XF_UNLINK, lib.XF_RENAME, lib.XF_LINK, lib.XF_SETXATTR, lib.XF_REMOVEXATTR))

log = logging.getLogger(__name__)
HIDDEN = ".fuse_hidden"  # where a file unlinked while open here lives until its last close


class Dir:
    """An open directory: its listing as of its first readdir (rows: name, then LISTING; None before), which
    readdir pages through."""

    def __init__(self, rows: list[list[Any]] | None) -> None:
        self.rows = rows


class OpenFiles(MadeHere):
    """The part of the mount that serves open files."""

    sync_close: bool
    _next: int
    _adopting: threading.Lock
    _plans: dict[int, set[int]]
    _hidden: dict[int, list[str]]
    _hidden_gone: threading.Condition  # notified when a file moved aside here is removed at its last close
    _unhiding: set[int]  # files whose names moved aside a last close is removing (under _hidden_gone)
    _reading: set[int]
    delegated: Delegated

    def path(self, node: int) -> str:
        raise NotImplementedError  # the mount's

    def _dirs_now(self, nodes: tuple[int, ...], r: dict[str, Any]) -> None:
        raise NotImplementedError  # the mount's

    def child(self, parent: int, name: Any) -> tuple[str, str]:
        raise NotImplementedError  # the mount's

    def _attr(self, a: dict[str, Any], out: Any = None) -> Any:
        raise NotImplementedError  # the mount's

    def _open_size(self, a: dict[str, Any]) -> dict[str, Any]:
        raise NotImplementedError  # the mount's

    def _handle(self, what: Open | Dir) -> int:
        with self._lock:
            fh = self._next
            self._next += 1
            self._handles[fh] = what
            return fh

    def _file(self, fh: int, node: int) -> Open:
        what = self._handles.get(fh)
        if (what is None and fh & lib.XF_LOCAL_FH) or isinstance(what, Unborn):
            what = self._adopt(fh, node)
        if not isinstance(what, Open):
            raise OSError(errno.EBADF, "no such open file")
        return what

    def _adopt(self, fh: int, node: int) -> Open:
        """The Open behind a handle the native loop gave out for a file it made under a lease, opened at
        the MRC the first time it needs the MRC (the file is sent there first if it is still here)."""
        with self._adopting:
            what = self._handles.get(fh)
            if isinstance(what, Open):
                return what
            if isinstance(what, Unborn):
                # Sent or not, the MRC must have it before it is opened there: a file the sender has taken
                # and is sending is not there yet (opened meanwhile, the write failed with ENOENT).
                self.send_made()
                if what.lost:
                    raise OSError(errno.EIO, "this file was lost: the MRC did not take it")
            st = self.c.open_handle(self.path(node), True)
            self._unplan(st.ino)
            with self._lock:
                self._handles[fh] = st
                if isinstance(what, Unborn):  # an open file like any other from now
                    self._unborn.pop(node, None)
            if not isinstance(what, Unborn):  # an Unborn's handle comes here and counts as a writer already
                lib.xf_written(fh, 1)  # its FLUSH and RELEASE come here from now on
                lib.xf_writers(node, 1)
            return st

    # reads straight from the OSDs

    def _plan(self, fh: int, st: Open) -> bool:
        """Let the native loop serve reads of read-only handle `fh` from the OSDs itself; whether it does."""
        if st.write or st.inline is not None or st.xloc is None or not st.xloc.replicas:
            return False
        replica = st.xloc.replicas[min(st.prefer, len(st.xloc.replicas) - 1)]
        osds = [st.xloc.urls.get(o, "").partition("//")[2] for o in replica.osds]
        if not all(osds):
            return False
        headers = "".join(f"{k}: {v}\r\n" for k, v in self.c._osd_headers(st).items())
        if lib.xf_plan(fh, st.fid.encode(), headers.encode(), st.size, st.xloc.striping.size,
                       b"".join(o.encode() + b"\0" for o in osds), len(osds)) != 0:
            return False
        with self._lock:
            self._plans.setdefault(st.ino, set()).add(fh)
        return True

    def _unplan(self, ino: int) -> None:
        """Every handle on inode `ino` reads through Python again: its bytes may be here, not at the OSDs."""
        with self._lock:
            fhs = self._plans.pop(ino, set())
        for fh in fhs:
            lib.xf_unplan(fh)

    def create(self, req: Any, c: Any) -> None:
        path, _ = self.child(c.node, c.name)
        sent = time.monotonic()
        try:
            st = self.c.create_handle(path, c.mode & 0o7777, lease=not self.sync_close,
                                      inos=lib.xf_lease_left(c.node) < LEASE_INOS // 2)
        except XosError as e:  # created meanwhile elsewhere, and the caller did not ask for O_EXCL
            if errno_of(e) != errno.EEXIST or c.flags & os.O_EXCL:
                raise
            st = self.c.open_handle(path, True)
            if c.flags & os.O_TRUNC and st.size:
                self.c.truncate(path, 0, st.ino)
                self._resized(st)
        fh = self._handle(st)
        self._unplan(st.ino)  # an existing file opened to write (not O_EXCL)
        lib.xf_touch_dir(c.node, 0)
        if len(st.dir_version) == 2:  # the listing here, if it was current, is current with the new name
            lib.xf_advance(c.node, *st.dir_version)
        self._take_lease(c.node, os.path.dirname(path), st.lease, st.dir_version, sent)
        if not lib.xf_reply_create(req, c.node, c.name, self._attr(st.attrs), self.ttl, c.fi, fh):
            self._close(fh, 0)  # not created, or interrupted: no release will come for it

    def open(self, req: Any, c: Any) -> None:
        write = (c.flags & os.O_ACCMODE) != os.O_RDONLY
        path = self.path(c.node)
        st = self.c.open_handle(path, True) if write else self._open_to_read(path, c.node)
        if c.flags & os.O_TRUNC and write and st.size:
            self.c.truncate(path, 0, st.ino)
            self._resized(st)
        elif st.refs == 1:  # close-to-open: what another mount wrote shows here
            lib.xf_opened(c.node, self._attr(st.attrs), self.ttl)
        fh = self._handle(st)
        direct = False
        if write:
            self._unplan(st.ino)
            lib.xf_writers(c.node, 1)
        else:  # read around the page cache where the native loop fetches ahead itself (gridfuse.c)
            with self._lock:
                self._reading.add(fh)
            direct = self._plan(fh, st) and bool(lib.xf_direct_reads())
        if lib.xf_reply_open(req, c.fi, fh, int(direct)) != 0:
            self._close(fh, c.node)

    def _open_to_read(self, path: str, node: int) -> Open:
        """What the MRC delegated to this mount of the file, if it still holds it (no call), else the MRC's
        answer, kept if it delegates the file (tar, diff and git open the same files one after another)."""
        known = ffi.new("struct xf_attr *")
        r = self.delegated.get(known.ino, path) if lib.xf_attr_of(node, known) else None
        if r is None:
            mark, sent = self.delegated.mark(), time.monotonic()
            r = self.c.open_answer(path, delegate=True)
            self.delegated.keep(r, path, sent, mark)
        return self.c.adopt(path, r, False)

    def _forget_changed(self, c: Any) -> None:
        """Before a change made here, forget what was kept of the delegated files it may change: the MRC
        recalls only other mounts' delegations. A directory changed here needs nothing forgotten: the kernel
        checks its mode as it is now on the way to a file (default_permissions), and a file kept by a path
        through it that was renamed is not found by the path it has now. A file not known here forgets all."""
        if not len(self.delegated):
            return
        known = ffi.new("struct xf_attr *")
        if c.op in (lib.XF_UNLINK, lib.XF_RENAME):  # the files named: a name not known names no file kept by
            for parent, name in ((c.node, c.name), (c.node2, c.name2))[:2 if c.op == lib.XF_RENAME else 1]:
                node = lib.xf_node_of(parent, name)  # a path here (only its link count changes)
                if node and lib.xf_attr_of(node, known) and not stat.S_ISDIR(known.mode):
                    self.delegated.drop(known.ino)
        elif not lib.xf_attr_of(c.node, known):
            self.delegated.drop_all()
        elif not stat.S_ISDIR(known.mode):
            self.delegated.drop(known.ino)

    def read(self, req: Any, c: Any) -> None:
        u = self._unborn_of(c.fh, c.node)
        if u is not None:
            with u.lock:
                if not u.sent and not u.lost:
                    data = bytes(u.data[c.off:c.off + c.size])
                    lib.fuse_reply_buf(req, data, len(data))
                    return
        st = self._file(c.fh, c.node)
        data = self.c.read(st, c.size, c.off)
        lib.fuse_reply_buf(req, data, len(data))
        if c.fh in self._plans.get(st.ino, ()):  # the native loop gave this read up: perhaps a renewed capability
            self._plan(c.fh, st)

    @staticmethod
    def _resized(st: Open) -> None:
        """A file open here was written or truncated: its other names are other nodes here (and in the kernel),
        whose attributes are asked for again."""
        if st.attrs.get("nlink", 1) > 1:
            lib.xf_stale_ino(st.ino)

    def write(self, req: Any, c: Any) -> None:
        u = self._unborn_of(c.fh, c.node)
        if u is not None and self._write_here(req, u, c):
            return
        lib.xf_written(c.fh, 1)  # before the reply: the close after it must come here to flush
        st = self._file(c.fh, c.node)
        n = self.c.write(st, ffi.unpack(c.buf, c.len), c.off)
        self._resized(st)
        lib.fuse_reply_write(req, n)

    def flush(self, req: Any, c: Any) -> None:
        st = self._handles.get(c.fh)  # an Unborn's is nothing: it goes to the MRC whole, with the others
        if isinstance(st, Open) and st.write:
            if self.sync_close:
                self.c.fsync(st)
            else:
                self.c.flush(st)
            lib.xf_forget_attr(c.node)
        lib.fuse_reply_err(req, 0)

    def fsync(self, req: Any, c: Any) -> None:
        what = self._handles.get(c.fh)
        if c.fh & lib.XF_LOCAL_FH and not isinstance(what, Open):
            self.send_made()  # made at the MRC, durably, with whatever was written here
            if isinstance(what, Unborn):
                if what.lost:
                    raise OSError(errno.EIO, "this file was lost: the MRC did not take it")
                lib.fuse_reply_err(req, 0)
                return
        self.c.fsync(self._file(c.fh, c.node), bool(c.datasync))
        lib.fuse_reply_err(req, 0)

    def _close(self, fh: int, node: int) -> None:
        lib.xf_written(fh, 0)
        lib.xf_unplan(fh)
        with self._lock:
            st = self._handles.pop(fh, None)
            if isinstance(st, Open):
                self._plans.get(st.ino, set()).discard(fh)
            # the Open is shared: written through another handle, it says so, but this one counted no writer
            wrote = fh not in self._reading
            self._reading.discard(fh)
        if isinstance(st, Unborn):
            with st.lock:
                st.closed = True
                if not st.sent:  # what the kernel may be told of it until it is sent: as it is here
                    lib.xf_set_attr(st.node, st.attr, self.ttl)
                else:
                    lib.xf_forget_attr(st.node)
                    with self._lock:
                        self._unborn.pop(st.node, None)
                lib.xf_writers(st.node, -1)
            return
        if not isinstance(st, Open):
            return
        try:  # its size and times as the MRC now has them, asked for again: forgotten before it counts as closed
            self.c.release(st, committed=lambda: lib.xf_forget_attr(node))
        finally:
            if st.write and wrote:
                lib.xf_writers(node, -1)
            with self._hidden_gone:  # two last closes at once (the kernel's RELEASEs come on any ring): one unlinks
                hidden = self._hidden.get(st.ino)
                if hidden is not None and (self.c.opened(st.ino) is not None or st.ino in self._unhiding):
                    hidden = None
                if hidden is not None:
                    self._unhiding.add(st.ino)
            if hidden is not None:
                try:
                    for h in hidden:
                        self.c.unlink(h)
                finally:
                    with self._hidden_gone:
                        del self._hidden[st.ino]
                        self._unhiding.discard(st.ino)
                        self._hidden_gone.notify_all()

    def _adopt_local(self, node: int) -> None:
        """The handles the native loop gave out on a file it made, on `node`, Python's from now: adopting one
        opens the file by the node's path, which a change of names is about to take from it."""
        if not node:
            return
        fhs = ffi.new("uint64_t[64]")
        for i in range(lib.xf_local_handles(node, fhs, 64)):
            self._file(fhs[i], node)
        u = self._unborn.get(node)
        if u is not None and not u.closed:
            self._file(u.fh, node)

    def _hide(self, parent: int, name: Any, path: str) -> tuple[bool, Any]:
        """If the file at `path` is open here, move it aside, each of its names apart (its data must outlive its
        names until the last close, as libfuse's high level does it): (whether it was, what the table knew)."""
        self._adopt_local(lib.xf_node_of(parent, name))
        known = ffi.new("struct xf_attr *")
        ino = known.ino if lib.xf_peek(parent, name, known) else None
        if ino is None and self.c._opens:
            try:
                ino = self.c.op("getattr", path=path)["ino"]
            except XosError as e:
                if errno_of(e) != errno.ENOENT:
                    raise
        if ino is None or self.c.opened(ino) is None or os.path.basename(path).startswith(HIDDEN):
            return False, known
        kept = self._hidden.get(ino, [])
        hidden = f"{os.path.dirname(path).rstrip('/')}/{HIDDEN}{ino:016x}.{len(kept)}"
        self._dirs_now((parent,), self.c.rename(path, hidden))
        self._hidden[ino] = kept + [hidden]
        self._moved(path, hidden)
        return True, known

    def _moved(self, old: str, new: str) -> None:
        for st in self._handles.values():
            if isinstance(st, Open):
                if st.path == old:
                    st.path = new
                elif st.path.startswith(old + "/"):
                    st.path = new + st.path[len(old):]

    def _hidden_in(self, prefix: str) -> bool:
        """Whether a file unlinked while open here was moved aside to a path starting with `prefix`."""
        return any(h.startswith(prefix) for kept in list(self._hidden.values()) for h in kept)

    def release(self, req: Any, c: Any) -> None:
        self._close(c.fh, c.node)
        lib.fuse_reply_err(req, 0)

