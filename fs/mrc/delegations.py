"""Read delegations: a mount that opened a file to read opens it again by itself while nobody changes it.

A mount asks for one with an open to read (`delegate`) and keeps the open's answer. Before anyone else
changes the file (its size, times, mode, owners, links, names, attributes) or a directory on the path it
was opened by (a rename, a change of mode or owners), every other holder is recalled: its long poll for
recalls answers at once, it forgets the file, and its next poll says so (`ack`). A holder that does not
poll again is waited for until its session is gone: a session lives while a poll of it is pending and
for TERM after its last poll or delegated open was answered, and a mount uses what it kept only for TERM
after it sent the last call of those the MRC answered (NFSv4's read delegations, with the recall on the
holder's own poll instead of a callback channel). Close-to-open holds: a close or fsync commits, which
recalls. Delegations live in the MRC's memory; its leases' horizon covers their sessions' terms, so an
MRC restarted waits them out before it serves.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import secrets
import time
from collections.abc import Iterable

from xos.fs.mrc.leases import TERM, Leases, Recall
from xos.fs.mrc.records import Caller

COOL = 1.0  # seconds a recalled file is not delegated again: a writer and readers on two hosts take no turns
PER_SESSION = 16384  # files delegated to one session at most
TOTAL = 262144  # and to all


def holder(c: Caller) -> str:
    """Whom a delegation is held by: a session of one identity (another's calls naming it are not its)."""
    return f"{c.who}\n{c.session}" if c.session else ""


class Delegations:
    """The read delegations one MRC granted, by file and by session, and the recalls of them."""

    def __init__(self, leases: Leases) -> None:
        self.leases = leases
        self.instance = secrets.token_hex(8)  # a mount's delegations from another MRC process are void here
        self._holders: dict[int, set[str]] = {}  # file -> sessions holding it (`holder`)
        self._of: dict[str, set[int]] = {}  # session -> files it holds
        self._under: dict[int, set[int]] = {}  # directory -> files delegated by a path through it
        self._dirs: dict[int, set[int]] = {}  # file -> those directories
        self._recalled: dict[str, set[int]] = {}  # session -> files its next poll answer recalls
        self._delivered: dict[str, tuple[str, set[int]]] = {}  # session -> (answer token, files it recalled)
        # session -> when it was first answered with recalls it has not acknowledged: a TERM after, it counts as
        # gone (what it holds is dropped, nothing more is delegated to it) however often it polls
        self._overdue: dict[str, float] = {}
        self._alive: dict[str, float] = {}  # session -> monotonic time it lives until, with no poll pending
        self._polling: collections.Counter[str] = collections.Counter()
        self._recalling: collections.Counter[int] = collections.Counter()
        self._cool: dict[int, float] = {}
        self._changed = asyncio.Event()
        self._count = 0  # (file, session) pairs held
        self.granted = 0
        self.recalls = 0

    def held(self) -> int:
        """How many files are delegated now (to sessions not known gone)."""
        return len(self._holders)

    def grant(self, ino: int, dirs: Iterable[int], c: Caller) -> bool:
        """Delegate file `ino`, opened by a path through directories `dirs`, to the caller's session: whether
        it was (not without a session, while the file is recalled or cooling, or past the bounds)."""
        now, me = time.monotonic(), holder(c)
        if not me or self._recalling[ino] or self._cool.get(ino, 0.0) > now or self._overdue.get(me, now) + TERM <= now:
            return False
        mine = self._of.setdefault(me, set())
        if ino not in mine:
            if len(mine) >= PER_SESSION or self._count >= TOTAL and not self._prune():
                return False
            mine.add(ino)
            self._count += 1
            self._holders.setdefault(ino, set()).add(me)
        for d in dirs:
            self._under.setdefault(d, set()).add(ino)
            self._dirs.setdefault(ino, set()).add(d)
        self.lives(me)
        self.granted += 1
        return True

    def lives(self, session: str) -> None:
        """A call of `session` is answered now: it lives TERM more (written into the leases' horizon)."""
        if len(self._alive) > 4 * PER_SESSION:
            self._prune()
        self._alive[session] = time.monotonic() + TERM
        self.leases.note_horizon()

    def _gone(self, session: str) -> bool:
        now = time.monotonic()
        return (not self._polling[session] and now >= self._alive.get(session, 0.0)
                or now >= self._overdue.get(session, now) + TERM)

    def _drop(self, ino: int, session: str) -> None:
        holders = self._holders.get(ino)
        if holders is not None:
            holders.discard(session)
            if not holders:
                del self._holders[ino]
                for d in self._dirs.pop(ino, ()):
                    under = self._under.get(d)
                    if under is not None:
                        under.discard(ino)
                        if not under:
                            del self._under[d]
        mine = self._of.get(session)
        if mine is not None and ino in mine:
            self._count -= 1
            mine.discard(ino)
            if not mine:
                del self._of[session]
        self._changed.set()
        self._changed = asyncio.Event()

    def _prune(self) -> bool:
        """Forget the files of sessions gone and the cooling that ended: whether anything was."""
        now = time.monotonic()
        self._cool = {ino: t for ino, t in self._cool.items() if t > now}
        gone = [s for s in self._alive if self._gone(s)]
        for s in gone:
            for ino in list(self._of.get(s, ())):
                self._drop(ino, s)
            del self._alive[s]
            self._recalled.pop(s, None)
            self._delivered.pop(s, None)
            self._overdue.pop(s, None)
        return bool(gone)

    def changing(self, ino: int, is_dir: bool, c: Caller) -> None:
        """Before `c` changes inode `ino`: Recall if other sessions hold it (or, for a directory, files
        delegated by a path through it). The catalogue's guard of every change to an inode."""
        inos = self._under.get(ino, ()) if is_dir else (ino,) if ino in self._holders else ()
        held, me = [], holder(c)
        for ino in list(inos):
            for s in list(self._holders.get(ino, ())):
                if s == me:
                    continue
                if self._gone(s):
                    self._drop(ino, s)
                else:
                    held.append(ino)
                    break
        if held:
            raise Recall(f"{len(held)} file(s) delegated to other mounts, as {held[0]}",
                         lambda _session: self.recall(held, me))

    async def recall(self, inos: list[int], waiting: str = "") -> None:
        """Have every session but `waiting` that holds one of `inos` forget it; return once each did or is gone."""
        self.recalls += 1
        for ino in inos:
            self._recalling[ino] += 1
        try:
            for ino in inos:
                for s in self._holders.get(ino, ()):
                    if s != waiting:
                        self._recalled.setdefault(s, set()).add(ino)
                        self.leases.wake(s.partition("\n")[2])
            while True:
                left = [(ino, s) for ino in inos for s in self._holders.get(ino, ()) if s != waiting]
                for ino, s in left:
                    if self._gone(s):
                        self._drop(ino, s)
                if not any(s != waiting for ino in inos for s in self._holders.get(ino, ())):
                    return
                changed = self._changed
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(changed.wait(), 0.05 + max(0.0, min(
                        self._alive.get(s, 0.0) - time.monotonic() for _, s in left)))
        finally:
            now = time.monotonic()
            for ino in inos:
                self._recalling[ino] -= 1
                if self._recalling[ino] <= 0:
                    del self._recalling[ino]
                self._cool[ino] = now + COOL
            if len(self._cool) > PER_SESSION:
                self._cool = {ino: t for ino, t in self._cool.items() if t > now}

    def polling(self, c: Caller, ack: str) -> None:
        """A poll of the caller's session arrived; `ack`, the token of the answer it last had: the files that
        answer recalled are forgotten there (a mount handles an answer before it polls again)."""
        session = holder(c)
        self._polling[session] += 1
        token, files = self._delivered.pop(session, ("", set()))
        if files and ack != token:  # that answer was lost: recalled again
            self._recalled.setdefault(session, set()).update(files)
        elif files:
            self._overdue.pop(session, None)
            for ino in files:
                self._drop(ino, session)

    def pending(self, c: Caller) -> bool:
        """Whether a poll of the caller's session has recalls to answer now."""
        return bool(self._recalled.get(holder(c)))

    def polled(self, c: Caller) -> tuple[str, list[int]]:
        """A poll of the caller's session is answered: its token and the files it recalls."""
        session = holder(c)
        self._polling[session] -= 1
        if self._polling[session] <= 0:
            del self._polling[session]
        files = self._recalled.pop(session, set())
        token = secrets.token_hex(8)
        if files:
            self._delivered[session] = (token, files)
            self._overdue.setdefault(session, time.monotonic())
        self.lives(session)
        return token, sorted(files)
