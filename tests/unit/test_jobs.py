"""Job descriptions and the job directory: validation with fields, legal transitions, persistence."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from xos.aem import jobspec
from xos.aem.jobs import LEGAL, State, open_store
from xos.aem.jobspec import BadJob
from xos.errors import IllegalTransition, NotFound

GOOD = """
executable: /bin/echo
arguments: [hello]
resources: {cpus: 0.5, memory: 512M, egress: 20mbit, walltime: 10m}
requirements: TARGET.Memory >= 4096 && TARGET.Site == "b"
rank: -TARGET.Price
after: [7, {job: "8.1", when: finish}]
checkpointable: true
checkpoint_interval: 5m
count: 3
"""


def test_a_yaml_job_parses_and_json_too():
    spec = jobspec.parse(jobspec.load(GOOD))
    assert (spec.cpus, spec.memory, spec.walltime, spec.count) == (0.5, 512 << 20, 600.0, 3)
    assert [(d.job, d.when) for d in spec.after] == [("7", "success"), ("8.1", "finish")]
    again = jobspec.parse(jobspec.load(__import__("json").dumps(spec.to_json())))
    assert again == spec


def test_every_error_is_reported_with_its_field():
    with pytest.raises(BadJob) as e:
        jobspec.parse({"executable": 3, "resources": {"cpus": -1, "gpus": 2, "memory": "lots"},
                       "requirements": "Memory >=", "count": 0, "colour": "red", "after": ["x"],
                       "checkpoint_interval": "5m"})
    fields = [x["field"] for x in e.value.detail["errors"]]
    assert fields == ["colour", "executable", "resources.gpus", "resources.cpus", "resources.memory",
                      "requirements", "after[0]", "checkpoint_interval", "count"]


@pytest.mark.parametrize("text", ["", "[1, 2]", "{", "executable: [", b"\xff\xfe"])
def test_files_that_are_not_job_descriptions(text):
    with pytest.raises(BadJob):
        jobspec.parse(jobspec.load(text))


@settings(max_examples=200, deadline=None)
@given(st.dictionaries(st.sampled_from(sorted(jobspec.KNOWN) + ["x"]),
                       st.one_of(st.none(), st.integers(), st.text(max_size=20), st.lists(st.text(max_size=5)),
                                 st.dictionaries(st.text(max_size=5), st.integers()))))
def test_garbage_gets_bad_job_never_anything_else(data):
    try:
        jobspec.parse(data)
    except BadJob as e:
        assert e.detail["errors"] and all("field" in x and "reason" in x for x in e.detail["errors"])


def test_submit_array_token_and_persisted_transitions(tmp_path):
    store = open_store(str(tmp_path / "jobs.db"))
    spec = jobspec.parse({"executable": "/bin/true", "count": 3, "token": "t-1"})
    jobs = store.submit(spec, "alice@bio", "bio")
    assert [j.id for j in jobs] == ["1.0", "1.1", "1.2"] and all(j.state is State.QUEUED for j in jobs)
    assert [j.id for j in store.submit(spec, "alice@bio", "bio")] == ["1.0", "1.1", "1.2"]  # a retry, not more
    assert store.submit(jobspec.parse({"executable": "/bin/true"}), "alice@bio", "bio")[0].id == "2"
    store.transition("1.0", State.MATCHED, "node n1 chosen", node="n1")
    store.transition("1.0", State.RUNNING, "started")
    with pytest.raises(IllegalTransition, match="cannot resume job 1.1: it is queued"):
        store.control("1.1", "resume")
    store.control("1.0", "suspend")
    store.close()
    store = open_store(str(tmp_path / "jobs.db"))  # a restarted job manager finds it all
    job = store.get("1.0")
    assert (job.state, job.node) == (State.SUSPENDED, "n1")
    assert [h["to"] for h in store.history("1.0")] == ["queued", "matched", "running", "suspended"]
    with pytest.raises(NotFound):
        store.get("99")
    with pytest.raises(IllegalTransition):
        store.purge("1.0")
    store.control("1.0", "cancel")
    store.purge("1.0")
    with pytest.raises(NotFound):
        store.get("1.0")


def test_final_states_go_nowhere_and_every_state_can_be_cancelled_or_ends():
    for s in State:
        if s.final:
            assert LEGAL[s] == set()
        else:
            assert State.CANCELLED in LEGAL[s]


def test_dependencies(tmp_path):
    store = open_store(str(tmp_path / "jobs.db"))
    a = store.submit(jobspec.parse({"executable": "/bin/true"}), "u@v", "v")[0]
    b = store.submit(jobspec.parse({"executable": "/bin/true", "after": [a.id]}), "u@v", "v")[0]
    c = store.submit(jobspec.parse({"executable": "/bin/true", "after": [{"job": a.id, "when": "finish"}]}),
                     "u@v", "v")[0]
    assert store.ready(b) == (False, "waits for job 1 (queued)")
    for s in (State.MATCHED, State.RUNNING, State.FAILED):
        store.transition(a.id, s, "test")
    assert store.ready(b)[1].startswith("never: job 1 ended failed")
    assert store.ready(c) == (True, "")


def test_stdio_places_are_checked_with_their_field():
    from xos.aem.jobspec import BadJob, grid_path, parse

    ok = parse({"executable": "/bin/cat", "stdin": "grid://data/in/a.txt", "stdout": "result.txt",
                "stderr": "/var/log/job.err"})
    assert grid_path(ok.stdin) == ("data", "/in/a.txt") and grid_path(ok.stdout) is None
    for field, where, why in (("stdin", "in.txt", "absolute path on the node"),
                              ("stdout", "sub/out.txt", "must be a file name"),
                              ("stdout", "grid://data/../etc/passwd", "without . or .."),
                              ("stderr", "grid://no such/x", "names no volume"),
                              ("stdout", "grid://data/", "must name a file")):
        with pytest.raises(BadJob) as e:
            parse({"executable": "/bin/true", field: where})
        assert [x["field"] for x in e.value.detail["errors"]] == [field]
        assert why in e.value.message, e.value.message


def test_a_finished_jobs_credential_is_forgotten(tmp_path):
    store = open_store(str(tmp_path / "jobs.db"))
    a, b = (store.submit(jobspec.parse({"executable": "/bin/true"}), "alice@bio", "bio", "token-of-alice")[0]
            for _ in range(2))
    store.transition(a.id, State.MATCHED, "m", node="n1")
    store.transition(a.id, State.RUNNING, "r")
    assert store.credential(a.id) == "token-of-alice"  # needed to start it again elsewhere
    store.transition(a.id, State.DONE, "exit 0")
    store.control(b.id, "cancel")
    assert store.credential(a.id) == store.credential(b.id) == ""
    store.db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    assert b"token-of-alice" not in (tmp_path / "jobs.db").read_bytes()  # not in a free page either
    assert (tmp_path / "jobs.db").stat().st_mode & 0o077 == 0
