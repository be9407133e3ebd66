"""A throwaway PostgreSQL server for the stores' conformance suites: a cluster of its own in a temporary
directory, run as the postgres account, reached on a Unix socket there only (no TCP port), stopped and
removed at the end."""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import subprocess
import tempfile


def _bin(tool: str) -> str:
    found = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{tool}"))
    if not found:
        raise RuntimeError(f"PostgreSQL's {tool} is missing: install the postgresql package (make setup does)")
    return found[-1]


class TestPostgres:
    """A PostgreSQL cluster for tests; `url(db)` makes a database in it and names it."""

    __test__ = False

    def __init__(self) -> None:
        self.base = tempfile.mkdtemp(prefix="xos-pg-")
        self.data = os.path.join(self.base, "data")
        self.started = False
        self._dbs = 0

    def _as_postgres(self, argv: list[str]) -> None:
        r = subprocess.run(["runuser", "-u", "postgres", "--", *argv], capture_output=True, text=True, timeout=120)
        if r.returncode != 0:
            raise RuntimeError(f"{os.path.basename(argv[0])} failed: {(r.stderr or r.stdout).strip()[-2000:]}")

    def __enter__(self) -> TestPostgres:
        try:
            pg = pwd.getpwnam("postgres")
        except KeyError:
            raise RuntimeError("no postgres account: install the postgresql package (make setup does)") from None
        os.chown(self.base, pg.pw_uid, pg.pw_gid)
        try:
            self._as_postgres([_bin("initdb"), "-D", self.data, "-A", "trust", "-U", "postgres", "-E", "UTF8",
                               "--no-sync"])
            self._as_postgres([_bin("pg_ctl"), "-D", self.data, "-l", os.path.join(self.base, "log"), "-w",
                               "-o", f"-k {self.base} -c listen_addresses=''", "start"])
            self.started = True
        except BaseException:
            self.__exit__()
            raise
        return self

    def url(self, name: str) -> str:
        """A new, empty database: its URL."""
        self._dbs += 1
        db = f"{name}_{self._dbs}"
        self._as_postgres([_bin("createdb"), "-h", self.base, "-U", "postgres", db])
        return f"postgresql://postgres@/{db}?host={self.base}"

    def __exit__(self, *exc: object) -> None:
        if self.started:
            self._as_postgres([_bin("pg_ctl"), "-D", self.data, "-m", "fast", "-w", "stop"])
            self.started = False
        shutil.rmtree(self.base, ignore_errors=True)
