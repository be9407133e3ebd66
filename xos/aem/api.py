"""The job manager's HTTP API: its users' routes (TLS, a VO credential each) and the route nodes push their
ads to (TLS, node certificates); `serve_aem` runs both beside the loops of service.Aem."""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import time
from typing import Any

from aiohttp import web

from xos import leader, stores
from xos.aem import stdio
from xos.aem.classad import NodeAd, Wants
from xos.aem.jobs import Job, State
from xos.aem.jobspec import grid_path, load, parse
from xos.aem.service import Ad, Aem, AemConfig, NoMatch, wants_of, ws_name
from xos.errors import Conflict, InvalidInput, NotFound, PermissionDenied
from xos.identity import credential
from xos.vo.follow import RevocationFeeds
from xos.wire import codec, hostid, metrics
from xos.wire import server as wire_server

log = logging.getLogger(__name__)

AEM: web.AppKey[Aem] = web.AppKey("aem", Aem)


def who(aem: Aem, request: web.Request) -> credential.Claims:
    """The verified, unrevoked credential a request carries."""
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    if scheme != "Bearer" or not token:
        raise credential.CredentialError("this request needs a VO credential (Authorization: Bearer ...)")
    return credential.verify(token.strip(), aem.trust, aem.revoked)


def mine(aem: Aem, request: web.Request, job_id: str) -> tuple[credential.Claims, Job]:
    """The caller and a job that is theirs (or in the VO they administer); NotFound for anyone else's."""
    claims = who(aem, request)
    job = aem.store.get(job_id)
    if job.owner != f"{claims.sub}@{claims.vo}" and not (claims.vo == job.vo and "admin" in claims.roles):
        raise NotFound(f"no job {job_id!r}")  # another user's jobs are not even listed
    return claims, job


async def submit(request: web.Request) -> web.Response:
    """Queue a job description (JSON or YAML) as the caller; refused at once if no node could ever run it."""
    aem = request.app[AEM]
    claims = who(aem, request)
    raw = await request.content.read(1 << 20)
    spec = parse(load(raw), aem.matchmaker)
    for stream in ("stdin", "stdout", "stderr"):
        if grid_path(getattr(spec, stream)) and not aem.cfg.mrc:
            raise InvalidInput(f"{stream}: this job manager has no grid file system (xos serve aem --mrc URL)",
                               field=stream)
    if spec.volumes and not aem.cfg.mrc:
        raise InvalidInput("volumes: this job manager has no grid file system (xos serve aem --mrc URL)",
                           field="volumes")
    if request.query.get("wait") != "1":
        wants = wants_of(spec, claims.vo, f"{claims.sub}@{claims.vo}")
        ads = aem.fresh_ads()
        if not aem.matchmaker.matches(wants, ads):
            raise NoMatch(f"no node can run this job: {aem.matchmaker.why_not(wants, ads)} "
                          "(submit with ?wait=1 to queue it anyway)")
    token = request.headers["Authorization"].partition(" ")[2].strip()
    jobs = aem.store.submit(spec, f"{claims.sub}@{claims.vo}", claims.vo, token)
    aem.wake.set()
    return codec.json_response({"jobs": [j.to_json() for j in jobs]}, status=201)


async def list_jobs(request: web.Request) -> web.Response:
    """The caller's jobs, of one `state` if asked."""
    aem = request.app[AEM]
    claims = who(aem, request)
    state = request.query.get("state")
    try:
        st = State(state) if state else None
    except ValueError:
        raise InvalidInput(f"no state {state!r} (use {', '.join(s.value for s in State)})") from None
    jobs = aem.store.ls(st, owner=f"{claims.sub}@{claims.vo}")
    return codec.json_response({"jobs": [j.to_json() for j in jobs]})


async def get_job(request: web.Request) -> web.Response:
    """One of the caller's jobs with its history and its last checkpoint."""
    aem = request.app[AEM]
    _, job = mine(aem, request, request.match_info["id"])
    extra: dict[str, Any] = {}
    with contextlib.suppress(FileNotFoundError):
        st = os.stat(aem.image_path(job.id))
        extra["checkpoint"] = {"at": st.st_mtime, "bytes": st.st_size}
    return codec.json_response({**job.to_json(), **extra, "history": aem.store.history(job.id)})


async def output(request: web.Request) -> web.Response:
    """A job's stdout or stderr (`stream`), from `offset` on: from its node while it runs (to follow it),
    from here once it ended."""
    aem = request.app[AEM]
    _, job = mine(aem, request, request.match_info["id"])
    stream = request.query.get("stream", "stdout")
    offset = request.query.get("offset", "0")
    # 18 digits at most: a longer offset overflowed seek() (or int()) and answered 500
    if stream not in ("stdout", "stderr") or not offset.isdigit() or len(offset) > 18:
        raise InvalidInput("stream is stdout or stderr, offset a byte count")
    where = job.spec.get(stream) or ""
    if where.startswith("/"):
        raise NotFound(f"job {job.id} writes its {stream} to {where} on its node")
    if stream == "stderr" and not where:
        raise NotFound(f"job {job.id} writes its stderr with its stdout")
    if job.state in (State.RUNNING, State.SUSPENDED, State.CHECKPOINTING) and job.node:
        name = stdio.name_on_node(stream, where)
        try:
            data = await aem.nodes.read_file(job.node, job.id, name, offset)
        except NotFound:
            data = b""  # nothing written yet
        return web.Response(body=data, content_type="application/octet-stream",
                            headers={"X-Job-State": job.state.value})
    if not job.state.final:  # not started yet, or between nodes: nothing new for now
        return web.Response(body=b"", content_type="application/octet-stream",
                            headers={"X-Job-State": job.state.value})
    try:
        with open(aem.output_path(job.id, stream), "rb") as f:
            f.seek(int(offset))
            return web.Response(body=f.read(), content_type="application/octet-stream",
                                headers={"X-Job-State": job.state.value})
    except FileNotFoundError:
        raise NotFound(f"job {job.id} has no {stream} yet ({job.state.value})") from None


async def control(request: web.Request) -> web.Response:
    """hold, release, suspend, resume, cancel, checkpoint or migrate one of the caller's jobs."""
    aem = request.app[AEM]
    _, job = mine(aem, request, request.match_info["id"])
    verb = request.match_info["verb"]
    node_verb = {"suspend": "freeze", "resume": "thaw"}.get(verb)
    if verb == "checkpoint":
        return codec.json_response((await aem.checkpoint(job)).to_json())
    if verb == "migrate":
        return codec.json_response((await aem.migrate(job, request.query.get("to"),
                                                     live=request.query.get("live") == "1")).to_json())
    job = aem.store.may(job.id, verb)
    # The workspace first, then the record: a node that fails leaves the job as it really is.
    if verb == "cancel" and job.state in (State.MATCHED, State.RUNNING, State.SUSPENDED):
        try:
            aem.account(job, await aem.nodes.workspace(job.node, job.id))
            await aem.nodes.call("DELETE", job.node, f"/v1/peer/workspaces/{ws_name(job.id)}")
        except NotFound:
            pass
    elif node_verb:
        await aem.nodes.call("POST", job.node, f"/v1/peer/workspaces/{ws_name(job.id)}/{node_verb}")
    job = aem.store.control(job.id, verb)
    if job.state.final:
        aem.drop_image(job.id)
    aem.wake.set()
    return codec.json_response(job.to_json())


async def purge(request: web.Request) -> web.Response:
    """Forget a finished job and its output; its usage records stay, for the accounts."""
    aem = request.app[AEM]
    _, job = mine(aem, request, request.match_info["id"])
    aem.store.purge(job.id)
    for stream in ("stdout", "stderr"):
        with contextlib.suppress(FileNotFoundError):
            os.unlink(aem.output_path(job.id, stream))
    aem.drop_image(job.id)
    return codec.json_response({"purged": job.id})


async def accounting(request: web.Request) -> web.Response:
    """Usage records and their totals per VO, user and node: a member's own, a VO admin's whole VO."""
    aem = request.app[AEM]
    claims = who(aem, request)
    vo = request.query.get("vo") or claims.vo
    user = request.query.get("user")
    admin = "admin" in claims.roles and vo == claims.vo
    if not admin and (vo != claims.vo or (user not in (None, claims.sub))):
        raise PermissionDenied(f"only an admin of VO {vo} sees other members' usage")
    owner = f"{user}@{vo}" if user else (None if admin else f"{claims.sub}@{claims.vo}")
    try:
        since = float(request.query.get("since", "0"))
    except ValueError:
        raise InvalidInput("since is seconds since the epoch") from None
    records = aem.store.usage(vo, owner, since)
    return codec.json_response({"records": records, "totals": aem.store.totals(records)})


async def take_ad(request: web.Request) -> web.Response:
    """A node pushes its own ad (its certificate names it, role node): it lives for ad_ttl; a changed one
    matches at once."""
    aem = request.app[AEM]
    name = request.match_info["name"]
    try:
        peer = hostid.require(request.transport, "node")
        if peer.name != name:
            raise PermissionDenied(f"host {peer.name} may push its own ad only, not {name}'s")
    except PermissionDenied as e:
        log.warning("refused an ad from %s: %s", request.remote, e.message)
        raise
    body = await codec.read_body(request)
    url, attrs = codec.field(body, "url", str), codec.field(body, "ad", dict)
    if not url or not url.startswith(("http://", "https://")) or attrs is None:
        raise InvalidInput("an ad push needs the node's peer url and its ad")
    if name in aem.cfg.nodes and aem.cfg.nodes[name] != url:
        raise Conflict(f"node {name} is configured at {aem.cfg.nodes[name]}, not {url}")
    ad = NodeAd.checked(name, attrs)
    if aem.nodes.urls.get(name) != url:
        aem.store.remember_node(name, url)
        aem.nodes.urls[name] = url
        log.info("node %s advertises itself at %s", name, url)
    old = aem.ads.get(name)
    aem.ads[name] = Ad(ad, url, time.monotonic() + aem.cfg.ad_ttl)
    if old is None or old.node.attrs != ad.attrs:
        aem.wake.set()
    return codec.json_response({"ttl": aem.cfg.ad_ttl})


async def nodes(request: web.Request) -> web.Response:
    """Node ads, all of them, or those matching `constraint` best `rank` first (XenoSearch's role; a
    range on one attribute, `Memory >= 4096 && Memory < 16384`, is the Information Service's)."""
    aem = request.app[AEM]
    claims = who(aem, request)
    now = time.monotonic()
    constraint, rank = request.query.get("constraint"), request.query.get("rank")
    if constraint is None and rank is None:
        return codec.json_response({"nodes": [{"name": n, "url": a.url, "fresh": a.expires > now,
                                             "ad": a.node.attrs} for n, a in sorted(aem.ads.items())]})
    wants = Wants(constraint or "true", rank or "0", (("VO", claims.vo),))
    found = aem.matchmaker.matches(wants, aem.fresh_ads(), symmetric=False)
    return codec.json_response({"nodes": [{"name": m.node, "url": aem.ads[m.node].url, "fresh": True,
                                         "rank": m.rank, "ad": aem.ads[m.node].node.attrs} for m in found]})


def make_app(aem: Aem) -> web.Application:
    """The users' routes."""
    app = web.Application(middlewares=[codec.error_middleware], client_max_size=2 << 20)
    app[AEM] = aem
    app[metrics.METRICS] = aem.requests
    app.add_routes([
        web.get("/metrics", metrics.handler(aem.requests)),
        web.post("/v1/jobs", submit),
        web.get("/v1/jobs", list_jobs),
        web.get("/v1/jobs/{id}", get_job),
        web.delete("/v1/jobs/{id}", purge),
        web.get("/v1/jobs/{id}/output", output),
        web.post("/v1/jobs/{id}/{verb}", control),
        web.get("/v1/nodes", nodes),
        web.get("/v1/accounting", accounting),
    ])
    return app


def make_peer_app(aem: Aem) -> web.Application:
    """The routes other hosts use (over TLS): nodes pushing their ads."""
    app = web.Application(middlewares=[codec.error_middleware], client_max_size=2 << 20)
    app[AEM] = aem
    app[metrics.METRICS] = aem.requests
    app.add_routes([web.put("/v1/peer/ads/{name}", take_ad)])
    return app


async def serve_aem(cfg: AemConfig) -> None:
    """Run the job manager until SIGTERM or SIGINT. On PostgreSQL, only while it is the active one: it stands
    by (listening nowhere) while another job manager on that database is, and stops if it loses that."""
    lead = await leader.stand_by(cfg.db, "aem", f"{socket.gethostname()} {cfg.listen}",
                                 stores.sqlite_file(cfg.db or os.path.join(cfg.home, "aem", "jobs.db")))
    aem = Aem(cfg)
    if lead is not None:
        aem.store.db.fence("aem", lead.epoch, lead.deposed)  # type: ignore[attr-defined]
        aem.nodes.epoch = lead.epoch
    log.info("job manager serving on %s with %d node(s)", cfg.listen, len(cfg.nodes))
    feeds = RevocationFeeds(list(cfg.vo_urls), aem.trust, ca=os.path.join(aem.host.directory, "ca.pem"))
    aem.revoked = feeds.revoked
    feeds.start()
    try:
        peers = (make_peer_app(aem), cfg.peer_listen, aem.host.server_context()) if cfg.peer_listen else None
        await wire_server.serve_tcp(make_app(aem), cfg.listen, leader.while_active(aem.run_loops(), lead), peers,
                                    aem.host.server_context(users=True))
    finally:
        await feeds.stop()
        await aem.nodes.close()
        aem.store.close()
        if lead is not None:
            lead.release()

