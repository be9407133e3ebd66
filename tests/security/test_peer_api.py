"""Attacks through a node's peer API with the grid's key, as a job manager or another node holds it (or as
whoever captured it): the key is no user's, so it can make no workspace run as root, as a local account, or
for a grid identity without that identity's own credential, and it reaches no workspace of a local account."""

from __future__ import annotations

import json
import os
import tarfile

from tests.security.conftest import GUEST, _keys, error_code, node_still_serves, peer_get
from xos import credential
from xos.testing import TestGrid, TestNode, wait_for


def _names(node: TestNode) -> list[str]:
    with node.client() as c:
        return [w["name"] for w in c.ls()]


def test_a_peer_cannot_choose_who_a_workspace_runs_as(grid: TestGrid, node: TestNode) -> None:
    node.expect_warning("peer API: refused a workspace")
    token, _ = credential.issue(_keys[node.tag], "alice", "bio", ["member"], [], 600)
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
    token, _ = credential.issue(_keys[node.tag], "alice", "bio", ["member"], [], 600)
    member = _image_tar(grid, node, "mem", credential=token)
    assert node.cli("node", "untrust", "bio")[0] == 0
    try:
        wait_for(lambda: not _accepted(grid, node, token), 10, "the node to stop accepting bio's credentials")
        status, answer = peer_get(grid, node, "/v1/peer/restore?name=mem2", method="PUT", body=member, timeout=60)
        assert (status, error_code(answer)) == (400, "image-refused") and b"not accepted here" in answer, answer
    finally:
        pub = os.path.join(grid.base, "bio.pub")
        with open(pub, "wb") as f:
            f.write(credential.public_pem(_keys[node.tag].public_key()))
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
