"""Capabilities: what the MRC lets one client do to one file, sealed for the OSDs that hold it.

A capability is its fields (the file id, the access mode, the expiry, the truncate epoch, the replica-list
version and the client's grid identity) with HMAC-SHA256 seals: one under the MRC's own key, and one per OSD
holding the file under that OSD's key, which the MRC derives from its own and hands each OSD (over TLS, to
the host whose certificate names it) in the answer to its heartbeat. An OSD can check only the seal made
for it, and forge capabilities for nothing but itself. XtreemFS signed fewer fields with MD5 under one key
all its OSDs shared, and named neither the client nor the replica list.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from collections.abc import Iterable
from dataclasses import dataclass

from xos.errors import BadConfig, CapabilityInvalid, StaleCapability, Unavailable

TTL = 600.0  # seconds a capability is good for; clients renew by opening again
MAX_TOKEN = 4096


@dataclass(frozen=True)
class Capability:
    """The signed fields."""

    fid: str
    mode: str  # "r" or "rw"
    exp: float
    epoch: int  # truncate epoch: writes under an older one are refused
    xver: int  # replica-list version
    client: str  # grid identity, "user@vo"
    osds: tuple[str, ...] = ()  # the URLs of the OSDs holding the file's replicas: where writes may be forwarded

    def allows(self, write: bool) -> bool:
        """Whether the mode covers a read, or a write."""
        return "w" in self.mode if write else "r" in self.mode


def load_secret(path: str) -> bytes:
    """The MRC's key in `path` (at least 16 bytes); BadConfig otherwise."""
    try:
        with open(path, "rb") as f:
            secret = f.read().strip()
    except OSError as e:
        raise BadConfig(f"cannot read the file-system key {path}: {e.strerror}") from None
    if len(secret) < 16:
        raise BadConfig(f"the file-system key in {path} is shorter than 16 bytes")
    return secret


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def osd_key(master: bytes, osd: str) -> bytes:
    """The key OSD `osd` checks its seals with, derived from the MRC's: each OSD is given its own only."""
    return hmac.new(master, b"xos-osd-key:" + osd.encode(), hashlib.sha256).digest()


def _mac(key: bytes, body: str) -> bytes:
    return hmac.new(key, body.encode(), hashlib.sha256).digest()


def sign(master: bytes, cap: Capability, osds: Iterable[str] = ()) -> str:
    """The token for `cap`: its fields as JSON, the MRC's seal and one seal per OSD in `osds` (the OSDs
    holding the file), base64url: BODY.SEAL.OSD:SEAL,OSD:SEAL."""
    # the fields by hand: dataclasses.asdict deep-copies, half the cost of signing
    fields = {"client": cap.client, "epoch": cap.epoch, "exp": cap.exp, "fid": cap.fid, "mode": cap.mode,
              "xver": cap.xver, "osds": list(cap.osds)}
    body = _b64(json.dumps(fields, separators=(",", ":")).encode())
    seals = ",".join(f"{o}:{_b64(_mac(osd_key(master, o), body))}" for o in sorted(set(osds)))
    return f"{body}.{_b64(_mac(master, body))}.{seals}"


def _parts(token: str) -> tuple[str, bytes, str]:
    if not isinstance(token, str) or len(token) > MAX_TOKEN or token.count(".") != 2:
        raise CapabilityInvalid("malformed capability")
    body, mac, seals = token.split(".")
    try:
        return body, _unb64(mac), seals
    except ValueError:
        raise CapabilityInvalid("malformed capability") from None


def _fields(body: str, now: float | None) -> Capability:
    try:
        fields = json.loads(_unb64(body))
        osds = fields.get("osds", [])
        if not isinstance(osds, list) or not all(isinstance(o, str) for o in osds):
            raise TypeError("osds")
        cap = Capability(fid=str(fields["fid"]), mode=str(fields["mode"]), exp=float(fields["exp"]),
                         epoch=int(fields["epoch"]), xver=int(fields["xver"]), client=str(fields["client"]),
                         osds=tuple(osds))
    except (ValueError, KeyError, TypeError):
        raise CapabilityInvalid("malformed capability") from None
    if (time.time() if now is None else now) >= cap.exp:
        raise CapabilityInvalid(f"capability for file {cap.fid} expired at {time.ctime(cap.exp)}")
    return cap


def verify(master: bytes, token: str, now: float | None = None) -> Capability:
    """The capability a token carries, if the MRC (whose key is `master`) sealed it and it has not expired."""
    body, given, _ = _parts(token)
    if not hmac.compare_digest(given, _mac(master, body)):
        raise CapabilityInvalid("capability signature does not match: not issued by this file system's MRC")
    return _fields(body, now)


def verify_seal(osd: str, key: bytes, token: str, now: float | None = None) -> Capability:
    """The capability a token carries, as OSD `osd` (its key `key`) checks it: by the seal made for it.
    StaleCapability if it has none (issued before this OSD held the file: the client renews it)."""
    body, _, seals = _parts(token)
    for seal in seals.split(","):
        name, _, mac = seal.partition(":")
        if name != osd:
            continue
        try:
            given = _unb64(mac)
        except ValueError:
            raise CapabilityInvalid("malformed capability") from None
        if not hmac.compare_digest(given, _mac(key, body)):
            raise CapabilityInvalid("capability signature does not match: not issued by this file system's MRC")
        return _fields(body, now)
    raise StaleCapability(f"this capability names no seal for OSD {osd}: it was issued before this OSD held the "
                          "file; open it again")


class Verifier:
    """An OSD's check of capabilities by its own seal, cached by token, so each MAC is checked once, not per
    request. The key comes from the MRC (`key`, None until its first heartbeat answer)."""

    MAX_CACHED = 65536

    def __init__(self, osd: str) -> None:
        self.osd = osd
        self.key: bytes | None = None
        self._cache: dict[str, Capability] = {}

    def rekey(self, key: bytes) -> bool:
        """Take the key the MRC gave; whether it changed (what was checked under the old one is forgotten)."""
        if key == self.key:
            return False
        self.key = key
        self._cache.clear()
        return True

    def check(self, token: str) -> Capability:
        """The capability of `token` (cached while it is valid)."""
        cap = self._cache.get(token)
        if cap is not None:
            if time.time() < cap.exp:
                return cap
            del self._cache[token]
        if self.key is None:
            raise Unavailable(f"OSD {self.osd} has not heard from its MRC yet: try again in a moment")
        cap = verify_seal(self.osd, self.key, token)
        if len(self._cache) >= self.MAX_CACHED:
            self._cache.clear()
        self._cache[token] = cap
        return cap
