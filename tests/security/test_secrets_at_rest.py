"""Secrets at rest: every store that holds a credential or key is unreadable to other local users,
SQLite's -wal and -shm files included."""

from __future__ import annotations

import os
import subprocess

from xos.sqlite import Database
from xos.testing import TestNode

NOBODY = 65534


def _readable_by_nobody(path: str) -> bool:
    return subprocess.run(["cat", path], user=NOBODY, group=NOBODY, capture_output=True).returncode == 0


def test_a_store_and_its_wal_and_shm_are_private(tmp_path: object) -> None:
    """Secrets at rest: a store made under the usual umask of 022 is 0600, -wal and -shm too."""
    os.chmod(str(tmp_path), 0o755)
    old = os.umask(0o022)
    try:
        db = Database(os.path.join(str(tmp_path), "store", "s.db"), "CREATE TABLE t (secret TEXT);")
        db.execute("INSERT INTO t VALUES ('a credential')")
    finally:
        os.umask(old)
    try:
        for suffix in ("", "-wal", "-shm"):
            path = os.path.join(str(tmp_path), "store", "s.db" + suffix)
            assert os.stat(path).st_mode & 0o777 == 0o600, (path, oct(os.stat(path).st_mode))
            os.chmod(os.path.dirname(path), 0o755)  # even with the directory opened up
            assert not _readable_by_nobody(path)
    finally:
        db.close()


def test_the_node_store_holding_credentials_is_private(node: TestNode) -> None:
    """Secrets at rest: the node's store (workspace records carry their owner's credential)."""
    with node.client() as c:
        c.create("sec", uid=1000, gid=1000)
        c.rm("sec")
    stores = [os.path.join(d, f) for d, _, fs in os.walk(node.home) for f in fs
              if f.endswith((".db", ".db-wal", ".db-shm", ".sqlite"))]
    assert stores
    for path in stores:
        assert os.stat(path).st_mode & 0o077 == 0, (path, oct(os.stat(path).st_mode))
        assert not _readable_by_nobody(path)
