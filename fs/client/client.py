"""The grid file system's client: metadata from the MRC, bytes from the OSDs, for the FUSE mount and programs.

Consistency is close-to-open: an open asks the MRC for the file's size, replicas and a
capability; a close (or fsync) tells it the new size. Between the two, writes collect per
object and go to the OSDs in the background, a few objects in flight at once, and reads
that follow each other fetch whole objects and the next ones ahead. Every OSD request has a
deadline; a replica that does not answer, or answers with a corrupt object, is skipped for
the next one within the same call.
"""

from __future__ import annotations

import base64
import collections
import concurrent.futures
import errno
import io
import json
import logging
import os
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import orjson

from xos.errors import FileRemoved, FsError, NoReplica, NoSuchFile, StaleCapability, Unavailable, XosError, from_json
from xos.fs.client.http import POLL, Connection
from xos.fs.layout import INLINE_MAX, LISTING, Xloc

log = logging.getLogger(__name__)

WINDOW = 8  # objects in flight per open file
READ_AHEAD = 6  # whole objects fetched ahead of a sequential reader: 2 read 366-409 MB/s cold, 6 433-444
READ_AHEAD_BYTES = 2 << 20  # and at least this much, when objects are small
CACHED_OBJECTS = 8
ALIVE_FOR = 1.0  # seconds a file the MRC said exists is taken to (a sparse file's holes ask once a TTL)


@dataclass
class Open:
    """What this client holds of one open file: shared by every handle on it in this process."""

    ino: int
    fid: str
    path: str
    cap: str
    epoch: int
    size: int
    xloc: Xloc | None
    inline: bytearray | None
    attrs: dict[str, Any] = field(default_factory=dict)  # as the MRC answered the open
    refs: int = 0
    write: bool = False
    dirty: bool = False
    lock: threading.RLock = field(default_factory=threading.RLock)
    renew_lock: threading.Lock = field(default_factory=threading.Lock)
    wbuf: dict[int, tuple[int, bytearray]] = field(default_factory=dict)  # objno -> (offset, bytes)
    pending: dict[int, concurrent.futures.Future[None]] = field(default_factory=dict)
    cache: collections.OrderedDict[int, concurrent.futures.Future[bytes]] = field(
        default_factory=collections.OrderedDict)
    last_end: int = -1
    prefer: int = 0  # replica that answered last
    alive_at: float = 0.0  # when the MRC last said the file still exists (monotonic)
    dir_version: tuple[int, ...] = ()  # a create's: its directory's listing version before and after
    lease: dict[str, Any] | None = None  # a create's: the lease on its directory the MRC granted, if asked
    error: BaseException | None = None
    committed: int = -1  # the size the MRC has: an fdatasync that leaves it so need not tell the MRC


class Client:
    """A client of one volume, as one grid identity (its credential)."""

    def __init__(self, url: str, volume: str, credential: str, timeout: float = 5.0, deadline: float = 30.0) -> None:
        self.url = url.rstrip("/")
        self.volume = volume
        self.credential = credential.strip()
        self.timeout = timeout
        self.deadline = deadline
        self._idle: dict[str, list[Connection]] = {}
        self._pool_lock = threading.Lock()
        self._pool = concurrent.futures.ThreadPoolExecutor(max_workers=16, thread_name_prefix="xos-fs-io")
        self._opens: dict[int, Open] = {}
        self._opens_lock = threading.Lock()
        # One per client: the MRC lets a mount's own directory leases stand for its own calls.
        self.session = secrets.token_hex(16)
        self._auth = {"Authorization": f"Bearer {self.credential}", "X-Xos-Session": self.session}
        # Whether the call this thread serves was interrupted (the FUSE layer sets it; never for I/O threads).
        self.interrupted: Callable[[], bool] = lambda: False
        # A mount's kernel checks POSIX permissions before anything reaches this client: a file's owner then
        # writes it whatever its mode (open(O_CREAT|O_RDWR, 0) then ftruncate), as on a local disk.
        self.checked = False

    def close(self) -> None:
        """Stop the I/O threads."""
        self._pool.shutdown(wait=True)

    # HTTP

    def _http(self, method: str, url: str, body: bytes | memoryview | None = None,
              headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
        """One request on a kept-alive connection from the pool (once more on a fresh one if a reused one
        had gone stale).

        The pool is shared by all threads: libfuse starts and ends its threads as load comes and
        goes, and a connection per thread made a TCP handshake part of many calls."""
        netloc, _, rest = url.partition("//")[2].partition("/")
        target = "/" + rest
        while True:
            with self._pool_lock:
                idle = self._idle.setdefault(netloc, [])
                c = idle.pop() if idle else None
            if c is None:
                try:
                    c = Connection(netloc, self.timeout)
                except OSError as e:
                    raise Unavailable(f"{netloc} does not answer: {e}") from None
            reused = c.used
            c.interrupted = self.interrupted
            try:
                status, got, data = c.request(method, target, headers or {}, body)
            except InterruptedError:
                c.close()  # the answer may still come: this connection is out of step
                raise
            except OSError as e:
                c.close()
                if reused and not isinstance(e, TimeoutError):
                    continue  # a kept-alive connection the server had closed: once more on a fresh one
                raise Unavailable(f"{netloc} does not answer: {e}") from None
            with self._pool_lock:
                if len(idle) < 64:
                    idle.append(c)
                else:
                    c.close()
            return status, got, data

    def _json(self, method: str, url: str, body: Any = None) -> Any:
        data = json.dumps(body).encode() if body is not None else None
        status, _, raw = self._http(method, url, data, {**self._auth, "Content-Type": "application/json"})
        reply = orjson.loads(raw) if raw else {}
        if status >= 400:
            raise from_json(reply, status)
        return reply

    def op(self, verb: str, /, **body: Any) -> Any:
        """One file-system operation at the MRC."""
        return self._json("POST", f"{self.url}/v1/volumes/{self.volume}/fs/{verb}", body)

    # metadata

    def stat(self, path: str) -> dict[str, Any]:
        """Attributes of `path` (owner and group as grid identities); the size of a file open here is current."""
        attrs: dict[str, Any] = self.op("getattr", path=path)
        st = self._opens.get(attrs["ino"])
        if st is not None:
            attrs["size"] = st.size
        return attrs

    def listing(self, path: str) -> tuple[int, list[list[Any]]]:
        """A directory's listing version and its entries as rows: the name, then the attributes `row_attrs`
        names. The version changes whenever what the rows show does."""
        r = self.op("readdir", path=path)
        return int(r["version"]), list(r["rows"])

    def listing_version(self, path: str) -> int:
        """The listing version of a directory now: equal to one seen, the listing then is still right."""
        return int(self.op("dirversion", path=path)["version"])

    def listing_versions(self, path: str, also: list[str]) -> tuple[int, list[int | None]]:
        """`path`'s listing version and, in the same call, those of up to ALSO other directories (None for
        one that cannot be had now)."""
        r = self.op("dirversion", path=path, also=also)
        return int(r["version"]), list(r["also"])

    def readdir(self, path: str) -> list[tuple[str, dict[str, Any]]]:
        """A directory's entries and their attributes."""
        return [(r[0], row_attrs(r)) for r in self.listing(path)[1]]

    def listdir(self, path: str) -> list[str]:
        return [n for n, _ in self.readdir(path)]

    # Each change of names answers the attributes of the directories it touched, after it (`dirs`).

    def mkdir(self, path: str, mode: int = 0o755) -> dict[str, Any]:
        """Make a directory; its attributes (and `dirs`)."""
        return dict(self.op("mkdir", path=path, mode=mode))

    def rmdir(self, path: str) -> dict[str, Any]:
        return dict(self.op("rmdir", path=path))

    def unlink(self, path: str) -> dict[str, Any]:
        return dict(self.op("unlink", path=path))

    def rename(self, old: str, new: str, noreplace: bool = False) -> dict[str, Any]:
        return dict(self.op("rename", old=old, new=new, noreplace=noreplace))

    def link(self, old: str, new: str) -> dict[str, Any]:
        """A hard link; the file's attributes after (and `dirs`)."""
        return dict(self.op("link", old=old, new=new))

    def symlink(self, target: str, path: str) -> dict[str, Any]:
        """A symbolic link; its attributes (and `dirs`)."""
        return dict(self.op("symlink", target=target, path=path))

    def mknod(self, path: str, mode: int, rdev: int = 0) -> dict[str, Any]:
        """Make a FIFO, socket or device special file; its attributes."""
        return dict(self.op("mknod", path=path, mode=mode, rdev=rdev))

    def readlink(self, path: str) -> str:
        return str(self.op("readlink", path=path)["target"])

    def setattr(self, path: str, **changes: Any) -> dict[str, Any]:
        """Change a file's mode, owners or times. What a handle open here wrote goes out and is committed
        first: its close must not then stamp the file with a later mtime than the one set here (cp -a,
        rsync and tar set times after writing, and tar sees a file that changed)."""
        st = next((s for s in list(self._opens.values()) if s.path == path and s.write), None)
        if st is not None and ("mtime" in changes or "atime" in changes):
            with st.lock:
                self._drain(st)
                self._commit(st)
        return dict(self.op("setattr", path=path, **changes))

    def _op_checked(self, name: str, **args: Any) -> Any:
        """An open or truncate, saying whether the kernel checked permissions already."""
        return self.op(name, checked=True, **args) if self.checked else self.op(name, **args)

    def truncate(self, path: str, size: int) -> None:
        """Set a file's size; a file open here is written out first, an inline file moved to OSDs if it must."""
        st = next((s for s in list(self._opens.values()) if s.path == path), None)
        if st is not None:
            with st.lock:
                self._drain(st)
                self._commit(st)
                if st.inline is not None and size > INLINE_MAX:
                    self._spill(st)
                    self._drain(st)
                    self._commit(st)
                self._op_checked("setattr", path=path, size=size)
                self._reopen(st)
            return
        if size > INLINE_MAX and self.op("getattr", path=path)["inline"]:
            h = self.open_handle(path, write=True)
            try:
                self._spill(h)
                self._drain(h)
                self._commit(h)
            finally:
                self.release(h)
        self._op_checked("setattr", path=path, size=size)

    def getxattr(self, path: str, name: str) -> bytes:
        return base64.b64decode(self.op("getxattr", path=path, name=name)["value"])

    def setxattr(self, path: str, name: str, value: bytes, flags: int = 0) -> None:
        self.op("setxattr", path=path, name=name, value=base64.b64encode(value).decode(), flags=flags)

    def listxattr(self, path: str) -> list[str]:
        return list(self.op("listxattr", path=path)["names"])

    def removexattr(self, path: str, name: str) -> None:
        self.op("removexattr", path=path, name=name)

    def statfs(self) -> dict[str, int]:
        return dict(self.op("statfs"))

    def replicas(self, path: str) -> dict[str, Any]:
        """A file's fid, replica list (OSDs per replica), striping and attributes."""
        return dict(self.op("stat", path=path))

    # open files

    def _adopt(self, path: str, r: dict[str, Any], write: bool) -> Open:
        attrs = r["attrs"]
        inline = bytearray(base64.b64decode(r["inline"])) if r.get("inline") is not None else None
        with self._opens_lock:
            st = self._opens.get(attrs["ino"])
            if st is None or st.refs == 0:
                st = Open(attrs["ino"], r["fid"], path, r["cap"], r["epoch"], attrs["size"],
                          Xloc.from_json(r["xloc"]) if r.get("xloc") else None, inline, attrs)
                st.committed = attrs["size"] if not attrs.get("inline") or inline is not None else -1
                self._opens[st.ino] = st
            elif write and not st.write:
                st.cap = r["cap"]
            st.write = st.write or write
            st.path = path
            st.refs += 1
            return st

    def opened(self, ino: int) -> Open | None:
        """The open state of inode `ino` in this client, if it is open."""
        return self._opens.get(ino)

    def create_handle(self, path: str, mode: int = 0o644, exclusive: bool = True, lease: bool = False,
                      inos: bool = False) -> Open:
        """Create a file (or open it, not exclusive) for writing; with `lease`, ask for a lease on its
        directory too (and with `inos`, inode numbers to create with under it)."""
        body: dict[str, Any] = {"path": path, "mode": mode, "exclusive": exclusive}
        if lease:
            body.update(lease=True, inos=inos)
        r = self.op("create", **body)
        st = self._adopt(path, r, True)
        st.dir_version = tuple(r.get("dir_version") or ())
        st.lease = r.get("lease")
        return st

    def open_handle(self, path: str, write: bool = False) -> Open:
        """Open a file: the MRC's view of it now (close-to-open)."""
        return self._adopt(path, self._op_checked("open", path=path, write=write), write)

    def _reopen(self, st: Open) -> None:
        r = self._op_checked("open", path=st.path, write=st.write)
        st.cap, st.epoch, st.size = r["cap"], r["epoch"], r["attrs"]["size"]
        st.committed = st.size
        st.xloc = Xloc.from_json(r["xloc"]) if r.get("xloc") else None
        st.inline = bytearray(base64.b64decode(r["inline"])) if r.get("inline") is not None else None
        st.cache.clear()

    def release(self, st: Open) -> None:
        """Close a handle: everything written goes out and the MRC learns the new size."""
        with st.lock:
            try:
                self.flush(st)
            finally:
                with self._opens_lock:
                    st.refs -= 1
                    if st.refs == 0 and self._opens.get(st.ino) is st:
                        del self._opens[st.ino]

    def flush(self, st: Open) -> None:
        """Write out what is buffered and commit the size; the first error of a background write, once."""
        with st.lock:
            self._drain(st)
            self._commit(st)

    def fsync(self, st: Open, datasync: bool = False) -> None:
        """Write out what is buffered; then, at once, have every OSD holding the file put it on disk and the
        MRC commit its size (both must hold before this returns; one after the other cost a round trip more
        per fsync). `datasync` (fdatasync): the MRC is told only if the size it has changed."""
        with st.lock:
            self._drain(st)
            syncs = [self._pool.submit(self._osd_fsync, st, osd) for osd in st.xloc.osds()] if st.xloc else []
            try:
                if not (datasync and st.inline is None and st.size == st.committed):
                    self._commit(st)
            finally:
                errors = [f.exception() for f in syncs]
            for e in errors:
                if e is not None:
                    raise e

    def _osd_fsync(self, st: Open, osd: str) -> None:
        assert st.xloc is not None
        for attempt in (0, 1):
            cap = st.cap
            status, _, raw = self._http("POST", f"{st.xloc.urls[osd]}/v1/o/{st.fid}/fsync", b"{}",
                                        {**self._auth, "X-Xos-Cap": cap})
            if status == 200:
                return
            err = from_json(json.loads(raw or b"{}"), status)
            if attempt or not self._renewable(err):
                raise err
            self._renew(st, cap)

    def _commit(self, st: Open) -> None:
        if not st.dirty:
            return
        inline = base64.b64encode(bytes(st.inline)).decode() if st.inline is not None else None
        self.op("commit", ino=st.ino, cap=st.cap, size=st.size, mtime=time.time(), inline=inline,
                spilled=st.inline is None)
        st.dirty = False
        st.committed = st.size

    # writing

    def write(self, st: Open, data: bytes | memoryview, offset: int) -> int:
        """Write at `offset`; buffered, sent per object in the background."""
        n = len(data)
        with st.lock:
            if st.error is not None:
                err, st.error = st.error, None
                raise err
            end = offset + n
            if st.inline is not None:
                if end <= INLINE_MAX:
                    if offset > len(st.inline):
                        st.inline.extend(bytes(offset - len(st.inline)))
                    st.inline[offset:end] = data
                    st.size = len(st.inline)
                    st.dirty = True
                    return n
                self._spill(st)
            assert st.xloc is not None
            mv = memoryview(data)
            pos = 0
            for objno, inner, take in st.xloc.striping.objects(offset, n):
                self._buffer(st, objno, inner, mv[pos:pos + take])
                pos += take
            st.size = max(st.size, end)
            st.dirty = True
            st.cache.pop(offset // st.xloc.striping.size, None)
            for objno, _, _ in st.xloc.striping.objects(offset, n):
                st.cache.pop(objno, None)
            return n

    def _buffer(self, st: Open, objno: int, inner: int, data: memoryview) -> None:
        assert st.xloc is not None
        have = st.wbuf.get(objno)
        if have is None and inner == 0 and len(data) == st.xloc.striping.size:
            self._submit(st, objno, 0, data)  # a whole object: sent as it came, no copy
            return
        if have is not None and have[0] + len(have[1]) == inner:
            have[1].extend(data)
        else:
            if have is not None:
                self._send(st, objno)
            st.wbuf[objno] = (inner, bytearray(data))
        start, buf = st.wbuf[objno]
        if start + len(buf) >= st.xloc.striping.size:
            self._send(st, objno)

    def _send(self, st: Open, objno: int) -> None:
        start, buf = st.wbuf.pop(objno)
        self._submit(st, objno, start, memoryview(buf))

    def _submit(self, st: Open, objno: int, start: int, buf: memoryview) -> None:
        prev = st.pending.get(objno)
        if prev is not None:
            self._wait(st, prev)  # one write per object in flight, so they land in order
        while len(st.pending) >= WINDOW:
            oldest = next(iter(st.pending))
            self._wait(st, st.pending[oldest])
        fut = self._pool.submit(self._put, st, objno, start, buf)
        st.pending[objno] = fut

        def done(f: concurrent.futures.Future[None], n: int = objno) -> None:
            if st.pending.get(n) is f:
                st.pending.pop(n, None)

        fut.add_done_callback(done)

    def _wait(self, st: Open, fut: concurrent.futures.Future[None]) -> None:
        try:
            fut.result()
        except BaseException as e:  # reported by the next write, flush or close
            if st.error is None:
                st.error = e
        for n, f in list(st.pending.items()):
            if f is fut:
                del st.pending[n]

    def _drain(self, st: Open) -> None:
        for objno in list(st.wbuf):
            self._send(st, objno)
        for fut in list(st.pending.values()):
            self._wait(st, fut)
        if st.error is not None:
            err, st.error = st.error, None
            raise err

    def _renew(self, st: Open, used: str) -> None:
        """A fresh capability for an open file whose capability `used` expired or went stale (truncated,
        replicas changed): the MRC checks permission again and sends the current replica list."""
        with st.renew_lock:
            if st.cap != used:
                return  # another thread renewed it meanwhile
            # the capability held: proof it was opened
            r = self._op_checked("renew", ino=st.ino, write=st.write, cap=used)
            if r.get("xloc"):
                st.xloc = Xloc.from_json(r["xloc"])
            st.cap, st.epoch = r["cap"], r["epoch"]

    def _still_there(self, st: Open) -> None:
        """FileRemoved if the MRC no longer has the open file: its OSDs dropped its objects, and what would
        otherwise read as a hole (zeros) is a file removed elsewhere while open here."""
        if time.monotonic() - st.alive_at < ALIVE_FOR:
            return
        try:
            self._renew(st, st.cap)
        except NoSuchFile:
            raise FileRemoved(f"{st.path} was removed (by another client) while open here") from None
        st.alive_at = time.monotonic()

    @staticmethod
    def _renewable(err: XosError) -> bool:
        return isinstance(err, StaleCapability) or (err.code == "capability-invalid" and "expired" in err.message)

    def _osd_headers(self, st: Open) -> dict[str, str]:
        return {**self._auth, "X-Xos-Cap": st.cap}

    def _put(self, st: Open, objno: int, offset: int, data: memoryview) -> None:
        """Send one object write to the first replica that answers, which forwards it to the others."""
        deadline = time.monotonic() + self.deadline
        renewed = False
        while True:
            assert st.xloc is not None
            urls = [st.xloc.urls[r.osd_of(objno)] for r in st.xloc.replicas]
            for i, url in enumerate(urls):
                # the OSD that takes it sends it on to every other replica, and reports those that miss it
                headers = {**self._osd_headers(st), "Content-Type": "application/octet-stream",
                           "X-Xos-Forward": ",".join(urls[:i] + urls[i + 1:])}
                try:
                    status, _, raw = self._http("PUT", f"{url}/v1/o/{st.fid}/{objno}?off={offset}", data, headers)
                except Unavailable:
                    continue
                reply = json.loads(raw or b"{}")
                if status == 200:
                    return
                err = from_json(reply, status)
                if self._renewable(err) and not renewed:
                    self._renew(st, headers["X-Xos-Cap"])
                    renewed = True
                    break
                if status < 500:
                    raise err
            else:
                if time.monotonic() > deadline:
                    raise NoReplica(f"no replica of {st.path} accepted a write within {self.deadline:.0f}s")
                time.sleep(0.2)

    def _spill(self, st: Open) -> None:
        """Move an inline file to OSDs before it grows past the inline limit."""
        if st.inline is None:
            return
        r = self.op("place", ino=st.ino, cap=st.cap)
        st.xloc = Xloc.from_json(r["xloc"])
        st.cap, st.epoch = r["cap"], r["epoch"]
        data, st.inline = bytes(st.inline), None
        if data:
            for objno, inner, take in st.xloc.striping.objects(0, len(data)):
                base = objno * st.xloc.striping.size + inner
                self._buffer(st, objno, inner, memoryview(data)[base:base + take])
        st.dirty = True

    # reading

    def read(self, st: Open, size: int, offset: int) -> bytes:
        """Up to `size` bytes at `offset` (fewer at the end of the file)."""
        with st.lock:
            if st.error is not None:
                err, st.error = st.error, None
                raise err
            size = max(0, min(size, st.size - offset))
            if size == 0:
                return b""
            if st.inline is not None:
                return bytes(st.inline[offset:offset + size]).ljust(size, b"\0")
            assert st.xloc is not None
            pieces = st.xloc.striping.objects(offset, size)
            for objno, _, _ in pieces:
                if objno in st.wbuf or objno in st.pending:
                    if objno in st.wbuf:
                        self._send(st, objno)
                    fut = st.pending.get(objno)
                    if fut is not None:
                        self._wait(st, fut)
            sequential = offset == st.last_end or offset == 0
            st.last_end = offset + size
            stripe = st.xloc.striping.size
            out = []
            if sequential:
                last = (st.size - 1) // stripe
                first = pieces[0][0]
                ahead = max(READ_AHEAD, READ_AHEAD_BYTES // stripe)
                for objno in range(first, min(last, pieces[-1][0] + ahead) + 1):
                    # Never ahead of a write still buffered or on its way: that read could land before the
                    # write does and keep the old bytes (zeros) for a later read through this handle.
                    if objno not in st.cache and objno not in st.wbuf and objno not in st.pending:
                        st.cache[objno] = self._pool.submit(self._get, st, objno, 0, stripe)
                futures = {objno: st.cache[objno] for objno, _, _ in pieces}
                while len(st.cache) > max(CACHED_OBJECTS, len(pieces) + ahead):
                    st.cache.popitem(last=False)
            elif len(pieces) == 1:  # a small random read: on this thread, no hand-off
                objno, inner, take = pieces[0]
                return self._get(st, objno, inner, take).ljust(take, b"\0")
            else:
                futures = {objno: self._pool.submit(self._get, st, objno, inner, take)
                           for objno, inner, take in pieces}
            for objno, inner, take in pieces:
                try:
                    data = self._result(futures[objno])
                except BaseException:
                    st.cache.pop(objno, None)
                    raise
                part = data[inner:inner + take] if sequential else data[:take]
                out.append(part.ljust(take, b"\0"))
            return b"".join(out)

    def _result(self, fut: concurrent.futures.Future[bytes]) -> bytes:
        """A background read's bytes, or InterruptedError as soon as the caller is interrupted."""
        while True:
            try:
                return fut.result(timeout=POLL)
            except concurrent.futures.TimeoutError:
                if self.interrupted():
                    raise InterruptedError(errno.EINTR, "read interrupted") from None

    def _get(self, st: Open, objno: int, offset: int, length: int, renewed: bool = False) -> bytes:
        """A range of one object from the first replica that serves it intact."""
        assert st.xloc is not None
        replicas = st.xloc.replicas
        order = list(range(st.prefer, len(replicas))) + list(range(st.prefer))
        deadline = time.monotonic() + self.deadline
        missing = 0
        while True:
            errors = []
            for i in order:
                url = st.xloc.urls[replicas[i].osd_of(objno)]
                cap = st.cap
                try:
                    status, headers, raw = self._http(
                        "GET", f"{url}/v1/o/{st.fid}/{objno}?off={offset}&len={length}", None,
                        {**self._auth, "X-Xos-Cap": cap})
                except Unavailable as e:
                    errors.append(str(e))
                    continue
                if status == 200:
                    st.prefer = i
                    return raw
                err = from_json(json.loads(raw or b"{}"), status)
                if self._renewable(err) and not renewed:
                    self._renew(st, cap)
                    return self._get(st, objno, offset, length, renewed=True)
                if err.code == "no-such-file":
                    missing += 1
                errors.append(str(err))
                log.warning("replica %d of %s object %d on %s: %s", i, st.path, objno, url, err)
            if missing == len(order):
                self._still_there(st)
                return b""  # no replica has the file's objects yet: a hole
            if self.interrupted():
                raise InterruptedError(errno.EINTR, "read interrupted")
            if time.monotonic() > deadline:
                raise NoReplica(f"no replica of {st.path} served object {objno}: {'; '.join(errors)}")
            time.sleep(0.2)
            missing = 0

    # a file object for programs

    def open(self, path: str, mode: str = "rb") -> GridFile:
        """A binary file object: 'rb', 'wb' (create or truncate), 'ab', 'r+b', 'xb'."""
        m = mode.replace("b", "")
        if m not in ("r", "w", "a", "r+", "x", "w+", "a+"):
            raise ValueError(f"unsupported mode {mode!r}")
        if m.startswith(("w", "x", "a")):
            st = self.create_handle(path, exclusive=m.startswith("x"))
            if m.startswith("w") and st.size:
                self.truncate(path, 0)
        else:
            st = self.open_handle(path, write="+" in m)
        f = GridFile(self, st)
        if m.startswith("a"):
            f.seek(0, io.SEEK_END)
        return f


class GridFile(io.RawIOBase):
    """A file of the grid file system as a Python binary file."""

    def __init__(self, client: Client, st: Open) -> None:
        self._c = client
        self._st = st
        self._pos = 0

    def readable(self) -> bool:
        return True

    def writable(self) -> bool:
        return self._st.write

    def seekable(self) -> bool:
        return True

    def readinto(self, b: Any) -> int:
        data = self._c.read(self._st, len(b), self._pos)
        b[:len(data)] = data
        self._pos += len(data)
        return len(data)

    def write(self, b: Any) -> int:
        n = self._c.write(self._st, bytes(b), self._pos)
        self._pos += n
        return n

    def seek(self, pos: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: self._st.size}[whence]
        self._pos = base + pos
        return self._pos

    def tell(self) -> int:
        return self._pos

    def flush(self) -> None:
        if not self.closed and self._st.write:
            self._c.flush(self._st)

    def fsync(self) -> None:
        self._c.fsync(self._st)

    def close(self) -> None:
        if not self.closed:
            try:
                self._c.release(self._st)
            finally:
                super().close()


def row_attrs(row: list[Any]) -> dict[str, Any]:
    """A listing row's attributes as getattr gives them."""
    a = dict(zip(LISTING, row[1:], strict=True))
    a["inline"], a["readonly"] = bool(a["inline"]), bool(a["readonly"])
    return a


def errno_of(e: BaseException) -> int:
    """The errno a FUSE call answers for an exception."""
    if isinstance(e, FsError):
        return e.errno
    if isinstance(e, XosError):
        if e.code.startswith("credential-"):
            return errno.EACCES
        return {"permission-denied": errno.EACCES, "not-found": errno.ENOENT, "invalid-input": errno.EINVAL,
                "over-capacity": errno.ENOSPC}.get(e.code, errno.EIO)
    if isinstance(e, OSError) and e.errno:
        return e.errno
    return errno.EIO


def credential_from(path: str | None) -> str:
    """A credential token from a file, or $XOS_CREDENTIAL."""
    if path:
        with open(path) as f:
            return f.read().strip()
    token = os.environ.get("XOS_CREDENTIAL", "")
    if not token:
        raise XosError("no credential: give --cred FILE or set XOS_CREDENTIAL")
    return token
