"""Checkpoint and restore of a workspace with the real CRIU: memory, process trees, pipes, cwd, uid;
bad images refused with nothing left behind."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tarfile

import pytest

from tests.kernel.helpers import cgroup_dirs
from tests.workloads import COUNTER, MEMORY, PY, TREE, lines
from xos.checkpoint import criu
from xos.testing import node as xos_node
from xos.testing import wait_for


@pytest.fixture(scope="module", autouse=True)
def need_criu():
    c = criu.find()
    assert c.ok, f"checkpoint tests need CRIU >= 4 passing criu check (make setup builds it): {c.reason}"


def test_counter_continues_after_restore_never_restarts(node):
    with node.client() as c:
        ws = c.create("cnt", main=[PY, "-c", COUNTER], out="count.log", memory="256M")
        log = os.path.join(ws["directory"], "count.log")
        wait_for(lambda: len(lines(log)) >= 10, 10, "the counter to count")
        image = os.path.join(node.home, "cnt.img")
        res = c.checkpoint("cnt", image)
        assert res["criu"]["memory_pages_written"] > 0 and res["times"]["dump"] > 0, res
        assert c.ls() == [] and cgroup_dirs(node, ws["id"]) == []  # removed: nothing half-kept
        assert not os.path.exists(log)  # the directory lives on in the image only
        back = c.restore(image)
        assert back["state"] == "running" and back["uid"] == ws["uid"] and back["address"] == ws["address"]
        log2 = os.path.join(back["directory"], "count.log")
        n0 = len(lines(log2))
        wait_for(lambda: len(lines(log2)) >= n0 + 10, 10, "the restored counter to go on")
        nums = [int(x) for x in lines(log2)]
        assert nums == list(range(1, len(nums) + 1))  # continued from its value: no restart, no repeat
        assert n0 >= 10
        c.rm("cnt")


def test_memory_checksum_tree_pipe_cwd_uid_survive(node):
    with node.client() as c:
        ws = c.create("mem", main=[PY, "-c", MEMORY], memory="1G")
        before = os.path.join(ws["directory"], "before")
        wait_for(lambda: os.path.exists(before), 60, "256 MiB to be filled and checksummed")
        image = os.path.join(node.home, "mem.img")
        c.checkpoint("mem", image)
        back = c.restore(image, "mem2")
        d = back["directory"]
        init = back["init_pid"]
        main = int(open(f"/proc/{init}/task/{init}/children").read().split()[0])
        assert os.stat(f"/proc/{main}").st_uid == ws["uid"] == back["uid"]  # its uid
        assert os.readlink(f"/proc/{main}/cwd").endswith("/run/xos-work")  # its cwd, inside the workspace
        os.kill(main, signal.SIGUSR1)
        wait_for(lambda: os.path.exists(os.path.join(d, "after")), 30, "the restored process to checksum again")
        with open(os.path.join(d, "before")) as b, open(os.path.join(d, "after")) as a:
            assert a.read() == b.read()
        c.rm("mem2")

        ws = c.create("tree", main=[PY, "-c", TREE])
        log = os.path.join(ws["directory"], "tree.log")
        wait_for(lambda: len(lines(log)) >= 20, 10, "the tree to talk over its pipe")
        image = os.path.join(node.home, "tree.img")
        c.checkpoint("tree", image)
        back = c.restore(image)
        log = os.path.join(back["directory"], "tree.log")
        n0 = len(lines(log))
        wait_for(lambda: len(lines(log)) >= n0 + 20, 10, "the restored tree to go on")
        rows = [r.split() for r in lines(log)]
        assert {r[3] for r in rows} == {"/run/xos-work"} and {r[4] for r in rows} == {str(ws["uid"])}
        assert len({r[0] for r in rows}) == 1  # the same parent, its pid kept inside the namespace
        c.rm("tree")


def test_leave_running_and_what_cannot_be_checkpointed(node):
    node.expect_warning("refused|restore failed")
    with node.client() as c:
        ws = c.create("lr", main=[PY, "-c", COUNTER], out="count.log")
        log = os.path.join(ws["directory"], "count.log")
        wait_for(lambda: len(lines(log)) >= 5, 10, "the counter to count")
        image = os.path.join(node.home, "lr.img")
        c.checkpoint("lr", image, leave_running=True)
        n = len(lines(log))
        wait_for(lambda: len(lines(log)) > n + 5, 10, "the counter to go on after a --leave-running checkpoint")
        assert c.stat("lr")["state"] == "running"
        with pytest.raises(Exception) as e:
            c.restore(image, "lr2")  # its address is taken by the original
        assert getattr(e.value, "code", "") == "over-capacity"
        assert [w["name"] for w in c.ls()] == ["lr"]

        pid = c.spawn("lr", ["sleep", "600"])  # started with exec: outside init's tree
        with pytest.raises(Exception) as e:
            c.checkpoint("lr", image + "2")
        assert getattr(e.value, "code", "") == "not-checkpointable" and str(pid) in str(e.value)
        assert not os.path.exists(image + "2") and not os.path.exists(image + "2.part")
        assert c.stat("lr")["state"] == "running"
        c.rm("lr")


def test_bad_images_refused_nothing_made(node, tmp_path):
    node.expect_warning("refused|restore failed")
    with node.client() as c:
        ws = c.create("src", main=[PY, "-c", COUNTER], out="count.log")
        wait_for(lambda: len(lines(os.path.join(ws["directory"], "count.log"))) >= 3, 10, "the counter")
        good = str(tmp_path / "good.img")
        c.checkpoint("src", good)
        with pytest.raises(Exception) as e:
            c.checkpoint("src", good)  # gone, and the image would not be overwritten anyway
        assert getattr(e.value, "code", "") in ("workspace-not-found", "invalid-input")

        def variant(name: str, change) -> str:
            path = str(tmp_path / name)
            shutil.copytree(good, path, symlinks=True)
            change(path)
            return path

        def biggest(path: str) -> str:
            files = [os.path.join(path, "criu", n) for n in os.listdir(os.path.join(path, "criu"))]
            return max(files, key=os.path.getsize)

        def flip(path: str) -> None:
            with open(biggest(path), "r+b") as f:
                f.seek(os.path.getsize(f.name) // 2)
                b = f.read(1)
                f.seek(-1, 1)
                f.write(bytes([b[0] ^ 0xFF]))

        def newer(path: str) -> None:
            with open(os.path.join(path, "manifest.json")) as f:
                man = json.load(f)
            man["criu"] = "99.0"
            with open(os.path.join(path, "manifest.json"), "w") as f:
                json.dump(man, f)

        tarred = str(tmp_path / "good.tar")
        with tarfile.open(tarred, "w") as t:
            for sub in ("criu", "work", "manifest.json"):
                t.add(os.path.join(good, sub), sub)
        with open(tarred, "rb") as f:
            data = f.read()
        cases = {
            variant("flipped.img", flip): "image-invalid",
            variant("truncated.img", lambda p: os.truncate(biggest(p), os.path.getsize(biggest(p)) // 2)):
                "image-invalid",
            variant("unsealed.img", lambda p: os.unlink(os.path.join(p, "manifest.json"))): "image-invalid",
            variant("extra.img", lambda p: open(os.path.join(p, "criu", "extra.img"), "w").close()): "image-invalid",
            variant("newer.img", newer): "image-invalid",
            str(tmp_path / "truncated.tar"): "image-invalid",
            str(tmp_path / "garbage"): "image-invalid",
            str(tmp_path / "missing.img"): "invalid-input",
        }
        with open(str(tmp_path / "truncated.tar"), "wb") as f:
            f.write(data[: len(data) // 3])
        with open(str(tmp_path / "garbage"), "wb") as f:
            f.write(os.urandom(4096))
        for path, code in cases.items():
            with pytest.raises(Exception) as e:
                c.restore(path)
            assert getattr(e.value, "code", "") == code, (path, e.value)
            assert c.ls() == []
        assert set(os.listdir(os.path.join(node.home, "checkpoints"))) <= {"logs"}  # no scratch left
        back = c.restore(tarred)  # the same image as a tar restores, and so does the directory
        assert back["state"] == "running"
        c.rm("src")
        assert c.restore(good)["state"] == "running"
        c.rm("src")


def test_periodic_checkpoints_kept_to_their_number_and_restorable(node):
    with node.client() as c:
        ws = c.create("per", main=[PY, "-c", COUNTER], out="count.log")
        d = c.set("per", checkpoint_every="1s", keep=2)
        assert d["checkpointing"]["every"] == 1 and d["checkpointing"]["keep"] == 2
        assert d["allocation"] == ws["allocation"]  # only the schedule changed
        seen: set[str] = set()

        def taken() -> int:
            images = c.stat("per")["checkpointing"]["images"]
            assert len(images) <= 2  # never more than kept
            seen.update(images)
            return len(seen)

        wait_for(lambda: taken() >= 4, 30, "four periodic checkpoints")
        newest = c.stat("per")["checkpointing"]["images"][-1]
        kept = os.path.join(node.home, "newest.img")
        shutil.copytree(newest, kept, symlinks=True)  # the daemon prunes its own; this one is ours
        c.set("per", checkpoint_every="0")
        assert "checkpointing" not in c.stat("per")
        c.rm("per")
        assert not os.path.exists(os.path.dirname(newest))  # removed with the workspace
        back = c.restore(kept)
        log = os.path.join(back["directory"], "count.log")
        n0 = len(lines(log))
        wait_for(lambda: len(lines(log)) >= n0 + 5, 10, "the counter restored from a periodic checkpoint")
        for bad, code in (("soon", "bad-size"), ("-5m", "bad-size"), ("0.5s", "invalid-input")):
            with pytest.raises(Exception) as e:
                c.set("per", checkpoint_every=bad)
            assert getattr(e.value, "code", "") == code, (bad, e.value)
            assert "checkpointing" not in c.stat("per")  # nothing changed
        c.rm("per")


def test_doctor_and_node_info_say_whether_checkpoint_works(node):
    info = json.loads(node.cli("node", "info", "--json")[1])
    assert info["checkpoint"]["available"] is True and info["checkpoint"]["criu"].startswith("4.")
    code, out, _ = node.cli("node", "doctor")
    assert code == 0 and "checkpoint: available" in out
    env = {**node.env(), "XOS_CRIU": "/bin/true"}
    p = subprocess.run([sys.executable, "-m", "xos", "node", "doctor"], env=env, capture_output=True, text=True)
    assert p.returncode == 1 and "checkpoint: unavailable" in p.stdout and "4 or later" in p.stdout, p


FAKE_CRIU = """#!/bin/sh
# A CRIU that passes its checks and then never finishes a dump (as 4.1.1's restorer on a bad image).
case "$1" in
--version) echo "Version: 4.1.1" ;;
check) [ "$2" = "--feature" ] && exit 1; exit 0 ;;
*) exec sleep 3600 ;;
esac
"""


def test_a_criu_that_hangs_is_stopped_and_the_workspace_runs_on(tmp_path):
    fake = tmp_path / "criu"
    fake.write_text(FAKE_CRIU)
    fake.chmod(0o755)
    old = {k: os.environ.get(k) for k in ("XOS_CRIU", "XOS_CRIU_TIMEOUT")}
    os.environ.update(XOS_CRIU=str(fake), XOS_CRIU_TIMEOUT="2")  # the daemon below inherits these
    try:
        with xos_node() as n, n.client() as c:
            n.expect_warning("refused|did not finish")
            ws = c.create("hang", main=[PY, "-c", COUNTER], out="count.log")
            log = os.path.join(ws["directory"], "count.log")
            wait_for(lambda: len(lines(log)) >= 5, 10, "the counter")
            with pytest.raises(Exception) as e:
                c.checkpoint("hang", str(tmp_path / "hang.img"))
            assert getattr(e.value, "code", "") == "criu-failed" and "did not finish within 2s" in str(e.value)
            assert not os.path.exists(tmp_path / "hang.img") and not os.path.exists(tmp_path / "hang.img.part")
            assert c.stat("hang")["state"] == "running"
            n0 = len(lines(log))
            wait_for(lambda: len(lines(log)) >= n0 + 5, 10, "the counter to go on, thawed")
            assert subprocess.run(["pgrep", "-f", "sleep 3600"], capture_output=True).stdout == b""  # killed
            c.rm("hang")
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def test_host_fuse_mounts_stay_out_of_workspaces_and_a_dead_one_breaks_no_restore(node, tmp_path_factory):
    from xos.testing.fsgrid import fuse_mount

    base = str(tmp_path_factory.mktemp("fuse"))
    with fuse_mount(os.path.join(base, "live")), fuse_mount(os.path.join(base, "dead"), dead=True):
        with node.client() as c:
            ws = c.create("fz", main=[PY, "-c", COUNTER], out="count.log")
            log = os.path.join(ws["directory"], "count.log")
            wait_for(lambda: len(lines(log)) >= 5, 10, "the counter to count")
            out = bytearray()
            assert c.exec("fz", ["cat", "/proc/self/mountinfo"], on_stdout=out.extend)["status"] == 0
            seen = out.decode()
            assert "/proc" in seen and " - fuse" not in seen and base not in seen, seen
            image = os.path.join(node.home, "fz.img")
            c.checkpoint("fz", image)
            back = c.restore(image)
            assert back["state"] == "running"
            log2 = os.path.join(back["directory"], "count.log")
            n0 = len(lines(log2))
            wait_for(lambda: len(lines(log2)) > n0, 10, "the restored counter to go on")
            c.rm("fz")
