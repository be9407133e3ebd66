"""The catalogue's extended attributes (user.* only), kept by inode."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from xos.errors import FileExists, InvalidInput, NoSuchAttribute, NotPermitted
from xos.fs.mrc.records import MAX_XATTR, Caller, Inode, R, Volume, W, may, split
from xos.fs.mrc.volumes import VolumeTable


class XattrTable(VolumeTable):
    """Extended attributes of the catalogue's inodes (a part of SQLCatalogue)."""

    db: Any
    _walk: Callable[[Any, Volume, list[str], Caller], Inode]
    resolve: Callable[..., Inode]
    changing: Callable[[int, bool, Caller], None]

    def setxattr(self, volume: str, path: str, name: str, value: bytes, c: Caller, flags: int = 0) -> None:
        if not name.startswith("user.") or len(name) > 255:
            raise NotPermitted(f"only user.* attributes up to 255 bytes are supported, not {name[:40]!r}")
        if len(value) > MAX_XATTR:
            raise InvalidInput(f"attribute value over {MAX_XATTR} bytes")
        with self.db.tx() as tx:
            node = self._walk(tx, self.volume(volume), split(path), c)
            may(node, c, W)
            self.changing(node.ino, node.is_dir, c)
            have = tx.execute("SELECT 1 FROM xattrs WHERE ino=? AND name=?", (node.ino, name)).fetchone()
            if flags == 1 and have:  # XATTR_CREATE
                raise FileExists(f"attribute {name} exists")
            if flags == 2 and not have:  # XATTR_REPLACE
                raise NoSuchAttribute(f"no attribute {name}")
            tx.execute("INSERT INTO xattrs VALUES (?,?,?) ON CONFLICT (ino, name) DO UPDATE SET value=excluded.value",
                       (node.ino, name, value))
            tx.execute("UPDATE inodes SET ctime=? WHERE ino=?", (time.time(), node.ino))

    def getxattr(self, volume: str, path: str, name: str, c: Caller) -> bytes:
        node = self.resolve(volume, path, c)
        may(node, c, R)
        row = self.db.execute("SELECT value FROM xattrs WHERE ino=? AND name=?", (node.ino, name)).fetchone()
        if row is None:
            raise NoSuchAttribute(f"no attribute {name}")
        return bytes(row[0])

    def listxattr(self, volume: str, path: str, c: Caller) -> list[str]:
        node = self.resolve(volume, path, c)
        may(node, c, R)  # the names are the file's content as much as the values are
        return [r[0] for r in self.db.execute("SELECT name FROM xattrs WHERE ino=? ORDER BY name", (node.ino,))]

    def removexattr(self, volume: str, path: str, name: str, c: Caller) -> None:
        with self.db.tx() as tx:
            node = self._walk(tx, self.volume(volume), split(path), c)
            may(node, c, W)
            self.changing(node.ino, node.is_dir, c)
            if tx.execute("DELETE FROM xattrs WHERE ino=? AND name=?", (node.ino, name)).rowcount == 0:
                raise NoSuchAttribute(f"no attribute {name}")
