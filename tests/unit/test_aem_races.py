"""The job manager's passes when a job changes while a node is being asked about it: what the node
answers about the job as it was must not undo what happened to it meanwhile."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from tests.aempasses import Nodes, passes
from xos.aem import jobspec
from xos.aem.classad import NodeAd
from xos.aem.jobs import Job, JobStore, State, open_store
from xos.aem.nodes import ws_name
from xos.aem.service import Ad, Aem
from xos.errors import Conflict, Unavailable


def _running(store: JobStore) -> Job:
    job = store.submit(jobspec.parse({"executable": "/bin/sleep", "arguments": ["60"]}), "alice@bio", "bio")[0]
    store.transition(job.id, State.MATCHED, "matched node n1", node="n1")
    return store.transition(job.id, State.RUNNING, "started on node n1")


def test_a_job_migrated_while_its_node_was_listed_is_not_failed_as_vanished(tmp_path) -> None:
    store = open_store(str(tmp_path / "jobs.db"))
    job = _running(store)

    async def answer(method: str, node: str, path: str) -> Any:
        # the migration went on meanwhile: the job left n1, and the listing no longer shows it there
        store.transition(job.id, State.MIGRATING, "migrating to node n2")
        return []

    asyncio.run(passes(store, Nodes(answer), str(tmp_path)).monitor())
    assert store.get(job.id).state is State.MIGRATING
    store.close()


def test_a_job_cancelled_while_its_node_refused_it_stays_cancelled_and_the_pass_goes_on(tmp_path) -> None:
    store = open_store(str(tmp_path / "jobs.db"))
    job = store.submit(jobspec.parse({"executable": "/bin/true"}), "alice@bio", "bio")[0]
    job = store.transition(job.id, State.MATCHED, "matched node n1", node="n1")

    async def answer(method: str, node: str, path: str) -> Any:
        store.control(job.id, "cancel", "by its owner")
        raise Unavailable("node n1 refused it")

    started: list[tuple[str, State, str, str | None]] = []
    asyncio.run(passes(store, Nodes(answer), str(tmp_path)).dispatch(job, started))
    assert store.get(job.id).state is State.CANCELLED and started == []
    store.close()


def test_a_job_that_ended_is_neither_checkpointed_nor_migrated_while_its_end_is_collected(tmp_path) -> None:
    """A checkpoint taken while the job's output is collected would bring it back to running after its
    workspace went (and the next pass would fail it as vanished): it is refused instead."""
    store = open_store(str(tmp_path / "jobs.db"))
    job = _running(store)
    refused: list[str] = []
    a: Aem

    async def answer(method: str, node: str, path: str) -> Any:
        if method == "GET" and path == "/v1/peer/workspaces":
            return [{"name": ws_name(job.id), "main_exit": {"exit": 0}}]
        if method == "COLLECT":  # its owner asks for a checkpoint, and a migration, while its output comes
            for verb in (a.checkpoint(store.get(job.id)), a.migrate(store.get(job.id), "n2")):
                with pytest.raises(Conflict) as e:
                    await verb
                refused.append(e.value.message)
        return {}

    a = passes(store, Nodes(answer), str(tmp_path))
    asyncio.run(a.monitor())
    assert refused == [f"job {job.id} has ended; its output and usage are being collected"] * 2
    assert store.get(job.id).state is State.DONE and a.ending == set()
    store.close()


def test_a_node_whose_first_ad_arrives_while_strays_are_swept_does_not_break_the_sweep(tmp_path) -> None:
    store = open_store(str(tmp_path / "jobs.db"))
    a: Aem

    async def answer(method: str, node: str, path: str) -> Any:
        # a node not seen before pushes its first ad while this one is being asked
        a.ads["n3"] = Ad(NodeAd("n3", {"Cpus": 1}), "https://n3", 1e18)
        return []

    a = passes(store, Nodes(answer), str(tmp_path))
    for n in ("n1", "n2"):
        a.ads[n] = Ad(NodeAd(n, {"Cpus": 1}), f"https://{n}", 1e18)
    asyncio.run(a.sweep_strays())
    assert sorted(a.ads) == ["n1", "n2", "n3"]
    store.close()
