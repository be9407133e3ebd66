"""Files a lease holder made in one directory, taken by the catalogue a batch at a time: a few statements per
batch instead of several per file. One round trip to PostgreSQL costs about what SQLite takes for the whole
statement, so per-file statements held the catalogue there to about 1,000 files a second."""

from __future__ import annotations

import secrets
import stat
from collections.abc import Iterator, Sequence
from typing import Any

from xos.errors import AccessDenied, BadPath, FileExists, NoSuchFile, NotPermitted, TooManyLinks
from xos.fs.mrc.records import MAX_LINKS, Caller, Inode, Made, Volume, W, X, may, split

ROWS = 200  # rows per statement: 16 values each, well within SQLite's and PostgreSQL's limits on parameters


def _chunks(items: Sequence[Any], n: int = ROWS) -> Iterator[Sequence[Any]]:
    for i in range(0, len(items), n):
        yield items[i:i + n]


def make_many(tx: Any, vol: Volume, parent: Inode, files: list[tuple[str, int | None, int, float, Made | None]],
              c: Caller) -> tuple[dict[str, int], dict[str, str]]:
    """Make `files` (name, inode number or None for any, mode, time, content) in directory `parent` inside the
    transaction `tx`: ({name: inode number} made, {name: error code} refused). A name there already is
    refused, unless it is the very file this maker made under that number (a batch sent again because its
    answer was lost); a number taken already (never one reserved to this maker) gives way to a new one."""
    if c.rights.find("w") < 0:
        raise AccessDenied(f"{c.who} may only read volume {vol.name}")
    may(parent, c, W | X)
    for name, *_ in files:
        if not isinstance(name, str) or split("/" + name) != [name]:
            raise BadPath(f"{name!r} is not a file name")
    there: dict[str, tuple[int, str]] = {}
    for part in _chunks([f[0] for f in files]):
        rows = tx.execute(f"SELECT d.name, d.ino, i.owner FROM dentries d JOIN inodes i ON i.ino = d.ino WHERE "
                          f"d.parent=? AND d.name IN ({','.join('?' * len(part))})", (parent.ino, *part))
        there.update((r[0], (int(r[1]), r[2])) for r in rows)
    made: dict[str, int] = {}
    refused: dict[str, str] = {}
    todo = []
    for name, ino, mode, when, content in files:
        if name in there:
            if ino is not None and there[name] == (ino, c.who):
                made[name] = ino
            else:
                refused[name] = FileExists.code
            continue
        there[name] = (-1, "")  # the same name twice in one batch: the second is refused
        todo.append((name, ino, mode, when, content))
    wanted = [f[1] for f in todo if f[1] is not None]
    taken: set[int] = set()
    for part in _chunks(wanted):
        taken.update(int(r[0]) for r in tx.execute(f"SELECT ino FROM inodes WHERE ino IN ({','.join('?' * len(part))})",
                                                   part))
    grp = parent.grp if parent.mode & stat.S_ISGID else c.vo  # setgid directories pass their group on
    rows_named, rows_any = [], []
    fids: dict[str, str] = {}
    for name, ino, mode, when, content in todo:
        data = content.data if content is not None else b""
        times = (content.atime, content.mtime, content.ctime) if content is not None else (when, when, when)
        fid = fids[name] = secrets.token_hex(16)
        row = (vol.name, fid, stat.S_IFREG | (mode & 0o7777), c.who, grp, len(data), 1, *times, 0, None, data,
               vol.striping.size, vol.striping.width, 0)
        if ino is not None and ino not in taken:
            rows_named.append((ino, *row))
        else:
            rows_any.append(row)
    by_fid: dict[str, int] = {}
    columns = ("volume, fid, mode, owner, grp, size, nlink, atime, mtime, ctime, parent, target, inline, stripe_size, "
               "stripe_width, rdev")
    for rows, cols in ((rows_named, f"ino, {columns}"), (rows_any, columns)):
        width = cols.count(",") + 1
        for part in _chunks(rows):
            values = ",".join(f"({','.join('?' * width)})" for _ in part)
            args = [v for r in part for v in r]
            by_fid.update((r[1], int(r[0])) for r in tx.execute(
                f"INSERT INTO inodes ({cols}) VALUES {values} RETURNING ino, fid", args).fetchall())
    dentries = [(parent.ino, name, by_fid[fids[name]]) for name, *_ in todo]
    for part in _chunks(dentries):
        tx.execute(f"INSERT INTO dentries VALUES {','.join('(?,?,?)' for _ in part)}", [v for d in part for v in d])
    made.update((name, ino) for _, name, ino in dentries)
    if todo:  # the directory's times as the last file made set them
        last = todo[-1][3]
        tx.execute("UPDATE inodes SET mtime=?, ctime=? WHERE ino=?", (last, last, parent.ino))
    return made, refused


def link_many(tx: Any, parent: Inode, links: list[tuple[str, int, str, float]],
              c: Caller) -> tuple[list[str], dict[str, str]]:
    """Hard links a lease holder made between names of directory `parent`, inside the transaction `tx`, as
    (name, the inode number it named there, new name, time), in order: (new names made, {new name: error
    code} of those refused: the name gone or naming another file, or the new name taken, the lease having
    run out)."""
    if c.rights.find("w") < 0:
        raise AccessDenied(f"{c.who} may only read this volume")
    may(parent, c, W | X)
    linked: list[str] = []
    refused: dict[str, str] = {}
    last = None
    for old, ino, new, when in links:
        for name in (old, new):
            if split("/" + name) != [name]:
                raise BadPath(f"{name!r} is not a file name")
        row = tx.execute("SELECT i.ino, i.mode, i.nlink FROM dentries d JOIN inodes i ON i.ino = d.ino WHERE "
                         "d.parent=? AND d.name=?", (parent.ino, old)).fetchone()
        if row is None or int(row[0]) != ino:
            refused[new] = NoSuchFile.code
        elif stat.S_ISDIR(row[1]):
            refused[new] = NotPermitted.code
        elif row[2] >= MAX_LINKS:
            refused[new] = TooManyLinks.code
        elif tx.execute("SELECT 1 FROM dentries WHERE parent=? AND name=?", (parent.ino, new)).fetchone():
            refused[new] = FileExists.code
        else:
            tx.execute("INSERT INTO dentries VALUES (?,?,?)", (parent.ino, new, ino))
            tx.execute("UPDATE inodes SET nlink=nlink+1, ctime=? WHERE ino=?", (when, ino))
            linked.append(new)
            last = when
    if last is not None:  # the directory's times as the last link set them
        tx.execute("UPDATE inodes SET mtime=?, ctime=? WHERE ino=?", (last, last, parent.ino))
    return linked, refused


def renumbered_by(made: dict[str, Any], answer: dict[str, Any]) -> dict[int, int]:
    """{number asked for: number given} of the files of a `made` change that got another number than the one
    their maker gave them (a reservation the MRC no longer kept): the changes after it name them so."""
    out = {}
    for f in made.get("files") or ():
        if isinstance(f, list) and len(f) > 1 and isinstance(f[1], int):
            got = answer.get("made", {}).get(f[0])
            if isinstance(got, int) and got != f[1]:
                out[f[1]] = got
    return out
