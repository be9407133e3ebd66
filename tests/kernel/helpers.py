"""Measurements shared by the kernel tests."""

from __future__ import annotations

import asyncio
import os
import time

from xos.kernel.cgroup import detect
from xos.node.client import SyncClient
from xos.testing import TestNode, traffic


def cpu_share(c: SyncClient, name: str, seconds: float = 3.0) -> float:
    """CPUs a workspace used over `seconds`, from its kernel counters."""
    c.stat(name)  # settle: the first sample after a change includes a burst
    u0, t0 = c.stat(name)["usage"]["cpu_seconds"], time.monotonic()
    time.sleep(seconds)  # the measurement interval itself
    u1, t1 = c.stat(name)["usage"]["cpu_seconds"], time.monotonic()
    return (u1 - u0) / (t1 - t0)


def transfer(c: SyncClient, sender: str, receiver: str, port: int = 5001, seconds: float = 3.0) -> float:
    """Mbit/s of one TCP stream from workspace `sender` to `receiver`, measured at the receiver."""
    address = c.stat(receiver)["address"]

    async def both() -> bytes:
        out = bytearray()
        recv = asyncio.ensure_future(c.client.exec(receiver, traffic.recv(port, 0.7, seconds),
                                                   on_stdout=out.extend, on_stderr=out.extend))
        sent = await c.client.exec(sender, traffic.send(address, port, seconds + 1.5))
        got = await recv
        assert got["status"] == 0 and sent["status"] == 0, (got, sent, bytes(out))
        return bytes(out)

    return float(traffic.last_json(c.run(both()))["mbit"])


def cgroup_dirs(node: TestNode, wsid: str) -> list[str]:
    """The cgroup directories of workspace `wsid` that exist (one per v1 controller, or one on v2)."""
    return [d for d in detect().cgroup(f"{node.cgroup_root}/ws-{wsid}").dirs() if os.path.isdir(d)]
