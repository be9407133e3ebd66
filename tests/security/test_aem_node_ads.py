"""A node's ad, fetched by the job manager, is hostile until checked: an ad that is not a JSON object, or
that matching cannot evaluate, is refused with a warning, and the other nodes' ads are taken all the same
(before, one such node made every pass of the job manager fail, so nothing was matched for anyone)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from tests.aempasses import Nodes, passes
from xos.aem.jobs import open_store

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
