"""Who sent a file-system request: a VO credential (users' clients) or a host certificate with the MRC's or an
OSD's role (the file system's own hosts, over TLS)."""

from __future__ import annotations

import time
from dataclasses import dataclass

import aiohttp
from aiohttp import web

from xos.identity import credential
from xos.identity.credential import CredentialError, TrustStore
from xos.wire import hostid

# Without TLS (a measurement of what TLS costs, in tests only) hosts have no certificate: they name themselves
# here, "ROLE NAME", and are believed. Never honoured on a TLS listener.
PLAINTEXT_HOST = "X-Xos-Host"


@dataclass(frozen=True)
class Identity:
    """A verified grid identity; `service` names the MRC or an OSD instead of a person."""

    user: str
    vo: str
    exp: float
    service: str = ""
    roles: tuple[str, ...] = ()
    jti: str = ""

    @property
    def who(self) -> str:
        return self.service or f"{self.user}@{self.vo}"


class Authenticator:
    """Credentials verified against the trusted VO keys, each token once while it is valid."""

    MAX_CACHED = 4096

    def __init__(self, trust_dir: str, plaintext: bool = False) -> None:
        self.trust = TrustStore(trust_dir)
        self.plaintext = plaintext
        self._cache: dict[str, Identity] = {}
        # credentials the followed VO services revoked (credential.revocation_key; xos.vo.follow fills it)
        self.revoked: set[str] = set()

    def token(self, token: str) -> Identity:
        """The identity a credential proves; CredentialError otherwise."""
        ident = self._cache.get(token)
        if (ident is not None and time.time() < ident.exp
                and not credential.is_revoked(ident.vo, ident.jti, self.revoked)):
            return ident
        claims = credential.verify(token, self.trust, self.revoked)
        ident = Identity(claims.sub, claims.vo, float(claims.exp), roles=claims.roles, jti=claims.jti)
        if len(self._cache) >= self.MAX_CACHED:
            self._cache.clear()
        self._cache[token] = ident
        return ident

    def request(self, request: web.Request, service_ok: bool = False) -> Identity:
        """The identity behind a request: its peer's host certificate, else its Authorization header."""
        claimed = request.headers.get(PLAINTEXT_HOST, "") if self.plaintext else ""
        return self.authorization(request.headers.get("Authorization", ""), service_ok, request.transport, claimed)

    def authorization(self, auth: str, service_ok: bool = False, transport: object = None,
                      claimed: str = "") -> Identity:
        """The identity an Authorization header's value proves, or (`service_ok`) the file-system host at the
        other end of `transport`; CredentialError otherwise."""
        if service_ok:
            host = self.host(transport, claimed)
            if host is not None:
                return host
        scheme, _, value = auth.partition(" ")
        if scheme == "Bearer" and value:
            return self.token(value.strip())
        raise CredentialError("this request needs a VO credential (Authorization: Bearer ...)")

    def host(self, transport: object, claimed: str = "") -> Identity | None:
        """The MRC or OSD at the other end, as its certificate says; None for anyone else."""
        get = getattr(transport, "get_extra_info", None)
        if get is not None and get("peercert"):
            peer = hostid.peer_of(transport)
        elif self.plaintext and claimed:
            role, _, name = claimed.partition(" ")
            peer = hostid.Peer(name, (role,))
        else:
            return None
        if "mrc" in peer.roles:
            return Identity("", "", float("inf"), service="mrc")
        if "osd" in peer.roles:
            return Identity("", "", float("inf"), service=f"osd:{peer.name}")
        return None


def host_session(tls: hostid.HostIdentity | None, role: str, name: str, limit: int = 64) -> aiohttp.ClientSession:
    """An HTTP client session for this file-system host's calls to the others: over TLS with its certificate,
    or (`tls` None, a plaintext measurement) naming itself in a header."""
    if tls is not None:
        return aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=limit, ssl=tls.client_context()))
    return aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=limit),
                                 headers={PLAINTEXT_HOST: f"{role} {name}"})
