"""`xos fs ...` as a user types it, from a client host of a test grid."""

from __future__ import annotations

import json
import os
import signal

import pytest

from xos.testing import wait_for
from xos.testing.fsgrid import FsGrid


@pytest.fixture(scope="module")
def grid():
    with FsGrid(osds=3, clients=1) as g:
        yield g


def test_volumes_osds_mount_stat_cp_umount(grid, tmp_path):
    cred = grid.cred_file("alice")
    mrc = ["--mrc", grid.mrc_url, "--cred", cred]
    code, out, _ = grid.cli("fs", "mkvol", "cli", *mrc, "--stripe-size", "64K", "--stripe-width", "2",
                            "--replicas", "1")
    assert code == 0 and "volume cli created" in out, out
    code, out, _ = grid.cli("fs", "lsvol", *mrc, "--json")
    vol = next(v for v in json.loads(out) if v["name"] == "cli")
    assert (vol["vo"], vol["stripe_size"], vol["stripe_width"]) == ("vo-a", 65536, 2)
    code, out, _ = grid.cli("fs", "osds", *mrc)
    assert code == 0 and out.count(" up ") == 3, out

    mp = os.path.join(grid.base, "climnt")
    os.mkdir(mp)
    code, out, _ = grid.cli("fs", "mount", f"{grid.mrc_url}/cli", mp, "--cred", cred)
    assert code == 0 and "mounted" in out, out
    try:
        local = tmp_path / "in"
        payload = os.urandom(1 << 20)
        local.write_bytes(payload)
        code, out, _ = grid.cli("fs", "cp", str(local), os.path.join(mp, "copied"))
        assert code == 0 and "copied 1048576 bytes" in out, out
        with open(os.path.join(mp, "copied"), "rb") as f:
            assert f.read() == payload
        code, out, _ = grid.cli("fs", "stat", os.path.join(mp, "copied"), "--json")
        info = json.loads(out)
        assert info["attrs"]["size"] == 1 << 20 and len(info["xloc"]["replicas"][0]["osds"]) == 2
        code, out, _ = grid.cli("fs", "stat", os.path.join(mp, "copied"))
        assert "striping: 65536 bytes x 2 OSD(s)" in out and "replica 0:" in out, out
        code, out, _ = grid.cli("fs", "readonly", os.path.join(mp, "copied"))
        assert code == 0 and "read-only" in out, out
        with pytest.raises(PermissionError):
            open(os.path.join(mp, "copied"), "r+b")
        code, out, _ = grid.cli("fs", "replicate", os.path.join(mp, "copied"))
        assert code == 0 and "replica added" in out and out.count("replica ") >= 3, out
        code, out, _ = grid.cli("fs", "cp", f"{grid.mrc_url}/cli/copied", str(tmp_path / "out"), "--cred", cred)
        assert code == 0 and (tmp_path / "out").read_bytes() == payload, out
    finally:
        code, out, _ = grid.cli("fs", "umount", mp)
    assert code == 0 and "unmounted" in out
    wait_for(lambda: not os.path.ismount(mp), 10, "the mount to go")
    code, out, _ = grid.cli("fs", "rmvol", "cli", *mrc)
    assert code == 0 and "removed" in out


@pytest.mark.parametrize("args,code_word", [
    (["fs", "mkvol", "bad", "--stripe-size", "3K"], "invalid-input"),
    (["fs", "mkvol", "b/d"], "invalid-input"),
    (["fs", "mkvol", "x", "--replicas", "0"], "invalid-input"),
    (["fs", "rmvol", "nosuchvolume"], "not-found"),
])
def test_bad_input_is_one_line_with_a_code(grid, args, code_word):
    code, out, _ = grid.cli(*args, "--mrc", grid.mrc_url, "--cred", grid.cred_file("alice"))
    lines = [ln for ln in out.splitlines() if ln.strip()]
    assert code != 0 and len(lines) == 1 and lines[0].startswith(f"xos: error {code_word}:"), out


def test_mounting_what_cannot_be_mounted_says_why(grid, tmp_path):
    mp = tmp_path / "m"
    mp.mkdir()
    code, out, _ = grid.cli("fs", "mount", f"{grid.mrc_url}/nosuchvolume", str(mp), "--cred",
                            grid.cred_file("alice"))
    assert code != 0 and "no volume 'nosuchvolume'" in out, out
    forged = tmp_path / "forged.cred"
    forged.write_text(grid.credential("alice")[:-4] + "AAAA")
    code, out, _ = grid.cli("fs", "mount", f"{grid.mrc_url}/x", str(mp), "--cred", str(forged))
    assert code != 0 and "credential" in out, out
    assert not os.path.ismount(mp)


def test_copies_and_replication_draw_their_progress_on_a_terminal(grid, tmp_path):
    grid.mkvol("prog", replicas=1, stripe_width=1)
    mp = grid.mount(0, "prog")
    local = tmp_path / "big"
    local.write_bytes(os.urandom(24 << 20))
    dst = os.path.join(mp, "big")
    code, out, shown = grid.cli("fs", "cp", str(local), dst, tty=True)
    assert code == 0 and "copied 25165824 bytes" in out and "100.0% 24 MiB" in shown, (out, shown)
    code, out, _ = grid.cli("fs", "readonly", dst)
    assert code == 0, out
    code, out, _ = grid.cli("fs", "stat", dst, "--json")
    holder = json.loads(out)["xloc"]["replicas"][0]["osds"][0]
    spare = next(h for h in grid.osds if h.name != holder)
    osd = spare.procs[0]
    osd.send(signal.SIGSTOP)  # the copy waits at its first object while the bar shows where it is
    try:
        run = grid.start_cli("fs", "replicate", dst, "--osd", spare.name, tty=True)
        wait_for(lambda: "  0.0% 0 MiB" in run.shown(), 30, "the bar of a copy that has not begun")
    finally:
        osd.send(signal.SIGCONT)
    code, out, shown = run.wait()
    assert code == 0 and "replica added" in out and "100.0% 24 MiB" in shown, (out, shown)
    assert f"replica 1: {spare.name} ({grid.scheme}://{spare.address}:" in out, out
    with open(dst, "rb") as f:
        assert f.read() == local.read_bytes()
