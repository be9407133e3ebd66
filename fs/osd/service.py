"""The object storage device's service: byte ranges of a file's objects in and out over HTTP, a capability
checked on every request (the store is store.py).

A checksum that does not match fails the read, and the client reads another replica. A large read
is made and sent by a worker thread, beside the event loop, or by the native read threads. Writes to
a replicated file arrive at the first replica's OSD (the primary), which forwards them to the others
and answers only when every live one has them.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import ctypes
import ctypes.util
import logging
import os
import socket
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import aiohttp
from aiohttp import web

from xos._native._osd import ffi as _ffi
from xos._native._osd import lib as _osd
from xos.errors import (
    BadRequest,
    CapabilityInvalid,
    StaleCapability,
    Unavailable,
    XosError,
)
from xos.fs.auth import PLAINTEXT_HOST, Authenticator, Identity, host_session
from xos.fs.capability import Capability, Verifier
from xos.fs.layout import FID
from xos.fs.osd.store import HEARTBEAT, MAX_OBJECT, SMALL, ObjectStore
from xos.vo.follow import RevocationFeeds
from xos.wire import hostid
from xos.wire import lean as httpd
from xos.wire import server as wire_server
from xos.wire.client import alternatives
from xos.wire.codec import json_response, read_body
from xos.wire.hostid import HostIdentity
from xos.wire.metrics import Registry
from xos.wire.threaded import Sent, reply_from_thread

log = logging.getLogger(__name__)

OBJECTS_EVERY = 30  # heartbeats between counts of the objects stored
_libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)



def _fid(text: str) -> str:
    if not FID.fullmatch(text):
        raise BadRequest(f"bad file id {text[:70]!r}")
    return text


def _bytes(request: web.Request, name: str, default: int) -> int:
    """A byte count or offset from the query: a whole number within an object; BadRequest otherwise."""
    text = request.query.get(name)
    if text is None:
        return default
    # the length first: int() refuses more than 4,300 digits with a ValueError, which answered 500
    if len(text) > len(str(MAX_OBJECT)) or not text.isascii() or not text.isdigit() or int(text) > MAX_OBJECT:
        raise BadRequest(f"bad {name}={text[:20]!r}: a whole number of bytes up to {MAX_OBJECT}")
    return int(text)


def _objno(request: web.Request) -> int:
    """The object number from the path (the route lets only digits through); BadRequest if absurdly long."""
    text = request.match_info["objno"]
    if len(text) > 18:  # past any file's objects, and int() refuses more than 4,300 digits
        raise BadRequest(f"bad object number {text[:20]!r}...")
    return int(text)


@dataclass
class OsdConfig:
    id: str
    dir: str
    listen: str
    url: str
    mrc: str
    trust: str
    vo_urls: tuple[str, ...] = ()  # VO services whose revocations are followed: their credentials refused
    tls: HostIdentity | None = None  # this host's certificate, for TLS on every link (None: plain, in tests)


class OSD:
    """The OSD's request handlers and its heartbeat to the MRC."""

    def __init__(self, cfg: OsdConfig) -> None:
        self.cfg = cfg
        self.store = ObjectStore(cfg.dir)
        self.auth = Authenticator(cfg.trust, plaintext=cfg.tls is None)
        self.caps = Verifier(cfg.id)
        self.epochs: dict[str, int] = {}  # highest truncate epoch seen per file (persisted: store.fences)
        self.xvers: dict[str, int] = {}  # replica-list version the MRC fenced each file at (persisted too)
        self.writing: dict[str, int] = {}  # writes in progress per file
        self.quiet = asyncio.Condition()  # notified when a file has no write in progress
        self.reads: dict[str, float] = {}  # files read since the last heartbeat
        self.busy = 0
        self.fsyncs = 0  # fsync requests served: the files put on stable storage at a client's asking
        self.synced_writes = 0  # writes put on stable storage before they were answered, at a client's asking
        self.written = 0  # bytes written into objects here
        self.read_bytes = 0  # bytes of objects the service read (the native read threads count apart)
        self.object_count = 0  # objects stored, as last counted
        self.session: aiohttp.ClientSession | None = None

    def _check(self, request: web.Request, fid: str, write: bool) -> tuple[Identity, Capability | None]:
        forwarded = bool(request.headers.get("X-Xos-Forwarded"))
        host = self.auth.host(request.transport, request.headers.get(PLAINTEXT_HOST, ""))
        # Only the MRC (copying replicas) acts on objects without a capability: another OSD holds no more
        # right to this one's objects than a client, and a forwarded write is checked as its client's.
        if host is not None and host.service == "mrc" and not forwarded:
            return host, None
        return self._grant(request.headers.get("Authorization", ""), request.headers.get("X-Xos-Cap", ""), fid,
                           write, forwarded)

    def grant_until(self, authorization: str, cap_token: str, fid: str, write: bool) -> float:
        """Until when (epoch seconds) a user's client sending these headers may read, or write, file `fid`
        (hosts' requests never come this way); XosError if it may not."""
        who, cap = self._grant(authorization, cap_token, fid, write=write, forwarded=False)
        assert cap is not None
        return min(who.exp, cap.exp)

    def _grant(self, authorization: str, cap_token: str, fid: str, write: bool,
               forwarded: bool) -> tuple[Identity, Capability]:
        who = self.auth.authorization(authorization)
        cap = self.caps.check(cap_token)
        if cap.fid != fid:
            raise CapabilityInvalid(f"capability is for file {cap.fid}, not {fid}")
        if cap.client != who.who:
            raise CapabilityInvalid(f"capability was issued to {cap.client}, not {who.who}")
        if not cap.allows(write):
            raise CapabilityInvalid(f"capability allows {cap.mode!r}, not {'writing' if write else 'reading'}")
        if write:
            self._load_fences(fid)
        if write and cap.epoch < self.epochs.get(fid, 0):
            raise StaleCapability(f"file {fid} was truncated since this capability was issued: open it again")
        # A write the primary already took under an older list is passed on whatever the list is now:
        # the MRC waits for those before it copies (see fence).
        if write and cap.xver < self.xvers.get(fid, 0) and not forwarded:
            raise StaleCapability(f"the replicas of file {fid} changed since this capability was issued")
        return who, cap

    def _load_fences(self, fid: str) -> None:
        """What a previous run of this OSD persisted of the file's fencing, once per run."""
        if fid not in self.epochs:
            epoch, xver = self.store.fences(fid)
            self.epochs[fid] = max(epoch, self.epochs.get(fid, 0))
            self.xvers[fid] = max(xver, self.xvers.get(fid, 0))

    def _fence(self, fid: str, epoch: int | None = None, xver: int | None = None) -> None:
        """Raise the file's fencing state, persisted first."""
        self._load_fences(fid)
        new_epoch = max(epoch or 0, self.epochs[fid])
        new_xver = max(xver or 0, self.xvers[fid])
        if (new_epoch, new_xver) != (self.epochs[fid], self.xvers[fid]):
            self.store.set_fences(fid, new_epoch, new_xver)
            self.epochs[fid], self.xvers[fid] = new_epoch, new_xver
            _osd.xo_forget_file(fid.encode())  # the native threads' writes ask again, under the new state

    async def put(self, request: web.Request) -> web.Response:
        fid = _fid(request.match_info["fid"])
        objno = _objno(request)
        who, cap = self._check(request, fid, write=True)
        self.writing[fid] = self.writing.get(fid, 0) + 1  # counted from the check on: a fence waits for it
        self.busy += 1
        try:
            offset = _bytes(request, "off", 0)
            data = await request.read()
            if offset + len(data) > MAX_OBJECT:
                raise BadRequest(f"an object holds at most {MAX_OBJECT} bytes")
            forwards = [u for u in request.headers.get("X-Xos-Forward", "").split(",") if u]
            strangers = sorted(set(forwards) - set(cap.osds)) if cap is not None else []
            if strangers:  # a write goes on only to the file's replicas, as the MRC named them
                raise CapabilityInvalid(f"a write of {fid} is forwarded only to the OSDs of its replicas, which "
                                        f"its capability names; not to {', '.join(strangers)}")
            said = request.headers.get("X-Xos-Sync", "0")  # "1": on disk before the answer (an fsync's writes)
            if said not in ("0", "1"):
                raise BadRequest(f"X-Xos-Sync is 0 or 1, not {said[:20]!r}")
            sync = said == "1"
            sends = [self._forward(u, request, fid, objno, offset, data) for u in forwards]
            results = await asyncio.gather(asyncio.to_thread(self._write, fid, objno, offset, data, sync), *sends,
                                           return_exceptions=True)
        finally:
            self.busy -= 1
            self.writing[fid] -= 1
            if not self.writing[fid]:
                del self.writing[fid]
                async with self.quiet:
                    self.quiet.notify_all()
        if isinstance(results[0], BaseException):
            raise results[0]
        self.synced_writes += sync
        behind = [u for u, r in zip(forwards, results[1:], strict=True) if r is not True]
        if behind:  # stale from now on: the MRC drops them before this write is acknowledged
            await self._report_behind(fid, behind)
        self.written += len(data)
        return json_response({"written": len(data), "behind": behind})

    def _write(self, fid: str, objno: int, offset: int, data: bytes, sync: bool) -> None:
        self.store.write(fid, objno, offset, data)
        if sync:
            self.store.fsync(fid)

    async def _report_behind(self, fid: str, urls: list[str]) -> None:
        """Tell the MRC that the replicas at `urls` missed a write of `fid` this OSD took (it drops them; they
        are rebuilt). A write nobody could mark so is refused: the client tries again."""
        assert self.session is not None
        why = ""
        for mrc in alternatives(self.cfg.mrc):  # the active one of the MRC and its standbys
            try:
                async with self.session.post(f"{mrc}/v1/osds/behind", json={"osd": self.cfg.id, "fid": fid,
                                             "behind": urls}, timeout=aiohttp.ClientTimeout(total=10)) as resp:
                    if resp.status == 200:
                        return
                    why = f"HTTP {resp.status} {await resp.text()}"
            except (TimeoutError, aiohttp.ClientError, OSError) as e:
                why = str(e)
        raise Unavailable(f"replicas {', '.join(urls)} missed a write of {fid} and the MRC could not be told: {why}")

    async def _forward(self, url: str, request: web.Request, fid: str, objno: int, offset: int, data: bytes) -> bool:
        """Send a write on to another replica; whether it has it."""
        assert self.session is not None
        headers = {k: v for k, v in request.headers.items() if k in ("Authorization", "X-Xos-Cap", "X-Xos-Sync")}
        headers["X-Xos-Forwarded"] = "1"
        try:
            async with self.session.put(f"{url}/v1/o/{fid}/{objno}", params={"off": str(offset)}, data=data,
                                        headers=headers, timeout=aiohttp.ClientTimeout(total=10)) as resp:
                if resp.status == 200:
                    return True
                log.warning("replica %s refused a write of %s/%s: HTTP %s", url, fid, objno, resp.status)
        except (TimeoutError, aiohttp.ClientError, OSError) as e:
            log.warning("replica %s unreachable for %s/%s: %s", url, fid, objno, e)
        return False

    async def get(self, request: web.Request) -> web.StreamResponse | Sent:
        fid = _fid(request.match_info["fid"])
        objno = _objno(request)
        self._check(request, fid, write=False)
        offset = _bytes(request, "off", 0)
        length = _bytes(request, "len", MAX_OBJECT)
        resp: web.StreamResponse | Sent
        self.busy += 1
        try:
            if length <= SMALL:  # a page-cache read of a few blocks costs less than the hop to a thread
                data = self.store.read(fid, objno, offset, length)
                self.read_bytes += len(data or b"")
                resp = (web.Response(body=b"", headers={"X-Xos-Hole": "1"}) if data is None
                        else web.Response(body=data, content_type="application/octet-stream"))
            else:
                def answer() -> tuple[bytes | memoryview, list[tuple[str, str]]]:
                    data = self.store.read(fid, objno, offset, length, direct=True, copy=False)
                    if data is None:
                        return b"", [("X-Xos-Hole", "1")]
                    self.read_bytes += len(data)  # one int added under the GIL: no lost update
                    return data, [("Content-Type", "application/octet-stream")]

                resp = await reply_from_thread(request, answer)
        finally:
            self.busy -= 1
        self.reads[fid] = time.time()
        return resp

    async def listing(self, request: web.Request) -> web.Response:
        fid = _fid(request.match_info["fid"])
        self._check(request, fid, write=False)
        out = []
        for n in self.store.objects(fid):
            with contextlib.suppress(FileNotFoundError):
                out.append([n, os.stat(self.store.path(fid, n)).st_size])
        return json_response({"objects": out})

    async def truncate(self, request: web.Request) -> web.Response:
        fid = _fid(request.match_info["fid"])
        _who, cap = self._check(request, fid, write=True)
        body = await read_body(request)
        size, stripe = int(body["size"]), int(body["stripe_size"])
        # The epoch a client's truncate fences others with is the one the MRC signed into its capability,
        # never one it names itself (a huge one would refuse every other writer's capability for good).
        epoch = cap.epoch if cap is not None else int(body["epoch"])
        await asyncio.to_thread(self._fence, fid, epoch)
        await asyncio.to_thread(self.store.truncate, fid, size, stripe)
        return json_response({"size": size})

    async def fence(self, request: web.Request) -> web.Response:
        """The MRC's word that a file's replica list is now `xver`: writes under an older one are refused from
        now on, and the answer waits until those already taken are done everywhere they go."""
        fid = _fid(request.match_info["fid"])
        who = self.auth.request(request, service_ok=True)
        if who.service != "mrc":
            raise CapabilityInvalid("only the MRC fences files")
        body = await read_body(request)
        await asyncio.to_thread(self._fence, fid, None, int(body["xver"]))
        async with self.quiet:
            await self.quiet.wait_for(lambda: fid not in self.writing)
        await asyncio.to_thread(_osd.xo_quiet, fid.encode())  # and for those the native threads took
        return json_response({"xver": self.xvers[fid]})

    async def fsync(self, request: web.Request) -> web.Response:
        fid = _fid(request.match_info["fid"])
        self._check(request, fid, write=True)
        await asyncio.to_thread(self.store.fsync, fid)
        self.fsyncs += 1
        return json_response({})

    async def delete(self, request: web.Request) -> web.Response:
        fid = _fid(request.match_info["fid"])
        who = self.auth.request(request, service_ok=True)
        if who.service != "mrc":
            raise CapabilityInvalid("only the MRC deletes files")
        await asyncio.to_thread(self.store.delete, fid)
        _osd.xo_forget_file(fid.encode())
        self.epochs.pop(fid, None)
        self.xvers.pop(fid, None)
        return json_response({})

    def status(self) -> dict[str, Any]:
        st = os.statvfs(self.cfg.dir)
        return {"id": self.cfg.id, "url": self.cfg.url, "capacity": st.f_blocks * st.f_frsize,
                "free": st.f_bavail * st.f_frsize, "load": float(self.busy + _osd.xo_busy())}

    async def info(self, request: web.Request) -> web.Response:
        return json_response({**self.status(), "native_reads": int(_osd.xo_served()),
                              "native_writes": int(_osd.xo_writes()), "fsyncs": self.fsyncs + int(_osd.xo_fsyncs()),
                              "synced_writes": self.synced_writes + int(_osd.xo_synced()),
                              "read_bytes": self.read_bytes, "native_body_bytes": int(_osd.xo_body_bytes()),
                              "http": httpd.stats()})

    async def heartbeat(self) -> None:
        """Tell the MRC this OSD lives, its room and load, and which files were read, every second; its
        answer gives the key this OSD checks capabilities' seals with (on a link whose other end shows the
        MRC's certificate)."""
        tls = None if self.cfg.tls is None else self.cfg.tls.client_context()
        # The MRC and its standbys (xos.leader): the beat goes to the active one; one that does not answer as
        # such has the next beat go to the next.
        links = [hostid.HostLink(f"{url}/", tls, ("mrc",),
                                 None if self.cfg.tls is not None else {PLAINTEXT_HOST: f"osd {self.cfg.id}"})
                 for url in alternatives(self.cfg.mrc)]
        at = beats = 0
        try:
            while True:
                self.reads.update(dict.fromkeys(native_reads(), time.time()))
                reads, self.reads = self.reads, {}
                link = links[at]
                try:
                    status, answer = await link.call("POST", "/v1/osds/heartbeat", {**self.status(), "reads": reads})
                    if status != 200:
                        self.reads.update(reads)
                        if len(links) == 1 or not _not_active(answer):
                            log.warning("MRC refused the heartbeat: HTTP %s %s", status, answer)
                        at = (at + 1) % len(links)
                    else:
                        self._rekey(answer)
                except (TimeoutError, OSError, ValueError, XosError) as e:
                    self.reads.update(reads)
                    if len(links) == 1:
                        log.info("MRC %s not reachable: %s", self.cfg.mrc, e)
                    at = (at + 1) % len(links)
                beats += 1
                if beats % OBJECTS_EVERY == 1:
                    self.object_count = await asyncio.to_thread(self.store.count)
                await asyncio.sleep(HEARTBEAT)
        finally:
            for link in links:
                link.close()

    def _rekey(self, answer: Any) -> None:
        """Take the capability key the MRC's heartbeat answer gives."""
        try:
            key = base64.b64decode(answer["key"], validate=True)
        except (KeyError, TypeError, ValueError) as e:
            log.warning("the MRC's heartbeat answer gives no key this OSD can take: %s", e)
            return
        if self.caps.rekey(key):
            _osd.xo_forget()  # grants the native threads hold were checked under another key

    def metrics(self) -> Registry:
        """This OSD's metrics: requests, bytes in and out, objects, room."""
        reg = Registry("osd")
        osd = {"osd": self.cfg.id}
        reg.gauge("written_bytes_total", "Bytes written into objects here (forwarded copies included).",
                  lambda: [(osd, self.written + int(_osd.xo_written()))], "counter")
        reg.gauge("read_bytes_total", "Bytes of objects read here by the service (the native reads aside).",
                  lambda: [(osd, self.read_bytes)], "counter")
        reg.gauge("native_reads_total", "Object reads answered by the native read threads.",
                  lambda: [(osd, int(_osd.xo_served()))], "counter")
        reg.gauge("fsyncs_total", "Files synced to stable storage on request.",
                  lambda: [(osd, self.fsyncs + int(_osd.xo_fsyncs()))],
                  "counter")
        reg.gauge("objects", "Objects stored here (counted every 30 s).", lambda: [(osd, self.object_count)])
        reg.gauge("capacity_bytes", "Size of the file system the objects live on.",
                  lambda: [(osd, self.status()["capacity"])])
        reg.gauge("free_bytes", "Room left there.", lambda: [(osd, self.status()["free"])])
        return reg


def make_app(osd: OSD) -> httpd.App:
    app = httpd.App(client_max_size=MAX_OBJECT + (1 << 20), metrics=osd.metrics())
    app.router.add_put("/v1/o/{fid}/{objno:[0-9]+}", osd.put)
    app.router.add_get("/v1/o/{fid}/{objno:[0-9]+}", osd.get)
    app.router.add_get("/v1/o/{fid}", osd.listing)
    app.router.add_post("/v1/o/{fid}/truncate", osd.truncate)
    app.router.add_post("/v1/o/{fid}/fsync", osd.fsync)
    app.router.add_post("/v1/o/{fid}/fence", osd.fence)
    app.router.add_delete("/v1/o/{fid}", osd.delete)
    app.router.add_get("/v1/status", osd.info)
    return app


async def serve_osd(cfg: OsdConfig) -> None:
    """Run an OSD until SIGTERM or SIGINT: object reads on native threads, the rest on the event loop."""
    osd = OSD(cfg)
    app = make_app(osd)
    osd.session = host_session(cfg.tls, "osd", cfg.id)
    log.info("OSD %s serving %s on %s", cfg.id, cfg.dir, cfg.listen)

    async def revoked(taken: list[dict[str, Any]]) -> None:
        _osd.xo_forget()  # the native readers' grants: the next read of each asks again

    feeds = RevocationFeeds(list(cfg.vo_urls), osd.auth.trust, apply=revoked,
                            ca=os.path.join(cfg.tls.directory, "ca.pem") if cfg.tls else None)
    osd.auth.revoked = feeds.revoked
    feeds.start()
    try:
        await wire_server.serve_tcp(app, cfg.listen, osd.heartbeat(), accept=lambda sock: NativeReads(osd, app, sock))
    finally:
        await feeds.stop()
        await osd.session.close()


# Object reads on native threads (native/fs/osdread.c)

_native: NativeReads | None = None


class NativeReads:
    """The OSD's listening socket served by native threads: object GETs answered there, every other request
    (and every GET they give up on: a refusal, a missing file, a corrupt block) by `app` on the event loop."""

    def __init__(self, osd: OSD, app: httpd.App, sock: socket.socket) -> None:
        self.osd, self.app, self.sock = osd, app, sock
        self.loop = asyncio.get_running_loop()
        self.tls: ssl.SSLContext | None = None  # for connections the loop takes before their TLS began
        self._stop_crl: Callable[[], None] = lambda: None

    def __enter__(self) -> NativeReads:
        global _native
        if _native is not None:
            raise XosError("an OSD's native reads are already running in this process")
        tls = self.osd.cfg.tls
        if tls is not None:  # the native threads end every connection's TLS, and relay to the loop what is its
            err = _osd.xo_tls(*(os.path.join(tls.directory, f).encode() for f in ("host.pem", "host.key", "ca.pem")))
            if err:
                raise XosError(f"cannot load this host's certificate, key or CA from {tls.directory}: "
                               f"{os.strerror(-err)}")
            self._stop_crl = hostid.on_crl(tls.directory, _crl)
        err = _osd.xo_start(self.sock.fileno(), self.osd.store.root.encode(), int(self.osd.store.direct))
        if err:
            raise XosError(f"cannot start the native read threads: {os.strerror(-err)}")
        _native = self
        return self

    def __exit__(self, *exc: object) -> None:
        global _native
        _osd.xo_stop()
        _native = None
        self._stop_crl()

    def adopt(self, fd: int, prefix: bytes, peer: str) -> None:
        """Take a connection the native threads gave up (or relay, its TLS ended there), in the loop."""
        try:
            sock = socket.socket(fileno=fd)
        except OSError:
            os.close(fd)
            return
        if peer == NOT_BEGUN:  # past what the native threads hold: the loop does its TLS
            tls = self.osd.cfg.tls
            assert tls is not None
            if self.tls is None:
                self.tls = tls.server_context(users=True)
            task = asyncio.ensure_future(httpd.adopt(self.app, sock, b"", tls=self.tls))
        else:
            task = asyncio.ensure_future(httpd.adopt(self.app, sock, prefix, _peercert(peer)))
        task.add_done_callback(_adopted)


def _adopted(task: asyncio.Future[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error("adopting a connection failed: %s", task.exception())


def _not_active(answer: Any) -> bool:
    """Whether a refusal is a standby's (not the active MRC): said by its code."""
    return isinstance(answer, dict) and (answer.get("error") or {}).get("code") == "not-active"


def native_reads() -> list[str]:
    """The files the native threads read since the last call."""
    out: list[str] = []
    buf = _ffi.new("char[]", 1 << 16)
    while True:
        n = _osd.xo_reads(buf, len(buf))
        raw = _ffi.unpack(buf, len(buf))
        out.extend(x.decode() for x in raw.split(b"\0")[:n])
        if n == 0 or len(out) > 100000:
            return out


@_ffi.def_extern(error=1)  # type: ignore[misc]
def xo_check(auth: Any, cap: Any, fid: Any, write: int, until: Any) -> int:
    """Whether a native thread may answer reads, or writes, of `fid` for these headers, and until when."""
    reads = _native
    if reads is None:
        return 1
    try:
        until[0] = reads.osd.grant_until(_ffi.string(auth).decode("latin-1"), _ffi.string(cap).decode("latin-1"),
                                         _ffi.string(fid).decode(), bool(write))
    except Exception:  # the event loop's handler answers it, with the reason
        return 1
    return 0


NOT_BEGUN = "\x01"  # osdread.c's peer for a TLS connection nothing was read of


def _crl(path: str) -> None:
    """The native threads' handshakes check the grid CA's newest revocation list."""
    if _osd.xo_tls_crl(path.encode()):
        log.error("the native threads could not load the revocation list %s", path)


def _peercert(peer: str) -> dict[str, Any] | None:
    """The certificate the native threads verified ("NAME\nROLE,ROLE\nSERIAL"), as ssl's getpeercert() gives
    one."""
    if not peer:
        return None
    name, roles, serial = (peer.split("\n") + ["", ""])[:3]
    return {"subject": ((("commonName", name),),), "serialNumber": serial,
            "subjectAltName": tuple(("URI", hostid.ROLE_URI + r) for r in roles.split(",") if r)}


@_ffi.def_extern()  # type: ignore[misc]
def xo_adopt(fd: int, buf: Any, n: int, peer: Any) -> None:
    """A native thread gives its connection to the event loop, with the bytes it has read of it and the host
    certificate its TLS peer showed."""
    prefix = bytes(_ffi.buffer(buf, n))
    who = _ffi.string(peer).decode("utf-8", "replace")
    reads = _native
    try:
        if reads is None:
            raise RuntimeError("stopped")
        reads.loop.call_soon_threadsafe(reads.adopt, fd, prefix, who)
    except RuntimeError:  # the loop is closed: the OSD is stopping
        os.close(fd)
