"""Python API of the VO service: the verbs of `xos vo`."""

from __future__ import annotations

from typing import Any

from xos.paths import vo_socket
from xos.wire import client as rpc


class Client(rpc.HttpClient):
    """An asyncio client of the VO service's management socket (or a node's view of its public URL)."""

    def __init__(self, socket_path: str | None = None, base_url: str | None = None, timeout: float = 60.0,
                 ca: str | None = None) -> None:
        super().__init__(None if base_url else (socket_path or vo_socket()), base_url, timeout, "VO service", ca=ca)

    async def create(self, name: str, owner: str = "root", ttl: str | None = None) -> dict[str, Any]:
        """Form a VO."""
        return await self._call("POST", "/v1/vos", {"name": name, "owner": owner, "ttl": ttl})

    async def add(self, vo: str, user: str, roles: list[str] | None = None,
                  groups: list[str] | None = None) -> dict[str, Any]:
        """Add a member or change their roles and groups."""
        return await self._call("POST", f"/v1/vos/{vo}/members", {"user": user, "roles": roles, "groups": groups})

    async def remove(self, vo: str, user: str) -> dict[str, Any]:
        """Remove a member; their credentials are revoked."""
        return await self._call("DELETE", f"/v1/vos/{vo}/members/{user}")

    async def issue(self, vo: str, user: str, ttl: str | None = None) -> dict[str, Any]:
        """A signed credential for a member: {"token", "claims"}."""
        return await self._call("POST", f"/v1/vos/{vo}/members/{user}/credentials", {"ttl": ttl})

    async def revoke(self, jti: str | None = None, vo: str | None = None, user: str | None = None) -> dict[str, Any]:
        """Revoke a credential by id, or all of a member's."""
        return await self._call("POST", "/v1/revocations", {"jti": jti, "vo": vo, "user": user})

    async def dissolve(self, vo: str) -> dict[str, Any]:
        """Dissolve a VO."""
        return await self._call("POST", f"/v1/vos/{vo}/dissolve")

    async def ls(self) -> list[dict[str, Any]]:
        """Every VO with its members."""
        return await self._call("GET", "/v1/vos")

    async def revocations(self, since: int = 0, wait: float = 0, crl: int | None = None) -> dict[str, Any]:
        """Revocations after `since`; with `wait`, a long poll that returns as soon as there is one (or a host
        revocation list other than number `crl`)."""
        extra = f"&crl={crl}" if crl is not None else ""
        return await self._call("GET", f"/v1/revocations?since={since}&wait={wait}{extra}", read_timeout=wait + 30)

    async def crl(self) -> str:
        """The grid CA's newest revocation list of host certificates (PEM) the service hands out."""
        return str(await self._call("GET", "/v1/crl"))

    async def publish_crl(self, pem: str) -> dict[str, Any]:
        """Hand out a newer revocation list of host certificates, signed by the grid's CA."""
        return await self._call("POST", "/v1/crl", {"crl": pem})

    async def roster(self, vo: str) -> str:
        """The VO's members as a token signed with its key (credential.verify_roster reads it)."""
        return str(await self._call("GET", f"/v1/vos/{vo}/roster"))

    async def public_key(self, vo: str) -> str:
        """The PEM key that signs the VO's credentials."""
        return await self._call("GET", f"/v1/vos/{vo}/key")


class SyncClient(rpc.Sync):
    """The VO verbs without asyncio."""

    client: Client

    def __init__(self, socket_path: str | None = None, base_url: str | None = None) -> None:
        super().__init__(Client(socket_path, base_url))
