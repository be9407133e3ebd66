"""The job manager with its jobs kept in PostgreSQL: jobs run, and one killed and started again on the same
database loses nothing and runs nothing twice (tests/grid/test_aem.py runs the rest on SQLite)."""

from __future__ import annotations

import os
import shutil
import signal
import tempfile

from tests.grid.helpers import fresh_nodes
from xos.aem.client import Session
from xos.identity import credential
from xos.testing import AEM_URL, TestAem, TestGrid, wait_for
from xos.testing.postgres import TestPostgres

WAITER = 'echo started; while [ ! -e {m} ]; do sleep 0.05; done; echo finished'



def test_jobs_kept_in_postgresql_survive_a_killed_job_manager() -> None:
    base = tempfile.mkdtemp(prefix="xos-aem-pg-")
    os.chmod(base, 0o755)
    try:
        key = credential.new_key(os.path.join(base, "bio.key"))
        trust = credential.TrustStore(os.path.join(base, "trust"))
        trust.trust("bio", credential.public_pem(key.public_key()))
        marker = os.path.join(base, "markers", "go")
        os.makedirs(os.path.dirname(marker), mode=0o777)
        os.chmod(os.path.dirname(marker), 0o777)
        with TestPostgres() as pg, TestGrid(1, ["--pool", "bio=31000-31999"]) as grid:
            assert grid.nodes[0].cli("node", "trust", "bio", os.path.join(base, "bio.key.pub"))[0] == 0
            aem = TestAem(base, grid, trust.directory, db=pg.url("jobs"))
            aem.start()
            token, _ = credential.issue(key, "alice", "bio", ["member"], [], 3600)
            s = Session(AEM_URL, token, ca=grid.ca)
            try:
                wait_for(lambda: fresh_nodes(s) == 1, 30, "the job manager to see the node")
                done = [s.run_job({"executable": "/bin/echo", "arguments": [str(i)]}) for i in range(3)]
                assert [s.wait_terminated(j, 60)["state"] for j in done] == ["done"] * 3
                waiting = s.run_job({"executable": "/bin/sh", "arguments": ["-c", WAITER.format(m=marker)],
                                     "resources": {"cpus": 0.1}})
                s.wait_started(waiting, 60)
                aem.kill(signal.SIGKILL)
                aem.start()
                wait_for(lambda: fresh_nodes(s) == 1, 30, "the restarted job manager to see the node")
                open(marker, "w").close()
                info = s.wait_terminated(waiting, 60)
                assert info["state"] == "done" and s.run(s.jm.output(waiting)) == "started\nfinished\n"
                assert [h["to"] for h in info["history"]].count("running") == 1  # ran once
                assert [s.run(s.jm.output(j)) for j in done] == ["0\n", "1\n", "2\n"]  # what it had before
            finally:
                s.close()
                aem.stop()
    finally:
        shutil.rmtree(base, ignore_errors=True)
