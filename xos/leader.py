"""One active daemon of a kind among several on one PostgreSQL database; the others stand by.

A daemon wins by taking a session-level advisory lock on a connection of its own, kept open while it serves:
when its process dies (kill -9 included) or its host drops off the network, PostgreSQL ends that session and
the lock goes with it, and a standby polling for it wins within a poll. Each win raises the scope's epoch in
the `xos_leader` table, and every transaction of the winner's stores first reads that row FOR SHARE and is
refused if the epoch moved on (`Database.fence`): an old active that did not notice its loss cannot write
after the new one began, and the new one's raise waits for any such write in flight, so it starts from
everything the old one committed. An active that loses its lock connection stops serving at once; started
again (systemd restarts it) it stands by.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import threading
import time
from collections.abc import Coroutine
from typing import Any

from xos.errors import Unavailable

log = logging.getLogger(__name__)

TABLE = ("CREATE TABLE IF NOT EXISTS xos_leader (scope TEXT PRIMARY KEY, epoch BIGINT NOT NULL, holder TEXT NOT NULL, "
         "since DOUBLE PRECISION NOT NULL)")
EPOCH_HEADER = "X-Xos-Epoch"  # an active daemon's epoch on its calls to others, who refuse an older one's
POLL = 0.5  # seconds between a standby's tries for the lock
CHECK = 1.0  # seconds between the active's checks that its lock connection lives


class NotActive(Unavailable):
    """This daemon is not (or no longer) the active one of its kind: another serves."""

    code = "not-active"


class Leadership:
    """This process's claim to be the active `scope` (the job manager, the MRC) on the database at `url`."""

    def __init__(self, url: str, scope: str, holder: str = "") -> None:
        self.url = url
        self.scope = scope
        self.holder = holder or f"{socket.gethostname()} pid {os.getpid()}"
        self.epoch = 0
        self.lost = threading.Event()
        self.why = ""
        self._conn: Any = None
        self._stop = threading.Event()
        self._watcher: threading.Thread | None = None
        self._gone: asyncio.Future[str] | None = None

    def _connect(self) -> Any:
        import psycopg

        conn = psycopg.connect(self.url, autocommit=True, connect_timeout=5, keepalives=1, keepalives_idle=2,
                               keepalives_interval=1, keepalives_count=2)
        try:  # the server's side of the same: a host gone silent loses the lock within seconds (TCP only)
            conn.execute("SET tcp_keepalives_idle = 2; SET tcp_keepalives_interval = 1; SET tcp_keepalives_count = 2")
        except psycopg.Error:
            pass
        return conn

    def acquire(self, timeout: float | None = None) -> int:
        """Wait until this process is the active one (or `timeout` seconds, then NotActive); its epoch."""
        import psycopg

        deadline = None if timeout is None else time.monotonic() + timeout
        told = ""
        reached = False  # a database never reached is a wrong URL or a server down: said at once, not waited on
        while not self._stop.is_set():
            try:
                if self._conn is None:
                    try:
                        self._conn = self._connect()
                    except psycopg.Error as e:
                        if not reached:
                            raise Unavailable(f"PostgreSQL at {safe_url(self.url)} is not reachable: "
                                              f"{str(e).strip()}") from None
                        raise
                    reached = True
                    self._conn.execute(TABLE)
                if self._conn.execute("SELECT pg_try_advisory_lock(hashtext(%s))",
                                      (f"xos_leader:{self.scope}",)).fetchone()[0]:
                    with self._conn.transaction():
                        self.epoch = int(self._conn.execute(
                            "INSERT INTO xos_leader VALUES (%s, 1, %s, %s) ON CONFLICT (scope) DO UPDATE SET "
                            "epoch = xos_leader.epoch + 1, holder = excluded.holder, since = excluded.since "
                            "RETURNING epoch", (self.scope, self.holder, time.time())).fetchone()[0])
                    log.info("active %s (epoch %d): %s", self.scope, self.epoch, self.holder)
                    return self.epoch
                row = self._conn.execute("SELECT holder, epoch FROM xos_leader WHERE scope=%s",
                                         (self.scope,)).fetchone()
                now = f"{row[0]} (epoch {row[1]})" if row else "another process"
                if now != told:
                    log.info("standing by: the active %s is %s", self.scope, now)
                    told = now
            except psycopg.Error as e:
                if told != "unreachable":  # said once, not at every poll
                    log.warning("standing by: PostgreSQL is not reachable: %s", str(e).strip())
                    told = "unreachable"
                self._drop()
            if deadline is not None and time.monotonic() >= deadline:
                raise NotActive(f"another {self.scope} is active ({told})" if told not in ("", "unreachable") else
                                f"no {self.scope} could be made active: PostgreSQL is not reachable")
            self._stop.wait(POLL)
        raise NotActive(f"stopped while standing by as {self.scope}")

    def deposed(self, why: str) -> None:
        """This process is no longer the active one (its lock connection failed, or a fenced write found a newer
        epoch): `until_lost` returns. Any thread may tell."""
        if self.lost.is_set():
            return
        self.why = why
        self.lost.set()
        gone = self._gone
        if gone is not None:
            def tell() -> None:
                if not gone.done():
                    gone.set_result(why)

            gone.get_loop().call_soon_threadsafe(tell)

    async def until_lost(self) -> None:
        """Return never while this process is the active one; raise NotActive once it is not (a daemon's
        background task: the daemon stops serving)."""
        self._gone = asyncio.get_running_loop().create_future()
        if self.lost.is_set():
            self._gone.set_result(self.why)
        why = await self._gone
        log.error("no longer the active %s: %s; stopping (started again, it stands by)", self.scope, why)
        raise NotActive(f"no longer the active {self.scope}: {why}")

    def watch(self) -> None:
        """Check the lock's connection every CHECK seconds in a thread; deposed when it fails."""
        def run() -> None:
            import psycopg

            while not self._stop.wait(CHECK):
                try:
                    self._conn.execute("SELECT 1")
                except psycopg.Error as e:
                    self.deposed(f"its lock connection to PostgreSQL failed: {str(e).strip()}")
                    return

        self._watcher = threading.Thread(target=run, name=f"leader-{self.scope}", daemon=True)
        self._watcher.start()

    def _drop(self) -> None:
        if self._conn is not None:
            try:
                self._conn.close()
            except Exception:  # closing a broken connection: nothing more to learn from it
                pass
            self._conn = None

    def release(self) -> None:
        """Stop standing by or watching; the lock goes with its connection (a standby may take over at once)."""
        self._stop.set()
        if self._watcher is not None:
            self._watcher.join(timeout=5)
        self._drop()


_held_files: list[int] = []  # the lock files of SQLite stores this process is the active daemon of


def _lock_file(path: str, holder: str) -> bool:
    """Take the lock beside a SQLite store (PATH.active, 0600); whether it was free. Held until the process
    ends: kill -9 included, the kernel lets it go."""
    import fcntl

    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    old = os.umask(0o077)
    try:
        fd = os.open(path + ".active", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
    finally:
        os.umask(old)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return False
    os.ftruncate(fd, 0)
    os.write(fd, f"{holder}\n".encode())
    _held_files.append(fd)
    return True


async def stand_by(url: str, scope: str, holder: str, sqlite_path: str = "") -> Leadership | None:
    """Wait until this process is the active `scope`. For a store in PostgreSQL, through the database (the
    Leadership, watched from then on); for one in SQLite (`sqlite_path`), through a lock beside its file, so
    a second daemon started on the same store by mistake stands by instead of serving beside the first
    (None then: one host, nothing to fence). SIGTERM or SIGINT while standing by stops it quietly."""
    if not url.startswith(("postgresql://", "postgres://")):
        if sqlite_path and not _lock_file(sqlite_path, holder):
            log.info("standing by: another %s uses %s", scope, sqlite_path)
            stop = asyncio.Event()
            loop = asyncio.get_running_loop()
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.add_signal_handler(sig, stop.set)
            try:
                while not _lock_file(sqlite_path, holder):
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(stop.wait(), POLL)
                    if stop.is_set():
                        log.info("stopped while standing by as %s", scope)
                        raise SystemExit(0)
            finally:
                for sig in (signal.SIGTERM, signal.SIGINT):
                    loop.remove_signal_handler(sig)
            log.info("active %s: %s", scope, holder)
        return None
    lead = Leadership(url, scope, holder)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, lead._stop.set)
    try:
        await asyncio.to_thread(lead.acquire)
    except NotActive:
        lead.release()
        if lead._stop.is_set():  # told to stop: a standby that never served ends quietly
            log.info("stopped while standing by as %s", scope)
            raise SystemExit(0) from None
        raise
    except BaseException:
        lead.release()
        raise
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)
    lead.watch()
    return lead


async def while_active(work: Coroutine[Any, Any, Any], lead: Leadership | None) -> None:
    """A daemon's background work, until it is no longer the active one (then NotActive: it stops serving)."""
    if lead is None:
        await work
        return
    task = asyncio.ensure_future(work)
    lost = asyncio.ensure_future(lead.until_lost())
    try:
        await asyncio.wait([task, lost], return_when=asyncio.FIRST_COMPLETED)
    finally:
        for t in (task, lost):
            t.cancel()
    for t in (lost, task):
        if t.done() and not t.cancelled() and t.exception() is not None:
            raise t.exception()  # type: ignore[misc]


def safe_url(url: str) -> str:
    """A database URL without its password, for messages."""
    scheme, sep, rest = url.partition("://")
    creds, at, where = rest.rpartition("@")
    return f"{scheme}{sep}{creds.split(':')[0]}{at}{where}" if at else url
