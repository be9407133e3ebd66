"""Load programs run inside workspaces: a TCP sender/receiver and a CPU burner.

They run as the workspace's user with the system's python3, which may not be able to read
this package (it can live under /root), so the source is passed with `python3 -c`.
"""

from __future__ import annotations

import json
from typing import Any

PYTHON = "/usr/bin/python3"

_PROGRAM = r'''
import json, os, socket, sys, time, hashlib

def recv(port, warmup, seconds):
    srv = socket.socket(); srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind(("0.0.0.0", port)); srv.listen(1)
    print("listening", flush=True)
    conn, _ = srv.accept()
    buf = bytearray(1 << 16)
    t0 = time.monotonic(); start = t0 + warmup; end = start + seconds; got = 0
    while True:
        n = conn.recv_into(buf)
        now = time.monotonic()
        if n == 0 or now >= end:
            break
        if now >= start:
            got += n
    print(json.dumps({"bytes": got, "seconds": seconds, "mbit": got * 8 / seconds / 1e6}), flush=True)

def send(host, port, seconds):
    deadline = time.monotonic() + 10
    while True:
        try:
            s = socket.create_connection((host, port), timeout=5); break
        except OSError:
            if time.monotonic() > deadline: raise
            time.sleep(0.02)
    data = b"x" * (1 << 16); end = time.monotonic() + seconds; sent = 0
    try:
        while time.monotonic() < end:
            sent += s.send(data)
    except OSError:
        pass
    print(json.dumps({"sent": sent}), flush=True)

def burn(seconds):
    end = time.monotonic() + seconds; n = 0
    while time.monotonic() < end:
        hashlib.sha256(b"x" * 4096).digest(); n += 1
    print(json.dumps({"hashes": n, "seconds": seconds}), flush=True)

def counter(path):
    n = 0
    while True:
        n += 1
        if n % 100000 == 0:
            with open(path + ".new", "w") as f: f.write(str(n))
            os.replace(path + ".new", path)

cmd = sys.argv[1]
if cmd == "recv": recv(int(sys.argv[2]), float(sys.argv[3]), float(sys.argv[4]))
elif cmd == "send": send(sys.argv[2], int(sys.argv[3]), float(sys.argv[4]))
elif cmd == "burn": burn(float(sys.argv[2]))
elif cmd == "counter": counter(sys.argv[2])
'''


def recv(port: int = 5001, warmup: float = 0.7, seconds: float = 3.0) -> list[str]:
    """argv of a receiver that measures Mbit/s over `seconds` after `warmup`, printing JSON."""
    return [PYTHON, "-c", _PROGRAM, "recv", str(port), str(warmup), str(seconds)]


def send(host: str, port: int = 5001, seconds: float = 5.0) -> list[str]:
    """argv of a sender that pushes as fast as it may for `seconds`."""
    return [PYTHON, "-c", _PROGRAM, "send", host, str(port), str(seconds)]


def burn(seconds: float) -> list[str]:
    """argv of a CPU-bound job stream printing how many hashes it did."""
    return [PYTHON, "-c", _PROGRAM, "burn", str(seconds)]


def counter(path: str) -> list[str]:
    """argv of a loop that writes a growing counter to `path`."""
    return [PYTHON, "-c", _PROGRAM, "counter", path]


def last_json(output: bytes) -> dict[str, Any]:
    """The last JSON line a load program printed."""
    for line in reversed(output.decode().splitlines()):
        if line.startswith("{"):
            return json.loads(line)
    raise ValueError(f"no result in output {output[-300:]!r}")
