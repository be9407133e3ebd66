"""The MRC catalogue's records: its SQLite schema, volumes, inodes, who is asking, and the checks on
names and permissions every operation makes."""

from __future__ import annotations

import json
import stat
from dataclasses import dataclass
from typing import Any

from xos.errors import AccessDenied, BadPath, NameTooLong
from xos.fs.layout import Striping, Xloc

SCHEMA = """
CREATE TABLE IF NOT EXISTS volumes (
    name TEXT PRIMARY KEY, vo TEXT NOT NULL, acl TEXT NOT NULL, stripe_size INTEGER NOT NULL,
    stripe_width INTEGER NOT NULL, replicas INTEGER NOT NULL, root INTEGER NOT NULL, created REAL NOT NULL);
CREATE TABLE IF NOT EXISTS inodes (
    ino INTEGER PRIMARY KEY AUTOINCREMENT, volume TEXT NOT NULL, fid TEXT NOT NULL, mode INTEGER NOT NULL,
    owner TEXT NOT NULL, grp TEXT NOT NULL, size INTEGER NOT NULL DEFAULT 0, nlink INTEGER NOT NULL,
    atime REAL NOT NULL, mtime REAL NOT NULL, ctime REAL NOT NULL, parent INTEGER NOT NULL DEFAULT 0,
    target TEXT, inline BLOB, stripe_size INTEGER NOT NULL, stripe_width INTEGER NOT NULL,
    epoch INTEGER NOT NULL DEFAULT 0, xloc TEXT, xver INTEGER NOT NULL DEFAULT 0,
    readonly INTEGER NOT NULL DEFAULT 0, cver INTEGER NOT NULL DEFAULT 0, rdev INTEGER NOT NULL DEFAULT 0);
CREATE TABLE IF NOT EXISTS dentries (parent INTEGER NOT NULL, name TEXT NOT NULL, ino INTEGER NOT NULL,
    PRIMARY KEY (parent, name)) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS dentries_ino ON dentries (ino);
CREATE TABLE IF NOT EXISTS xattrs (ino INTEGER NOT NULL, name TEXT NOT NULL, value BLOB NOT NULL,
    PRIMARY KEY (ino, name)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS osds (id TEXT PRIMARY KEY, url TEXT NOT NULL, capacity INTEGER NOT NULL,
    free INTEGER NOT NULL, load REAL NOT NULL, seen REAL NOT NULL);
CREATE TABLE IF NOT EXISTS orphans (fid TEXT PRIMARY KEY, osds TEXT NOT NULL, since REAL NOT NULL);
"""

# A directory's cver counts changes to what its listing shows (names, and the attributes a listing
# row holds), so a client revalidates a listing it holds with one number instead of fetching it again.
# Triggers, so that no change can forget it: recursive triggers are off, the bump does not cascade.
LISTING_VERSION = """
CREATE TRIGGER IF NOT EXISTS listing_attrs
    AFTER UPDATE OF mode, owner, grp, size, nlink, atime, mtime, ctime, inline, readonly ON inodes
    BEGIN UPDATE inodes SET cver = cver + 1 WHERE ino IN (SELECT parent FROM dentries WHERE ino = NEW.ino); END;
CREATE TRIGGER IF NOT EXISTS listing_add AFTER INSERT ON dentries
    BEGIN UPDATE inodes SET cver = cver + 1 WHERE ino = NEW.parent; END;
CREATE TRIGGER IF NOT EXISTS listing_remove AFTER DELETE ON dentries
    BEGIN UPDATE inodes SET cver = cver + 1 WHERE ino = OLD.parent; END;
"""

# The same in PostgreSQL (its triggers call functions). The bumps set only cver, which none of them watches.
LISTING_VERSION_PG = [
    "CREATE FUNCTION xos_listing_attrs() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN UPDATE inodes SET cver = "
    "cver + 1 WHERE ino IN (SELECT parent FROM dentries WHERE ino = NEW.ino); RETURN NULL; END $$",
    "CREATE TRIGGER listing_attrs AFTER UPDATE OF mode, owner, grp, size, nlink, atime, mtime, ctime, inline, "
    "readonly ON inodes FOR EACH ROW EXECUTE FUNCTION xos_listing_attrs()",
    "CREATE FUNCTION xos_listing_add() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN UPDATE inodes SET cver = "
    "cver + 1 WHERE ino = NEW.parent; RETURN NULL; END $$",
    "CREATE TRIGGER listing_add AFTER INSERT ON dentries FOR EACH ROW EXECUTE FUNCTION xos_listing_add()",
    "CREATE FUNCTION xos_listing_remove() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN UPDATE inodes SET cver = "
    "cver + 1 WHERE ino = OLD.parent; RETURN NULL; END $$",
    "CREATE TRIGGER listing_remove AFTER DELETE ON dentries FOR EACH ROW EXECUTE FUNCTION xos_listing_remove()",
]

MAX_NAME = 255
SPECIAL = (stat.S_IFIFO, stat.S_IFSOCK, stat.S_IFCHR, stat.S_IFBLK)
MAX_XATTR = 64 << 10
MAX_LINKS = 65000
R, W, X = 4, 2, 1


@dataclass(frozen=True)
class Caller:
    """Who is asking: a grid identity, their VO, and the rights the volume's ACL gives them."""

    who: str  # "user@vo"
    vo: str
    rights: str = "rw"
    roles: tuple[str, ...] = ()  # from the credential; "admin" may give files away within the VO
    session: str = ""  # the mount asking (its leases do not stand in its own way)


@dataclass(frozen=True)
class Made:
    """What a lease holder wrote in a file it made before it told the MRC of it: content and times."""

    data: bytes
    atime: float
    mtime: float
    ctime: float


@dataclass(frozen=True)
class Volume:
    name: str
    vo: str
    acl: dict[str, str]
    striping: Striping
    replicas: int
    root: int

    def rights(self, who: str, vo: str) -> str:
        """What the ACL lets `who` do: the owner VO everything; others what an entry names, if any."""
        if vo == self.vo:
            return "rw"
        return self.acl.get(who, self.acl.get(vo, ""))

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "vo": self.vo, "acl": self.acl, "stripe_size": self.striping.size,
                "stripe_width": self.striping.width, "replicas": self.replicas}


@dataclass
class Inode:
    ino: int
    fid: str
    mode: int
    owner: str
    grp: str
    size: int
    nlink: int
    atime: float
    mtime: float
    ctime: float
    parent: int
    target: str | None
    inline: bytes | None
    stripe_size: int
    stripe_width: int
    epoch: int
    xloc: str | None
    xver: int
    readonly: int = 0  # sealed: never written again, so replicas can be added at any time
    rdev: int = 0  # the device a character or block special file stands for

    @property
    def is_dir(self) -> bool:
        return stat.S_ISDIR(self.mode)

    def attrs(self) -> dict[str, Any]:
        """What getattr answers."""
        return {"ino": self.ino, "mode": self.mode, "owner": self.owner, "group": self.grp, "size": self.size,
                "nlink": self.nlink, "atime": self.atime, "mtime": self.mtime, "ctime": self.ctime,
                "inline": self.inline is not None, "readonly": bool(self.readonly), "rdev": self.rdev}

    def layout(self) -> Xloc | None:
        return Xloc.from_json(json.loads(self.xloc)) if self.xloc else None


COLUMNS = ("ino, fid, mode, owner, grp, size, nlink, atime, mtime, ctime, parent, target, inline, stripe_size, "
           "stripe_width, epoch, xloc, xver, readonly, rdev")


def split(path: str) -> list[str]:
    """The components of an absolute path inside a volume; BadPath for anything that could escape it."""
    if not isinstance(path, str) or not path.startswith("/"):
        raise BadPath(f"path {path!r} must be absolute inside the volume")
    parts = [p for p in path.split("/") if p]
    for p in parts:
        if p in (".", "..") or "\0" in p:
            raise BadPath(f"path {path!r}: '.', '..' and NUL are not allowed in a volume path")
        if len(p.encode()) > MAX_NAME:
            raise NameTooLong(f"name {p[:40]!r}... is longer than {MAX_NAME} bytes")
    return parts


def may(node: Inode, c: Caller, want: int) -> None:
    """AccessDenied unless the mode bits that apply to `c` allow `want` (R, W, X)."""
    if c.who == node.owner:
        bits = (node.mode >> 6) & 7
    elif c.vo == node.grp:
        bits = (node.mode >> 3) & 7
    else:
        bits = node.mode & 7
    if want & ~bits:
        raise AccessDenied(f"{c.who} may not {'read' if want & R else 'write' if want & W else 'search'} "
                           f"inode {node.ino} (mode {oct(node.mode & 0o7777)}, owner {node.owner})")
