"""The volumes of an MRC: made with an empty root, looked up (cached: they do not change), and removed with
everything in them (their objects left to the OSD registry's orphans)."""

from __future__ import annotations

import json
import secrets
import stat
import time

from xos.errors import FileExists, InvalidInput, NoSuchFile, NotFound
from xos.fs.layout import Striping
from xos.fs.mrc.osds import OsdRegistry
from xos.fs.mrc.records import Volume


class VolumeTable(OsdRegistry):
    """The volumes table of the catalogue's database."""

    _volumes: dict[str, Volume]

    def create_volume(self, name: str, vo: str, owner: str, acl: dict[str, str], striping: Striping,
                      replicas: int, mode: int = 0o775) -> Volume:
        """A new volume with an empty root directory owned by `owner`."""
        if not 1 <= replicas <= 8:
            raise InvalidInput(f"replica count {replicas} must be 1 to 8", field="replicas")
        for who, rights in acl.items():
            if not isinstance(rights, str) or set(rights) - set("rw"):
                raise InvalidInput(f"ACL entry {who!r}: rights must be a subset of 'rw'", field="acl")
        now = time.time()
        with self.db.tx() as tx:
            if tx.execute("SELECT 1 FROM volumes WHERE name=?", (name,)).fetchone():
                raise FileExists(f"volume {name!r} exists")
            root = int(tx.execute(
                "INSERT INTO inodes (volume, fid, mode, owner, grp, nlink, atime, mtime, ctime, stripe_size, "
                "stripe_width) VALUES (?,?,?,?,?,2,?,?,?,?,?) RETURNING ino",
                (name, secrets.token_hex(16), stat.S_IFDIR | mode, owner, vo, now, now, now, striping.size,
                 striping.width)).fetchone()[0])
            tx.execute("INSERT INTO volumes VALUES (?,?,?,?,?,?,?,?)",
                       (name, vo, json.dumps(acl), striping.size, striping.width, replicas, root, now))
        self._volumes.pop(name, None)
        return self.volume(name)

    def volume(self, name: str) -> Volume:
        """The volume `name`; NotFound otherwise."""
        v = self._volumes.get(name)
        if v is not None:
            return v
        row = self.db.execute("SELECT name, vo, acl, stripe_size, stripe_width, replicas, root FROM volumes "
                              "WHERE name=?", (name,)).fetchone()
        if row is None:
            raise NotFound(f"no volume {name!r}", volume=name)
        v = Volume(row[0], row[1], json.loads(row[2]), Striping(row[3], row[4]), row[5], row[6])
        self._volumes[name] = v
        return v

    def volumes(self) -> list[Volume]:
        return [self.volume(r[0]) for r in self.db.execute("SELECT name FROM volumes ORDER BY name")]

    def delete_volume(self, name: str) -> list[tuple[str, str]]:
        """Remove a volume and everything in it; the (fid, osds) whose objects must go."""
        self.volume(name)
        with self.db.tx() as tx:
            gone = self._orphan(tx, "SELECT fid, xloc FROM inodes WHERE volume=? AND xloc IS NOT NULL", (name,))
            tx.execute("DELETE FROM xattrs WHERE ino IN (SELECT ino FROM inodes WHERE volume=?)", (name,))
            tx.execute("DELETE FROM dentries WHERE ino IN (SELECT ino FROM inodes WHERE volume=?)", (name,))
            tx.execute("DELETE FROM inodes WHERE volume=?", (name,))
            tx.execute("DELETE FROM volumes WHERE name=?", (name,))
        self._volumes.pop(name, None)
        return gone

    def volume_of(self, ino: int) -> Volume:
        row = self.db.execute("SELECT volume FROM inodes WHERE ino=?", (ino,)).fetchone()
        if row is None:
            raise NoSuchFile(f"no inode {ino}")
        return self.volume(row[0])
