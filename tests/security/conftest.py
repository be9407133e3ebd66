"""Fixtures for attacks on the line between a node's root and its guests: one node pooling VO bio."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator

import pytest

from tests.security.helpers import keys
from xos.identity import credential
from xos.testing import TestGrid, TestNode

POOL = "bio=35000-35099"


@pytest.fixture
def grid() -> Iterator[TestGrid]:
    """One node that pools VO bio (whose key the test holds), for attacks and the logins after them; its log
    must hold no undeclared warning."""
    base = tempfile.mkdtemp(prefix="xos-sec-")
    try:
        key = credential.new_key(os.path.join(base, "bio.key"))
        with TestGrid(1, ["--pool", POOL]) as g:
            node = g.nodes[0]
            assert node.cli("node", "trust", "bio", os.path.join(base, "bio.key.pub"))[0] == 0
            keys[node.tag] = key
            yield g
            bad = [w for n in g.nodes for w in n.unexpected_warnings()]
            assert not bad, f"unexpected warnings in the node log: {bad}"
    finally:
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture
def node(grid: TestGrid) -> TestNode:
    """The single node of `grid`."""
    return grid.nodes[0]
