"""The node store: durable across reopen, names unique among live workspaces only."""

import sqlite3

import pytest

from xos.allocation import Allocation
from xos.errors import IllegalTransition
from xos.node.store import WORKSPACE, ProcessRecord, UsageRecord, WorkspaceRecord, open_store
from xos.node.store import WorkspaceState as W


def test_round_trip_across_reopen(tmp_path):
    path = str(tmp_path / "node.db")
    s = open_store(path)
    rec = WorkspaceRecord(id="abcd1234", name="a", state="creating", alloc=Allocation(cpu=0.5), uid=1, gid=2,
                          address="198.19.0.2", init_pid=42, init_start=7)
    s.add_workspace(rec)
    s.transition(rec, WORKSPACE.step("a", W.CREATING, W.RUNNING, "created"))
    s.save_usage(UsageRecord("abcd1234", "a", 1.0, cpu_ns=5, bytes_in=9))
    row = s.add_process(ProcessRecord("abcd1234", 42, ["true"], 2.0))
    s.end_process(row, 3.0, 0, None, False)
    s.close()

    s = open_store(path)
    [back] = s.workspaces()
    assert back.state == "running" and back.alloc.cpu == 0.5 and back.init_pid == 42
    assert [t[:2] for t in s.transitions("abcd1234")] == [("", "creating"), ("creating", "running")]
    assert s.usage("a")[0].bytes_in == 9
    assert s.processes("abcd1234")[0].exit_code == 0


def test_live_names_unique_destroyed_kept(tmp_path):
    s = open_store(str(tmp_path / "node.db"))
    first = WorkspaceRecord(id="1", name="a", state="running", alloc=Allocation(), uid=0, gid=0, address="x")
    s.add_workspace(first)
    with pytest.raises(sqlite3.IntegrityError):
        s.add_workspace(WorkspaceRecord(id="2", name="a", state="creating", alloc=Allocation(), uid=0, gid=0,
                                        address="y"))
    s.transition(first, WORKSPACE.step("a", W.RUNNING, W.DESTROYING, "going"))
    s.transition(first, WORKSPACE.step("a", W.DESTROYING, W.DESTROYED, "gone"))
    s.add_workspace(WorkspaceRecord(id="3", name="a", state="creating", alloc=Allocation(), uid=0, gid=0,
                                    address="y"))
    assert len(s.workspaces(include_destroyed=True)) == 2


@pytest.mark.parametrize("old,new", [("destroyed", "running"), ("creating", "frozen"), ("frozen", "creating"),
                                     ("destroying", "running")])
def test_illegal_transitions_are_refused_with_both_states(old, new):
    with pytest.raises(IllegalTransition) as e:
        WORKSPACE.step("w", W(old), W(new), "asked")
    assert e.value.detail == {"state": old, "wanted": new} and f"workspace w is {old}" in e.value.message
