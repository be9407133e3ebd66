"""Attacks through a node's peer API with the grid's key, as a job manager or another node holds it (or as
whoever captured it): the key is no user's, so it can make no workspace run as root, as a local account, or
for a grid identity without that identity's own credential, and it reaches no workspace of a local account."""

from __future__ import annotations

import json
import os
import tarfile
import urllib.request
from typing import Any

import pytest

from tests.security.helpers import (
    GUEST,
    TlsListener,
    capture,
    error_code,
    keys,
    node_still_serves,
    peer_get,
    resign,
)
from tests.workloads import PY
from xos.identity import credential
from xos.testing import TestGrid, TestNode, tls_call, wait_for
from xos.wire import hostid


def _names(node: TestNode) -> list[str]:
    with node.client() as c:
        return [w["name"] for w in c.ls()]


def test_a_peer_cannot_choose_who_a_workspace_runs_as(grid: TestGrid, node: TestNode) -> None:
    node.expect_warning("peer API: refused a workspace")
    token, _ = credential.issue(keys[node.tag], "alice", "bio", ["member"], [], 600)
    for body in ({"name": "p0", "uid": 0, "gid": 0}, {"name": "p1", "uid": GUEST, "gid": GUEST},
                 {"name": "p2", "vo": "bio", "user": "alice"}, {"name": "p3"},
                 {"name": "p4", "credential": token, "uid": 0, "gid": 0},
                 {"name": "p5", "credential": token, "vo": "bio", "user": "bob"}):
        status, answer = peer_get(grid, node, "/v1/peer/workspaces", method="POST", body=json.dumps(body).encode())
        assert (status, error_code(answer)) == (403, "permission-denied"), (body, answer)
    assert not [n for n in _names(node) if n.startswith("p")]
    # with the owner's credential it is the owner's workspace, as a job manager makes it
    status, answer = peer_get(grid, node, "/v1/peer/workspaces", method="POST",
                              body=json.dumps({"name": "pj", "credential": token}).encode())
    assert status == 201, answer
    assert json.loads(answer)["owner"]["user"] == "alice"
    with node.client() as c:
        c.rm("pj")
    node_still_serves(node)


def test_a_peer_sees_and_touches_no_local_accounts_workspace(grid: TestGrid, node: TestNode) -> None:
    with node.client() as c:
        c.create("local", uid=GUEST, gid=GUEST, main=["/bin/sleep", "600"])
    try:
        status, answer = peer_get(grid, node, "/v1/peer/workspaces")
        assert status == 200 and "local" not in [w["name"] for w in json.loads(answer)]
        for method, path in (("GET", ""), ("GET", "/file?file=x"), ("POST", "/kill"), ("POST", "/freeze"),
                             ("POST", "/checkpoint"), ("POST", "/migrate"), ("DELETE", "")):
            status, answer = peer_get(grid, node, f"/v1/peer/workspaces/local{path}", method=method,
                                      body=b"{}" if method == "POST" else None)
            assert (status, error_code(answer)) == (404, "not-found"), (method, path, answer)
        with node.client() as c:
            st = c.stat("local")
        assert st["state"] == "running" and st["processes"] >= 1
    finally:
        with node.client() as c:
            c.rm("local")
    node_still_serves(node)


def _image_tar(grid: TestGrid, node: TestNode, name: str, **create: object) -> bytes:
    with node.client() as c:
        c.create(name, main=["/bin/sleep", "600"], **create)
        image = os.path.join(node.home, f"{name}.img")
        c.checkpoint(name, image)  # and gone from the node
    tar = os.path.join(grid.base, f"{name}.tar")
    with tarfile.open(tar, "w") as t:
        for top in sorted(os.listdir(image)):
            t.add(os.path.join(image, top), arcname=top)
    with open(tar, "rb") as f:
        return f.read()


def test_a_peer_image_of_a_local_account_or_an_untrusted_member_is_refused(grid: TestGrid, node: TestNode) -> None:
    """A workspace comes from another host only for a grid identity whose credential the node accepts now
    (or as the node's account for nobody in particular): a local account's image, or a member's whose VO
    the node no longer trusts, is not restored."""
    node.expect_warning("restore failed|refused")
    local = _image_tar(grid, node, "loc", uid=GUEST, gid=GUEST)
    status, answer = peer_get(grid, node, "/v1/peer/restore?name=loc2", method="PUT", body=local, timeout=60)
    assert (status, error_code(answer)) == (400, "image-refused"), answer
    token, _ = credential.issue(keys[node.tag], "alice", "bio", ["member"], [], 600)
    member = _image_tar(grid, node, "mem", credential=token)
    assert node.cli("node", "untrust", "bio")[0] == 0
    try:
        wait_for(lambda: not _accepted(grid, node, token), 10, "the node to stop accepting bio's credentials")
        status, answer = peer_get(grid, node, "/v1/peer/restore?name=mem2", method="PUT", body=member, timeout=60)
        assert (status, error_code(answer)) == (400, "image-refused") and b"not accepted here" in answer, answer
    finally:
        pub = os.path.join(grid.base, "bio.pub")
        with open(pub, "wb") as f:
            f.write(credential.public_pem(keys[node.tag].public_key()))
        assert node.cli("node", "trust", "bio", pub)[0] == 0
    assert "loc2" not in _names(node) and "mem2" not in _names(node)
    node_still_serves(node)



def _accepted(grid: TestGrid, node: TestNode, token: str) -> bool:
    """Whether the node makes a workspace for `token`'s owner now (it re-reads a VO's key once a second)."""
    status, _ = peer_get(grid, node, "/v1/peer/workspaces", method="POST",
                         body=json.dumps({"name": "probe", "credential": token}).encode())
    if status == 201:
        with node.client() as c:
            c.rm("probe")
    return status == 201


def test_only_hosts_with_a_certificate_from_the_grids_ca_reach_the_peer_api(grid: TestGrid, node: TestNode) -> None:
    """No shared key: the peer API speaks TLS 1.3 only, to hosts whose certificate the grid's CA signed, still
    valid, for a role that may use it (a node or a job manager; not a file server)."""
    node.expect_warning("peer API: refused")
    url = node.peer_url + "/v1/peer/workspaces"
    with pytest.raises(OSError):  # plain HTTP on the TLS port: no answer at all
        urllib.request.urlopen(url.replace("https://", "http://"), timeout=10)
    with pytest.raises(OSError):  # TLS without a certificate of its own: refused in the handshake
        tls_call(None, url)
    other = os.path.join(grid.base, "other-ca")
    hostid.ca_init(other)
    stranger = os.path.join(grid.base, "hosts", "stranger")
    with open(hostid.host_init(stranger, "stranger", ["aem"]), "rb") as f:
        cert = hostid.ca_sign(other, f.read())
    with open(os.path.join(stranger, "host.pem"), "wb") as f:
        f.write(cert)
    with open(os.path.join(grid.base, "ca", "ca.pem"), "rb") as f:
        hostid.trust(stranger, f.read())
    with pytest.raises(OSError):  # a certificate from another CA
        tls_call(stranger, url)
    expired = grid.host_dir("expired", ["aem"])
    resign(grid.ca_dir, expired, days=-1)
    with pytest.raises(OSError):  # ours, but past its time
        tls_call(expired, url)
    status, answer = tls_call(grid.host_dir("a-file-server", ["osd"]), url)
    assert (status, error_code(answer)) == (403, "permission-denied"), answer
    status, _ = tls_call(grid.host_dir("tester", ["aem"]), url)
    assert status == 200
    node_still_serves(node)


def test_a_migration_crosses_the_network_with_nothing_in_clear(tmp_path: Any) -> None:
    """A workspace's memory and its owner's credential cross the grid's bridge only inside TLS: a capture of
    every frame on the bridge during a migration holds neither (before, the image crossed in clear, and the
    peer key in its headers, which made whoever captured it root on every node)."""
    marker = "xos-capture-marker-" + os.urandom(8).hex()
    with TestGrid(2) as g:
        a, b = g.nodes
        with a.client() as ca:
            ca.create("cap", main=[PY, "-c", f"import signal\nm = {marker!r} * 1000\nsignal.pause()"])
            wait_for(lambda: ca.stat("cap")["processes"] >= 1, 10, "the workload")
            captured = bytearray()
            with capture(captured):
                ca.migrate("cap", b.name)
        with b.client() as cb:
            assert cb.stat("cap")["state"] == "running"
            cb.rm("cap")
    assert len(captured) > 1 << 20, "the capture saw no image go by"
    for clear in (marker.encode(), b"Authorization", b"HTTP/1.1", b"/v1/peer/"):
        assert clear not in captured, f"{clear!r} crossed the bridge in clear"


def test_an_image_goes_only_to_a_host_whose_certificate_says_node(grid: TestGrid, node: TestNode) -> None:
    """A migration's target is checked before any byte of the image goes: a host with a certificate from the
    grid's CA for another role (here a file server) listening where the node was told to send it gets the
    TLS handshake and nothing else."""
    node.expect_warning("migration of .* failed|refused")
    rogue = TlsListener(hostid.HostIdentity(grid.host_dir("rogue", ["osd"])).server_context())
    try:
        with node.client() as c:
            c.create("mover", main=["/bin/sleep", "600"])
            with pytest.raises(Exception) as e:
                c.migrate("mover", rogue.url)
            assert getattr(e.value, "code", "") == "migration-failed" and "permission-denied" in str(e.value)
            assert c.stat("mover")["state"] == "running"
            c.rm("mover")
    finally:
        rogue.close()
    assert bytes(rogue.heard) == b"", "the image, or a request, went to a host that is no node"
    node_still_serves(node)
