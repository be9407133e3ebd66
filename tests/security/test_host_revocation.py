"""A host whose certificate the grid's CA revoked is refused everywhere within seconds: at the handshake of
every new link, both ways, and on the links it already had; a list the CA did not sign, or an older one,
changes nothing."""

from __future__ import annotations

import http.client
import os
import shutil
import socket
import ssl
import subprocess
import sys
import threading
from collections.abc import Iterator
from typing import Any

import pytest

from xos.errors import InvalidInput, PermissionDenied
from xos.testing import TestVOService, signed_host, wait_for
from xos.testing.fsgrid import FS_NET, FsGrid
from xos.wire import hostid
from xos.wire.hostid import HostIdentity


class _Transport:
    """What peer_of reads of a connection: its peer's certificate."""

    def __init__(self, tls: ssl.SSLSocket) -> None:
        self.tls = tls

    def get_extra_info(self, name: str) -> object:
        return self.tls.getpeercert() if name == "peercert" else None


class _Server:
    """A host's TLS listener on the loopback that keeps each connection it accepted, or why it refused one."""

    def __init__(self, ctx: ssl.SSLContext) -> None:
        self.ctx = ctx
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(8)
        self.port = self.sock.getsockname()[1]
        self.accepted: list[ssl.SSLSocket] = []
        self.refused: list[str] = []
        self.done = threading.Semaphore(0)
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            try:
                tls = self.ctx.wrap_socket(conn, server_side=True)
                tls.sendall(b"hello")
                self.accepted.append(tls)
            except OSError as e:
                self.refused.append(str(e))
                conn.close()
            self.done.release()

    def close(self) -> None:
        self.sock.close()
        for t in self.accepted:
            t.close()


def _call(ctx: ssl.SSLContext, server: _Server) -> str:
    """A connection as the host of `ctx`: what it read, or the error it got."""
    try:
        with socket.create_connection(("127.0.0.1", server.port), timeout=10) as raw, ctx.wrap_socket(raw) as tls:
            return tls.recv(5).decode()
    except OSError as e:
        return str(e)
    finally:
        assert server.done.acquire(timeout=10), "the server did not finish the handshake"


@pytest.fixture
def hosts(tmp_path) -> Iterator[dict[str, str]]:
    ca = str(tmp_path / "ca")
    hostid.ca_init(ca)
    yield {n: signed_host(ca, str(tmp_path / n), n, ["node"]) for n in ("a", "b", "c")} | {"ca": ca}


def _revoke(ca: str, host_dir: str) -> bytes:
    with open(os.path.join(host_dir, "host.pem"), "rb") as f:
        path = hostid.ca_revoke(ca, f.read())
    with open(path, "rb") as f:
        return f.read()


def test_a_revoked_host_is_refused_at_the_handshake_both_ways_and_on_links_it_had(hosts) -> None:
    a, b, c = (HostIdentity(hosts[n]) for n in "abc")
    server = _Server(a.server_context())
    try:
        assert _call(b.client_context(), server) == "hello"
        kept = server.accepted[-1]
        assert hostid.peer_of(_Transport(kept)).name == "b"
        crl = _revoke(hosts["ca"], hosts["b"])
        assert hostid.take_crl(hosts["a"], crl)
        # the contexts a's links were made with check the list from now on, and so does each request
        refused = _call(b.client_context(), server)
        assert "revoked" in refused and "revoked" in server.refused[-1], (refused, server.refused)
        with pytest.raises(PermissionDenied, match="revoked"):
            hostid.peer_of(_Transport(kept))
        assert _call(c.client_context(), server) == "hello"  # the others go on
    finally:
        server.close()
    # b as a server: a host that took the list does not call it
    server = _Server(b.server_context())
    try:
        assert _call(c.client_context(), server) == "hello"
        assert hostid.take_crl(hosts["c"], crl)
        assert "revoked" in _call(c.client_context(), server)
    finally:
        server.close()


def test_the_list_is_kept_for_the_next_start(hosts, tmp_path) -> None:
    crl = _revoke(hosts["ca"], hosts["b"])
    assert hostid.take_crl(hosts["a"], crl)
    assert open(os.path.join(hosts["a"], hostid.CRL), "rb").read() == crl
    # another host of the grid starting with that list in its directory checks it from its first handshake
    shutil.copy(os.path.join(hosts["a"], hostid.CRL), os.path.join(hosts["c"], hostid.CRL))
    server = _Server(HostIdentity(hosts["c"]).server_context())
    try:
        assert "revoked" in _call(HostIdentity(hosts["b"]).client_context(), server)
    finally:
        server.close()
    assert hostid.crl_number(hosts["c"]) == 1


def test_a_list_the_grids_ca_did_not_sign_or_an_older_one_changes_nothing(hosts, tmp_path) -> None:
    other = str(tmp_path / "other-ca")
    hostid.ca_init(other, "not the grid's CA")
    stranger = signed_host(other, str(tmp_path / "s"), "s", ["node"])
    with pytest.raises(PermissionDenied, match="not signed by the grid's CA"):
        hostid.take_crl(hosts["a"], _revoke(other, stranger))  # naming a host of the grid changes nothing either
    for junk in (b"", b"junk", b"-----BEGIN X509 CRL-----\nAAAA\n-----END X509 CRL-----\n"):
        with pytest.raises(InvalidInput):
            hostid.take_crl(hosts["a"], junk)
    assert hostid.crl_number(hosts["a"]) == 0 and not os.path.exists(os.path.join(hosts["a"], hostid.CRL))
    first = _revoke(hosts["ca"], hosts["b"])
    second = _revoke(hosts["ca"], hosts["c"])
    assert hostid.take_crl(hosts["a"], second)
    assert not hostid.take_crl(hosts["a"], first)  # a replay of the older list: c stays revoked
    assert hostid.crl_number(hosts["a"]) == 2
    assert open(os.path.join(hosts["a"], hostid.CRL), "rb").read() == second


def test_revoking_takes_only_this_cas_certificates_and_says_what_is_wrong_in_one_line(hosts, tmp_path) -> None:
    other = str(tmp_path / "other-ca")
    hostid.ca_init(other, "not the grid's CA")
    stranger = signed_host(other, str(tmp_path / "s"), "s", ["node"])
    for args in ([os.path.join(stranger, "host.pem")], ["--serial", "xyz"], ["--serial", "0"], [],
                 [os.path.join(hosts["b"], "host.pem"), "--serial", "1f"], [str(tmp_path / "none.pem")]):
        r = subprocess.run([sys.executable, "-m", "xos", "ca", "revoke", "--ca", hosts["ca"], *args],
                           capture_output=True, text=True)
        assert r.returncode != 0 and r.stderr.count("\n") == 1 and r.stderr.startswith("xos: error"), (args, r.stderr)
    assert not os.path.exists(os.path.join(hosts["ca"], hostid.CRL))
    r = subprocess.run([sys.executable, "-m", "xos", "ca", "revoke", "--ca", hosts["ca"],
                        os.path.join(hosts["b"], "host.pem")], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    serial = HostIdentity(hosts["b"]).serial
    assert hostid.take_crl(hosts["a"], open(r.stdout.strip(), "rb").read()) and hostid.revoked(serial)


VO_ADDRESS = f"{FS_NET}.1:7212"


def test_a_revoked_host_loses_the_file_system_within_5_s_on_new_and_kept_links() -> None:
    """`xos ca revoke --publish`: the MRC (TLS in Python) and an OSD (TLS ended in C) refuse the host's new
    handshakes and its requests on connections it already had, and say so; the grid itself goes on."""
    with FsGrid(osds=1, clients=0, vo_urls=(f"https://{VO_ADDRESS}",)) as grid, \
            TestVOService(listen=VO_ADDRESS, ca_dir=grid.ca_dir) as vo:
        grid.mkvol("rev", replicas=1)
        c: Any = grid.client("rev")
        try:
            with c.open("/f", "wb") as f:
                f.write(b"x" * (1 << 20))  # past the inline limit: its bytes are on the OSD
            fid = c.replicas("/f")["fid"]
        finally:
            c.close()
        rogue_dir = signed_host(grid.ca_dir, os.path.join(grid.base, "rogue"), "rogue", ["mrc"])
        rogue = HostIdentity(rogue_dir).client_context()
        mrc = grid.mrc_url.partition("//")[2].rpartition(":")
        osd = grid.osd_url(0).partition("//")[2].rpartition(":")
        paths = {mrc: "/v1/osds", osd: f"/v1/o/{fid}/0?off=0&len=16"}

        def get(conn: http.client.HTTPSConnection, where: tuple[str, str, str]) -> tuple[int, bytes]:
            conn.request("GET", paths[where])
            r = conn.getresponse()
            return r.status, r.read()

        def connect(where: tuple[str, str, str]) -> http.client.HTTPSConnection:
            return http.client.HTTPSConnection(where[0], int(where[2]), context=rogue, timeout=10)

        kept = {w: connect(w) for w in paths}
        try:
            for w, conn in kept.items():
                assert get(conn, w)[0] == 200  # as a host of the grid with the MRC's role
            code, out, err = vo.cli("ca", "revoke", os.path.join(rogue_dir, "host.pem"), "--ca", grid.ca_dir,
                                    "--publish", "--vo", vo.socket)
            assert code == 0 and "revocation list 1 handed out" in out, (out, err)

            def refused_anew(w: tuple[str, str, str]) -> bool:
                # no answer at all: the handshake failed (uvloop's TLS closes without the alert that says why)
                conn = connect(w)
                try:
                    get(conn, w)
                except (OSError, http.client.HTTPException):
                    return True
                finally:
                    conn.close()
                return False

            for w in paths:
                wait_for(lambda w=w: refused_anew(w), 5, f"{w[0]}:{w[2]} to refuse the revoked certificate")
                status, body = get(kept[w], w)
                assert status in (401, 403) and b"revoked" in body, (status, body)
        finally:
            for conn in kept.values():
                conn.close()
        logs = grid.logs()
        osd_log = next(v for k, v in logs.items() if "osd" in k)
        assert "refused: certificate revoked" in osd_log, osd_log[-2000:]
        assert "rogue refused: its certificate" in logs[next(k for k in logs if "mrc" in k)]
        c = grid.client("rev")  # the MRC's and the OSD's own links go on
        try:
            with c.open("/f", "rb") as f:
                assert f.read() == b"x" * (1 << 20)
        finally:
            c.close()


def test_a_revoked_node_is_refused_by_the_job_manager_within_5_s() -> None:
    """The job manager (aiohttp) takes no more ads from a node whose certificate was revoked, on a kept-alive
    connection or a new one, and says so."""
    import tempfile

    from xos.identity import credential
    from xos.testing import AEM_PEER_LISTEN, GRID_NET, TestAem, TestGrid

    base = tempfile.mkdtemp(prefix="xos-host-rev-")
    os.chmod(base, 0o755)
    address = f"{GRID_NET}.1:7213"
    try:
        trust = os.path.join(base, "trust")
        credential.TrustStore(trust)
        with TestGrid(1) as grid, TestVOService(listen=address, ca_dir=grid.ca_dir) as vo:
            aem = TestAem(base, grid, trust, vo_urls=(vo.url,))
            aem.start()
            try:
                rogue_dir = grid.host_dir("rogue", ["node"])
                rogue = HostIdentity(rogue_dir).client_context()
                host, _, port = AEM_PEER_LISTEN.rpartition(":")

                def push(conn: http.client.HTTPSConnection) -> tuple[int, bytes]:
                    # not an ad: a host the job manager takes for a node is told so (400), any other refused
                    conn.request("PUT", "/v1/peer/ads/rogue", body=b"{}", headers={"Content-Type": "application/json"})
                    r = conn.getresponse()
                    return r.status, r.read()

                def connect() -> http.client.HTTPSConnection:
                    return http.client.HTTPSConnection(host, int(port), context=rogue, timeout=10)

                def answers() -> bool:
                    conn = connect()
                    try:
                        return push(conn)[0] == 400
                    except OSError:
                        return False
                    finally:
                        conn.close()

                wait_for(answers, 20, "the job manager's peer listener")
                kept = connect()
                try:
                    assert push(kept)[0] == 400
                    code, out, err = vo.cli("ca", "revoke", os.path.join(rogue_dir, "host.pem"), "--ca", grid.ca_dir,
                                            "--publish", "--vo", vo.socket)
                    assert code == 0, err

                    def refused_anew() -> bool:  # no answer at all: the handshake failed
                        conn = connect()
                        try:
                            push(conn)
                        except (OSError, http.client.HTTPException):
                            return True
                        finally:
                            conn.close()
                        return False

                    wait_for(refused_anew, 5, "the job manager to refuse the revoked certificate")
                    status, body = push(kept)
                    assert status == 403 and b"revoked" in body, (status, body)
                finally:
                    kept.close()
                with open(aem.log_path) as f:
                    assert "rogue refused: its certificate" in f.read()
            finally:
                aem.stop()
    finally:
        shutil.rmtree(base, ignore_errors=True)


def test_members_clients_and_mounts_refuse_a_revoked_osd_within_seconds() -> None:
    """A member's client and a running mount check the servers' certificates against the CA's list beside its
    certificate too: once an OSD's is on it, both refuse that OSD, though they had kept connections and TLS
    sessions to it (which skip the certificate check when resumed); the MRC, not revoked, goes on."""
    from xos.errors import XosError

    with FsGrid(osds=1, clients=1) as grid:
        grid.mkvol("users", replicas=1)
        data = os.urandom(1 << 20)
        c: Any = grid.client("users")
        try:
            with c.open("/f", "wb") as f:
                f.write(data)
            with c.open("/f", "rb") as f:
                assert f.read() == data  # a kept-alive connection to the OSD, and a session to resume
            mp = grid.mount(0, "users")
            with open(os.path.join(mp, "f"), "rb") as f:
                assert f.read() == data
            with open(os.path.join(grid.base, "osd0", "host", "host.pem"), "rb") as f:
                hostid.ca_revoke(grid.ca_dir, f.read())  # beside the CA's certificate the members check against
            assert hostid.refresh_crl(grid.ca)  # what a new client does, and a mount every few seconds
            with pytest.raises(XosError):
                with c.open("/f", "rb") as f:
                    f.read()
            assert c.stat("/f")["size"] == len(data)  # the MRC's certificate is good

            def mount_refuses() -> bool:
                with open("/proc/sys/vm/drop_caches", "w") as dc:
                    dc.write("1")
                try:
                    with open(os.path.join(mp, "f"), "rb") as f:
                        f.read()
                except OSError:
                    return True
                return False

            wait_for(mount_refuses, 10, "the mount to refuse the revoked OSD")
        finally:
            c.close()
