"""Directory leases: a mount creating in a directory holds the directory's names for a short term.

While it holds them it answers "no such name" there itself and creates files there without
asking the MRC each time, sending what it made in batches (CephFS's asynchronous directory
operations, under its capabilities, work the same way). Anyone else who reads or changes those
names first has the holder hand them back, which flushes what it made (a recall), or waits out
the term. Close-to-open holds: a file closed on the holder is at the MRC before anyone else can
look for it.

The MRC keeps leases in memory. It writes down how far the terms it granted reach (a wall-clock
horizon); an MRC restarted before that waits for it before it serves, so a lease granted by the
process before is never overrun.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import os
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from xos.fs.mrc.records import Caller

TERM = 2.0  # seconds a lease runs unless renewed; a holder gone silent holds others up this long at most
# A lease is recalled no sooner than this after it was granted: mounts creating in one directory take
# turns, each making files by itself for a slice, instead of handing the lease over at every file (three
# mounts making 1,500 files each in one directory: 450-740 creates/s in all when a recalled directory was
# not leased again for 5 s and everyone asked the MRC for each name).
MIN_HOLD = 0.1
RESERVE = 4096  # inode numbers handed to a holder at a time
POLL = 3.0  # seconds a holder's wait for recalls is answered after at most (under the client's timeout)


class Recall(Exception):
    """A lease or a delegation stands in the way of a request: the request waits for it to be handed back
    (`wait`, given the session waiting), then runs again."""

    def __init__(self, what: str, wait: Callable[[str], Awaitable[None]], lease: Lease | None = None) -> None:
        super().__init__(what)
        self.wait = wait
        self.lease = lease


@dataclass
class Lease:
    session: str
    who: str
    ino: int
    until: float  # monotonic
    granted: float = 0.0  # monotonic: when this session was given it
    returned: asyncio.Event = field(default_factory=asyncio.Event)


class Leases:
    """The leases one MRC granted, the recalls it waits on and the inode numbers it reserved per holder."""

    def __init__(self, horizon_file: str) -> None:
        self._file = horizon_file
        self._by_dir: dict[int, Lease] = {}
        self._recalls: dict[str, set[int]] = {}  # session -> directories it is to hand back
        self._waiting: dict[int, collections.Counter[str]] = {}  # directory -> sessions waiting on its recall
        self._wake: dict[str, asyncio.Event] = {}
        self._reserved: dict[str, list[range]] = {}
        self._horizon = 0.0
        try:
            with open(horizon_file) as f:
                self.grace_until = float(f.read().strip() or 0)
        except (OSError, ValueError):
            self.grace_until = 0.0

    async def grace(self) -> None:
        """Wait out the leases an MRC before this one may have granted."""
        wait = self.grace_until - time.time()
        if wait > 0:
            await asyncio.sleep(min(wait, 2 * TERM))

    def check(self, ino: int, c: Caller) -> None:
        """Recall if another session holds directory `ino` (the catalogue's guard)."""
        lease = self._by_dir.get(ino)
        if lease is None or (lease.session == c.session and c.session):
            return
        if lease.until <= time.monotonic():
            del self._by_dir[ino]
            return
        raise Recall(f"directory {ino} is leased", lambda session: self.recall(lease, session), lease)

    def grant(self, ino: int, c: Caller) -> float:
        """Lease directory `ino` to the caller's session: the term in seconds, or 0 (not now)."""
        if not c.session:
            return 0.0
        now = time.monotonic()
        lease = self._by_dir.get(ino)
        if lease is not None and lease.session != c.session and lease.until > now:
            return 0.0
        if any(session != c.session for session in self._waiting.get(ino, ())):
            return 0.0  # others wait for this directory's lease to end: their turn first
        if lease is None or lease.session != c.session:
            lease = self._by_dir[ino] = Lease(c.session, c.who, ino, 0.0, now)
        lease.until = now + TERM
        self.note_horizon()
        return TERM

    def renew(self, ino: int, c: Caller) -> bool:
        """The caller's session holds directory `ino` and is sending what it made there: its term runs on,
        recalled or not (whoever waits on the recall reads what it sends). Whether it held it."""
        lease = self._by_dir.get(ino)
        now = time.monotonic()
        if lease is None or not c.session or lease.session != c.session or lease.until <= now:
            return False
        lease.until = now + TERM
        self.note_horizon()
        return True

    def lasts(self, ino: int, c: Caller) -> float:
        """How long the caller's session may go on using its lease on directory `ino` by itself: 0 if it holds
        none, or it is recalled, or another session waits for it."""
        lease = self._by_dir.get(ino)
        left = lease.until - time.monotonic() if lease is not None else 0.0
        if lease is None or not c.session or lease.session != c.session or left <= 0:
            return 0.0
        if ino in self._recalls.get(c.session, ()) or any(s != c.session for s in self._waiting.get(ino, ())):
            return 0.0
        return left

    def note_horizon(self) -> None:
        """Write down how far granted terms reach, rarely: at most once per half term."""
        reach = time.time() + TERM
        if reach <= self._horizon - TERM / 2:
            return
        self._horizon = reach + TERM
        tmp = self._file + ".tmp"
        with open(tmp, "w") as f:
            f.write(f"{self._horizon:.3f}\n")
        os.replace(tmp, self._file)

    def reserved(self, c: Caller) -> list[range]:
        return self._reserved.get(c.session, []) if c.session else []

    def reserve(self, c: Caller, inos: range) -> None:
        """Inode numbers the caller's session may name in what it makes; only the newest few are kept."""
        self._reserved[c.session] = (self._reserved.pop(c.session, []) + [inos])[-4:]
        if len(self._reserved) > 4096:  # the sessions that reserved longest ago are gone by now
            del self._reserved[next(iter(self._reserved))]

    def held(self) -> int:
        """How many leases run now."""
        now = time.monotonic()
        return sum(1 for lease in self._by_dir.values() if lease.until > now)

    async def recall(self, lease: Lease, session: str = "") -> None:
        """Have the holder hand `lease` back once it held it MIN_HOLD, or wait until its term ran out
        (`session`: the one waiting, which no other session overtakes with a new lease meanwhile)."""
        waiting = self._waiting.setdefault(lease.ino, collections.Counter())
        waiting[session] += 1
        try:
            await self._recall(lease)
        finally:
            waiting[session] -= 1
            if waiting[session] <= 0:
                del waiting[session]
            if not waiting and self._waiting.get(lease.ino) is waiting:
                del self._waiting[lease.ino]

    async def _recall(self, lease: Lease) -> None:
        hold = lease.granted + MIN_HOLD - time.monotonic()
        if hold > 0:
            await asyncio.sleep(hold)
        if self._by_dir.get(lease.ino) is lease:
            self._recalls.setdefault(lease.session, set()).add(lease.ino)
            self._wake.setdefault(lease.session, asyncio.Event()).set()
            # Until it is handed back, or its term runs out; a holder still sending what it made there renews
            # the term (`renew`) and is waited for: it is not silent, and what it sends is what the waiter reads.
            while self._by_dir.get(lease.ino) is lease and not lease.returned.is_set():
                left = lease.until - time.monotonic()
                if left <= 0:
                    break
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(lease.returned.wait(), left)
            if self._by_dir.get(lease.ino) is lease:
                del self._by_dir[lease.ino]

    def hand_back(self, c: Caller, inos: list[int]) -> None:
        """The holder is done with these directories (after a recall, or unmounting)."""
        for ino in inos:
            lease = self._by_dir.get(ino)
            if lease is not None and lease.session == c.session and lease.who == c.who:
                del self._by_dir[ino]
                lease.returned.set()
            self._recalls.get(c.session, set()).discard(ino)

    def wake(self, session: str) -> None:
        """Answer `session`'s poll for recalls now (or its next one at once)."""
        self._wake.setdefault(session, asyncio.Event()).set()

    async def recalls(self, c: Caller, wait: float = POLL, also: Callable[[], bool] = lambda: False) -> list[int]:
        """The directories the caller's session is asked to hand back: at once if any (or if `also` says there
        is something else to answer), else within `wait` seconds (POLL at most)."""
        wake = self._wake.setdefault(c.session, asyncio.Event())
        if not self._recalls.get(c.session) and not also():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(wake.wait(), max(0.0, min(wait, POLL)))
        wake.clear()
        dirs = sorted(self._recalls.pop(c.session, set()))
        if self._wake.get(c.session) is wake:
            del self._wake[c.session]  # a recall before the next wait sets up another
        return dirs
