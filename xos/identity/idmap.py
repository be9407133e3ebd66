"""Identity mapping on a node: (VO, grid user) to a local account, by static map or dynamic pool.

Account names are `<user>.<vo>`; each VO has a group named after it. Pool leases are persisted
with an expiry, renewed on use, and a released UID is quarantined until nothing of its former
holder is left (processes killed, files removed or re-owned) and a grace period has passed.
"""

from __future__ import annotations

import contextlib
import logging
import os
import pwd
import re
import shutil
import signal
import stat
import time
from dataclasses import dataclass

from xos.errors import Conflict, InvalidInput, NotFound
from xos.identity.credential import USER_NAME, VO_NAME
from xos.kernel import safepath
from xos.sqlite import Database

log = logging.getLogger(__name__)

ACCOUNT = re.compile(r"^(?P<user>[a-z_][a-z0-9_-]{0,30})\.(?P<vo>[a-z][a-z0-9-]{0,30})$")


class MapFileError(InvalidInput):
    code = "bad-map-file"


class PoolFull(Conflict):
    code = "pool-full"


class NoPool(NotFound):
    code = "no-pool"


@dataclass(frozen=True)
class Account:
    """A mapped local account."""

    name: str
    uid: int
    gid: int
    vo: str
    user: str
    home: str
    shell: str = "/bin/sh"
    static: bool = False

    @property
    def gecos(self) -> str:
        """The passwd comment field."""
        return f"{self.user} of VO {self.vo}"


@dataclass(frozen=True)
class Pool:
    """A VO's range of UIDs; its group's GID is the range's first id, leases use the rest."""

    vo: str
    first: int
    last: int

    @classmethod
    def parse(cls, vo: str, text: str) -> Pool:
        """From "20000-20999"."""
        m = re.fullmatch(r"\s*(\d+)\s*-\s*(\d+)\s*", text)
        if not m or not VO_NAME.match(vo):
            raise InvalidInput(f"bad pool {vo} = {text!r}: expected a VO name and FIRST-LAST")
        first, last = int(m.group(1)), int(m.group(2))
        if not 1000 <= first < last < 2**31:
            raise InvalidInput(f"bad pool {vo} = {text!r}: ids must be 1000 <= first < last < 2^31")
        return cls(vo, first, last)


def parse_map(text: str, source: str = "map file") -> dict[tuple[str, str], str]:
    """A static map: lines of `VO USER ACCOUNT`, '#' comments; (vo, user) -> existing local account."""
    out: dict[tuple[str, str], str] = {}
    local = local_accounts()
    for n, raw in enumerate(text.splitlines(), 1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        fields = line.split()
        if len(fields) != 3:
            raise MapFileError(f"{source} line {n}: expected 'VO USER ACCOUNT', got {raw.strip()!r}", line=n)
        vo, user, account = fields
        if not VO_NAME.match(vo) or not USER_NAME.match(user):
            raise MapFileError(f"{source} line {n}: bad VO or user name in {raw.strip()!r}", line=n)
        if account not in local:
            raise MapFileError(f"{source} line {n}: local account {account!r} does not exist", line=n) from None
        if (vo, user) in out:
            raise MapFileError(f"{source} line {n}: {user} of {vo} is mapped twice", line=n)
        out[(vo, user)] = account
    return out


SCHEMA = """
CREATE TABLE IF NOT EXISTS leases (
    vo TEXT NOT NULL, user TEXT NOT NULL, uid INTEGER NOT NULL UNIQUE, expires REAL NOT NULL,
    PRIMARY KEY (vo, user)
);
CREATE TABLE IF NOT EXISTS quarantine (uid INTEGER PRIMARY KEY, vo TEXT NOT NULL, until REAL NOT NULL,
    scrubbed INTEGER NOT NULL DEFAULT 0);
CREATE TABLE IF NOT EXISTS roster (vo TEXT NOT NULL, user TEXT NOT NULL, PRIMARY KEY (vo, user));
CREATE TABLE IF NOT EXISTS roster_at (vo TEXT PRIMARY KEY, iat REAL NOT NULL);
"""
# A quarantined UID is never leased again before its scrub is recorded (scrubbed = 1), whatever `until` says.
ADDED = {"quarantine": {"scrubbed": "INTEGER NOT NULL DEFAULT 1"}}  # rows of older files were scrubbed


class IdentityMap:
    """Leases and lookups; thread-safe, every change committed before it is visible."""

    def __init__(self, db_path: str, pools: dict[str, Pool], static: dict[tuple[str, str], str] | None = None,
                 home_base: str = "/var/lib/xos/workspaces", lease_ttl: float = 7 * 86400,
                 quarantine: float = 3600, scrub_dirs: tuple[str, ...] = ("/tmp", "/var/tmp"),
                 finish_scrubs: bool = True) -> None:
        """`finish_scrubs` False: a scrub is recorded only by `mark_scrubbed`, once the caller (the node daemon)
        has also ended the UIDs' workspaces and cgroups."""
        self._db = Database(db_path, SCHEMA, ADDED)
        self.finish_scrubs = finish_scrubs
        self.pools = pools
        self.static = static or {}
        self.home_base = home_base
        self.lease_ttl = lease_ttl
        self.quarantine_time = quarantine
        self.generation = 0  # bumped whenever the set of leases changes (not on renewal)
        self.scrub_dirs = (*scrub_dirs, home_base)
        for a, b in ((a, b) for a in pools.values() for b in pools.values() if a.vo < b.vo):
            if a.first <= b.last and b.first <= a.last:
                raise InvalidInput(f"pools of {a.vo} and {b.vo} overlap")
        groups = local_groups()
        for pool in pools.values():  # a VO's group must never become a local one (sudo, adm, docker ...)
            if pool.vo in groups or pool.first in groups.values():
                raise InvalidInput(f"VO {pool.vo!r} cannot have a pool here: its group (name {pool.vo}, gid "
                                   f"{pool.first}) would be the local group of that name or id", vo=pool.vo)
        self.scrub_pending()

    def _account(self, vo: str, user: str, uid: int) -> Account:
        pool = self.pools[vo]
        return Account(f"{user}.{vo}", uid, pool.first, vo, user, os.path.join(self.home_base, f"{user}.{vo}"))

    def _static(self, vo: str, user: str) -> Account | None:
        local = self.static.get((vo, user))
        if local is None:
            return None
        pw = local_accounts().get(local)
        if pw is None:
            return None
        return Account(pw.pw_name, pw.pw_uid, pw.pw_gid, vo, user, pw.pw_dir, pw.pw_shell or "/bin/sh", True)

    def map(self, vo: str, user: str, now: float | None = None) -> Account:
        """The account of (vo, user): the static map first, else a pool lease, leased or renewed now."""
        acct = self._static(vo, user)
        if acct is not None:
            return acct
        if vo not in self.pools:
            raise NoPool(f"VO {vo!r} has no UID pool on this node", vo=vo)
        t = time.time() if now is None else now
        pool = self.pools[vo]
        # The common case, a fresh lease, reads without a write: renewing costs a transaction, so it
        # happens only once a tenth of the lease time (at most an hour) has passed.
        slack = min(3600.0, self.lease_ttl / 10)
        row = self._db.execute("SELECT uid, expires FROM leases WHERE vo=? AND user=?", (vo, user)).fetchone()
        if row and row[1] - t > self.lease_ttl - slack:
            return self._account(vo, user, row[0])
        with self._db.tx() as db:
            row = db.execute("SELECT uid, expires FROM leases WHERE vo=? AND user=?", (vo, user)).fetchone()
            if row and row[1] > t:
                db.execute("UPDATE leases SET expires=? WHERE vo=? AND user=?", (t + self.lease_ttl, vo, user))
                return self._account(vo, user, row[0])
            expired = row[0] if row else None
            if row:  # expired: it never resolves again; quarantine it and lease afresh
                db.execute("DELETE FROM leases WHERE vo=? AND user=?", (vo, user))
                db.execute("REPLACE INTO quarantine VALUES (?,?,?,0)", (row[0], vo, t + self.quarantine_time))
            used = {r[0] for r in db.execute("SELECT uid FROM leases WHERE uid BETWEEN ? AND ?",
                                             (pool.first, pool.last))}
            used |= {r[0] for r in db.execute("SELECT uid FROM quarantine WHERE until > ? OR until < 0 "
                                              "OR scrubbed = 0", (t,))}
            uid = next((u for u in range(pool.first + 1, pool.last + 1) if u not in used and not _taken(u)), None)
            if uid is None:
                raise PoolFull(f"the UID pool of VO {vo!r} ({pool.first}-{pool.last}) is full", vo=vo)
            db.execute("DELETE FROM quarantine WHERE uid=?", (uid,))
            db.execute("INSERT INTO leases VALUES (?,?,?,?)", (vo, user, uid, t + self.lease_ttl))
            self.generation += 1
        if expired is not None:
            self.scrub({expired})
        log.info("leased uid %d to %s of %s", uid, user, vo, extra={"vo": vo, "uid": uid})
        return self._account(vo, user, uid)

    def lookup_name(self, name: str, now: float | None = None) -> Account | None:
        """The account called `name` if it is mapped now (never an expired lease)."""
        m = ACCOUNT.match(name)
        if m is None:
            return None
        vo, user = m.group("vo"), m.group("user")
        if (vo, user) in self.static:
            return self._static(vo, user)
        row = self._db.execute("SELECT uid, expires FROM leases WHERE vo=? AND user=?", (vo, user)).fetchone()
        t = time.time() if now is None else now
        return self._account(vo, user, row[0]) if row and row[1] > t else None

    def resolve(self, name: str, now: float | None = None) -> Account | None:
        """The account called `name`: a current lease, or, for a current member of a VO pooled here (its
        signed roster), a lease made now, so the name a program such as sshd resolves is the account its
        session then runs as. Never a name a local account has."""
        acct = self.lookup_name(name, now)
        if acct is not None:
            return acct
        m = ACCOUNT.match(name)
        if m is None or m.group("vo") not in self.pools or not self.is_member(m.group("vo"), m.group("user")):
            return None
        if name in local_accounts():
            return None
        return self.map(m.group("vo"), m.group("user"), now)

    def roster(self, vo: str) -> set[str]:
        """The members the VO's last roster taken here names."""
        return {r[0] for r in self._db.execute("SELECT user FROM roster WHERE vo=?", (vo,))}

    def is_member(self, vo: str, user: str) -> bool:
        """Whether the VO's last roster taken here names `user`."""
        return self._db.execute("SELECT 1 FROM roster WHERE vo=? AND user=?", (vo, user)).fetchone() is not None

    def set_roster(self, vo: str, users: list[str], issued: float) -> bool:
        """Take a VO's signed member list issued at `issued` (an older one than the last is ignored); changed?"""
        with self._db.tx() as db:
            row = db.execute("SELECT iat FROM roster_at WHERE vo=?", (vo,)).fetchone()
            if row is not None and issued < row[0]:
                return False
            have = {r[0] for r in db.execute("SELECT user FROM roster WHERE vo=?", (vo,))}
            db.execute("REPLACE INTO roster_at VALUES (?,?)", (vo, issued))
            if have == set(users):
                return False
            db.execute("DELETE FROM roster WHERE vo=?", (vo,))
            db.executemany("INSERT INTO roster VALUES (?,?)", [(vo, u) for u in set(users)])
        return True

    def drop_member(self, vo: str, user: str | None = None) -> None:
        """A member (or every member) removed: the name stops resolving before the next roster comes."""
        with self._db.tx() as db:
            if user is None:
                db.execute("DELETE FROM roster WHERE vo=?", (vo,))
            else:
                db.execute("DELETE FROM roster WHERE vo=? AND user=?", (vo, user))

    def lookup_uid(self, uid: int, now: float | None = None) -> Account | None:
        """The leased account with `uid`, if its lease is current."""
        row = self._db.execute("SELECT vo, user, expires FROM leases WHERE uid=?", (uid,)).fetchone()
        t = time.time() if now is None else now
        return self._account(row[0], row[1], uid) if row and row[2] > t and row[0] in self.pools else None

    def accounts(self, now: float | None = None) -> list[Account]:
        """Every current lease, in UID order (for enumeration)."""
        return [a for a, _exp in self.leases(now)]

    def leases(self, now: float | None = None) -> list[tuple[Account, float]]:
        """Every current lease with its expiry, in UID order."""
        t = time.time() if now is None else now
        rows = self._db.execute("SELECT vo, user, uid, expires FROM leases WHERE expires > ? ORDER BY uid", (t,))
        return [(self._account(vo, user, uid), exp) for vo, user, uid, exp in rows if vo in self.pools]

    def group(self, name_or_gid: str | int) -> tuple[str, int, list[str]] | None:
        """(name, gid, members) of a VO's group."""
        for pool in self.pools.values():
            if name_or_gid in (pool.vo, pool.first):
                members = [a.name for a in self.accounts() if a.vo == pool.vo]
                return pool.vo, pool.first, members
        return None

    def groups(self) -> list[tuple[str, int, list[str]]]:
        """Every VO group."""
        return [g for g in (self.group(p.vo) for p in sorted(self.pools.values(), key=lambda p: p.first)) if g]

    def release(self, vo: str, user: str | None = None, now: float | None = None) -> list[int]:
        """End leases (of one member, or of a whole VO): processes killed, UIDs quarantined."""
        t = time.time() if now is None else now
        with self._db.tx() as db:
            q, args = "SELECT uid FROM leases WHERE vo=?", [vo]
            if user is not None:
                q, args = q + " AND user=?", [vo, user]
            uids = [r[0] for r in db.execute(q, args)]
            for uid in uids:
                db.execute("DELETE FROM leases WHERE uid=?", (uid,))
                db.execute("REPLACE INTO quarantine VALUES (?,?,?,0)", (uid, vo, t + self.quarantine_time))
            self.generation += bool(uids)
        self.scrub(set(uids))
        if uids:
            log.info("released uid(s) %s of %s", uids, vo, extra={"vo": vo})
        return uids

    def expire(self, now: float | None = None) -> list[int]:
        """Quarantine every expired lease (run periodically)."""
        t = time.time() if now is None else now
        with self._db.tx() as db:
            rows = db.execute("SELECT vo, uid FROM leases WHERE expires <= ?", (t,)).fetchall()
            for vo, uid in rows:
                db.execute("DELETE FROM leases WHERE uid=?", (uid,))
                db.execute("REPLACE INTO quarantine VALUES (?,?,?,0)", (uid, vo, t + self.quarantine_time))
            self.generation += bool(rows)
        self.scrub({uid for _vo, uid in rows})
        return [uid for _vo, uid in rows]

    def scrub(self, uids: set[int]) -> None:
        """What released UIDs leave behind goes before anyone else may get them: processes, keys, files;
        then the scrub is recorded, and only from then may the UIDs be leased again. (Their workspaces,
        and so their cgroups, the node daemon ends; see NodeIdentity.)"""
        if not uids:
            return
        killed = sum(kill_uid(uid) for uid in uids)
        for uid in uids:
            clear_keys(uid)
        removed = sum(remove_owned(uids, d) for d in self.scrub_dirs if os.path.isdir(d))
        if self.finish_scrubs:
            self.mark_scrubbed(uids)
        if killed or removed:
            log.info("uid(s) %s: %d process(es) killed, %d file(s) removed", sorted(uids), killed, removed)

    def mark_scrubbed(self, uids: set[int]) -> None:
        """Record that nothing of the UIDs' former holders is left: from now on they may be leased again."""
        with self._db.tx() as db:
            for uid in uids:
                db.execute("UPDATE quarantine SET scrubbed=1 WHERE uid=?", (uid,))

    def pending_scrubs(self) -> set[int]:
        """Quarantined UIDs whose scrub is not recorded yet."""
        return {r[0] for r in self._db.execute("SELECT uid FROM quarantine WHERE scrubbed = 0")}

    def scrub_pending(self) -> None:
        """Finish the scrubs a previous run began and did not record (it stopped in between)."""
        pending = self.pending_scrubs()
        if pending:
            log.info("finishing the scrub of uid(s) %s", sorted(pending))
            self.scrub(pending)

    def close(self) -> None:
        """Close the database."""
        self._db.close()


def local_accounts(path: str = "/etc/passwd") -> dict[str, pwd.struct_passwd]:
    """The machine's own accounts, read from the file: never through NSS, which may be us."""
    out = {}
    try:
        with open(path) as f:
            for line in f:
                parts = line.rstrip("\n").split(":")
                if len(parts) == 7 and parts[2].isdigit() and parts[3].isdigit():
                    out[parts[0]] = pwd.struct_passwd((parts[0], parts[1], int(parts[2]), int(parts[3]),
                                                       parts[4], parts[5], parts[6]))
    except FileNotFoundError:
        pass
    return out


SKEL = "/etc/skel"


def make_home(acct: Account, skel: str = SKEL) -> bool:
    """Make the account's home if it is missing, as pam_mkhomedir does: 0700, the lease's, filled from
    `skel` as the user (never following a link); whether it was made. Quarantine removes it again."""
    base, name = os.path.split(acct.home)
    os.makedirs(base, mode=0o755, exist_ok=True)
    bfd = os.open(base, os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        try:
            os.mkdir(name, 0o700, dir_fd=bfd)
        except FileExistsError:
            return False
        hfd = safepath.open_beneath(bfd, name, os.O_RDONLY | os.O_DIRECTORY, kinds=safepath.DIR)
        try:
            os.fchown(hfd, acct.uid, acct.gid)
            try:
                sfd = os.open(skel, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
            except OSError:
                return True  # no skeleton: an empty home
            try:
                with safepath.acting_as((acct.uid, acct.gid)):
                    _fill_home(sfd, hfd)
            finally:
                os.close(sfd)
        finally:
            os.close(hfd)
    finally:
        os.close(bfd)
    return True


def _fill_home(sfd: int, dfd: int) -> None:
    """The skeleton's files, directories and links into a new home, created as the user."""
    for entry in os.listdir(sfd):
        st = os.stat(entry, dir_fd=sfd, follow_symlinks=False)
        if stat.S_ISDIR(st.st_mode):
            os.mkdir(entry, stat.S_IMODE(st.st_mode) | 0o700, dir_fd=dfd)
            sub_s = os.open(entry, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=sfd)
            sub_d = safepath.open_beneath(dfd, entry, os.O_RDONLY | os.O_DIRECTORY, kinds=safepath.DIR)
            try:
                _fill_home(sub_s, sub_d)
            finally:
                os.close(sub_s)
                os.close(sub_d)
        elif stat.S_ISREG(st.st_mode):
            src = safepath.open_beneath(sfd, entry)
            try:
                dst = safepath.open_beneath(dfd, entry, os.O_WRONLY | os.O_CREAT | os.O_EXCL,
                                            stat.S_IMODE(st.st_mode))
                with open(dst, "wb") as out, open(src, "rb", closefd=False) as inp:
                    shutil.copyfileobj(inp, out)
            finally:
                os.close(src)
        elif stat.S_ISLNK(st.st_mode):
            os.symlink(os.readlink(entry, dir_fd=sfd), entry, dir_fd=dfd)


def local_groups(path: str = "/etc/group") -> dict[str, int]:
    """The machine's own groups (name -> gid), read from the file, never through NSS."""
    out = {}
    try:
        with open(path) as f:
            for line in f:
                parts = line.rstrip("\n").split(":")
                if len(parts) == 4 and parts[2].isdigit():
                    out[parts[0]] = int(parts[2])
    except FileNotFoundError:
        pass
    return out


def _taken(uid: int) -> bool:
    """Whether a local account already owns `uid` (a pool must never hand out someone's UID)."""
    return any(pw.pw_uid == uid for pw in local_accounts().values())


def remove_owned(uids: set[int], top: str) -> int:
    """Delete every file and directory under `top` owned by one of `uids`, never following a link; how many."""
    return safepath.remove_owned(uids, top)


def clear_keys(uid: int) -> None:
    """Empty the user and user-session keyrings of `uid`: keys linked there outlive its processes."""
    from xos.kernel import spawn as sp

    null = os.open(os.devnull, os.O_RDWR | os.O_CLOEXEC)
    try:
        pid = sp.spawn(sp.SpawnSpec(argv=["sh", "-c", "keyctl clear @u && keyctl clear @us"],
                                    env={"PATH": sp.DEFAULT_PATH}, uid=uid, gid=NOGROUP, groups=[NOGROUP],
                                    stdin=null, stdout=null, stderr=null, new_keyring=True))
    finally:
        os.close(null)
    _, status = os.waitpid(pid, 0)
    if status != 0:
        log.warning("could not clear the keyrings of uid %d (keyctl status %d)", uid, status)


NOGROUP = 65534


def kill_uid(uid: int) -> int:
    """SIGKILL every process running as `uid`; how many there were."""
    n = 0
    for p in filter(str.isdigit, os.listdir("/proc")):
        try:
            st = os.stat(f"/proc/{p}")
        except OSError:
            continue
        if st.st_uid == uid:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(int(p), signal.SIGKILL)
                n += 1
    return n

