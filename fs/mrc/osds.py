"""The OSD registry of an MRC: which object stores there are, how full and how alive (their heartbeats),
where a file's replicas go and its replica list, and the objects of deleted files still to be removed."""

from __future__ import annotations

import json
import time
from typing import Any

from xos.errors import InvalidInput, NoSpace
from xos.fs.layout import Replica, Striping, Xloc
from xos.fs.mrc.records import COLUMNS, Inode


class OsdRegistry:
    """The osds and orphans tables of the catalogue's database, and the replica lists of its inodes."""

    db: Any  # xos.sqlite's or xos.pg's Database

    def _get(self, ino: int, conn: Any = None) -> Inode:
        raise NotImplementedError  # the catalogue's
    grace = 10.0  # seconds without a heartbeat after which an OSD counts as gone

    def heartbeat(self, osd: str, url: str, capacity: int, free: int, load: float) -> None:
        with self.db.tx() as tx:
            tx.execute("INSERT INTO osds VALUES (?,?,?,?,?,?) ON CONFLICT (id) DO UPDATE SET url=excluded.url, "
                       "capacity=excluded.capacity, free=excluded.free, load=excluded.load, seen=excluded.seen",
                       (osd, url, capacity, free, load, time.time()))

    def osds(self) -> list[dict[str, Any]]:
        now = time.time()
        return [{"id": r[0], "url": r[1], "capacity": r[2], "free": r[3], "load": r[4], "seen": r[5],
                 "alive": now - r[5] < self.grace}
                for r in self.db.execute("SELECT id, url, capacity, free, load, seen FROM osds ORDER BY id")]

    def urls(self) -> dict[str, str]:
        return {r[0]: r[1] for r in self.db.execute("SELECT id, url FROM osds")}

    def orphans(self) -> list[tuple[str, list[str]]]:
        return [(r[0], json.loads(r[1])) for r in self.db.execute("SELECT fid, osds FROM orphans LIMIT 256")]

    def forget_orphan(self, fid: str, osds: list[str]) -> None:
        with self.db.tx() as tx:
            if osds:
                tx.execute("UPDATE orphans SET osds=? WHERE fid=?", (json.dumps(osds), fid))
            else:
                tx.execute("DELETE FROM orphans WHERE fid=?", (fid,))

    def sizes(self) -> dict[str, int]:
        """What the catalogue holds: volumes, files (inodes), their bytes, and orphans still to delete."""
        volumes, files, size = self.db.execute(
            "SELECT (SELECT count(*) FROM volumes), count(*), coalesce(sum(size), 0) FROM inodes").fetchone()
        orphans = self.db.execute("SELECT count(*) FROM orphans").fetchone()[0]
        return {"volumes": int(volumes), "files": int(files), "bytes": int(size), "orphans": int(orphans)}

    def statfs(self) -> dict[str, int]:
        live = [o for o in self.osds() if o["alive"]]
        files = self.db.execute("SELECT count(*) FROM inodes").fetchone()[0]
        return {"capacity": sum(o["capacity"] for o in live), "free": sum(o["free"] for o in live), "files": files}

    def choose(self, width: int, count: int, exclude: list[tuple[str, ...]]) -> list[Replica]:
        """Up to `count` new replicas of `width` live OSDs each, no column sharing an OSD with another replica."""
        live = [r[0] for r in self.db.execute("SELECT id FROM osds WHERE seen>? ORDER BY free DESC, id",
                                              (time.time() - self.grace,))]
        if len(live) < width:
            return []
        taken: list[set[str]] = [set() for _ in range(width)]
        for osds in exclude:
            for col, o in enumerate(osds):
                taken[col].add(o)
        out: list[Replica] = []
        for _ in range(count):
            cols: list[str] = []
            for col in range(width):
                pick = next((o for o in live if o not in taken[col] and o not in cols), None)
                if pick is None:
                    return out
                cols.append(pick)
            for col, o in enumerate(cols):
                taken[col].add(o)
            out.append(Replica(tuple(cols)))
            live = live[1:] + live[:1]  # spread the next replica's first column
        return out

    def place(self, ino: int, count: int) -> Inode:
        """Give a file its OSD layout if it has none: `count` replicas over the live OSDs with most room."""
        with self.db.tx() as tx:
            node = self._get(ino, tx)
            if node.xloc is not None:
                return node
            striping = Striping(node.stripe_size, node.stripe_width)
            replicas = self.choose(striping.width, count, exclude=[])
            if not replicas:
                raise NoSpace(f"no {striping.width} live OSDs to place a file on")
            xloc = Xloc(striping, tuple(replicas), node.xver + 1)
            tx.execute("UPDATE inodes SET xloc=?, xver=? WHERE ino=?",
                       (json.dumps(xloc.to_json()), xloc.version, ino))
            return self._get(ino, tx)

    def set_xloc(self, ino: int, expect: int, replicas: list[Replica]) -> Xloc:
        """Replace a file's replica list if its version is still `expect`; the new list."""
        with self.db.tx() as tx:
            node = self._get(ino, tx)
            old = node.layout()
            if old is None or node.xver != expect:
                raise InvalidInput(f"the replica list of inode {ino} changed meanwhile (version {node.xver})")
            xloc = Xloc(old.striping, tuple(replicas), expect + 1)
            tx.execute("UPDATE inodes SET xloc=?, xver=? WHERE ino=?", (json.dumps(xloc.to_json()), xloc.version, ino))
            return xloc

    def replicated(self) -> list[tuple[Inode, int]]:
        """Every file with OSD objects, with the replica count its volume wants (one query for all)."""
        cols = ", ".join("i." + c.strip() for c in COLUMNS.split(","))
        rows = self.db.execute(f"SELECT {cols}, v.replicas FROM inodes i JOIN volumes v ON v.name = i.volume "
                               "WHERE i.xloc IS NOT NULL").fetchall()
        return [(Inode(*r[:-1]), r[-1]) for r in rows]

    def _orphan(self, tx: Any, sql: str, args: tuple[Any, ...]) -> list[tuple[str, str]]:
        gone = []
        for fid, xloc in tx.execute(sql, args).fetchall():
            osds = json.dumps(sorted(Xloc.from_json(json.loads(xloc)).osds()))
            tx.execute("INSERT INTO orphans VALUES (?,?,?) ON CONFLICT (fid) DO UPDATE SET osds=excluded.osds, "
                       "since=excluded.since", (fid, osds, time.time()))
            gone.append((fid, osds))
        return gone
