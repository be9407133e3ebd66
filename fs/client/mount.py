"""The FUSE mount of a volume: libfuse's low-level loop in native code (native/gridfuse.c), POSIX calls
onto the Client here.

The native loop answers the kernel's lookups and getattrs of what this mount saw within the
attribute TTL, and its forgets; every other request comes to `GridFS` by node id, which the native
table turns into a path. Only errno values leave this layer. Locks (flock, fcntl) are left to the
kernel, which keeps them among the processes of this mount. Files are owned by grid identities and
shown as the accounts they map to here: the mounting identity as the mounting user, others by their
`user.vo` account when this node has one, else as nobody.
"""

from __future__ import annotations

import base64
import errno
import grp
import logging
import os
import pwd
import stat
import struct
import threading
import time
from collections.abc import Callable
from typing import Any

from xos._native._fuse import ffi, lib
from xos.errors import Unavailable, XosError
from xos.fs.client.client import Client, Open, errno_of, row_attrs
from xos.fs.layout import ALSO, INLINE_MAX

log = logging.getLogger(__name__)

IO_SIZE = 1 << 20
ATTR_TTL = 1.0
NOBODY = 65534
HOT = 8  # misses in one directory within a TTL that make it worth listing whole
RECENT = 10.0  # seconds a directory counts as in use here after its listing was last needed
HIDDEN = ".fuse_hidden"  # where a file unlinked while open here lives until its last close
LEASE_MARGIN = 0.25  # a lease ends here this long before the MRC's term, which counts from later
LEASE_INOS = 4096  # inode numbers asked for with a lease when fewer than half of these are left
MADE_BATCH = 512
MADE_BYTES = 512 << 10  # a call's worth of made files (content in base64): half of what the MRC takes (rpc.MAX_BODY)
MAX_PATH = 1 << 20  # the longest path inside a volume this mount passes on
GATHER = 0.01  # seconds the sender lets files made here gather before it sends them: a batch per call

_tl = threading.local()


def interrupted() -> bool:
    """Whether the kernel interrupted the FUSE request this thread serves (its caller got a signal)."""
    req = getattr(_tl, "req", None)
    return req is not None and bool(lib.fuse_req_interrupted(req))


class Accounts:
    """Grid identities as local uids and gids, both ways."""

    def __init__(self, me: str, uid: int, gid: int) -> None:
        self.me = me
        self.vo = me.partition("@")[2]
        self.uid, self.gid = uid, gid
        self._uids: dict[str, int] = {me: uid}
        self._gids: dict[str, int] = {self.vo: gid}

    def uid_of(self, who: str) -> int:
        uid = self._uids.get(who)
        if uid is None:
            user, _, vo = who.partition("@")
            try:
                uid = pwd.getpwnam(f"{user}.{vo}").pw_uid
            except KeyError:
                uid = NOBODY
            self._uids[who] = uid
        return uid

    def gid_of(self, vo: str) -> int:
        gid = self._gids.get(vo)
        if gid is None:
            try:
                gid = grp.getgrnam(vo).gr_gid
            except KeyError:
                gid = NOBODY
            self._gids[vo] = gid
        return gid

    def who_of(self, uid: int) -> str:
        for who, u in self._uids.items():
            if u == uid and u != NOBODY:
                return who
        try:
            user, _, vo = pwd.getpwuid(uid).pw_name.partition(".")
        except KeyError:
            raise OSError(errno.EPERM, 'no grid identity') from None
        if not vo:
            raise OSError(errno.EPERM, 'no grid identity')
        return f"{user}@{vo}"

    def vo_of(self, gid: int) -> str:
        for vo, g in self._gids.items():
            if g == gid:
                return vo
        try:
            return grp.getgrgid(gid).gr_name
        except KeyError:
            raise OSError(errno.EPERM, 'no grid identity') from None


class Dir:
    """An open directory: its listing as of opendir (rows: name, then LISTING), which readdir pages through."""

    def __init__(self, rows: list[list[Any]]) -> None:
        self.rows = rows


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


class GridFS:
    """The requests the native loop passes on, by node id."""

    def __init__(self, client: Client, accounts: Accounts, ttl: float = ATTR_TTL, sync_close: bool = False) -> None:
        self.c = client
        # close() as fsync(): files are then made at the MRC, not under a directory lease (whose files reach
        # the MRC in batches after their close)
        self.sync_close = sync_close
        client.interrupted = interrupted
        client.checked = True  # default_permissions: the kernel checks the mode bits first
        self.accounts = accounts
        self.ttl = ttl
        self._handles: dict[int, Open | Dir | Unborn] = {}
        self._unborn: dict[int, Unborn] = {}  # node -> a file made here, used, and still open or unsent
        self._hidden: dict[int, str] = {}  # ino -> the hidden path of a file unlinked while open
        self._next = 1
        self._lock = threading.Lock()
        self._misses: dict[int, tuple[float, int]] = {}
        self._recent: dict[int, float] = {}  # directory node -> when its listing was last needed, oldest first
        self._recent_lock = threading.Lock()
        self._leased: dict[int, int] = {}  # directory inode number -> its node, while leased here
        self._made_lock = threading.Lock()  # files made here go to the MRC in the order they were made
        self._made_buf = ffi.new("struct xf_made[]", MADE_BATCH)
        self._adopting = threading.Lock()
        self.stopping = threading.Event()
        self._plans: dict[int, set[int]] = {}  # inode number -> handles the native loop reads for from OSDs
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
            lib.XF_REMOVEXATTR: self.removexattr, lib.XF_CREATE: self.create}

    def dispatch(self, req: Any, c: Any) -> None:
        """Serve one request; every failure becomes its errno (and a log line when it is ours)."""
        _tl.req = req
        try:
            # Whatever this asks the MRC, it knows the files made here first: those still queued, and those
            # the sender took and is sending (it holds the lock until the MRC has them). A request on a file
            # made here that it may serve alone sends them only if it goes to the MRC after all.
            if (lib.xf_made_count() or self._made_lock.locked()) and not self._may_stay_here(c):
                self.send_made()
            self.ops[c.op](req, c)
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

    def _attr(self, a: dict[str, Any], out: Any = None) -> Any:
        x = out if out is not None else ffi.new("struct xf_attr *")
        x.ino, x.mode, x.nlink, x.size = a["ino"], a["mode"], a["nlink"], a["size"]
        x.uid, x.gid = self.accounts.uid_of(a["owner"]), self.accounts.gid_of(a["group"])
        x.atime_ns, x.mtime_ns, x.ctime_ns = _ns(a["atime"]), _ns(a["mtime"]), _ns(a["ctime"])
        x.rdev = a.get("rdev", 0)
        return x

    def _open_size(self, a: dict[str, Any]) -> dict[str, Any]:
        st = self.c.opened(a["ino"])
        return {**a, "size": st.size} if st is not None else a

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
        attrs = ffi.new("struct xf_attr[]", [
            (r[1], r[2], r[6], uid(r[3]), gid(r[4]), r[5], _ns(r[7]), _ns(r[8]), _ns(r[9]), r[12])
            for r in rows] or 1)
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
                if not what.sent:
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

    # files made here, used before the MRC heard of them

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
            now = _wall_ns()
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
            u.attr.mtime_ns = u.attr.ctime_ns = _wall_ns()
        lib.fuse_reply_write(req, c.len)
        return True

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

    # directory leases

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

    def _entry(self, req: Any, parent: int, name: Any, a: dict[str, Any]) -> None:
        lib.xf_reply_entry(req, parent, name, self._attr(self._open_size(a)), self.ttl)

    # metadata

    def lookup(self, req: Any, c: Any) -> None:
        path, name = self.child(c.node, c.name)
        if self._revalidated(c.node, self.path(c.node)) and lib.xf_try_lookup(req, c.node, c.name, 1):
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
        if parent and self._revalidated(parent, self.path(parent)) and lib.xf_try_getattr(req, c.node):
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
                    lib.xf_reply_attr(req, c.node, known, self.ttl, 1)
                    return
                raise
            a = st.attrs
        self._reply_attr(req, c.node, a)

    def _reply_attr(self, req: Any, node: int, a: dict[str, Any]) -> None:
        if a["ino"] in self._hidden:  # unlinked while open: the name it is kept under is no link
            a = {**a, "nlink": max(0, a["nlink"] - 1)}
        opened = self.c.opened(a["ino"])
        lib.xf_reply_attr(req, node, self._attr(self._open_size(a)), self.ttl, opened is None)

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
            self.c.truncate(path, c.size)
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
        a = self.c.mkdir(path, c.mode & 0o7777)
        self._dirs_now((c.node,), a)
        node = lib.xf_entry(c.node, c.name, self._attr(a), self.ttl, 0)
        if node:
            self._fill(node, (0, []))  # a directory made here is empty, at listing version 0
        self._entry(req, c.node, c.name, a)

    def _dirs_now(self, nodes: tuple[int, ...], r: dict[str, Any]) -> None:
        """Set the attributes of the directories a change of names touched (`nodes`, in the order the change
        names them) as the MRC answered them: the kernel checks permissions in them next, and would ask."""
        dirs = r.get("dirs") or []
        for node, a in zip(nodes, dirs, strict=False):
            lib.xf_set_attr(node, self._attr(a), self.ttl)
        for node in nodes[len(dirs):]:
            lib.xf_touch_dir(node, 0)  # not answered: asked for again

    def _hide(self, parent: int, name: Any, path: str) -> tuple[bool, Any]:
        """If the file at `path` is open here, move it aside (its data must outlive its name until the last
        close, as libfuse's high level does it): (whether it was, what the table knew of it)."""
        node = lib.xf_node_of(parent, name)
        if node:  # handles the native loop gave out on a file it made: Python's from now
            fhs = ffi.new("uint64_t[64]")
            for i in range(lib.xf_local_handles(node, fhs, 64)):
                self._file(fhs[i], node)
            u = self._unborn.get(node)
            if u is not None and not u.closed:
                self._file(u.fh, node)
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
        hidden = f"{os.path.dirname(path).rstrip('/')}/{HIDDEN}{ino:016x}"
        self._dirs_now((parent,), self.c.rename(path, hidden))
        self._hidden[ino] = hidden
        self._moved(path, hidden)
        return True, known

    def unlink(self, req: Any, c: Any) -> None:
        path, _ = self.child(c.node, c.name)
        hidden, known = self._hide(c.node, c.name, path)
        if not hidden:
            self._dirs_now((c.node,), self.c.unlink(path))
        if known.ino and known.nlink > 1:
            lib.xf_stale_ino(known.ino)  # its other names show a link count one lower
        elif not known.ino:
            lib.xf_forget_all()  # not known here: it may have other names
        lib.xf_drop(c.node, c.name)
        lib.fuse_reply_err(req, 0)

    def rmdir(self, req: Any, c: Any) -> None:
        path, _ = self.child(c.node, c.name)
        self._dirs_now((c.node,), self.c.rmdir(path))
        lib.xf_drop(c.node, c.name)
        lib.fuse_reply_err(req, 0)

    def _moved(self, old: str, new: str) -> None:
        for st in self._handles.values():
            if isinstance(st, Open):
                if st.path == old:
                    st.path = new
                elif st.path.startswith(old + "/"):
                    st.path = new + st.path[len(old):]

    def rename(self, req: Any, c: Any) -> None:
        if c.flags & ~lib.RENAME_NOREPLACE:
            raise OSError(errno.EINVAL, "only RENAME_NOREPLACE")
        old, _ = self.child(c.node, c.name)
        new, _ = self.child(c.node2, c.name2)
        replaced = None
        if not c.flags & lib.RENAME_NOREPLACE:
            _, replaced = self._hide(c.node2, c.name2, new)  # a file replaced while open here stays readable
        r = self.c.rename(old, new, noreplace=bool(c.flags & lib.RENAME_NOREPLACE))
        if replaced is not None and replaced.ino and replaced.nlink > 1:
            lib.xf_stale_ino(replaced.ino)  # its other names show a link count one lower
        self._moved(old, new)
        lib.xf_move(c.node, c.name, c.node2, c.name2)
        self._dirs_now((c.node, c.node2), r)
        lib.fuse_reply_err(req, 0)

    def link(self, req: Any, c: Any) -> None:
        source = self.path(c.node)
        target, _ = self.child(c.node2, c.name)
        a = self.c.link(source, target)
        lib.xf_stale_ino(a["ino"])  # its other names: their link count and ctime
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

    # directories

    def opendir(self, req: Any, c: Any) -> None:
        listing = self.c.listing(self.path(c.node))
        self._fill(c.node, listing)
        if lib.xf_reply_open(req, c.fi, self._handle(Dir(listing[1])), 0) != 0:
            pass  # interrupted: no releasedir will come; the listing is dropped with the next ones

    def readdir(self, req: Any, c: Any) -> None:
        d = self._handles[c.fh]
        assert isinstance(d, Dir)
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

    def releasedir(self, req: Any, c: Any) -> None:
        with self._lock:
            self._handles.pop(c.fh, None)
        lib.fuse_reply_err(req, 0)

    # file contents

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
                self.c.truncate(path, 0)
        fh = self._handle(st)
        self._unplan(st.ino)  # an existing file opened to write (not O_EXCL)
        lib.xf_touch_dir(c.node, 0)
        if len(st.dir_version) == 2:  # the listing here, if it was current, is current with the new name
            lib.xf_advance(c.node, *st.dir_version)
        self._take_lease(c.node, os.path.dirname(path), st, sent)
        if not lib.xf_reply_create(req, c.node, c.name, self._attr(st.attrs), self.ttl, c.fi, fh):
            self._close(fh, 0)  # not created, or interrupted: no release will come for it

    def open(self, req: Any, c: Any) -> None:
        write = (c.flags & os.O_ACCMODE) != os.O_RDONLY
        path = self.path(c.node)
        st = self.c.open_handle(path, write)
        if c.flags & os.O_TRUNC and write and st.size:
            self.c.truncate(path, 0)
        fh = self._handle(st)
        direct = False
        if write:
            self._unplan(st.ino)
            lib.xf_writers(c.node, 1)
        else:  # read around the page cache where the native loop fetches ahead itself (gridfuse.c)
            direct = self._plan(fh, st) and bool(lib.xf_direct_reads())
        if lib.xf_reply_open(req, c.fi, fh, int(direct)) != 0:
            self._close(fh, c.node)

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

    def write(self, req: Any, c: Any) -> None:
        u = self._unborn_of(c.fh, c.node)
        if u is not None and self._write_here(req, u, c):
            return
        lib.xf_written(c.fh, 1)  # before the reply: the close after it must come here to flush
        lib.fuse_reply_write(req, self.c.write(self._file(c.fh, c.node), ffi.unpack(c.buf, c.len), c.off))

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
        try:
            self.c.release(st)
        finally:
            if st.write:
                lib.xf_forget_attr(node)  # its size and times as the MRC now has them
                lib.xf_writers(node, -1)
            hidden = self._hidden.get(st.ino)
            if hidden is not None and self.c.opened(st.ino) is None:
                del self._hidden[st.ino]
                self.c.unlink(hidden)

    def release(self, req: Any, c: Any) -> None:
        self._close(c.fh, c.node)
        lib.fuse_reply_err(req, 0)


_served: GridFS | None = None


def _wall_ns() -> int:
    """Now, in whole microseconds as nanoseconds: what the MRC's times carry exactly (as the native loop's)."""
    t = time.time_ns()
    return t - t % 1000


def _ns(seconds: float) -> int:
    """A time the MRC keeps (seconds in a double) in whole microseconds, rounded, as nanoseconds: all a double
    carries, and the same each time it is read, by whatever path (tar, make and rsync compare to the ns)."""
    return round(seconds * 1e6) * 1000


@ffi.def_extern()
def xf_py(req: Any, c: Any) -> None:
    """The native loop's one way into Python."""
    if _served is None:
        lib.fuse_reply_err(req, errno.ENOSYS)
        return
    _served.dispatch(req, c)


def mount(client: Client, mountpoint: str, accounts: Accounts, volume: str, allow_other: bool = False,
          sync_close: bool = False) -> None:
    """Serve the mount in this process until it is unmounted.

    Only the mounting user reaches it unless `allow_other`: every access goes out with the
    mounting user's credential, so letting others in lends them that identity (within the
    permission bits the kernel checks)."""
    global _served
    _served = fs = GridFS(client, accounts, sync_close=sync_close)
    threads = [threading.Thread(target=fs.sender, name="xos-fs-made", daemon=True),
               threading.Thread(target=fs.recaller, name="xos-fs-recalls", daemon=True)]
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
