"""The MRC's catalogue: volumes, the directory tree, metadata, replica lists and the OSD registry, in SQLite
or PostgreSQL (the SQL both speak; xos.pg).

Every namespace change is one transaction (IMMEDIATE in SQLite), so a rename is atomic and an MRC killed
with SIGKILL keeps everything it acknowledged (the MRC answers once the commit is on disk).
"""

from __future__ import annotations

import secrets
import stat
import time
from collections.abc import Callable
from typing import Any

from xos.errors import (
    AccessDenied,
    BadPath,
    DirectoryNotEmpty,
    FileExists,
    InvalidInput,
    IsADirectory,
    NoSuchFile,
    NotADirectory,
    NotPermitted,
    TooManyLinks,
    XosError,
)
from xos.fs.layout import INLINE_MAX
from xos.fs.mrc.made import link_many, make_many
from xos.fs.mrc.records import (
    COLUMNS,
    MAX_LINKS,
    SPECIAL,
    Caller,
    Inode,
    Made,
    R,
    Volume,
    W,
    X,
    may,
    split,
)
from xos.fs.mrc.xattrs import XattrTable


class SQLCatalogue(XattrTable):
    """Volumes, namespace and replica lists of one MRC, in a SQLite file or a PostgreSQL database (`db`)."""

    def __init__(self, db: Any) -> None:
        self.db = db
        self._volumes: dict[str, Volume] = {}
        # Called with a directory's inode before its names are read or changed: raises when another
        # client holds them (a lease) and must hand them back first (the MRC's Leases.check).
        self.guard: Callable[[int, Caller], None] = lambda ino, c: None
        # Called before an inode (ino, whether a directory) is changed: raises when other clients hold what
        # they must forget first (a file's delegation, or those beneath a directory: the MRC's Delegations).
        self.changing: Callable[[int, bool, Caller], None] = lambda ino, is_dir, c: None

    def close(self) -> None:
        self.db.close()

    # lookups

    def _get(self, ino: int, conn: Any = None) -> Inode:
        row = (conn or self.db).execute(f"SELECT {COLUMNS} FROM inodes WHERE ino=?", (ino,)).fetchone()
        if row is None:
            raise NoSuchFile(f"no inode {ino}")
        return Inode(*row)

    def _child(self, conn: Any, parent: Inode, name: str, c: Caller) -> Inode | None:
        if not parent.is_dir:
            raise NotADirectory(f"inode {parent.ino} is not a directory")
        may(parent, c, X)
        self.guard(parent.ino, c)
        row = conn.execute(f"SELECT {COLUMNS} FROM inodes WHERE ino=(SELECT ino FROM dentries WHERE parent=? "
                           "AND name=?)", (parent.ino, name)).fetchone()
        return Inode(*row) if row else None

    def _walk(self, conn: Any, vol: Volume, parts: list[str], c: Caller, trail: list[int] | None = None) -> Inode:
        """The inode at `parts` from the volume's root; the directories passed through go into `trail`."""
        node = self._get(vol.root, conn)
        for i, p in enumerate(parts):
            if trail is not None:
                trail.append(node.ino)
            nxt = self._child(conn, node, p, c)
            if nxt is None:
                raise NoSuchFile(f"/{'/'.join(parts[:i + 1])} does not exist")
            node = nxt
        return node

    def resolve(self, volume: str, path: str, c: Caller, conn: Any = None) -> Inode:
        """The inode at `path`; no symlinks are followed (the kernel does that)."""
        return self._walk(conn or self.db, self.volume(volume), split(path), c)

    def _parent(self, conn: Any, volume: str, path: str, c: Caller) -> tuple[Inode, str]:
        parts = split(path)
        if not parts:
            raise BadPath("the volume's root has no parent")
        parent = self._walk(conn, self.volume(volume), parts[:-1], c)
        if not parent.is_dir:
            raise NotADirectory(f"{path}: a parent is not a directory")
        self.guard(parent.ino, c)
        return parent, parts[-1]

    def getattr(self, volume: str, path: str, c: Caller) -> dict[str, Any]:
        return self.resolve(volume, path, c).attrs()

    def readdir(self, volume: str, path: str, c: Caller) -> tuple[int, list[list[Any]]]:
        """A directory's listing version and its entries as rows, the name then LISTING (readdirplus: one
        call, no stat per entry).

        Rows, not an attribute dict per entry: dicts made a large listing and its JSON both ways several
        times slower. The version is read first: a change between
        the two reads makes it older than the rows, never newer."""
        node = self.resolve(volume, path, c)
        if not node.is_dir:
            raise NotADirectory(f"{path} is not a directory")
        may(node, c, R)
        self.guard(node.ino, c)
        version = self.listing_version(node.ino)
        rows = self.db.execute("SELECT d.name, i.ino, i.mode, i.owner, i.grp, i.size, i.nlink, i.atime, i.mtime, "
                               "i.ctime, CASE WHEN i.inline IS NULL THEN 0 ELSE 1 END, "
                               "CASE WHEN COALESCE(i.readonly, 0) != 0 THEN 1 ELSE 0 END, i.rdev FROM dentries d "
                               "JOIN inodes i ON i.ino=d.ino WHERE d.parent=? ORDER BY d.name", (node.ino,))
        # by code point whatever the engine's collation (PostgreSQL's follows the locale): sorted already in SQLite
        return version, sorted((list(r) for r in rows), key=lambda r: str(r[0]))

    def listing_version(self, ino: int) -> int:
        """The count of changes to what directory `ino`'s listing shows."""
        row = self.db.execute("SELECT cver FROM inodes WHERE ino=?", (ino,)).fetchone()
        if row is None:
            raise NoSuchFile(f"no inode {ino}")
        return int(row[0])

    def dir_version(self, volume: str, path: str, c: Caller) -> int:
        """The listing version of a directory the caller may list."""
        node = self.resolve(volume, path, c)
        if not node.is_dir:
            raise NotADirectory(f"{path} is not a directory")
        may(node, c, R)
        self.guard(node.ino, c)
        return self.listing_version(node.ino)

    # namespace changes

    def _new(self, tx: Any, volume: str, parent: Inode, name: str, mode: int, c: Caller,
             target: str | None = None, inline: bytes | None = None, ino: int | None = None,
             when: float | None = None, rdev: int = 0) -> Inode:
        if c.rights.find("w") < 0:
            raise AccessDenied(f"{c.who} may only read volume {volume}")
        may(parent, c, W | X)
        if tx.execute("SELECT 1 FROM dentries WHERE parent=? AND name=?", (parent.ino, name)).fetchone():
            raise FileExists(f"{name} exists")
        vol = self.volume(volume)
        now = time.time() if when is None else when
        is_dir = stat.S_ISDIR(mode)
        # setgid directories pass their group on, as on any POSIX file system
        grp = parent.grp if parent.mode & stat.S_ISGID else c.vo
        # The number: the one a lease holder reserved, else the key's next (a NULL is no number in PostgreSQL).
        named = ("ino, ", "?,", (ino,)) if ino is not None else ("", "", ())
        ino = int(tx.execute(
            f"INSERT INTO inodes ({named[0]}volume, fid, mode, owner, grp, size, nlink, atime, mtime, ctime, parent, "
            f"target, inline, stripe_size, stripe_width, rdev) VALUES ({named[1]}?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?) "
            "RETURNING ino",
            (*named[2], volume, secrets.token_hex(16), mode, c.who, grp,
             len(target.encode()) if target else len(inline or b""), 2 if is_dir else 1, now, now, now,
             parent.ino if is_dir else 0, target, inline, vol.striping.size, vol.striping.width, rdev)).fetchone()[0])
        tx.execute("INSERT INTO dentries VALUES (?,?,?)", (parent.ino, name, ino))
        tx.execute("UPDATE inodes SET mtime=?, ctime=?, nlink=nlink+? WHERE ino=?",
                   (now, now, 1 if is_dir else 0, parent.ino))
        return self._get(ino, tx)

    def mkdir(self, volume: str, path: str, mode: int, c: Caller) -> dict[str, Any]:
        """The new directory's attributes, and its parent's after (`dirs`)."""
        with self.db.tx() as tx:
            parent, name = self._parent(tx, volume, path, c)
            node = self._new(tx, volume, parent, name, stat.S_IFDIR | (mode & 0o7777), c)
            return {**node.attrs(), "dirs": self._dirs(tx, parent.ino)}

    def _dirs(self, tx: Any, *inos: int) -> list[dict[str, Any]]:
        """The attributes of the directories a change of names touched, as they are after it: a mount
        sets them at once, instead of asking for them when its kernel checks permissions next."""
        return [self._get(ino, tx).attrs() for ino in inos]

    def mknod(self, volume: str, path: str, mode: int, rdev: int, c: Caller) -> dict[str, Any]:
        """A FIFO, socket or device special file: a name and attributes only. What it stands for is local to
        each host that opens it (a pipe, a bound socket, a device, which mounts never open: nodev)."""
        kind = stat.S_IFMT(mode)
        if kind not in SPECIAL:
            raise InvalidInput(f"mknod makes FIFOs, sockets and devices, not mode {mode:o}")
        if not isinstance(rdev, int) or not 0 <= rdev < 1 << 64:
            raise InvalidInput("rdev must be a device number")
        with self.db.tx() as tx:
            parent, name = self._parent(tx, volume, path, c)
            node = self._new(tx, volume, parent, name, kind | (mode & 0o7777), c,
                             rdev=rdev if kind in (stat.S_IFCHR, stat.S_IFBLK) else 0)
            return {**node.attrs(), "dirs": self._dirs(tx, parent.ino)}

    def create(self, volume: str, path: str, mode: int, c: Caller, exclusive: bool = True,
               dir_version: list[int] | None = None) -> Inode:
        """A new empty regular file (inline until it grows), open for writing whatever its mode, as POSIX's
        creat(2); with exclusive=False an existing file is opened if the caller may write it.

        `dir_version` gets the parent's listing version before and after, in the same transaction: a
        client whose listing was at the first knows it is at the second with the new name in it."""
        with self.db.tx() as tx:
            parent, name = self._parent(tx, volume, path, c)
            if dir_version is not None:
                dir_version[:] = [self._cver(tx, parent.ino)] * 2
            if not exclusive:
                old = self._child(tx, parent, name, c)
                if old is not None:
                    if old.is_dir:
                        raise IsADirectory(f"{path} is a directory")
                    may(old, c, W)
                    return old
            node = self._new(tx, volume, parent, name, stat.S_IFREG | (mode & 0o7777), c, inline=b"")
            if dir_version is not None:
                dir_version[1] = self._cver(tx, parent.ino)
            return node

    def made(self, volume: str, dir_ino: int, files: list[tuple[str, int | None, int, float, Made | None]],
             c: Caller) -> dict[str, Any]:
        """Files a lease holder created in directory `dir_ino` under its lease, as (name, inode number or
        None for any, mode, time, the content and times it wrote there or None), in one transaction:
        {name: inode number} of those made, {name: error code} of those refused (a name taken meanwhile:
        the lease had run out), and the directory's listing version before and after. A batch sent again
        because its answer was lost makes nothing twice and refuses nothing: a file already there under the
        inode number the maker gave it (numbers reserved to that maker alone) is the one it made."""
        with self.db.tx() as tx:
            parent = self._held(tx, volume, dir_ino, c)
            before = self._cver(tx, parent.ino)
            made, refused = make_many(tx, self.volume(volume), parent, files, c)
            versions = [before, self._cver(tx, parent.ino)]
        return {"made": made, "refused": refused, "dir_version": versions}

    def linked(self, volume: str, dir_ino: int, links: list[tuple[str, int, str, float]], c: Caller) -> dict[str, Any]:
        """Hard links a lease holder made in directory `dir_ino` under its lease, in one transaction (`link_many`)."""
        with self.db.tx() as tx:
            parent = self._held(tx, volume, dir_ino, c)
            for _, ino, _, _ in links:
                self.changing(ino, False, c)
            before = self._cver(tx, parent.ino)
            linked, refused = link_many(tx, parent, links, c)
            return {"linked": linked, "refused": refused, "dir_version": [before, self._cver(tx, parent.ino)]}

    def _held(self, tx: Any, volume: str, dir_ino: int, c: Caller) -> Inode:
        """Directory `dir_ino` of `volume`, leased to the caller or to nobody (else Recall)."""
        parent = self._get(dir_ino, tx)
        if self.volume_of(parent.ino).name != volume:
            raise InvalidInput("that directory is in another volume", field="dir")
        if not parent.is_dir:
            raise NotADirectory(f"inode {dir_ino} is not a directory")
        self.guard(parent.ino, c)
        return parent

    def reserve(self, n: int) -> range:
        """`n` inode numbers no create will take but one that names them (a lease holder's own creates)."""
        with self.db.tx() as tx:
            top = self.db.reserve(tx, "inodes", n)
        return range(top + 1, top + n + 1)

    @staticmethod
    def _cver(conn: Any, ino: int) -> int:
        return int(conn.execute("SELECT cver FROM inodes WHERE ino=?", (ino,)).fetchone()[0])

    def symlink(self, volume: str, target: str, path: str, c: Caller) -> dict[str, Any]:
        if not isinstance(target, str) or not target or "\0" in target or len(target) > 4095:
            raise BadPath("a symlink target must be 1 to 4095 bytes without NUL")
        with self.db.tx() as tx:
            parent, name = self._parent(tx, volume, path, c)
            node = self._new(tx, volume, parent, name, stat.S_IFLNK | 0o777, c, target=target)
            return {**node.attrs(), "dirs": self._dirs(tx, parent.ino)}

    def readlink(self, volume: str, path: str, c: Caller) -> str:
        node = self.resolve(volume, path, c)
        if node.target is None:
            raise BadPath(f"{path} is not a symlink")
        return node.target

    def link(self, volume: str, old: str, new: str, c: Caller) -> dict[str, Any]:
        """A hard link `new` to the file at `old`."""
        with self.db.tx() as tx:
            node = self._walk(tx, self.volume(volume), split(old), c)
            if node.is_dir:
                raise NotPermitted("hard links to directories are not allowed")
            if node.nlink >= MAX_LINKS:
                raise TooManyLinks(f"{old} has {node.nlink} links")
            self.changing(node.ino, False, c)
            parent, name = self._parent(tx, volume, new, c)
            may(parent, c, W | X)
            if tx.execute("SELECT 1 FROM dentries WHERE parent=? AND name=?", (parent.ino, name)).fetchone():
                raise FileExists(f"{new} exists")
            now = time.time()
            tx.execute("INSERT INTO dentries VALUES (?,?,?)", (parent.ino, name, node.ino))
            tx.execute("UPDATE inodes SET nlink=nlink+1, ctime=? WHERE ino=?", (now, node.ino))
            tx.execute("UPDATE inodes SET mtime=?, ctime=? WHERE ino=?", (now, now, parent.ino))
            return {**self._get(node.ino, tx).attrs(), "dirs": self._dirs(tx, parent.ino)}

    def _drop_link(self, tx: Any, node: Inode, c: Caller) -> None:
        self.changing(node.ino, node.is_dir, c)
        if node.nlink > 1 and not node.is_dir:
            tx.execute("UPDATE inodes SET nlink=nlink-1, ctime=? WHERE ino=?", (time.time(), node.ino))
            return
        self._orphan(tx, "SELECT fid, xloc FROM inodes WHERE ino=? AND xloc IS NOT NULL", (node.ino,))
        tx.execute("DELETE FROM xattrs WHERE ino=?", (node.ino,))
        tx.execute("DELETE FROM inodes WHERE ino=?", (node.ino,))

    def _may_remove(self, parent: Inode, node: Inode, c: Caller) -> None:
        if c.rights.find("w") < 0:
            raise AccessDenied(f"{c.who} may only read this volume")
        may(parent, c, W | X)
        if parent.mode & stat.S_ISVTX and c.who not in (node.owner, parent.owner):
            raise NotPermitted(f"the sticky directory lets only {node.owner} remove this")

    def unlink(self, volume: str, path: str, c: Caller, dir_version: list[int] | None = None) -> list[dict[str, Any]]:
        """Remove a name; its directory's attributes after (and its listing versions before and after, into
        `dir_version`)."""
        with self.db.tx() as tx:
            parent, name = self._parent(tx, volume, path, c)
            if dir_version is not None:
                dir_version[:] = [self._cver(tx, parent.ino)] * 2
            node = self._child(tx, parent, name, c)
            if node is None:
                raise NoSuchFile(f"{path} does not exist")
            if node.is_dir:
                raise IsADirectory(f"{path} is a directory")
            self._may_remove(parent, node, c)
            tx.execute("DELETE FROM dentries WHERE parent=? AND name=?", (parent.ino, name))
            self._drop_link(tx, node, c)
            now = time.time()
            tx.execute("UPDATE inodes SET mtime=?, ctime=? WHERE ino=?", (now, now, parent.ino))
            if dir_version is not None:
                dir_version[1] = self._cver(tx, parent.ino)
            return self._dirs(tx, parent.ino)

    def unlinked(self, volume: str, dir_ino: int, names: list[tuple[str, int, float, bool]],
                 c: Caller) -> dict[str, Any]:
        """Names a lease holder removed in directory `dir_ino` under its lease, as (name, the inode number it
        named there, time, whether it is an empty directory), in one transaction and in that order: the names
        removed, {name: error code} of those refused (gone already, naming another file: the lease had run
        out; a directory not empty), and the directory's listing version before and after."""
        with self.db.tx() as tx:
            parent = self._held(tx, volume, dir_ino, c)
            before = self._cver(tx, parent.ino)
            removed: list[str] = []
            refused: dict[str, str] = {}
            last = None
            for name, ino, when, is_dir in names:
                if split("/" + name) != [name]:
                    raise BadPath(f"{name!r} is not a file name")
                node = self._child(tx, parent, name, c)
                if node is None or node.ino != ino:
                    refused[name] = NoSuchFile.code
                    continue
                if node.is_dir != is_dir:
                    refused[name] = (IsADirectory if node.is_dir else NotADirectory).code
                    continue
                try:
                    self._may_remove(parent, node, c)
                    if is_dir:
                        self.guard(node.ino, c)
                        if tx.execute("SELECT 1 FROM dentries WHERE parent=? LIMIT 1", (node.ino,)).fetchone():
                            raise DirectoryNotEmpty(f"{name} is not empty")
                except XosError as e:
                    refused[name] = e.code
                    continue
                tx.execute("DELETE FROM dentries WHERE parent=? AND name=?", (parent.ino, name))
                self._drop_link(tx, node, c)
                if is_dir:
                    tx.execute("UPDATE inodes SET nlink=nlink-1 WHERE ino=?", (parent.ino,))
                removed.append(name)
                last = when
            if last is not None:
                tx.execute("UPDATE inodes SET mtime=?, ctime=? WHERE ino=?", (last, last, parent.ino))
            versions = [before, self._cver(tx, parent.ino)]
        return {"unlinked": removed, "refused": refused, "dir_version": versions}

    def rmdir(self, volume: str, path: str, c: Caller, dir_version: list[int] | None = None) -> list[dict[str, Any]]:
        """Remove an empty directory; its parent's attributes after (and the parent's listing versions before
        and after, into `dir_version`)."""
        with self.db.tx() as tx:
            parent, name = self._parent(tx, volume, path, c)
            if dir_version is not None:
                dir_version[:] = [self._cver(tx, parent.ino)] * 2
            node = self._child(tx, parent, name, c)
            if node is None:
                raise NoSuchFile(f"{path} does not exist")
            if not node.is_dir:
                raise NotADirectory(f"{path} is not a directory")
            self._may_remove(parent, node, c)
            self.guard(node.ino, c)
            if tx.execute("SELECT 1 FROM dentries WHERE parent=? LIMIT 1", (node.ino,)).fetchone():
                raise DirectoryNotEmpty(f"{path} is not empty")
            tx.execute("DELETE FROM dentries WHERE parent=? AND name=?", (parent.ino, name))
            self._drop_link(tx, node, c)
            now = time.time()
            tx.execute("UPDATE inodes SET nlink=nlink-1, mtime=?, ctime=? WHERE ino=?", (now, now, parent.ino))
            if dir_version is not None:
                dir_version[1] = self._cver(tx, parent.ino)
            return self._dirs(tx, parent.ino)

    def rename(self, volume: str, old: str, new: str, c: Caller, noreplace: bool = False) -> list[dict[str, Any]]:
        """Move `old` to `new` atomically, replacing a file or an empty directory there; the attributes of
        the directory it left and of the one it is in, after."""
        with self.db.tx() as tx:
            sparent, sname = self._parent(tx, volume, old, c)
            node = self._child(tx, sparent, sname, c)
            if node is None:
                raise NoSuchFile(f"{old} does not exist")
            dparent, dname = self._parent(tx, volume, new, c)
            self._may_remove(sparent, node, c)
            self.changing(node.ino, node.is_dir, c)
            may(dparent, c, W | X)
            if node.is_dir:  # never into itself
                up = dparent
                while True:
                    if up.ino == node.ino:
                        raise BadPath(f"cannot move {old} into itself")
                    if not up.parent:
                        break
                    up = self._get(up.parent, tx)
            victim = self._child(tx, dparent, dname, c)
            if victim is not None:
                if victim.ino == node.ino:
                    return self._dirs(tx, sparent.ino, dparent.ino)
                if noreplace:
                    raise FileExists(f"{new} exists")
                if node.is_dir and not victim.is_dir:
                    raise NotADirectory(f"{new} is not a directory")
                if victim.is_dir and not node.is_dir:
                    raise IsADirectory(f"{new} is a directory")
                if victim.is_dir:
                    self.guard(victim.ino, c)
                    if tx.execute("SELECT 1 FROM dentries WHERE parent=? LIMIT 1", (victim.ino,)).fetchone():
                        raise DirectoryNotEmpty(f"{new} is not empty")
                    tx.execute("UPDATE inodes SET nlink=nlink-1 WHERE ino=?", (dparent.ino,))
                tx.execute("DELETE FROM dentries WHERE parent=? AND name=?", (dparent.ino, dname))
                self._drop_link(tx, victim, c)
            now = time.time()
            tx.execute("DELETE FROM dentries WHERE parent=? AND name=?", (sparent.ino, sname))
            tx.execute("INSERT INTO dentries VALUES (?,?,?)", (dparent.ino, dname, node.ino))
            tx.execute("UPDATE inodes SET ctime=? WHERE ino=?", (now, node.ino))
            if node.is_dir and sparent.ino != dparent.ino:
                tx.execute("UPDATE inodes SET parent=? WHERE ino=?", (dparent.ino, node.ino))
                tx.execute("UPDATE inodes SET nlink=nlink-1 WHERE ino=?", (sparent.ino,))
                tx.execute("UPDATE inodes SET nlink=nlink+1 WHERE ino=?", (dparent.ino,))
            tx.execute("UPDATE inodes SET mtime=?, ctime=? WHERE ino IN (?,?)", (now, now, sparent.ino, dparent.ino))
            return self._dirs(tx, sparent.ino, dparent.ino)

    def setattr(self, volume: str, path: str, c: Caller, mode: int | None = None, owner: str | None = None,
                group: str | None = None, atime: float | None = None, mtime: float | None = None,
                size: int | None = None, checked: bool = False) -> tuple[Inode, bool]:
        """Change metadata; the inode after, and whether its OSD objects must be truncated to `size` (an
        owner's truncate with `checked`, as may_open says)."""
        with self.db.tx() as tx:
            node = self._walk(tx, self.volume(volume), split(path), c)
            if node.is_dir:  # a lease holder creates in it by the permissions it had
                self.guard(node.ino, c)
            if not node.is_dir or mode is not None or owner is not None or group is not None:
                self.changing(node.ino, node.is_dir, c)  # what decides who may open files beneath
            owned = c.who == node.owner
            sets: dict[str, Any] = {"ctime": time.time()}
            if mode is not None:
                if not owned:
                    raise NotPermitted(f"only {node.owner} may chmod this")
                sets["mode"] = (node.mode & ~0o7777) | (mode & 0o7777)
            if owner is not None and owner != node.owner:
                # As only root may chown on a POSIX system: a VO admin, within their VO.
                user, _, vo = owner.partition("@")
                if "admin" not in c.roles or node.owner.partition("@")[2] != c.vo or vo != c.vo or not user:
                    raise NotPermitted(f"only an admin of VO {node.owner.partition('@')[2]} may give "
                                       f"{node.owner}'s file to {owner}")
                sets["owner"] = owner
            if group is not None and group != node.grp:
                if not owned or group != c.vo:
                    raise NotPermitted(f"the group of a file can only be its owner's VO ({c.vo})")
                sets["grp"] = group
            if atime is not None or mtime is not None:
                if not owned:
                    may(node, c, W)
                if atime is not None:
                    sets["atime"] = atime
                if mtime is not None:
                    sets["mtime"] = mtime
            truncate = False
            if size is not None:
                if node.readonly:
                    raise NotPermitted(f"{path} is read-only (sealed for replication)")
                if node.is_dir:
                    raise IsADirectory("cannot truncate a directory")
                if size < 0:
                    raise InvalidInput("size must not be negative", field="size")
                if "w" not in c.rights:
                    raise AccessDenied(f"{c.who} may only read this volume")
                if not (checked and owned):
                    may(node, c, W)
                sets["size"] = size
                sets["mtime"] = sets["ctime"]
                if node.inline is not None:
                    if size <= INLINE_MAX:
                        sets["inline"] = node.inline[:size].ljust(size, b"\0")
                    else:  # grown past what the MRC holds: the client spills it first
                        raise InvalidInput("an inline file cannot be extended this far by truncate; write it")
                else:
                    sets["epoch"] = node.epoch + 1
                    truncate = True
            tx.execute(f"UPDATE inodes SET {', '.join(k + '=?' for k in sets)} WHERE ino=?", (*sets.values(), node.ino))
            return self._get(node.ino, tx), truncate

    # file contents

    def open(self, volume: str, path: str, c: Caller, write: bool, checked: bool = False,
             trail: list[int] | None = None) -> Inode:
        """The inode of a regular file the caller may read (and write, if asked); the directories on its path
        go into `trail`."""
        node = self._walk(self.db, self.volume(volume), split(path), c, trail)
        if node.is_dir:
            raise IsADirectory(f"{path} is a directory")
        self.may_open(node, c, write, checked)
        return node

    def may_open(self, node: Inode, c: Caller, write: bool, checked: bool = False) -> None:
        """Whether `c` may open the file for reading (and writing). With `checked` (a mount whose kernel
        checked the mode bits already) the owner's own bits are not asked again: a file made with mode 0
        is written through the descriptor that made it, and its owner could chmod it anyway."""
        if write and "w" not in c.rights:
            raise AccessDenied(f"{c.who} may only write to volumes whose ACL lets them")
        if write and node.readonly:
            raise NotPermitted(f"inode {node.ino} is read-only (sealed for replication)")
        if not (checked and c.who == node.owner):
            may(node, c, (R | W) if write else R)

    def seal(self, volume: str, path: str, c: Caller) -> Inode:
        """Make a file read-only for good (XtreemFS's read-only replication): its owner only, with no way back."""
        with self.db.tx() as tx:
            node = self._walk(tx, self.volume(volume), split(path), c)
            if node.is_dir or node.target is not None:
                raise InvalidInput(f"{path} is not a regular file")
            if c.who != node.owner:
                raise NotPermitted(f"only {node.owner} may make this file read-only")
            self.changing(node.ino, False, c)
            tx.execute("UPDATE inodes SET readonly=1, ctime=? WHERE ino=?", (time.time(), node.ino))
            return self._get(node.ino, tx)

    def inode(self, ino: int) -> Inode:
        return self._get(ino)

    def inodes(self, inos: list[int]) -> list[Inode]:
        """The inodes of those numbers that name one."""
        out: list[Inode] = []
        for i in range(0, len(inos), 500):
            part = inos[i:i + 500]
            out += [Inode(*r) for r in self.db.execute(
                f"SELECT {COLUMNS} FROM inodes WHERE ino IN ({','.join('?' * len(part))})", part)]
        return out

    def ancestors(self, ino: int) -> list[int]:
        """Directory `ino` and those above it, up to its volume's root."""
        out = [ino]
        while (up := self._get(out[-1]).parent) and up not in out:
            out.append(up)
        return out

    def by_fid(self, fid: str) -> Inode:
        """The inode of file `fid` (a scan: only for the rare reports of replicas that missed writes)."""
        row = self.db.execute(f"SELECT {COLUMNS} FROM inodes WHERE fid=?", (fid,)).fetchone()
        if row is None:
            raise NoSuchFile(f"no file {fid}")
        return Inode(*row)

    def commit(self, ino: int, size: int, mtime: float, inline: bytes | None, spilled: bool) -> Inode:
        """What a client's close or fsync made of a file: its size, mtime, and its content if inline."""
        with self.db.tx() as tx:
            node = self._get(ino, tx)
            sets: dict[str, Any] = {"mtime": mtime, "ctime": time.time()}
            if inline is not None:
                if len(inline) > INLINE_MAX:
                    raise InvalidInput(f"inline content over {INLINE_MAX} bytes", field="inline")
                sets.update(inline=inline, size=len(inline))
            else:
                if node.inline is not None and not spilled:
                    raise InvalidInput("this file is inline: send its content", field="inline")
                if node.xloc is None:
                    raise InvalidInput("this file has no OSD layout yet", field="spilled")
                sets.update(inline=None, size=size)
            tx.execute(f"UPDATE inodes SET {', '.join(k + '=?' for k in sets)} WHERE ino=?", (*sets.values(), ino))
            return self._get(ino, tx)
