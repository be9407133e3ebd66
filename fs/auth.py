"""Who sent a file-system request: a VO credential (clients) or the shared key (MRC and OSDs)."""

from __future__ import annotations

import time
from dataclasses import dataclass

from aiohttp import web

from xos.fs.capability import check_service_token
from xos.identity import credential
from xos.identity.credential import CredentialError, TrustStore


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

    def __init__(self, trust_dir: str, secret: bytes) -> None:
        self.trust = TrustStore(trust_dir)
        self.secret = secret
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
        """The identity behind a request's Authorization header."""
        return self.authorization(request.headers.get("Authorization", ""), service_ok)

    def authorization(self, auth: str, service_ok: bool = False) -> Identity:
        """The identity an Authorization header's value proves; CredentialError otherwise."""
        scheme, _, value = auth.partition(" ")
        if scheme == "Bearer" and value:
            return self.token(value.strip())
        if scheme == "Service" and service_ok:
            who = check_service_token(self.secret, value.strip())
            if who:
                return Identity("", "", float("inf"), service=who)
        raise CredentialError("this request needs a VO credential (Authorization: Bearer ...)")
