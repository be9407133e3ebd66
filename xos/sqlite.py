"""The SQLite conventions every store of xos shares: WAL, autocommit, explicit IMMEDIATE transactions."""

from __future__ import annotations

import asyncio
import os
import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager


class Database:
    """One SQLite file: WAL so readers never wait, a lock so threads take turns writing."""

    def __init__(self, path: str, schema: str = "", added: dict[str, dict[str, str]] | None = None,
                 group: bool = False) -> None:
        os.makedirs(os.path.dirname(path) or ".", mode=0o700, exist_ok=True)
        _private(path)
        self.path = path
        self.conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self.conn.execute("PRAGMA journal_mode=WAL")
        # What a daemon acknowledged survives a power failure: the WAL is fsynced at each commit (about
        # 0.2 ms here; 4,900 commits/s against 73,000 with NORMAL, which survived a crash but not a power loss).
        # With `group`, commits do not wait for the disk: the daemon awaits durable() before it answers,
        # and one fdatasync of the WAL covers every commit made before it (a group commit).
        self.group = group
        self.conn.execute("PRAGMA synchronous=NORMAL" if group else "PRAGMA synchronous=FULL")
        self._synced = 0  # total_changes covered by the last fdatasync of the WAL
        self._syncing: asyncio.Future[None] | None = None
        self._wal: int | None = None
        if schema:
            self.conn.executescript(schema)
        # Columns added after a table was first made ({table: {column: declaration}}), for files an
        # older version wrote: the schema above has them already, at the end, in the same order.
        for table, columns in (added or {}).items():
            have = {r[1] for r in self.conn.execute(f"PRAGMA table_info({table})")}
            for column, decl in columns.items():
                if column not in have:
                    self.conn.execute(f"ALTER TABLE {table} ADD COLUMN {column} {decl}")
        self._lock = threading.Lock()

    @contextmanager
    def tx(self) -> Iterator[sqlite3.Connection]:
        """A write transaction, committed when the block ends, rolled back if it raises."""
        with self._lock:
            self.conn.execute("BEGIN IMMEDIATE")
            try:
                yield self.conn
            except BaseException:
                self.conn.execute("ROLLBACK")
                raise
            self.conn.execute("COMMIT")

    def rows(self, sql: str, args: tuple[object, ...] | list[object] = ()) -> list[tuple[object, ...]]:
        """What a read returns (as xos.pg's Database has it: a store written to both runs on either)."""
        return self.conn.execute(sql, args).fetchall()

    def lock(self, db: sqlite3.Connection, table: str) -> None:
        """Writers of `table` wait for this transaction: they do already (one writer at a time)."""

    integrity = (sqlite3.IntegrityError,)  # what a statement breaking a constraint raises

    def reserve(self, tx: sqlite3.Connection, table: str, n: int) -> int:
        """Keep the next `n` numbers of `table`'s AUTOINCREMENT key from every insert that does not name
        them; the last number before them."""
        row = tx.execute("SELECT seq FROM sqlite_sequence WHERE name=?", (table,)).fetchone()
        key = tx.execute(f"SELECT name FROM pragma_table_info('{table}') WHERE pk=1").fetchone()[0]
        top = max(row[0] if row else 0, tx.execute(f"SELECT MAX({key}) FROM {table}").fetchone()[0] or 0)
        if row:
            tx.execute("UPDATE sqlite_sequence SET seq=? WHERE name=?", (top + n, table))
        else:
            tx.execute("INSERT INTO sqlite_sequence (name, seq) VALUES (?, ?)", (table, top + n))
        return int(top)

    def execute(self, sql: str, args: tuple[object, ...] | list[object] = ()) -> sqlite3.Cursor:
        """A read (or a single autocommitted statement)."""
        return self.conn.execute(sql, args)

    async def durable(self) -> None:
        """Return once every transaction committed so far is on stable storage (group commit)."""
        if not self.group:
            return
        while self._synced < self.conn.total_changes:
            if self._syncing is None:
                self._syncing = asyncio.ensure_future(self._sync())
            await asyncio.shield(self._syncing)

    async def _sync(self) -> None:
        try:
            upto = self.conn.total_changes
            await asyncio.get_running_loop().run_in_executor(None, self._fdatasync)
            self._synced = max(self._synced, upto)
        finally:
            self._syncing = None

    def _fdatasync(self) -> None:
        """fdatasync the WAL (SQLite syncs it itself before a checkpoint copies it into the database, and
        the database after)."""
        wal = self.path + "-wal"
        try:
            st = os.stat(wal)
        except FileNotFoundError:  # nothing written since the last checkpoint removed it
            return
        if self._wal is not None and os.fstat(self._wal).st_ino != st.st_ino:
            os.close(self._wal)
            self._wal = None
        if self._wal is None:
            self._wal = os.open(wal, os.O_RDONLY | os.O_CLOEXEC)
        os.fdatasync(self._wal)

    def close(self) -> None:
        """Close the file."""
        self.conn.close()
        if self._wal is not None:
            os.close(self._wal)
            self._wal = None


def _private(path: str) -> None:
    """Make the database file 0600 before SQLite opens it (stores hold credentials and keys): SQLite gives
    its -wal and -shm files the main file's mode. A file an older version left wider is narrowed."""
    try:
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600))
    except FileExistsError:
        for p in (path, path + "-wal", path + "-shm"):
            try:
                if os.stat(p).st_mode & 0o077:
                    os.chmod(p, 0o600)
            except FileNotFoundError:
                pass
