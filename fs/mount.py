"""The FUSE mount of a volume (mfusepy on libfuse 3, 1 MiB reads and writes): POSIX calls onto the Client.

Only errno values leave this layer. Locks (flock, fcntl) are left to the kernel, which keeps them
among the processes of this mount. Files are owned by grid identities and shown as the accounts
they map to here: the mounting identity as the mounting user, others by their `user.vo` account
when this node has one, else as nobody.
"""

from __future__ import annotations

import errno
import grp
import logging
import os
import pwd
import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar

import mfusepy

from xos.errors import XosError
from xos.fs.client import Client, Open, errno_of

log = logging.getLogger(__name__)

IO_SIZE = 1 << 20
FUSE_CAP_ASYNC_DIO = 1 << 15  # fuse_common.h
ATTR_TTL = 1.0
NOBODY = 65534
F = TypeVar("F", bound=Callable[..., Any])


def _errno(fn: F) -> F:
    """Turn every failure into the FuseOSError of its errno; nothing else may reach libfuse."""

    def wrapped(*args: Any, **kwargs: Any) -> Any:
        _on_fuse_thread.yes = True
        try:
            return fn(*args, **kwargs)
        except mfusepy.FuseOSError:
            raise
        except XosError as e:
            err = errno_of(e)
            if err == errno.EIO:  # the file system failed, not the caller: say why
                log.warning("%s: %s", fn.__name__, e)
            raise mfusepy.FuseOSError(err) from None
        except Exception as e:  # a bug must show as EIO and a log line, not kill the mount
            if not isinstance(e, OSError):
                log.exception("%s failed", fn.__name__)
            raise mfusepy.FuseOSError(errno_of(e)) from None

    wrapped.__name__ = fn.__name__
    wrapped.__doc__ = fn.__doc__
    return wrapped  # type: ignore[return-value]


_on_fuse_thread = threading.local()
_libfuse_interrupted = mfusepy._libfuse.fuse_interrupted  # type: ignore[attr-defined]


def interrupted() -> bool:
    """Whether the kernel interrupted the FUSE request this thread serves (its caller got a signal).

    libfuse keeps the request in thread-local state, so only libfuse's own threads may ask."""
    return bool(getattr(_on_fuse_thread, "yes", False) and _libfuse_interrupted())


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
            raise mfusepy.FuseOSError(errno.EINVAL) from None
        if not vo:
            raise mfusepy.FuseOSError(errno.EINVAL)
        return f"{user}@{vo}"

    def vo_of(self, gid: int) -> str:
        for vo, g in self._gids.items():
            if g == gid:
                return vo
        try:
            return grp.getgrgid(gid).gr_name
        except KeyError:
            raise mfusepy.FuseOSError(errno.EINVAL) from None


class MetaCache:
    """Attributes and directory listings seen within the last TTL, so stats and the kernel's lookups of
    names that do not exist need no round trip (what the kernel's own caches do, one level down).

    A directory looked up often (ls -l, find, a create loop) is fetched whole, names and attributes
    in one call (readdirplus), instead of one getattr per entry."""

    HOT = 8  # misses in one directory within a TTL that make it worth listing whole

    def __init__(self, ttl: float) -> None:
        self.ttl = ttl
        self.attrs: dict[str, tuple[float, dict[str, Any]]] = {}
        self.dirs: dict[str, tuple[float, set[str]]] = {}
        self.misses: dict[str, tuple[float, int]] = {}

    def get(self, path: str) -> dict[str, Any] | None:
        hit = self.attrs.get(path)
        return hit[1] if hit is not None and hit[0] > time.monotonic() else None

    def put(self, path: str, attrs: dict[str, Any]) -> None:
        self.attrs[path] = (time.monotonic() + self.ttl, attrs)

    def absent(self, path: str) -> bool:
        if path == "/":
            return False
        parent, name = os.path.split(path)
        listing = self.dirs.get(parent)
        return listing is not None and listing[0] > time.monotonic() and name not in listing[1]

    def hot(self, path: str) -> bool:
        """Count a miss in `path`'s directory; whether the directory is now worth listing whole."""
        parent = os.path.dirname(path)
        now = time.monotonic()
        since, n = self.misses.get(parent, (now, 0))
        if now - since > self.ttl:
            since, n = now, 0
        self.misses[parent] = (since, n + 1)
        return n + 1 >= self.HOT

    def listing(self, path: str, entries: list[tuple[str, dict[str, Any]]]) -> None:
        expiry = time.monotonic() + self.ttl
        base = path.rstrip("/")
        for name, a in entries:
            self.attrs[f"{base}/{name}"] = (expiry, a)
        self.dirs[path] = (expiry, {name for name, _ in entries})
        self.misses.pop(path, None)

    def _touch(self, parent: str, links: int = 0) -> None:
        """The directory changed here: its times (and link count) as the MRC now has them, near enough.

        The kernel asks for a directory's attributes after every change in it; dropping them would
        make that a round trip per create."""
        hit = self.attrs.get(parent)
        if hit is not None:
            now = time.time()
            self.attrs[parent] = (hit[0], {**hit[1], "mtime": now, "ctime": now, "nlink": hit[1]["nlink"] + links})

    def added(self, path: str, attrs: dict[str, Any] | None = None) -> None:
        parent, name = os.path.split(path)
        listing = self.dirs.get(parent)
        if listing is not None:
            listing[1].add(name)
        self._touch(parent, 1 if attrs is not None and attrs["mode"] & 0o170000 == 0o040000 else 0)
        if attrs is not None:
            self.put(path, attrs)
        else:
            self.attrs.pop(path, None)

    def removed(self, path: str) -> None:
        gone = self.attrs.get(path)
        if gone is None or gone[1]["nlink"] > 1:  # other names of the file change with it
            self.relinked(gone[1]["ino"] if gone else None)
        parent, name = os.path.split(path)
        listing = self.dirs.get(parent)
        if listing is not None:
            listing[1].discard(name)
        self._touch(parent, -1 if path in self.dirs else 0)
        self.attrs.pop(path, None)
        self.dirs.pop(path, None)

    def relinked(self, ino: int | None) -> None:
        """Forget the attributes of every name of inode `ino` (all of them if unknown)."""
        if ino is None:
            self.attrs.clear()
            return
        for p in [p for p, (_, a) in self.attrs.items() if a["ino"] == ino]:
            del self.attrs[p]

    def changed(self, path: str) -> None:
        self.attrs.pop(path, None)

    def clear(self) -> None:
        self.attrs.clear()
        self.dirs.clear()


class GridFS(mfusepy.Operations):
    """The operations libfuse calls, by path."""

    use_ns = True

    def __init__(self, client: Client, accounts: Accounts) -> None:
        self.c = client
        client.interrupted = interrupted
        self.accounts = accounts
        self._handles: dict[int, Open] = {}
        self._next = 1
        self._lock = threading.Lock()
        self.cache = MetaCache(ATTR_TTL)

    def init_with_config(self, conn: Any, config: Any) -> None:
        if conn is not None:
            # Direct I/O as plain requests the caller waits on, so a signal interrupts them (EINTR);
            # asynchronous direct I/O waits uninterruptibly in the kernel.
            conn.want &= ~FUSE_CAP_ASYNC_DIO
            conn.max_write = IO_SIZE
            conn.max_read = IO_SIZE
            conn.max_readahead = IO_SIZE
        if config is not None:
            config.attr_timeout = ATTR_TTL
            config.entry_timeout = ATTR_TTL
            config.use_ino = 1

    # helpers

    def _stat(self, a: dict[str, Any]) -> dict[str, Any]:
        size = a["size"]
        return {"st_mode": a["mode"], "st_ino": a["ino"], "st_nlink": a["nlink"], "st_size": size,
                "st_uid": self.accounts.uid_of(a["owner"]), "st_gid": self.accounts.gid_of(a["group"]),
                "st_atime": int(a["atime"] * 1e9), "st_mtime": int(a["mtime"] * 1e9), "st_ctime": int(a["ctime"] * 1e9),
                "st_blocks": (size + 511) // 512, "st_blksize": IO_SIZE}

    def _handle(self, st: Open) -> int:
        with self._lock:
            fh = self._next
            self._next += 1
            self._handles[fh] = st
            return fh

    # metadata

    @_errno
    def getattr(self, path: str, fh: int | None = None) -> dict[str, Any]:
        st = self._handles.get(fh) if fh else None
        a = self.cache.get(path)
        if a is None and st is None:
            if self.cache.absent(path):
                raise mfusepy.FuseOSError(errno.ENOENT)
            parent = os.path.dirname(path)
            if path != "/" and self.cache.hot(path):
                self.cache.listing(parent, self.c.readdir(parent))
                a = self.cache.get(path)
                if a is None:
                    raise mfusepy.FuseOSError(errno.ENOENT)
            else:
                a = self.c.op("getattr", path=path)
                self.cache.put(path, a)
        if st is None and a is not None:
            st = self.c.opened(a["ino"])
        if st is not None:
            a = {**(a or st.attrs), "size": st.size}
        assert a is not None
        return self._stat(a)

    @_errno
    def readdir(self, path: str, fh: int) -> list[Any]:
        entries = self.c.readdir(path)
        self.cache.listing(path, entries)
        out: list[Any] = [".", ".."]
        for name, a in entries:
            out.append((name, self._stat(a), 0))
        return out

    @_errno
    def mkdir(self, path: str, mode: int) -> None:
        a = self.c.op("mkdir", path=path, mode=mode)
        self.cache.added(path, a)
        self.cache.listing(path, [])  # a directory made here is empty

    @_errno
    def rmdir(self, path: str) -> None:
        self.c.rmdir(path)
        self.cache.removed(path)

    @_errno
    def unlink(self, path: str) -> None:
        self.c.unlink(path)
        self.cache.removed(path)

    @_errno
    def rename(self, old: str, new: str) -> None:
        self.c.rename(old, new)
        for st in self._handles.values():
            if st.path == old:
                st.path = new
            elif st.path.startswith(old + "/"):
                st.path = new + st.path[len(old):]
        self.cache.clear()

    @_errno
    def link(self, target: str, source: str) -> None:
        self.c.link(source, target)
        known = self.cache.get(source)
        self.cache.relinked(known["ino"] if known else None)
        self.cache.added(target)

    @_errno
    def symlink(self, target: str, source: str) -> None:
        self.c.symlink(source, target)
        self.cache.added(target)

    @_errno
    def readlink(self, path: str) -> str:
        return self.c.readlink(path)

    @_errno
    def chmod(self, path: str, mode: int) -> None:
        self.c.setattr(path, mode=mode & 0o7777)
        self.cache.changed(path)

    @_errno
    def chown(self, path: str, uid: int, gid: int) -> None:
        changes: dict[str, Any] = {}
        if uid != -1:
            changes["owner"] = self.accounts.who_of(uid)
        if gid != -1:
            changes["group"] = self.accounts.vo_of(gid)
        if changes:
            self.c.setattr(path, **changes)
        self.cache.changed(path)

    @_errno
    def utimens(self, path: str, times: tuple[int, int] | None = None) -> None:
        now = time.time_ns()
        atime, mtime = times if times is not None else (now, now)
        self.c.setattr(path, atime=atime / 1e9, mtime=mtime / 1e9)
        self.cache.changed(path)

    @_errno
    def truncate(self, path: str, length: int, fh: int | None = None) -> None:
        self.c.truncate(path, length)
        self.cache.changed(path)

    @_errno
    def statfs(self, path: str) -> dict[str, int]:
        s = self.c.statfs()
        bs = 4096
        return {"f_bsize": IO_SIZE, "f_frsize": bs, "f_blocks": s["capacity"] // bs, "f_bfree": s["free"] // bs,
                "f_bavail": s["free"] // bs, "f_files": s["files"] + 1000000, "f_ffree": 1000000,
                "f_favail": 1000000, "f_namemax": 255}

    # extended attributes: user.* at the MRC; the kernel's own (security.*, system.*) answered here

    @_errno
    def getxattr(self, path: str, name: str, position: int = 0) -> bytes:
        if not name.startswith("user."):
            raise mfusepy.FuseOSError(errno.ENODATA)
        return self.c.getxattr(path, name)

    @_errno
    def setxattr(self, path: str, name: str, value: bytes, options: int, position: int = 0) -> None:
        if not name.startswith("user."):
            raise mfusepy.FuseOSError(errno.ENOTSUP)
        self.c.setxattr(path, name, value, options)

    @_errno
    def listxattr(self, path: str) -> list[str]:
        return self.c.listxattr(path)

    @_errno
    def removexattr(self, path: str, name: str) -> None:
        self.c.removexattr(path, name)

    # file contents

    @_errno
    def create(self, path: str, mode: int, fi: Any = None) -> int:
        st = self.c.create_handle(path, mode & 0o7777)
        self.cache.added(path, st.attrs)
        return self._handle(st)

    @_errno
    def open(self, path: str, flags: int) -> int:
        write = (flags & os.O_ACCMODE) != os.O_RDONLY
        st = self.c.open_handle(path, write)
        if flags & os.O_TRUNC and write and st.size:
            self.c.truncate(path, 0)
        return self._handle(st)

    @_errno
    def read(self, path: str, size: int, offset: int, fh: int) -> bytes:
        return self.c.read(self._handles[fh], size, offset)

    @_errno
    def write(self, path: str, data: bytes, offset: int, fh: int) -> int:
        return self.c.write(self._handles[fh], data, offset)

    @_errno
    def flush(self, path: str, fh: int) -> None:
        st = self._handles.get(fh)
        if st is not None and st.write:
            self.c.flush(st)
            self.cache.changed(path)

    @_errno
    def fsync(self, path: str, datasync: int, fh: int) -> None:
        self.c.fsync(self._handles[fh])

    @_errno
    def release(self, path: str, fh: int) -> None:
        with self._lock:
            st = self._handles.pop(fh, None)
        if st is not None:
            if st.write:
                self.cache.changed(path)
            self.c.release(st)


def mount(client: Client, mountpoint: str, accounts: Accounts, volume: str, allow_other: bool = False) -> None:
    """Serve the mount in this process until it is unmounted.

    Only the mounting user reaches it unless `allow_other`: every access goes out with the
    mounting user's credential, so letting others in lends them that identity (within the
    permission bits the kernel checks)."""
    mfusepy.FUSE(GridFS(client, accounts), mountpoint, foreground=True, fsname=f"xos:{volume}", subtype="xos",
                 default_permissions=True, allow_other=allow_other, max_read=IO_SIZE)
