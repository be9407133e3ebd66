"""What a client holds of one open file, shared by every handle on it in this process."""

from __future__ import annotations

import collections
import concurrent.futures
import threading
from dataclasses import dataclass, field
from typing import Any

from xos.fs.layout import Xloc


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
    # objno -> (offset, bytes): the run of bytes small writes last put in each of a few objects (ordered by
    # the last write), what a read of them gives without an OSD
    recent: collections.OrderedDict[int, tuple[int, bytearray]] = field(default_factory=collections.OrderedDict)
    last_end: int = -1
    prefer: int = 0  # replica that answered last
    alive_at: float = 0.0  # when the MRC last said the file still exists (monotonic)
    dir_version: tuple[int, ...] = ()  # a create's: its directory's listing version before and after
    lease: dict[str, Any] | None = None  # a create's: the lease on its directory the MRC granted, if asked
    error: BaseException | None = None
    # the OSDs that took writes of this client's it has not had them sync yet; None: any (unknown)
    unsynced: set[str] | None = None
    committed: int = -1  # the size the MRC has: an fdatasync that leaves it so need not tell the MRC
