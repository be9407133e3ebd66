"""What a node answers the job manager is hostile until checked: an ad that is not a JSON object, or that
matching cannot evaluate, and a workspace listing of the wrong shape (no name, an end that is no exit
status, usage figures that are not counts) are refused with a warning, and the other nodes' ads and jobs
are dealt with all the same (before, one such node made every pass of the job manager fail, so nothing
was matched, finished or recovered for anyone)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from tests.aempasses import Nodes, passes
from xos.aem import jobspec
from xos.aem.jobs import JobStore, State, open_store
from xos.aem.nodes import ws_name

GOOD = {"Name": "n2", "Cpus": 4, "Memory": 8192, "Arch": "x86_64"}


@pytest.mark.parametrize("garbage", [[], "an ad", 7, None, {"Cpus": 2, "Requirements": "TARGET.Memory >="}],
                         ids=["list", "string", "number", "null", "unparsable-requirements"])
def test_one_nodes_garbage_ad_is_refused_and_the_others_are_taken(tmp_path, caplog, garbage: Any) -> None:
    store = open_store(str(tmp_path / "jobs.db"))

    async def answer(method: str, node: str, path: str) -> Any:
        assert (method, path) == ("GET", "/v1/peer/ad")
        return garbage if node == "n1" else GOOD

    a = passes(store, Nodes(answer), str(tmp_path))
    asyncio.run(a.refresh_ads(["n1", "n2"]))
    assert sorted(a.ads) == ["n2"] and a.ads["n2"].node.attrs["Cpus"] == 4
    assert any(r.levelname == "WARNING" and "refused the ad node n1 sent" in r.getMessage() for r in caplog.records)
    store.close()


def _running_on(store: JobStore, node: str) -> str:
    job = store.submit(jobspec.parse({"executable": "/bin/true"}), "alice@bio", "bio")[0]
    store.transition(job.id, State.MATCHED, f"matched node {node}", node=node)
    store.transition(job.id, State.RUNNING, f"started on node {node}")
    return job.id


@pytest.mark.parametrize("garbage", [
    {"listing": "all fine"}, [["job-1"]], [{"name": 7}],
    [{"name": "job-1", "main_exit": {"exit": "0; DROP TABLE jobs"}}],
    [{"name": "job-1", "main_exit": {"exit": 0}, "usage": {"cpu_seconds": -1e300}}],
    [{"name": "job-1", "main_exit": {"exit": 0}, "usage": {"cpu_seconds": float("nan")}}],
    [{"name": "job-1", "main_exit": {"exit": 0}, "usage": "lots"}],
], ids=["not-a-list", "not-objects", "name-not-text", "exit-not-a-number", "negative-usage", "nan-usage",
        "usage-not-an-object"])
def test_one_nodes_garbage_listing_is_refused_and_the_other_nodes_jobs_end(tmp_path, caplog, garbage: Any) -> None:
    store = open_store(str(tmp_path / "jobs.db"))
    on_n1, on_n2 = _running_on(store, "n1"), _running_on(store, "n2")

    async def answer(method: str, node: str, path: str) -> Any:
        if node == "n1":
            return garbage if path == "/v1/peer/workspaces" else {"name": ws_name(on_n1)}
        if path == "/v1/peer/workspaces":
            return [{"name": ws_name(on_n2), "main_exit": {"exit": 0}, "usage": {"cpu_seconds": 1.5}}]
        return {"name": ws_name(on_n2)} if method == "GET" else None

    a = passes(store, Nodes(answer), str(tmp_path))
    asyncio.run(a.monitor())
    assert store.get(on_n2).state is State.DONE  # the honest node's job ended
    assert store.get(on_n1).state is State.RUNNING  # left as it was: n1 counts as unreachable this round
    assert any(r.levelname == "WARNING" and r.getMessage().startswith("node n1 answered") for r in caplog.records)
    store.close()
