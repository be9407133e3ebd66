"""The identity socket of the node daemon ($XOS_RUN/idmap.sock), spoken by pam_xos and libnss_xos.

Anyone may look up mapped accounts and groups (as with /etc/passwd); only root peers (checked
with SO_PEERCRED) may authenticate, check accounts and open sessions. The daemon keeps the
credential from `auth` for the `session` step: sshd runs them in different processes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import struct
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from xos.errors import XosError
from xos.identity import credential
from xos.identity.idmap import ACCOUNT, Account, IdentityMap, local_accounts, make_home
from xos.identity.proto import (
    HEAD,
    LEN,
    MAX_MESSAGE,
    VERSION,
    Op,
    ProtocolError,
    Status,
    decode_body,
    encode,
    group_fields,
    passwd_fields,
)

log = logging.getLogger(__name__)

READ_TIMEOUT = 5.0
PENDING_TTL = 24 * 3600.0  # how long a login's credential is kept for account checks and session

Placer = Callable[[str, int], Awaitable[None]]
Reply = tuple[Status, list[bytes]]


@dataclass
class Login:
    """A credential that passed `auth` for an account, kept for `account` and `session`."""

    token: str
    claims: credential.Claims
    at: float


class IdentityServer:
    """Answers the identity protocol from an IdentityMap, a trust store and a revocation set."""

    def __init__(self, idmap: IdentityMap, trust: credential.TrustStore, revoked: set[str],
                 place: Placer | None = None) -> None:
        self.idmap = idmap
        self.trust = trust
        self.revoked = revoked
        self.place = place
        self.logins: dict[str, Login] = {}
        self.on_change: Callable[[], None] | None = None
        self._verified: dict[str, credential.Claims] = {}
        self._server: asyncio.AbstractServer | None = None

    async def start(self, path: str) -> None:
        """Listen on `path` (mode 0666: lookups are public; privileged ops check the peer)."""
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
        loop = asyncio.get_running_loop()
        # A plain Protocol, not streams: a lookup is one short connection, and stream setup was
        # most of its cost (0.44 -> see bench/identity.py).
        self._server = await loop.create_unix_server(lambda: _Connection(self), path=path)
        os.chmod(path, 0o666)

    async def stop(self) -> None:
        """Stop listening."""
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    def answer(self, body: bytes, peer_uid: int) -> Reply | Awaitable[Reply]:
        """The reply to one request body, or an awaitable of it for the ops that must wait (session).

        Every other op is answered synchronously: a task per request was a fifth of a lookup."""
        try:
            version, op, fields = decode_body(body)
            if version != VERSION:
                raise ProtocolError(f"version {version} is not {VERSION}")
            args = [f.decode() for f in fields]
        except (ProtocolError, UnicodeDecodeError) as e:
            log.warning("identity socket: bad request from uid %d: %s", peer_uid, e)
            return Status.BADREQ, [str(e).encode()]
        if op in (Op.AUTH, Op.ACCOUNT, Op.SESSION) and peer_uid != 0:
            log.warning("identity socket: op %d from uid %d refused: only root may ask", op, peer_uid)
            return Status.DENIED, [b"permission-denied", b"only root may authenticate"]
        try:
            if op == Op.SESSION:
                return self._refusing(op, self._session(args[0], int(args[1]), args[2:3] == ["root"]))
            return self._dispatch(op, args)
        except (XosError, ValueError, IndexError) as e:
            return self._refused(op, e)

    async def _refusing(self, op: int, reply: Awaitable[Reply]) -> Reply:
        try:
            return await reply
        except (XosError, ValueError, IndexError) as e:
            return self._refused(op, e)

    @staticmethod
    def _refused(op: int, e: Exception) -> Reply:
        code = getattr(e, "code", "bad-request")
        log.warning("identity socket: op %s refused: %s", op, e, extra={"code": code})
        status = Status.DENIED if isinstance(e, credential.CredentialError) else Status.BADREQ
        if isinstance(e, XosError) and not isinstance(e, credential.CredentialError):
            status = Status.ERROR
        return status, [code.encode(), str(e).encode()]

    def _dispatch(self, op: int, args: list[str]) -> Reply:
        if op == Op.AUTH:
            return self._auth(args[0], args[2])
        if op == Op.ACCOUNT:
            return self._account(args[0], args[1:2] == ["root"])
        if op == Op.GETPWNAM:
            generation = self.idmap.generation
            acct = self.idmap.resolve(args[0])  # a member's first lookup leases its UID
            if self.idmap.generation != generation and self.on_change is not None:
                self.on_change()
            return self._pw(acct)
        if op == Op.GETPWUID:
            return self._pw(self.idmap.lookup_uid(int(args[0])))
        if op == Op.PWENT:
            accounts = self.idmap.accounts()
            i = int(args[0])
            return self._pw(accounts[i] if 0 <= i < len(accounts) else None)
        if op in (Op.GETGRNAM, Op.GETGRGID, Op.GRENT):
            if op == Op.GRENT:
                groups = self.idmap.groups()
                i = int(args[0])
                g = groups[i] if 0 <= i < len(groups) else None
            else:
                g = self.idmap.group(args[0] if op == Op.GETGRNAM else int(args[0]))
            return (Status.OK, group_fields(*g)) if g else (Status.NOTFOUND, [])
        return Status.BADREQ, [f"unknown op {op}".encode()]

    @staticmethod
    def _pw(a: Account | None) -> tuple[Status, list[bytes]]:
        if a is None:
            return Status.NOTFOUND, []
        return Status.OK, passwd_fields(a.name, a.uid, a.gid, a.gecos, a.home, a.shell)

    def _auth(self, account: str, token: str) -> tuple[Status, list[bytes]]:
        m = ACCOUNT.match(account)
        if m is None:
            return Status.NOTFOUND, [b"unknown-user", f"{account!r} is not a grid account (user.vo)".encode()]
        claims = self.verify(token, m.group("vo"))
        if claims.sub != m.group("user"):
            raise credential.CredentialWrongVO(f"credential is for {claims.sub}.{claims.vo}, not {account}")
        if account in local_accounts() and (claims.vo, claims.sub) not in self.idmap.static:
            # A local account of that name (files come first in nsswitch): never entered with a credential.
            log.warning("auth of %s refused: a local account has that name", account, extra={"vo": claims.vo})
            return Status.NOTFOUND, [b"local-account", f"{account} is a local account of this node, not a grid "
                                     "account".encode()]
        generation = self.idmap.generation
        acct = self.idmap.map(claims.vo, claims.sub)
        if self.idmap.generation != generation and self.on_change is not None:
            self.on_change()  # the NSS cache, before the reply: group member lists must never lag
        self.logins[account] = Login(token, claims, time.time())
        log.info("auth of %s succeeded (credential %s)", account, claims.jti, extra={"vo": claims.vo})
        return Status.OK, passwd_fields(acct.name, acct.uid, acct.gid, acct.gecos, acct.home, acct.shell)

    def _login(self, account: str) -> Login:
        login = self.logins.get(account)
        if login is None or time.time() - login.at > PENDING_TTL:
            raise credential.CredentialError(f"no authenticated credential for {account}")
        # Membership, expiry and revocation, checked again now.
        self.verify(login.token, login.claims.vo)
        return login

    def verify(self, token: str, vo: str) -> credential.Claims:
        """credential.verify, remembering signatures already checked: expiry, revocation and trust
        in the VO's key are checked again on every call, the Ed25519 signature only once."""
        claims = self._verified.get(token)
        if claims is not None:
            trusted = self.trust.lookup(claims.vo, claims.kid)
            now = time.time()
            if (claims.vo == vo and trusted is not None and trusted.key is not None and trusted.kid == claims.kid
                    and claims.iat - credential.CLOCK_SKEW <= now < claims.exp + credential.CLOCK_SKEW
                    and not credential.is_revoked(claims.vo, claims.jti, self.revoked)):
                return claims
            self._verified.pop(token, None)
        claims = credential.verify(token, self.trust, self.revoked, vo=vo)
        if len(self._verified) >= 4096:
            self._verified.clear()
        self._verified[token] = claims
        return claims

    def _member(self, account: str) -> Account:
        """The account of a current member of a VO pooled here, for root entering it without a credential
        (`su - alice.bio` from root: root needs none, the membership is still checked)."""
        acct = self.idmap.resolve(account)
        if acct is None or acct.static or not self.idmap.is_member(acct.vo, acct.user):
            raise credential.CredentialError(f"{account} is not a current member of a VO pooled here")
        return acct

    def _account(self, account: str, by_root: bool = False) -> tuple[Status, list[bytes]]:
        if by_root:
            self._member(account)
        else:
            self._login(account)
        return Status.OK, []

    async def _session(self, account: str, pid: int, by_root: bool = False) -> tuple[Status, list[bytes]]:
        acct: Account | None
        if by_root:
            acct = self._member(account)
            vo, token = acct.vo, b""
        else:
            login = self._login(account)
            acct, vo, token = self.idmap.lookup_name(account), login.claims.vo, login.token.encode()
        if acct is not None and not acct.static and make_home(acct):
            log.info("made the home of %s", account, extra={"vo": acct.vo, "uid": acct.uid})
        if self.place is not None and pid > 0:
            await self.place(vo, pid)
        return Status.OK, [token] if token else []

    def forget(self, keys: set[str]) -> None:
        """Drop kept logins whose credentials were revoked (revocation keys)."""
        for name, login in list(self.logins.items()):
            if credential.is_revoked(login.claims.vo, login.claims.jti, keys):
                del self.logins[name]


async def request(path: str, op: int, fields: list[bytes], timeout: float = 5.0) -> tuple[int, list[bytes]]:
    """One request over the identity socket (what the C clients do); (status, fields)."""
    reader, writer = await asyncio.wait_for(asyncio.open_unix_connection(path), timeout)
    try:
        writer.write(encode(op, fields))
        await writer.drain()
        (length,) = LEN.unpack(await asyncio.wait_for(reader.readexactly(4), timeout))
        _v, status, out = decode_body(await asyncio.wait_for(reader.readexactly(length), timeout))
        return status, out
    finally:
        writer.close()


class _Connection(asyncio.Protocol):
    """One client: requests answered in order, the peer's uid taken from SO_PEERCRED."""

    def __init__(self, server: IdentityServer) -> None:
        self.server = server
        self.buf = bytearray()
        self.peer_uid = -1
        self.transport: asyncio.Transport | None = None
        self.busy: asyncio.Future[None] | None = None
        self.timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        sock = transport.get_extra_info("socket")
        try:
            creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
            self.peer_uid = struct.unpack("3i", creds)[1]
        except OSError:
            transport.close()
            return
        self.timer = asyncio.get_running_loop().call_later(READ_TIMEOUT, self._idle)

    def _idle(self) -> None:
        if self.busy is None and self.transport is not None:
            if self.buf:
                log.warning("identity socket: truncated message (peer uid %d)", self.peer_uid)
            self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        if self.timer is not None:
            self.timer.cancel()
        self.transport = None

    def data_received(self, data: bytes) -> None:
        self.buf += data
        if self.busy is None:
            self._next()

    def _next(self) -> None:
        if self.transport is None or len(self.buf) < LEN.size:
            return
        (length,) = LEN.unpack_from(self.buf)
        if not HEAD.size - LEN.size <= length <= MAX_MESSAGE:
            log.warning("identity socket: message of %d bytes refused (peer uid %d)", length, self.peer_uid)
            self.transport.write(encode(Status.BADREQ, [b"bad message length"]))
            self.transport.close()
            return
        if len(self.buf) < LEN.size + length:
            return
        body = bytes(self.buf[LEN.size:LEN.size + length])
        del self.buf[:LEN.size + length]
        reply = self.server.answer(body, self.peer_uid)
        if isinstance(reply, tuple):
            self._reply(*reply)
        else:
            self.busy = asyncio.ensure_future(self._later(reply))

    async def _later(self, reply: Awaitable[Reply]) -> None:
        status, fields = await reply
        self.busy = None
        self._reply(status, fields)

    def _reply(self, status: Status, fields: list[bytes]) -> None:
        if self.transport is None:
            return
        self.transport.write(encode(status, fields))
        if status == Status.BADREQ:
            self.transport.close()
            return
        if self.timer is not None:
            self.timer.cancel()
        self.timer = asyncio.get_running_loop().call_later(READ_TIMEOUT, self._idle)
        self._next()
