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
import concurrent.futures
import errno
import io
import json
import logging
import os
import secrets
import ssl
import threading
import time
from collections.abc import Callable
from typing import Any

import orjson

from xos.errors import FsError, Unavailable, XosError, from_json
from xos.fs.client.data import ObjectIO
from xos.fs.client.gridfile import GridFile
from xos.fs.client.http import Connection
from xos.fs.client.open import Open
from xos.fs.layout import INLINE_MAX, LISTING, Xloc
from xos.leader import NotActive
from xos.wire import hostid
from xos.wire.client import alternatives

log = logging.getLogger(__name__)
FAILOVER = 15.0  # seconds a call looks for the active MRC among several
# Operations that change nothing: sent again to another MRC when the answer was lost.
UNCHANGING = frozenset({"getattr", "readdir", "dirversion", "readlink", "getxattr", "listxattr", "statfs", "stat",
                        "recalls"})


class Unreached(Unavailable):
    """No connection to the server could be made: the request was not sent."""

    code = "unreached"




class Client(ObjectIO):
    """A client of one volume, as one grid identity (its credential)."""

    def __init__(self, url: str, volume: str, credential: str, timeout: float = 5.0, deadline: float = 30.0,
                 tls: ssl.SSLContext | None = None, ca: str | None = None) -> None:
        # The MRC and its standbys (https://mrc-a:7400,mrc-b:7400): calls go to the one that is active.
        self.urls = [u.rstrip("/") for u in alternatives(url.rstrip("/"))]
        self.url = self.urls[0]
        # https: the MRC and OSDs show certificates from the grid's CA (`ca`, else $XOS_CA or
        # $XOS_HOME/host/ca.pem) for the addresses the URLs name; http only in measurements of TLS's cost.
        self.ca = hostid.ca_file(ca) if tls is None and self.url.startswith("https://") else None
        self.tls = tls if tls is not None or self.ca is None else hostid.user_context(self.ca)
        self._sessions: dict[str, ssl.SSLSession] = {}  # per server: the TLS session a new connection resumes
        self.volume = volume
        self.credential = credential.strip()
        self.timeout = timeout
        self.deadline = deadline
        self._idle: dict[str, list[Connection]] = {}
        self._crl_seen = hostid.crl_taken()  # connections and sessions kept were checked against this list
        self._pool_lock = threading.Lock()
        self._pool = concurrent.futures.ThreadPoolExecutor(max_workers=16, thread_name_prefix="xos-fs-io")
        self._opens: dict[int, Open] = {}
        self._opens_lock = threading.Lock()
        # One per client: the MRC lets a mount's own directory leases stand for its own calls.
        self.session = secrets.token_hex(16)
        self._auth = {"Authorization": f"Bearer {self.credential}", "X-Xos-Session": self.session}
        # Told the inode of a file whose size or content this client committed (a mount forgets what the MRC
        # delegated of it).
        self.changed: Callable[[int], None] = lambda ino: None
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
        netloc, target = self._target(url)
        while True:
            c = self._take(url, netloc)
            reused = c.used
            try:
                got = c.request(method, target, headers or {}, body)
            except InterruptedError:
                c.close()  # the answer may still come: this connection is out of step
                raise
            except OSError as e:
                c.close()
                if reused and not isinstance(e, TimeoutError):
                    continue  # a kept-alive connection the server had closed: once more on a fresh one
                raise Unavailable(f"{netloc} does not answer: {e}") from None
            self._give_back(netloc, c, reused)
            return got

    def _both(self, *calls: tuple[str, str, bytes | memoryview, dict[str, str]]) -> list[Any]:
        """Requests to different servers sent one after the other, then their answers read: one round trip
        for all, from this thread. Each answer (status, headers, body), or the exception its call met
        (nothing is tried again: the caller takes the careful way for that one)."""
        sent: list[Any] = []
        for method, url, body, headers in calls:
            try:
                netloc, target = self._target(url)
                c = self._take(url, netloc)
            except XosError as e:
                sent.append(e)
                continue
            reused = c.used
            try:
                c.send(method, target, headers, body)
            except OSError as e:
                c.close()
                sent.append(e)
                continue
            sent.append((netloc, c, reused))
        out: list[Any] = []
        for i, one in enumerate(sent):
            if isinstance(one, BaseException):
                out.append(one)
                continue
            netloc, c, reused = one
            try:
                out.append(c.response())
            except InterruptedError:
                for rest in sent[i:]:  # answers that may still come: those connections are out of step
                    if not isinstance(rest, BaseException):
                        rest[1].close()
                raise
            except OSError as e:
                c.close()
                out.append(e)
                continue
            self._give_back(netloc, c, reused)
        return out

    def _target(self, url: str) -> tuple[str, str]:
        scheme, _, rest = url.partition("://")
        netloc, _, rest = rest.partition("/")
        if scheme != "https" and self.tls is not None:
            raise Unavailable(f"{url} is not a TLS (https) address: this grid's file system speaks TLS only")
        return netloc, "/" + rest

    def _take(self, url: str, netloc: str) -> Connection:
        """A kept-alive connection to `netloc` from the pool, or a new one."""
        tls = self.tls if url.startswith("https://") else None
        with self._pool_lock:
            if self._crl_seen != hostid.crl_taken():  # a newer revocation list: every link checked again
                self._crl_seen = hostid.crl_taken()
                self._sessions.clear()
                for conns in self._idle.values():
                    for old in conns:
                        old.close()
                self._idle.clear()
            idle = self._idle.setdefault(netloc, [])
            c = idle.pop() if idle else None
        if c is None:
            try:
                c = Connection(netloc, self.timeout, tls, self._sessions.get(netloc))
            except ssl.SSLError as e:
                raise Unavailable(f"{netloc} refused the TLS handshake or showed no certificate of the grid's "
                                  f"CA for that address: {e}") from None
            except OSError as e:
                raise Unreached(f"{netloc} does not answer: {e}") from None
        c.interrupted = self.interrupted
        return c

    def _give_back(self, netloc: str, c: Connection, reused: bool) -> None:
        """A connection whose answer was read whole, back to the pool (its TLS session kept for new ones)."""
        if not reused:
            session = c.session()
            if session is not None:
                self._sessions[netloc] = session
        with self._pool_lock:
            idle = self._idle.setdefault(netloc, [])
            if len(idle) < 64:
                idle.append(c)
            else:
                c.close()

    def _json(self, method: str, url: str, body: Any = None) -> Any:
        data = json.dumps(body).encode() if body is not None else None
        status, _, raw = self._http(method, url, data, {**self._auth, "Content-Type": "application/json"})
        reply = orjson.loads(raw) if raw else {}
        if status >= 400:
            raise from_json(reply, status)
        return reply

    def op(self, verb: str, /, **body: Any) -> Any:
        """One file-system operation at the MRC."""
        return self.mrc("POST", f"/v1/volumes/{self.volume}/fs/{verb}", body, verb in UNCHANGING)

    def mrc(self, method: str, path: str, body: Any = None, unchanging: bool = False) -> Any:
        """One call to the MRC: to the active one of several, which a standby becomes within seconds of the
        active's end. A call that never reached one, or that one refused as not active, goes to the next,
        round after round, for up to FAILOVER seconds; one whose answer was lost, only if it is `unchanging`
        (done or not, only the caller can tell otherwise)."""
        if len(self.urls) == 1:
            return self._json(method, self.url + path, body)
        deadline = time.monotonic() + FAILOVER
        tried = 0
        while True:
            url = self.url
            try:
                return self._json(method, url + path, body)
            except Unavailable as e:
                if not isinstance(e, (Unreached, NotActive)) and not (unchanging or method == "GET"):
                    raise
                tried += 1
                self.url = self.urls[(self.urls.index(url) + 1) % len(self.urls)]
                if time.monotonic() > deadline or self.interrupted():
                    raise Unavailable(f"no MRC of {', '.join(self.urls)} answers as the active one: {e}") from None
                if tried % len(self.urls) == 0:  # a round without an answer: a takeover under way
                    time.sleep(0.2)

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

    def leased_listing(self, path: str) -> tuple[tuple[int, list[list[Any]]], dict[str, Any] | None]:
        """A directory's listing (as `listing`) and a lease on it if the MRC grants one now."""
        r = self.op("readdir", path=path, lease=True)
        return (int(r["version"]), list(r["rows"])), r.get("lease")

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

    def mkdir(self, path: str, mode: int = 0o755, lease: bool = False) -> dict[str, Any]:
        """Make a directory; its attributes (and `dirs`); with `lease`, a lease on it if the MRC grants one."""
        return dict(self.op("mkdir", path=path, mode=mode, lease=True) if lease else self.op("mkdir", path=path,
                                                                                             mode=mode))

    def rmdir(self, path: str, lease: bool = False) -> dict[str, Any]:
        """Remove an empty directory: as `unlink`."""
        return dict(self.op("rmdir", path=path, lease=lease) if lease else self.op("rmdir", path=path))

    def unlink(self, path: str, lease: bool = False) -> dict[str, Any]:
        """Remove a name: its directory's attributes after (`dirs`), its listing versions before and after
        (`dir_version`); with `lease`, a lease on the directory if the MRC grants one now (`lease`)."""
        return dict(self.op("unlink", path=path, lease=lease) if lease else self.op("unlink", path=path))

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

    def truncate(self, path: str, size: int, ino: int | None = None) -> None:
        """Set a file's size; a file open here (found by `ino` if given: it may be open under another name of
        it) is written out first, an inline file moved to OSDs if it must."""
        st = self._opens.get(ino) if ino else next((s for s in list(self._opens.values()) if s.path == path), None)
        if st is not None:
            with st.lock:
                self._drain(st)
                self._commit(st)
                if st.inline is not None and size > INLINE_MAX:
                    self._spill(st)
                    self._drain(st)
                    self._commit(st)
                try:
                    self._op_checked("setattr", path=path, size=size)
                finally:  # also when it failed: interrupted, it may be done at the MRC all the same
                    self._reopen(st)
                    self.changed(st.ino)
            return
        if size > INLINE_MAX and self.op("getattr", path=path)["inline"]:
            h = self.open_handle(path, write=True)
            try:
                self._spill(h)
                self._drain(h)
                self._commit(h)
            finally:
                self.release(h)
        self.changed(int(self._op_checked("setattr", path=path, size=size)["ino"]))

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

    def adopt(self, path: str, r: dict[str, Any], write: bool) -> Open:
        """The open state of a file opened with answer `r`: the one open here already, or a new one."""
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
        st = self.adopt(path, r, True)
        st.dir_version = tuple(r.get("dir_version") or ())
        st.lease = r.get("lease")
        return st

    def open_handle(self, path: str, write: bool = False) -> Open:
        """Open a file: the MRC's view of it now (close-to-open)."""
        return self.adopt(path, self.open_answer(path, write), write)

    def open_answer(self, path: str, write: bool = False, delegate: bool = False) -> dict[str, Any]:
        """The MRC's answer to an open; with `delegate` (to read), asking it to delegate the file to this client."""
        return dict(self._op_checked("open", path=path, write=write, delegate=True) if delegate
                    else self._op_checked("open", path=path, write=write))

    def _reopen(self, st: Open) -> None:
        r = self._op_checked("open", path=st.path, write=st.write)
        st.cap, st.epoch, st.size = r["cap"], r["epoch"], r["attrs"]["size"]
        st.committed = st.size
        st.xloc = Xloc.from_json(r["xloc"]) if r.get("xloc") else None
        st.inline = bytearray(base64.b64decode(r["inline"])) if r.get("inline") is not None else None
        st.cache.clear()
        st.recent.clear()
        st.unsynced = None  # the truncate's cuts at the OSDs were not synced here

    def release(self, st: Open, committed: Callable[[], None] | None = None) -> None:
        """Close a handle: everything written goes out and the MRC learns the new size; then `committed` is
        called, before the file stops counting as open here (what this client says of it until then)."""
        with st.lock:
            try:
                self.flush(st)
            finally:
                if committed is not None and st.write:
                    committed()
                with self._opens_lock:
                    st.refs -= 1
                    ino = st.ino
                    if st.refs == 0 and self._opens.get(ino) is st:
                        del self._opens[ino]

    def flush(self, st: Open) -> None:
        """Write out what is buffered and commit the size; the first error of a background write, once."""
        with st.lock:
            self._drain(st)
            self._commit(st)

    def fsync(self, st: Open, datasync: bool = False) -> None:
        """Have every OSD holding the file put what this client wrote on disk and the MRC commit its size, at
        once: all must hold before this returns. What is still buffered goes out as writes the OSDs sync
        before they answer; an OSD that took writes unsynced before (or all of them, the first time) is
        asked to sync. `datasync` (fdatasync): the MRC is told only if the size it has changed."""
        with st.lock:
            tell = not (datasync and st.inline is None and st.size == st.committed)
            if tell and st.unsynced == set() and not st.pending and len(st.wbuf) == 1 and st.xloc is not None \
                    and st.inline is None:
                self._fsync_one(st)
                return
            earlier = list(st.pending.values())  # writes under way, unsynced
            for objno in list(st.wbuf):
                self._send(st, objno, sync=True)
            for fut in earlier:
                self._wait(st, fut)
            syncs = []
            if st.xloc is not None and st.unsynced != set():
                osds = st.xloc.osds() if st.unsynced is None else st.unsynced & st.xloc.osds()
                st.unsynced = set()
                syncs = [self._pool.submit(self._osd_fsync, st, osd) for osd in osds]
            try:
                try:
                    if tell:
                        self._commit(st)
                finally:
                    self._drain(st)
            finally:
                errors = [f.exception() for f in syncs]
            for e in errors:
                if e is not None:
                    st.unsynced = None
                    raise e

    def _fsync_one(self, st: Open) -> None:
        """An fsync of a file written within one object since the last (a log's append): its write, to be
        synced, and the size commit sent from this thread one after the other, then both answers read (no
        hand-off to the pool). Either one refused or unanswered goes again the careful way."""
        assert st.xloc is not None
        objno, (start, buf) = st.wbuf.popitem()
        data = memoryview(buf)
        body = json.dumps(self._commit_args(st, st.cap)).encode()
        try:
            try:
                wrote, committed = self._both(
                    self._put_call(st, objno, start, data, True),
                    ("POST", f"{self.url}/v1/volumes/{self.volume}/fs/commit", body,
                     {**self._auth, "Content-Type": "application/json"}))
            finally:
                self.changed(st.ino)
            if not (isinstance(wrote, tuple) and wrote[0] == 200):
                self._put(st, objno, start, data, True)  # another replica, a renewed capability
        except BaseException:
            st.unsynced = None  # what reached which OSD, and whether on disk, is not known
            st.recent.clear()
            # Held again, to go with the next fsync or the close: an interrupted fsync is tried again, and the
            # write may never have landed (a write is the same bytes at the same place however often it goes).
            st.wbuf[objno] = (start, bytearray(buf))
            raise
        if isinstance(committed, tuple) and committed[0] == 200:
            st.dirty = False
            st.committed = st.size
        else:
            self._commit(st)

    @staticmethod
    def _commit_args(st: Open, cap: str) -> dict[str, Any]:
        """What a commit tells the MRC of an open file: its size and mtime now, its content if inline."""
        inline = base64.b64encode(bytes(st.inline)).decode() if st.inline is not None else None
        return {"ino": st.ino, "cap": cap, "size": st.size, "mtime": time.time(), "inline": inline,
                "spilled": st.inline is None}

    def _osd_fsync(self, st: Open, osd: str) -> None:
        assert st.xloc is not None
        for attempt in (0, 1):
            cap = st.cap
            status, _, raw = self._http("POST", f"{st.xloc.urls[osd]}/v1/o/{st.fid}/fsync", None,
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
        try:
            for attempt in (0, 1):
                cap = st.cap
                try:
                    self.op("commit", **self._commit_args(st, cap))
                    break
                except XosError as err:  # expired: a write beside this commit may have renewed it already
                    if attempt or not self._renewable(err):
                        raise
                    self._renew(st, cap)
        finally:  # after the MRC has it: an answer to an open here asked for before is not kept either
            self.changed(st.ino)
        st.dirty = False
        st.committed = st.size

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
