"""The metadata and replica catalogue (MRC): volumes, namespace, capabilities, OSD registry, over HTTP."""

from __future__ import annotations

import base64
import collections
import logging
import os
import posixpath
import socket
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from xos import leader, stores
from xos.errors import AccessDenied, BadRequest, CapabilityInvalid, InvalidInput, NotPermitted, Unavailable, XosError
from xos.fs import capability
from xos.fs.auth import Authenticator, Identity, host_session
from xos.fs.capability import Capability
from xos.fs.layout import ALSO, LISTING, Striping, Xloc
from xos.fs.mrc.delegations import Delegations
from xos.fs.mrc.leaseops import LeaseOps
from xos.fs.mrc.leases import TERM, Leases, Recall
from xos.fs.mrc.records import Caller, Inode
from xos.fs.mrc.replicas import ReplicaManager
from xos.fs.mrc.store import open_store
from xos.vo.follow import RevocationFeeds
from xos.wire import lean as httpd
from xos.wire import server as wire_server
from xos.wire.codec import field, json_response, read_body, unb64
from xos.wire.hostid import HostIdentity
from xos.wire.metrics import Registry

log = logging.getLogger(__name__)


@dataclass
class MrcConfig:
    home: str
    listen: str
    secret: bytes
    trust: str
    grace: float = 10.0  # an OSD silent this long is gone: its replicas are rebuilt elsewhere
    cap_ttl: float = capability.TTL  # seconds a capability is good for; clients renew it
    idle: float = 3600.0  # replicas beyond the policy unread this long are dropped
    vo_urls: tuple[str, ...] = ()  # VO services whose revocations are followed: their credentials refused
    tls: HostIdentity | None = None  # this host's certificate, for TLS on every link (None: plain, in tests)
    db: str = ""  # the catalogue's URL (default: SQLite in home)


def _b64(data: bytes | None) -> str | None:
    return None if data is None else base64.b64encode(data).decode()


class MRC(LeaseOps):
    """Request handlers over the catalogue."""

    def __init__(self, cfg: MrcConfig) -> None:
        self.cfg = cfg
        self.cat = open_store(cfg.db or os.path.join(cfg.home, "mrc.db"))
        self.cat.grace = cfg.grace
        self.auth = Authenticator(cfg.trust, plaintext=cfg.tls is None)
        self.replicas = ReplicaManager(self.cat, cfg.secret, cfg.idle)
        self.leases = Leases(os.path.join(cfg.home, "leases.horizon"))
        self.cat.guard = self.leases.check
        self.delegations = Delegations(self.leases)
        self.cat.changing = self.delegations.changing
        self.counts: collections.Counter[str] = collections.Counter()  # file-system operations served, by name
        self.ops: dict[str, Callable[[str, Caller, dict[str, Any]], Awaitable[Any]]] = {
            name[3:]: getattr(self, name) for name in dir(self) if name.startswith("op_")}

    def caller(self, ident: Identity, volume: str, session: str = "") -> Caller:
        rights = self.cat.volume(volume).rights(ident.who, ident.vo)
        if not rights:
            raise AccessDenied(f"{ident.who} is not admitted to volume {volume}: its ACL names neither them nor "
                               f"VO {ident.vo}")
        if len(session) > 64 or not session.isalnum() and session:
            raise InvalidInput("X-Xos-Session must be up to 64 letters and digits", field="X-Xos-Session")
        return Caller(ident.who, ident.vo, rights, ident.roles, session)

    def cap(self, node: Inode, c: Caller, write: bool) -> str:
        """A capability for `node`; one to write names the OSDs of its replicas, the only ones a write to it
        is forwarded to."""
        x = node.layout()
        holders = x.osds() if x is not None else set()
        urls = self.cat.urls() if write and holders else {}
        osds = tuple(sorted(urls[o] for o in holders if urls.get(o))) if write else ()
        return capability.sign(self.cfg.secret, Capability(node.fid, "rw" if write else "r",
                                                           time.time() + self.cfg.cap_ttl, node.epoch, node.xver,
                                                           c.who, osds), holders)

    def xloc(self, node: Inode) -> dict[str, Any] | None:
        x = node.layout()
        if x is None:
            return None
        urls = self.cat.urls()
        return Xloc(x.striping, x.replicas, x.version, {o: urls.get(o, "") for o in x.osds()}).to_json()

    # HTTP handlers

    async def fs(self, request: web.Request) -> web.Response:
        volume = request.match_info["volume"]
        op = self.ops.get(request.match_info["op"])
        if op is None:
            raise BadRequest(f"unknown operation {request.match_info['op']!r}")
        ident = self.auth.request(request)
        body = await read_body(request)
        caller = self.caller(ident, volume, request.headers.get("X-Xos-Session", ""))
        self.counts[request.match_info["op"]] += 1
        await self.leases.grace()
        for _ in range(16):  # each recall ends a lease, and no one else is given one while this waits
            try:
                return json_response(await op(volume, caller, body))
            except Recall as r:
                await r.wait(caller.session)
        raise Unavailable(f"{request.match_info['op']} waited on too many leases and delegations; try again")

    async def create_volume(self, request: web.Request) -> web.Response:
        ident = self.auth.request(request)
        body = await read_body(request)
        vo = field(body, "vo", str, ident.vo)
        if vo != ident.vo:
            raise NotPermitted(f"{ident.who} can only make volumes of their own VO {ident.vo}")
        acl = field(body, "acl", dict, {})
        striping = Striping(field(body, "stripe_size", int, 1 << 20), field(body, "stripe_width", int, 1))
        name = field(body, "name", str)
        if not name or not all(ch.isalnum() or ch in "-_." for ch in name) or len(name) > 64:
            raise InvalidInput(f"bad volume name {name!r}: letters, digits, '-', '_', '.', up to 64", field="name")
        vol = self.cat.create_volume(name, vo, ident.who, acl, striping, field(body, "replicas", int, 1),
                                     field(body, "mode", int, 0o775))
        log.info("volume %s created by %s", name, ident.who)
        return json_response(vol.to_json(), status=201)

    async def list_volumes(self, request: web.Request) -> web.Response:
        self.auth.request(request)
        return json_response({"volumes": [v.to_json() for v in self.cat.volumes()]})

    async def delete_volume(self, request: web.Request) -> web.Response:
        ident = self.auth.request(request)
        vol = self.cat.volume(request.match_info["volume"])
        owner = self.cat.inode(vol.root).owner
        if vol.vo != ident.vo or (ident.who != owner and not {"owner", "admin"} & set(ident.roles)):
            raise NotPermitted(f"only {owner} or an admin of VO {vol.vo} may remove volume {vol.name}")
        self.cat.delete_volume(vol.name)
        self.replicas.wake()
        return json_response({})

    async def heartbeat(self, request: web.Request) -> web.Response:
        ident = self.auth.request(request, service_ok=True)
        body = await read_body(request)
        osd = field(body, "id", str)
        if ident.service != f"osd:{osd}":
            raise NotPermitted("an OSD heartbeats only for itself, with its host certificate")
        self.cat.heartbeat(osd, field(body, "url", str), field(body, "capacity", int, 0), field(body, "free", int, 0),
                           float(field(body, "load", (int, float), 0.0)))
        self.replicas.seen(osd, field(body, "reads", dict, {}))
        # the key it checks capabilities' seals with: its own, to the host whose certificate names it only
        return json_response({"key": _b64(capability.osd_key(self.cfg.secret, osd))})

    async def behind(self, request: web.Request) -> web.Response:
        """A primary OSD's word that replicas missed a write it took: they are dropped (and rebuilt), so no
        read goes to them. Only an OSD holding a replica of the file is heard."""
        ident = self.auth.request(request, service_ok=True)
        body = await read_body(request)
        osd = field(body, "osd", str)
        if ident.service != f"osd:{osd}":
            raise NotPermitted("an OSD reports only for itself, with its host certificate")
        fid, urls = field(body, "fid", str, ""), field(body, "behind", list, [])
        if not fid or not urls or not all(isinstance(u, str) for u in urls):
            raise InvalidInput("a report names a file (fid) and the URLs of the replicas behind", field="behind")
        node = self.cat.by_fid(fid)
        xloc = node.layout()
        if xloc is None or osd not in xloc.osds():
            raise NotPermitted(f"OSD {osd} holds no replica of that file")
        await self.replicas.drop_behind(node, urls)
        return json_response({})

    async def stats(self, request: web.Request) -> web.Response:
        """What this MRC served: file-system operations by name, files made under leases, leases held."""
        self.auth.request(request, service_ok=True)
        return json_response({"ops": dict(self.counts), "leases": self.leases.held(),
                              "delegated": self.delegations.held(), "delegations": self.delegations.granted,
                              "delegation_recalls": self.delegations.recalls,
                              "replica_passes": self.replicas.passes, "replica_walks": self.replicas.walks})

    async def list_osds(self, request: web.Request) -> web.Response:
        self.auth.request(request, service_ok=True)
        return json_response({"osds": self.cat.osds()})

    # file-system operations: (volume, caller, body) -> JSON

    async def op_getattr(self, v: str, c: Caller, b: dict[str, Any]) -> Any:
        return self.cat.getattr(v, field(b, "path", str), c)

    async def op_readdir(self, v: str, c: Caller, b: dict[str, Any]) -> Any:
        """A directory's listing; with `lease`, the caller's mount may go on removing names there by itself."""
        path = field(b, "path", str)
        version, rows = self.cat.readdir(v, path, c)
        out: dict[str, Any] = {"columns": LISTING, "version": version, "rows": rows}
        if field(b, "lease", bool, False):
            out["lease"] = self._lease(self.cat.resolve(v, path, c).ino, c, False)
        return out

    async def op_dirversion(self, v: str, c: Caller, b: dict[str, Any]) -> Any:
        """A directory's listing version; with `also` (up to ALSO paths), theirs too in one answer, each
        null where it cannot be had now (gone, not a readable directory, leased by another session):
        a mount revalidates the listings it used of late with the one it needs."""
        out: dict[str, Any] = {"version": self.cat.dir_version(v, field(b, "path", str), c)}
        also = field(b, "also", list)
        if also is not None:
            if len(also) > ALSO or not all(isinstance(p, str) for p in also):
                raise InvalidInput(f"field 'also' takes up to {ALSO} paths", field="also")
            out["also"] = [self._dir_version_or_none(v, p, c) for p in also]
        return out

    def _dir_version_or_none(self, v: str, path: str, c: Caller) -> int | None:
        try:
            return self.cat.dir_version(v, path, c)
        except (XosError, Recall):  # a lease elsewhere is recalled only for a directory asked for itself
            return None

    async def op_mkdir(self, v: str, c: Caller, b: dict[str, Any]) -> Any:
        """A new directory; with `lease`, the caller's mount may go on making files in it by itself."""
        out = self.cat.mkdir(v, field(b, "path", str), field(b, "mode", int, 0o755), c)
        if field(b, "lease", bool, False):
            out["lease"] = self._lease(out["ino"], c, True)
        return out

    async def op_create(self, v: str, c: Caller, b: dict[str, Any]) -> Any:
        """A new file, open for writing; with `lease`, the caller's mount may go on creating in its
        directory by itself (the answer's `lease`)."""
        dir_version: list[int] = []
        node = self.cat.create(v, field(b, "path", str), field(b, "mode", int, 0o644), c,
                               field(b, "exclusive", bool, True), dir_version)
        out = {**await self._opened(node, c, True), "dir_version": dir_version}
        if field(b, "lease", bool, False):
            parent = self.cat.resolve(v, posixpath.dirname(field(b, "path", str)), c)
            out["lease"] = self._lease(parent.ino, c, field(b, "inos", bool, False))
        return out

    async def op_mknod(self, v: str, c: Caller, b: dict[str, Any]) -> Any:
        return self.cat.mknod(v, field(b, "path", str), field(b, "mode", int, 0), field(b, "rdev", int, 0), c)

    async def op_symlink(self, v: str, c: Caller, b: dict[str, Any]) -> Any:
        return self.cat.symlink(v, field(b, "target", str), field(b, "path", str), c)

    async def op_readlink(self, v: str, c: Caller, b: dict[str, Any]) -> Any:
        return {"target": self.cat.readlink(v, field(b, "path", str), c)}

    async def op_link(self, v: str, c: Caller, b: dict[str, Any]) -> Any:
        return self.cat.link(v, field(b, "old", str), field(b, "new", str), c)

    async def op_unlink(self, v: str, c: Caller, b: dict[str, Any]) -> Any:
        """Remove a name; with `lease`, the caller's mount may go on removing names there by itself."""
        dir_version: list[int] = []
        dirs = self.cat.unlink(v, field(b, "path", str), c, dir_version)
        self.replicas.wake()
        out: dict[str, Any] = {"dirs": dirs, "dir_version": dir_version}
        if field(b, "lease", bool, False):
            parent = self.cat.resolve(v, posixpath.dirname(field(b, "path", str)), c)
            out["lease"] = self._lease(parent.ino, c, False)
        return out

    async def op_rmdir(self, v: str, c: Caller, b: dict[str, Any]) -> Any:
        """Remove an empty directory; with `lease`, the caller's mount may go on removing names in its parent
        by itself."""
        dir_version: list[int] = []
        out: dict[str, Any] = {"dirs": self.cat.rmdir(v, field(b, "path", str), c, dir_version),
                               "dir_version": dir_version}
        if field(b, "lease", bool, False):
            parent = self.cat.resolve(v, posixpath.dirname(field(b, "path", str)), c)
            out["lease"] = self._lease(parent.ino, c, False)
        return out

    async def op_rename(self, v: str, c: Caller, b: dict[str, Any]) -> Any:
        dirs = self.cat.rename(v, field(b, "old", str), field(b, "new", str), c, field(b, "noreplace", bool, False))
        self.replicas.wake()
        return {"dirs": dirs}

    async def op_setattr(self, v: str, c: Caller, b: dict[str, Any]) -> Any:
        num = (int, float)
        node, truncate = self.cat.setattr(
            v, field(b, "path", str), c, mode=field(b, "mode", int), owner=field(b, "owner", str),
            group=field(b, "group", str), atime=field(b, "atime", num), mtime=field(b, "mtime", num),
            size=field(b, "size", int), checked=field(b, "checked", bool, False))
        if truncate:
            await self.replicas.truncate(node)
        return node.attrs()

    async def op_open(self, v: str, c: Caller, b: dict[str, Any]) -> Any:
        """Open a file; with `delegate` (to read), the caller's mount may open it again by itself while the
        answer's `delegated` lasts (fs/mrc/delegations.py)."""
        write = field(b, "write", bool, False)
        trail: list[int] = []
        node = self.cat.open(v, field(b, "path", str), c, write, field(b, "checked", bool, False), trail)
        out = await self._opened(node, c, write)
        if not write and field(b, "delegate", bool, False) and self.delegations.grant(node.ino, trail, c):
            out["delegated"] = {"term": TERM, "instance": self.delegations.instance}
        return out

    async def _opened(self, node: Inode, c: Caller, write: bool) -> dict[str, Any]:
        if write and node.fid in self.replicas.copying:
            await self.replicas.writable(node.fid)
            node = self.cat.inode(node.ino)  # with its new replica list
        return {"attrs": node.attrs(), "fid": node.fid, "inline": _b64(node.inline), "cap": self.cap(node, c, write),
                "xloc": self.xloc(node), "epoch": node.epoch}

    async def op_renew(self, v: str, c: Caller, b: dict[str, Any]) -> Any:
        """A fresh capability (and replica list) for a file the caller has open: by inode, since the file
        may have been renamed or unlinked since it was opened. Permissions are checked again."""
        node = self.cat.inode(field(b, "ino", int))
        if self.cat.volume_of(node.ino).name != v:
            raise InvalidInput("that inode is in another volume", field="ino")
        # Only for a file this caller was given a capability for (expired or not): an inode number alone,
        # guessed or seen, must not reach a file inside a directory the caller may not search.
        held = capability.verify(self.cfg.secret, field(b, "cap", str), now=0.0)
        if held.fid != node.fid or held.client != c.who:
            raise CapabilityInvalid("renew a capability this client holds for this file")
        write = field(b, "write", bool, False)
        self.cat.may_open(node, c, write, field(b, "checked", bool, False))
        return await self._opened(node, c, write)

    def _held(self, b: dict[str, Any], c: Caller) -> tuple[Inode, Capability]:
        """The inode a request's capability names, if the capability is this caller's and writable."""
        cap = capability.verify(self.cfg.secret, field(b, "cap", str))
        node = self.cat.inode(field(b, "ino", int))
        if cap.fid != node.fid or cap.client != c.who or not cap.allows(write=True):
            raise CapabilityInvalid("the capability does not let this client write this file")
        return node, cap

    async def op_place(self, v: str, c: Caller, b: dict[str, Any]) -> Any:
        """Give a file growing past the inline limit its OSDs."""
        node, _ = self._held(b, c)
        self.delegations.changing(node.ino, False, c)
        await self.replicas.writable(node.fid)
        node = self.cat.place(node.ino, self.cat.volume(v).replicas)
        return {"xloc": self.xloc(node), "cap": self.cap(node, c, True), "epoch": node.epoch}

    async def op_commit(self, v: str, c: Caller, b: dict[str, Any]) -> Any:
        """A client's close or fsync: size and mtime, the content of an inline file. (Replicas that missed a
        write are the primary OSD's to report, not the client's.)"""
        node, _ = self._held(b, c)
        self.delegations.changing(node.ino, False, c)
        inline = unb64(b["inline"], "inline") if b.get("inline") is not None else None
        node = self.cat.commit(node.ino, field(b, "size", int, 0), float(field(b, "mtime", (int, float), time.time())),
                               inline, field(b, "spilled", bool, False))
        return node.attrs()

    async def op_statfs(self, v: str, c: Caller, b: dict[str, Any]) -> Any:
        return self.cat.statfs()

    async def op_setxattr(self, v: str, c: Caller, b: dict[str, Any]) -> Any:
        self.cat.setxattr(v, field(b, "path", str), field(b, "name", str), unb64(b.get("value"), "value"), c,
                          field(b, "flags", int, 0))
        return {}

    async def op_getxattr(self, v: str, c: Caller, b: dict[str, Any]) -> Any:
        return {"value": _b64(self.cat.getxattr(v, field(b, "path", str), field(b, "name", str), c))}

    async def op_listxattr(self, v: str, c: Caller, b: dict[str, Any]) -> Any:
        return {"names": self.cat.listxattr(v, field(b, "path", str), c)}

    async def op_removexattr(self, v: str, c: Caller, b: dict[str, Any]) -> Any:
        self.cat.removexattr(v, field(b, "path", str), field(b, "name", str), c)
        return {}

    async def op_stat(self, v: str, c: Caller, b: dict[str, Any]) -> Any:
        """A file's attributes with its replicas, their OSDs and striping (`xos fs stat`)."""
        node = self.cat.resolve(v, field(b, "path", str), c)
        return {"attrs": node.attrs(), "fid": node.fid, "xloc": self.xloc(node), "epoch": node.epoch}

    async def op_seal(self, v: str, c: Caller, b: dict[str, Any]) -> Any:
        """Make a file read-only for good, so replicas can be added to it at any time."""
        return self.cat.seal(v, field(b, "path", str), c).attrs()

    async def op_replicate(self, v: str, c: Caller, b: dict[str, Any]) -> Any:
        if "w" not in c.rights:
            raise AccessDenied(f"{c.who} may only read volume {v}")
        node = self.cat.open(v, field(b, "path", str), c, write=False)
        if not node.readonly:
            raise InvalidInput(f"{b['path']} is still writable: make it read-only first (xos fs readonly PATH); "
                               "files still written keep the replica count of their volume")
        xloc = await self.replicas.add(node, field(b, "osds", list))
        return {"xloc": xloc.to_json()}

    async def op_progress(self, v: str, c: Caller, b: dict[str, Any]) -> Any:
        """How far the copy for a new replica of a file has come: bytes copied and to copy (none: no copy)."""
        node = self.cat.resolve(v, field(b, "path", str), c)
        done, total = self.replicas.progress.get(node.fid, (0, 0))
        return {"copying": node.fid in self.replicas.progress, "done": done, "total": total}

    async def op_unreplicate(self, v: str, c: Caller, b: dict[str, Any]) -> Any:
        if "w" not in c.rights:
            raise AccessDenied(f"{c.who} may only read volume {v}")
        node = self.cat.open(v, field(b, "path", str), c, write=False)
        xloc = await self.replicas.remove(node, field(b, "osd", str))
        return {"xloc": xloc.to_json()}


def metrics(mrc: MRC) -> Registry:
    """The MRC's metrics: requests by operation, what the catalogue holds, leases and OSDs."""
    reg = Registry("mrc")

    def size(key: str) -> Callable[[], list[tuple[dict[str, str], float]]]:
        return lambda: [({}, float(mrc.cat.sizes()[key]))]

    for key, name, what in (("volumes", "volumes", "Volumes."),
                            ("files", "files", "Files, directories and links (inodes)."),
                            ("bytes", "file_bytes", "Bytes of all files, by their sizes."),
                            ("orphans", "orphans", "Objects of deleted files still to be removed from OSDs.")):
        reg.gauge(name, what, size(key))
    reg.gauge("leases", "Directory leases held now.", lambda: [({}, mrc.leases.held())])
    reg.gauge("osds", "OSDs by whether they are alive.",
              lambda: [({"alive": str(alive).lower()}, sum(1 for o in mrc.cat.osds() if o["alive"] is alive))
                       for alive in (True, False)])
    reg.gauge("replica_passes_total", "Passes of the replica manager.", lambda: [({}, mrc.replicas.passes)],
              "counter")
    return reg


def make_app(mrc: MRC) -> httpd.App:
    app = httpd.App(client_max_size=2 << 20, metrics=metrics(mrc))

    def durable(handler: Callable[[web.Request], Awaitable[web.Response]]) -> Any:
        """Answer only once what the handler committed is on disk: the catalogue's group commit (one fdatasync
        for the commits of every request in flight, not one per commit)."""
        async def run(request: web.Request) -> web.Response:
            try:
                return await handler(request)
            finally:
                await mrc.cat.db.durable()
        return run

    app.router.add_post("/v1/volumes", durable(mrc.create_volume))
    app.router.add_get("/v1/volumes", mrc.list_volumes)
    app.router.add_delete("/v1/volumes/{volume}", durable(mrc.delete_volume))
    app.router.add_post("/v1/volumes/{volume}/fs/{op}", durable(mrc.fs))
    app.router.add_post("/v1/osds/heartbeat", mrc.heartbeat)
    app.router.add_post("/v1/osds/behind", durable(mrc.behind))
    app.router.add_get("/v1/osds", mrc.list_osds)
    app.router.add_get("/v1/stats", mrc.stats)
    return app


async def serve_mrc(cfg: MrcConfig) -> None:
    """Run the MRC until SIGTERM or SIGINT. On PostgreSQL, only while it is the active one: it stands by
    (listening nowhere) while another MRC on that database is, and stops if it loses that."""
    lead = await leader.stand_by(cfg.db, "mrc", f"{socket.gethostname()} {cfg.listen}",
                                 stores.sqlite_file(cfg.db or os.path.join(cfg.home, "mrc.db")))
    mrc = MRC(cfg)
    if lead is not None:
        mrc.cat.db.fence("mrc", lead.epoch, lead.deposed)
        # The directory leases the MRC before granted are in no file here: their longest term is waited out.
        mrc.leases.grace_until = max(mrc.leases.grace_until, time.time() + TERM)
    mrc.replicas.session = host_session(cfg.tls, "mrc", cfg.tls.name if cfg.tls else "mrc")
    log.info("MRC serving %s on %s", cfg.home, cfg.listen)
    feeds = RevocationFeeds(list(cfg.vo_urls), mrc.auth.trust,
                            ca=os.path.join(cfg.tls.directory, "ca.pem") if cfg.tls else None)
    mrc.auth.revoked = feeds.revoked
    feeds.start()
    try:
        await wire_server.serve_tcp(make_app(mrc), cfg.listen, leader.while_active(mrc.replicas.run(), lead),
                                    tls=cfg.tls.server_context(users=True) if cfg.tls else None)
    finally:
        await feeds.stop()
        await mrc.replicas.session.close()
        mrc.cat.close()
        if lead is not None:
            lead.release()
