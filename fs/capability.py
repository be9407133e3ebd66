"""Capabilities: what the MRC lets one client do to one file, signed for the OSDs to check.

A capability is HMAC-SHA256, under a key the MRC shares with its OSDs, over every field that
limits it: the file id, the access mode, the expiry, the truncate epoch, the replica-list
version and the client's grid identity. XtreemFS signed fewer fields with MD5 and named
neither the client nor the replica list, so a capability leaked from one client worked for
another and outlived a change of replicas.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from dataclasses import dataclass

from xos.errors import BadConfig, CapabilityInvalid

TTL = 600.0  # seconds a capability is good for; clients renew by opening again
MAX_TOKEN = 2048


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
    """The shared MRC/OSD key in `path` (at least 16 bytes); BadConfig otherwise."""
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


def sign(secret: bytes, cap: Capability) -> str:
    """The token for `cap`: its fields as JSON and the MAC over them, base64url, dot-separated."""
    # the fields by hand: dataclasses.asdict deep-copies, half the cost of signing
    fields = {"client": cap.client, "epoch": cap.epoch, "exp": cap.exp, "fid": cap.fid, "mode": cap.mode,
              "xver": cap.xver, "osds": list(cap.osds)}
    body = _b64(json.dumps(fields, separators=(",", ":")).encode())
    mac = hmac.new(secret, body.encode(), hashlib.sha256).digest()
    return f"{body}.{_b64(mac)}"


def verify(secret: bytes, token: str, now: float | None = None) -> Capability:
    """The capability a token carries, if the MRC signed it and it has not expired."""
    if not isinstance(token, str) or len(token) > MAX_TOKEN or token.count(".") != 1:
        raise CapabilityInvalid("malformed capability")
    body, _, mac = token.partition(".")
    try:
        given = _unb64(mac)
    except ValueError:
        raise CapabilityInvalid("malformed capability") from None
    if not hmac.compare_digest(given, hmac.new(secret, body.encode(), hashlib.sha256).digest()):
        raise CapabilityInvalid("capability signature does not match: not issued by this file system's MRC")
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


class Verifier:
    """Verified capabilities cached by token, so an OSD checks each MAC once, not per request."""

    MAX_CACHED = 65536

    def __init__(self, secret: bytes) -> None:
        self.secret = secret
        self._cache: dict[str, Capability] = {}

    def check(self, token: str) -> Capability:
        """The capability of `token` (cached while it is valid)."""
        cap = self._cache.get(token)
        if cap is not None:
            if time.time() < cap.exp:
                return cap
            del self._cache[token]
        cap = verify(self.secret, token)
        if len(self._cache) >= self.MAX_CACHED:
            self._cache.clear()
        self._cache[token] = cap
        return cap

