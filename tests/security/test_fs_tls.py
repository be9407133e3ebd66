"""The grid file system's links are TLS 1.3: no credential, capability or file content crosses the network in
clear; plain HTTP, another CA's certificate and a certificate for another address are refused; hosts are
known by their certificates, and nothing a request says makes anyone else a file-system host."""

from __future__ import annotations

import base64
import json
import os
import secrets
import socket
import ssl
import time
import urllib.error
import urllib.request
from typing import Any

import pytest

from tests.security.helpers import TlsListener, capture, plain_http_answer, resign
from xos.errors import Unavailable
from xos.testing import signed_host
from xos.testing.fsgrid import FS_NET, FsGrid
from xos.wire import hostid
from xos.wire.hostid import HostIdentity


@pytest.fixture(scope="module")
def grid():
    with FsGrid(osds=2, clients=1) as g:
        g.mkvol("tls", replicas=2)
        yield g


def _stranger(grid: FsGrid, name: str, roles: list[str]) -> HostIdentity:
    """A host whose certificate comes from another CA than the grid's."""
    ca = os.path.join(grid.base, "other-ca")
    if not os.path.exists(os.path.join(ca, "ca.pem")):
        hostid.ca_init(ca, "not the grid's CA")
    return HostIdentity(signed_host(ca, os.path.join(grid.base, "strangers", name), name, roles, [f"{FS_NET}.1"]))


def _host(grid: FsGrid, name: str, roles: list[str]) -> ssl.SSLContext:
    """A client context of a host the grid's CA signed for `roles`."""
    return HostIdentity(signed_host(grid.ca_dir, os.path.join(grid.base, "hosts", name), name, roles)).client_context()


def _addr(url: str) -> tuple[str, int]:
    host, _, port = url.partition("//")[2].rpartition(":")
    return host, int(port)


def test_nothing_of_a_members_files_or_credentials_crosses_the_network_in_clear(grid: FsGrid) -> None:
    """A member mounts the volume, writes a file through the mount (both replicas), and another client reads it
    back through the MRC and the OSDs: every frame on the grid's bridge meanwhile, heartbeats included, holds
    neither the file's bytes, nor the credential, nor any HTTP."""
    marker = secrets.token_hex(16).encode() * 4096  # 128 KiB a capture could not miss
    captured = bytearray()
    cred = grid.credential("alice")
    with capture(captured):
        mp = grid.mount(0, "tls")
        try:
            with open(os.path.join(mp, "secret"), "wb") as f:
                f.write(marker)
                os.fsync(f.fileno())
        finally:
            grid.umount(mp)
        c: Any = grid.client("tls")
        try:
            with c.open("/secret", "rb") as f:
                assert f.read() == marker
        finally:
            c.close()
    assert len(captured) > 2 * len(marker), "the capture saw no file go by"
    for clear in (marker[:64], cred[:60].encode(), b"Authorization", b"X-Xos-Cap", b"HTTP/1.1", b"/v1/"):
        assert clear not in captured, f"{clear[:40]!r} crossed the bridge in clear"


@pytest.mark.parametrize("which", ["mrc", "osd"])
def test_plain_http_gets_no_answer_and_the_osd_says_why(grid: FsGrid, which: str) -> None:
    url = grid.mrc_url if which == "mrc" else grid.osd_url(0)
    got = plain_http_answer(*_addr(url), "/v1/osds")
    assert not got.startswith(b"HTTP/"), f"the {which} answered plain HTTP: {got[:80]!r}"
    if which == "osd":
        with open(os.path.join(grid.base, "osd0.log")) as f:
            assert "TLS from " in f.read(), "the OSD did not say why it dropped the connection"


@pytest.mark.parametrize("which", ["mrc", "osd"])
def test_a_host_certificate_from_another_ca_is_refused(grid: FsGrid, which: str) -> None:
    """A host showing a certificate the grid's CA did not sign gets no further than the handshake, even for a
    call any member may make."""
    url = f"{grid.mrc_url}/v1/osds" if which == "mrc" else f"{grid.osd_url(0)}/v1/status"
    with urllib.request.urlopen(url, timeout=10, context=_host(grid, "osd7", ["osd"])) as r:
        assert r.status == 200  # the same call by a host the grid's CA signed
    ctx = _stranger(grid, "osd0", ["osd"]).client_context()
    ctx.load_verify_locations(grid.ca)  # it trusts the server; the server must not trust it
    with pytest.raises((ssl.SSLError, ConnectionResetError, urllib.error.URLError)):
        with urllib.request.urlopen(url, timeout=10, context=ctx) as r:
            r.read()


@pytest.mark.parametrize("which", ["mrc", "osd"])
def test_a_host_certificate_past_its_time_is_refused(grid: FsGrid, which: str) -> None:
    """The grid's CA signed it, for the right role, but it has expired: no further than the handshake."""
    directory = os.path.join(grid.base, "hosts", "osd-expired")
    _host(grid, "osd-expired", ["osd"])
    resign(grid.ca_dir, directory, days=-1)
    url = f"{grid.mrc_url}/v1/osds" if which == "mrc" else f"{grid.osd_url(0)}/v1/status"
    with pytest.raises((ssl.SSLError, ConnectionResetError, urllib.error.URLError)):
        with urllib.request.urlopen(url, timeout=10, context=HostIdentity(directory).client_context()) as r:
            r.read()


def test_a_client_refuses_a_server_of_another_ca_or_for_another_address(grid: FsGrid) -> None:
    """A member's client gives its credential only to a server whose certificate the grid's CA signed for the
    address it called: a listener with another CA's certificate hears nothing."""
    rogue = TlsListener(_stranger(grid, "mrc", ["mrc"]).server_context(users=True), f"{FS_NET}.1")
    try:
        from xos.fs.client.client import Client

        c = Client(rogue.url, "tls", grid.credential("alice"), ca=grid.ca)
        try:
            with pytest.raises(Unavailable, match="TLS|certificate"):
                c.op("getattr", path="/")
        finally:
            c.close()
    finally:
        rogue.close()
    assert bytes(rogue.heard) == b"", "the credential went to a server the grid's CA never signed"
    host, port = _addr(grid.mrc_url)
    with socket.create_connection((host, port), timeout=10) as s, pytest.raises(ssl.SSLCertVerificationError):
        grid.user_tls().wrap_socket(s, server_hostname=f"{FS_NET}.99")  # the MRC's certificate names its own


def test_only_the_file_systems_hosts_act_as_hosts(grid: FsGrid) -> None:
    """Heartbeats and reports are for the OSDs' own certificates: a host of the grid with another role, a member,
    or anyone naming a host in a header (what only a plaintext measurement believes) is refused."""
    body = json.dumps({"id": "osd0", "url": grid.osd_url(0), "capacity": 1, "free": 1, "load": 0}).encode()

    def beat(ctx: ssl.SSLContext, headers: dict[str, str]) -> int:
        req = urllib.request.Request(f"{grid.mrc_url}/v1/osds/heartbeat", data=body, method="POST",
                                     headers={"Content-Type": "application/json", **headers})
        try:
            with urllib.request.urlopen(req, timeout=10, context=ctx) as r:
                return r.status
        except urllib.error.HTTPError as e:
            return e.code

    assert beat(_host(grid, "a-node", ["node"]), {}) in (401, 403)
    assert beat(grid.user_tls(), {"Authorization": f"Bearer {grid.credential('alice')}"}) in (401, 403)
    assert beat(grid.user_tls(), {"X-Xos-Host": "osd osd0"}) in (401, 403)
    assert beat(HostIdentity(os.path.join(grid.base, "osd0", "host")).client_context(), {}) == 200


def test_plaintext_is_refused_outside_tests(tmp_path) -> None:
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k != "XOS_INSECURE_TESTS"}
    p = subprocess.run([sys.executable, "-m", "xos", "serve", "mrc", "--plaintext", "--key", "k", "--listen",
                        "127.0.0.1:0"], capture_output=True, text=True, timeout=60, env=env, cwd=tmp_path)
    assert p.returncode != 0 and "error invalid-input: --plaintext" in p.stderr, p.stderr


def test_an_osd_is_given_only_its_own_key_and_it_seals_for_nobody_else(grid: FsGrid) -> None:
    """Capabilities are sealed per OSD: what an OSD learns from the MRC (its own key, for the host whose
    certificate names it) forges nothing another OSD takes. With one key for all, any OSD could read every
    other OSD's objects with capabilities it made."""
    import asyncio

    from xos.fs import capability
    from xos.fs.capability import Capability

    c: Any = grid.client("tls")
    try:
        with c.open("/sealed", "wb") as f:
            f.write(b"s" * (1 << 20))
        st = c.open_handle("/sealed")
    finally:
        c.close()
    osd0 = HostIdentity(os.path.join(grid.base, "osd0", "host"))
    body = {"id": "osd0", "url": grid.osd_url(0), "capacity": 1, "free": 1, "load": 0}
    status, answer = asyncio.run(_once(hostid.HostLink(grid.mrc_url, osd0.client_context(), ("mrc",)), body))
    assert status == 200
    key0 = base64.b64decode(answer["key"])
    assert key0 == capability.osd_key(open(grid.key, "rb").read().strip(), "osd0")  # its own, no other
    forged = capability.sign(key0, Capability(st.fid, "r", time.time() + 60, st.epoch, st.xloc.version, "alice@vo-a"),
                             ["osd0", "osd1"])  # osd1's seal made with the only key osd0 has
    req = urllib.request.Request(f"{grid.osd_url(1)}/v1/o/{st.fid}/0?off=0&len=16",
                                 headers={"Authorization": f"Bearer {grid.credential('alice')}", "X-Xos-Cap": forged})
    with pytest.raises(urllib.error.HTTPError) as e:
        grid.urlopen(req, timeout=10)
    assert e.value.code in (401, 403) and b"capability-invalid" in e.value.read()


@pytest.mark.parametrize("method, path", [("GET", "/0?off=0&len=16"), ("PUT", "/0?off=0"), ("DELETE", "")])
def test_an_osds_certificate_gives_it_no_right_to_another_osds_objects(grid: FsGrid, method: str, path: str) -> None:
    """Only the MRC acts on an OSD's objects without a capability: osd0's own certificate reads, writes and
    deletes nothing on osd1 (with the service tokens, any OSD could do all three on every other)."""
    c: Any = grid.client("tls")
    try:
        with c.open("/neighbour", "wb") as f:
            f.write(b"n" * (1 << 20))
        fid = c.replicas("/neighbour")["fid"]
    finally:
        c.close()
    osd0 = HostIdentity(os.path.join(grid.base, "osd0", "host")).client_context()
    req = urllib.request.Request(f"{grid.osd_url(1)}/v1/o/{fid}{path}", method=method,
                                 data=b"x" if method == "PUT" else None)
    with pytest.raises(urllib.error.HTTPError) as e:
        urllib.request.urlopen(req, timeout=10, context=osd0)
    assert e.value.code in (400, 401, 403), e.value.read()
    c = grid.client("tls")
    try:
        with c.open("/neighbour", "rb") as f:
            assert f.read() == b"n" * (1 << 20)
    finally:
        c.close()


def test_an_osd_takes_a_key_only_from_a_host_whose_certificate_says_mrc(grid: FsGrid) -> None:
    import asyncio

    from xos.errors import PermissionDenied

    rogue = TlsListener(HostIdentity(signed_host(grid.ca_dir, os.path.join(grid.base, "hosts", "fake-mrc"),
                                                 "fake-mrc", ["osd"], [f"{FS_NET}.1"])).server_context(),
                        f"{FS_NET}.1")
    try:
        link = hostid.HostLink(rogue.url, _host(grid, "osd5", ["osd"]), ("mrc",))
        with pytest.raises(PermissionDenied, match="mrc"):
            asyncio.run(_once(link, {"id": "osd5"}))
    finally:
        rogue.close()
    assert bytes(rogue.heard) == b"", "a heartbeat went to a host that is no MRC"


async def _once(link: hostid.HostLink, body: dict[str, Any]) -> tuple[int, Any]:
    """One heartbeat on `link`, closed after."""
    try:
        return await link.call("POST", "/v1/osds/heartbeat", body)
    finally:
        link.close()
