"""One active daemon per scope on a PostgreSQL database (xos.leader): the others stand by, a killed active's
place is taken, and a deposed active cannot write after its successor began."""

from __future__ import annotations

import subprocess
import sys
import threading

import pytest

from xos import pg
from xos.leader import Leadership, NotActive
from xos.testing import wait_for

TABLE = "CREATE TABLE IF NOT EXISTS things (id BIGSERIAL PRIMARY KEY, what TEXT NOT NULL)"


@pytest.fixture(scope="module")
def postgres():
    from xos.testing.postgres import TestPostgres

    with TestPostgres() as server:
        yield server


def test_one_active_the_other_stands_by_until_it_goes(postgres) -> None:
    url = postgres.url("lead")
    first, second = Leadership(url, "aem", "first"), Leadership(url, "aem", "second")
    try:
        assert first.acquire(timeout=10) == 1
        with pytest.raises(NotActive, match="first"):  # it says who is
            second.acquire(timeout=1)
        first.release()
        assert second.acquire(timeout=10) == 2
        other = Leadership(url, "mrc", "third")  # another scope has its own
        assert other.acquire(timeout=10) == 1
        other.release()
    finally:
        first.release()
        second.release()


CHILD = """
import sys
from xos.leader import Leadership
lead = Leadership(sys.argv[1], "aem", "child")
lead.acquire(timeout=30)
print("active", lead.epoch, flush=True)
sys.stdin.read()  # holds it until killed (or its stdin closes)
"""


def test_a_killed_active_is_replaced(postgres) -> None:
    url = postgres.url("lead")
    child = subprocess.Popen([sys.executable, "-c", CHILD, url], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                             text=True)
    standby = Leadership(url, "aem", "standby")
    try:
        assert child.stdout is not None and child.stdout.readline().split() == ["active", "1"]
        with pytest.raises(NotActive, match="child"):
            standby.acquire(timeout=1)
        child.kill()  # SIGKILL: nothing of it runs to let go
        child.wait()
        assert standby.acquire(timeout=15) == 2
    finally:
        child.kill()
        child.wait()
        standby.release()


def test_a_deposed_active_cannot_write(postgres) -> None:
    url = postgres.url("lead")
    old, new = Leadership(url, "aem", "old"), Leadership(url, "aem", "new")
    db = pg.Database(url, "things", [[TABLE]])
    told: list[str] = []
    try:
        db.fence("aem", old.acquire(timeout=10), told.append)
        with db.tx() as tx:
            tx.execute("INSERT INTO things (what) VALUES ('before')")
        old.release()  # as if its lock connection died unnoticed
        assert new.acquire(timeout=10) == 2
        with pytest.raises(NotActive, match="no longer the active"), db.tx() as tx:
            tx.execute("INSERT INTO things (what) VALUES ('after')")
        assert [r[0] for r in db.rows("SELECT what FROM things")] == ["before"]
        assert told and "took over" in told[0]
    finally:
        new.release()
        old.release()
        db.close()


def test_the_successor_starts_from_a_write_in_flight(postgres) -> None:
    """A standby winning while the old active's transaction is open waits for it to end, then sees it."""
    url = postgres.url("lead")
    old, new = Leadership(url, "aem", "old"), Leadership(url, "aem", "new")
    db = pg.Database(url, "things", [[TABLE]])
    db.fence("aem", old.acquire(timeout=10), lambda why: None)
    won: list[int] = []
    try:
        with db.tx() as tx:
            tx.execute("INSERT INTO things (what) VALUES ('in flight')")
            old._drop()  # its lock goes; its transaction (another connection) is still open
            taker = threading.Thread(target=lambda: won.append(new.acquire(timeout=30)))
            taker.start()
            wait_for(lambda: db.rows("SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock'")[0][0] >= 1,
                     20, "the standby to wait on the old active's transaction")
            assert not won
        taker.join(30)
        assert won == [2]
        assert [r[0] for r in db.rows("SELECT what FROM things")] == ["in flight"]
    finally:
        new.release()
        old.release()
        db.close()


SQLITE_CHILD = """
import asyncio, sys
from xos import leader
asyncio.run(leader.stand_by("", "aem", "child", sys.argv[1]))
print("active", flush=True)
sys.stdin.read()  # holds it until killed (or its stdin closes)
"""


def test_a_second_daemon_on_one_sqlite_store_stands_by(tmp_path) -> None:
    """Two job managers started on one SQLite file by mistake: the second waits until the first is gone."""
    import asyncio
    import os
    import stat

    from xos import leader

    store = str(tmp_path / "aem" / "jobs.db")
    child = subprocess.Popen([sys.executable, "-c", SQLITE_CHILD, store], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout is not None and child.stdout.readline().strip() == "active"
        assert stat.S_IMODE(os.stat(store + ".active").st_mode) == 0o600
        assert not leader._lock_file(store, "me")  # held: this one would stand by

        async def second() -> None:
            waiting = asyncio.ensure_future(leader.stand_by("", "aem", "second", store))
            await asyncio.sleep(0.3)
            assert not waiting.done()  # standing by while the first lives
            child.kill()  # SIGKILL: the kernel lets its lock go
            await asyncio.wait_for(waiting, 15)

        asyncio.run(second())
        with open(store + ".active") as f:
            assert f.read() == "second\n"
    finally:
        child.kill()
        child.wait()
        for fd in leader._held_files:
            os.close(fd)
        leader._held_files.clear()


def test_a_database_never_reached_is_one_clear_error(tmp_path) -> None:
    """A wrong URL or a server down at start is said at once (with no password), not stood by for ever."""
    from xos.errors import Unavailable

    lead = Leadership(f"postgresql://xos:secret@/nowhere?host={tmp_path}&connect_timeout=2", "aem", "me")
    with pytest.raises(Unavailable, match="PostgreSQL at postgresql://xos@/nowhere") as e:
        lead.acquire(timeout=30)
    assert "secret" not in str(e.value)
