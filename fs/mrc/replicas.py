"""Replica management at the MRC: files kept at their volume's replica count, objects of removed files deleted.

A replica whose OSD has been silent past the grace period is dropped from the file's list and
a new one is copied from a live replica onto OSDs the file does not use yet. Replicas added
beyond the policy (`xos fs replicate`) that nobody reads for `idle` seconds are dropped again.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from typing import Any

import aiohttp

from xos.errors import InvalidInput, NoReplica, NoSpace, NotFound, Unavailable
from xos.fs.layout import FID, Replica, Xloc
from xos.fs.mrc.records import Inode
from xos.fs.mrc.store import Catalogue

log = logging.getLogger(__name__)

READS_KEPT = 200_000  # files per OSD whose last read is remembered (a replica unread for long may go)

TIMEOUT = aiohttp.ClientTimeout(total=30, sock_connect=2)
PASS = 1.0  # seconds between passes of the manager


class ReplicaManager:
    """Keeps replica counts and deletes orphaned objects; its OSD calls carry the MRC's service token."""

    def __init__(self, cat: Catalogue, secret: bytes, idle: float) -> None:
        self.cat = cat
        self.secret = secret
        self.idle = idle
        self.session: aiohttp.ClientSession | None = None
        self.started = time.time()
        self.last_read: dict[str, dict[str, float]] = {}  # osd -> fid -> last read the OSD reported
        self.progress: dict[str, list[int]] = {}  # fid -> [bytes copied, bytes to copy] of a replica being made
        self.copying: dict[str, asyncio.Event] = {}  # fid -> set when the copy for its new replica is over
        self._wake = asyncio.Event()
        self._live: frozenset[str] = frozenset()
        self.passes = 0  # passes made (orphans deleted)
        self.walks = 0  # of them, those over every file with OSD objects

    def wake(self) -> None:
        """Run a pass soon (something was deleted or changed)."""
        self._wake.set()

    def seen(self, osd: str, reads: dict[str, Any]) -> None:
        """The files `osd` says it read since its last heartbeat, and when. Kept per OSD, at most READS_KEPT
        (those read longest ago go first): an OSD's flood fills its own table, and decides only which
        replicas on it look unread."""
        mine = self.last_read.setdefault(osd, {})
        for fid, at in list(reads.items())[:READS_KEPT]:
            if (isinstance(fid, str) and FID.fullmatch(fid) and isinstance(at, int | float) and
                    not isinstance(at, bool) and math.isfinite(at)):
                mine[fid] = float(at)
        if len(mine) > READS_KEPT:
            self.last_read[osd] = dict(sorted(mine.items(), key=lambda kv: kv[1])[-(READS_KEPT // 2):])

    def _url(self, osd: str) -> str:
        url = self.cat.urls().get(osd)
        if not url:
            raise NotFound(f"no OSD {osd!r}")
        return url

    async def _call(self, method: str, url: str, **kw: Any) -> Any:
        assert self.session is not None
        try:
            async with self.session.request(method, url, timeout=TIMEOUT, **kw) as resp:
                if resp.status != 200:
                    raise Unavailable(f"{url}: HTTP {resp.status}: {(await resp.text())[:200]}")
                if resp.content_type == "application/json":
                    return await resp.json()
                return await resp.read()
        except (TimeoutError, aiohttp.ClientError, OSError) as e:
            raise Unavailable(f"{url}: {e}") from None

    def _alive(self) -> set[str]:
        return {o["id"] for o in self.cat.osds() if o["alive"]}

    async def truncate(self, node: Inode) -> None:
        """Cut every replica's objects to the file's new size; replicas that cannot be reached are dropped."""
        xloc = node.layout()
        if xloc is None:
            return
        body = {"size": node.size, "stripe_size": xloc.striping.size, "epoch": node.epoch}
        failed: set[str] = set()

        async def one(osd: str) -> None:
            try:
                await self._call("POST", f"{self._url(osd)}/v1/o/{node.fid}/truncate", json=body)
            except (Unavailable, NotFound) as e:
                log.warning("truncate of %s on OSD %s failed: %s", node.fid, osd, e)
                failed.add(osd)

        await asyncio.gather(*(one(o) for o in xloc.osds()))
        if failed:
            await self._drop(node.ino, xloc, lambda r: bool(failed & set(r.osds)))

    async def drop_behind(self, node: Inode, urls: list[str]) -> None:
        """Drop the replicas on OSDs that missed writes (the primary could not forward to them)."""
        xloc = node.layout()
        if xloc is None:
            return
        by_url = {u: o for o, u in self.cat.urls().items()}
        behind = {by_url[u] for u in urls if u in by_url}
        await self._drop(node.ino, xloc, lambda r: bool(behind & set(r.osds)))

    async def _drop(self, ino: int, xloc: Xloc, bad: Any) -> Xloc:
        keep = [r for r in xloc.replicas if not bad(r)]
        if not keep:  # never drop the last copy: the file waits for its OSDs instead
            return xloc
        if len(keep) == len(xloc.replicas):
            return xloc
        new = self.cat.set_xloc(ino, xloc.version, keep)
        log.warning("inode %s: %d replica(s) dropped, %d left", ino, len(xloc.replicas) - len(keep), len(keep))
        self.wake()
        return new

    async def add(self, node: Inode, osds: list[Any] | None) -> Xloc:
        """A new replica of a file (on `osds` if given, one per stripe column), copied from a live one."""
        xloc = node.layout()
        if xloc is None:
            raise InvalidInput("this file is small enough to live in the MRC: it has no OSD replicas")
        if osds:
            if len(osds) != xloc.striping.width:
                raise InvalidInput(f"give {xloc.striping.width} OSDs, one per stripe column", field="osds")
            for col, o in enumerate(osds):
                self._url(str(o))
                if any(r.osds[col] == o for r in xloc.replicas):
                    raise InvalidInput(f"OSD {o} already holds column {col} of this file", field="osds")
            new = Replica(tuple(str(o) for o in osds))
        else:
            choice = self.cat.choose(xloc.striping.width, 1, [r.osds for r in xloc.replicas])
            if not choice:
                raise NoSpace("no live OSDs left that do not hold this file already")
            new = choice[0]
        # No writer may change the file while it is copied: no write capability is handed out until
        # the copy is in (the MRC waits on `copying`), and the OSDs refuse writes under the old
        # replica list once fenced, after the ones they had taken are done everywhere.
        done = self.copying[node.fid] = asyncio.Event()
        try:
            xloc = self.cat.set_xloc(node.ino, xloc.version, list(xloc.replicas))
            await self._fence(node.fid, xloc)
            await self._copy(node, xloc, new)
            return self.cat.set_xloc(node.ino, xloc.version, [*xloc.replicas, new])
        finally:
            del self.copying[node.fid]
            done.set()

    async def _fence(self, fid: str, xloc: Xloc) -> None:
        """Tell every live OSD of the file its new replica-list version; back when their writes are done."""
        alive = self._alive()
        await asyncio.gather(*(self._call("POST", f"{self._url(o)}/v1/o/{fid}/fence", json={"xver": xloc.version})
                               for o in xloc.osds() if o in alive))

    async def writable(self, fid: str) -> None:
        """Wait until no copy of `fid` is under way (before handing out a write capability)."""
        done = self.copying.get(fid)
        if done is not None:
            await done.wait()

    async def remove(self, node: Inode, osd: str) -> Xloc:
        """Remove the replica on `osd`; the last one stays."""
        xloc = node.layout()
        if xloc is None or not any(osd in r.osds for r in xloc.replicas):
            raise InvalidInput(f"OSD {osd} holds no replica of this file", field="osd")
        if len(xloc.replicas) == 1:
            raise InvalidInput("this is the file's only replica", field="osd")
        gone = next(r for r in xloc.replicas if osd in r.osds)
        new = self.cat.set_xloc(node.ino, xloc.version, [r for r in xloc.replicas if r is not gone])
        await self._delete(node.fid, [o for o in gone.osds if o not in new.osds()])
        return new

    async def _copy(self, node: Inode, xloc: Xloc, new: Replica) -> None:
        """Copy every object of a file from the live replicas to `new`, object by object."""
        alive = self._alive()
        sources = [r for r in xloc.replicas if set(r.osds) <= alive]
        if not sources:
            raise NoReplica(f"no live replica of {node.fid} to copy from")
        src = sources[0]
        work = []
        for col, osd in enumerate(src.osds):
            listing = await self._call("GET", f"{self._url(osd)}/v1/o/{node.fid}")
            work += [(osd, objno, size) for objno, size in listing["objects"] if objno % xloc.striping.width == col]
        progress = self.progress[node.fid] = [0, sum(size for _, _, size in work)]
        try:
            for osd, objno, size in work:
                data = await self._call("GET", f"{self._url(osd)}/v1/o/{node.fid}/{objno}")
                await self._call("PUT", f"{self._url(new.osd_of(objno))}/v1/o/{node.fid}/{objno}",
                                 params={"off": "0"}, data=data)
                progress[0] += size
        finally:
            self.progress.pop(node.fid, None)

    async def _delete(self, fid: str, osds: list[str]) -> list[str]:
        """Delete a file's objects on OSDs; the ones that could not be reached."""
        left = []
        for osd in osds:
            try:
                await self._call("DELETE", f"{self._url(osd)}/v1/o/{fid}")
            except (Unavailable, NotFound):
                left.append(osd)
        return left

    async def run(self) -> None:
        """Passes until cancelled: orphans whenever woken; lost OSDs, counts below and above the policy once
        a PASS (or at once when OSDs come or go). Deleting a tree wakes it per name: a walk over every
        file each time held the MRC's loop up, and rm -rf with it."""
        last_full = 0.0
        while True:
            try:
                await asyncio.wait_for(self._wake.wait(), PASS)
            except TimeoutError:
                pass
            self._wake.clear()
            full = time.monotonic() - last_full >= PASS
            try:
                walked = await self.one_pass(full)
                self.passes += 1  # both at once: a pass counts when it is over
                self.walks += walked
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("replica pass failed")
            if full:
                last_full = time.monotonic()

    async def one_pass(self, full: bool = True) -> bool:
        """Delete orphaned objects; with `full` (or when the live OSDs changed), bring every file's replicas
        to its volume's count. Whether it walked every file."""
        alive = self._alive()
        for fid, osds in self.cat.orphans():
            left = await self._delete(fid, [o for o in osds if o in alive])
            self.cat.forget_orphan(fid, left + [o for o in osds if o not in alive])
        changed = alive != self._live
        if not (full or changed):
            return False
        self._live = frozenset(alive)
        for node, want in self.cat.replicated():
            xloc = node.layout()
            assert xloc is not None
            if changed:
                xloc = await self._drop(node.ino, xloc, lambda r: not set(r.osds) <= alive)
            if len(xloc.replicas) < want:
                try:
                    xloc = await self.add(self.cat.inode(node.ino), None)
                    log.info("file %s back to %d replica(s)", node.fid, len(xloc.replicas))
                except (NoSpace, NoReplica, Unavailable, InvalidInput) as e:
                    log.info("file %s stays below its replica count: %s", node.fid, e)
            elif len(xloc.replicas) > want:
                now = time.time()
                for r in xloc.replicas:
                    last = max([self.last_read.get(o, {}).get(node.fid, self.started) for o in r.osds])
                    if now - last > self.idle and len(xloc.replicas) > want:
                        xloc = await self.remove(self.cat.inode(node.ino), r.osds[0])
                        log.info("file %s: unread replica on %s dropped", node.fid, ",".join(r.osds))
        return True
