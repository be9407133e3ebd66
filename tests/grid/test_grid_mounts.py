"""A workspace's own grid file system mount: its processes keep files open there across checkpoint,
restore and migration, with the real CRIU, FUSE and file system services."""

from __future__ import annotations

import os

import pytest

from tests.workloads import PY
from xos.checkpoint import criu
from xos.identity import credential
from xos.testing import TestGrid, wait_for
from xos.testing.fsgrid import FsGrid

# Appends a number a line to a file it holds open on the grid mount, and to one in its directory.
WRITER = """
import os, time
grid = open("/run/xos-work/grid/data/count.log", "a", buffering=1)
i = 0
while True:
    i += 1
    grid.write(f"{i}\\n")
    grid.flush()
    os.fsync(grid.fileno())
    with open("progress.new", "w") as f:
        f.write(str(i))
    os.replace("progress.new", "progress")  # a reader never sees it empty
    time.sleep(0.02)  # the program's own pace, not a wait of the test
"""


@pytest.fixture
def site(tmp_path):
    assert criu.find().ok, criu.find().reason
    key = credential.new_key(str(tmp_path / "bio.key"))
    with TestGrid(2, ["--pool", "bio=33000-33999"]) as grid, FsGrid(osds=1, clients=0, ca_dir=grid.ca_dir) as fs:
        fs.add_vo("bio", key)
        fs.mkvol("data", "alice", "bio")
        for n in grid.nodes:
            assert n.cli("node", "trust", "bio", str(tmp_path / "bio.key.pub"))[0] == 0
            fs.attach(n.netns_path)
        yield grid, fs
        bad = [w for n in grid.nodes for w in n.unexpected_warnings()]
        assert not bad, bad


def _grid_lines(fs):
    c = fs.client("data", "alice", "bio")
    try:
        with c.open("/count.log", "rb") as f:
            return f.read().decode().split()
    except OSError:
        return []
    finally:
        c.close()


def _progress(ws):
    try:
        with open(os.path.join(ws["directory"], "progress")) as f:
            return int(f.read())
    except FileNotFoundError:
        return 0


def test_a_file_held_open_on_the_grid_mount_survives_checkpoint_restore_and_migration(site, tmp_path):
    grid, fs = site
    a, b = grid.nodes
    token = fs.credential("alice", "bio")
    with a.client() as ca, b.client() as cb:
        ws = ca.create("w", main=[PY, "-c", WRITER], out="out.log", credential=token, grid=[f"{fs.mrc_url}/data"])
        wait_for(lambda: _progress(ws) >= 20, 30, "the writer to write through its grid mount")
        assert _grid_lines(fs)[:3] == ["1", "2", "3"]  # the main program found its mount there at once

        image = str(tmp_path / "w.img")
        ca.checkpoint("w", image)
        ws = ca.restore(image)
        n = _progress(ws)
        wait_for(lambda: _progress(ws) >= n + 20, 30, "the writer to go on after the restore")

        ca.migrate("w", b.name)
        moved = cb.stat("w")
        n = _progress(moved)
        wait_for(lambda: _progress(moved) >= n + 20, 30, "the writer to go on at the other node")
        cb.rm("w")
    nums = [int(x) for x in _grid_lines(fs)]
    assert nums == list(range(1, len(nums) + 1)) and len(nums) >= 60  # the same open file, no gap, no repeat


def test_grid_mounts_are_refused_without_a_credential_or_with_a_bad_volume(site):
    grid, fs = site
    grid.nodes[0].expect_warning("grid-mount-failed")  # an MRC it cannot reach is the node's to report
    with grid.nodes[0].client() as c:
        token = fs.credential("alice", "bio")
        closed = fs.mrc_url.rsplit(":", 1)[0] + ":9"  # the MRC's host, a port nothing listens on
        for kw, why in (({"grid": [f"{fs.mrc_url}/data"]}, "need the workspace's credential"),
                        ({"grid": ["not a url"], "credential": token}, "MRC_URL/VOLUME"),
                        ({"grid": [f"{closed}/data"], "credential": token}, "grid file system client"),
                        ({"grid": [f"{fs.mrc_url}/nosuchvolume"], "credential": token}, "grid file system client")):
            with pytest.raises(Exception) as e:
                c.create("bad", main=[PY, "-c", "pass"], **kw)
            assert why in str(e.value), str(e.value)
        assert c.ls() == [] and not os.listdir(os.path.join(grid.nodes[0].run, "grid"))  # nothing half-made


def test_a_restarted_node_keeps_the_mount_serving_and_stops_its_client_with_the_workspace(site):
    import signal
    import subprocess

    grid, fs = site
    a = grid.nodes[0]
    a.expect_warning(".*")  # killed on purpose: its restart reports what it finds
    with a.client() as c:
        ws = c.create("w", main=[PY, "-c", WRITER], credential=fs.credential("alice", "bio"),
                      grid=[f"{fs.mrc_url}/data"])
    wait_for(lambda: _progress(ws) >= 5, 30, "the writer")
    a.stop(signal.SIGKILL)
    a.start()
    n = _progress(ws)
    wait_for(lambda: _progress(ws) >= n + 10, 30, "the writer to go on through a node restart")

    def clients() -> list[str]:
        out = subprocess.run(["pgrep", "-af", f"fs mount {fs.mrc_url}/data"], capture_output=True, text=True).stdout
        return [line for line in out.splitlines() if "pgrep" not in line]

    assert len(clients()) == 1
    with a.client() as c:
        c.rm("w")
    assert clients() == []  # the previous daemon's client went with the workspace
