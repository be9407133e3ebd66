"""A test run or benchmark stopped with SIGTERM (a CI timeout) still tears its grids down."""

from __future__ import annotations

import contextlib
import os
import select
import shutil
import signal
import subprocess
import sys
import textwrap

import pytest

from xos.testing import leftovers, netns, remove_links, wait_for

FS_SCRIPT = """
import signal
from xos.testing.fsgrid import FsGrid
with FsGrid(osds=1, clients=1) as g:
    g.mkvol("v")
    g.mount(0, "v")
    print("READY", g.base, flush=True)
    signal.pause()  # until the test's SIGTERM
"""

PYTEST_FILE = """
import signal
import pytest
from xos.testing import TestGrid

@pytest.fixture
def grid():
    with TestGrid(1) as g:
        yield g

def test_waits(grid):
    print("READY", grid.base, flush=True)
    signal.pause()  # until the test's SIGTERM
"""


def _stop_when_ready(argv: list[str], cwd: str) -> tuple[str, int]:
    """Start `argv`, wait for its READY line, SIGTERM it: (the grid's base directory, exit status)."""
    before = leftovers()
    proc = subprocess.Popen(argv, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        seen = []
        while True:
            ready, _, _ = select.select([proc.stdout], [], [], 120)
            line = proc.stdout.readline() if ready else ""
            if not line:
                pytest.fail(f"no READY line from {argv[-1]}: {''.join(seen)[-2000:]}")
            seen.append(line)
            if "READY" in line:
                base = line.split("READY", 1)[1].strip()
                break
        proc.send_signal(signal.SIGTERM)
        status = proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    left = leftovers() - before
    if os.path.exists(base):
        left.add(f"directory {base}")
    _remove(left)
    assert not left, f"SIGTERM left behind: {sorted(left)}\n{''.join(seen)[-2000:]}"
    return base, status


def _remove(left: set[str]) -> None:
    """Take away what a grid that was not torn down left (so this test leaves nothing when it fails)."""
    for item in sorted(left, key=lambda i: not i.startswith("process")):  # processes first: they hold the rest
        kind, name = item.split(" ", 1)
        with contextlib.suppress(OSError):
            if kind == "process":
                proc = f"/proc/{name.split()[0]}"
                os.kill(int(name.split()[0]), signal.SIGKILL)
                wait_for(lambda p=proc: not os.path.exists(p), 10, f"{item} to exit")
            elif kind == "mount":
                subprocess.run(["umount", "-l", name], check=False)
            elif kind == "netns":
                netns.remove(name)
            elif kind == "link":
                remove_links(name)
    for item in left:
        kind, name = item.split(" ", 1)
        if kind == "cgroup":
            with contextlib.suppress(OSError):
                os.rmdir(name)
        elif kind == "directory":
            shutil.rmtree(name, ignore_errors=True)


def test_sigterm_to_a_script_holding_a_file_system_grid_tears_it_down(tmp_path):
    base, status = _stop_when_ready([sys.executable, "-c", FS_SCRIPT], str(tmp_path))
    assert status != 0 and base.startswith("/tmp/xos-")


def test_sigterm_to_a_pytest_run_runs_its_fixture_teardowns(tmp_path):
    (tmp_path / "test_waiting.py").write_text(textwrap.dedent(PYTEST_FILE))
    base, status = _stop_when_ready([sys.executable, "-m", "pytest", "-s", "-q", "-p", "no:cacheprovider",
                                     "test_waiting.py"], str(tmp_path))
    assert status == 2 and base.startswith("/tmp/xos-")  # 2: interrupted
