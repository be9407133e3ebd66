"""The job manager's passes run against stand-in nodes: each call a node would get is answered by a
function of the test's, which may change the job store first (a job moving on while its node is asked)."""

from __future__ import annotations

import asyncio
import ssl
import types
from collections.abc import Awaitable, Callable
from typing import Any

from xos.aem import nodes
from xos.aem.jobs import JobStore
from xos.aem.service import Aem


class Nodes(nodes.Nodes):
    """Stand-in nodes: each call is answered by `answer`, which may change the store first; what the job
    manager makes of the answers (their checks) is the real link's."""

    def __init__(self, answer: Callable[[str, str, str], Awaitable[Any]]) -> None:
        super().__init__({"n1": "https://n1", "n2": "https://n2"}, ssl.create_default_context())
        self.answer = answer

    async def call(self, method: str, node: str, path: str, body: Any = None) -> Any:
        return await self.answer(method, node, path)

    async def collect(self, node: str, job_id: str, name: str, dest: str, cap: int) -> None:
        await self.answer("COLLECT", node, name)


def passes(store: JobStore, nodes: Nodes, home: str) -> Aem:
    """The job manager's passes over a store and stand-in nodes (its listeners, host identity and ads are not
    used by them), keeping images and outputs under `home`."""
    a = object.__new__(Aem)
    a.cfg = types.SimpleNamespace(home=home, max_output=1 << 20, ad_ttl=30.0)  # type: ignore[assignment]
    a.store, a.nodes, a.ads = store, nodes, {}  # type: ignore[assignment]
    a.last_usage, a.refused, a.checkpoint_due, a.busy, a.ending = {}, {}, {}, set(), set()
    a.wake = asyncio.Event()
    a._grid = lambda job: None  # type: ignore[method-assign]  # no grid stdio in these jobs
    return a
