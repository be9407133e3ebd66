"""The SQLite conventions every store of xos shares: WAL, autocommit, explicit IMMEDIATE transactions."""

from __future__ import annotations

import os
import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager


class Database:
    """One SQLite file: WAL so readers never wait, a lock so threads take turns writing."""

    def __init__(self, path: str, schema: str = "", added: dict[str, dict[str, str]] | None = None) -> None:
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
        self.conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self.conn.execute("PRAGMA journal_mode=WAL")
        self.conn.execute("PRAGMA synchronous=NORMAL")  # durable across a daemon crash; fsync at checkpoints
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

    def execute(self, sql: str, args: tuple[object, ...] | list[object] = ()) -> sqlite3.Cursor:
        """A read (or a single autocommitted statement)."""
        return self.conn.execute(sql, args)

    def close(self) -> None:
        """Close the file."""
        self.conn.close()
