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


SCHEMA = """
CREATE TABLE IF NOT EXISTS vos (
    name TEXT PRIMARY KEY, owner TEXT NOT NULL, state TEXT NOT NULL, created REAL NOT NULL, expires REAL
);
CREATE TABLE IF NOT EXISTS members (
    vo TEXT NOT NULL, user TEXT NOT NULL, roles TEXT NOT NULL, groups TEXT NOT NULL, added REAL NOT NULL,
    PRIMARY KEY (vo, user)
);
CREATE TABLE IF NOT EXISTS credentials (
    jti TEXT PRIMARY KEY, vo TEXT NOT NULL, user TEXT NOT NULL, iat INTEGER NOT NULL, exp INTEGER NOT NULL,
    revoked INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS credentials_by_member ON credentials(vo, user);
CREATE TABLE IF NOT EXISTS revocations (
    serial INTEGER PRIMARY KEY AUTOINCREMENT, jti TEXT NOT NULL, vo TEXT NOT NULL, user TEXT NOT NULL,
    exp INTEGER NOT NULL, at REAL NOT NULL, reason TEXT NOT NULL, scope TEXT NOT NULL
);
"""


class SQLiteVOStore:
    """VOStore in one SQLite file."""

    def __init__(self, path: str) -> None:
        self._db = Database(path, SCHEMA)

    def add_vo(self, vo: VO) -> None:
        with self._db.tx() as db:
            db.execute("INSERT INTO vos VALUES (?,?,?,?,?)", (vo.name, vo.owner, vo.state, vo.created, vo.expires))

    def vo(self, name: str) -> VO | None:
        row = self._db.execute("SELECT * FROM vos WHERE name=?", (name,)).fetchone()
        return VO(*row) if row else None

    def vos(self) -> list[VO]:
        return [VO(*r) for r in self._db.execute("SELECT * FROM vos ORDER BY name")]

    def set_vo_state(self, name: str, state: str) -> None:
        with self._db.tx() as db:
            db.execute("UPDATE vos SET state=? WHERE name=?", (state, name))

    def put_member(self, m: Member) -> None:
        with self._db.tx() as db:
            db.execute("REPLACE INTO members VALUES (?,?,?,?,?)",
                       (m.vo, m.user, json.dumps(m.roles), json.dumps(m.groups), m.added))

    def member(self, vo: str, user: str) -> Member | None:
        row = self._db.execute("SELECT * FROM members WHERE vo=? AND user=?", (vo, user)).fetchone()
        return self._member(row) if row else None

    def members(self, vo: str) -> list[Member]:
        return [self._member(r) for r in self._db.execute("SELECT * FROM members WHERE vo=? ORDER BY user", (vo,))]

    def remove_member(self, vo: str, user: str) -> bool:
        with self._db.tx() as db:
            return db.execute("DELETE FROM members WHERE vo=? AND user=?", (vo, user)).rowcount > 0

    def add_credential(self, jti: str, vo: str, user: str, iat: int, exp: int) -> None:
        with self._db.tx() as db:
            db.execute("INSERT INTO credentials (jti, vo, user, iat, exp) VALUES (?,?,?,?,?)",
                       (jti, vo, user, iat, exp))

    def revoke(self, jtis: list[str] | None, vo: str | None, user: str | None, reason: str,
               scope: str = "credential") -> list[Revocation]:
        """Revoke the named credentials, or every live one of a member (vo and user) or of a VO (vo)."""
        q, args = "SELECT jti, vo, user, exp FROM credentials WHERE revoked=0", []
        if jtis is not None:
            q += f" AND jti IN ({','.join('?' * len(jtis))})"
            args.extend(jtis)
        if vo is not None:
            q += " AND vo=?"
            args.append(vo)
        if user is not None:
            q += " AND user=?"
            args.append(user)
        now = time.time()
        out = []
        with self._db.tx() as db:
            for jti, cvo, cuser, exp in db.execute(q, args).fetchall():
                cur = db.execute("INSERT INTO revocations (jti, vo, user, exp, at, reason, scope) "
                                 "VALUES (?,?,?,?,?,?,?)", (jti, cvo, cuser, exp, now, reason, scope))
                db.execute("UPDATE credentials SET revoked=1 WHERE jti=?", (jti,))
                out.append(Revocation(int(cur.lastrowid or 0), jti, cvo, cuser, exp, now, reason, scope))
            if scope != "credential" and vo is not None:
                # Nodes release leases on a member's or VO's end even when no credential was live.
                marker, until = f"{scope}:{vo}:{user or ''}", int(now) + 31 * 86400
                cur = db.execute("INSERT INTO revocations (jti, vo, user, exp, at, reason, scope) "
                                 "VALUES (?,?,?,?,?,?,?)", (marker, vo, user or "", until, now, reason, scope))
                out.append(Revocation(int(cur.lastrowid or 0), marker, vo, user or "", until, now, reason, scope))
        return out

    def revocations(self, since: int = 0) -> list[Revocation]:
        # Revocations of credentials that have expired anyway need not travel any more.
        rows = self._db.execute("SELECT * FROM revocations WHERE serial > ? AND exp > ? ORDER BY serial",
                                (since, int(time.time()) - 3600))
        return [Revocation(*r) for r in rows]

    def last_serial(self) -> int:
        """The newest revocation's serial (0 if none)."""
        row = self._db.execute("SELECT MAX(serial) FROM revocations").fetchone()
        return int(row[0] or 0)

    def close(self) -> None:
        self._db.close()

    @staticmethod
    def _member(r: tuple[Any, ...]) -> Member:
        return Member(r[0], r[1], json.loads(r[2]), json.loads(r[3]), r[4])


# In PostgreSQL, "user" is a reserved word: quoted wherever the column is named.
PG_SCHEMA = [[
    "CREATE TABLE vos (name TEXT PRIMARY KEY, owner TEXT NOT NULL, state TEXT NOT NULL, created DOUBLE PRECISION "
    "NOT NULL, expires DOUBLE PRECISION)",
    'CREATE TABLE members (vo TEXT NOT NULL, "user" TEXT NOT NULL, roles TEXT NOT NULL, groups TEXT NOT NULL, '
    'added DOUBLE PRECISION NOT NULL, PRIMARY KEY (vo, "user"))',
    'CREATE TABLE credentials (jti TEXT PRIMARY KEY, vo TEXT NOT NULL, "user" TEXT NOT NULL, iat BIGINT NOT NULL, '
    "exp BIGINT NOT NULL, revoked BOOLEAN NOT NULL DEFAULT FALSE)",
    'CREATE INDEX credentials_by_member ON credentials (vo, "user")',
    'CREATE TABLE revocations (serial BIGSERIAL PRIMARY KEY, jti TEXT NOT NULL, vo TEXT NOT NULL, "user" TEXT NOT '
    "NULL, exp BIGINT NOT NULL, at DOUBLE PRECISION NOT NULL, reason TEXT NOT NULL, scope TEXT NOT NULL)",
]]


class PostgresVOStore:
    """VOStore in a PostgreSQL database (its tables beside other stores' there)."""

    def __init__(self, url: str) -> None:
        from xos.pg import Database as PgDatabase

        self._db = PgDatabase(url, "vo", PG_SCHEMA)

    def add_vo(self, vo: VO) -> None:
        with self._db.tx() as db:
            db.execute("INSERT INTO vos VALUES (%s,%s,%s,%s,%s)", (vo.name, vo.owner, vo.state, vo.created,
                                                                  vo.expires))

    def vo(self, name: str) -> VO | None:
        rows = self._db.rows("SELECT * FROM vos WHERE name=%s", (name,))
        return VO(*rows[0]) if rows else None

    def vos(self) -> list[VO]:
        return [VO(*r) for r in self._db.rows("SELECT * FROM vos ORDER BY name")]

    def set_vo_state(self, name: str, state: str) -> None:
        with self._db.tx() as db:
            db.execute("UPDATE vos SET state=%s WHERE name=%s", (state, name))

    def put_member(self, m: Member) -> None:
        with self._db.tx() as db:
            db.execute('INSERT INTO members VALUES (%s,%s,%s,%s,%s) ON CONFLICT (vo, "user") DO UPDATE SET '
                       "roles=EXCLUDED.roles, groups=EXCLUDED.groups, added=EXCLUDED.added",
                       (m.vo, m.user, json.dumps(m.roles), json.dumps(m.groups), m.added))

    def member(self, vo: str, user: str) -> Member | None:
        rows = self._db.rows('SELECT * FROM members WHERE vo=%s AND "user"=%s', (vo, user))
        return SQLiteVOStore._member(rows[0]) if rows else None

    def members(self, vo: str) -> list[Member]:
        return [SQLiteVOStore._member(r) for r in self._db.rows('SELECT * FROM members WHERE vo=%s ORDER BY "user"',
                                                                (vo,))]

    def remove_member(self, vo: str, user: str) -> bool:
        with self._db.tx() as db:
            return bool(db.execute('DELETE FROM members WHERE vo=%s AND "user"=%s', (vo, user)).rowcount > 0)

    def add_credential(self, jti: str, vo: str, user: str, iat: int, exp: int) -> None:
        with self._db.tx() as db:
            db.execute('INSERT INTO credentials (jti, vo, "user", iat, exp) VALUES (%s,%s,%s,%s,%s)',
                       (jti, vo, user, iat, exp))

    def revoke(self, jtis: list[str] | None, vo: str | None, user: str | None, reason: str,
               scope: str = "credential") -> list[Revocation]:
        """Revoke the named credentials, or every live one of a member (vo and user) or of a VO (vo)."""
        q, args = 'SELECT jti, vo, "user", exp FROM credentials WHERE NOT revoked', list[Any]()
        if jtis is not None:
            q += " AND jti = ANY(%s)"
            args.append(list(jtis))
        if vo is not None:
            q += " AND vo=%s"
            args.append(vo)
        if user is not None:
            q += ' AND "user"=%s'
            args.append(user)
        now = time.time()
        out = []
        insert = ('INSERT INTO revocations (jti, vo, "user", exp, at, reason, scope) VALUES (%s,%s,%s,%s,%s,%s,%s) '
                  "RETURNING serial")
        with self._db.tx() as db:
            # Serials become visible in their order: a follower that read up to N never misses one below N
            # committed later (a sequence alone gives numbers in the order taken, not committed).
            db.execute("LOCK TABLE revocations IN EXCLUSIVE MODE")
            for jti, cvo, cuser, exp in db.execute(q + " FOR UPDATE", args).fetchall():
                serial = db.execute(insert, (jti, cvo, cuser, exp, now, reason, scope)).fetchone()[0]
                db.execute("UPDATE credentials SET revoked=TRUE WHERE jti=%s", (jti,))
                out.append(Revocation(int(serial), jti, cvo, cuser, exp, now, reason, scope))
            if scope != "credential" and vo is not None:
                marker, until = f"{scope}:{vo}:{user or ''}", int(now) + 31 * 86400
                serial = db.execute(insert, (marker, vo, user or "", until, now, reason, scope)).fetchone()[0]
                out.append(Revocation(int(serial), marker, vo, user or "", until, now, reason, scope))
        return out

    def revocations(self, since: int = 0) -> list[Revocation]:
        rows = self._db.rows("SELECT * FROM revocations WHERE serial > %s AND exp > %s ORDER BY serial",
                             (since, int(time.time()) - 3600))
        return [Revocation(*r) for r in rows]

    def last_serial(self) -> int:
        """The newest revocation's serial (0 if none)."""
        return int(self._db.rows("SELECT COALESCE(MAX(serial), 0) FROM revocations")[0][0])

    def close(self) -> None:
        self._db.close()


BACKENDS: dict[str, Callable[[str], VOStore]] = {"sqlite": SQLiteVOStore, "postgresql": PostgresVOStore}


def open_store(url: str) -> VOStore:
    """The VO store `url` names (see xos.stores)."""
    return stores.open_url("VO", BACKENDS, url)
