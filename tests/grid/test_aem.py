"""The job manager on a test grid of three nodes: matching, dependencies, arrays, control, output."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import ssl
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request

import pytest

from tests.grid.helpers import fresh_nodes
from xos.aem.client import Session
from xos.checkpoint import criu
from xos.errors import XosError
from xos.identity import credential
from xos.testing import AEM_LISTEN, AEM_PEER_URL, AEM_URL, TestAem, TestGrid, purge_cgroups, tls_call, wait_for
from xos.testing.fsgrid import FsGrid

POOL = "bio=31000-31999"
MAX_OUTPUT = 24 << 20  # the job manager's cap on a job's collected output, for these tests
AEM = AEM_LISTEN


@pytest.fixture(scope="module")
def site():
    base = tempfile.mkdtemp(prefix="xos-aem-")
    os.chmod(base, 0o755)
    key = credential.new_key(os.path.join(base, "bio.key"))
    trust = credential.TrustStore(os.path.join(base, "trust"))
    trust.trust("bio", credential.public_pem(key.public_key()))
    node_args = [["--site", s, "--price", p, "--cpu", "1", "--memory", m]
                 for s, p, m in (("a", "3", "8G"), ("b", "2", "8G"), ("c", "1", "2G"))]
    node_args[2] += ["--aem", AEM_PEER_URL, "--ad-interval", "0.5"]  # c pushes its ad; a and b are asked
    with TestGrid(3, ["--pool", POOL], node_args) as grid, FsGrid(osds=1, clients=0, ca_dir=grid.ca_dir) as fs:
        for n in grid.nodes:
            assert n.cli("node", "trust", "bio", os.path.join(base, "bio.key.pub"))[0] == 0
        fs.add_vo("bio", key)
        fs.mkvol("data", "alice", "bio")
        for n in grid.nodes:  # jobs mount volumes on their nodes
            fs.attach(n.netns_path)
        aem = TestAem(base, grid, trust.directory, fs.mrc_url, pull=grid.nodes[:2], max_output=str(MAX_OUTPUT))
        grid.fs = fs
        aem.start()
        token, _ = credential.issue(key, "alice", "bio", ["member"], [], 3600)
        try:
            s = Session(AEM_URL, token, ca=grid.ca)
            wait_for(lambda: fresh_nodes(s) == 3, 30, "the job manager to see three nodes")
            yield grid, s, key, aem, base
            s.close()
            bad = aem.unexpected_warnings(["job .* refused by node", "not reachable", "refused an ad from"])
            bad += [w for n in grid.nodes for w in n.unexpected_warnings()]
            assert not bad, bad
        finally:
            aem.stop()
            shutil.rmtree(base, ignore_errors=True)



def test_requirements_land_on_the_only_such_node_and_output_comes_back(site):
    grid, s, *_ = site
    job = s.run_job({"executable": "/bin/sh", "arguments": ["-c", "echo hello from $(hostname); id -u"],
                     "resources": {"cpus": 0.25, "memory": "256M"},
                     "requirements": 'TARGET.Memory >= 4096 && TARGET.Site == "b"'})
    info = s.wait_terminated(job, 60)
    assert info["state"] == "done" and info["exit_status"] == 0, info
    assert info["node"] == grid.nodes[1].name
    out = s.run(s.jm.output(job))
    assert out.startswith("hello from") and 31000 <= int(out.split()[-1]) <= 31999  # the mapped account
    assert [h["to"] for h in info["history"]] == ["queued", "matched", "running", "done"]


def test_rank_on_price_picks_the_cheapest(site):
    grid, s, *_ = site
    job = s.run_job({"executable": "/bin/true", "resources": {"cpus": 0.1}, "rank": "-TARGET.Price"})
    assert s.wait_terminated(job, 60)["node"] == grid.nodes[2].name


def test_a_failing_job_fails_with_its_status(site):
    _, s, *_ = site
    job = s.run_job({"executable": "/bin/sh", "arguments": ["-c", "exit 7"], "resources": {"cpus": 0.1}})
    info = s.wait_terminated(job, 60)
    assert (info["state"], info["exit_status"]) == ("failed", 7)


def test_dependencies_and_arrays_run_in_order(site):
    _, s, *_ = site
    first = s.run_bulk_jobs({"executable": "/bin/sh", "arguments": ["-c", "echo a"], "resources": {"cpus": 0.1}}, 3)
    then = s.run_job({"executable": "/bin/true", "resources": {"cpus": 0.1}, "after": [first[0]]})
    infos = [s.wait_terminated(j, 90) for j in [*first, then]]
    assert all(i["state"] == "done" for i in infos)
    started = {i["id"]: next(h["at"] for h in s.job_info(i["id"])["history"] if h["to"] == "running") for i in infos}
    ended_first = next(h["at"] for h in s.job_info(first[0])["history"] if h["to"] == "done")
    assert started[then] >= ended_first


def test_control_verbs_act_on_the_real_workspace(site):
    grid, s, *_ = site
    job = s.run_job({"executable": "/bin/sh", "arguments": ["-c", "while :; do sleep 0.1; done"],
                     "resources": {"cpus": 0.1}})
    info = s.wait_started(job, 60)
    node = next(n for n in grid.nodes if n.name == info["node"])
    ws = "job-" + job.replace(".", "-")
    s.control(job, "suspend")
    with node.client() as c:
        assert c.stat(ws)["state"] == "frozen"
    with pytest.raises(XosError) as e:
        s.control(job, "suspend")
    assert e.value.code == "illegal-transition"
    s.control(job, "resume")
    with node.client() as c:
        assert c.stat(ws)["state"] == "running"
    s.control(job, "cancel")
    assert s.job_info(job)["state"] == "cancelled"
    with node.client() as c:
        assert ws not in [w["name"] for w in c.ls()]


def test_bad_jobs_refused_at_once(site):
    grid, s, key, *_ = site
    with pytest.raises(XosError) as e:
        s.run_job({"executable": "/bin/true", "requirements": "TARGET.Memory > 10000000"})
    assert e.value.code == "no-match" and "fail the job's requirements" in e.value.message
    with pytest.raises(XosError) as e:
        s.run_job({"executable": 3, "count": -1})
    assert e.value.code == "bad-job" and [x["field"] for x in e.value.detail["errors"]] == ["executable", "count"]
    with pytest.raises(XosError) as e:
        s.job_info("424242")
    assert e.value.code == "not-found"
    other, _ = credential.issue(credential.new_key(os.path.join(tempfile.mkdtemp(), "k")), "eve", "evil", [], [], 60)
    stranger = Session(AEM_URL, other, ca=grid.ca)
    try:
        with pytest.raises(XosError) as e:
            stranger.run_job({"executable": "/bin/true"})
        assert e.value.code.startswith("credential-")
    finally:
        stranger.close()


WAITER = 'echo started; while [ ! -e {m} ]; do sleep 0.05; done; echo finished'


def _marker(base, name):
    d = os.path.join(base, "markers")
    os.makedirs(d, mode=0o777, exist_ok=True)
    os.chmod(d, 0o777)
    return os.path.join(d, name)


def test_job_manager_killed_and_restarted_loses_nothing_and_runs_nothing_twice(site):
    _, s, _, aem, base = site
    m = _marker(base, "restart")
    job = s.run_job({"executable": "/bin/sh", "arguments": ["-c", WAITER.format(m=m)], "resources": {"cpus": 0.1}})
    s.wait_started(job, 60)
    aem.kill(signal.SIGKILL)
    aem.start()
    wait_for(lambda: fresh_nodes(s) == 3, 30, "the restarted job manager to see the nodes")
    open(m, "w").close()
    info = s.wait_terminated(job, 60)
    assert info["state"] == "done"
    assert s.run(s.jm.output(job)) == "started\nfinished\n"  # ran once, from the start
    assert [h["to"] for h in info["history"]].count("running") == 1


def test_a_lost_node_requeues_its_job_and_when_it_returns_no_second_copy_runs(site):
    grid, s, _, _, base = site
    m = _marker(base, "lost")
    job = s.run_job({"executable": "/bin/sh", "arguments": ["-c", WAITER.format(m=m)], "resources": {"cpus": 0.1},
                     "requirements": 'TARGET.Site == "a" || TARGET.Site == "b"', "rank": 'TARGET.Site == "a"'})
    first = s.wait_started(job, 60)
    a = grid.nodes[0]
    assert first["node"] == a.name
    ws = "job-" + job.replace(".", "-")
    a.expect_warning(".*")  # killed on purpose: its restart reports what it finds
    a.stop(signal.SIGKILL)
    wait_for(lambda: s.job_info(job)["node"] == grid.nodes[1].name and s.job_info(job)["state"] == "running", 60,
             "the job to run again on the other node")
    a.start()

    def a_has_no_copy():
        with a.client() as c:
            return ws not in [w["name"] for w in c.ls()]

    wait_for(a_has_no_copy, 60, "the returned node's copy of the job to be removed")
    open(m, "w").close()
    info = s.wait_terminated(job, 60)
    assert info["state"] == "done" and info["node"] == grid.nodes[1].name
    assert "requeued" in [h["to"] for h in info["history"]]


BURN = "i=0; while [ $i -lt 200000 ]; do i=$((i+1)); done"


def test_accounting_totals_equal_the_sum_of_the_usage_records(site):
    grid, s, *_ = site
    jobs = [s.run_job({"executable": "/bin/sh", "arguments": ["-c", BURN], "resources": {"cpus": 0.5},
                       "rank": "-TARGET.Price" if i else "TARGET.Price"}) for i in range(2)]
    infos = [s.wait_terminated(j, 120) for j in jobs]
    assert all(i["state"] == "done" for i in infos)
    rep = s.run(s.jm.accounting())
    mine = {r["job"]: r for r in rep["records"]}
    prices = {n.name: p for n, p in zip(grid.nodes, (3.0, 2.0, 1.0), strict=True)}
    for i in infos:
        r = mine[i["id"]]
        assert r["cpu_seconds"] > 0.05 and r["wall_seconds"] > 0 and r["node"] == i["node"]
        assert r["price"] == prices[i["node"]] and abs(r["cost"] - r["cpu_seconds"] / 3600 * r["price"]) < 1e-6
    for view, key in (("vo", "vo"), ("user", "owner"), ("node", "node")):
        for name, t in rep["totals"][view].items():
            rows = [r for r in rep["records"] if r[key] == name]
            assert t["jobs"] == len({r["job"] for r in rows})
            for k in ("cpu_seconds", "wall_seconds", "bytes_in", "bytes_out", "cost"):
                assert abs(t[k] - sum(r[k] for r in rows)) < 1e-6


def test_the_cli_submits_shows_and_reports(site, tmp_path):
    grid, s, key, _, _ = site
    token, _ = credential.issue(key, "alice", "bio", ["member"], [], 600)
    env = {**os.environ, "XOS_CREDENTIAL": token, "XOS_AEM": AEM_URL, "XOS_CA": grid.ca}

    def xos(*args):
        p = subprocess.run([sys.executable, "-m", "xos", *args], env=env, capture_output=True, text=True,
                           timeout=60)
        return p.returncode, p.stdout + p.stderr

    job = tmp_path / "job.yaml"
    job.write_text("executable: /bin/echo\narguments: [from, the, cli]\nresources: {cpus: 0.1}\n")
    code, out = xos("job", "submit", str(job))
    assert code == 0, out
    job_id = out.split()[0]
    assert s.wait_terminated(job_id, 60)["state"] == "done"
    code, out = xos("job", "status", job_id)
    assert code == 0 and f"{job_id} done" in out and "-> running" in out, out
    assert xos("job", "output", job_id) == (0, "from the cli\n")
    for offset in ("9" * 30, "9" * 5000, "-1"):  # seek() overflowed, int() refused: both answered 500
        req = urllib.request.Request(f"{AEM_URL}/v1/jobs/{job_id}/output?offset={offset}",
                                     headers={"Authorization": f"Bearer {token}"})
        with pytest.raises(urllib.error.HTTPError) as e:
            urllib.request.urlopen(req, timeout=10, context=ssl.create_default_context(cafile=grid.ca))
        assert e.value.code == 400 and json.loads(e.value.read())["error"]["code"] == "invalid-input"
    code, out = xos("acct", "report")
    assert code == 0 and "alice@bio" in out and "USER" in out, out
    bad = tmp_path / "bad.yaml"
    bad.write_text("executable: /bin/true\nresources: {cpus: lots}\n")
    code, out = xos("job", "submit", str(bad))
    assert code != 0 and out.startswith("xos: error bad-job: job description: resources.cpus:"), out
    code, out = xos("job", "run", "--cpus", "0.1", "--", "/bin/sh", "-c", "echo ran; exit 5")
    assert code == 5 and out.startswith("ran\n") and "failed: exit 5" in out, out
    code, out = xos("job", "watch", job_id)
    assert code == 0 and out.startswith(f"{job_id} done"), out
    code, out = xos("job", "resume", job_id)
    assert code != 0 and "illegal-transition" in out and "it is done" in out, out
    assert xos("job", "rm", job_id) == (0, f"{job_id} removed\n")
    code, out = xos("job", "status", job_id)
    assert code != 0 and "not-found" in out, out
    assert job_id in [r["job"] for r in s.run(s.jm.accounting())["records"]]  # the accounts keep it
    running = s.run_job({"executable": "/bin/sleep", "arguments": ["60"], "resources": {"cpus": 0.1}})
    s.wait_started(running, 60)
    code, out = xos("job", "purge", running)
    assert code != 0 and "illegal-transition" in out and "only finished jobs" in out, out
    s.control(running, "cancel")


def test_nodes_matching_an_expression_best_first_and_a_range_on_one_attribute(site):
    grid, s, *_ = site
    found = s.run(s.jm.nodes("TARGET.TotalMemory >= 4096", "-TARGET.Price"))
    assert [x["name"] for x in found] == [grid.nodes[1].name, grid.nodes[0].name]
    assert [x["name"] for x in s.run(s.jm.nodes("TARGET.Price >= 2 && TARGET.Price < 3"))] == [grid.nodes[1].name]
    with pytest.raises(XosError) as e:
        s.run(s.jm.nodes("Price >="))
    assert e.value.code == "bad-expression"


def test_a_job_past_its_walltime_is_stopped_and_fails(site):
    grid, s, *_ = site
    job = s.run_job({"executable": "/bin/sh", "arguments": ["-c", "echo started; while :; do sleep 0.1; done"],
                     "resources": {"cpus": 0.1, "walltime": "1s"}})
    info = s.wait_terminated(job, 60)
    assert info["state"] == "failed" and "walltime of 1 s exceeded" in info["reason"], info
    assert s.run(s.jm.output(job)) == "started\n"
    node = next(n for n in grid.nodes if n.name == info["node"])
    with node.client() as c:
        assert "job-" + job.replace(".", "-") not in [w["name"] for w in c.ls()]


COUNTER = """
import os, sys, time
PACE = 0.02  # the program's own pace
i = 0
while not os.path.exists(sys.argv[1]):
    i += 1
    print(i, flush=True)
    time.sleep(PACE)
"""


def _lines_on_node(node, ws):
    with node.client() as c:
        path = os.path.join(c.stat(ws)["directory"], "stdout")
    try:
        with open(path) as f:
            return f.read().split()
    except FileNotFoundError:
        return []


def test_checkpoint_and_migrate_a_running_job_it_continues_never_restarts(site):
    grid, s, _, _, base = site
    stop = _marker(base, "counter")
    job = s.run_job({"executable": "/usr/bin/python3", "arguments": ["-c", COUNTER, stop],
                     "resources": {"cpus": 0.2, "memory": "128M"}, "requirements": 'TARGET.Site == "a"'})
    info = s.wait_started(job, 60)
    src = next(n for n in grid.nodes if n.name == info["node"])
    ws = "job-" + job.replace(".", "-")
    wait_for(lambda: len(_lines_on_node(src, ws)) >= 20, 30, "the counter to count")
    done = s.control(job, "checkpoint")
    assert done["state"] == "running" and "kept by the job manager" in done["reason"], done
    assert s.job_info(job)["checkpoint"]["bytes"] > 1 << 20
    to = grid.nodes[1].name
    moved = s.control(job, "migrate", to=to, live=bool(criu.find().live))  # stopped only briefly where it can
    assert (moved["state"], moved["node"]) == ("running", to), moved["reason"]
    with src.client() as c:
        assert ws not in [w["name"] for w in c.ls()]
    target = next(n for n in grid.nodes if n.name == to)
    counted = len(_lines_on_node(target, ws))
    wait_for(lambda: len(_lines_on_node(target, ws)) >= counted + 20, 30, "the counter to go on at the target")
    open(stop, "w").close()
    info = s.wait_terminated(job, 120)
    assert info["state"] == "done", info
    nums = [int(x) for x in s.run(s.jm.output(job)).split()]
    assert nums == list(range(1, len(nums) + 1)) and len(nums) >= counted + 20  # went on: no restart, no repeat
    assert [h["to"] for h in info["history"]].count("migrating") == 1
    parts = [r for r in s.run(s.jm.accounting())["records"] if r["job"] == job]
    assert sorted(r["node"] for r in parts) == sorted([src.name, to])  # each node charges its own part
    assert all(r["wall_seconds"] > 0 for r in parts)  # each part was measured (a record, not a timing)


STAMPED = """
import os, sys, time
i = 0
while not os.path.exists(sys.argv[1]):
    i += 1
    print(i, time.time(), flush=True)
    time.sleep(0.02)  # the program's own pace, not a wait of the test
"""


def test_a_lost_node_s_checkpointable_job_resumes_elsewhere_from_its_last_checkpoint(site):
    grid, s, _, _, base = site
    a, b = grid.nodes[0], grid.nodes[1]
    stop = _marker(base, "resume")
    job = s.run_job({"executable": "/usr/bin/python3", "arguments": ["-c", STAMPED, stop],
                     "resources": {"cpus": 0.2, "memory": "128M"}, "checkpointable": True,
                     "checkpoint_interval": "1s", "requirements": 'TARGET.Site == "a" || TARGET.Site == "b"',
                     "rank": 'TARGET.Site == "a"'})
    assert s.wait_started(job, 60)["node"] == a.name
    ws = "job-" + job.replace(".", "-")
    wait_for(lambda: "checkpoint" in s.job_info(job), 60, "a periodic checkpoint to reach the job manager")
    a.expect_warning(".*")  # killed on purpose: its restart reports what it finds
    killed = time.time()
    a.stop(signal.SIGKILL)
    purge_cgroups(a.cgroup_root)  # the machine is gone: its daemon and the job's processes
    try:
        wait_for(lambda: (s.job_info(job)["node"], s.job_info(job)["state"]) == (b.name, "running"), 60,
                 "the job to run again on the other node")
        assert any("from its checkpoint" in h["reason"] for h in s.job_info(job)["history"])
        wait_for(lambda: float((_lines_on_node(b, ws) or ["0", "0"])[-1]) > killed + 0.5, 30,
                 "the counter to go on at its new node")
        open(stop, "w").close()
        info = s.wait_terminated(job, 60)
    finally:
        a.start()
        wait_for(lambda: fresh_nodes(s) == 3, 30, "the job manager to see node a again")
    assert info["state"] == "done", info
    rows = [line.split() for line in s.run(s.jm.output(job)).splitlines()]
    nums, stamps = [int(r[0]) for r in rows], [float(r[1]) for r in rows]
    assert nums == list(range(1, len(nums) + 1))  # it went on: never from zero again, no number twice
    assert stamps[0] < killed < stamps[-1]  # its beginning came along in the checkpoint, its end is new
    assert "checkpoint" not in info  # the image goes with the job


def test_a_node_that_takes_capacity_back_has_its_jobs_moved_away(site):
    grid, s, _, _, base = site
    a, b = grid.nodes[0], grid.nodes[1]
    stop, m = _marker(base, "reclaim-counter"), _marker(base, "reclaim-waiter")
    where = {"requirements": 'TARGET.Site == "a" || TARGET.Site == "b"', "rank": 'TARGET.Site == "a"'}
    ck = s.run_job({"executable": "/usr/bin/python3", "arguments": ["-c", COUNTER, stop], "checkpointable": True,
                    "resources": {"cpus": 0.4, "memory": "128M"}, **where})
    plain = s.run_job({"executable": "/bin/sh", "arguments": ["-c", WAITER.format(m=m)],
                       "resources": {"cpus": 0.4}, **where})
    assert s.wait_started(ck, 60)["node"] == a.name and s.wait_started(plain, 60)["node"] == a.name
    ws = "job-" + ck.replace(".", "-")
    wait_for(lambda: len(_lines_on_node(a, ws)) >= 10, 30, "the counter to count")
    code, out, err = a.cli("node", "offer", "--cpu", "0.1")
    try:
        assert code == 0 and "offers cpu=0.1" in out and "allocated cpu=0.8" in out, out + err
        wait_for(lambda: all(s.job_info(j)["node"] == b.name and s.job_info(j)["state"] == "running"
                             for j in (ck, plain)), 60, "both jobs to run on the other node")
        with a.client() as c:
            assert not [w for w in c.ls() if w["name"].startswith("job-")]
            assert c.ad()["OverCpus"] == 0
    finally:
        assert a.cli("node", "offer", "--cpu", "1")[0] == 0
    counted = len(_lines_on_node(b, ws))
    wait_for(lambda: len(_lines_on_node(b, ws)) > counted + 10, 30, "the counter to go on at its new node")
    open(stop, "w").close()
    open(m, "w").close()
    ck_info, plain_info = s.wait_terminated(ck, 60), s.wait_terminated(plain, 60)
    assert ck_info["state"] == plain_info["state"] == "done"
    nums = [int(x) for x in s.run(s.jm.output(ck)).split()]
    assert nums == list(range(1, len(nums) + 1)) and len(nums) > counted + 10  # migrated, not restarted
    assert any("took capacity back: migrating" in h["reason"] for h in ck_info["history"])
    assert any(h["to"] == "requeued" and "took capacity back" in h["reason"] for h in plain_info["history"])
    assert s.run(s.jm.output(plain)) == "started\nfinished\n"  # restarted elsewhere, ran whole once there


def test_a_bad_offer_is_refused_and_changes_nothing(site):
    grid, *_ = site
    a = grid.nodes[0]
    with a.client() as c:
        before = c.info()["capacity"]
    for args in (("--cpu", "-1"), ("--memory", "lots"), ()):
        code, out, err = a.cli("node", "offer", *args)
        assert code != 0 and err.startswith("xos: error ") and len(err.strip().splitlines()) == 1, err
    with a.client() as c:
        assert c.info()["capacity"] == before


def test_stdio_from_and_to_the_grid_file_system_and_the_node(site, tmp_path):
    grid, s, key, _, _ = site
    fs = grid.fs
    c = fs.client("data", "alice", "bio")
    try:
        with c.open("/words", "wb") as f:
            f.write(b"grid\nfile\nsystem\n")
        job = s.run_job({"executable": "/bin/sh", "arguments": ["-c", "sort; echo warned >&2"],
                         "stdin": "grid://data/words", "stdout": "grid://data/sorted", "stderr": "grid://data/err",
                         "resources": {"cpus": 0.1}})
        info = s.wait_terminated(job, 60)
        assert info["state"] == "done", info
        with c.open("/sorted", "rb") as f:
            assert f.read() == b"file\ngrid\nsystem\n"
        with c.open("/err", "rb") as f:
            assert f.read() == b"warned\n"
        assert s.run(s.jm.output(job)) == "file\ngrid\nsystem\n"  # kept here too
        assert s.run(s.jm.output(job, "stderr")) == "warned\n"
        # A grid stdin that is not there fails the job with the reason; nothing runs.
        job = s.run_job({"executable": "/bin/cat", "stdin": "grid://data/missing", "resources": {"cpus": 0.1}})
        info = s.wait_terminated(job, 60)
        assert info["state"] == "failed" and "grid://data/missing" in info["reason"], info
        # Into a directory the job's user may not write: the job does not start, and says why.
        job = s.run_job({"executable": "/bin/echo", "stdout": "/proc/no-such/out", "resources": {"cpus": 0.1}})
        info = s.wait_terminated(job, 60)
        assert info["state"] != "done" and "cannot open its stdout /proc/no-such/out" in info["reason"], info
    finally:
        c.close()


def test_job_run_streams_output_while_the_job_runs(site, tmp_path):
    grid, _, key, _, base = site
    token, _ = credential.issue(key, "alice", "bio", ["member"], [], 600)
    m = _marker(base, "stream")
    env = {**os.environ, "XOS_CREDENTIAL": token, "XOS_AEM": AEM_URL, "XOS_CA": grid.ca}
    p = subprocess.Popen([sys.executable, "-m", "xos", "job", "run", "--cpus", "0.1", "--", "/bin/sh", "-c",
                          WAITER.format(m=m)], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        assert p.stdout.readline() == b"started\n"  # before the job has ended: it waits for the marker
        open(m, "w").close()
        out, err = p.communicate(timeout=60)
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
    assert (p.returncode, out) == (0, b"finished\n"), err


def test_a_node_pushes_its_ad_and_a_forged_or_bad_push_changes_nothing(site):
    import json

    grid, s, *_ = site
    c = grid.nodes[2]
    known = {n["name"]: n for n in s.run(s.jm.nodes())}
    assert known[c.name]["url"] == c.peer_url and known[c.name]["fresh"]  # learned from its pushes alone
    with c.client() as nc:
        assert known[c.name]["ad"]["TotalMemory"] == nc.ad()["TotalMemory"]

    def push(body, host):
        status, answer = tls_call(host, f"{AEM_PEER_URL}/v1/peer/ads/{c.name}", "PUT", json.dumps(body).encode())
        return status, (json.loads(answer)["error"]["code"] if status >= 400 else "")

    forged = {"url": "https://198.18.0.99:7200", "ad": {**known[c.name]["ad"], "Memory": 1 << 30}}
    a = grid.host_dir(grid.nodes[0].name, ["node"])
    assert push(forged, a) == (403, "permission-denied")  # another node pushes only its own ad
    assert push(forged, grid.host_dir("a-file-server", ["osd"])) == (403, "permission-denied")
    with pytest.raises(OSError):  # no certificate of its own: the handshake fails
        push(forged, None)
    own = grid.host_dir(c.name, ["node"])
    assert push({"url": c.peer_url, "ad": {"Requirements": "Memory >="}}, own) == (400, "invalid-input")
    assert push({"url": "ftp://x", "ad": {}}, own) == (400, "invalid-input")
    after = {n["name"]: n for n in s.run(s.jm.nodes())}[c.name]
    assert after["url"] == c.peer_url and after["ad"]["Memory"] < 1 << 30


def test_a_job_a_node_refuses_is_matched_elsewhere(site):
    grid, s, *_ = site
    a, b = grid.nodes[0], grid.nodes[1]
    probe = s.run_job({"executable": "/bin/true", "resources": {"cpus": 0.1}})
    s.wait_terminated(probe, 60)
    nxt = str(int(probe) + 1)
    a.expect_warning(".*exists")
    with a.client() as c:
        c.create("job-" + nxt, cpu="0.05")  # node a will refuse the next job: its workspace name is taken
        try:
            job = s.run_job({"executable": "/bin/echo", "arguments": ["elsewhere"], "resources": {"cpus": 0.1},
                             "requirements": 'TARGET.Site == "a" || TARGET.Site == "b"',
                             "rank": 'TARGET.Site == "a"'})
            assert job == nxt
            info = s.wait_terminated(job, 60)
        finally:
            with contextlib.suppress(XosError):  # the job manager's stray sweep may have taken it already
                c.rm("job-" + nxt)
    assert info["state"] == "done" and info["node"] == b.name, info
    assert any(f"node {a.name} refused" in h["reason"] for h in info["history"])
    assert s.run(s.jm.output(job)) == "elsewhere\n"


def test_a_job_mounts_its_volumes_and_works_on_grid_files_by_path(site):
    grid, s, *_ = site
    c = grid.fs.client("data", "alice", "bio")
    try:
        with c.open("/numbers", "wb") as f:
            f.write(b"3\n1\n2\n")
        job = s.run_job({"executable": "/bin/sh", "volumes": ["data"], "resources": {"cpus": 0.1},
                         "arguments": ["-c", "cd /run/xos-work/grid/data && sort numbers > sorted && cat sorted"]})
        info = s.wait_terminated(job, 60)
        assert info["state"] == "done", info
        with c.open("/sorted", "rb") as f:
            assert f.read() == b"1\n2\n3\n"
        assert s.run(s.jm.output(job)) == "1\n2\n3\n"
    finally:
        c.close()


def test_output_larger_than_the_cap_is_cut_and_the_job_told(site):
    """Output collection by the job manager is bounded: a job making its stdout a sparse 10 TiB file
    does not fill the job manager's disk; the first bytes are kept and the job's reason says why."""
    grid, s, _key, _aem, base = site
    job = s.run_job({"executable": "/bin/sh", "arguments": ["-c", "echo first; truncate -s 10T stdout"],
                     "resources": {"cpus": 0.25, "memory": "128M"}})
    info = s.wait_terminated(job, 120)
    assert info["state"] == "done" and info["exit_status"] == 0, info
    assert "output-too-large" in info["reason"] or "larger than the job manager keeps" in info["reason"], info
    kept = [os.path.join(d, f) for d, _, fs in os.walk(os.path.join(base, "home", "aem", "output")) for f in fs
            if f == str(job) or f.startswith(f"{job}.")]
    assert kept and max(os.path.getsize(p) for p in kept) == MAX_OUTPUT, kept
    assert s.run(s.jm.output(job)).startswith("first")
    # Secrets at rest: outputs, images and the job store (credentials) are the job manager's alone.
    home = os.path.join(base, "home")
    private = [os.path.join(home, "aem", d) for d in ("output", "images")] + kept
    private += [os.path.join(d, f) for d, _, fs in os.walk(home) for f in fs if ".db" in f]
    for path in private:
        assert os.stat(path).st_mode & 0o077 == 0, (path, oct(os.stat(path).st_mode))


def _families(text: str) -> dict[str, list[tuple[dict[str, str], float]]]:
    """A /metrics answer parsed by Prometheus's own parser: each family's samples (name with suffix)."""
    from prometheus_client.parser import text_string_to_metric_families

    out: dict[str, list[tuple[dict[str, str], float]]] = {}
    for fam in text_string_to_metric_families(text):
        for sample in fam.samples:
            out.setdefault(sample.name, []).append((dict(sample.labels), sample.value))
    return out


def _value(fams: dict[str, list[tuple[dict[str, str], float]]], name: str, **labels: str) -> float:
    return sum(v for lab, v in fams.get(name, []) if all(lab.get(k) == x for k, x in labels.items()))


def test_every_daemon_exports_prometheus_metrics(site):
    """The job manager, a node, the MRC and an OSD answer GET /metrics in the text format Prometheus parses:
    requests, errors and latencies by operation, and each one's own sizes; a made-up operation adds no label."""
    grid, s, *_ = site
    job = s.run_job({"executable": "/bin/true", "resources": {"cpus": 0.1}})
    assert s.wait_terminated(job, 60)["state"] == "done"
    status, body = tls_call(None, f"{AEM_URL}/metrics")
    assert status == 200, body
    aem = _families(body.decode())
    assert _value(aem, "xos_aem_requests_total", op="POST /v1/jobs") >= 1
    assert _value(aem, "xos_aem_jobs", state="done") >= 1 and _value(aem, "xos_aem_nodes", fresh="true") == 3
    assert _value(aem, "xos_aem_matchmaking_seconds_count") >= 1
    assert _value(aem, "xos_aem_request_duration_seconds_count", op="POST /v1/jobs") >= 1
    code, out, _ = grid.nodes[0].cli("node", "metrics")
    node = _families(out)
    assert code == 0 and _value(node, "xos_node_requests_total", op="GET /v1/peer/ad") >= 1  # the aem asks
    assert "xos_workspaces" in node
    fs = grid.fs
    req = urllib.request.Request(f"{fs.mrc_url}/v1/volumes/data/fs/no_such_op_{os.getpid()}", data=b"{}",
                                 method="POST")
    with pytest.raises(urllib.error.HTTPError):
        fs.urlopen(req, timeout=10)
    with fs.urlopen(f"{fs.mrc_url}/metrics", timeout=10) as r:
        mrc = _families(r.read().decode())
    assert _value(mrc, "xos_mrc_volumes") >= 1 and _value(mrc, "xos_mrc_requests_total", op="POST /v1/volumes") >= 1
    assert _value(mrc, "xos_mrc_errors_total", op="POST /v1/volumes/{volume}/fs/{op}") >= 1
    assert not any(lab.get("op", "").startswith("no_such_op") for lab, _ in mrc["xos_mrc_requests_total"])
    with fs.urlopen(f"{fs.osd_url(0)}/metrics", timeout=10) as r:
        osd = _families(r.read().decode())
    assert _value(osd, "xos_osd_capacity_bytes") > 0 and "xos_osd_objects" in osd
    assert "xos_osd_written_bytes_total" in osd
