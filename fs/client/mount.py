"""The FUSE mount of a volume: libfuse's low-level loop in native code (native/fs/gridfuse.c), POSIX calls
onto the Client here.

The native loop answers the kernel's lookups and getattrs of what this mount saw within the
attribute TTL, and its forgets; every other request comes to `GridFS` by node id, which the native
table turns into a path. Only errno values leave this layer. Locks (flock, fcntl) are left to the
kernel, which keeps them among the processes of this mount. Files are owned by grid identities and
shown as the accounts they map to here: the mounting identity as the mounting user, others by their
`user.vo` account when this node has one, else as nobody.
"""

from __future__ import annotations

import errno
import logging
import os
import stat
import threading
import time
from collections.abc import Callable
from typing import Any

from xos._native._fuse import ffi, lib
from xos.errors import XosError
from xos.fs.client.accounts import Accounts
from xos.fs.client.client import Client, Open, errno_of, row_attrs
from xos.fs.client.delegated import Delegated
from xos.fs.client.dirs import Listings
from xos.fs.client.files import CHANGES, HIDDEN, Dir, OpenFiles
from xos.fs.client.made import MADE_BATCH, Unborn
from xos.fs.layout import ALSO
from xos.wire import hostid

log = logging.getLogger(__name__)

IO_SIZE = 1 << 20
ATTR_TTL = 1.0
HOT = 8  # misses in one directory within a TTL that make it worth listing whole
RECENT = 10.0  # seconds a directory counts as in use here after its listing was last needed
MAX_PATH = 1 << 20  # the longest path inside a volume this mount passes on
RELEASE_WAIT = 2.0  # seconds an rmdir waits for the RELEASE of a file moved aside in the directory
ANSWER_TRIES = 8  # a lookup or getattr asks the MRC again while changes made here overtake its answers

_tl = threading.local()


def interrupted() -> bool:
    """Whether the kernel interrupted the FUSE request this thread serves (its caller got a signal)."""
    req = getattr(_tl, "req", None)
    return req is not None and bool(lib.fuse_req_interrupted(req))


class Overtaken(Exception):
    """A change made here overtook the MRC's answer to this request: it is asked again."""


class GridFS(OpenFiles, Listings):
    """The requests the native loop passes on, by node id."""

    def __init__(self, client: Client, accounts: Accounts, ttl: float = ATTR_TTL, sync_close: bool = False) -> None:
        self.c = client
        # close() as fsync(): files are made at the MRC, not under a directory lease (batched after their close)
        self.sync_close = sync_close
        client.interrupted = interrupted
        client.checked = True  # default_permissions: the kernel checks the mode bits first
        self.accounts, self.ttl = accounts, ttl
        self._handles: dict[int, Open | Dir | Unborn] = {}
        self._reading: set[int] = set()  # handles open to read only: their Open is the file's, shared with writers
        self._unborn: dict[int, Unborn] = {}  # node -> a file made here, used, and still open or unsent
        self._hidden: dict[int, list[str]] = {}  # ino -> where the names of a file unlinked while open went
        self._hidden_gone = threading.Condition()
        self._unhiding: set[int] = set()  # files whose names moved aside a last close is removing
        self._next = 1
        self._lock = threading.Lock()
        self._misses: dict[int, tuple[float, int]] = {}
        self._recent: dict[int, float] = {}  # directory node -> when its listing was last needed, oldest first
        self._recent_lock = threading.Lock()
        self._leased: dict[int, int] = {}  # directory inode number -> its node, while leased here
        self._lately: set[int] = set()
        self._lease_lock = threading.Lock()
        self._renumbered: dict[int, int] = {}
        self._made_lock = threading.Lock()  # files made here go to the MRC in the order they were made
        self._made_buf = ffi.new("struct xf_made[]", MADE_BATCH)
        self._adopting = threading.Lock()
        self.stopping = threading.Event()
        self._plans: dict[int, set[int]] = {}  # inode number -> handles the native loop reads for from OSDs
        self.delegated = Delegated()  # files the MRC delegated here: opened again to read without a call
        client.changed = self.delegated.drop
        lib.xf_owner(accounts.uid)
        self.ops: dict[int, Callable[[Any, Any], None]] = {
            lib.XF_LOOKUP: self.lookup, lib.XF_GETATTR: self.getattr, lib.XF_SETATTR: self.setattr,
            lib.XF_READLINK: self.readlink, lib.XF_MKNOD: self.mknod, lib.XF_MKDIR: self.mkdir,
            lib.XF_UNLINK: self.unlink, lib.XF_RMDIR: self.rmdir, lib.XF_SYMLINK: self.symlink,
            lib.XF_RENAME: self.rename, lib.XF_LINK: self.link, lib.XF_OPEN: self.open, lib.XF_READ: self.read,
            lib.XF_WRITE: self.write, lib.XF_FLUSH: self.flush, lib.XF_RELEASE: self.release,
            lib.XF_FSYNC: self.fsync, lib.XF_OPENDIR: self.opendir, lib.XF_READDIR: self.readdir,
            lib.XF_RELEASEDIR: self.releasedir, lib.XF_STATFS: self.statfs, lib.XF_SETXATTR: self.setxattr,
            lib.XF_GETXATTR: self.getxattr, lib.XF_LISTXATTR: self.listxattr,
            lib.XF_REMOVEXATTR: self.removexattr, lib.XF_CREATE: self.create, lib.XF_FSYNCDIR: self.fsyncdir}

    def dispatch(self, req: Any, c: Any) -> None:
        """Serve one request; every failure becomes its errno (and a log line when it is ours)."""
        _tl.req = req
        try:
            # Whatever this asks the MRC, it knows the changes made here first where its answer shows them: those
            # queued, and those the sender is sending (it holds the lock until the MRC has them). A request on a
            # file made here that it may serve alone sends them only if it goes to the MRC after all.
            if not self._may_stay_here(c) and self._made_behind(c.node, c.node2 if c.op in (lib.XF_RENAME, lib.XF_LINK)
                                                                 else 0):
                self.send_made()
            if c.op in CHANGES:
                self._forget_changed(c)
            self._answer(req, c)
        except XosError as e:
            err = errno_of(e)
            if err == errno.EIO:  # the file system failed, not the caller: say why
                log.warning("%s: %s", self.ops[c.op].__name__, e)
            lib.fuse_reply_err(req, err)
        except Exception as e:  # a bug must show as EIO and a log line, not kill the mount
            if not isinstance(e, OSError):
                log.exception("%s failed", self.ops[c.op].__name__)
            lib.fuse_reply_err(req, errno_of(e))
        finally:
            _tl.req = None

    # helpers

    def _answer(self, req: Any, c: Any) -> None:
        """Serve a request telling what the MRC holds, again while a change made here (a close that sent a new
        size) overtook the MRC's answer: told to the kernel, that answer would undo the change there."""
        if c.op not in (lib.XF_LOOKUP, lib.XF_GETATTR, lib.XF_READDIR):
            return self.ops[c.op](req, c)
        for _ in range(ANSWER_TRIES - 1):
            lib.xf_begin()
            try:
                self.ops[c.op](req, c)
                return
            except Overtaken:
                continue
            finally:
                lib.xf_end()
        self.ops[c.op](req, c)  # unchecked: what the MRC says now, after that many changes to this one file

    def _made_behind(self, node: int, node2: int) -> bool:
        """Whether a request about `node` (and `node2`) must wait for changes made here to reach the MRC: queued
        ones its answer shows, or ones the sender took and the MRC has not answered for yet (until then the
        sender holds its lock, which send_made waits for)."""
        return bool(lib.xf_made_touches(node, node2))

    def _attr(self, a: dict[str, Any], out: Any = None) -> Any:
        x = out if out is not None else ffi.new("struct xf_attr *")
        x.ino, x.mode, x.nlink, x.size = a["ino"], a["mode"], a["nlink"], a["size"]
        x.uid, x.gid = self.accounts.uid_of(a["owner"]), self.accounts.gid_of(a["group"])
        x.atime_ns, x.mtime_ns, x.ctime_ns = _ns(a["atime"]), _ns(a["mtime"]), _ns(a["ctime"])
        x.rdev = a.get("rdev", 0)
        return x

    def _open_size(self, a: dict[str, Any]) -> dict[str, Any]:
        """A file's attributes as the MRC gave them, as they are here if it is open here: the size written, and
        the names it was unlinked under while open (kept aside until its last close) not counted as links."""
        st = self.c.opened(a["ino"])
        if st is None:
            return a
        return {**a, "size": st.size, "nlink": max(0, a["nlink"] - len(self._hidden.get(a["ino"], ())))}

    def path(self, node: int) -> str:
        size = 4096
        while True:  # a path from a deep working directory may be longer than PATH_MAX from the root
            buf = ffi.new("char[]", size)
            n = lib.xf_path(node, buf, size)
            if n != -errno.ENAMETOOLONG or size >= MAX_PATH:
                break
            size *= 4
        if n < 0:
            raise OSError(-n, os.strerror(-n))
        return os.fsdecode(ffi.string(buf, n))

    def child(self, parent: int, name: Any) -> tuple[str, str]:
        """(path, name) of `name` in directory node `parent`."""
        n = os.fsdecode(ffi.string(name))
        base = self.path(parent)
        return (base + n if base == "/" else f"{base}/{n}"), n

    def _fill(self, node: int, listing: tuple[int, list[list[Any]]]) -> None:
        """Tell the native table that directory `node` holds exactly these entries (a version and rows)."""
        version, rows = listing
        uid, gid = self.accounts.uid_of, self.accounts.gid_of
        here = [self._open_size({"ino": r[1], "nlink": r[6], "size": r[5]}) for r in rows]  # (under any name)
        attrs = ffi.new("struct xf_attr[]", [
            (r[1], r[2], h["nlink"], uid(r[3]), gid(r[4]), h["size"], _ns(r[7]), _ns(r[8]), _ns(r[9]), r[12])
            for r, h in zip(rows, here, strict=True)] or 1)
        names = b"".join(os.fsencode(r[0]) + b"\0" for r in rows)
        lib.xf_fill(node, names, attrs, len(rows), self.ttl, version)
        self._misses.pop(node, None)
        self._used(node)

    def _revalidated(self, node: int, path: str) -> bool:
        """Whether directory `node`'s listing in the table holds now, refreshed for a TTL: the MRC says
        nothing it shows changed since (one small call instead of the listing). False if the table has
        no listing of it or it changed (a create loop changes it every time: listing it again each
        time would cost the directory's size per create). The same call asks for the other directories
        used here of late whose listings ran out, and refreshes those unchanged: a program going through
        ten directories costs one round trip per TTL, not ten."""
        had = ffi.new("uint64_t *")
        if not lib.xf_listing(node, had):
            return False
        self._used(node)
        others = self._ran_out(node)
        version, now = self.c.listing_versions(path, [p for _, p, _ in others])
        for (n, _, was), v in zip(others, now, strict=True):
            if v == was:
                lib.xf_refresh(n, self.ttl)
            else:  # changed, or not to be had now: as below
                lib.xf_unlist(n, was)
        if version != had[0]:
            lib.xf_unlist(node, had[0])  # or each lookup in it would ask for its version, then for the name
            return False
        lib.xf_refresh(node, self.ttl)
        return True

    def _used(self, node: int) -> None:
        """Note that directory `node`'s listing was needed now."""
        with self._recent_lock:
            self._recent.pop(node, None)
            self._recent[node] = time.monotonic()
            if len(self._recent) > ALSO:
                del self._recent[next(iter(self._recent))]

    def _ran_out(self, node: int) -> list[tuple[int, str, int]]:
        """The directories besides `node` needed here in the last RECENT seconds whose listings in the table
        ran out: (node, path, listing version) each."""
        since = time.monotonic() - RECENT
        with self._recent_lock:
            recent = [n for n, t in self._recent.items() if t > since and n != node]
        out, version = [], ffi.new("uint64_t *")
        for n in recent:
            held = lib.xf_listing(n, version)
            if held == 2:
                try:
                    out.append((n, self.path(n), version[0]))
                    continue
                except OSError:  # the node is gone from the table
                    pass
            if held != 1:
                with self._recent_lock:
                    self._recent.pop(n, None)
        return out

    def _hot(self, parent: int) -> bool:
        """Count a miss in directory `parent`; whether it is now worth listing whole."""
        now = time.monotonic()
        if len(self._misses) > 4096:  # directories missed in once and never again
            self._misses.clear()
        since, n = self._misses.get(parent, (now, 0))
        if now - since > self.ttl:
            since, n = now, 0
        self._misses[parent] = (since, n + 1)
        return n + 1 >= HOT

    def _entry(self, req: Any, parent: int, name: Any, a: dict[str, Any]) -> None:
        if lib.xf_reply_entry(req, parent, name, self._attr(self._open_size(a)), self.ttl) == -errno.EAGAIN:
            raise Overtaken

    # metadata

    def lookup(self, req: Any, c: Any) -> None:
        path, name = self.child(c.node, c.name)
        # a name whose attributes changed here is asked for as it is: no listing brings them back
        if (not lib.xf_changed(lib.xf_node_of(c.node, c.name)) and self._revalidated(c.node, self.path(c.node))
                and lib.xf_try_lookup(req, c.node, c.name, 1)):
            return
        if self._hot(c.node):
            version, rows = self.c.listing(os.path.dirname(path))
            self._fill(c.node, (version, rows))
            row = next((r for r in rows if r[0] == name), None)
            if row is None:
                raise OSError(errno.ENOENT, "no such file")
            a = row_attrs(row)
        else:
            a = self.c.op("getattr", path=path)
        self._entry(req, c.node, c.name, a)

    def getattr(self, req: Any, c: Any) -> None:
        u = self._unborn.get(c.node)
        if u is not None:
            with u.lock:
                if not u.sent:
                    lib.xf_reply_attr(req, c.node, u.attr, self.ttl, 0)
                    return
            self.send_made()  # skipped for it on the way in
        parent = lib.xf_parent(c.node)
        if (parent and not lib.xf_changed(c.node) and self._revalidated(parent, self.path(parent))
                and lib.xf_try_getattr(req, c.node)):
            return
        st = self._handles.get(c.fh) if c.fh else None
        try:
            a = self.c.op("getattr", path=self.path(c.node))
        except OSError:
            known = ffi.new("struct xf_attr *")
            held = lib.xf_attr_of(c.node, known)
            if not isinstance(st, Open) and held:
                st = self.c.opened(known.ino)  # fstat sends no handle
            if not isinstance(st, Open):  # its name is gone; an open handle still knows it
                if held and stat.S_ISDIR(known.mode) and lib.xf_path(c.node, ffi.NULL, 0) == -errno.ENOENT:
                    known.nlink = 0  # a directory removed while open here: as a local disk shows it
                    if lib.xf_reply_attr(req, c.node, known, self.ttl, 1) == -errno.EAGAIN:
                        raise Overtaken from None
                    return
                raise
            a = st.attrs
        self._reply_attr(req, c.node, a)

    def _reply_attr(self, req: Any, node: int, a: dict[str, Any]) -> None:
        opened = self.c.opened(a["ino"])  # asked after the MRC: a file closed here since then is overtaken
        if lib.xf_reply_attr(req, node, self._attr(self._open_size(a)), self.ttl, opened is None) == -errno.EAGAIN:
            raise Overtaken

    def setattr(self, req: Any, c: Any) -> None:
        u = self._unborn.get(c.node)
        if u is not None:
            if self._set_here(req, u, c):
                return
            self.send_made()  # skipped for it on the way in
            if c.fh and c.fh & lib.XF_LOCAL_FH:
                self._file(c.fh, c.node)  # the size below goes through its Open
        path = self.path(c.node)
        if c.to_set & lib.FUSE_SET_ATTR_SIZE:
            known = ffi.new("struct xf_attr *")
            if lib.xf_attr_of(c.node, known):
                self._unplan(known.ino)
            self.c.truncate(path, c.size, known.ino or None)
        changes: dict[str, Any] = {}
        if c.to_set & lib.FUSE_SET_ATTR_MODE:
            changes["mode"] = c.mode & 0o7777
        if c.to_set & lib.FUSE_SET_ATTR_UID and c.uid != 0xFFFFFFFF:
            changes["owner"] = self.accounts.who_of(c.uid)
        if c.to_set & lib.FUSE_SET_ATTR_GID and c.gid != 0xFFFFFFFF:
            changes["group"] = self.accounts.vo_of(c.gid)
        now = time.time_ns()
        if c.to_set & lib.FUSE_SET_ATTR_ATIME:
            changes["atime"] = (now if c.atime_ns == -1 else c.atime_ns) / 1e9
        if c.to_set & lib.FUSE_SET_ATTR_MTIME:
            changes["mtime"] = (now if c.mtime_ns == -1 else c.mtime_ns) / 1e9
        a = self.c.setattr(path, **changes) if changes else self.c.op("getattr", path=path)
        if "ino" not in a:
            a = self.c.op("getattr", path=path)
        if a["nlink"] > 1 and not stat.S_ISDIR(a["mode"]):
            lib.xf_stale_ino(a["ino"])  # its other names: their size, mode and ctime
        self._reply_attr(req, c.node, a)

    def readlink(self, req: Any, c: Any) -> None:
        lib.fuse_reply_readlink(req, os.fsencode(self.c.readlink(self.path(c.node))))

    def mknod(self, req: Any, c: Any) -> None:
        path, _ = self.child(c.node, c.name)
        if not stat.S_ISREG(c.mode):
            a = self.c.mknod(path, c.mode, c.size)
            self._dirs_now((c.node,), a)
            self._entry(req, c.node, c.name, a)
            return
        st = self.c.create_handle(path, c.mode & 0o7777)
        attrs = st.attrs
        self.c.release(st)
        lib.xf_touch_dir(c.node, 0)
        self._entry(req, c.node, c.name, attrs)

    def mkdir(self, req: Any, c: Any) -> None:
        path, name = self.child(c.node, c.name)
        sent = time.monotonic()
        a = self.c.mkdir(path, c.mode & 0o7777, lease=True)  # what is made in it next is made here (cp -a, git)
        self._dirs_now((c.node,), a)
        node = lib.xf_entry(c.node, c.name, self._attr(a), self.ttl, 0)
        if node:
            self._fill(node, (0, []))  # a directory made here is empty, at listing version 0
            self._take_lease(node, path, a.get("lease"), (0, 0), sent)
        self._entry(req, c.node, c.name, a)

    def _dirs_now(self, nodes: tuple[int, ...], r: dict[str, Any]) -> None:
        """Set the attributes of the directories a change of names touched (`nodes`, in the order the change
        names them) as the MRC answered them: the kernel checks permissions in them next, and would ask."""
        dirs = r.get("dirs") or []
        for node, a in zip(nodes, dirs, strict=False):
            lib.xf_set_attr(node, self._attr(a), self.ttl)
        for node in nodes[len(dirs):]:
            lib.xf_touch_dir(node, 0)  # not answered: asked for again

    def _unlink_here(self, c: Any) -> bool:
        """Remove a name in a directory leased here without asking the MRC (the native loop queues it for
        the MRC behind the files made here): whether it could be. A file open here cannot."""
        known = ffi.new("struct xf_attr *")
        if not lib.xf_peek(c.node, c.name, known) or self.c.opened(known.ino) is not None:
            return False
        node = lib.xf_node_of(c.node, c.name)
        u = self._unborn.get(node) if node else None
        if u is not None and not u.closed:
            return False
        done = lib.xf_unlink_here(c.node, c.name)
        if done == 2:
            lib.xf_stale_ino(known.ino)  # its other names show a link count one lower
        return bool(done)

    def unlink(self, req: Any, c: Any) -> None:
        if self._unlink_here(c):
            lib.fuse_reply_err(req, 0)
            return
        if self._made_behind(c.node, 0):
            self.send_made()  # skipped for it on the way in
        path, _ = self.child(c.node, c.name)
        changed = lib.xf_changed(lib.xf_node_of(c.node, c.name))  # its link count as known here may be old
        hidden, known = self._hide(c.node, c.name, path)
        r: dict[str, Any] = {}
        sent = time.monotonic()
        if not hidden:
            # a listing held here is worth a lease: the names after this one go without a call each (rm -rf)
            r = self.c.unlink(path, lease=bool(lib.xf_listing(c.node, ffi.new("uint64_t *"))))
            self._dirs_now((c.node,), r)
        if known.ino and (known.nlink > 1 or changed):
            lib.xf_stale_ino(known.ino)  # its other names show a link count one lower
        elif not known.ino:
            lib.xf_forget_all()  # not known here: it may have other names
        lib.xf_drop(c.node, c.name)
        if len(r.get("dir_version") or ()) == 2:  # the listing here, if it was current, is current without it
            lib.xf_advance(c.node, *r["dir_version"])
        self._take_lease(c.node, os.path.dirname(path), r.get("lease"), tuple(r.get("dir_version") or ()), sent)
        lib.fuse_reply_err(req, 0)

    def rmdir(self, req: Any, c: Any) -> None:
        path, _ = self.child(c.node, c.name)
        # A file closed just before its name was removed was moved aside if the kernel's RELEASE, which
        # comes after close() returns, had not come yet (rm -rf after git fsck): it goes with that RELEASE.
        inside = path.rstrip("/") + "/" + HIDDEN
        with self._hidden_gone:
            self._hidden_gone.wait_for(lambda: not self._hidden_in(inside), RELEASE_WAIT)
        ino = lib.xf_rmdir_here(c.node, c.name)
        if ino:  # queued behind the removals in it; its own lease ends with it
            with self._lease_lock:
                self._lately.discard(self._leased.pop(ino, 0))
            lib.fuse_reply_err(req, 0)
            return
        if self._made_behind(c.node, 0):
            self.send_made()  # skipped for it on the way in
        sent = time.monotonic()
        r = self.c.rmdir(path, lease=bool(lib.xf_listing(c.node, ffi.new("uint64_t *"))))
        self._dirs_now((c.node,), r)
        lib.xf_drop(c.node, c.name)
        if len(r.get("dir_version") or ()) == 2:
            lib.xf_advance(c.node, *r["dir_version"])
        self._take_lease(c.node, os.path.dirname(path), r.get("lease"), tuple(r.get("dir_version") or ()), sent)
        lib.fuse_reply_err(req, 0)

    def rename(self, req: Any, c: Any) -> None:
        if c.flags & ~lib.RENAME_NOREPLACE:
            raise OSError(errno.EINVAL, "only RENAME_NOREPLACE")
        old, _ = self.child(c.node, c.name)
        new, _ = self.child(c.node2, c.name2)
        replaced, changed = None, lib.xf_changed(lib.xf_node_of(c.node2, c.name2))
        same = None if c.flags & lib.RENAME_NOREPLACE else self._same_file(c.node, c.name, c.node2, c.name2)
        if same is not None:  # two names of one file: rename does nothing, both stay (POSIX); the kernel moves
            self._adopt_local(lib.xf_node_of(c.node2, c.name2))  # the new name's node goes: its handles opened
            lib.xf_move(c.node, c.name, c.node2, c.name2)  # its entry for the old name to the new one, as here
            lib.xf_entry(c.node, c.name, self._attr(self._open_size(same)), self.ttl, 0)  # the old name: a node anew
            lib.fuse_reply_err(req, 0)
            return
        if not c.flags & lib.RENAME_NOREPLACE:
            _, replaced = self._hide(c.node2, c.name2, new)  # a file replaced while open here stays readable
        r = self.c.rename(old, new, noreplace=bool(c.flags & lib.RENAME_NOREPLACE))
        if replaced is not None and replaced.ino and (replaced.nlink > 1 or changed):
            lib.xf_stale_ino(replaced.ino)  # its other names show a link count one lower
        self._moved(old, new)
        lib.xf_move(c.node, c.name, c.node2, c.name2)
        self._dirs_now((c.node, c.node2), r)
        lib.fuse_reply_err(req, 0)

    def link(self, req: Any, c: Any) -> None:
        if self._link_here(req, c):
            return
        if self._made_behind(c.node, c.node2):
            self.send_made()  # skipped for it on the way in
        source = self.path(c.node)
        target, _ = self.child(c.node2, c.name)
        a = self.c.link(source, target)
        lib.xf_stale_ino(a["ino"])  # its other names: their link count and ctime
        st = self.c.opened(a["ino"])
        if st is not None:  # its writes from now on make the other names ask again (OpenFiles.write)
            st.attrs = {**st.attrs, "nlink": a["nlink"]}
        self._dirs_now((c.node2,), a)
        self._entry(req, c.node2, c.name, a)

    def symlink(self, req: Any, c: Any) -> None:
        path, _ = self.child(c.node, c.name)
        a = self.c.symlink(os.fsdecode(ffi.string(c.name2)), path)
        self._dirs_now((c.node,), a)
        self._entry(req, c.node, c.name, a)

    def statfs(self, req: Any, c: Any) -> None:
        s = self.c.statfs()
        lib.xf_reply_statfs(req, s["capacity"] // 4096, s["free"] // 4096, s["files"] + 1000000, 1000000)

    # extended attributes: user.* at the MRC; the kernel's own (security.*, system.*) answered here

    @staticmethod
    def _xattr_reply(req: Any, size: int, value: bytes) -> None:
        if size == 0:
            lib.fuse_reply_xattr(req, len(value))
        elif len(value) > size:
            lib.fuse_reply_err(req, errno.ERANGE)
        else:
            lib.fuse_reply_buf(req, value, len(value))

    def getxattr(self, req: Any, c: Any) -> None:
        name = os.fsdecode(ffi.string(c.name))
        if not name.startswith("user."):
            raise OSError(errno.ENODATA, "no such attribute")
        self._xattr_reply(req, c.size, self.c.getxattr(self.path(c.node), name))

    def setxattr(self, req: Any, c: Any) -> None:
        name = os.fsdecode(ffi.string(c.name))
        if not name.startswith("user."):
            raise OSError(errno.ENOTSUP, "only user.* attributes")
        self.c.setxattr(self.path(c.node), name, ffi.unpack(c.buf, c.len) if c.len else b"", c.flags)
        lib.fuse_reply_err(req, 0)

    def listxattr(self, req: Any, c: Any) -> None:
        names = self.c.listxattr(self.path(c.node))
        self._xattr_reply(req, c.size, b"".join(os.fsencode(n) + b"\0" for n in names))

    def removexattr(self, req: Any, c: Any) -> None:
        self.c.removexattr(self.path(c.node), os.fsdecode(ffi.string(c.name)))
        lib.fuse_reply_err(req, 0)


def _ns(seconds: float) -> int:
    """A time the MRC keeps (seconds in a double) in whole microseconds, rounded, as nanoseconds: all a double
    carries, and the same each time it is read, by whatever path (tar, make and rsync compare to the ns)."""
    return round(seconds * 1e6) * 1000


_served: GridFS | None = None


@ffi.def_extern()
def xf_py(req: Any, c: Any) -> None:
    """The native loop's one way into Python."""
    if _served is None:
        lib.fuse_reply_err(req, errno.ENOSYS)
        return
    _served.dispatch(req, c)


CRL_POLL = 2.0  # seconds between looks at the revocation list beside the grid CA's certificate


def _follow_crl(ca: str, stopping: threading.Event) -> None:
    """Take a newer revocation list of the grid's CA as one appears beside its certificate: the OSDs and
    the MRC whose certificates it names are refused from then on."""
    while not stopping.wait(CRL_POLL):
        hostid.refresh_crl(ca)


def mount(client: Client, mountpoint: str, accounts: Accounts, volume: str, allow_other: bool = False,
          sync_close: bool = False) -> None:
    """Serve the mount in this process until it is unmounted.

    Only the mounting user reaches it unless `allow_other`: every access goes out with the
    mounting user's credential, so letting others in lends them that identity (within the
    permission bits the kernel checks)."""
    global _served
    if client.tls is not None:  # the native reads reach the OSDs over TLS too, checked against the same CA
        if client.ca is None or lib.xf_tls(os.fsencode(client.ca)) < 0:
            raise XosError(f"the mount's native reads cannot check the OSDs' certificates against {client.ca}")
    _served = fs = GridFS(client, accounts, sync_close=sync_close)
    threads = [threading.Thread(target=fs.sender, name="xos-fs-made", daemon=True),
               threading.Thread(target=fs.recaller, name="xos-fs-recalls", daemon=True)]
    if client.ca is not None:  # the CA's revocation list beside its certificate, as it changes
        stop_crl = hostid.on_crl(os.path.dirname(client.ca), lambda path: lib.xf_tls_crl(os.fsencode(path)))
        threads.append(threading.Thread(target=_follow_crl, args=(client.ca, fs.stopping), name="xos-fs-crl",
                                        daemon=True))
    for t in threads:
        t.start()
    opts = f"default_permissions,fsname=xos:{volume},subtype=xos,max_read={IO_SIZE}"
    if allow_other:
        opts += ",allow_other"
    try:
        if lib.xf_serve(os.fsencode(mountpoint), opts.encode(), IO_SIZE, ATTR_TTL) < 0:
            raise XosError(f"could not mount {volume} on {mountpoint} (see the FUSE messages above)")
    finally:
        fs.stop()
        _served = None
        if client.ca is not None:
            stop_crl()
