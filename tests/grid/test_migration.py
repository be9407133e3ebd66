"""Migration between two test nodes with the real CRIU: memory, trees, TCP connections, allocation and
uid come along; a refused, failed or cut-off migration leaves the workspace running at the source."""

from __future__ import annotations

import json
import os
import signal
import socket
import threading
import urllib.parse

import pytest

from tests.kernel.helpers import cpu_share
from tests.workloads import COUNTER, MEMORY, PY, TREE, lines
from xos.checkpoint import criu
from xos.identity import credential
from xos.testing import GRID_NET, TestGrid, wait_for
from xos.wire import hostid

SERVER = """
import socket
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", 9000))
s.listen(1)
c, _ = s.accept()
f = c.makefile("rb")
n = 0
while line := f.readline():
    n += 1
    c.sendall(b"%d %s" % (n, line))
"""

CLIENT = """
import socket, sys, time
PACE = 0.02
c = socket.create_connection((sys.argv[1], 9000), timeout=60)
f = c.makefile("rb")
i = 0
with open("client.log", "a", buffering=1) as log:
    while True:
        i += 1
        c.sendall(b"%d\\n" % i)
        log.write(f.readline().decode())
        time.sleep(PACE)
"""

BURN = "while True:\n    pass\n"


@pytest.fixture
def grid():
    c = criu.find()
    assert c.ok, f"migration tests need CRIU >= 4 passing criu check (make setup builds it): {c.reason}"
    with TestGrid(2) as g:
        yield g


def test_counter_memory_tree_and_allocation_move(grid):
    a, b = grid.nodes
    with a.client() as ca, b.client() as cb:
        ws = ca.create("cnt", main=[PY, "-c", COUNTER], out="count.log", cpu=0.5)
        wait_for(lambda: len(lines(os.path.join(ws["directory"], "count.log"))) >= 10, 10, "the counter")
        with pytest.raises(Exception) as e:
            ca.migration("cnt")
        assert getattr(e.value, "code", "") == "not-found"  # none under way yet
        seen: list[dict] = []
        stop = threading.Event()

        def watch() -> None:  # what the CLI's progress bar polls, while the migration runs
            with a.client() as poll:
                while not stop.is_set():
                    try:
                        seen.append(poll.migration("cnt"))
                    except Exception:  # noqa: S112 - between migrations there is nothing to see
                        pass
                    stop.wait(0.01)

        watcher = threading.Thread(target=watch)
        watcher.start()
        try:
            res = ca.migrate("cnt", b.name)
        finally:
            stop.set()
            watcher.join()
        assert {p["phase"] for p in seen} & {"dump", "transfer"}, seen
        assert all(p["sent"] <= p["total"] for p in seen if p["phase"] == "transfer")
        t = res["times"]
        assert all(t[k] > 0 for k in ("dump", "transfer", "restore", "downtime")), t
        assert t["downtime"] >= t["dump"] + t["restore"]
        assert ca.ls() == [] and [w["name"] for w in cb.ls()] == ["cnt"]  # one copy, at the target
        moved = cb.stat("cnt")
        assert (moved["uid"], moved["address"], moved["allocation"]) == (ws["uid"], ws["address"], ws["allocation"])
        log = os.path.join(moved["directory"], "count.log")
        n0 = len(lines(log))
        wait_for(lambda: len(lines(log)) >= n0 + 10, 10, "the counter to go on at the target")
        nums = [int(x) for x in lines(log)]
        assert nums == list(range(1, len(nums) + 1)) and n0 >= 10
        first = ws["address"]
        cb.rm("cnt")

        ws = ca.create("mem", main=[PY, "-c", MEMORY], memory="1G")
        wait_for(lambda: os.path.exists(os.path.join(ws["directory"], "before")), 60, "256 MiB to be filled")
        code, out, shown = a.cli("ws", "migrate", "mem", "--to", b.name, tty=True)  # as a user sees it
        assert code == 0 and out.startswith("mem -> ") and "M, stop-and-copy): " in out and "downtime" in out, out
        bars = [ln.split() for ln in shown.split("\r") if ln.startswith("mem: ")]
        assert bars and bars[-1][1] == "done" and "transfer" in [b[1] for b in bars], shown
        assert bars[-1][-3] == bars[-1][-1] and bars[-1][-1].endswith("M"), shown
        moved = cb.stat("mem")
        init = moved["init_pid"]
        main = int(open(f"/proc/{init}/task/{init}/children").read().split()[0])
        os.kill(main, 10)  # SIGUSR1: checksum the memory again
        after = os.path.join(moved["directory"], "after")
        wait_for(lambda: os.path.exists(after), 30, "the checksum at the target")
        assert open(after).read() == open(os.path.join(moved["directory"], "before")).read()
        cb.rm("mem")

        ws = ca.create("tree", main=[PY, "-c", TREE])
        wait_for(lambda: len(lines(os.path.join(ws["directory"], "tree.log"))) >= 20, 10, "the tree")
        ca.migrate("tree", b.name)
        log = os.path.join(cb.stat("tree")["directory"], "tree.log")
        n0 = len(lines(log))
        wait_for(lambda: len(lines(log)) >= n0 + 20, 10, "the tree to talk over its pipe at the target")
        cb.rm("tree")

        ws = ca.create("burn", main=[PY, "-c", BURN], cpu=0.5)
        ca.migrate("burn", b.name)
        share = cpu_share(cb, "burn")
        assert 0.35 < share < 0.6, share  # the allocation holds at the target, measured there
        cb.rm("burn")

    a.stop(signal.SIGKILL)  # the source keeps forwarding the addresses it gave away, across a restart too
    a.start()
    with a.client() as again:
        assert again.create("fresh")["address"] != first
        again.rm("fresh")


def test_tcp_connection_survives_migration_of_the_server(grid):
    a, b = grid.nodes
    with a.client() as ca, b.client() as cb:
        srv = ca.create("srv", main=[PY, "-c", SERVER])
        listening = ["grep", "-q", ":2328 00000000:0000 0A", "/proc/net/tcp"]  # port 9000, LISTEN
        wait_for(lambda: ca.exec("srv", listening)["exit_code"] == 0, 10, "the server to listen")
        cli = ca.create("cli", main=[PY, "-c", CLIENT, srv["address"]])
        log = os.path.join(cli["directory"], "client.log")
        wait_for(lambda: len(lines(log)) >= 20, 10, "the client and server to talk")
        ca.migrate("srv", b.name)
        n0 = len(lines(log))
        wait_for(lambda: len(lines(log)) >= n0 + 20, 20, "the connection to carry on after the server moved")
        rows = [r.split() for r in lines(log)]
        assert rows == [[str(i), str(i)] for i in range(1, len(rows) + 1)]  # one connection, nothing lost
        cb.rm("srv")
        ca.rm("cli")


def test_failed_migrations_leave_it_running_at_the_source(grid):
    a, b = grid.nodes
    a.expect_warning("migration of .* failed|restore failed|refused")
    b.expect_warning("restore failed|refused")
    with a.client() as ca, b.client() as cb:
        ws = ca.create("cnt", main=[PY, "-c", COUNTER], out="count.log")
        wait_for(lambda: len(lines(os.path.join(ws["directory"], "count.log"))) >= 5, 10, "the counter")

        def still_counting() -> None:
            st = ca.stat("cnt")
            assert st["state"] == "running" and st["address"] == ws["address"]
            log = os.path.join(st["directory"], "count.log")
            n = len(lines(log))
            wait_for(lambda: len(lines(log)) >= n + 5, 10, "the counter to go on at the source")
            nums = [int(x) for x in lines(log)]
            assert nums == list(range(1, len(nums) + 1))
            assert cb.ls() == []  # none at the target

        # The target refuses: a workspace of that name exists there; stop-and-copy, then live (the dump
        # under way, post-copy's serving memory, is undone; a kernel with neither refuses up front).
        cb.create("cnt")
        with pytest.raises(Exception) as e:
            ca.migrate("cnt", b.name)
        assert getattr(e.value, "code", "") == "migration-failed" and "exists" in str(e.value)
        with pytest.raises(Exception) as e:
            ca.migrate("cnt", b.name, live=True)
        if criu.find().live:
            assert getattr(e.value, "code", "") == "migration-failed" and "exists" in str(e.value)
        else:
            assert getattr(e.value, "code", "") == "live-migration-unavailable"
        cb.rm("cnt")
        still_counting()

        # The target dies mid-transfer: a node (its certificate says so) that reads a little and hangs up.
        srv = socket.socket()
        srv.bind((grid_host(), 0))
        srv.listen(4)
        tls = hostid.HostIdentity(grid.host_dir("cut-off", ["node"])).server_context()
        took = []

        def cut_off() -> None:
            while True:
                try:
                    c, _ = srv.accept()
                except OSError:  # closed: the test is over
                    return
                try:
                    with tls.wrap_socket(c, server_side=True) as t:
                        took.append(len(t.recv(65536)))
                except OSError:
                    pass

        threading.Thread(target=cut_off, daemon=True).start()
        with pytest.raises(Exception) as e:
            ca.migrate("cnt", f"https://{grid_host()}:{srv.getsockname()[1]}")
        assert getattr(e.value, "code", "") == "migration-failed" and "did not take the image" in str(e.value), e.value
        assert any(took), "the transfer never began"
        srv.close()
        still_counting()

        # The restore fails at the target: it has no room for the allocation.
        ca.set("cnt", cpu=1.0)
        b.stop()
        b.extra_args += ["--cpu", "0.5"]
        b.start()
        with pytest.raises(Exception) as e:
            ca.migrate("cnt", b.name)
        assert getattr(e.value, "code", "") == "migration-failed" and "over-capacity" in str(e.value)
        still_counting()
        ca.rm("cnt")


def grid_host() -> str:
    """The root namespace's address on the test grid's bridge (reachable from every node)."""
    from xos.testing import GRID_NET

    return f"{GRID_NET}.1"


def test_live_migration_says_whether_the_kernel_can(grid):
    """--live with what the kernel offers: pre-copy rounds where it tracks dirty memory, post-copy where it has
    userfaultfd (memory follows on demand: a 256 MiB checksum verifies at the target, a counter never
    repeats), refused up front with the workspace untouched where it has neither."""
    a, b = grid.nodes
    mode = criu.find().live
    with a.client() as ca, b.client() as cb:
        ws = ca.create("cnt", main=[PY, "-c", COUNTER], out="count.log")
        log = os.path.join(ws["directory"], "count.log")
        wait_for(lambda: len(lines(log)) >= 5, 10, "the counter")
        assert json.loads(a.cli("node", "info", "--json")[1])["checkpoint"]["live_mode"] == mode
        if not mode:
            a.expect_warning("refused")
            with pytest.raises(Exception) as e:
                ca.migrate("cnt", b.name, live=True)
            assert getattr(e.value, "code", "") == "live-migration-unavailable" and "SOFT_DIRTY" in str(e.value)
            assert ca.stat("cnt")["state"] == "running" and cb.ls() == []
            ca.rm("cnt")
            return
        res = ca.migrate("cnt", b.name, live=True)
        assert res["live"] and res["mode"] == mode, res
        assert res["rounds"] if mode == "pre-copy" else res["times"]["postcopy"] > 0, res
        assert ca.ls() == [] and [w["name"] for w in cb.ls()] == ["cnt"]  # one copy, at the target
        log = os.path.join(cb.stat("cnt")["directory"], "count.log")
        n0 = len(lines(log))
        wait_for(lambda: len(lines(log)) >= n0 + 10, 10, "the counter to go on at the target")
        nums = [int(x) for x in lines(log)]
        assert nums == list(range(1, len(nums) + 1))
        cb.rm("cnt")

        ws = ca.create("mem", main=[PY, "-c", MEMORY], memory="1G")
        wait_for(lambda: os.path.exists(os.path.join(ws["directory"], "before")), 60, "256 MiB to be filled")
        res = ca.migrate("mem", b.name, live=True)
        moved = cb.stat("mem")
        init = moved["init_pid"]
        main = int(open(f"/proc/{init}/task/{init}/children").read().split()[0])
        os.kill(main, 10)  # SIGUSR1: checksum the memory again, every page of it read at the target
        after = os.path.join(moved["directory"], "after")
        wait_for(lambda: os.path.exists(after), 60, "the checksum at the target")
        assert open(after).read() == open(os.path.join(moved["directory"], "before")).read()
        if mode == "post-copy":  # stopped for the state only: the 256 MiB were not in the image sent
            assert res["bytes"] < 64 << 20, res["bytes"]
        cb.rm("mem")


def test_a_target_that_does_not_map_the_identity_refuses(tmp_path):
    """An image running as a grid identity goes only where that identity maps; elsewhere it stays put."""
    assert criu.find().ok, criu.find().reason
    with TestGrid(2, ["--pool", "bio=30000-30999"]) as g:
        a, b = g.nodes
        a.expect_warning("migration of .* failed|refused")
        b.expect_warning("refused|restore failed|no UID pool")
        key = credential.new_key(str(tmp_path / "bio.key"))
        for n in (a, b):
            assert n.cli("node", "trust", "bio", str(tmp_path / "bio.key.pub"))[0] == 0
        b.stop()
        b.extra_args = [x for x in b.extra_args if x not in ("--pool", "bio=30000-30999")]
        b.start()
        token, _ = credential.issue(key, "alice", "bio", [], [], 600)
        with a.client() as ca, b.client() as cb:
            ws = ca.create("alice", credential=token, main=[PY, "-c", COUNTER], out="count.log")
            log = os.path.join(ws["directory"], "count.log")
            wait_for(lambda: len(lines(log)) >= 5, 10, "alice's counter")
            with pytest.raises(Exception) as e:
                ca.migrate("alice", b.name)
            assert getattr(e.value, "code", "") == "migration-failed" and "no UID pool" in str(e.value), e.value
            st = ca.stat("alice")
            assert st["state"] == "running" and st["owner"]["user"] == "alice" and cb.ls() == []
            log = os.path.join(st["directory"], "count.log")
            n = len(lines(log))
            wait_for(lambda: len(lines(log)) >= n + 5, 10, "alice's counter to go on at the source")
            ca.rm("alice")


class DropFirstAnswer:
    """A TCP proxy to `target` that passes every request on whole and drops the first answer. The link is
    TLS, which it cannot read: the answer is what the target sends once the client has sent more than the
    handshake and headers (the image)."""

    REQUEST = 1 << 20  # bytes from the client past which the target's next bytes are its answer

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
        return f"https://{host}:{port}"

    def _accept(self) -> None:
        while True:
            try:
                c, _ = self.srv.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(c,), daemon=True).start()

    def _serve(self, c: socket.socket) -> None:
        up = socket.create_connection(self.target)
        sent = [0]

        def forward() -> None:
            try:
                while data := c.recv(1 << 20):
                    up.sendall(data)
                    sent[0] += len(data)
                up.shutdown(socket.SHUT_WR)
            except OSError:
                pass  # the other direction closed both

        threading.Thread(target=forward, daemon=True).start()
        try:
            while data := up.recv(1 << 20):
                if not self.dropped.is_set() and sent[0] > self.REQUEST:
                    self.dropped.set()  # the answer begins: the target has acted; the client never learns it
                    return
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


def test_answer_lost_after_the_target_restored(grid: TestGrid) -> None:
    """The target's reply lost after a successful restore: the workload runs there, once, and the
    source neither resumes it nor keeps it."""
    a, b = grid.nodes
    a.expect_warning("its answer was lost")
    target = urllib.parse.urlsplit(b.peer_url)
    proxy = DropFirstAnswer((target.hostname or "", target.port or 0))
    try:
        with a.client() as ca, b.client() as cb:
            ws = ca.create("cnt", main=[PY, "-c", COUNTER], out="count.log")
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
