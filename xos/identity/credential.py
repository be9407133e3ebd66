"""VO credentials: Ed25519 keys, EdDSA JWTs, and their verification against a trust directory."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import secrets
import time
from dataclasses import dataclass, field
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from xos.errors import InvalidInput, NotFound, XosError

MAX_TOKEN = 8192
CLOCK_SKEW = 60  # seconds of clock difference tolerated between VO service and node
VO_NAME = re.compile(r"^[a-z][a-z0-9-]{0,30}$")
USER_NAME = re.compile(r"^[a-z_][a-z0-9_-]{0,30}$")
LABEL = re.compile(r"^[a-z_][a-z0-9_.-]{0,62}$")  # a role or group name: nothing a passwd line or a path could misread


class CredentialError(XosError):
    """A credential that must not be accepted; the code says why."""

    code = "credential-invalid"
    http_status = 401


class CredentialMalformed(CredentialError):
    code = "credential-malformed"


class CredentialBadSignature(CredentialError):
    code = "credential-bad-signature"


class CredentialExpired(CredentialError):
    code = "credential-expired"


class CredentialNotYetValid(CredentialError):
    code = "credential-not-yet-valid"


class CredentialRevoked(CredentialError):
    code = "credential-revoked"


class CredentialUnknownVO(CredentialError):
    code = "credential-unknown-vo"


class CredentialWrongVO(CredentialError):
    code = "credential-wrong-vo"


def check_vo_name(name: Any) -> str:
    """A VO name: lower-case letter, then letters, digits or '-', at most 31."""
    if not isinstance(name, str) or not VO_NAME.match(name):
        raise InvalidInput(f"bad VO name {name!r}: use a lower-case letter then up to 30 of a-z, 0-9, '-'",
                           name=str(name))
    return name


def check_user_name(name: Any) -> str:
    """A grid user name, usable in the account name <user>.<vo>."""
    if not isinstance(name, str) or not USER_NAME.match(name):
        raise InvalidInput(f"bad user name {name!r}: use up to 31 of a-z, 0-9, '_', '-', not starting with a "
                           "digit or '-'", name=str(name))
    return name


def key_id(public: Ed25519PublicKey) -> str:
    """A short stable id of a public key, carried as the JWT's `kid`."""
    raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


def new_key(path: str) -> Ed25519PrivateKey:
    """Create an Ed25519 signing key at `path` (0600) and its public half at `path`.pub."""
    key = Ed25519PrivateKey.generate()
    os.makedirs(os.path.dirname(path) or ".", mode=0o700, exist_ok=True)
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(pem)
    with open(path + ".pub", "wb") as f:
        f.write(public_pem(key.public_key()))
    return key


def load_key(path: str) -> Ed25519PrivateKey:
    """The signing key at `path`."""
    try:
        with open(path, "rb") as f:
            key = serialization.load_pem_private_key(f.read(), password=None)
    except FileNotFoundError:
        raise NotFound(f"no signing key at {path}: run 'xos init' first", path=path) from None
    if not isinstance(key, Ed25519PrivateKey):
        raise InvalidInput(f"{path} is not an Ed25519 key")
    return key


def public_pem(public: Ed25519PublicKey) -> bytes:
    """A public key as PEM."""
    return public.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)


def load_public(data: bytes, source: str) -> Ed25519PublicKey:
    """An Ed25519 public key from PEM bytes; InvalidInput naming `source` otherwise."""
    try:
        key = serialization.load_pem_public_key(data)
    except ValueError:
        raise InvalidInput(f"{source} is not a PEM public key") from None
    if not isinstance(key, Ed25519PublicKey):
        raise InvalidInput(f"{source} is not an Ed25519 public key")
    return key


@dataclass(frozen=True)
class Claims:
    """What a verified credential says."""

    sub: str
    vo: str
    roles: tuple[str, ...]
    groups: tuple[str, ...]
    iat: int
    exp: int
    jti: str
    kid: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        """The claims as JSON values."""
        return {"sub": self.sub, "vo": self.vo, "roles": list(self.roles), "groups": list(self.groups),
                "iat": self.iat, "exp": self.exp, "jti": self.jti, "kid": self.kid}


def check_claims(sub: Any, vo: Any, roles: Any, groups: Any) -> None:
    """InvalidInput unless the subject, VO, roles and groups are names this grid can carry everywhere: no ':',
    newline, '/', NUL or leading '-' that a passwd line, a path or a command line could misread."""
    check_user_name(sub)
    check_vo_name(vo)
    for what, names in (("role", roles), ("group", groups)):
        if not isinstance(names, (list, tuple)) or len(names) > 64:
            raise InvalidInput(f"{what}s must be a list of at most 64 names")
        for n in names:
            if not isinstance(n, str) or not LABEL.match(n):
                raise InvalidInput(f"bad {what} name {n!r}: use up to 63 of a-z, 0-9, '_', '-', '.', starting "
                                   "with a letter or '_'", name=str(n))


def issue(key: Ed25519PrivateKey, sub: str, vo: str, roles: list[str], groups: list[str], ttl: int,
          now: float | None = None) -> tuple[str, Claims]:
    """Sign a credential for `sub` in `vo` valid for `ttl` seconds; the token and its claims."""
    check_claims(sub, vo, roles, groups)
    iat = int(now if now is not None else time.time())
    claims = Claims(sub=sub, vo=vo, roles=tuple(roles), groups=tuple(groups), iat=iat, exp=iat + ttl,
                    jti=secrets.token_hex(12), kid=key_id(key.public_key()))
    payload = {k: v for k, v in claims.to_json().items() if k != "kid"}
    payload["nbf"] = iat
    token = jwt.encode(payload, key, algorithm="EdDSA", headers={"kid": claims.kid})
    return token, claims


def _b64json(part: str) -> dict[str, Any]:
    try:
        data = json.loads(base64.urlsafe_b64decode(part + "=" * (-len(part) % 4)))
    except (ValueError, UnicodeDecodeError):
        raise CredentialMalformed("credential is not a JWT: a part is not base64url JSON") from None
    if not isinstance(data, dict):
        raise CredentialMalformed("credential is not a JWT: a part is not a JSON object")
    return data


def unverified(token: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """Header and payload of a token, not verified: only to find which key to check it with."""
    if not isinstance(token, str) or len(token) > MAX_TOKEN:
        raise CredentialMalformed(f"credential is not a JWT of at most {MAX_TOKEN} characters")
    parts = token.strip().split(".")
    if len(parts) != 3:
        raise CredentialMalformed("credential is not a JWT: it needs three dot-separated parts")
    return _b64json(parts[0]), _b64json(parts[1])


@dataclass
class _Trusted:
    at: float  # monotonic time of the read
    key: Ed25519PublicKey | None  # None: not trusted (a read that found no file)
    kid: str


class TrustStore:
    """VO public keys in a directory (<vo>.pub); trusting and untrusting need no restart.

    Keys are cached for `ttl` seconds. A credential naming a key id the cache does not hold (a new
    VO, a rotated key) re-reads that VO's file at once, but at most once per `refresh` seconds, so
    a stream of forged key ids costs no more than that."""

    MAX_CACHED = 1024

    def __init__(self, directory: str, ttl: float = 5.0, refresh: float = 1.0,
                 clock: Any = time.monotonic) -> None:
        self.directory = directory
        self.ttl = ttl
        self.refresh = refresh
        self.clock = clock
        self.reads = 0  # file reads, for the curious (and the tests)
        self._cache: dict[str, _Trusted] = {}

    def trust(self, vo: str, pem: bytes) -> str:
        """Trust `vo`'s key; the key id."""
        check_vo_name(vo)
        key = load_public(pem, "the key file")
        os.makedirs(self.directory, mode=0o755, exist_ok=True)
        tmp = os.path.join(self.directory, f".{vo}.pub.tmp")
        with open(tmp, "wb") as f:
            f.write(public_pem(key))
        os.replace(tmp, os.path.join(self.directory, f"{vo}.pub"))
        self._cache.pop(vo, None)
        return key_id(key)

    def untrust(self, vo: str) -> bool:
        """Stop trusting `vo`; whether it was trusted."""
        try:
            os.unlink(os.path.join(self.directory, f"{check_vo_name(vo)}.pub"))
        except FileNotFoundError:
            return False
        finally:
            self._cache.pop(vo, None)
        return True

    def key(self, vo: str, kid: str | None = None) -> Ed25519PublicKey | None:
        """The trusted key of `vo`, or None; `kid`, the key id a credential names, may refresh it."""
        t = self.lookup(vo, kid)
        return t.key if t else None

    def lookup(self, vo: str, kid: str | None = None) -> _Trusted | None:
        """The cached entry of `vo` (key and key id), read again when stale or when `kid` is news."""
        if not VO_NAME.match(vo):
            return None
        now = self.clock()
        t = self._cache.get(vo)
        if t is not None:
            stale = now - t.at >= self.ttl
            news = kid is not None and kid != t.kid and now - t.at >= self.refresh
            if not stale and not news:
                return t
        if len(self._cache) >= self.MAX_CACHED:
            self._cache.clear()
        self.reads += 1
        path = os.path.join(self.directory, f"{vo}.pub")
        try:
            with open(path, "rb") as f:
                key: Ed25519PublicKey | None = load_public(f.read(), path)
        except FileNotFoundError:
            key = None
        t = _Trusted(now, key, key_id(key) if key is not None else "")
        self._cache[vo] = t
        return t

    def vos(self) -> list[str]:
        """Every trusted VO."""
        try:
            return sorted(n[:-4] for n in os.listdir(self.directory) if n.endswith(".pub") and not n.startswith("."))
        except FileNotFoundError:
            return []


def verify(token: str, trust: TrustStore, revoked: set[str] | frozenset[str] = frozenset(),
           vo: str | None = None, now: float | None = None) -> Claims:
    """The claims of a credential that is well-formed, signed by its VO's trusted key, current and not revoked."""
    header, payload = unverified(token)
    claimed_vo = payload.get("vo")
    if not isinstance(claimed_vo, str):
        raise CredentialMalformed("credential names no VO")
    if vo is not None and claimed_vo != vo:
        raise CredentialWrongVO(f"credential is for VO {claimed_vo!r}, not {vo!r}", vo=claimed_vo)
    key = trust.key(claimed_vo, header.get("kid") if isinstance(header.get("kid"), str) else None)
    if key is None:
        raise CredentialUnknownVO(f"VO {claimed_vo!r} is not trusted here", vo=claimed_vo)
    if header.get("alg") != "EdDSA":
        raise CredentialMalformed(f"credential is signed with {header.get('alg')!r}; only EdDSA is accepted")
    if header.get("kid") not in (None, key_id(key)):
        raise CredentialBadSignature(f"credential was signed by key {header.get('kid')!r}, not VO "
                                     f"{claimed_vo!r}'s key {key_id(key)}", vo=claimed_vo)
    t = time.time() if now is None else now
    try:
        data = jwt.decode(token, key, algorithms=["EdDSA"], leeway=CLOCK_SKEW,
                          options={"require": ["exp", "iat", "sub", "jti"], "verify_exp": False,
                                   "verify_nbf": False, "verify_iat": False})
    except jwt.InvalidSignatureError:
        raise CredentialBadSignature(f"credential signature does not match VO {claimed_vo!r}'s key",
                                     vo=claimed_vo) from None
    except jwt.PyJWTError as e:
        raise CredentialMalformed(f"credential is not valid: {e}") from None
    try:
        claims = Claims(sub=str(data["sub"]), vo=claimed_vo, roles=tuple(map(str, data.get("roles", []))),
                        groups=tuple(map(str, data.get("groups", []))), iat=int(data["iat"]), exp=int(data["exp"]),
                        jti=str(data["jti"]), kid=str(header.get("kid", "")))
    except (TypeError, ValueError):
        raise CredentialMalformed("credential claims have the wrong types") from None
    try:  # what a VO signed is still checked: its names reach passwd lines and paths here
        check_claims(data["sub"], claimed_vo, data.get("roles", []), data.get("groups", []))
    except InvalidInput as e:
        raise CredentialMalformed(f"credential names something this node refuses: {e.message}") from None
    nbf = data.get("nbf", claims.iat)
    start = max(nbf if isinstance(nbf, int) else claims.iat, claims.iat)
    if t + CLOCK_SKEW < start:
        raise CredentialNotYetValid(f"credential is valid only from {time.ctime(start)}", jti=claims.jti)
    if t - CLOCK_SKEW >= claims.exp:
        raise CredentialExpired(f"credential expired at {time.ctime(claims.exp)}", jti=claims.jti)
    if is_revoked(claims.vo, claims.jti, revoked):
        raise CredentialRevoked(f"credential {claims.jti} was revoked", jti=claims.jti)
    return claims


def revocation_key(vo: str, jti: str) -> str:
    """How a revoked credential is kept: by its VO and id, so a VO's feed can only ever revoke its own."""
    return f"{vo}/{jti}"


def is_revoked(vo: str, jti: str, revoked: set[str] | frozenset[str]) -> bool:
    """Whether `revoked` (revocation keys; bare ids a node recorded before they were keyed) holds the credential."""
    return revocation_key(vo, jti) in revoked or jti in revoked


ROSTER_TTL = 3600  # seconds a signed member list is good for; nodes pull it far more often


def sign_roster(key: Ed25519PrivateKey, vo: str, members: list[str], now: float | None = None) -> str:
    """The VO's current members, signed with its key: what a node answers name lookups from before any lease."""
    check_vo_name(vo)
    iat = int(now if now is not None else time.time())
    payload = {"typ": "roster", "vo": vo, "members": sorted(members), "iat": iat, "exp": iat + ROSTER_TTL}
    return jwt.encode(payload, key, algorithm="EdDSA", headers={"kid": key_id(key.public_key())})


def verify_roster(token: str, trust: TrustStore, vo: str, now: float | None = None) -> tuple[list[str], int]:
    """The members and issue time of a roster signed by `vo`'s trusted key; CredentialError otherwise.
    Only `vo`'s own list is ever taken from it, whatever the answering service also hosts."""
    header, payload = unverified(token)
    if payload.get("typ") != "roster" or payload.get("vo") != vo:
        raise CredentialMalformed(f"not a member list of VO {vo!r}")
    key = trust.key(vo, header.get("kid") if isinstance(header.get("kid"), str) else None)
    if key is None:
        raise CredentialUnknownVO(f"VO {vo!r} is not trusted here", vo=vo)
    try:
        data = jwt.decode(token, key, algorithms=["EdDSA"], options={"require": ["exp", "iat"], "verify_exp": False})
    except jwt.PyJWTError as e:
        raise CredentialBadSignature(f"member list of VO {vo!r} is not signed by its key: {e}", vo=vo) from None
    t = time.time() if now is None else now
    if t - CLOCK_SKEW >= int(data["exp"]):
        raise CredentialExpired(f"member list of VO {vo!r} expired at {time.ctime(int(data['exp']))}")
    members = data.get("members")
    if not isinstance(members, list) or len(members) > 100_000:
        raise CredentialMalformed(f"member list of VO {vo!r} is not a list")
    for m in members:
        check_user_name(m)
    return list(members), int(data["iat"])


def sign_feed(key: Ed25519PrivateKey, since: int, revocations: list[dict[str, Any]],
              now: float | None = None) -> str:
    """A VO service's revocations after serial `since`, signed with the key of the VOs it serves."""
    iat = int(now if now is not None else time.time())
    payload = {"typ": "revocations", "since": since, "revocations": revocations, "iat": iat, "exp": iat + 300}
    return jwt.encode(payload, key, algorithm="EdDSA", headers={"kid": key_id(key.public_key())})


def verify_feed(token: Any, trust: TrustStore, since: int) -> tuple[list[dict[str, Any]], list[str], int]:
    """What a signed revocation feed answering `since` holds for this node: the revocations of VOs trusted here
    whose key signed it (a feed never touches another VO's members), why any entry naming a trusted VO was
    left out, and the serial to ask from next (past every sane entry, whichever VO it names).

    CredentialError if no key trusted here signed it: nothing of it is taken, not even its serials."""
    if not isinstance(token, str):
        raise CredentialMalformed("the revocation feed is not signed")
    header, payload = unverified(token)
    if payload.get("typ") != "revocations" or payload.get("since") != since:
        raise CredentialMalformed(f"the revocation feed does not answer serial {since}")
    entries = payload.get("revocations")
    if not isinstance(entries, list) or len(entries) > 100_000:
        raise CredentialMalformed("the revocation feed holds no list")
    if not entries:
        return [], [], since  # nothing to take, nothing to trust it for
    kid = header.get("kid") if isinstance(header.get("kid"), str) else None
    signers = set()
    for name in trust.vos():  # the directory itself: asking the cache of a VO not trusted would poison it
        key = trust.key(name, kid)
        try:
            if key is not None and jwt.decode(token, key, algorithms=["EdDSA"], options={"require": ["exp", "iat"]}):
                signers.add(name)
        except jwt.PyJWTError:
            continue
    if not signers:
        raise CredentialBadSignature("the revocation feed is signed by no VO trusted here")
    trusted = set(trust.vos())
    taken, refused, serial = [], [], since
    for r in entries:
        vo = r.get("vo") if isinstance(r, dict) else None
        got = r.get("serial") if isinstance(r, dict) else None
        if not isinstance(got, int) or not since < got < since + 1_000_000_000:
            refused.append(f"an entry has serial {got!r} after {since}")
            continue
        serial = max(serial, got)
        if vo in signers:
            taken.append(r)
        elif vo in trusted:
            refused.append(f"revocations for VO {vo} are not signed by its trusted key")
    return taken, sorted(set(refused)), serial
