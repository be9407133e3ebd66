"""The node's identity layer: the mapping, the trust store, revocations pulled from VO services,
and the identity socket, wired into the node daemon."""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import os
import time
from typing import TYPE_CHECKING

from xos.allocation import Allocation
from xos.errors import InvalidInput, NotFound, XosError
from xos.identity import credential
from xos.identity.idmap import IdentityMap, Pool, parse_map
from xos.identity.server import IdentityServer
from xos.node.config import NodeConfig
from xos.paths import idmap_socket, trust_dir
from xos.sqlite import Database
from xos.vo.client import Client
from xos.vo.follow import RevocationFeeds

if TYPE_CHECKING:
    from xos.node.service import NodeService

log = logging.getLogger(__name__)

# The daemon must never resolve a name through its own NSS module (libnss_xos checks this).
NSS_GUARD = "_XOS_NSS_LOOPS"


ROSTER_EVERY = 2.0  # seconds between pulls of each VO's signed member list


class NodeIdentity:
    """Owns everything identity-related of one node daemon."""

    def __init__(self, config: NodeConfig) -> None:
        self.config = config
        self.revoked: set[str] = set()
        self.idmap: IdentityMap | None = None
        self.server: IdentityServer | None = None
        self.node: NodeService | None = None
        self._db: Database | None = None
        self._pullers: list[asyncio.Task[None]] = []
        self._feeds: RevocationFeeds | None = None
        self._ca: str | None = None  # the grid CA's certificate the VO services' are checked against
        self._roster_cue = asyncio.Event()  # set when a VO service says members changed
        self._cache_fds: dict[str, int] = {}

    async def start(self, node: NodeService) -> None:
        """Load pools, map and revocations; listen on the identity socket; follow the VO services."""
        os.environ[NSS_GUARD] = "NO"
        cfg = self.config
        self.node = node
        pools = {}
        for spec in cfg.pools:
            vo, _, rng = spec.partition("=")
            pools[vo] = Pool.parse(vo, rng)
        static: dict[tuple[str, str], str] = {}
        map_path = cfg.static_map or os.path.join(cfg.home, "gridmap")
        if os.path.exists(map_path):
            with open(map_path) as f:
                static = parse_map(f.read(), map_path)
        self.idmap = IdentityMap(os.path.join(cfg.home, "idmap.db"), pools, static,
                                 home_base=os.path.join(cfg.home, "homes"), lease_ttl=cfg.lease_ttl,
                                 quarantine=cfg.quarantine, finish_scrubs=False)
        await self._finish_scrubs()  # a previous run's, and their workspaces, adopted by now
        self._db = Database(os.path.join(cfg.home, "idmap.db"),
                            "CREATE TABLE IF NOT EXISTS revoked (jti TEXT PRIMARY KEY, exp INTEGER NOT NULL);"
                            "CREATE TABLE IF NOT EXISTS serials (url TEXT PRIMARY KEY, serial INTEGER NOT NULL);")
        self.revoked.update(r[0] for r in self._db.execute("SELECT jti FROM revoked WHERE exp > ?",
                                                          (int(time.time()),)))
        serials = dict(self._db.execute("SELECT url, serial FROM serials").fetchall())
        trust = credential.TrustStore(trust_dir(cfg.home))
        self.server = IdentityServer(self.idmap, trust, self.revoked, self._place)
        self.server.on_change = self.write_cache
        self.write_cache()
        await self.server.start(idmap_socket(cfg.run))
        db = self._db

        def saved(url: str, serial: int) -> None:
            db.execute("REPLACE INTO serials VALUES (?,?)", (url, serial))

        self._ca = cfg.ca_file()
        self._feeds = RevocationFeeds(list(cfg.vo_urls), trust, apply=self.apply, serials=serials, saved=saved,
                                      members_changed=lambda url: self._roster_cue.set(), ca=self._ca)
        self._feeds.start()  # and when a VO service says members changed, the rosters are pulled at once
        self._pullers = [asyncio.create_task(self._follow_rosters(url)) for url in cfg.vo_urls]
        self._pullers.append(asyncio.create_task(self._expire_loop()))

    async def stop(self) -> None:
        """Stop following and serving."""
        if self._feeds is not None:
            await self._feeds.stop()
        for t in self._pullers:
            t.cancel()
        for t in self._pullers:
            with contextlib.suppress(asyncio.CancelledError):
                await t
        if self.server is not None:
            await self.server.stop()
        for name, fd in self._cache_fds.items():
            with contextlib.suppress(FileNotFoundError):
                os.unlink(os.path.join(self.config.run, name))
            os.close(fd)
        self._cache_fds.clear()
        if self.idmap is not None:
            self.idmap.close()
        if self._db is not None:
            self._db.close()

    def verify(self, token: str) -> credential.Claims:
        """The claims of a credential this node accepts now (trusted VO, current, not revoked)."""
        if self.server is None:
            raise InvalidInput("this node maps no grid identities")
        return self.server.verify(token, str(credential.unverified(token)[1].get("vo", "")))

    def write_cache(self) -> None:
        """Rewrite the NSS cache files (pam/nss_cache.c) and hold a shared lock on them while we live."""
        assert self.idmap is not None
        passwd = "".join(f"{a.name}:x:{a.uid}:{a.gid}:{a.gecos}:{a.home}:{a.shell}:{int(exp)}\n"
                         for a, exp in self.idmap.leases())
        group = "".join(f"{name}:x:{gid}:{','.join(members)}\n" for name, gid, members in self.idmap.groups())
        for name, text in (("nss.passwd", passwd), ("nss.group", group)):
            path = os.path.join(self.config.run, name)
            tmp = f"{path}.{os.getpid()}.tmp"
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
            os.write(fd, text.encode())
            fcntl.flock(fd, fcntl.LOCK_SH)
            os.rename(tmp, path)
            old = self._cache_fds.pop(name, None)
            self._cache_fds[name] = fd
            if old is not None:
                os.close(old)

    async def _expire_loop(self) -> None:
        """Quarantine expired leases every minute; the cache follows."""
        assert self.idmap is not None
        while True:
            await asyncio.sleep(60)
            uids = self.idmap.expire()
            if uids:
                self.write_cache()
            await self._finish_scrubs()  # also of leases map() found expired

    async def _finish_scrubs(self) -> None:
        """End the workspaces (and so the cgroups) of released UIDs whose files and processes are gone, and
        only then record them scrubbed: no UID goes to a new holder before all of that."""
        assert self.idmap is not None
        pending = self.idmap.pending_scrubs()
        if pending:
            await self._end_workspaces(pending)
            self.idmap.mark_scrubbed(pending)

    async def _place(self, vo: str, pid: int) -> None:
        """Put a login's process into its VO's workspace cgroup, made on first use."""
        assert self.node is not None
        name = f"vo-{vo}"
        ws = self.node.workspaces.get(name)
        if ws is None:
            ws = await self.node.create(name, Allocation())
        for d in ws.cgroup.dirs():
            with open(os.path.join(d, "cgroup.procs"), "w") as f:
                f.write(str(pid))

    async def _end_workspaces(self, uids: set[int]) -> None:
        """Destroy the workspaces of released grid accounts: a UID is reused only once its cgroups are gone."""
        assert self.node is not None
        for ws in list(self.node.workspaces.values()):
            if ws.rec.identity and ws.rec.uid in uids:
                log.info("workspace %s ends with the lease of %s.%s", ws.rec.name, ws.rec.identity["user"],
                         ws.rec.identity["vo"], extra={"workspace": ws.rec.name})
                with contextlib.suppress(XosError):
                    await self.node.destroy(ws.rec.name)

    async def apply(self, revocations: list[dict[str, object]]) -> None:
        """Take revocations in: refuse their credentials, release leases of removed members and VOs."""
        assert self.idmap is not None and self._db is not None
        fresh = set()
        released: set[int] = set()
        for r in revocations:
            scope, vo, user = r.get("scope"), str(r.get("vo")), str(r.get("user") or "")
            key, exp = credential.revocation_key(vo, str(r["jti"])), int(r["exp"])  # type: ignore[call-overload]
            fresh.add(key)
            self._db.execute("INSERT OR IGNORE INTO revoked VALUES (?,?)", (key, exp))
            if scope == "vo":
                self.idmap.drop_member(vo)
                released.update(self.idmap.release(vo))
            elif scope == "member" and user:
                self.idmap.drop_member(vo, user)
                released.update(self.idmap.release(vo, user))
        self.revoked.update(fresh)
        if self.server is not None:
            self.server.forget(fresh)
        self.write_cache()
        if released:
            await self._finish_scrubs()

    async def _follow_rosters(self, url: str) -> None:
        """Pull the signed member list of every VO pooled here from one VO service, every ROSTER_EVERY
        seconds. A list that does not verify, or a service away, leaves the last good list in force (it is
        on disk), and that is said once; a member a new list no longer names is released as a revoked one
        is, so its name stops resolving."""
        assert self.idmap is not None and self.server is not None
        down: set[str] = set()
        while True:
            try:
                async with Client(base_url=url, ca=self._ca) as c:
                    trusted = set(self.server.trust.vos())  # not the cache: an untrusted VO is not asked
                    for vo in sorted(set(self.idmap.pools) & trusted):
                        try:
                            members, issued = credential.verify_roster(await c.roster(vo), self.server.trust, vo)
                        except NotFound:
                            continue  # not a VO of that service
                        except credential.CredentialUnknownVO:
                            continue  # not trusted here (yet): its members are none of ours
                        except credential.CredentialError as e:
                            if vo not in down:
                                log.warning("member list of %s from %s refused, keeping the last one: %s", vo, url,
                                            e, extra={"vo": vo})
                                down.add(vo)
                            continue
                        down.discard(vo)
                        removed = self.idmap.roster(vo) - set(members)
                        if self.idmap.set_roster(vo, members, issued):
                            log.info("members of %s from %s: %d", vo, url, len(members), extra={"vo": vo})
                        released = {u for user in removed for u in self.idmap.release(vo, user)}
                        if released:
                            self.write_cache()
                            await self._finish_scrubs()
            except asyncio.CancelledError:
                raise
            except (XosError, OSError, ValueError) as e:
                if url not in down:
                    log.warning("member lists from %s unavailable, keeping the last ones: %s", url, e)
                    down.add(url)
            else:
                down.discard(url)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._roster_cue.wait(), ROSTER_EVERY)
            self._roster_cue.clear()

