"""Several nodes, each in its own namespace with its own daemon, reach each other's workspaces."""

import asyncio

from xos.node.client import Client
from xos.testing import TestGrid, traffic


async def scenario(grid: TestGrid) -> None:
    n0, n1 = grid.nodes
    async with Client(n0.socket) as c0, Client(n1.socket) as c1:
        a = await c0.create("a")
        b = await c1.create("b")
        assert a["address"].startswith("198.19.8.") and b["address"].startswith("198.19.9.")
        assert [w["name"] for w in await c0.ls()] == ["a"] and [w["name"] for w in await c1.ls()] == ["b"]
        out = bytearray()
        recv = asyncio.ensure_future(c1.exec("b", traffic.recv(5201, 0.2, 1.0), on_stdout=out.extend))
        sent = await c0.exec("a", traffic.send(b["address"], 5201, 1.5))
        await recv
        assert sent["status"] == 0 and traffic.last_json(bytes(out))["bytes"] > 0


def test_workspaces_on_two_nodes_talk_and_stay_apart():
    with TestGrid(2) as grid:
        asyncio.run(scenario(grid))
        for n in grid.nodes:
            assert n.unexpected_warnings() == []
