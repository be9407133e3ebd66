"""Fixtures: real nodes in their own network namespaces (xos.testing), checked for stray warnings."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from xos.testing import TestGrid, TestNode, leftovers


@pytest.fixture(scope="session", autouse=True)
def nothing_left_behind() -> Iterator[None]:
    """After every test, passed or failed: no namespace, link, mount, cgroup or daemon of a test grid."""
    before = leftovers()
    yield
    left = leftovers() - before
    assert not left, f"tests left behind: {sorted(left)}"


def _require_root() -> None:
    if os.geteuid() != 0:
        pytest.fail("xos tests exercise the kernel and must run as root (make test does)")


@pytest.fixture
def grid() -> Iterator[TestGrid]:
    """One node in a grid; the node's daemon log must hold no undeclared warning."""
    _require_root()
    with TestGrid(1) as g:
        yield g
        bad = [w for n in g.nodes for w in n.unexpected_warnings()]
        assert not bad, f"unexpected warnings in the node log: {bad}"


@pytest.fixture
def node(grid: TestGrid) -> TestNode:
    """The single node of `grid`."""
    return grid.nodes[0]
