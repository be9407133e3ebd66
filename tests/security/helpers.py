"""What the attacks share: an ordinary local uid, peer API calls and a TLS listener, the test VO's keys, and
the checks that a node still serves after an attack."""

from __future__ import annotations

import contextlib
import json
import os
import socket
import ssl
import subprocess
import threading
from collections.abc import Iterator
from typing import Any

from xos.identity import credential, install
from xos.testing import GRID_NET, TestGrid, TestNode, tls_call, wait_for

keys: dict[str, Any] = {}  # the test VO's signing key, per node tag (the grid fixture fills it)

GUEST = 1000  # an ordinary local uid, as a workspace user


def peer_get(grid: TestGrid, node: TestNode, path: str, timeout: float = 10, method: str = "GET",
             body: bytes | None = None) -> tuple[int, bytes]:
    """A call on the node's peer API as a job manager (a host certificate with role aem); (status, body)."""
    return tls_call(grid.host_dir("tester", ["aem"]), node.peer_url + path, method, body, timeout)


class TlsListener:
    """A TLS listener on the grid bridge (`ctx`: a server context) that keeps whatever its clients send after
    the handshake, to show what reached a host that should have got nothing."""

    def __init__(self, ctx: ssl.SSLContext, address: str = f"{GRID_NET}.1") -> None:
        self.heard = bytearray()
        self.srv = socket.socket()
        self.srv.bind((address, 0))
        self.srv.listen(4)
        self.ctx = ctx
        threading.Thread(target=self._serve, daemon=True).start()

    @property
    def url(self) -> str:
        host, port = self.srv.getsockname()
        return f"https://{host}:{port}"

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.srv.accept()
            except OSError:  # closed
                return
            try:
                with self.ctx.wrap_socket(conn, server_side=True) as tls:
                    tls.settimeout(5)
                    while data := tls.recv(1 << 16):
                        self.heard.extend(data)
            except OSError:
                pass

    def close(self) -> None:
        self.srv.close()


def error_code(body: bytes) -> str:
    """The stable code of an error answer."""
    data: Any = json.loads(body)
    return str(data["error"]["code"])


def login_works(node: TestNode) -> None:
    """A VO member authenticates through the real PAM stack (pamtester and pam_xos) on this node."""
    token, _ = credential.issue(keys[node.tag], "alice", "bio", ["member"], [], 600)
    name = f"xos-sec-{node.tag}"
    with open(f"/etc/pam.d/{name}", "w") as f:
        for kind in ("auth", "account"):
            f.write(f"{kind} required {install.built('pam_xos.so')} socket={os.path.join(node.run, 'idmap.sock')}\n")
    try:
        def authenticates() -> bool:  # the node re-reads a VO's key at most once a second
            return subprocess.run(["pamtester", name, "alice.bio", "authenticate", "acct_mgmt"], input=token + "\n",
                                  capture_output=True, text=True, timeout=30).returncode == 0
        wait_for(authenticates, 5, "a login to succeed")
    finally:
        os.unlink(f"/etc/pam.d/{name}")


def node_still_serves(node: TestNode) -> None:
    """The node answers its socket, lists its workspaces, makes a new one and lets a member log in: one
    attack did not take it down."""
    with node.client() as c:
        names = [w["name"] for w in c.ls()]
        c.create("after-attack", uid=GUEST, gid=GUEST)
        assert "after-attack" in [w["name"] for w in c.ls()], names
        c.rm("after-attack")
    login_works(node)


@contextlib.contextmanager
def capture(into: bytearray) -> Iterator[None]:
    """Every frame on every interface of this namespace (the nodes' veths and their bridge) while the block
    runs, appended to `into` (a packet socket)."""
    s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(0x0003))  # ETH_P_ALL
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 << 20)
    s.settimeout(0.2)
    done = threading.Event()

    def read() -> None:
        while not done.is_set():
            try:
                into.extend(s.recv(1 << 16))
            except TimeoutError:
                continue

    t = threading.Thread(target=read, daemon=True)
    t.start()
    try:
        yield
    finally:
        done.set()
        t.join(5)
        s.close()


def tls_feed_server(handler: type, ca_dir: str, address: str, bind: str = "") -> tuple[Any, str]:
    """An HTTP server of `handler` over TLS, as a VO service host at `address` the CA in `ca_dir` signed (made
    if missing), listening on `bind` (default `address`): the server (serving in a thread) and its URL."""
    from http.server import ThreadingHTTPServer

    from xos.testing import signed_host
    from xos.wire import hostid

    if not os.path.exists(os.path.join(ca_dir, "ca.pem")):
        hostid.ca_init(ca_dir)
    host = hostid.HostIdentity(signed_host(ca_dir, os.path.join(ca_dir, "feed-host"), "feed", ["vo"], [address]))
    server = ThreadingHTTPServer((bind or address, 0), handler)
    server.socket = host.server_context(users=True).wrap_socket(server.socket, server_side=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"https://{address}:{server.server_address[1]}"


def resign(ca_dir: str, directory: str, days: int) -> None:
    """Give the host in `directory` a certificate from the CA in `ca_dir` that ends in `days` days (ended, if
    negative)."""
    import datetime

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    with open(os.path.join(directory, "host.pem"), "rb") as f:
        old = x509.load_pem_x509_certificate(f.read())
    with open(os.path.join(ca_dir, "ca.key"), "rb") as f:
        ca_key = serialization.load_pem_private_key(f.read(), None)
    with open(os.path.join(ca_dir, "ca.pem"), "rb") as f:
        ca = x509.load_pem_x509_certificate(f.read())
    now = datetime.datetime.now(datetime.UTC)
    builder = (x509.CertificateBuilder().subject_name(old.subject).issuer_name(ca.subject).public_key(old.public_key())
               .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(days=10))
               .not_valid_after(now + datetime.timedelta(days=days)))
    for ext in old.extensions:
        builder = builder.add_extension(ext.value, ext.critical)
    assert isinstance(ca_key, ec.EllipticCurvePrivateKey)
    with open(os.path.join(directory, "host.pem"), "wb") as f:
        f.write(builder.sign(ca_key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM))


def plain_http_answer(host: str, port: int, path: str) -> bytes:
    """What a TLS-only listener at host:port sends back to a plain HTTP GET of `path` (b"" if it only hangs
    up)."""
    with socket.create_connection((host, port), timeout=10) as s:
        s.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        got = b""
        try:
            while chunk := s.recv(4096):
                got += chunk
        except ConnectionResetError:
            pass
    return got
