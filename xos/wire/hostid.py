"""Host identities: each host its own key, and a certificate from the grid's CA naming the host and its
roles (node, aem, ...); every link between hosts is TLS 1.3 with both sides' certificates.

A host directory holds host.key (0600), host.pem (its certificate) and ca.pem (the CA it trusts). What a
peer may ask follows from the roles its certificate names: nothing in the request can claim more. No
secret is shared between hosts, and none crosses the network.
"""

from __future__ import annotations

import atexit
import contextlib
import datetime
import ipaddress
import json
import logging
import os
import re
import ssl
import tempfile
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from xos.errors import InvalidInput, PermissionDenied

log = logging.getLogger(__name__)

ROLES = ("node", "aem", "vo", "mrc", "osd")
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$")
ROLE_URI = "xos:role:"
DAYS = 30  # a host certificate's default lifetime: hosts renew theirs (xos host init, xos ca sign)
CA_DAYS = 3650
CRL = "crl.pem"  # in a host directory: the newest revocation list of its CA it took (in a CA's: the one it made)
MAX_CRL = 1 << 20


def _write_private(path: str, key: ec.EllipticCurvePrivateKey) -> None:
    """A private key, created 0600 (never readable by others, not even for a moment)."""
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())
    old = os.umask(0o077)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    except FileExistsError:
        raise InvalidInput(f"{path} exists: a key is never overwritten (remove it first to start over)") from None
    finally:
        os.umask(old)
    with os.fdopen(fd, "wb") as f:
        f.write(pem)


def _write_public(path: str, data: bytes) -> None:
    tmp = f"{path}.{os.getpid()}.tmp"
    with contextlib.suppress(FileNotFoundError):
        os.unlink(tmp)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644)  # never through a link
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.replace(tmp, path)


def _load_key(path: str) -> ec.EllipticCurvePrivateKey:
    try:
        with open(path, "rb") as f:
            key = serialization.load_pem_private_key(f.read(), None)
    except (OSError, ValueError) as e:
        raise InvalidInput(f"cannot read the key {path}: {e}") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise InvalidInput(f"{path} is not a P-256 key")
    return key


def _check_name(name: str) -> None:
    if not isinstance(name, str) or not NAME.match(name):
        raise InvalidInput(f"host name {name!r} must be 1-63 letters, digits, '.', '_' or '-'", field="name")


def ca_init(directory: str, name: str = "xos grid CA") -> str:
    """Make a grid CA in `directory`: ca.key (0600) and ca.pem; the path of ca.pem."""
    os.makedirs(directory, mode=0o700, exist_ok=True)
    key = ec.generate_private_key(ec.SECP256R1())
    _write_private(os.path.join(directory, "ca.key"), key)
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=CA_DAYS))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=False, content_commitment=False, key_encipherment=False,
                                         data_encipherment=False, key_agreement=False, key_cert_sign=True,
                                         crl_sign=True, encipher_only=False, decipher_only=False), critical=True)
            .sign(key, hashes.SHA256()))
    path = os.path.join(directory, "ca.pem")
    _write_public(path, cert.public_bytes(serialization.Encoding.PEM))
    return path


def host_init(directory: str, name: str, roles: list[str], addresses: list[str] | None = None) -> str:
    """Make this host's key (host.key, 0600) and a request for its certificate (host.csr) naming it and its
    roles; the request's path, for `xos ca sign`."""
    _check_name(name)
    _check_roles(roles)
    os.makedirs(directory, mode=0o700, exist_ok=True)
    key_path = os.path.join(directory, "host.key")
    key = _load_key(key_path) if os.path.exists(key_path) else None
    if key is None:
        key = ec.generate_private_key(ec.SECP256R1())
        _write_private(key_path, key)
    csr = (x509.CertificateSigningRequestBuilder()
           .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
           .add_extension(x509.SubjectAlternativeName(_names(name, roles, addresses or [])), critical=False)
           .sign(key, hashes.SHA256()))
    path = os.path.join(directory, "host.csr")
    _write_public(path, csr.public_bytes(serialization.Encoding.PEM))
    return path


def _check_roles(roles: list[str]) -> None:
    if not roles or any(r not in ROLES for r in roles):
        raise InvalidInput(f"roles must be some of {', '.join(ROLES)}, not {roles}", field="role")


def _names(name: str, roles: list[str], addresses: list[str]) -> list[x509.GeneralName]:
    out: list[x509.GeneralName] = [x509.DNSName(name)]
    for a in addresses:
        try:
            out.append(x509.IPAddress(ipaddress.ip_address(a)))
        except ValueError:
            raise InvalidInput(f"{a!r} is not an IP address", field="address") from None
    out += [x509.UniformResourceIdentifier(ROLE_URI + r) for r in roles]
    return out


def ca_sign(ca_dir: str, csr_pem: bytes, days: int = DAYS) -> bytes:
    """A host certificate for the request `csr_pem`, signed by the CA in `ca_dir`, valid `days` days."""
    if not 0 < days <= 3650:
        raise InvalidInput("days must be 1 to 3650", field="days")
    try:
        csr = x509.load_pem_x509_csr(csr_pem)
    except ValueError as e:
        raise InvalidInput(f"not a certificate request: {e}") from None
    if not csr.is_signature_valid:
        raise InvalidInput("the request's signature does not match its key")
    if not isinstance(csr.public_key(), ec.EllipticCurvePublicKey):
        raise InvalidInput("the request's key is not a P-256 key")
    cns = csr.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    name = str(cns[0].value) if len(cns) == 1 else ""
    _check_name(name)
    try:
        san = csr.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        raise InvalidInput("the request names no roles") from None
    roles = [u[len(ROLE_URI):] for u in san.get_values_for_type(x509.UniformResourceIdentifier)
             if u.startswith(ROLE_URI)]
    _check_roles(roles)
    addresses = [str(a) for a in san.get_values_for_type(x509.IPAddress)]
    ca_key = _load_key(os.path.join(ca_dir, "ca.key"))
    with open(os.path.join(ca_dir, "ca.pem"), "rb") as f:
        ca = x509.load_pem_x509_certificate(f.read())
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(csr.subject).issuer_name(ca.subject)
            .public_key(csr.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=days))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.SubjectAlternativeName(_names(name, roles, addresses)), critical=False)
            .add_extension(x509.ExtendedKeyUsage([x509.ExtendedKeyUsageOID.SERVER_AUTH,
                                                  x509.ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
            .sign(ca_key, hashes.SHA256()))
    return cert.public_bytes(serialization.Encoding.PEM)


def trust(directory: str, ca_pem: bytes) -> None:
    """Make `ca_pem` the CA this host's links trust."""
    try:
        ca = x509.load_pem_x509_certificate(ca_pem)
    except ValueError as e:
        raise InvalidInput(f"not a CA certificate: {e}") from None
    try:
        if not ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca:
            raise InvalidInput("that certificate is no CA's")
    except x509.ExtensionNotFound:
        raise InvalidInput("that certificate is no CA's") from None
    os.makedirs(directory, mode=0o700, exist_ok=True)
    _write_public(os.path.join(directory, "ca.pem"), ca.public_bytes(serialization.Encoding.PEM))


def _load_ca(ca_dir: str) -> x509.Certificate:
    try:
        with open(os.path.join(ca_dir, "ca.pem"), "rb") as f:
            return x509.load_pem_x509_certificate(f.read(MAX_CRL))
    except (OSError, ValueError) as e:
        raise InvalidInput(f"cannot read the CA certificate in {ca_dir}: {e}") from None


def ca_revoke(ca_dir: str, cert_pem: bytes | None = None, serial: int | None = None) -> str:
    """Revoke a host certificate this CA signed (`cert_pem`, or its `serial`): ca_dir/crl.pem becomes the CA's
    signed list of every certificate it revoked, numbered one higher; its path. Hosts take it from the VO
    service (xos ca publish) within seconds."""
    ca = _load_ca(ca_dir)
    ca_key = _load_key(os.path.join(ca_dir, "ca.key"))
    name = ""
    if cert_pem is not None:
        try:
            cert = x509.load_pem_x509_certificate(cert_pem)
            cert.verify_directly_issued_by(ca)
        except ValueError as e:
            raise InvalidInput(f"not a certificate: {e}") from None
        except Exception:  # InvalidSignature, TypeError: another CA's
            raise InvalidInput("that certificate was not signed by this CA") from None
        serial = cert.serial_number
        name = str(next(iter(cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)), x509.NameAttribute(
            NameOID.COMMON_NAME, "?")).value)
    if not isinstance(serial, int) or not 0 < serial < 1 << 160:
        raise InvalidInput("give the certificate to revoke, or its serial number (hexadecimal)", field="serial")
    state_path = os.path.join(ca_dir, "revoked.json")
    try:
        with open(state_path) as f:
            state = json.load(f)
    except FileNotFoundError:
        state = {"number": 0, "last": 0, "revoked": {}}
    key = format(serial, "x")
    now = int(datetime.datetime.now(datetime.UTC).timestamp())
    if key not in state["revoked"] or not os.path.exists(os.path.join(ca_dir, CRL)):
        state["revoked"].setdefault(key, {"name": name, "at": now})
        # Each list newer than the last by its number and by a second at least: OpenSSL, holding several of
        # one CA, checks against the one issued last.
        state["number"] += 1
        state["last"] = max(now, state["last"] + 1)
        last = datetime.datetime.fromtimestamp(state["last"], datetime.UTC)
        builder = (x509.CertificateRevocationListBuilder().issuer_name(ca.subject).last_update(last)
                   .next_update(last + datetime.timedelta(days=CA_DAYS))
                   .add_extension(x509.CRLNumber(state["number"]), critical=False))
        for hexserial, what in state["revoked"].items():
            builder = builder.add_revoked_certificate(
                x509.RevokedCertificateBuilder().serial_number(int(hexserial, 16))
                .revocation_date(datetime.datetime.fromtimestamp(what["at"], datetime.UTC)).build())
        pem = builder.sign(ca_key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM)
        _write_public(state_path, json.dumps(state, indent=1).encode())
        _write_public(os.path.join(ca_dir, CRL), pem)
    return os.path.join(ca_dir, CRL)


@dataclass
class _Revoked:
    """The newest revocation list of one host directory's CA this process took."""

    number: int = 0
    serials: frozenset[int] = frozenset()
    path: str | None = None


_lists: dict[str, _Revoked] = {}  # host directory (its real path) -> the newest list of its CA taken
# every link's context this process made -> its host directory
_contexts: weakref.WeakKeyDictionary[ssl.SSLContext, str] = weakref.WeakKeyDictionary()
_hooks: list[tuple[str, Callable[[str], None]]] = []  # more to tell of a new list (TLS ended in C)


def _held(directory: str) -> _Revoked:
    return _lists.get(os.path.abspath(directory)) or _Revoked()


def on_crl(directory: str, hook: Callable[[str], None]) -> Callable[[], None]:
    """Have `hook` take the newest revocation list of `directory`'s CA (its path) now, if one is held, and each
    newer one; a function that stops that."""
    entry = (os.path.abspath(directory), hook)
    _hooks.append(entry)
    if (path := _held(directory).path) is not None:
        hook(path)
    return lambda: _hooks.remove(entry) if entry in _hooks else None


def _arm(ctx: ssl.SSLContext, path: str) -> None:
    ctx.load_verify_locations(cafile=path)  # a list joins the certificates' store; the newest is the one used
    ctx.verify_flags |= ssl.VERIFY_CRL_CHECK_LEAF


_taken = 0  # revocation lists taken by this process


def crl_taken() -> int:
    """How many revocation lists this process took: a client that keeps connections or TLS sessions drops
    them when it changes (they were checked against an older list, or, resumed, against none)."""
    return _taken


def crl_number(directory: str | None) -> int:
    """The number of the newest revocation list of `directory`'s CA taken (0: none, or no directory)."""
    return _held(directory).number if directory else 0


def revoked(serial: int) -> bool:
    """Whether a grid CA revoked the host certificate with this serial number (serials are random 159-bit
    numbers: one CA's cannot be mistaken for another's)."""
    return any(serial in r.serials for r in _lists.values())


def _forget_copy(path: str) -> None:
    with contextlib.suppress(OSError):
        os.unlink(path)


def take_crl(directory: str, pem: bytes, keep: bool = True) -> bool:
    """Take a revocation list if the CA this host directory trusts signed it and it is newer than the one held:
    every link's handshake checks it from now on, and so does peer_of on connections made before. Kept as
    DIRECTORY/crl.pem for the next start. Whether it was newer; PermissionDenied if no CA of ours signed it."""
    try:
        crl = x509.load_pem_x509_crl(pem)
    except ValueError as e:
        raise InvalidInput(f"not a certificate revocation list: {e}") from None
    ca = _load_ca(directory)
    if crl.issuer != ca.subject or not crl.is_signature_valid(ca.public_key()):  # type: ignore[arg-type]
        raise PermissionDenied("that revocation list was not signed by the grid's CA")
    try:
        number = int(crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number)
    except x509.ExtensionNotFound:
        raise InvalidInput("that revocation list has no number") from None
    held = _held(directory)
    if number <= held.number:
        return False
    path = os.path.join(directory, CRL)
    if keep:  # a host directory's own copy; a client reading a list beside a CA never writes there
        try:
            with open(path, "rb") as f0:
                same = f0.read(MAX_CRL) == pem
        except FileNotFoundError:
            same = False
        if not same:
            _write_public(path, pem)
    # Contexts load the verified bytes from a private copy, not the file, which may have changed since.
    fd, loaded = tempfile.mkstemp(prefix="xos-crl-", suffix=".pem")
    atexit.register(_forget_copy, loaded)
    with os.fdopen(fd, "wb") as f:
        f.write(pem)
    if held.path is not None and os.path.basename(held.path).startswith("xos-crl-"):
        with contextlib.suppress(OSError):
            os.unlink(held.path)
    path = loaded
    serials = frozenset(r.serial_number for r in crl)
    fresh = serials - held.serials
    real = os.path.abspath(directory)
    _lists[real] = _Revoked(number, serials, path)
    global _taken
    _taken += 1
    for ctx, where in list(_contexts.items()):
        if where == real:
            _arm(ctx, path)
    for where, hook in list(_hooks):
        if where == real:
            hook(path)
    _checked.clear()
    log.info("host certificate revocation list %d of %s: %d revoked, %d new", number, directory, len(serials),
             len(fresh))
    return True


def ca_file(ca: str | None = None) -> str:
    """The grid CA's certificate users' clients check daemons against: `ca`, else $XOS_CA, else
    $XOS_HOME/host/ca.pem; InvalidInput if there is none."""
    path = ca or os.environ.get("XOS_CA") or os.path.join(os.environ.get("XOS_HOME") or "/var/lib/xos", "host",
                                                           "ca.pem")
    if not os.path.exists(path):
        raise InvalidInput(f"no grid CA at {path} to check the daemon's certificate against: give it with --ca or "
                           "$XOS_CA (or xos host trust CA.pem)", field="ca")
    return path


def user_context(ca: str | None = None) -> ssl.SSLContext:
    """For a user's client of a daemon served over TLS: its certificate must come from the grid's CA (`ca`,
    else $XOS_CA, else $XOS_HOME/host/ca.pem), name the host the URL names, and not be on the CA's revocation
    list where one lies beside the CA's certificate (a host directory's, which its daemons keep current)."""
    path = ca_file(ca)
    ctx = ssl.create_default_context(cafile=path)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    _contexts[ctx] = os.path.abspath(os.path.dirname(path))
    refresh_crl(path)
    if (held := _held(os.path.dirname(path)).path) is not None:
        _arm(ctx, held)
    return ctx


def refresh_crl(ca: str) -> bool:
    """Take the revocation list beside the CA certificate `ca` if there is a newer one than held (a
    long-lived client asks now and then); whether it took one. A list that cannot be read or is not the
    CA's changes nothing."""
    directory = os.path.dirname(ca)
    try:
        with open(os.path.join(directory, CRL), "rb") as f:
            pem = f.read(MAX_CRL)
        if os.path.basename(ca) != "ca.pem":
            return False  # a CA certificate named otherwise: its list is not known to be this one
        return take_crl(directory, pem, keep=False)
    except (OSError, InvalidInput, PermissionDenied) as e:
        if not isinstance(e, FileNotFoundError):
            log.warning("revocation list beside %s not taken: %s", ca, e)
        return False


@dataclass(frozen=True)
class Peer:
    """The host at the other end of a link, as its certificate says."""

    name: str
    roles: tuple[str, ...]


class HostIdentity:
    """This host's certificate, key and trusted CA (a host directory), as TLS contexts for links."""

    def __init__(self, directory: str) -> None:
        self.directory = directory
        for f in ("host.pem", "host.key", "ca.pem"):
            if not os.path.exists(os.path.join(directory, f)):
                raise InvalidInput(f"no {f} in host directory {directory}: make one with xos host init, "
                                   "xos ca sign and xos host trust")
        with open(os.path.join(directory, "host.pem"), "rb") as fh:
            cert = x509.load_pem_x509_certificate(fh.read())
        self.name = str(cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value)
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        self.roles = tuple(u[len(ROLE_URI):] for u in san.get_values_for_type(x509.UniformResourceIdentifier)
                           if u.startswith(ROLE_URI))
        self.not_after = cert.not_valid_after_utc
        self.serial = cert.serial_number
        crl = os.path.join(directory, CRL)
        if os.path.exists(crl):  # what the CA revoked holds from the start, not from the first feed answer
            with open(crl, "rb") as fh:
                take_crl(directory, fh.read(MAX_CRL))

    def _context(self, purpose: ssl.Purpose) -> ssl.SSLContext:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER if purpose is ssl.Purpose.CLIENT_AUTH else ssl.PROTOCOL_TLS_CLIENT)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_3
        ctx.load_cert_chain(os.path.join(self.directory, "host.pem"), os.path.join(self.directory, "host.key"))
        ctx.load_verify_locations(os.path.join(self.directory, "ca.pem"))
        ctx.verify_mode = ssl.CERT_REQUIRED
        # Hosts are known by the name and roles their certificate gives, checked by whoever acts on them
        # (`peer_of`, `expect`), not by the address a URL happens to use.
        ctx.check_hostname = False
        _contexts[ctx] = os.path.abspath(self.directory)
        if (path := _held(self.directory).path) is not None:
            _arm(ctx, path)
        return ctx

    def server_context(self, users: bool = False) -> ssl.SSLContext:
        """For a listener: only hosts with a certificate from the grid's CA get through the handshake; with
        `users`, anyone may (users show a credential inside the channel instead), and a host that shows a
        certificate is known by it if the grid's CA signed it, refused if not."""
        ctx = self._context(ssl.Purpose.CLIENT_AUTH)
        if users:
            ctx.verify_mode = ssl.CERT_OPTIONAL
        return ctx

    def client_context(self) -> ssl.SSLContext:
        """For calls to other hosts: they must show a certificate from the grid's CA too."""
        return self._context(ssl.Purpose.SERVER_AUTH)


def peer_of(transport: Any) -> Peer:
    """The host at the other end of a TLS connection (an aiohttp request's transport)."""
    cert = transport.get_extra_info("peercert") if transport is not None else None
    if not cert:
        raise PermissionDenied("this link needs the peer host's certificate (TLS with a client certificate)")
    name = next((v for rdn in cert.get("subject", ()) for k, v in rdn if k == "commonName"), "")
    roles = tuple(v[len(ROLE_URI):] for k, v in cert.get("subjectAltName", ()) if k == "URI" and v.startswith(ROLE_URI))
    serial = cert.get("serialNumber")
    # A connection made, or a TLS session resumed, before the revocation: its handshake checked no list.
    if serial is None or revoked(int(serial, 16)):
        log.warning("host %s refused: its certificate (serial %s) was revoked", name, serial)
        raise PermissionDenied(f"host {name}'s certificate was revoked by the grid's CA")
    return Peer(name, roles)


def require(transport: Any, *roles: str) -> Peer:
    """The peer host, if its certificate gives it one of `roles`; PermissionDenied otherwise."""
    peer = peer_of(transport)
    if not set(peer.roles) & set(roles):
        raise PermissionDenied(f"host {peer.name} ({', '.join(peer.roles) or 'no role'}) may not do this: it takes "
                               f"a certificate for {' or '.join(roles)}")
    return peer


_checked: dict[tuple[str, tuple[str, ...]], float] = {}  # (URL, roles) -> until when its host is known to hold one
CHECKED_FOR = 60.0


async def check_server(url: str, tls: ssl.SSLContext, *roles: str) -> Peer | None:
    """Before anything is sent to `url`: that the host answering there has a certificate from the grid's CA
    for one of `roles` (a job manager hands credentials, a node images, only to a node). A TLS handshake of
    its own, remembered for a minute per URL; PermissionDenied, or OSError when it cannot be reached."""
    import asyncio
    import time
    import urllib.parse

    key = (url, roles)
    if _checked.get(key, 0.0) > time.monotonic():
        return None
    u = urllib.parse.urlsplit(url)
    if u.scheme != "https" or not u.hostname:
        raise PermissionDenied(f"{url} is not a TLS (https) address: hosts talk to each other over TLS only")
    reader, writer = await asyncio.wait_for(asyncio.open_connection(u.hostname, u.port or 443, ssl=tls), 10)
    try:
        peer = require(writer.transport, *roles)
    finally:
        writer.close()
    _checked[key] = time.monotonic() + CHECKED_FOR
    return peer


class HostLink:
    """A kept-alive HTTP/1.1 link to one host whose certificate must give it one of `roles`, checked on the
    very connection the calls go over (aiohttp hands a small answer's connection back before its caller can
    look at the certificate). For small JSON calls a host makes every second, such as an OSD's heartbeat."""

    def __init__(self, url: str, tls: ssl.SSLContext | None, roles: tuple[str, ...],
                 headers: dict[str, str] | None = None) -> None:
        import urllib.parse

        u = urllib.parse.urlsplit(url)
        if not u.hostname or (tls is not None and u.scheme != "https"):
            raise InvalidInput(f"{url} is not a TLS (https) address: hosts talk to each other over TLS only")
        self.host, self.port = u.hostname, u.port or (443 if tls else 80)
        self.tls, self.roles, self.headers = tls, roles, headers or {}
        self._streams: tuple[Any, Any] | None = None

    async def call(self, method: str, path: str, body: Any, timeout: float = 5) -> tuple[int, Any]:
        """One call with a JSON body; (status, the JSON answer). OSError or PermissionDenied on failure."""
        import asyncio
        import json

        try:
            return await asyncio.wait_for(self._call(method, path, json.dumps(body).encode()), timeout)
        except BaseException:
            self.close()
            raise

    async def _call(self, method: str, path: str, data: bytes) -> tuple[int, Any]:
        import asyncio
        import json

        if self._streams is None:
            self._streams = await asyncio.open_connection(self.host, self.port, ssl=self.tls)
        reader, writer = self._streams
        if self.tls is not None:  # at each call: the host's certificate may have been revoked since
            require(writer.transport, *self.roles)
        head = "".join(f"{k}: {v}\r\n" for k, v in self.headers.items())
        writer.write(f"{method} {path} HTTP/1.1\r\nHost: {self.host}\r\nContent-Type: application/json\r\n"
                     f"Content-Length: {len(data)}\r\n{head}\r\n".encode() + data)
        status_line = await reader.readline()
        parts = status_line.split()
        if len(parts) < 2 or not parts[1].isdigit():
            raise ConnectionError(f"not an HTTP answer: {status_line[:80]!r}")
        length, close = 0, False
        while (line := await reader.readline()) not in (b"\r\n", b""):
            name, _, value = line.decode("latin-1").partition(":")
            if name.strip().lower() == "content-length":
                length = int(value)
            elif name.strip().lower() == "connection" and value.strip().lower() == "close":
                close = True
        answer = json.loads(await reader.readexactly(length)) if length else None
        if close:
            self.close()
        return int(parts[1]), answer

    def close(self) -> None:
        """Drop the connection (the next call makes another)."""
        if self._streams is not None:
            self._streams[1].close()
            self._streams = None
