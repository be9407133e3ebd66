"""The PostgreSQL conventions the stores share, with the SQL of xos.sqlite's: a store written once runs on
either. A connection pool, one transaction per change, committed durably before the call returns
(PostgreSQL's synchronous_commit), and a schema version per store, so one database can hold several
daemons' stores and a newer xos moves an older schema on. Statements use SQLite's `?` placeholders and the
subset both engines speak (INSERT ... ON CONFLICT, RETURNING); a store's SQLite schema is translated (`ddl`)."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from xos.errors import BadConfig, Unavailable
from xos.leader import NotActive, safe_url

SCHEMA_TABLE = "CREATE TABLE IF NOT EXISTS xos_schema (store TEXT PRIMARY KEY, version INTEGER NOT NULL)"


def ddl(schema: str) -> list[str]:
    """A SQLite schema's statements as PostgreSQL takes them: 64-bit integers and floats, sequences for
    integer keys (SQLite numbers those itself, AUTOINCREMENT or not)."""
    out = []
    for statement in filter(str.strip, schema.split(";")):
        s = re.sub(r"\bINTEGER PRIMARY KEY( AUTOINCREMENT)?\b", "BIGSERIAL PRIMARY KEY", statement)
        s = re.sub(r"\bINTEGER\b", "BIGINT", s)
        s = re.sub(r"\bBLOB\b", "BYTEA", re.sub(r"\)\s*WITHOUT ROWID\s*$", ")", s.strip()))
        out.append(re.sub(r"\bREAL\b", "DOUBLE PRECISION", s))
    return out


def _pg(sql: str) -> str:
    if "%" in sql:
        raise ValueError("a statement for both engines holds no '%'")
    return sql.replace("?", "%s")


class Connection:
    """A connection in a transaction, taking SQLite's placeholders."""

    def __init__(self, conn: Any) -> None:
        self.conn = conn

    def execute(self, sql: str, args: Sequence[Any] = ()) -> Any:
        """Run one statement; its cursor."""
        return self.conn.execute(_pg(sql), args)


class _Rows:
    """What a read outside a transaction returned, fetched whole (its connection went back to the pool)."""

    def __init__(self, rows: list[tuple[Any, ...]]) -> None:
        self._rows = rows

    def fetchone(self) -> tuple[Any, ...] | None:
        return self._rows[0] if self._rows else None

    def fetchall(self) -> list[tuple[Any, ...]]:
        return self._rows

    def __iter__(self) -> Iterator[tuple[Any, ...]]:
        return iter(self._rows)


class Database:
    """A PostgreSQL database at `url` (postgresql://USER@HOST/DB, or ?host=/socket/dir), holding the tables of
    `store`: `steps` are its schema's versions in order, each a list of statements, applied once each."""

    def __init__(self, url: str, store: str, steps: Sequence[Sequence[str]], size: int = 4) -> None:
        import psycopg
        from psycopg_pool import ConnectionPool

        self._errors = (psycopg.OperationalError, psycopg.InterfaceError)
        self.integrity = (psycopg.errors.IntegrityError,)  # what a statement breaking a constraint raises
        try:  # once by hand first: the server's own reason now, not a pool's timeout later
            psycopg.connect(url, connect_timeout=10).close()
        except (psycopg.Error, ValueError) as e:
            raise Unavailable(f"PostgreSQL at {safe_url(url)} is not reachable: {str(e).strip()}") from None
        self._fence: tuple[str, int, Callable[[str], None]] | None = None
        self.pool = ConnectionPool(url, min_size=1, max_size=size, open=False, kwargs={"autocommit": True},
                                   name=store)
        try:
            self.pool.open(wait=True, timeout=10)
        except Exception as e:  # PoolTimeout: it went away meanwhile
            self.pool.close()
            raise Unavailable(f"PostgreSQL at {safe_url(url)} is not reachable: {e}") from None
        with self.tx() as db:
            # Two daemons starting on one database at once: one migrates, the other waits and finds it done.
            db.execute("SELECT pg_advisory_xact_lock(hashtext('xos_schema'))")
            db.execute(SCHEMA_TABLE)
            row = db.execute("SELECT version FROM xos_schema WHERE store=?", (store,)).fetchone()
            have = int(row[0]) if row else 0
            if have > len(steps):
                raise BadConfig(f"the {store} tables at {safe_url(url)} are at schema version {have}, newer than this "
                                f"xos knows ({len(steps)}): run the newer xos, or another database")
            for step in steps[have:]:
                for statement in step:
                    db.execute(statement)
            if have < len(steps):
                db.execute("INSERT INTO xos_schema VALUES (?, ?) ON CONFLICT (store) DO UPDATE SET version=?",
                           (store, len(steps), len(steps)))

    def fence(self, scope: str, epoch: int, deposed: Callable[[str], None]) -> None:
        """Every transaction from now on is refused (NotActive) unless `scope`'s epoch in xos_leader is still
        `epoch`: this process is the active one (xos.leader); `deposed(why)` is told when one is refused."""
        self._fence = (scope, epoch, deposed)

    @contextmanager
    def tx(self) -> Iterator[Connection]:
        """A transaction on a pooled connection, committed when the block ends, rolled back if it raises."""
        try:
            with self.pool.connection() as conn, conn.transaction():
                db = Connection(conn)
                if self._fence is not None:
                    scope, epoch, deposed = self._fence
                    # FOR SHARE: a standby raising the epoch waits for this transaction, and starts from it.
                    row = db.execute("SELECT epoch FROM xos_leader WHERE scope=? FOR SHARE", (scope,)).fetchone()
                    if row is None or int(row[0]) != epoch:
                        why = f"another {scope} took over (epoch {row[0] if row else '?'}, this one's {epoch})"
                        deposed(why)
                        raise NotActive(f"this {scope} is no longer the active one: {why}")
                yield db
        except self._errors as e:
            raise Unavailable(f"PostgreSQL: {e}") from None

    def rows(self, sql: str, args: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        """What a read returns (one statement in autocommit: no BEGIN and COMMIT around it)."""
        try:
            with self.pool.connection() as conn:
                return list(conn.execute(_pg(sql), args).fetchall())
        except self._errors as e:
            raise Unavailable(f"PostgreSQL: {e}") from None

    def execute(self, sql: str, args: Sequence[Any] = ()) -> _Rows:
        """A read outside a transaction, as SQLite's connection gives one (fetchone, fetchall, iteration)."""
        return _Rows(self.rows(sql, args))

    async def durable(self) -> None:
        """Every transaction committed is on stable storage already (synchronous_commit)."""

    def reserve(self, tx: Connection, table: str, n: int) -> int:
        """Keep the next `n` numbers of `table`'s key sequence from every insert that does not name them; the
        last number before them."""
        key = tx.execute("SELECT a.attname FROM pg_index i JOIN pg_attribute a ON a.attrelid = i.indrelid AND "
                         "a.attnum = ANY(i.indkey) WHERE i.indrelid = ?::regclass AND i.indisprimary",
                         (table,)).fetchone()[0]
        seq = tx.execute("SELECT pg_get_serial_sequence(?, ?)", (table, key)).fetchone()[0]
        self.lock(tx, table)
        used = tx.execute(f"SELECT last_value, is_called FROM {seq}").fetchone()
        top = max(int(used[0]) if used[1] else 0, int(tx.execute(f"SELECT COALESCE(MAX({key}), 0) FROM {table}")
                                                      .fetchone()[0]))
        tx.execute("SELECT setval(?, ?)", (seq, top + n))
        return top

    def lock(self, db: Connection, table: str) -> None:
        """Writers of `table` wait for this transaction to end; readers do not (a sequence numbers rows in
        the order they were taken, not committed: without this a reader could see N and miss N-1 later)."""
        db.execute(f"LOCK TABLE {table} IN EXCLUSIVE MODE")

    def close(self) -> None:
        """Close the pool's connections."""
        self.pool.close()

