"""Read delegations: a mount opens a file it opened to read before again without asking the MRC, and
every change elsewhere has it forget the file first (close-to-open holds across mounts).

One grid (MRC, 1 OSD, 2 client hosts) for the module; mount 1 reads, mount 0 and API clients change.
"""

from __future__ import annotations

import os
import signal
from typing import Any

import pytest

from xos.errors import XosError
from xos.testing import wait_for
from xos.testing.fsgrid import fs_grid


@pytest.fixture(scope="module")
def grid():
    with fs_grid({"data": {}}, [], osds=1, clients=2) as g:
        yield g


@pytest.fixture(scope="module")
def mounts(grid):
    return grid.mount(0, "data"), grid.mount(1, "data")


@pytest.fixture
def api(grid):
    c = grid.client("data")
    yield c
    c.close()


@pytest.fixture
def name(request, mounts):
    """A fresh directory, made through mount 0, with a file `f` in it ("one")."""
    n = request.node.name.replace("[", "_").replace("]", "")
    os.mkdir(os.path.join(mounts[0], n))
    write(os.path.join(mounts[0], n, "f"), b"one")
    return n


def write(path: str, data: bytes) -> None:
    with open(path, "wb") as f:
        f.write(data)


def read(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()


def opens(api: Any) -> int:
    return int(api.mrc("GET", "/v1/stats")["ops"].get("open", 0))


def test_opens_to_read_again_go_to_the_mrc_once(mounts, name, api):
    path = os.path.join(mounts[1], name, "f")
    before = opens(api)
    assert [read(path) for _ in range(5)] == [b"one"] * 5
    assert opens(api) - before == 1
    assert api.mrc("GET", "/v1/stats")["delegated"] >= 1


def _rewrite(m0: str, name: str) -> None:
    write(os.path.join(m0, name, "f"), b"two, longer")


def _truncate(m0: str, name: str) -> None:
    os.truncate(os.path.join(m0, name, "f"), 1)


def _replace(m0: str, name: str) -> None:
    write(os.path.join(m0, name, "g"), b"replaced")
    os.rename(os.path.join(m0, name, "g"), os.path.join(m0, name, "f"))


def _move_parent(m0: str, name: str) -> None:
    os.rename(os.path.join(m0, name), os.path.join(m0, name + "-old"))
    os.mkdir(os.path.join(m0, name))
    write(os.path.join(m0, name, "f"), b"another directory")


def _append_fsync(m0: str, name: str) -> None:
    fd = os.open(os.path.join(m0, name, "f"), os.O_WRONLY | os.O_APPEND)
    try:
        os.write(fd, b" and more")
        os.fsync(fd)
    finally:
        os.close(fd)


CHANGES = {"rewritten": (_rewrite, b"two, longer"), "truncated": (_truncate, b"o"),
           "replaced": (_replace, b"replaced"), "parent moved": (_move_parent, b"another directory"),
           "appended and synced": (_append_fsync, b"one and more")}


@pytest.mark.parametrize("change", list(CHANGES))
def test_a_change_on_another_mount_shows_at_the_next_open(mounts, name, api, change):
    m0, m1 = mounts
    path = os.path.join(m1, name, "f")
    assert read(path) == b"one"
    before = opens(api)
    assert read(path) == b"one"
    assert opens(api) == before  # delegated: the open asked nothing
    fn, want = CHANGES[change]
    fn(m0, name)
    assert read(path) == want
    assert os.stat(path).st_size == len(want)


def test_changes_made_here_are_seen_here(mounts, name):
    m1 = mounts[1]
    path = os.path.join(m1, name, "f")
    assert read(path) == b"one"
    assert read(path) == b"one"  # delegated
    write(path, b"written on the holder")  # its own session: no recall, the mount forgets it itself
    assert read(path) == b"written on the holder"
    os.truncate(path, 7)
    assert read(path) == b"written"
    write(os.path.join(m1, name, "g"), b"renamed over")
    assert read(path) == b"written"
    os.rename(os.path.join(m1, name, "g"), path)
    assert read(path) == b"renamed over"


def test_a_holder_that_stops_answering_holds_a_change_up_for_a_term_only(grid, mounts, name):
    m0, m1 = mounts
    path = os.path.join(m1, name, "f")
    assert read(path) == b"one" and read(path) == b"one"
    holder = grid.mount_proc(m1)
    holder.send(signal.SIGSTOP)
    try:
        write(os.path.join(m0, name, "f"), b"while it slept")  # the close waits out the holder's term
    finally:
        holder.send(signal.SIGCONT)
    # Its term ran out while it was stopped: it asks the MRC again, whatever its recall poll does meanwhile.
    assert read(path) == b"while it slept"


def test_an_mrc_restarted_does_not_inherit_delegations(grid, mounts, name, api):
    m1 = mounts[1]
    path = os.path.join(m1, name, "f")
    assert read(path) == b"one" and read(path) == b"one"
    grid.mrc.procs[0].stop(signal.SIGKILL)
    grid.start_mrc()
    with api.open(f"/{name}/f", "wb") as f:  # a change the new MRC knows nothing to recall for
        f.write(b"after the restart")
    assert read(path) == b"after the restart"


@pytest.mark.parametrize("body", [{"wait": "soon"}, {"ack": 7}, {"wait": True}])
def test_bad_recall_polls_are_refused(api, body):
    with pytest.raises(XosError) as e:
        api.op("recalls", **body)
    assert e.value.code == "invalid-input"


def test_a_bad_delegate_flag_is_refused(mounts, name, api):
    with pytest.raises(XosError) as e:
        api.op("open", path=f"/{name}/f", delegate="yes")
    assert e.value.code == "invalid-input"
    assert "delegated" not in api.op("open", path=f"/{name}/f", write=True, delegate=True)  # to write: never


def test_files_written_here_are_read_back_without_asking(mounts, api):
    m1 = mounts[1]
    d = os.path.join(m1, "copied")
    os.mkdir(d)  # leased here: the files are made here and sent in batches, delegated to this mount
    for i in range(20):
        write(os.path.join(d, f"c{i}"), b"copy %d" % i)
    assert sorted(api.listdir("/copied")) == sorted(f"c{i}" for i in range(20))  # recalled: all sent
    before = opens(api)
    assert [read(os.path.join(d, f"c{i}")) for i in range(20)] == [b"copy %d" % i for i in range(20)]
    assert opens(api) == before
    with api.open("/copied/c3", "wb") as f:  # and recalled like any other
        f.write(b"changed")
    assert read(os.path.join(d, "c3")) == b"changed"


def test_a_made_batch_with_a_bad_delegate_flag_makes_nothing(mounts, name, api):
    ino = api.op("getattr", path=f"/{name}")["ino"]
    r = api.op("changes", changes=[{"op": "made", "dir": ino, "files": [["x", 0, 0o644, 1.0e9]], "delegate": "yes"}])
    assert r["answers"][0]["error"]["code"] == "invalid-input"
    assert "x" not in api.listdir(f"/{name}")


def test_files_linked_into_place_here_are_read_back_without_asking(mounts, api):
    m1 = mounts[1]
    d = os.path.join(m1, "objects")
    os.mkdir(d)  # as git makes an object: written under a temporary name, linked into place, the name removed
    write(os.path.join(d, "tmp_a"), b"object a")
    os.link(os.path.join(d, "tmp_a"), os.path.join(d, "a"))
    os.unlink(os.path.join(d, "tmp_a"))
    made = made_batches(api)
    write(os.path.join(d, "tmp_b"), b"object b")
    wait_for(lambda: made_batches(api) > made, 10, "the file made here to reach the MRC")  # the lease stays
    os.link(os.path.join(d, "tmp_b"), os.path.join(d, "b"))  # in a later batch than the file
    os.unlink(os.path.join(d, "tmp_b"))
    assert sorted(api.listdir("/objects")) == ["a", "b"]  # recalled: all sent
    before = opens(api)
    assert read(os.path.join(d, "a")) == b"object a" and read(os.path.join(d, "b")) == b"object b"
    assert opens(api) == before
    assert os.stat(os.path.join(d, "a")).st_nlink == 1 and os.stat(os.path.join(d, "b")).st_nlink == 1


def made_batches(api: Any) -> int:
    return int(api.mrc("GET", "/v1/stats")["ops"].get("made", 0))
