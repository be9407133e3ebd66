"""Where a file's bytes live: striping over OSDs and the list of replicas (XtreemFS's XLoc)."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from xos.errors import InvalidInput

MIN_STRIPE = 4096
MAX_STRIPE = 16 << 20  # an OSD object holds at most this much
INLINE_MAX = 64 << 10  # files up to this size live in the MRC, not on OSDs
# A directory listing's row: the name, then these attributes (getattr's keys) in this order.
LISTING = ("ino", "mode", "owner", "group", "size", "nlink", "atime", "mtime", "ctime", "inline", "readonly", "rdev")
ALSO = 64  # directories whose listing versions one dirversion call may ask for besides its own
FID = re.compile(r"[0-9a-f]{8,64}")  # a file's id, as its OSDs name it


@dataclass(frozen=True)
class Striping:
    """RAID-0 over `width` OSDs in units of `size` bytes: object n is on OSD n mod width."""

    size: int = 1 << 20
    width: int = 1

    def __post_init__(self) -> None:
        if not MIN_STRIPE <= self.size <= MAX_STRIPE or self.size & (self.size - 1):
            raise InvalidInput(f"stripe size {self.size} must be a power of two from 4K to 16M", field="stripe_size")
        if not 1 <= self.width <= 64:
            raise InvalidInput(f"stripe width {self.width} must be 1 to 64", field="stripe_width")

    def objects(self, offset: int, length: int) -> list[tuple[int, int, int]]:
        """(object number, offset in the object, length) covering [offset, offset+length)."""
        out = []
        end = offset + length
        while offset < end:
            n, inner = divmod(offset, self.size)
            take = min(self.size - inner, end - offset)
            out.append((n, inner, take))
            offset += take
        return out


@dataclass(frozen=True)
class Replica:
    """One full copy of a file: an OSD id per stripe column."""

    osds: tuple[str, ...]
    read: float = 0.0  # last time an OSD reported reading it

    def osd_of(self, objno: int) -> str:
        """The OSD holding object `objno` of this replica."""
        return self.osds[objno % len(self.osds)]

    def to_json(self) -> dict[str, Any]:
        return {"osds": list(self.osds), "read": self.read}


@dataclass(frozen=True)
class Xloc:
    """A file's replicas and their striping; `version` changes with every change of the list."""

    striping: Striping
    replicas: tuple[Replica, ...] = ()
    version: int = 0
    urls: dict[str, str] = field(default_factory=dict)  # OSD id -> URL, filled in for clients

    def to_json(self) -> dict[str, Any]:
        return {"stripe_size": self.striping.size, "stripe_width": self.striping.width, "version": self.version,
                "replicas": [r.to_json() for r in self.replicas], "urls": self.urls}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Xloc:
        return cls(Striping(int(d["stripe_size"]), int(d["stripe_width"])),
                   tuple(Replica(tuple(r["osds"]), float(r.get("read", 0.0))) for r in d["replicas"]),
                   int(d["version"]), dict(d.get("urls", {})))

    def osds(self) -> set[str]:
        """Every OSD holding part of the file."""
        return {o for r in self.replicas for o in r.osds}
