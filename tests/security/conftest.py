"""Helpers for attacks on the line between a node's root and its guests."""

from __future__ import annotations

import json
import os
import urllib.error
import urllib.request
from typing import Any

from xos.testing import TestGrid, TestNode

GUEST = 1000  # an ordinary local uid, as a workspace user
PY = "/usr/bin/python3"  # /root is 0700: workspace users cannot reach the venv's python


def peer_get(grid: TestGrid, node: TestNode, path: str, timeout: float = 10) -> tuple[int, bytes]:
    """GET on the node's peer API with the grid's key (what a job manager does); (status, body)."""
    with open(os.path.join(grid.base, "peer.key")) as f:
        key = f.read().strip()
    req = urllib.request.Request(node.peer_url + path, headers={"Authorization": f"Bearer {key}"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def error_code(body: bytes) -> str:
    """The stable code of an error answer."""
    data: Any = json.loads(body)
    return str(data["error"]["code"])


def node_still_serves(node: TestNode) -> None:
    """The node answers its socket and lists its workspaces: one attack did not take it down."""
    with node.client() as c:
        names = [w["name"] for w in c.ls()]
        c.create("after-attack", uid=GUEST, gid=GUEST)
        assert "after-attack" in [w["name"] for w in c.ls()], names
        c.rm("after-attack")
