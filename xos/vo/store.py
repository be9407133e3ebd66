"""The VO service's persistent state: VOs, members, issued credentials, revocations. SQLite (WAL), or
PostgreSQL."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from xos import stores
from xos.sqlite import Database


@dataclass
class VO:
    """A virtual organization."""

    name: str
    owner: str
    state: str  # active | dissolved
    created: float
    expires: float | None


@dataclass
class Member:
    """A member of a VO with roles and groups."""

    vo: str
    user: str
    roles: list[str]
    groups: list[str]
    added: float


@dataclass
class Revocation:
    """One revoked credential; `serial` orders revocations so nodes pull only what is new."""

    serial: int
    jti: str
    vo: str
    user: str
    exp: int
    at: float
    reason: str
    scope: str = "credential"  # credential | member | vo: what a node should release with it

    def to_json(self) -> dict[str, Any]:
        """Plain values."""
        return self.__dict__.copy()


class VOStore(Protocol):
    """What the VO service keeps; every change is durable when the call returns."""

    def add_vo(self, vo: VO) -> None: ...
    def vo(self, name: str) -> VO | None: ...
    def vos(self) -> list[VO]: ...
    def set_vo_state(self, name: str, state: str) -> None: ...
    def put_member(self, m: Member) -> None: ...
    def member(self, vo: str, user: str) -> Member | None: ...
    def members(self, vo: str) -> list[Member]: ...
    def remove_member(self, vo: str, user: str) -> bool: ...
    def add_credential(self, jti: str, vo: str, user: str, iat: int, exp: int) -> None: ...
    def revoke(self, jtis: list[str] | None, vo: str | None, user: str | None, reason: str,
               scope: str = "credential") -> list[Revocation]: ...
    def revocations(self, since: int = 0) -> list[Revocation]: ...
    def last_serial(self) -> int: ...
    def close(self) -> None: ...


# "user" is quoted: a reserved word in PostgreSQL.
SCHEMA = """
CREATE TABLE IF NOT EXISTS vos (
    name TEXT PRIMARY KEY, owner TEXT NOT NULL, state TEXT NOT NULL, created REAL NOT NULL, expires REAL
);
CREATE TABLE IF NOT EXISTS members (
    vo TEXT NOT NULL, "user" TEXT NOT NULL, roles TEXT NOT NULL, groups TEXT NOT NULL, added REAL NOT NULL,
    PRIMARY KEY (vo, "user")
);
CREATE TABLE IF NOT EXISTS credentials (
    jti TEXT PRIMARY KEY, vo TEXT NOT NULL, "user" TEXT NOT NULL, iat INTEGER NOT NULL, exp INTEGER NOT NULL,
    revoked INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS credentials_by_member ON credentials(vo, "user");
CREATE TABLE IF NOT EXISTS revocations (
    serial INTEGER PRIMARY KEY AUTOINCREMENT, jti TEXT NOT NULL, vo TEXT NOT NULL, "user" TEXT NOT NULL,
    exp INTEGER NOT NULL, at REAL NOT NULL, reason TEXT NOT NULL, scope TEXT NOT NULL
);
"""


class SQLVOStore:
    """VOStore in SQL both engines speak: a SQLite file (xos.sqlite) or a PostgreSQL database (xos.pg)."""

    def __init__(self, db: Any) -> None:
        self._db = db

    def add_vo(self, vo: VO) -> None:
        with self._db.tx() as db:
            db.execute("INSERT INTO vos VALUES (?,?,?,?,?)", (vo.name, vo.owner, vo.state, vo.created, vo.expires))

    def vo(self, name: str) -> VO | None:
        rows = self._db.rows("SELECT * FROM vos WHERE name=?", (name,))
        return VO(*rows[0]) if rows else None

    def vos(self) -> list[VO]:
        return [VO(*r) for r in self._db.rows("SELECT * FROM vos ORDER BY name")]

    def set_vo_state(self, name: str, state: str) -> None:
        with self._db.tx() as db:
            db.execute("UPDATE vos SET state=? WHERE name=?", (state, name))

    def put_member(self, m: Member) -> None:
        with self._db.tx() as db:
            db.execute('INSERT INTO members VALUES (?,?,?,?,?) ON CONFLICT (vo, "user") DO UPDATE SET '
                       "roles=excluded.roles, groups=excluded.groups, added=excluded.added",
                       (m.vo, m.user, json.dumps(m.roles), json.dumps(m.groups), m.added))

    def member(self, vo: str, user: str) -> Member | None:
        rows = self._db.rows('SELECT * FROM members WHERE vo=? AND "user"=?', (vo, user))
        return self._member(rows[0]) if rows else None

    def members(self, vo: str) -> list[Member]:
        return [self._member(r) for r in self._db.rows('SELECT * FROM members WHERE vo=? ORDER BY "user"', (vo,))]

    def remove_member(self, vo: str, user: str) -> bool:
        with self._db.tx() as db:
            return bool(db.execute('DELETE FROM members WHERE vo=? AND "user"=?', (vo, user)).rowcount > 0)

    def add_credential(self, jti: str, vo: str, user: str, iat: int, exp: int) -> None:
        with self._db.tx() as db:
            db.execute('INSERT INTO credentials (jti, vo, "user", iat, exp) VALUES (?,?,?,?,?)',
                       (jti, vo, user, iat, exp))

    def revoke(self, jtis: list[str] | None, vo: str | None, user: str | None, reason: str,
               scope: str = "credential") -> list[Revocation]:
        """Revoke the named credentials, or every live one of a member (vo and user) or of a VO (vo)."""
        q, args = 'SELECT jti, vo, "user", exp FROM credentials WHERE revoked=0', list[Any]()
        if jtis is not None:
            q += f" AND jti IN ({','.join('?' * len(jtis))})"
            args.extend(jtis)
        if vo is not None:
            q += " AND vo=?"
            args.append(vo)
        if user is not None:
            q += ' AND "user"=?'
            args.append(user)
        now = time.time()
        out = []
        insert = ('INSERT INTO revocations (jti, vo, "user", exp, at, reason, scope) VALUES (?,?,?,?,?,?,?) '
                  "RETURNING serial")
        with self._db.tx() as db:
            self._db.lock(db, "revocations")  # serials become visible in their order
            for jti, cvo, cuser, exp in db.execute(q, args).fetchall():
                serial = db.execute(insert, (jti, cvo, cuser, exp, now, reason, scope)).fetchone()[0]
                db.execute("UPDATE credentials SET revoked=1 WHERE jti=?", (jti,))
                out.append(Revocation(int(serial), jti, cvo, cuser, exp, now, reason, scope))
            if scope != "credential" and vo is not None:
                # Nodes release leases on a member's or VO's end even when no credential was live.
                marker, until = f"{scope}:{vo}:{user or ''}", int(now) + 31 * 86400
                serial = db.execute(insert, (marker, vo, user or "", until, now, reason, scope)).fetchone()[0]
                out.append(Revocation(int(serial), marker, vo, user or "", until, now, reason, scope))
        return out

    def revocations(self, since: int = 0) -> list[Revocation]:
        # Revocations of credentials that have expired anyway need not travel any more.
        rows = self._db.rows("SELECT * FROM revocations WHERE serial > ? AND exp > ? ORDER BY serial",
                             (since, int(time.time()) - 3600))
        return [Revocation(*r) for r in rows]

    def last_serial(self) -> int:
        """The newest revocation's serial (0 if none)."""
        return int(self._db.rows("SELECT COALESCE(MAX(serial), 0) FROM revocations")[0][0])

    def close(self) -> None:
        self._db.close()

    @staticmethod
    def _member(r: tuple[Any, ...]) -> Member:
        return Member(r[0], r[1], json.loads(r[2]), json.loads(r[3]), r[4])


def _sqlite(path: str) -> VOStore:
    return SQLVOStore(Database(path, SCHEMA))


def _postgresql(url: str) -> VOStore:
    from xos import pg

    return SQLVOStore(pg.Database(url, "vo", [pg.ddl(SCHEMA)]))


BACKENDS: dict[str, Callable[[str], VOStore]] = {"sqlite": _sqlite, "postgresql": _postgresql}


def open_store(url: str) -> VOStore:
    """The VO store `url` names (see xos.stores)."""
    return stores.open_url("VO", BACKENDS, url)
