"""No failure loses a workload, and none runs it twice: the target restores a migrated workspace and its
answer is lost on the way back; the source must not resume its own copy."""

from __future__ import annotations

import os
import socket
import threading
import urllib.parse

import pytest

from tests.kernel.test_checkpoint import COUNTER, PY, lines
from xos.checkpoint import criu
from xos.testing import GRID_NET, TestGrid, wait_for


class DropFirstAnswer:
    """A TCP proxy to `target` that passes every request on whole and drops the first answer."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self.srv = socket.socket()
        self.srv.bind((f"{GRID_NET}.1", 0))
        self.srv.listen(8)
        self.dropped = threading.Event()
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def url(self) -> str:
        host, port = self.srv.getsockname()
        return f"http://{host}:{port}"

    def _accept(self) -> None:
        while True:
            try:
                c, _ = self.srv.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(c,), daemon=True).start()

    def _serve(self, c: socket.socket) -> None:
        up = socket.create_connection(self.target)

        def forward() -> None:
            try:
                while data := c.recv(1 << 20):
                    up.sendall(data)
                up.shutdown(socket.SHUT_WR)
            except OSError:
                pass  # the other direction closed both

        threading.Thread(target=forward, daemon=True).start()
        try:
            if not self.dropped.is_set():
                up.recv(65536)  # the answer begins: the target has acted; the client never learns it
                self.dropped.set()
                return
            while data := up.recv(1 << 20):
                c.sendall(data)
        except OSError:
            pass
        finally:
            for sock in (c, up):  # shutdown wakes the thread blocked in recv on it, and tells the peer
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                sock.close()

    def close(self) -> None:
        self.srv.close()


@pytest.fixture
def grid():
    c = criu.find()
    assert c.ok, f"migration tests need CRIU >= 4 passing criu check (make setup builds it): {c.reason}"
    with TestGrid(2) as g:
        yield g


def test_answer_lost_after_the_target_restored(grid: TestGrid) -> None:
    """The target's reply lost after a successful restore: the workload runs there, once, and the
    source neither resumes it nor keeps it."""
    a, b = grid.nodes
    a.expect_warning("its answer was lost")
    target = urllib.parse.urlsplit(b.peer_url)
    proxy = DropFirstAnswer((target.hostname or "", target.port or 0))
    try:
        with a.client() as ca, b.client() as cb:
            ws = ca.create("cnt", uid=1000, gid=1000, main=[PY, "-c", COUNTER], out="count.log")
            wait_for(lambda: len(lines(os.path.join(ws["directory"], "count.log"))) >= 5, 10, "the counter")
            ca.migrate("cnt", proxy.url)
            assert proxy.dropped.is_set()
            assert ca.ls() == []  # not resumed here
            there = cb.stat("cnt")
            assert there["state"] == "running" and there["origin"]["workspace"] == ws["id"]
            log = os.path.join(there["directory"], "count.log")
            n = len(lines(log))
            wait_for(lambda: len(lines(log)) >= n + 5, 10, "the counter to go on at the target")
            nums = [int(x) for x in lines(log)]
            assert nums == list(range(1, len(nums) + 1))  # one copy counting: no repeat, no gap
            cb.rm("cnt")
    finally:
        proxy.close()
