"""Experiments run on real nodes by the tests, the demo and the benchmarks."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Any

from xos.node.client import Client
from xos.testing import traffic


@dataclass
class StreamResult:
    """Throughput of one job stream: CPU work and network transfer, run side by side."""

    hashes_per_s: float
    mbit: float
    cpu_share: float


async def _usage(node: Client, name: str) -> float:
    return float((await node.stat(name))["usage"]["cpu_seconds"])


async def job_stream(node: Client, ws: str, sink: str, port: int, seconds: float = 3.0) -> StreamResult:
    """Run a CPU job and a TCP transfer in `ws` at once; what each achieved."""
    address = (await node.stat(sink))["address"]
    out_cpu, out_net = bytearray(), bytearray()
    cpu0, t0 = await _usage(node, ws), time.monotonic()
    recv = asyncio.ensure_future(node.exec(sink, traffic.recv(port, 0.7, seconds), on_stdout=out_net.extend))
    send = asyncio.ensure_future(node.exec(ws, traffic.send(address, port, seconds + 1.5)))
    burn = asyncio.ensure_future(node.exec(ws, traffic.burn(seconds + 1.5), on_stdout=out_cpu.extend))
    await asyncio.gather(recv, send, burn)
    cpu1, t1 = await _usage(node, ws), time.monotonic()
    hashes = traffic.last_json(bytes(out_cpu))
    return StreamResult(hashes_per_s=hashes["hashes"] / hashes["seconds"],
                        mbit=float(traffic.last_json(bytes(out_net))["mbit"]),
                        cpu_share=(cpu1 - cpu0) / (t1 - t0))


async def isolation(node: Client, seconds: float = 3.0) -> dict[str, Any]:
    """VO B's job stream alone, then while VO A floods CPU and network; the measured shares.

    As in the Globus workspace experiment: B must keep its throughput while A misbehaves.
    """
    await node.create("vo-a", cpu="1", memory="256M", egress="20mbit", ingress="20mbit")
    await node.create("vo-b", cpu="0.5", memory="256M", egress="20mbit", ingress="20mbit")
    await node.create("sink-a", cpu="0.2", memory="128M")
    await node.create("sink-b", cpu="0.2", memory="128M")
    try:
        baseline = await job_stream(node, "vo-b", "sink-b", 5101, seconds)

        # A's flood: more busy loops than its CPUs, and a sender as fast as it may go.
        flood_time = seconds + 6
        sink_a = (await node.stat("sink-a"))["address"]
        flood_out = bytearray()
        a_cpu0, a_t0 = await _usage(node, "vo-a"), time.monotonic()
        flood = [asyncio.ensure_future(node.exec("vo-a", traffic.burn(flood_time))) for _ in range(3)]
        flood.append(asyncio.ensure_future(node.exec("sink-a", traffic.recv(5102, 0.7, flood_time - 2),
                                                     on_stdout=flood_out.extend)))
        flood.append(asyncio.ensure_future(node.exec("vo-a", traffic.send(sink_a, 5102, flood_time))))
        await asyncio.sleep(1.0)  # let the flood reach its stride before measuring B
        loaded = await job_stream(node, "vo-b", "sink-b", 5103, seconds)
        a_cpu1, a_t1 = await _usage(node, "vo-a"), time.monotonic()
        await asyncio.gather(*flood)
        a_mbit = float(traffic.last_json(bytes(flood_out))["mbit"])
    finally:
        for name in ("vo-a", "vo-b", "sink-a", "sink-b"):
            await node.rm(name)
    return {
        "baseline": baseline,
        "loaded": loaded,
        "flooder": {"cpu_share": (a_cpu1 - a_cpu0) / (a_t1 - a_t0), "mbit": a_mbit},
        "cpu_ratio": loaded.hashes_per_s / baseline.hashes_per_s,
        "net_ratio": loaded.mbit / baseline.mbit,
    }


def isolation_table(r: dict[str, Any]) -> str:
    """The isolation result as a table for people."""
    b, ld, a = r["baseline"], r["loaded"], r["flooder"]
    rows = [
        ("workspace", "allocation", "situation", "CPUs used", "hashes/s", "Mbit/s"),
        ("vo-b", "cpu 0.5, 20mbit", "alone", f"{b.cpu_share:.2f}", f"{b.hashes_per_s:,.0f}", f"{b.mbit:.1f}"),
        ("vo-a", "cpu 1, 20mbit", "flooding", f"{a['cpu_share']:.2f}", "-", f"{a['mbit']:.1f}"),
        ("vo-b", "cpu 0.5, 20mbit", "beside flood", f"{ld.cpu_share:.2f}", f"{ld.hashes_per_s:,.0f}",
         f"{ld.mbit:.1f}"),
    ]
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)) for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    lines.append("")
    lines.append(f"vo-b kept {r['cpu_ratio']:.0%} of its CPU throughput and {r['net_ratio']:.0%} of its network "
                 "throughput while vo-a flooded (target: at least 90%).")
    return "\n".join(lines)
