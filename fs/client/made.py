"""Files made on a mount under a directory lease: the native loop makes them, and they go to the MRC in
batches, a call per directory, with what was written to them, their mode and their times when they were
used before the MRC heard of them (`Unborn`). The leases themselves are taken, recalled and handed back
here too."""

from __future__ import annotations

import base64
import logging
import os
import stat
import threading
import time
from typing import Any

from xos._native._fuse import ffi, lib
from xos.errors import Unavailable, XosError
from xos.fs.client.client import Client
from xos.fs.client.delegated import Delegated
from xos.fs.layout import INLINE_MAX

log = logging.getLogger(__name__)

LEASE_MARGIN = 0.25  # a lease ends here this long before the MRC's term, which counts from later
MADE_BATCH = 512
MADE_BYTES = 512 << 10  # a call's worth of made files (content in base64): half of what the MRC takes (codec.MAX_BODY)
LATELY = 65536  # directories remembered as leased here of late, at most
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


class Run:
    """Changes made here in a row in one directory, of one kind (XF_MADE_FILE, XF_MADE_UNLINK, XF_MADE_LINK): (name,
    inode number, mode, time, node) each; `body`: how the MRC takes them."""

    def __init__(self, kind: int, dir_ino: int, dir_node: int) -> None:
        self.kind, self.dir_ino, self.dir_node = kind, dir_ino, dir_node
        self.items: list[tuple[str, int, int, float, int]] = []
        self.new_names: list[str] = []  # a run of links: the new name of each
        self.described: list[list[Any]] = []
        self.size = 0
        self.body: dict[str, Any] = {}


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
    _lately: set[int]  # directories leased here of late and not recalled: a listing asks for their lease again
    _lease_lock: threading.Lock  # the leases used here against their hand-back
    _renumbered: dict[int, int]  # a file made here that the MRC gave another number: number here -> the MRC's
    delegated: Delegated

    def path(self, node: int) -> str:
        raise NotImplementedError  # the mount's

    def _fill(self, node: int, listing: tuple[int, list[list[Any]]]) -> None:
        raise NotImplementedError  # the mount's

    def _may_stay_here(self, c: Any) -> bool:
        """Whether request `c` is on a file made here that may not need the MRC."""
        if c.op in (lib.XF_WRITE, lib.XF_READ, lib.XF_FLUSH, lib.XF_RELEASE, lib.XF_FSYNC):
            return bool(c.fh & lib.XF_LOCAL_FH)
        if c.op in (lib.XF_UNLINK, lib.XF_RMDIR, lib.XF_LINK):  # under a lease: answered here, queued behind the
            return True  # files made here
        if c.op in (lib.XF_OPENDIR, lib.XF_RELEASEDIR, lib.XF_READDIR):  # a listing asks the MRC only if the
            return True  # table has none, and sends what was made here first (Listings.readdir)
        if c.op in (lib.XF_GETATTR, lib.XF_SETATTR):
            u = self._unborn.get(c.node)
            return u is not None and not u.sent
        return False

    def _link_here(self, req: Any, c: Any) -> bool:
        """Make a hard link in a directory leased here without asking the MRC (the native loop queues it behind
        the files made here) and answer it: whether it could be. A file open here cannot."""
        u = self._unborn.get(c.node)
        known = ffi.new("struct xf_attr *")
        if (u is not None and not u.closed) or not lib.xf_attr_of(c.node, known) or \
                self.c.opened(known.ino) is not None:
            return False
        if u is not None:
            with u.lock:  # answered from here until it is sent: the link count with it
                done = lib.xf_link_here(req, c.node, c.node2, c.name)
                if done and not u.sent:
                    u.attr.nlink += 1
                    u.attr.ctime_ns = wall_ns()
        else:
            done = lib.xf_link_here(req, c.node, c.node2, c.name)
        if done == 2:
            lib.xf_stale_ino(known.ino)  # its other names show a link count one higher
        return bool(done)

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

    def _take_lease(self, node: int, path: str, lease: dict[str, Any] | None, dir_version: tuple[int, ...],
                    sent: float) -> None:
        """Use the lease a create or unlink brought on directory `node`: the native loop answers absent names
        there, and makes files and removes names there itself, once the table holds the directory's listing
        as it is now (`dir_version`: its listing version before and after that change)."""
        if not lease or not lease.get("term"):
            return
        had = ffi.new("uint64_t *")
        if not lib.xf_listing(node, had) or len(dir_version) != 2 or had[0] != dir_version[1]:
            self._fill(node, self.c.listing(path))  # the lease holds the names still: this listing is whole
        lo, hi = lease.get("inos") or (0, 0)
        with self._lease_lock:
            if len(self._lately) > LATELY:
                self._lately.clear()
            self._lately.add(node)
            self._leased[lease["dir"]] = node
            lib.xf_lease(node, lease["dir"], sent + lease["term"] - LEASE_MARGIN, self.accounts.gid, lo, hi)

    def send_made(self) -> None:
        """Tell the MRC about the files made and the names removed here, in the order they were: runs of one
        directory and kind, as many as fit in one call (git removes a temporary name and makes the next one
        between two links: a call per run cost a round trip more per object)."""
        with self._made_lock:
            while n := lib.xf_take_made(self._made_buf, MADE_BATCH, 0):
                try:
                    self._send_taken(n)
                finally:
                    lib.xf_made_sent()  # what asked about them goes on (xf_made_touches held it)

    def _send_taken(self, n: int) -> None:
        """Send the `n` changes taken into the made buffer."""
        runs: list[Run] = []
        for m in self._made_buf[0:n]:
            if not runs or (runs[-1].kind, runs[-1].dir_ino, runs[-1].dir_node) != (m.kind, m.dir_ino,
                                                                                      m.dir_node):
                runs.append(Run(m.kind, m.dir_ino, m.dir_node))
            runs[-1].items.append((os.fsdecode(ffi.string(m.name)), m.ino, m.mode, m.time_ns / 1e9, m.node))
            if m.kind == lib.XF_MADE_LINK:
                runs[-1].new_names.append(os.fsdecode(ffi.string(m.name2)))
        call: list[Run] = []
        size = 0
        for run in runs:
            for part in self._described(run):
                if call and size + part.size > MADE_BYTES:
                    self._send(call)
                    call, size = [], 0
                call.append(part)
                size += part.size
        self._send(call)

    def _described(self, run: Run) -> list[Run]:
        """A run as the MRC takes it, in parts that stay well within what it takes in one body: made files
        with their content, mode and times if they were used here."""
        if run.kind == lib.XF_MADE_UNLINK:
            number = self._renumbered.get
            run.body = {"op": "unlinked", "dir": run.dir_ino,
                        "names": [[f[0], number(f[1], f[1]), f[3]] + ([True] if stat.S_ISDIR(f[2]) else [])
                                  for f in run.items]}
            run.size = 100 * len(run.items)
            return [run]
        if run.kind == lib.XF_MADE_LINK:
            run.body = {"op": "linked", "dir": run.dir_ino, "delegate": True,
                        "links": [[f[0], self._renumbered.get(f[1], f[1]), new, f[3]]
                                  for f, new in zip(run.items, run.new_names, strict=True)]}
            run.size = 600 * len(run.items)
            return [run]
        parts: list[Run] = []
        part = Run(run.kind, run.dir_ino, run.dir_node)
        for f in run.items:
            with self._lock:
                u = self._unborn.get(f[4])
            if u is None:
                d: list[Any] = list(f[:4])
            else:
                with u.lock:
                    u.sent = True
                    d = [f[0], f[1], u.attr.mode, f[3], u.content()]
            more = 300 + (len(d[4]["inline"]) if len(d) == 5 else 0)
            if part.items and part.size + more > MADE_BYTES:
                parts.append(part)
                part = Run(run.kind, run.dir_ino, run.dir_node)
            part.items.append(f)
            part.described.append(d)
            part.size += more
        for p in parts + [part]:  # files written here: delegated to this mount as they are made
            p.body = {"op": "made", "dir": p.dir_ino, "files": p.described, "delegate": True}
        return parts + [part]

    def _send(self, runs: list[Run]) -> None:
        """One call with these runs, in order; then what the MRC said of each."""
        if not runs:
            return
        got: dict[str, Any] = {}
        sent, mark = time.monotonic(), self.delegated.mark()
        try:
            got = self._call("changes", changes=[r.body for r in runs])
            answers = got["answers"]
        except XosError as e:
            answers = [{"error": {"code": e.code, "message": str(e)}}] * len(runs)
        for run, r in zip(runs, answers, strict=True):
            if run.kind == lib.XF_MADE_FILE:
                self._made_sent(run, r)
            else:
                self._names_sent(run, r)
            self._renew(run, r.get("lease"), sent)
        self._keep_opened(runs, answers, got, sent, mark)

    def _renew(self, run: Run, lease: dict[str, Any] | None, sent: float) -> None:
        """The MRC renewed the lease on the run's directory for as long as `lease` says: used here, unless the
        directory was handed back meanwhile."""
        if not lease or not lease.get("term") or lease.get("dir") != run.dir_ino:
            return
        with self._lease_lock:
            if self._leased.get(run.dir_ino) == run.dir_node:
                lib.xf_lease(run.dir_node, run.dir_ino, sent + lease["term"] - LEASE_MARGIN, self.accounts.gid, 0, 0)

    def _names_sent(self, run: Run, r: dict[str, Any]) -> None:
        """Names removed or linked in one directory, as the MRC took them. One it refused is as the MRC has it:
        the listing here is dropped, so that the directory shows as the MRC has it, and the file is asked for
        again (its link count)."""
        what = "removed" if run.kind == lib.XF_MADE_UNLINK else "linked"
        if "error" in r:
            log.error("names %s here in directory %d are not, the MRC did not take them: %s", what, run.dir_ino,
                      r["error"].get("message"))
            r = {"refused": {f[0]: "" for f in run.items}}
        for name, code in r["refused"].items():
            log.error("name %s %s here in directory %d was not at the MRC (%s)", name, what, run.dir_ino, code)
        if r["refused"]:
            for f in run.items:
                lib.xf_stale_ino(self._renumbered.get(f[1], f[1]))
            lib.xf_unlist(run.dir_node, _listed(run.dir_node))
        elif len(r.get("dir_version") or ()) == 2:
            lib.xf_advance(run.dir_node, *r["dir_version"])

    def _keep_opened(self, runs: list[Run], answers: list[dict[str, Any]], got: dict[str, Any], sent: float,
                     mark: int) -> None:
        """Keep what the MRC delegated of the files made (and written) or linked here, as the answers of opens
        to read them, under the name each has after the call (a program reads back what it copied: diff -r
        after cp -a; git writes each object under a temporary name and links it into place)."""
        opened = got.get("opened")
        if not isinstance(opened, dict) or not opened:
            return
        paths: dict[int, str] = {}
        content: dict[int, str] = {}
        here: dict[int, int] = {}  # the MRC's number of a file made here under another -> that one
        for run, r in zip(runs, answers, strict=True):
            if "error" in r:
                continue
            try:
                base = self.path(run.dir_node)
            except OSError:  # a directory gone here: which names stand is not known
                return
            if run.kind == lib.XF_MADE_FILE:
                for (name, ino, _, _, _), d in zip(run.items, run.described, strict=True):
                    num = r["made"].get(name)
                    if len(d) == 5 and num:  # under the MRC's number, as the table has it now
                        paths[num], content[num], here[num] = _joined(base, name), d[4]["inline"], ino
            elif run.kind == lib.XF_MADE_LINK:
                for f, new in zip(run.items, run.new_names, strict=True):
                    if new in r["linked"]:
                        num = self._renumbered.get(f[1], f[1])
                        paths[num], here[num] = _joined(base, new), f[1]
            else:
                for f in run.items:
                    ino = self._renumbered.get(f[1], f[1])
                    if paths.get(ino) == _joined(base, f[0]):
                        del paths[ino]
        for key, o in opened.items():
            ino = int(key)
            if ino in paths and ("inline" in o or ino in content or o.get("xloc")):
                self.delegated.keep({"inline": content.get(ino), **o, "delegated": got["delegated"]}, paths[ino],
                                    sent, mark, here.get(ino, ino))

    def _made_sent(self, run: Run, r: dict[str, Any]) -> None:
        """Files made in one directory, as the MRC took them."""
        if "error" in r:
            log.error("files made here in directory %d are lost, the MRC did not take them: %s", run.dir_ino,
                      r["error"].get("message"))
            r = {"made": {}, "refused": {}}
        for name, ino, _, _, node in run.items:
            got = r["made"].get(name, 0)
            lib.xf_confirm(node, got)
            if got and got != ino:  # removals and links queued since name it by the number it was made with here
                lib.xf_renumber(run.dir_node, ino, got)  # so do the names linked to it here
                if len(self._renumbered) > 65536:
                    self._renumbered.clear()
                self._renumbered[ino] = got
            u = self._unborn.get(node)
            if u is not None:
                u.lost = name not in r["made"]
                if u.closed:
                    with self._lock:
                        self._unborn.pop(node, None)
        for name, code in r["refused"].items():
            log.error("file %s made here in directory %d is lost (%s): the lease had run out", name, run.dir_ino,
                      code)
        if len(r.get("dir_version") or ()) == 2:
            lib.xf_advance(run.dir_node, *r["dir_version"])
        # The directory's times need no refresh: each create here set them to the file's time, which the MRC
        # took as the directory's too (asking again cut creates across 10 directories from 15,900/s to 1,100).

    def _call(self, op: str, **body: Any) -> dict[str, Any]:
        """An MRC call of the sender, tried again while the MRC is unavailable (restarting, or a standby
        taking over), up to the client's deadline."""
        deadline = time.monotonic() + self.c.deadline
        while True:
            try:
                return dict(self.c.op(op, **body))
            except Unavailable:
                if time.monotonic() < deadline and not self.stopping.is_set():
                    time.sleep(0.2)
                    continue
                raise

    def sender(self) -> None:
        """Send files made here as they come, a few milliseconds' worth at a time."""
        while not self.stopping.is_set():
            if lib.xf_take_made(ffi.NULL, 0, 0.5):
                time.sleep(GATHER)
                self.send_made()

    def recaller(self) -> None:
        """Hand back the directories the MRC recalls (made files first, so whoever waits finds them) and forget
        the delegated files it recalls, which the next poll acknowledges."""
        ack = ""
        while not self.stopping.is_set():
            try:
                sent = time.monotonic()
                r = self.c.op("recalls", wait=self.delegated.wait(), ack=ack)
                ack = self.delegated.polled(r, sent)
                if r["dirs"]:
                    self.hand_back(r["dirs"])
            except XosError as e:
                self.delegated.drop_all()  # what the MRC recalls meanwhile is not heard
                ack = ""
                log.warning("directory leases: %s", e)
                self.stopping.wait(0.5)

    def hand_back(self, dirs: list[int]) -> None:
        with self._lease_lock:
            for ino in dirs:
                node = self._leased.pop(ino, None)
                if node is not None:
                    self._lately.discard(node)  # another mount wants it: not leased again by a listing
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


def _joined(base: str, name: str) -> str:
    """The path of `name` in the directory at `base`."""
    return base + name if base == "/" else f"{base}/{name}"


def _listed(node: int) -> int:
    """The listing version the table holds of directory `node` (0 if none)."""
    had = ffi.new("uint64_t *")
    return had[0] if lib.xf_listing(node, had) else 0
