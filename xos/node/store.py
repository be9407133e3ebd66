"""The node's persistent state behind one narrow interface; SQLite (WAL) by default."""

from __future__ import annotations

import enum
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from xos import stores
from xos.allocation import Allocation
from xos.lifecycle import Lifecycle, Transition
from xos.sqlite import Database


class WorkspaceState(enum.StrEnum):
    """Where a workspace is in its life."""

    CREATING = "creating"
    RUNNING = "running"
    FROZEN = "frozen"
    DESTROYING = "destroying"
    DESTROYED = "destroyed"


W = WorkspaceState
WORKSPACE = Lifecycle("workspace", {
    W.CREATING: {W.RUNNING, W.DESTROYING},
    W.RUNNING: {W.FROZEN, W.DESTROYING},
    W.FROZEN: {W.RUNNING, W.DESTROYING},
    W.DESTROYING: {W.DESTROYED},
    W.DESTROYED: set(),
})


@dataclass
class WorkspaceRecord:
    """What the node remembers of a workspace across restarts."""

    id: str
    name: str
    state: str
    alloc: Allocation
    uid: int
    gid: int
    address: str
    init_pid: int = 0
    init_start: int = 0
    created: float = field(default_factory=time.time)
    checkpoint: dict[str, Any] = field(default_factory=dict)
    identity: dict[str, str] = field(default_factory=dict)  # vo, user and credential of a grid owner


@dataclass
class UsageRecord:
    """Accounting of one workspace; kept after the workspace is destroyed."""

    ws_id: str
    name: str
    started: float
    ended: float | None = None
    cpu_ns: int = 0
    memory_peak: int = 0
    bytes_in: int = 0
    bytes_out: int = 0
    oom_kills: int = 0
    pids_refused: int = 0

    @property
    def wall(self) -> float:
        """Seconds from creation to destruction (or now)."""
        return (self.ended or time.time()) - self.started

    def to_json(self) -> dict[str, Any]:
        """Plain values, wall time included."""
        return {
            "workspace": self.name, "id": self.ws_id, "started": self.started, "ended": self.ended,
            "cpu_seconds": self.cpu_ns / 1e9, "memory_peak": self.memory_peak, "bytes_in": self.bytes_in,
            "bytes_out": self.bytes_out, "oom_kills": self.oom_kills, "pids_refused": self.pids_refused,
            "wall_seconds": round(self.wall, 3),
        }


@dataclass
class ProcessRecord:
    """One process started in a workspace, and how it ended."""

    ws_id: str
    pid: int
    argv: list[str]
    started: float
    ended: float | None = None
    exit_code: int | None = None
    signal: int | None = None
    oom_killed: bool = False


class NodeStore(Protocol):
    """What the node daemon keeps; every change is durable when the call returns."""

    def add_workspace(self, rec: WorkspaceRecord) -> None: ...
    def update_workspace(self, rec: WorkspaceRecord) -> None: ...
    def transition(self, rec: WorkspaceRecord, t: Transition) -> None: ...
    def workspaces(self, include_destroyed: bool = False) -> list[WorkspaceRecord]: ...
    def transitions(self, ws_id: str) -> list[tuple[str, str, float, str]]: ...
    def save_usage(self, *recs: UsageRecord) -> None: ...
    def usage(self, name: str | None = None) -> list[UsageRecord]: ...
    def add_process(self, rec: ProcessRecord) -> int: ...
    def end_process(self, row: int, ended: float, code: int | None, sig: int | None, oom: bool) -> None: ...
    def processes(self, ws_id: str) -> list[ProcessRecord]: ...
    def set_forward(self, address: str, via: str | None) -> None: ...
    def forwards(self) -> dict[str, str]: ...
    def close(self) -> None: ...


SCHEMA = """
CREATE TABLE IF NOT EXISTS workspaces (
    id TEXT PRIMARY KEY, name TEXT NOT NULL, state TEXT NOT NULL, alloc TEXT NOT NULL,
    uid INTEGER NOT NULL, gid INTEGER NOT NULL, address TEXT NOT NULL,
    init_pid INTEGER NOT NULL, init_start INTEGER NOT NULL, created REAL NOT NULL,
    checkpoint TEXT NOT NULL DEFAULT '{}', identity TEXT NOT NULL DEFAULT '{}'
);
CREATE UNIQUE INDEX IF NOT EXISTS live_names ON workspaces(name) WHERE state != 'destroyed';
CREATE TABLE IF NOT EXISTS transitions (
    ws_id TEXT NOT NULL, old TEXT NOT NULL, new TEXT NOT NULL, at REAL NOT NULL, reason TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS usage (
    ws_id TEXT PRIMARY KEY, name TEXT NOT NULL, started REAL NOT NULL, ended REAL,
    cpu_ns INTEGER NOT NULL, memory_peak INTEGER NOT NULL, bytes_in INTEGER NOT NULL,
    bytes_out INTEGER NOT NULL, oom_kills INTEGER NOT NULL, pids_refused INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS forwards (address TEXT PRIMARY KEY, via TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS processes (
    "row" INTEGER PRIMARY KEY, ws_id TEXT NOT NULL, pid INTEGER NOT NULL, argv TEXT NOT NULL,
    started REAL NOT NULL, ended REAL, exit_code INTEGER, signal INTEGER, oom_killed INTEGER NOT NULL
);
"""

ADDED = {"workspaces": {"identity": "TEXT NOT NULL DEFAULT '{}'"}}
WORKSPACE_COLUMNS = ("id", "name", "state", "alloc", "uid", "gid", "address", "init_pid", "init_start", "created",
                     "checkpoint", "identity")


class SQLNodeStore:
    """NodeStore in SQL both engines speak: a SQLite file in WAL mode (xos.sqlite) or a PostgreSQL database
    (xos.pg)."""

    def __init__(self, db: Any) -> None:
        self._db = db

    def add_workspace(self, rec: WorkspaceRecord) -> None:
        with self._db.tx() as db:
            db.execute("INSERT INTO workspaces VALUES (?,?,?,?,?,?,?,?,?,?,?,?)", self._row(rec))
            db.execute("INSERT INTO transitions VALUES (?,?,?,?,?)", (rec.id, "", rec.state, time.time(), "created"))

    def update_workspace(self, rec: WorkspaceRecord) -> None:
        with self._db.tx() as db:
            db.execute("INSERT INTO workspaces VALUES (?,?,?,?,?,?,?,?,?,?,?,?) ON CONFLICT (id) DO UPDATE SET "
                       + ", ".join(f"{c}=excluded.{c}" for c in WORKSPACE_COLUMNS[1:]), self._row(rec))

    def transition(self, rec: WorkspaceRecord, t: Transition) -> None:
        with self._db.tx() as db:
            db.execute("INSERT INTO transitions VALUES (?,?,?,?,?)", (rec.id, t.old, t.new, t.at, t.reason))
            db.execute("UPDATE workspaces SET state=? WHERE id=?", (t.new, rec.id))
        rec.state = t.new

    def workspaces(self, include_destroyed: bool = False) -> list[WorkspaceRecord]:
        q = "SELECT * FROM workspaces" + ("" if include_destroyed else " WHERE state != 'destroyed'")
        return [self._rec(r) for r in self._db.rows(q + " ORDER BY created")]

    def transitions(self, ws_id: str) -> list[tuple[str, str, float, str]]:
        # in the order they were made: one workspace's transitions are made one after the other
        return [(str(r[0]), str(r[1]), float(r[2]), str(r[3])) for r in self._db.rows(
            "SELECT old, new, at, reason FROM transitions WHERE ws_id=? ORDER BY at", (ws_id,))]

    def save_usage(self, *recs: UsageRecord) -> None:
        update = ", ".join(f"{c}=excluded.{c}" for c in ("name", "started", "ended", "cpu_ns", "memory_peak",
                                                           "bytes_in", "bytes_out", "oom_kills", "pids_refused"))
        with self._db.tx() as db:
            for r in recs:
                db.execute(f"INSERT INTO usage VALUES (?,?,?,?,?,?,?,?,?,?) ON CONFLICT (ws_id) DO UPDATE SET {update}",
                           (r.ws_id, r.name, r.started, r.ended, r.cpu_ns, r.memory_peak, r.bytes_in, r.bytes_out,
                            r.oom_kills, r.pids_refused))

    def usage(self, name: str | None = None) -> list[UsageRecord]:
        q, args = "SELECT * FROM usage", ()  # type: tuple[str, tuple[str, ...]]
        if name is not None:
            q, args = q + " WHERE name=?", (name,)
        return [UsageRecord(*r) for r in self._db.rows(q + " ORDER BY started", args)]

    def add_process(self, rec: ProcessRecord) -> int:
        with self._db.tx() as db:
            return int(db.execute('INSERT INTO processes (ws_id, pid, argv, started, oom_killed) VALUES (?,?,?,?,0) '
                                  'RETURNING "row"', (rec.ws_id, rec.pid, json.dumps(rec.argv), rec.started)
                                  ).fetchone()[0])

    def end_process(self, row: int, ended: float, code: int | None, sig: int | None, oom: bool) -> None:
        with self._db.tx() as db:
            db.execute('UPDATE processes SET ended=?, exit_code=?, signal=?, oom_killed=? WHERE "row"=?',
                       (ended, code, sig, int(oom), row))

    def processes(self, ws_id: str) -> list[ProcessRecord]:
        rows = self._db.rows("SELECT ws_id, pid, argv, started, ended, exit_code, signal, oom_killed "
                             'FROM processes WHERE ws_id=? ORDER BY "row"', (ws_id,))
        return [ProcessRecord(r[0], r[1], json.loads(r[2]), r[3], r[4], r[5], r[6], bool(r[7])) for r in rows]

    def set_forward(self, address: str, via: str | None) -> None:
        """Remember (or, with via None, forget) that a workspace address of ours now lives at node `via`."""
        with self._db.tx() as db:
            if via is None:
                db.execute("DELETE FROM forwards WHERE address=?", (address,))
            else:
                db.execute("INSERT INTO forwards VALUES (?,?) ON CONFLICT (address) DO UPDATE SET via=excluded.via",
                           (address, via))

    def forwards(self) -> dict[str, str]:
        """Addresses of ours that migrated away, and where to."""
        return {str(a): str(v) for a, v in self._db.rows("SELECT address, via FROM forwards")}

    def close(self) -> None:
        self._db.close()

    @staticmethod
    def _row(rec: WorkspaceRecord) -> tuple[Any, ...]:
        return (rec.id, rec.name, rec.state, json.dumps(rec.alloc.to_json()), rec.uid, rec.gid, rec.address,
                rec.init_pid, rec.init_start, rec.created, json.dumps(rec.checkpoint), json.dumps(rec.identity))

    @staticmethod
    def _rec(r: tuple[Any, ...]) -> WorkspaceRecord:
        return WorkspaceRecord(id=r[0], name=r[1], state=r[2], alloc=Allocation(**json.loads(r[3])), uid=r[4],
                               gid=r[5], address=r[6], init_pid=r[7], init_start=r[8], created=r[9],
                               checkpoint=json.loads(r[10]), identity=json.loads(r[11]))


def _sqlite(path: str) -> NodeStore:
    return SQLNodeStore(Database(path, SCHEMA, ADDED))


def _postgresql(url: str) -> NodeStore:
    from xos import pg

    return SQLNodeStore(pg.Database(url, "node", [pg.ddl(SCHEMA)]))


BACKENDS: dict[str, Callable[[str], NodeStore]] = {"sqlite": _sqlite, "postgresql": _postgresql}


def open_store(url: str) -> NodeStore:
    """The node store `url` names (see xos.stores)."""
    return stores.open_url("node", BACKENDS, url)
