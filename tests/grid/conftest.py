"""The identity site: a node with a UID pool for VO bio, following a VO service over the grid bridge."""

from __future__ import annotations

import os

import pytest

from tests.grid.helpers import POOL, PORT
from xos.testing import TestGrid, TestVOService


@pytest.fixture
def site():
    """A node with a pool for VO bio that follows a VO service over the test grid's bridge."""
    with TestGrid(1, ["--pool", f"bio={POOL[0]}-{POOL[1]}", "--vo-url", f"https://198.18.0.1:{PORT}"]) as grid:
        node = grid.nodes[0]
        node.expect_warning("(revocations|member lists) from .* unavailable")  # until the VO service is up
        with TestVOService(listen=f"198.18.0.1:{PORT}", ca_dir=grid.ca_dir) as vo:
            assert vo.cli("vo", "create", "bio")[0] == 0
            key = os.path.join(vo.home, "vo", "signing.key.pub")
            assert node.cli("node", "trust", "bio", key)[0] == 0
            yield node, vo
            assert vo.unexpected_warnings() == []
        bad = node.unexpected_warnings()
        assert not bad, bad


