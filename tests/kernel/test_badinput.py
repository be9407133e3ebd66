"""Bad input: one line, a stable code, a non-zero exit, nothing created or changed."""

from __future__ import annotations

import json
import socket

import pytest

from xos.kernel.cgroup import detect


def state(node):
    """Workspaces as the daemon and the kernel see them, without the ever-moving usage."""
    code, out, _ = node.cli("ws", "ls", "--json")
    assert code == 0
    rows = [{k: v for k, v in w.items() if k != "usage"} for w in json.loads(out)]
    return rows, detect().children(node.cgroup_root)


@pytest.mark.parametrize("args,code", [
    (["ws", "create", "x", "--memory=-5M"], "bad-size"),
    (["ws", "create", "x", "--memory", "-5M"], "usage"),
    (["ws", "frobnicate", "x"], "usage"),
    (["ws", "create", "x", "--memory", "lots"], "bad-size"),
    (["ws", "create", "x", "--egress", "10parsecs"], "unknown-unit"),
    (["ws", "create", "x", "--ingress", "0"], "bad-rate"),
    (["ws", "create", "x", "--cpu=-1"], "bad-size"),
    (["ws", "create", "x", "--cpu", "64"], "over-capacity"),
    (["ws", "create", "x", "--memory", "100T"], "over-capacity"),
    (["ws", "create", "x", "--egress", "900gbit"], "over-capacity"),
    (["ws", "create", "x", "--pids", "many"], "bad-size"),
    (["ws", "create", "x", "--uid", "4000000"], "unknown-user"),
    (["ws", "create", "Bad/Name"], "bad-name"),
    (["ws", "create", "taken"], "workspace-exists"),
    (["ws", "stat", "nobody-here"], "workspace-not-found"),
    (["ws", "rm", "nobody-here"], "workspace-not-found"),
    (["ws", "set", "taken", "--memory", "1Q"], "unknown-unit"),
    (["ws", "set", "taken", "--cpu", "64"], "over-capacity"),
    (["ws", "exec", "taken"], "invalid-input"),
    (["ws", "exec", "taken", "--", "/no/such/program"], "spawn-failed"),
])
def test_refused_with_code_and_nothing_changes(node, args, code):
    assert node.cli("ws", "create", "taken", "--cpu", "0.5")[0] == 0
    before = state(node)
    rc, out, err = node.cli(*args)
    assert rc != 0
    assert err.count("\n") == 1 and err.startswith(f"xos: error {code}:"), err
    assert "Traceback" not in err and out == ""
    assert state(node) == before


def http(node, raw: bytes) -> bytes:
    s = socket.socket(socket.AF_UNIX)
    s.connect(node.socket)
    s.settimeout(10)
    s.sendall(raw)
    data = b""
    while chunk := s.recv(65536):
        data += chunk
    s.close()
    return data


@pytest.mark.parametrize("raw,status,code", [
    (b"\x00\xff garbage\r\n\r\n", None, None),  # not HTTP at all: the connection is dropped
    (b"POST /v1/workspaces HTTP/1.1\r\nHost: n\r\nContent-Length: 5\r\nConnection: close\r\n\r\n{nope",
     b"400", b"bad-request"),
    (b"POST /v1/workspaces HTTP/1.1\r\nHost: n\r\nContent-Length: 2\r\nConnection: close\r\n\r\n[]",
     b"400", b"bad-request"),
    (b'POST /v1/workspaces HTTP/1.1\r\nHost: n\r\nContent-Length: 28\r\nConnection: close\r\n\r\n'
     b'{"name":"y","allocation":""}', b"400", b"invalid-input"),
    (b'POST /v1/workspaces/taken/exec HTTP/1.1\r\nHost: n\r\nContent-Length: 14\r\nConnection: close\r\n\r\n'
     b'{"argv":[1,2]}', b"400", b"invalid-input"),
    (b"GET /v1/nothing HTTP/1.1\r\nHost: n\r\nConnection: close\r\n\r\n", b"404", b"not-found"),
])
def test_garbage_on_the_socket(node, raw, status, code):
    assert node.cli("ws", "create", "taken")[0] == 0
    node.expect_warning("Error handling request")  # aiohttp's own line for a request that is not HTTP
    before = state(node)
    reply = http(node, raw)
    if status is None:
        assert reply == b"" or reply.split(b" ")[1] == b"400", reply
    else:
        assert reply.split(b" ")[1] == status, reply
    if code:
        assert b'"code":"' + code + b'"' in reply
    assert state(node) == before
    assert node.cli("node", "info")[0] == 0  # still serving


def test_missing_kernel_feature_is_one_line(node):
    other = "v2" if detect().name == "v1" else "v1"
    rc, out, err = node.cli("serve", "node", "--cgroup", other, "--name", "never", "--cgroup-root", "xos.never")
    assert rc != 0 and err.count("\n") == 1 and err.startswith("xos: error missing-feature:"), err


def test_unreachable_home_is_refused_at_start(node, tmp_path):
    closed = tmp_path / "closed"
    closed.mkdir(mode=0o700)
    env = {**node.env(), "XOS_HOME": str(closed / "home"), "XOS_RUN": str(tmp_path / "run")}
    import subprocess
    import sys

    p = subprocess.run([sys.executable, "-m", "xos", "serve", "node", "--name", "never", "--cgroup-root",
                        "xos.never"], env=env, capture_output=True, text=True, timeout=60)
    assert p.returncode != 0 and p.stderr.startswith("xos: error bad-config:") and p.stderr.count("\n") == 1
