"""Workspaces through the node daemon: allocations measured, renegotiated, enforced."""

from __future__ import annotations

import os
import signal

import pytest

from tests.kernel.helpers import cpu_share, transfer
from xos.errors import IllegalTransition, WorkspaceNotFound
from xos.testing import traffic, wait_for

BUSY = ["sh", "-c", "while :; do :; done"]


def test_cpu_quota_measured_and_renegotiated(node):
    with node.client() as c:
        c.create("cpu", cpu="0.25")
        c.spawn("cpu", BUSY)
        c.spawn("cpu", BUSY)  # two busy loops: the quota, not one core, is the bound
        share = cpu_share(c, "cpu")
        assert 0.20 <= share <= 0.30, share
        c.set("cpu", cpu="0.5")
        assert c.stat("cpu")["kernel"]["cpu"] == 0.5
        share = cpu_share(c, "cpu")
        assert 0.42 <= share <= 0.58, share


def test_memory_limit_oom_kills_and_is_recorded(node):
    with node.client() as c:
        c.create("mem", memory="64M")
        res = c.exec("mem", [traffic.PYTHON, "-c", "b = bytearray(128 << 20); print('survived')"])
        assert res["signal"] == signal.SIGKILL and res["oom_killed"] is True
        assert c.stat("mem")["usage"]["oom_kills"] >= 1
        assert c.exec("mem", ["true"])["status"] == 0  # the workspace and the node live on
        [proc] = [p for p in c.processes("mem") if p["argv"][0] == traffic.PYTHON]
        assert proc["oom_killed"] and proc["signal"] == signal.SIGKILL


def test_pids_limit_stops_a_fork_loop(node):
    with node.client() as c:
        c.create("pids", pids="16")
        code = ("import os, signal\nn = 0\nfor _ in range(64):\n    try:\n        pid = os.fork()\n"
                "    except OSError:\n        break\n    if pid == 0:\n"
                "        os.closerange(0, 3); signal.pause(); os._exit(0)\n"  # hold a pid until killed
                "    n += 1\nprint(n)\n")
        out = bytearray()
        c.exec("pids", [traffic.PYTHON, "-c", code], on_stdout=out.extend)
        forked = int(out.decode())
        assert forked < 16  # init and python itself count too
        st = c.stat("pids")
        assert st["kernel"]["pids"] == 16 and st["usage"]["pids_refused"] >= 1
        c.kill("pids")
        assert c.stat("pids")["processes"] == 0
        assert c.info()["workspaces"] == 1


@pytest.mark.parametrize("direction", ["egress", "ingress"])
def test_bandwidth_shaped_and_renegotiated(node, direction):
    with node.client() as c:
        c.create("src", **({"egress": "20mbit"} if direction == "egress" else {}))
        c.create("dst", **({"ingress": "20mbit"} if direction == "ingress" else {}))
        shaped = "src" if direction == "egress" else "dst"
        rate = transfer(c, "src", "dst")
        assert 17 <= rate <= 23, rate
        c.set(shaped, **{direction: "40mbit"})
        assert c.stat(shaped)["kernel"][direction] == 40_000_000
        rate = transfer(c, "src", "dst", port=5002)
        assert 34 <= rate <= 46, rate
        usage = c.stat("src")["usage"]
        assert usage["bytes_out"] > 5_000_000  # accounting saw the traffic leave


def test_freeze_stops_and_thaw_resumes_a_counter(node):
    with node.client() as c:
        ws = c.create("frz")
        path = os.path.join(ws["directory"], "count")
        c.spawn("frz", traffic.counter(path))

        def value() -> int:
            try:
                with open(path) as f:
                    return int(f.read())
            except FileNotFoundError:
                return 0

        wait_for(lambda: value() > 0, 10, "the counter to start")
        c.freeze("frz")
        assert c.stat("frz")["state"] == "frozen"
        frozen_at = value()
        with pytest.raises(IllegalTransition):
            c.exec("frz", ["true"])
        wait_for(lambda: c.stat("frz")["usage"]["wall_seconds"] > ws["usage"]["wall_seconds"] + 0.5, 5, "time")
        assert value() == frozen_at
        c.thaw("frz")
        wait_for(lambda: value() > frozen_at, 10, "the counter to resume")
        c.kill("frz")
        assert c.stat("frz")["processes"] == 0
        assert any(p["signal"] == signal.SIGKILL for p in c.processes("frz"))


def test_exec_streams_and_returns_status(node):
    code, out, err = node.cli("ws", "run", "once", "--cpu", "0.5", "--", "sh", "-c", "echo out; echo err >&2; exit 7")
    assert (code, out, err) == (7, "out\n", "err\n")
    code, out, _ = node.cli("ws", "ls", "--json")
    assert out.strip() == "[]"


def test_usage_kept_after_destroy(node):
    with node.client() as c:
        c.create("acct")
        c.exec("acct", traffic.burn(0.5))
        final = c.rm("acct")["usage"]
        with pytest.raises(WorkspaceNotFound):
            c.stat("acct")
        [rec] = c.usage("acct")
        assert rec["ended"] is not None and rec["cpu_seconds"] >= 0.3
        assert rec["cpu_seconds"] == pytest.approx(final["cpu_seconds"])
        assert rec["wall_seconds"] > 0


def test_metrics(node):
    with node.client() as c:
        c.create("m1", cpu="0.5", memory="128M")
        text = c.metrics()
    assert "xos_workspaces{node=" in text and "} 1" in text
    assert f'xos_workspace_allocation{{node="{node.name}",workspace="m1"' in text
    assert "xos_workspace_cpu_seconds_total" in text


def test_exec_streams_stdin_in_and_stops_feeding_a_closed_reader(node):
    import subprocess
    import sys

    assert node.cli("ws", "create", "io")[0] == 0
    base = [sys.executable, "-m", "xos", "ws", "exec", "io", "--"]
    p = subprocess.run([*base, "sh", "-c", "wc -c; echo done"], input=b"x" * 3_000_000, env=node.env(),
                       capture_output=True, timeout=60)
    assert (p.returncode, p.stdout.split()) == (0, [b"3000000", b"done"])
    # The reader exits after two lines while the writer would go on forever: no hang, no error.
    yes = subprocess.Popen(["yes"], stdout=subprocess.PIPE)
    try:
        p = subprocess.run([*base, "head", "-2"], stdin=yes.stdout, env=node.env(), capture_output=True, timeout=60)
    finally:
        yes.kill()
        yes.wait()
    assert (p.returncode, p.stdout) == (0, b"y\ny\n")
    p = subprocess.run([*base[:4], "exec", "-n", "io", "--", "cat"], env=node.env(), capture_output=True, timeout=60)
    assert (p.returncode, p.stdout) == (0, b"")


def test_the_main_programs_exit_status_is_reported_and_the_workspace_stays():
    from xos.testing import node as xos_node
    from xos.testing import wait_for

    with xos_node() as n, n.client() as c:
        c.create("m3", main=["/bin/sh", "-c", "echo done; exit 3"], out="out.log", cpu="0.1")
        wait_for(lambda: "main_exit" in c.stat("m3"), 20, "the main program to end")
        d = c.stat("m3")
        assert d["main_exit"] == {"exit": 3} and d["state"] == "running"
        with open(f"{d['directory']}/out.log") as f:
            assert f.read() == "done\n"
        c.create("m9", main=["/bin/sh", "-c", "kill -9 $$"], cpu="0.1")
        wait_for(lambda: "main_exit" in c.stat("m9"), 20, "the main program to be killed")
        assert c.stat("m9")["main_exit"] == {"signal": 9}
        c.create("plain", cpu="0.1")
        assert "main_exit" not in c.stat("plain")
        for name in ("m3", "m9", "plain"):
            c.rm(name)


def test_the_main_programs_stdio_are_files_opened_as_its_user(tmp_path):
    from xos.errors import XosError
    from xos.testing import node as xos_node

    secret = tmp_path / "root-only"
    secret.write_text("not for users\n")
    secret.chmod(0o600)
    with xos_node() as n, n.client() as c:
        c.create("io", main=["/bin/sh", "-c", "tr a-z A-Z; echo oops >&2; id -u"], stdin="in", out="out",
                 err="err", input=b"hello\n", uid=1000, gid=1000, cpu="0.1")
        wait_for(lambda: "main_exit" in c.stat("io"), 20, "the main program to end")
        d = c.stat("io")
        assert d["main_exit"] == {"exit": 0}
        with open(f"{d['directory']}/out") as f:
            assert f.read() == "HELLO\n1000\n"
        with open(f"{d['directory']}/err") as f:
            assert f.read() == "oops\n"
        for stdio, what in (({"stdin": str(secret)}, f"cannot open its stdin {secret}: Permission denied"),
                            ({"out": "/proc/nonexistent/out"}, "cannot open its stdout /proc/nonexistent/out"),
                            ({"stdin": "../x"}, "in must be a file name")):
            with pytest.raises(XosError) as e:
                c.create("bad", main=["/bin/cat"], uid=1000, gid=1000, cpu="0.1", **stdio)
            assert what in e.value.message, e.value.message
            assert "bad" not in [w["name"] for w in c.ls()]  # nothing half-made
        assert c.info()["allocated"]["cpu"] == 0.1
