"""The mount's native table of nodes (native/fs/gridfuse.c) against a model: paths, names and listings
stay right under any mix of lookups, listings, renames and removals.

The table is what turns the kernel's node ids into the paths the MRC is asked by; a wrong path
there is a request about another file."""

from __future__ import annotations

import errno
import itertools
import os
import stat
import time

from hypothesis import given, settings
from hypothesis import strategies as st

from xos._native._fuse import ffi, lib

ROOT = 1
_examples = itertools.count(1)
TTL = 3600.0  # nothing expires during a test
NAMES = ["a", "b", "c", "dir", "x y", "é"]


class Model:
    """What the table should hold: (parent id, name) -> (node id, ino); ids of nodes whose name went."""

    def __init__(self) -> None:
        self.names: dict[tuple[int, str], tuple[int, int]] = {}

    def path(self, node: int) -> str | None:
        if node == ROOT:
            return "/"
        parts = []
        while node != ROOT:
            where = next(((p, n) for (p, n), (i, _) in self.names.items() if i == node), None)
            if where is None:
                return None
            node = where[0]
            parts.append(where[1])
        return "/" + "/".join(reversed(parts))


def _attr(ino: int) -> object:
    a = ffi.new("struct xf_attr *")
    a.ino, a.mode, a.nlink, a.size = ino, 0o40755, 2, 0
    return a


def _path(node: int) -> str | None:
    buf = ffi.new("char[]", 4096)
    n = lib.xf_path(node, buf, 4096)
    if n == -errno.ENOENT:
        return None
    assert n >= 0, n
    return ffi.string(buf, n).decode()


def _peek(parent: int, name: str) -> int:
    out = ffi.new("struct xf_attr *")
    return out.ino if lib.xf_peek(parent, name.encode(), out) else 0


ops = st.lists(st.tuples(st.sampled_from(["entry", "fill", "move", "drop"]), st.integers(0, 50),
                         st.sampled_from(NAMES), st.integers(0, 50), st.sampled_from(NAMES),
                         st.integers(1, 6)), min_size=1, max_size=60)


@settings(max_examples=300, deadline=None)
@given(ops)
def test_the_table_agrees_with_a_model(seq):
    m = Model()
    # a fresh directory under the root per example, with inos of its own: earlier examples' nodes stay
    base = 10**6 * next(_examples)
    top = lib.xf_entry(ROOT, f"t{base}".encode(), _attr(base), TTL, 0)
    m.names[(ROOT, f"t{base}")] = (top, base)
    for op, p, name, q, name2, ino in seq:
        dirs = [top] + sorted({i for i, _ in m.names.values() if i != top})
        parent, parent2 = dirs[p % len(dirs)], dirs[q % len(dirs)]
        if m.path(parent) is None or m.path(parent2) is None:
            continue
        ino += base
        if op == "entry":
            node = lib.xf_entry(parent, name.encode(), _attr(ino), TTL, 1)
            old = m.names.get((parent, name))
            if old is not None and old[1] == ino:
                assert node == old[0], "the same file under the same name keeps its node"
            else:
                assert node not in {i for i, _ in m.names.values()}, "another file gets a node of its own"
            m.names[(parent, name)] = (node, ino)
        elif op == "fill":
            keep = sorted({name, name2})
            attrs = ffi.new("struct xf_attr[]", [(ino + k, 0o40755, 2, 0, 0, 0, 0, 0, 0) for k in range(len(keep))])
            lib.xf_fill(parent, b"".join(n.encode() + b"\0" for n in keep), attrs, len(keep), TTL, 0)
            for key in [k for k in m.names if k[0] == parent and k[1] not in keep]:
                del m.names[key]
            for k, n in enumerate(keep):
                got = _peek(parent, n)
                assert got == ino + k
                old = m.names.get((parent, n))
                if old is None or old[1] != ino + k:
                    m.names[(parent, n)] = (-1, ino + k)  # a node the model learns below
        elif op == "move":
            if (parent, name) not in m.names or parent2 == m.names[(parent, name)][0] or (parent, name) == (
                    parent2, name2):
                continue
            moving = m.names[(parent, name)][0]
            if moving in _ancestors(m, parent2):
                continue  # the MRC refuses a directory moved into itself
            lib.xf_move(parent, name.encode(), parent2, name2.encode())
            m.names.pop((parent2, name2), None)
            m.names[(parent2, name2)] = m.names.pop((parent, name))
        else:
            lib.xf_drop(parent, name.encode())
            m.names.pop((parent, name), None)
        _learn(m)
        for (par, n), (node, ino_) in m.names.items():
            assert _peek(par, n) == ino_
            assert _path(node) == m.path(node)


def _ancestors(m: Model, node: int) -> set[int]:
    seen = {node}
    while node != ROOT:
        up = next((p for (p, _), (i, _) in m.names.items() if i == node), None)
        if up is None:
            break
        seen.add(up)
        node = up
    return seen


def _learn(m: Model) -> None:
    """Node ids the model could not predict (a listing made them): the table's, found by name."""
    for (par, n), (node, ino) in list(m.names.items()):
        if node == -1:
            m.names[(par, n)] = (lib.xf_entry(par, n.encode(), _attr(ino), TTL, 0), ino)


def test_a_path_that_does_not_fit_is_refused_not_cut():
    node = ROOT
    for i in range(20):
        node = lib.xf_entry(node, (f"n{i}-" + "x" * 200).encode(), _attr(9 * 10**9 + i), TTL, 1)
    buf = ffi.new("char[]", 256)
    assert lib.xf_path(node, buf, 256) == -errno.ENAMETOOLONG
    assert _path(node).count("/") == 20


def _sized(ino: int, size: int) -> object:
    a = ffi.new("struct xf_attr *")
    a.ino, a.mode, a.nlink, a.size = ino, 0o100644, 1, size
    return a


def test_an_answer_older_than_a_change_made_here_is_neither_kept_nor_told():
    """A request that asked the MRC before a change made here (a close sending a new size) reached it must
    not put that answer in the table, nor tell it to the kernel (-EAGAIN: asked again); one that began
    after the change may."""
    ino = 8 * 10**9
    node = lib.xf_entry(ROOT, b"overtaken", _sized(ino, 0), TTL, 0)
    seen = ffi.new("struct xf_attr *")
    lib.xf_begin()
    try:
        lib.xf_forget_attr(node)  # closed here: its new size is at the MRC now
        lib.xf_set_attr(node, _sized(ino, 5), TTL)  # what the MRC said before
        assert lib.xf_attr_of(node, seen) and seen.size == 0
        assert lib.xf_entry(ROOT, b"overtaken", _sized(ino, 5), TTL, 0) == node
        assert lib.xf_attr_of(node, seen) and seen.size == 0
        assert lib.xf_reply_attr(ffi.NULL, node, _sized(ino, 5), TTL, 1) == -errno.EAGAIN
        assert lib.xf_reply_entry(ffi.NULL, ROOT, b"overtaken", _sized(ino, 5), TTL) == -errno.EAGAIN
    finally:
        lib.xf_end()
    lib.xf_begin()
    try:
        lib.xf_set_attr(node, _sized(ino, 7), TTL)  # asked after the change
        assert lib.xf_attr_of(node, seen) and seen.size == 7
    finally:
        lib.xf_end()
    lib.xf_drop(ROOT, b"overtaken")


def _owned(ino: int, mode: int) -> object:
    a = ffi.new("struct xf_attr *")
    a.ino, a.mode, a.nlink, a.size = ino, mode, 2 if stat.S_ISDIR(mode) else 1, 0
    a.uid = os.getuid()
    return a


def test_a_change_queued_here_holds_back_only_requests_it_shows_in():
    """A name removed here under a lease waits in a queue for the MRC; a request whose answer it shows (about
    its directory, or a name on its path) must wait until the MRC has it, queued or taken by the sender and
    not answered yet. A listing of a sibling directory must not: rm -rf lists each directory right after
    removing names beside it, and waited for every batch."""
    lib.xf_owner(os.getuid())
    ino = 7 * 10**9
    top = lib.xf_entry(ROOT, b"queued", _owned(ino, 0o40755), TTL, 1)
    kids = [(b"a", _owned(ino + 1, 0o40755)), (b"b", _owned(ino + 2, 0o40755)), (b"f", _owned(ino + 3, 0o100644))]
    a, b, f = (lib.xf_entry(top, n, attr, TTL, 1) for n, attr in kids)
    lib.xf_fill(top, b"a\0b\0f\0", ffi.new("struct xf_attr[]", [attr[0] for _, attr in kids]), 3, TTL, 1)
    lib.xf_fill(b, b"", ffi.new("struct xf_attr[]", 1), 0, TTL, 1)
    inner = lib.xf_entry(a, b"inner", _owned(ino + 4, 0o40755), TTL, 1)
    taken = ffi.new("struct xf_made[]", 16)
    lib.xf_lease(top, ino, time.monotonic() + 60, 0, 0, 0)
    lib.xf_lease(b, ino + 2, time.monotonic() + 60, 0, 0, 0)
    try:
        assert lib.xf_unlink_here(top, b"f") == 1
        assert lib.xf_made_touches(top, 0) and lib.xf_made_touches(ROOT, 0)  # its directory, and the one listing it
        assert lib.xf_made_touches(f, 0)  # the name removed
        assert not lib.xf_made_touches(a, 0) and not lib.xf_made_touches(inner, 0)
        assert lib.xf_take_made(taken, 16, 0) == 1  # on its way: still shown until the MRC answers
        assert lib.xf_made_touches(top, 0) and not lib.xf_made_touches(a, 0)
        lib.xf_made_sent()
        assert not lib.xf_made_touches(top, 0) and not lib.xf_made_touches(f, 0)
        assert lib.xf_rmdir_here(top, b"b") == ino + 2
        assert lib.xf_made_touches(b, 0) and lib.xf_made_touches(top, 0)
        assert not lib.xf_made_touches(a, 0) and not lib.xf_made_touches(inner, 0)
    finally:
        lib.xf_lease(top, ino, 0, 0, 0, 0)
        while lib.xf_take_made(taken, 16, 0):
            pass
        lib.xf_made_sent()
        lib.xf_drop(ROOT, b"queued")
