"""Two job managers on one PostgreSQL database: one active, one standing by. The active is killed (SIGKILL)
in the middle of a storm of submissions from a client given both URLs: the standby takes over on its own,
the client moves to it, every job acknowledged is there once and runs once, and the killed one started again
stands by."""

from __future__ import annotations

import json
import os
import shutil
import signal
import tempfile
import threading

from tests.grid.helpers import fresh_nodes
from xos.aem.client import Session
from xos.errors import XosError
from xos.identity import credential
from xos.testing import TestAem, TestGrid, tls_call, wait_for
from xos.testing.postgres import TestPostgres

# Each run of job I adds a line to runs/I: one line is one run.
JOB = 'echo "$1" >> {runs}/"$1"; echo "$1"'



def _log(aem: TestAem) -> str:
    with open(aem.log_path) as f:
        return f.read()


def test_the_standby_takes_over_a_killed_job_manager_mid_storm() -> None:
    base = tempfile.mkdtemp(prefix="xos-aem-ha-")
    os.chmod(base, 0o755)
    try:
        key = credential.new_key(os.path.join(base, "bio.key"))
        trust = credential.TrustStore(os.path.join(base, "trust"))
        trust.trust("bio", credential.public_pem(key.public_key()))
        runs = os.path.join(base, "runs")
        os.makedirs(runs, mode=0o777)
        os.chmod(runs, 0o777)
        with TestPostgres() as pg, TestGrid(1, ["--pool", "bio=31000-31999"]) as grid:
            assert grid.nodes[0].cli("node", "trust", "bio", os.path.join(base, "bio.key.pub"))[0] == 0
            db = pg.url("jobs")
            # Both keep jobs' outputs in one home: what shared storage gives two job managers on two hosts.
            first = TestAem(base, grid, trust.directory, db=db, port=7300, name="aem-a")
            second = TestAem(base, grid, trust.directory, db=db, port=7310, name="aem-b")
            token, _ = credential.issue(key, "alice", "bio", ["member"], [], 3600)
            first.start()
            s = Session(f"{first.url},{second.url}", token, ca=grid.ca)
            try:
                wait_for(lambda: fresh_nodes(s) == 1, 30, "the first job manager to see the node")
                second.start()
                wait_for(lambda: "standing by: the active aem is" in _log(second), 30, "the second to stand by")
                acknowledged: list[tuple[int, str]] = []
                stop = threading.Event()
                failures: list[str] = []

                def storm() -> None:
                    storm_session = Session(f"{first.url},{second.url}", token, ca=grid.ca)
                    try:
                        i = 0
                        while not stop.is_set():
                            try:
                                job = storm_session.run_job({"executable": "/bin/sh", "arguments": [
                                    "-c", JOB.format(runs=runs), "job", str(i)], "resources": {"cpus": 0.05}})
                                acknowledged.append((i, job))
                            except XosError as e:  # the answer was lost in the kill: not acknowledged
                                failures.append(str(e))
                            i += 1
                    finally:
                        storm_session.close()

                submitter = threading.Thread(target=storm)
                submitter.start()
                try:
                    wait_for(lambda: len(acknowledged) >= 20, 60, "submissions to the first job manager")
                    first.kill(signal.SIGKILL)
                    killed_at = len(acknowledged)
                    wait_for(lambda: len(acknowledged) >= killed_at + 20, 60,
                             "submissions to go on with the second job manager")
                finally:
                    stop.set()
                    submitter.join(60)
                assert "active aem (epoch 2)" in _log(second)
                first.start()  # back: it stands by now
                wait_for(lambda: "standing by: the active aem is" in _log(first).split("active aem (epoch 1)")[-1],
                         30, "the restarted first job manager to stand by")
                for i, job in acknowledged:
                    info = s.wait_terminated(job, 120)
                    assert info["state"] == "done", (i, info)
                    assert s.run(s.jm.output(job)) == f"{i}\n"
                for i, _ in acknowledged:  # each ran once
                    with open(os.path.join(runs, str(i))) as f:
                        assert f.read() == f"{i}\n", i
                ids = [j["id"] for j in s.run(s.jm.ls())]
                assert len(ids) == len(set(ids)) and {j for _, j in acknowledged} <= set(ids)
                assert len(failures) <= 2, failures  # at most the submissions the kill cut off
                for aem in (first, second):
                    assert aem.unexpected_warnings(["not reachable", "standing by"]) == []
            finally:
                s.close()
                first.stop()
                second.stop()
    finally:
        shutil.rmtree(base, ignore_errors=True)


def test_a_node_refuses_a_job_manager_older_than_one_it_heard() -> None:
    """A job manager deposed without knowing it (its calls still in flight) changes nothing on a node that has
    heard its successor."""
    with TestGrid(1) as grid:
        node = grid.nodes[0]
        aem = grid.host_dir("aem", ["aem"])
        url = f"{node.peer_url}/v1/peer/workspaces"
        assert tls_call(aem, url, headers={"X-Xos-Epoch": "7"})[0] == 200
        body = json.dumps({"name": "job-1", "credential": "x", "main": {"argv": ["/bin/true"]}}).encode()
        status, answer = tls_call(aem, url, "POST", body, headers={"X-Xos-Epoch": "6"})
        assert status == 503 and json.loads(answer)["error"]["code"] == "not-active", answer
        status, answer = tls_call(aem, url, headers={"X-Xos-Epoch": "-1"})
        assert status == 400 and json.loads(answer)["error"]["code"] == "invalid-input", answer
        assert tls_call(aem, url, headers={"X-Xos-Epoch": "7"})[0] == 200  # the newest still is heard
        assert tls_call(aem, url)[0] == 200  # and one on SQLite, without an epoch
        assert [w for w in node.unexpected_warnings() if "took over from epoch 6" not in w] == []
