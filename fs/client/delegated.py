"""Files the MRC delegated to this mount: its answers to opens to read, to open the files again by itself.

The MRC recalls a delegation before another mount changes the file (or a directory on its path) and
waits until this mount forgot it (fs/mrc/delegations.py); changes made here forget what they touch
themselves. What is kept is used only while this mount's session surely lives at the MRC: for the term
after it sent the last call the MRC answered (a poll for recalls or a delegated open), and only from the
MRC process that granted it.
"""

from __future__ import annotations

import threading
import time
from typing import Any

MARGIN = 0.25  # seconds of the term not used: the MRC's clock and scheduling
POLL = 3.0  # seconds a poll for recalls waits while nothing is kept


class Delegated:
    """Answers of delegated opens, by inode number, with the path each was opened by."""

    def __init__(self, most: int = 8192) -> None:
        self._lock = threading.Lock()
        self._kept: dict[int, tuple[str, dict[str, Any]]] = {}
        # Forgetting is counted: an answer asked for before a file was forgotten (or everything) is not kept.
        self._mark = 0
        self._dropped: dict[int, int] = {}  # file -> the count when it was last forgotten
        self._all = 0  # the count when everything was
        self._instance = ""  # the MRC process the kept answers are from
        self._until = 0.0  # monotonic: the end of the term the MRC answered for last
        self._term = 2.0
        self.most = most
        self.hits = 0

    def get(self, ino: int, path: str) -> dict[str, Any] | None:
        """The answer kept for file `ino` opened by `path`, if it may be used now."""
        with self._lock:
            kept = self._kept.get(ino)
            if kept is None or kept[0] != path or time.monotonic() >= self._until:
                return None
            self.hits += 1
            r = kept[1]
        return {**r, "attrs": dict(r["attrs"])}

    def mark(self) -> int:
        """To give `keep` with an answer asked for after this."""
        return self._mark

    def keep(self, r: dict[str, Any], path: str, sent: float, mark: int, was: int = 0) -> None:
        """Keep an open's answer if the MRC delegated the file (`sent`: when the open was sent) and the file
        was not forgotten since `mark` (nor under the number `was` it had here before the MRC's)."""
        d = r.get("delegated")
        if not isinstance(d, dict):
            return
        ino = int(r["attrs"]["ino"])
        with self._lock:
            if self._all > mark or self._dropped.get(ino, 0) > mark or self._dropped.get(was, 0) > mark:
                return
            self._renewed(str(d.get("instance", "")), float(d.get("term", 0.0)), sent)
            self._kept[ino] = (path, r)
            while len(self._kept) > self.most:
                del self._kept[next(iter(self._kept))]

    def _renewed(self, instance: str, term: float, sent: float) -> None:
        if instance != self._instance:  # answers of another MRC process: those kept are void, not those coming
            self._kept.clear()
            self._instance, self._until = instance, 0.0
        self._term = max(0.0, min(term, 60.0))
        self._until = max(self._until, sent + self._term - MARGIN)

    def polled(self, r: dict[str, Any], sent: float) -> str:
        """A poll for recalls sent at `sent` was answered `r`: the files it recalls are forgotten; the token
        the next poll acknowledges it with."""
        with self._lock:
            for ino in r.get("files") or []:
                self._forget(ino)
            self._renewed(str(r.get("instance", "")), float(r.get("term", 0.0)), sent)
        return str(r.get("token", ""))

    def wait(self) -> float:
        """How long the next poll for recalls may wait: well within the term while anything is kept."""
        return self._term / 3 if self._kept else POLL

    def drop(self, ino: int) -> None:
        """Forget what was kept of file `ino` (changed here)."""
        with self._lock:
            self._forget(ino)

    def _forget(self, ino: int) -> None:
        self._mark += 1
        self._kept.pop(ino, None)
        self._dropped[ino] = self._mark
        if len(self._dropped) > 4 * self.most:  # as good as forgetting everything now
            self._forget_all()

    def drop_all(self) -> None:
        """Forget everything kept (a directory changed here, the MRC unreachable)."""
        with self._lock:
            self._forget_all()

    def _forget_all(self) -> None:
        self._mark += 1
        self._all = self._mark
        self._kept.clear()
        self._dropped.clear()

    def __len__(self) -> int:
        return len(self._kept)
