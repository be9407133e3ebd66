"""The job directory: jobs, their states and every transition, in SQLite.

States follow DRMAA v2's names where it has them (queued, queued-held, running, suspended,
requeued, done, failed) and add what a grid needs: matched (a node was chosen), checkpointing,
migrating, and cancelled. One `transition()` checks legality and persists the change with its
time and reason, in the same transaction, as runc's state machine does.
"""

from __future__ import annotations

import enum
import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from xos import stores
from xos.aem.jobspec import JobSpec
from xos.errors import IllegalTransition, NotFound
from xos.lifecycle import Lifecycle
from xos.sqlite import Database


class State(enum.StrEnum):
    QUEUED = "queued"
    HELD = "queued-held"
    MATCHED = "matched"
    RUNNING = "running"
    SUSPENDED = "suspended"
    CHECKPOINTING = "checkpointing"
    MIGRATING = "migrating"
    REQUEUED = "requeued"
    DONE = "done"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def final(self) -> bool:
        """Done, failed or cancelled: nothing follows."""
        return JOB.final(self)


S = State
LEGAL: dict[State, set[State]] = {
    S.QUEUED: {S.MATCHED, S.HELD, S.CANCELLED, S.FAILED},
    S.HELD: {S.QUEUED, S.CANCELLED},
    S.MATCHED: {S.RUNNING, S.QUEUED, S.REQUEUED, S.HELD, S.CANCELLED, S.FAILED},
    S.RUNNING: {S.SUSPENDED, S.CHECKPOINTING, S.MIGRATING, S.DONE, S.FAILED, S.CANCELLED, S.REQUEUED},
    S.SUSPENDED: {S.RUNNING, S.CHECKPOINTING, S.MIGRATING, S.CANCELLED, S.REQUEUED, S.FAILED},
    S.CHECKPOINTING: {S.RUNNING, S.SUSPENDED, S.FAILED, S.REQUEUED, S.CANCELLED},
    S.MIGRATING: {S.RUNNING, S.FAILED, S.REQUEUED, S.CANCELLED},
    S.REQUEUED: {S.MATCHED, S.QUEUED, S.HELD, S.CANCELLED, S.FAILED},
    S.DONE: set(),
    S.FAILED: set(),
    S.CANCELLED: set(),
}
JOB = Lifecycle("job", LEGAL)

# Control verbs of `xos job VERB` and the state each leads to.
VERBS: dict[str, State] = {"hold": S.HELD, "release": S.QUEUED, "suspend": S.SUSPENDED, "resume": S.RUNNING,
                           "cancel": S.CANCELLED, "checkpoint": S.CHECKPOINTING, "migrate": S.MIGRATING}
# Where a verb may start from (narrower than LEGAL: resuming is from suspended only, not from matched).
VERB_FROM: dict[str, set[State]] = {
    "hold": {S.QUEUED, S.REQUEUED, S.MATCHED}, "release": {S.HELD}, "suspend": {S.RUNNING},
    "resume": {S.SUSPENDED}, "cancel": {s for s in State if not s.final},
    "checkpoint": {S.RUNNING, S.SUSPENDED}, "migrate": {S.RUNNING}}

SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    id TEXT PRIMARY KEY, seq INTEGER NOT NULL, owner TEXT NOT NULL, vo TEXT NOT NULL, spec TEXT NOT NULL,
    state TEXT NOT NULL, node TEXT NOT NULL DEFAULT '', reason TEXT NOT NULL DEFAULT '',
    token TEXT NOT NULL DEFAULT '', created REAL NOT NULL, updated REAL NOT NULL, exit_status INTEGER,
    credential TEXT NOT NULL DEFAULT '');
CREATE INDEX IF NOT EXISTS jobs_state ON jobs (state);
CREATE INDEX IF NOT EXISTS jobs_token ON jobs (owner, token);
CREATE TABLE IF NOT EXISTS transitions (job TEXT NOT NULL, at REAL NOT NULL, old TEXT NOT NULL, new TEXT NOT NULL,
    reason TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS transitions_job ON transitions (job);
CREATE TABLE IF NOT EXISTS nodes (name TEXT PRIMARY KEY, url TEXT NOT NULL, seen REAL NOT NULL);
CREATE TABLE IF NOT EXISTS counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS usage_segments (job TEXT NOT NULL, owner TEXT NOT NULL, vo TEXT NOT NULL, node TEXT NOT NULL,
    at REAL NOT NULL, cpu_seconds REAL NOT NULL, memory_peak INTEGER NOT NULL, bytes_in INTEGER NOT NULL,
    bytes_out INTEGER NOT NULL, wall_seconds REAL NOT NULL, price REAL NOT NULL, cost REAL NOT NULL);
CREATE INDEX IF NOT EXISTS usage_segments_job ON usage_segments (job);
"""

USAGE = ("job", "owner", "vo", "node", "at", "cpu_seconds", "memory_peak", "bytes_in", "bytes_out", "wall_seconds",
         "price", "cost")
SUMMED = ("cpu_seconds", "bytes_in", "bytes_out", "wall_seconds", "cost")


@dataclass(frozen=True)
class Job:
    id: str
    owner: str
    vo: str
    spec: dict[str, Any]
    state: State
    node: str
    reason: str
    token: str
    created: float
    updated: float
    exit_status: int | None

    def to_json(self) -> dict[str, Any]:
        return {"id": self.id, "owner": self.owner, "vo": self.vo, "state": self.state.value, "node": self.node,
                "reason": self.reason, "created": self.created, "updated": self.updated,
                "exit_status": self.exit_status, "name": self.spec.get("name", ""), "spec": self.spec}


COLUMNS = "id, owner, vo, spec, state, node, reason, token, created, updated, exit_status"


def _job(row: tuple[Any, ...]) -> Job:
    return Job(row[0], row[1], row[2], json.loads(row[3]), State(row[4]), row[5], row[6], row[7], row[8], row[9],
               row[10])


class JobStore(Protocol):
    """Jobs and their history; nothing lives only in memory, so a restarted job manager loses nothing."""

    def close(self) -> None: ...
    def submit(self, spec: JobSpec, owner: str, vo: str, credential: str = '') -> list[Job]: ...
    def get(self, job_id: str) -> Job: ...
    def ls(self, state: State | None = None, owner: str | None = None) -> list[Job]: ...
    def transition(self, job_id: str, to: State, reason: str, node: str | None = None,
                   exit_status: int | None = None) -> Job: ...
    def transitions(self, steps: list[tuple[str, State, str, str | None]]) -> list[Job]: ...
    def may(self, job_id: str, verb: str) -> Job: ...
    def control(self, job_id: str, verb: str, reason: str = '') -> Job: ...
    def credential(self, job_id: str) -> str: ...
    def set_reason(self, job_id: str, reason: str) -> None: ...
    def add_usage(self, job: Job, usage: dict[str, Any], price: float,
                  then: tuple[State, str, int | None] | None = None) -> dict[str, Any]: ...
    def usage(self, vo: str | None = None, owner: str | None = None, since: float = 0.0) -> list[dict[str, Any]]: ...
    @staticmethod
    def totals(records: list[dict[str, Any]]) -> dict[str, dict[str, dict[str, float]]]: ...
    def remember_node(self, name: str, url: str) -> None: ...
    def known_nodes(self) -> dict[str, str]: ...
    def history(self, job_id: str) -> list[dict[str, Any]]: ...
    def counts(self) -> dict[str, int]: ...
    def purge(self, job_id: str) -> None: ...
    def ready(self, job: Job) -> tuple[bool, str]: ...


class SQLJobStore:
    """JobStore in SQL both engines speak: a SQLite file (xos.sqlite) or a PostgreSQL database (xos.pg)."""

    def __init__(self, db: Any) -> None:
        self.db = db

    def close(self) -> None:
        self.db.close()

    def submit(self, spec: JobSpec, owner: str, vo: str, credential: str = "") -> list[Job]:
        """Queue a job (an array of `count` jobs, ids N.0 .. N.count-1); with a token, a retried submission
        returns the jobs of the first instead of making more."""
        now = time.time()
        with self.db.tx() as tx:
            if spec.token:
                rows = tx.execute(f"SELECT {COLUMNS} FROM jobs WHERE owner=? AND token=? ORDER BY seq",
                                  (owner, spec.token)).fetchall()
                if rows:
                    return [_job(r) for r in rows]
            self.db.lock(tx, "counters")  # two job managers on one database number jobs one after the other
            row = tx.execute("SELECT value FROM counters WHERE name='job'").fetchone()
            n = (row[0] if row else 0) + 1
            tx.execute("INSERT INTO counters VALUES ('job', ?) ON CONFLICT (name) DO UPDATE SET value=excluded.value",
                       (n,))
            ids = [str(n)] if spec.count == 1 else [f"{n}.{i}" for i in range(spec.count)]
            body = json.dumps(spec.to_json())
            for seq, job_id in enumerate(ids):
                tx.execute("INSERT INTO jobs (id, seq, owner, vo, spec, state, token, created, updated, credential) "
                           "VALUES (?,?,?,?,?,?,?,?,?,?)", (job_id, seq, owner, vo, body, S.QUEUED.value, spec.token,
                                                            now, now, credential))
                tx.execute("INSERT INTO transitions VALUES (?,?,?,?,?)", (job_id, now, "", S.QUEUED.value,
                                                                          "submitted"))
            return [_job(r) for r in tx.execute(f"SELECT {COLUMNS} FROM jobs WHERE id IN "
                                                f"({','.join('?' * len(ids))}) ORDER BY seq", ids)]

    def get(self, job_id: str) -> Job:
        rows = self.db.rows(f"SELECT {COLUMNS} FROM jobs WHERE id=?", (job_id,))
        if not rows:
            raise NotFound(f"no job {job_id!r}", job=job_id)
        return _job(rows[0])

    def ls(self, state: State | None = None, owner: str | None = None) -> list[Job]:
        sql, args = f"SELECT {COLUMNS} FROM jobs WHERE 1=1", list[object]()
        if state is not None:
            sql += " AND state=?"
            args.append(state.value)
        if owner is not None:
            sql += " AND owner=?"
            args.append(owner)
        return [_job(r) for r in self.db.rows(sql + " ORDER BY created, seq", args)]

    def transition(self, job_id: str, to: State, reason: str, node: str | None = None,
                   exit_status: int | None = None) -> Job:
        """Move a job to `to` if its state allows it; the change and its reason are persisted together."""
        with self.db.tx() as tx:
            return self._step(tx, job_id, to, reason, node, exit_status)

    def transitions(self, steps: list[tuple[str, State, str, str | None]]) -> list[Job]:
        """Several jobs moved (job, state, reason, node) in one transaction: all of them, or none (a matching
        pass's jobs, one commit instead of one each)."""
        with self.db.tx() as tx:
            return [self._step(tx, job_id, to, reason, node) for job_id, to, reason, node in steps]

    @staticmethod
    def _step(tx: Any, job_id: str, to: State, reason: str, node: str | None = None,
              exit_status: int | None = None) -> Job:
        row = tx.execute("SELECT state FROM jobs WHERE id=?", (job_id,)).fetchone()
        if row is None:
            raise NotFound(f"no job {job_id!r}", job=job_id)
        t = JOB.step(job_id, State(row[0]), to, reason, job=job_id)
        # A final state: nothing will run as its owner again, and the credential it came with goes.
        done = _job(tx.execute("UPDATE jobs SET state=?, reason=?, updated=?, node=COALESCE(?, node), "
                               "exit_status=COALESCE(?, exit_status), credential=CASE WHEN ? = 1 THEN '' ELSE "
                               f"credential END WHERE id=? RETURNING {COLUMNS}",
                               (to.value, reason, t.at, node, exit_status, 1 if to.final else 0, job_id)).fetchone())
        tx.execute("INSERT INTO transitions VALUES (?,?,?,?,?)", (job_id, t.at, t.old, t.new, t.reason))
        return done

    def may(self, job_id: str, verb: str) -> Job:
        """The job, if control verb `verb` applies to it in its state; IllegalTransition otherwise."""
        if verb not in VERBS:
            raise IllegalTransition(f"unknown control verb {verb!r} (use {', '.join(VERBS)})")
        job = self.get(job_id)
        if job.state not in VERB_FROM[verb]:
            raise IllegalTransition(f"cannot {verb} job {job_id}: it is {job.state.value}", job=job_id,
                                    state=job.state.value)
        return job

    def control(self, job_id: str, verb: str, reason: str = "") -> Job:
        """Apply a control verb (hold, release, suspend, resume, cancel, checkpoint, migrate) to the record."""
        self.may(job_id, verb)
        return self.transition(job_id, VERBS[verb], reason or f"{verb} by request")

    def credential(self, job_id: str) -> str:
        """The credential a job was submitted with: the node maps the job's account from it."""
        rows = self.db.rows("SELECT credential FROM jobs WHERE id=?", (job_id,))
        if not rows:
            raise NotFound(f"no job {job_id!r}", job=job_id)
        return str(rows[0][0])

    def set_reason(self, job_id: str, reason: str) -> None:
        """Why a job stays where it is (waiting for a dependency, no match), without a transition."""
        with self.db.tx() as tx:
            tx.execute("UPDATE jobs SET reason=?, updated=? WHERE id=?", (reason, time.time(), job_id))

    def add_usage(self, job: Job, usage: dict[str, Any], price: float,
                  then: tuple[State, str, int | None] | None = None) -> dict[str, Any]:
        """A usage record of the part of a job that ran on `job.node`, at that node's price (per CPU-hour, as
        XenoServers charged): one per node a job ran on (a migrated job has several); with `then` (state,
        reason, exit status), the job's transition there in the same transaction."""
        cpu = float(usage.get("cpu_seconds", 0.0))
        rec: dict[str, Any] = {
            "job": job.id, "owner": job.owner, "vo": job.vo, "node": job.node, "at": time.time(), "cpu_seconds": cpu,
            "memory_peak": int(usage.get("memory_peak", 0)), "bytes_in": int(usage.get("bytes_in", 0)),
            "bytes_out": int(usage.get("bytes_out", 0)), "wall_seconds": float(usage.get("wall_seconds", 0.0)),
            "price": price, "cost": round(cpu / 3600 * price, 6)}
        with self.db.tx() as tx:
            tx.execute(f"INSERT INTO usage_segments VALUES ({','.join('?' * len(USAGE))})",
                       [rec[k] for k in USAGE])
            if then is not None:
                self._step(tx, job.id, then[0], then[1], exit_status=then[2])
        return rec

    def usage(self, vo: str | None = None, owner: str | None = None, since: float = 0.0) -> list[dict[str, Any]]:
        sql, args = "SELECT * FROM usage_segments WHERE at >= ?", list[object]([since])
        if vo is not None:
            sql += " AND vo=?"
            args.append(vo)
        if owner is not None:
            sql += " AND owner=?"
            args.append(owner)
        return [dict(zip(USAGE, r, strict=True)) for r in self.db.rows(sql + " ORDER BY at", args)]

    @staticmethod
    def totals(records: list[dict[str, Any]]) -> dict[str, dict[str, dict[str, float]]]:
        """Sums per VO, per user and per node (the report's three views); `jobs` counts each job once."""
        out: dict[str, dict[str, dict[str, float]]] = {"vo": {}, "user": {}, "node": {}}
        seen: set[tuple[str, str, str]] = set()
        for r in records:
            for view, key in (("vo", r["vo"]), ("user", r["owner"]), ("node", r["node"])):
                t = out[view].setdefault(key, {"jobs": 0, **{k: 0.0 for k in SUMMED}})
                if (view, key, r["job"]) not in seen:
                    seen.add((view, key, r["job"]))
                    t["jobs"] += 1
                for k in SUMMED:
                    t[k] += r[k]
        return out

    def remember_node(self, name: str, url: str) -> None:
        """Keep the peer URL of a node that pushed its ad, for after a restart."""
        with self.db.tx() as tx:
            tx.execute("INSERT INTO nodes VALUES (?,?,?) ON CONFLICT (name) DO UPDATE SET url=excluded.url, "
                       "seen=excluded.seen", (name, url, time.time()))

    def known_nodes(self) -> dict[str, str]:
        """Nodes that pushed their ads before: name -> peer URL."""
        return {str(r[0]): str(r[1]) for r in self.db.rows("SELECT name, url FROM nodes")}

    def counts(self) -> dict[str, int]:
        """How many jobs are in each state (states with none left out)."""
        return {str(state): int(str(n)) for state, n in self.db.rows("SELECT state, count(*) FROM jobs GROUP BY state")}

    def history(self, job_id: str) -> list[dict[str, Any]]:
        self.get(job_id)
        # in the order they were made: one job's transitions are made one after the other
        rows = self.db.rows("SELECT at, old, new, reason FROM transitions WHERE job=? ORDER BY at", (job_id,))
        return [{"at": r[0], "from": r[1], "to": r[2], "reason": r[3]} for r in rows]

    def purge(self, job_id: str) -> None:
        """Forget a finished job (its records stay until its owner asks, unlike SLURM's 300 s)."""
        job = self.get(job_id)
        if not job.state.final:
            raise IllegalTransition(f"job {job_id} is {job.state.value}: only finished jobs can be purged")
        with self.db.tx() as tx:
            tx.execute("DELETE FROM transitions WHERE job=?", (job_id,))
            tx.execute("DELETE FROM jobs WHERE id=?", (job_id,))

    def ready(self, job: Job) -> tuple[bool, str]:
        """Whether a queued job's dependencies allow it to run now, and if not, why (or that they never will)."""
        for dep in job.spec.get("after", []):
            try:
                other = self.get(dep["job"])
            except NotFound:
                return False, f"never: it waits for job {dep['job']}, which does not exist"
            if not other.state.final:
                return False, f"waits for job {other.id} ({other.state.value})"
            if dep["when"] == "success" and other.state is not S.DONE:
                return False, f"never: job {other.id} ended {other.state.value}, and it needs success"
        return True, ""


def _sqlite(path: str) -> JobStore:
    db = Database(path, SCHEMA)
    os.chmod(path, 0o600)  # it holds the credentials of jobs that may still run
    db.execute("PRAGMA secure_delete=ON")  # a forgotten credential is overwritten, not left in a free page
    return SQLJobStore(db)


def _postgresql(url: str) -> JobStore:
    from xos import pg

    return SQLJobStore(pg.Database(url, "jobs", [pg.ddl(SCHEMA)]))


BACKENDS: dict[str, Callable[[str], JobStore]] = {"sqlite": _sqlite, "postgresql": _postgresql}


def open_store(url: str) -> JobStore:
    """The job store `url` names (see xos.stores)."""
    return stores.open_url("job", BACKENDS, url)
