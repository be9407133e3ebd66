"""Workspace benchmark: lifecycle against runc, renegotiation against tc + a cgroup write, a usage sweep.

Runs a real node (xos.testing) and its peers in the same run, prints a table, writes JSON with --out.
Targets: create+exec+destroy p50 at or below runc's with networking and shaping included;
renegotiation under 1 ms p50; a usage sweep of 200 workspaces under 5 ms.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench.report import pct, table, write_json  # noqa: E402
from xos.kernel.cgroup import detect, mounts, walk  # noqa: E402
from xos.node.client import Client  # noqa: E402
from xos.testing import TestNode, node  # noqa: E402

RUNC_CGROUP = "xos-bench-runc"


def runc_bundle(base: str) -> str:
    """An OCI bundle with a static /true, the workspace's limits and its three namespaces."""
    bundle = os.path.join(base, "bundle")
    os.makedirs(os.path.join(bundle, "rootfs"))
    subprocess.run(["gcc", "-static", "-O2", "-x", "c", "-", "-o", os.path.join(bundle, "rootfs", "true")],
                   input=b"int main(void){return 0;}", check=True)
    subprocess.run(["runc", "spec", "--bundle", bundle], check=True)
    with open(os.path.join(bundle, "config.json")) as f:
        cfg = json.load(f)
    cfg.pop("hostname", None)
    cfg["process"].update(terminal=False, args=["/true"])
    cfg["root"] = {"path": "rootfs", "readonly": True}
    cfg["mounts"] = [m for m in cfg["mounts"] if m["destination"] in ("/proc", "/dev")]
    cfg["linux"]["namespaces"] = [{"type": "pid"}, {"type": "mount"}, {"type": "network"}]
    cfg["linux"]["resources"] = {"cpu": {"quota": 100000, "period": 100000, "shares": 1024},
                                 "memory": {"limit": 256 << 20}, "pids": {"limit": 512}}
    with open(os.path.join(bundle, "config.json"), "w") as f:
        json.dump(cfg, f)
    return bundle


def bench_runc(bundle: str, runs: int) -> list[float]:
    """Seconds per `runc run` (create, start, wait, delete) of the bundle."""
    times = []
    with open(os.path.join(bundle, "config.json")) as f:
        cfg = json.load(f)
    for i in range(runs):
        cid = f"xb{os.getpid()}-{i}"
        cfg["linux"]["cgroupsPath"] = f"/{RUNC_CGROUP}/{cid}"
        with open(os.path.join(bundle, "config.json"), "w") as f:
            json.dump(cfg, f)
        t0 = time.perf_counter()
        subprocess.run(["runc", "run", "--bundle", bundle, cid], check=True, stdin=subprocess.DEVNULL)
        times.append(time.perf_counter() - t0)
    return times


def cleanup_runc() -> None:
    """Remove the cgroups runc made, in every hierarchy it touched (it uses all of them)."""
    for m in mounts():
        top = os.path.join(m.path, RUNC_CGROUP)
        if os.path.isdir(top):
            for sub in walk(top):
                os.rmdir(sub)
            os.rmdir(top)


async def bench_xos(c: Client, runs: int) -> list[float]:
    """Seconds per create + exec /bin/true + destroy through the daemon API."""
    times = []
    for i in range(runs):
        t0 = time.perf_counter()
        await c.create(f"b{i}", cpu="1", memory="256M", pids="512", egress="100mbit", ingress="100mbit")
        res = await c.exec(f"b{i}", ["/bin/true"])
        await c.rm(f"b{i}")
        times.append(time.perf_counter() - t0)
        assert res["status"] == 0
    return times


async def bench_renegotiate(c: Client, runs: int) -> dict[str, list[float]]:
    """Round trip and in-daemon time of a CPU plus bandwidth change on a running workspace."""
    await c.create("reneg", cpu="0.5", egress="20mbit")
    await c.spawn("reneg", ["sleep", "600"])
    rtt, inside = [], []
    for i in range(runs):
        cpu, rate = ("0.25", "30mbit") if i % 2 else ("0.5", "20mbit")
        t0 = time.perf_counter()
        await c.set("reneg", cpu=cpu, egress=rate)
        rtt.append(time.perf_counter() - t0)
        inside.append(c.last_server_ms / 1000)
    return {"rtt": rtt, "inside": inside}


def bench_shell(n: TestNode, wsid: str, hierarchy: str, runs: int) -> list[float]:
    """The same change made by hand: the cgroup file written and `tc class change` from a shell."""
    h = detect()
    cg = h.cgroup(f"{n.cgroup_root}/ws-{wsid}")
    quota = (os.path.join(cg.dirs()[0], "cpu.cfs_quota_us") if hierarchy == "v1"
             else os.path.join(cg.dirs()[0], "cpu.max"))
    times = []
    for i in range(runs):
        q, rate = (25000, "30mbit") if i % 2 else (50000, "20mbit")
        value = str(q) if hierarchy == "v1" else f"{q} 100000"
        script = (f"echo {value} > {quota} && nsenter --net={n.netns_path} tc class change dev xvh-{wsid} "
                  f"parent 1: classid 1:10 htb rate {rate} ceil {rate} quantum 15140")
        t0 = time.perf_counter()
        subprocess.run(["sh", "-c", script], check=True)
        times.append(time.perf_counter() - t0)
    return times


async def bench_sweep(c: Client, count: int, sweeps: int) -> list[float]:
    """In-daemon seconds for one usage sweep over `count` workspaces."""
    have = len(await c.ls())
    for i in range(count - have):
        await c.create(f"s{i}", cpu="0.01", memory="8M", pids="16", egress="1mbit",
                       ingress="1mbit")
    out = []
    for _ in range(sweeps):
        res = await c.sample()
        assert res["workspaces"] == count
        out.append(res["seconds"])
    return out


async def run(args: argparse.Namespace, n: TestNode, base: str) -> dict[str, Any]:
    hierarchy = detect().name
    results: dict[str, Any] = {"machine": {"cpus": os.cpu_count(), "cgroup": hierarchy,
                                           "kernel": os.uname().release}}
    bundle = runc_bundle(base)
    async with Client(n.socket) as c:
        await bench_xos(c, 3)  # warm caches on both sides before measuring
        bench_runc(bundle, 3)
        xos_t = await bench_xos(c, args.runs)
        runc_t = bench_runc(bundle, args.runs)
        results["lifecycle"] = {"xos": xos_t, "runc": runc_t}
        reneg = await bench_renegotiate(c, args.runs)
        wsid = (await c.stat("reneg"))["id"]
        shell = bench_shell(n, wsid, hierarchy, args.runs)
        results["renegotiate"] = {**reneg, "shell": shell}
        await c.rm("reneg")
        sweep = await bench_sweep(c, args.workspaces, 20)
        results["sweep"] = {"workspaces": args.workspaces, "seconds": sweep}
    return results


def report(r: dict[str, Any]) -> str:
    ms = 1000.0
    lx, lr = r["lifecycle"]["xos"], r["lifecycle"]["runc"]
    rn = r["renegotiate"]
    sw = r["sweep"]["seconds"]
    rows = [
        ("measurement", "xos p50", "xos p95", "peer", "peer p50", "peer p95", "xos/peer p50"),
        ("create+exec /bin/true+destroy (ms)", f"{statistics.median(lx) * ms:.1f}", f"{pct(lx, 95) * ms:.1f}",
         "runc run", f"{statistics.median(lr) * ms:.1f}", f"{pct(lr, 95) * ms:.1f}",
         f"{statistics.median(lx) / statistics.median(lr):.2f}"),
        ("renegotiate cpu+egress, API round trip (ms)", f"{statistics.median(rn['rtt']) * ms:.2f}",
         f"{pct(rn['rtt'], 95) * ms:.2f}", "sh: echo + tc", f"{statistics.median(rn['shell']) * ms:.2f}",
         f"{pct(rn['shell'], 95) * ms:.2f}", f"{statistics.median(rn['rtt']) / statistics.median(rn['shell']):.2f}"),
        ("renegotiate cpu+egress, inside daemon (ms)", f"{statistics.median(rn['inside']) * ms:.2f}",
         f"{pct(rn['inside'], 95) * ms:.2f}", "sh: echo + tc", f"{statistics.median(rn['shell']) * ms:.2f}",
         f"{pct(rn['shell'], 95) * ms:.2f}",
         f"{statistics.median(rn['inside']) / statistics.median(rn['shell']):.2f}"),
        (f"usage sweep of {r['sweep']['workspaces']} workspaces (ms)", f"{statistics.median(sw) * ms:.2f}",
         f"{pct(sw, 95) * ms:.2f}", "target", "5.00", "", f"{statistics.median(sw) * ms / 5:.2f}"),
    ]
    lines = table(rows)
    m = r["machine"]
    lines.insert(0, f"{m['cpus']} CPUs, cgroup {m['cgroup']}, kernel {m['kernel']}; xos includes veth, address "
                    "and HTB shaping both ways, runc gets a bare network namespace")
    return "\n".join(lines)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--runs", type=int, default=50)
    p.add_argument("--workspaces", type=int, default=200)
    p.add_argument("--out", help="write the raw results as JSON here")
    args = p.parse_args()
    if shutil.which("runc") is None:
        print("bench: runc is missing (make setup installs it)", file=sys.stderr)
        return 1
    base = tempfile.mkdtemp(prefix="xos-bench-")
    try:
        with node(["--sample-interval", "3600"]) as n:
            results = asyncio.run(run(args, n, base))
    finally:
        shutil.rmtree(base, ignore_errors=True)
        cleanup_runc()
    print(report(results))
    write_json(args.out, results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
