"""The data path of the grid file system's client: writes collected per object and sent to the OSDs in the
background, a few objects in flight; reads of whole objects with read-ahead; capabilities renewed and
replicas failed over as OSDs answer."""

from __future__ import annotations

import concurrent.futures
import errno
import json
import logging
import time
from typing import Any

from xos.errors import FileRemoved, NoReplica, NoSuchFile, StaleCapability, Unavailable, XosError, from_json
from xos.fs.client.http import POLL
from xos.fs.client.open import Open
from xos.fs.layout import INLINE_MAX, Xloc

log = logging.getLogger(__name__)

WINDOW = 8  # objects in flight per open file
READ_AHEAD = 6  # whole objects fetched ahead of a sequential reader: 2 read 366-409 MB/s cold, 6 433-444
READ_AHEAD_BYTES = 2 << 20  # and at least this much, when objects are small
CACHED_OBJECTS = 8
RECENT_PIECE = 64 << 10  # writes up to this size are kept for reading back (a WAL frame is 4 KiB and a bit)
RECENT_RUN = 1 << 20  # bytes kept per object, the last written
RECENT_OBJECTS = 2  # objects kept so
ALIVE_FOR = 1.0  # seconds a file the MRC said exists is taken to (a sparse file's holes ask once a TTL)


class ObjectIO:
    """The part of the client that moves file contents to and from the OSDs."""

    deadline: float
    timeout: float
    _pool: concurrent.futures.ThreadPoolExecutor
    _auth: dict[str, str]
    interrupted: Any  # () -> bool: whether the call this thread serves was interrupted

    def _http(self, method: str, url: str, body: bytes | memoryview | None = None,
              headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
        raise NotImplementedError  # the client's

    def op(self, verb: str, /, **body: Any) -> Any:
        raise NotImplementedError  # the client's

    def _op_checked(self, name: str, **args: Any) -> Any:
        raise NotImplementedError  # the client's

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
                self._remember(st, objno, inner, mv[pos:pos + take])
                pos += take
            st.size = max(st.size, end)
            st.dirty = True
            st.cache.pop(offset // st.xloc.striping.size, None)
            for objno, _, _ in st.xloc.striping.objects(offset, n):
                st.cache.pop(objno, None)
            return n

    @staticmethod
    def _remember(st: Open, objno: int, inner: int, data: memoryview) -> None:
        """Keep the bytes small writes put in an object, one run per object for the last few objects, so
        that reading them back (a database reading its log) needs no OSD; a large write only forgets."""
        run = st.recent.pop(objno, None)
        if len(data) > RECENT_PIECE:
            return
        if run is not None and run[0] <= inner <= run[0] + len(run[1]):
            start, buf = run
            buf[inner - start:inner - start + len(data)] = data  # within the run, or over its end
        else:
            start, buf = inner, bytearray(data)
        if len(buf) > RECENT_RUN:
            start += len(buf) - RECENT_RUN
            del buf[:len(buf) - RECENT_RUN]
        st.recent[objno] = (start, buf)
        while len(st.recent) > RECENT_OBJECTS:
            st.recent.popitem(last=False)

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

    def _send(self, st: Open, objno: int, sync: bool = False) -> None:
        start, buf = st.wbuf.pop(objno)
        self._submit(st, objno, start, memoryview(buf), sync)

    def _submit(self, st: Open, objno: int, start: int, buf: memoryview, sync: bool = False) -> None:
        """Send a write in the background; with `sync`, one the OSDs put on disk before they answer."""
        if not sync and st.unsynced is not None:
            assert st.xloc is not None
            st.unsynced.update(r.osd_of(objno) for r in st.xloc.replicas)
        prev = st.pending.get(objno)
        if prev is not None:
            self._wait(st, prev)  # one write per object in flight, so they land in order
        while len(st.pending) >= WINDOW:
            oldest = next(iter(st.pending))
            self._wait(st, st.pending[oldest])
        fut = self._pool.submit(self._put, st, objno, start, buf, sync)
        st.pending[objno] = fut

        def done(f: concurrent.futures.Future[None], n: int = objno) -> None:
            if st.pending.get(n) is f:
                st.pending.pop(n, None)

        fut.add_done_callback(done)

    def _wait(self, st: Open, fut: concurrent.futures.Future[None]) -> None:
        try:
            fut.result()
        except BaseException as e:  # reported by the next write, flush or close
            st.unsynced = None  # what reached which OSD, and whether on disk, is not known
            st.recent.clear()
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
                xloc = Xloc.from_json(r["xloc"])
                if st.xloc is None or xloc.osds() != st.xloc.osds():
                    st.unsynced = None  # an OSD new to the file: what it holds was copied, not synced here
                st.xloc = xloc
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

    def _put_call(self, st: Open, objno: int, offset: int, data: memoryview, sync: bool, first: int = 0,
                  xloc: Xloc | None = None) -> tuple[str, str, memoryview, dict[str, str]]:
        """The request that writes to the object's replica number `first` (of `xloc`, the file's replicas
        as taken), which sends it on to every other replica (and reports those that miss it); with `sync`,
        each puts the file on disk before it answers."""
        xloc = xloc or st.xloc
        assert xloc is not None
        urls = [xloc.urls[r.osd_of(objno)] for r in xloc.replicas]
        headers = {**self._osd_headers(st), "Content-Type": "application/octet-stream",
                   "X-Xos-Forward": ",".join(urls[:first] + urls[first + 1:])}
        if sync:
            headers["X-Xos-Sync"] = "1"
        return "PUT", f"{urls[first]}/v1/o/{st.fid}/{objno}?off={offset}", data, headers

    def _put(self, st: Open, objno: int, offset: int, data: memoryview, sync: bool = False) -> None:
        """Send one object write to the first replica that answers, which forwards it to the others; with
        `sync`, each of them puts the file on disk before it answers."""
        deadline = time.monotonic() + self.deadline
        renewed = False
        while True:
            xloc = st.xloc  # as it is now: a renewal by another thread may change it meanwhile
            assert xloc is not None
            for i in range(len(xloc.replicas)):
                method, url, _, headers = self._put_call(st, objno, offset, data, sync, i, xloc)
                try:
                    status, _, raw = self._http(method, url, data, headers)
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
            if len(pieces) == 1:
                objno, inner, take = pieces[0]
                run = st.recent.get(objno)
                if run is not None and run[0] <= inner and inner + take <= run[0] + len(run[1]):
                    st.last_end = offset + size
                    return bytes(run[1][inner - run[0]:inner - run[0] + take])
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
