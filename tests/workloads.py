"""Programs the tests run inside workspaces, and how they read what those programs leave."""

from __future__ import annotations

PY = "/usr/bin/python3"  # /root is 0700: workspace users cannot reach the venv's python

COUNTER = """
import time
PACE = 0.02  # the program's own pace, not a wait of the test
i = 0
while True:
    i += 1
    print(i, flush=True)
    time.sleep(PACE)
"""

# 256 MiB of random data and its checksum; on SIGUSR1 it checksums the memory again.
MEMORY = """
import hashlib, os, signal, time
data = bytearray(os.urandom(1 << 20)) * 256
for i in range(0, len(data), 4096):
    data[i] = i >> 12 & 255
def check(*_):
    with open("after.tmp", "w") as f:
        f.write(hashlib.sha256(data).hexdigest())
    os.rename("after.tmp", "after")
signal.signal(signal.SIGUSR1, check)
with open("before.tmp", "w") as f:
    f.write(hashlib.sha256(data).hexdigest())
os.rename("before.tmp", "before")
while True:
    signal.pause()
"""

# A parent, two children and a pipe: the children write into it, the parent counts what it reads.
TREE = """
import os, time
PACE = 0.02
r, w = os.pipe()
kids = []
for k in range(2):
    pid = os.fork()
    if pid == 0:
        os.close(r)
        n = 0
        while True:
            n += 1
            os.write(w, b"%d %d\\n" % (k, n))
            time.sleep(PACE)
    kids.append(pid)
os.close(w)
seen = {0: 0, 1: 0}
with os.fdopen(r) as pipe, open("tree.log", "a", buffering=1) as log:
    for line in pipe:
        k, n = map(int, line.split())
        assert n == seen[k] + 1, (k, n, seen[k])  # nothing lost, nothing repeated
        seen[k] = n
        log.write(f"{os.getpid()} {k} {n} {os.getcwd()} {os.getuid()}\\n")
"""


def lines(path: str) -> list[str]:
    try:
        with open(path) as f:
            return f.read().split("\n")[:-1]
    except FileNotFoundError:
        return []
