"""The one lifecycle shape that workspaces, jobs and migrations share: every state has its row, every state
leads to an end, an illegal step is refused with both states, and a legal one carries its reason."""

from __future__ import annotations

import enum

import pytest

from xos.aem.jobs import JOB
from xos.aem.jobs import State as JobState
from xos.errors import IllegalTransition
from xos.lifecycle import Lifecycle
from xos.node.migration import MIGRATION, Migration, Phase
from xos.node.store import WORKSPACE

LIFECYCLES = [WORKSPACE, JOB, MIGRATION]


@pytest.mark.parametrize("life", LIFECYCLES, ids=lambda life: life.what)
def test_every_state_reaches_an_end(life) -> None:
    for start in life.legal:
        seen, todo = set(), [start]
        while todo:
            s = todo.pop()
            seen.add(s)
            todo.extend(life.legal[s] - seen)
        assert any(life.final(s) for s in seen), start


def test_a_table_without_a_row_for_some_state_is_refused() -> None:
    class Light(enum.StrEnum):
        ON = "on"
        OFF = "off"

    with pytest.raises(ValueError, match="no row for"):
        Lifecycle("light", {Light.ON: {Light.OFF}})


def test_jobs_refuse_what_their_table_does_not_allow_and_say_so() -> None:
    with pytest.raises(IllegalTransition) as e:
        JOB.step("7.0", JobState.DONE, JobState.RUNNING, "again", job="7.0")
    assert e.value.detail == {"state": "done", "wanted": "running", "job": "7.0"}
    t = JOB.step("7.0", JobState.QUEUED, JobState.MATCHED, "matched node n1")
    assert (t.old, t.new, t.reason) == ("queued", "matched", "matched node n1")


def test_a_migration_keeps_each_phase_with_its_reason_and_counts_what_was_sent() -> None:
    m = Migration("web", "n2")
    m.enter(Phase.DUMP)
    m.sending(1000)
    m.sent_more(600)
    m.sent_more(600)  # tar headers make more than the image: never past it
    assert m.to_json()["sent"] == 1000
    m.enter(Phase.RESUMING_HERE, "n2 did not take it: refused")
    with pytest.raises(IllegalTransition):
        m.enter(Phase.DONE)
    m.enter(Phase.FAILED, "migration failed")
    assert [(h["from"], h["to"], h["reason"]) for h in m.to_json()["history"]] == [
        ("starting", "dump", "dump"), ("dump", "transfer", "1000 bytes to n2"),
        ("transfer", "resuming here", "n2 did not take it: refused"), ("resuming here", "failed", "migration failed")]
