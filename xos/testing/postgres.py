"""A throwaway PostgreSQL server for the stores' conformance suites: a cluster of its own in a temporary
directory, run as the postgres account, reached on a Unix socket there only (no TCP port), stopped and
removed at the end."""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shutil
import signal
import subprocess
import tempfile

from xos.testing import wait_for


def _bin(tool: str) -> str:
    found = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{tool}"))
    if not found:
        raise RuntimeError(f"PostgreSQL's {tool} is missing: install the postgresql package (make setup does)")
    return found[-1]


class TestPostgres:
    """A PostgreSQL cluster for tests; `url(db)` makes a database in it and names it. In `base` when given (a
    directory of the postgres account's that it removes at the end), else in a temporary directory; with
    `checksums`, its pages carry checksums (initdb -k)."""

    __test__ = False

    def __init__(self, base: str | None = None, checksums: bool = False) -> None:
        self.base = base or tempfile.mkdtemp(prefix="xos-pg-")
        self.data = os.path.join(self.base, "data")
        self.checksums = checksums
        self.started = False
        self.pid = 0  # the postmaster's, while it runs
        self._dbs = 0

    def as_postgres(self, argv: list[str]) -> str:
        """Run a program as the postgres account; its output (RuntimeError, with its errors, if it fails)."""
        r = subprocess.run(["runuser", "-u", "postgres", "--", *argv], capture_output=True, text=True, timeout=120)
        if r.returncode != 0:
            raise RuntimeError(f"{os.path.basename(argv[0])} failed: {(r.stderr or r.stdout).strip()[-2000:]}")
        return r.stdout

    def __enter__(self) -> TestPostgres:
        try:
            pg = pwd.getpwnam("postgres")
        except KeyError:
            raise RuntimeError("no postgres account: install the postgresql package (make setup does)") from None
        if os.stat(self.base).st_uid != pg.pw_uid:
            os.chown(self.base, pg.pw_uid, pg.pw_gid)
        try:
            self.as_postgres([_bin("initdb"), "-D", self.data, "-A", "trust", "-U", "postgres", "-E", "UTF8",
                              "--no-sync", *(["-k"] if self.checksums else [])])
            self.start()
        except BaseException:
            self.__exit__()
            raise
        return self

    def start(self, base: str | None = None) -> None:
        """Start the server (again), on its cluster as seen at `base` when given (another mount of it)."""
        if base is not None:
            self.base, self.data = base, os.path.join(base, "data")
        self.as_postgres([_bin("pg_ctl"), "-D", self.data, "-l", os.path.join(self.base, "log"), "-w",
                          "-o", f"-k {self.base} -c listen_addresses=''", "start"])
        self.started = True
        with open(os.path.join(self.data, "postmaster.pid")) as f:
            self.pid = int(f.readline())

    def stop(self, mode: str = "fast") -> None:
        """Stop the server: "fast" shuts down cleanly, "immediate" as a crash would (recovery at the next start)."""
        self.as_postgres([_bin("pg_ctl"), "-D", self.data, "-m", mode, "-w", "stop"])
        self.started, self.pid = False, 0

    def crash(self) -> None:
        """Stop the server as a crash would, without its cluster's files (their file system may be gone): the
        postmaster told to quit at once, no checkpoint written, and waited for with its processes."""
        if self.pid <= 0:  # never started (a pid of 0 would signal this process group)
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.pid, signal.SIGQUIT)
        # gone from /proc, reaped: a new postmaster takes a pid file naming a process that still exists
        # (a zombie included) for another server's
        wait_for(lambda: not os.path.exists(f"/proc/{self.pid}"), 60, "the postmaster to quit")
        self.started, self.pid = False, 0

    def url(self, name: str) -> str:
        """A new, empty database: its URL."""
        self._dbs += 1
        db = f"{name}_{self._dbs}"
        self.as_postgres([_bin("createdb"), "-h", self.base, "-U", "postgres", db])
        return f"postgresql://postgres@/{db}?host={self.base}"

    def tool(self, name: str, *args: str) -> str:
        """Run one of PostgreSQL's programs (psql, pgbench, pg_checksums...) against this server."""
        here = name in ("pg_checksums", "pg_controldata")  # these read the cluster's files, not the server
        return self.as_postgres([_bin(name), *(["-D", self.data] if here else ["-h", self.base, "-U", "postgres"]),
                                 *args])

    def __exit__(self, *exc: object) -> None:
        if self.started:
            try:
                self.stop()
            except RuntimeError:  # its files unreachable: by its pid
                self.crash()
        shutil.rmtree(self.base, ignore_errors=True)
