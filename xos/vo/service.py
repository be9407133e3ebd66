"""The VO service (`xos serve vo`): VOs, members, roles, credential issuing and revocation.

Management goes over the root-only Unix socket; the revocation list and the VO keys are also
served over TCP to nodes, with a long poll so a revocation reaches them within seconds.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import ssl
import time
from dataclasses import asdict
from typing import Any

from aiohttp import web

from xos.errors import Conflict, InvalidInput, NotFound
from xos.identity import credential
from xos.paths import vo_socket
from xos.vo.store import VO, Member, VOStore, open_store
from xos.wire import codec, hostid, metrics
from xos.wire import server as wire_server
from xos.wire.metrics import Registry

log = logging.getLogger(__name__)

DEFAULT_TTL = 12 * 3600
MAX_TTL = 30 * 24 * 3600
LONG_POLL = 30.0


class VONotFound(NotFound):
    code = "vo-not-found"


class VOExists(Conflict):
    code = "vo-exists"


class VODissolved(Conflict):
    code = "vo-dissolved"


class NotAMember(NotFound):
    code = "not-a-member"


def parse_ttl(text: Any) -> int:
    """Seconds from "12h", "30m", "7d", "90s" or a number of seconds, between 1 minute and 30 days."""
    mult = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    try:
        s = str(text).strip().lower()
        value = int(float(s[:-1]) * mult[s[-1]]) if s and s[-1] in mult else int(s)
    except (ValueError, IndexError):
        raise InvalidInput(f"cannot read duration {text!r}: use e.g. 90s, 30m, 12h or 7d", field="ttl") from None
    if not 60 <= value <= MAX_TTL:
        raise InvalidInput(f"duration {text!r} is out of range (1m to 30d)", field="ttl")
    return value


def _names(values: Any, what: str) -> list[str]:
    if values is None:
        return []
    if not isinstance(values, list) or not all(isinstance(v, str) and credential.USER_NAME.match(v) for v in values):
        raise InvalidInput(f"{what} must be a list of names (a-z, 0-9, '_', '-')", field=what)
    return sorted(set(values))


class VOService:
    """Everything the VO service does, independent of HTTP."""

    def __init__(self, home: str, host_dir: str | None = None, db: str | None = None) -> None:
        self.home = home
        self.host_dir = host_dir  # this host's identity: the grid CA whose revocation lists it hands out
        self.key_path = os.path.join(home, "vo", "signing.key")
        self.key = credential.load_key(self.key_path)
        self.kid = credential.key_id(self.key.public_key())
        self.store: VOStore = open_store(db or os.path.join(home, "vo.db"))
        self._changed = asyncio.Condition()
        self.closing = False
        self.members_changed = 0  # bumped at every change of any VO's members: a followers' cue to pull rosters
        self.requests = Registry("vo")
        self.requests.gauge("vos", "VOs by state.", self._vo_counts)
        self.requests.gauge("members", "Members of active VOs.",
                            lambda: [({}, float(sum(len(self.store.members(v.name)) for v in self.store.vos()
                                                    if v.state == "active")))])
        self.requests.gauge("revocations_total", "Credentials revoked (the feed's newest serial).",
                            lambda: [({}, float(self.store.last_serial()))], "counter")

    def _vo_counts(self) -> list[tuple[dict[str, str], float]]:
        states: dict[str, int] = {}
        for v in self.store.vos():
            states[v.state] = states.get(v.state, 0) + 1
        return [({"state": st}, float(n)) for st, n in sorted(states.items())]

    def _vo(self, name: str, active: bool = True) -> VO:
        vo = self.store.vo(credential.check_vo_name(name))
        if vo is None:
            raise VONotFound(f"no VO named {name!r}", vo=name)
        if active and vo.state != "active":
            raise VODissolved(f"VO {name!r} is dissolved", vo=name)
        if active and vo.expires is not None and vo.expires < time.time():
            raise VODissolved(f"VO {name!r} expired at {time.ctime(vo.expires)}", vo=name)
        return vo

    def create(self, name: str, owner: str, ttl: Any = None) -> VO:
        """Form a VO; its owner becomes its first member, with the role 'owner'."""
        credential.check_vo_name(name)
        credential.check_user_name(owner)
        if self.store.vo(name) is not None:
            raise VOExists(f"VO {name!r} exists already", vo=name)
        now = time.time()
        vo = VO(name, owner, "active", now, now + parse_ttl(ttl) if ttl is not None else None)
        self.store.add_vo(vo)
        self.store.put_member(Member(name, owner, ["owner"], [name], now))
        log.info("VO %s formed by %s", name, owner, extra={"vo": name})
        return vo

    def add(self, vo: str, user: str, roles: Any = None, groups: Any = None) -> Member:
        """Add a member, or change the roles and groups of one (credentials issued later carry them)."""
        self._vo(vo)
        credential.check_user_name(user)
        old = self.store.member(vo, user)
        m = Member(vo, user, _names(roles, "roles"), sorted({vo, *_names(groups, "groups")}),
                   old.added if old else time.time())
        self.store.put_member(m)
        return m

    async def remove(self, vo: str, user: str) -> list[dict[str, Any]]:
        """Remove a member and revoke every credential they hold."""
        self._vo(vo)
        if not self.store.remove_member(vo, user):
            raise NotAMember(f"{user!r} is not a member of VO {vo!r}", vo=vo, user=user)
        await self.members_moved()
        return await self._revoke(None, vo, user, f"removed from VO {vo}", "member")

    async def members_moved(self) -> None:
        """Wake the nodes following us: a VO's members changed, and their rosters are to be pulled now."""
        self.members_changed += 1
        async with self._changed:
            self._changed.notify_all()

    def issue(self, vo: str, user: str, ttl: Any = None) -> dict[str, Any]:
        """Sign a credential for a member."""
        v = self._vo(vo)
        m = self.store.member(vo, user)
        if m is None:
            raise NotAMember(f"{user!r} is not a member of VO {vo!r}", vo=vo, user=user)
        seconds = parse_ttl(ttl) if ttl is not None else DEFAULT_TTL
        if v.expires is not None:
            seconds = min(seconds, int(v.expires - time.time()))
        token, claims = credential.issue(self.key, user, vo, m.roles, m.groups, seconds)
        self.store.add_credential(claims.jti, vo, user, claims.iat, claims.exp)
        log.info("credential %s issued to %s in %s", claims.jti, user, vo, extra={"vo": vo, "jti": claims.jti})
        return {"token": token, "claims": claims.to_json()}

    async def revoke(self, jti: str | None = None, vo: str | None = None,
                     user: str | None = None) -> list[dict[str, Any]]:
        """Revoke one credential by id, or every credential of a member."""
        if jti is not None:
            if not isinstance(jti, str) or not jti.isalnum() or len(jti) > 64:
                raise InvalidInput("jti must be a credential id", field="jti")
            done = await self._revoke([jti], None, None, "revoked by id")
            if not done:
                raise NotFound(f"no live credential {jti!r}", jti=jti)
            return done
        if vo is None or user is None:
            raise InvalidInput("name a credential id, or a VO and a user")
        self._vo(vo, active=False)
        return await self._revoke(None, vo, user, f"member {user} revoked", "member")

    async def dissolve(self, vo: str) -> list[dict[str, Any]]:
        """End a VO: every credential revoked, no new ones, nodes told through the revocation list."""
        self._vo(vo)
        self.store.set_vo_state(vo, "dissolved")
        log.info("VO %s dissolved", vo, extra={"vo": vo})
        return await self._revoke(None, vo, None, f"VO {vo} dissolved", "vo")

    async def _revoke(self, jtis: list[str] | None, vo: str | None, user: str | None,
                      reason: str, scope: str = "credential") -> list[dict[str, Any]]:
        done = self.store.revoke(jtis, vo, user, reason, scope)
        if done:
            async with self._changed:
                self._changed.notify_all()
        return [r.to_json() for r in done]

    def ls(self) -> list[dict[str, Any]]:
        """Every VO with its members."""
        return [{**asdict(v), "members": [asdict(m) for m in self.store.members(v.name)]} for v in self.store.vos()]

    async def revocations(self, since: int, wait: float, crl: int | None = None) -> dict[str, Any]:
        """Revocations after serial `since`; with `wait`, hold the request until there are some, or a host
        revocation list other than number `crl` (long poll)."""
        moved = self.members_changed

        def news() -> bool:
            return (self.closing or self.store.last_serial() > since or self.members_changed != moved
                    or (crl is not None and hostid.crl_number(self.host_dir) != crl))

        if wait > 0 and not news():
            async with self._changed:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._changed.wait_for(news), wait)
        revs = [r.to_json() for r in self.store.revocations(since)]
        return {"serial": max([since, *[int(r["serial"]) for r in revs]]), "revocations": revs,
                "members_changed": self.members_changed, "crl": hostid.crl_number(self.host_dir),
                "signed": credential.sign_feed(self.key, since, revs)}

    async def publish_crl(self, pem: str) -> int:
        """Hand out the grid CA's revocation list of host certificates if the CA signed it and it is newer than
        the one handed out (anyone may bring it: it proves itself); its number. Followers take it at once."""
        if self.host_dir is None:
            raise InvalidInput("this VO service has no host identity (it serves no --listen): no host follows it")
        if len(pem) > hostid.MAX_CRL:
            raise InvalidInput("that revocation list is too large", field="crl")
        if not hostid.take_crl(self.host_dir, pem.encode()):
            raise Conflict(f"the revocation list handed out is number {hostid.crl_number(self.host_dir)}: that "
                           "one is no newer")
        async with self._changed:
            self._changed.notify_all()
        return hostid.crl_number(self.host_dir)

    def crl(self) -> str:
        """The grid CA's newest revocation list of host certificates, as handed out."""
        if self.host_dir is None or hostid.crl_number(self.host_dir) == 0:
            raise NotFound("no revocation list of host certificates was published here")
        with open(os.path.join(self.host_dir, hostid.CRL)) as f:
            return f.read(hostid.MAX_CRL)

    def roster(self, vo: str) -> str:
        """The VO's current members, signed (nodes resolve their names before any lease)."""
        self._vo(vo)
        return credential.sign_roster(self.key, vo, [m.user for m in self.store.members(vo)])

    def public_key(self, vo: str) -> str:
        """The PEM public key that signs `vo`'s credentials."""
        self._vo(vo, active=False)
        return credential.public_pem(self.key.public_key()).decode()


SERVICE: web.AppKey[VOService] = web.AppKey("vo", VOService)


def _svc(request: web.Request) -> VOService:
    return request.app[SERVICE]


async def _create(request: web.Request) -> web.Response:
    b = await codec.read_body(request)
    vo = _svc(request).create(codec.field(b, "name", str), codec.field(b, "owner", str, "root"), b.get("ttl"))
    return codec.json_response(asdict(vo), status=201)


async def _ls(request: web.Request) -> web.Response:
    return codec.json_response(_svc(request).ls())


async def _add(request: web.Request) -> web.Response:
    b = await codec.read_body(request)
    m = _svc(request).add(request.match_info["vo"], codec.field(b, "user", str), b.get("roles"), b.get("groups"))
    await _svc(request).members_moved()
    return codec.json_response(asdict(m), status=201)


async def _remove(request: web.Request) -> web.Response:
    revoked = await _svc(request).remove(request.match_info["vo"], request.match_info["user"])
    return codec.json_response({"revoked": revoked})


async def _issue(request: web.Request) -> web.Response:
    b = await codec.read_body(request)
    return codec.json_response(_svc(request).issue(request.match_info["vo"], request.match_info["user"], b.get("ttl")),
                             status=201)


async def _revoke(request: web.Request) -> web.Response:
    b = await codec.read_body(request)
    revoked = await _svc(request).revoke(b.get("jti"), b.get("vo"), b.get("user"))
    return codec.json_response({"revoked": revoked})


async def _dissolve(request: web.Request) -> web.Response:
    return codec.json_response({"revoked": await _svc(request).dissolve(request.match_info["vo"])})


async def _revocations(request: web.Request) -> web.Response:
    try:
        since = int(request.query.get("since", "0"))
        wait = min(float(request.query.get("wait", "0")), LONG_POLL)
        crl = int(request.query["crl"]) if "crl" in request.query else None
    except ValueError:
        raise InvalidInput("since, wait and crl must be numbers") from None
    return codec.json_response(await _svc(request).revocations(since, wait, crl))


async def _publish_crl(request: web.Request) -> web.Response:
    b = await codec.read_body(request)
    return codec.json_response({"crl": await _svc(request).publish_crl(codec.field(b, "crl", str))}, status=201)


async def _crl(request: web.Request) -> web.Response:
    return web.Response(text=_svc(request).crl(), content_type="application/pkix-crl")


async def _roster(request: web.Request) -> web.Response:
    return web.Response(text=_svc(request).roster(request.match_info["vo"]), content_type="application/jwt")


async def _key(request: web.Request) -> web.Response:
    return web.Response(text=_svc(request).public_key(request.match_info["vo"]), content_type="application/x-pem-file")


def public_routes() -> list[web.RouteDef]:
    """What nodes may ask anyone: the revocation lists and the VO keys."""
    return [web.get("/v1/revocations", _revocations), web.get("/v1/vos/{vo}/key", _key), web.get("/v1/crl", _crl),
            web.get("/v1/vos/{vo}/roster", _roster)]


def make_app(svc: VOService, management: bool) -> web.Application:
    """The management app (Unix socket) or the public one (TCP)."""
    app = web.Application(middlewares=[codec.error_middleware], client_max_size=codec.MAX_BODY)
    app[SERVICE] = svc
    app[metrics.METRICS] = svc.requests
    app.add_routes(public_routes())
    app.add_routes([web.get("/metrics", metrics.handler(svc.requests))])
    if management:
        app.add_routes([
            web.get("/v1/vos", _ls), web.post("/v1/vos", _create), web.post("/v1/vos/{vo}/members", _add),
            web.delete("/v1/vos/{vo}/members/{user}", _remove),
            web.post("/v1/vos/{vo}/members/{user}/credentials", _issue),
            web.post("/v1/revocations", _revoke), web.post("/v1/vos/{vo}/dissolve", _dissolve),
            web.post("/v1/crl", _publish_crl),
        ])
    return app


async def serve_vo(home: str, run: str, listen: str | None, tls: ssl.SSLContext | None = None,
                   host_dir: str | None = None, db: str | None = None) -> None:
    """Run the VO service until SIGTERM or SIGINT (on `listen` over TLS with `tls`, if given, the identity in
    `host_dir`; its state in the store `db` names, $XOS_HOME/vo.db by default)."""
    svc = VOService(home, host_dir, db)
    runners = []
    os.makedirs(run, exist_ok=True)
    path = vo_socket(run)
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)
    mgmt = web.AppRunner(make_app(svc, True), access_log=None, handle_signals=False, shutdown_timeout=5)
    await mgmt.setup()
    runners.append(mgmt)
    old = os.umask(0o077)
    try:
        await web.UnixSite(mgmt, path).start()
    finally:
        os.umask(old)
    if listen:
        host, _, port = listen.rpartition(":")
        public = web.AppRunner(make_app(svc, False), access_log=None, handle_signals=False, shutdown_timeout=5)
        await public.setup()
        runners.append(public)
        try:
            await wire_server.start_site(public, host or "0.0.0.0", int(port), tls)
        except (OSError, ValueError) as e:
            raise InvalidInput(f"cannot listen on {listen!r}: {e}") from None
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    log.info("VO service serving on %s%s (key %s)", path, f" and {listen}" if listen else "", svc.kid)
    try:
        await stop.wait()
    finally:
        # Parked long polls answer now, so shutting down does not wait for them to run out.
        svc.closing = True
        async with svc._changed:
            svc._changed.notify_all()
        for r in runners:
            await r.cleanup()
        svc.store.close()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)

