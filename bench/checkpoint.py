"""Checkpoint benchmark: checkpoint and restore through xos beside bare `criu dump`/`criu restore` of the
same workload with the same CRIU flags in the same run (the limit), and migration downtime.

For 64 MiB, 256 MiB and 1 GiB resident workloads. Prints a table, writes JSON with --out.
Targets: checkpoint and restore within 1.2 times bare CRIU; `--live` downtime under a
quarter of stop-and-copy's at 1 GiB: pre-copy rounds where the kernel tracks dirty memory, post-copy
(userfaultfd: the workload runs at the target while its memory follows) where it does not.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import time
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench.report import table, write_json  # noqa: E402
from xos.checkpoint import criu  # noqa: E402
from xos.kernel.cgroup import detect  # noqa: E402
from xos.paths import WORK  # noqa: E402
from xos.testing import TestGrid, TestNode, wait_for  # noqa: E402

PY = "/usr/bin/python3"
# N MiB resident, then 10% of its pages dirtied a second (the migration workload; harmless for the rest).
WORKLOAD = """
import os, sys, time
mib = int(sys.argv[1])
data = bytearray(os.urandom(1 << 20)) * mib
pages = len(data) // 4096
open("ready", "w").close()
i, per_tick = 0, max(1, pages // 1000)
while True:
    for _ in range(per_tick):
        data[(i % pages) * 4096] ^= 1
        i += 1
    time.sleep(0.01)
"""


def workload(node: TestNode, name: str, mib: int) -> dict[str, Any]:
    with node.client() as c:
        ws = c.create(name, main=[PY, "-c", WORKLOAD, str(mib)], memory=f"{mib * 2 + 256}M")
    wait_for(lambda: os.path.exists(os.path.join(ws["directory"], "ready")), 120, f"{mib} MiB to be resident")
    return ws


def through_xos(node: TestNode, mib: int) -> tuple[float, float]:
    """Wall time of `xos ws checkpoint` and `xos ws restore` as a client sees them."""
    workload(node, "x", mib)
    image = os.path.join(node.home, "x.img")
    with node.client() as c:
        os.sync()
        t0 = time.perf_counter()
        c.checkpoint("x", image)
        t1 = time.perf_counter()
        c.restore(image)
        t2 = time.perf_counter()
        c.rm("x")
    shutil.rmtree(image)
    return t1 - t0, t2 - t1


def bare(node: TestNode, mib: int, criu_path: str) -> tuple[float, float]:
    """The same tree dumped and restored by the criu binary alone, with the flags xos gives it."""
    ws = workload(node, "b", mib)
    images = os.path.join(node.home, "bare")
    os.makedirs(images)
    freezer = freezer_dir(node, ws["id"])
    enter = ["nsenter", f"--net={node.netns_path}"]
    try:
        os.sync()
        t0 = time.perf_counter()
        subprocess.run([criu_path, "dump", "-t", str(ws["init_pid"]), "-D", images, "--manage-cgroups=ignore",
                        "--external", "mnt[]", "--external", f"mnt[{WORK}]:{criu.WORK_KEY}", "--tcp-established",
                        "--freeze-cgroup", freezer, "-o", "dump.log"], check=True)
        t1 = time.perf_counter()
        subprocess.run([*enter, criu_path, "restore", "-D", images, "--restore-detached", "--pidfile",
                        os.path.join(images, "pid"), "--manage-cgroups=ignore", "--tcp-established", "--root", "/",
                        "--external", "mnt[]", "--external", f"mnt[{criu.WORK_KEY}]:{ws['directory']}",
                        "--external", f"veth[eth0]:xbench{ws['id'][:6]}@xosbr0", "-o", "restore.log"], check=True)
        t2 = time.perf_counter()
        with open(os.path.join(images, "pid")) as f:
            os.kill(int(f.read()), 9)  # the restored init; its namespace goes with it
    finally:
        shutil.rmtree(images, ignore_errors=True)
        with node.client() as c:
            c.rm("b")
    return t1 - t0, t2 - t1


def freezer_dir(node: TestNode, wsid: str) -> str:
    return detect().cgroup(f"{node.cgroup_root}/ws-{wsid}").freezer_dir()


def downtime(grid: TestGrid, mib: int, live: bool) -> dict[str, Any]:
    a, b = grid.nodes
    workload(a, "m", mib)
    with a.client() as ca, b.client() as cb:
        res = ca.migrate("m", b.name, live=live)
        cb.rm("m")
    return res["times"]


def run(args: argparse.Namespace) -> dict[str, Any]:
    c = criu.find()
    if not c.ok:
        raise SystemExit(f"checkpoint benchmark needs CRIU: {c.reason}")
    out: dict[str, Any] = {"criu": c.version, "sizes": {}, "migration": {}}
    with TestGrid(2) as grid:
        node = grid.nodes[0]
        for mib in args.sizes:
            # One round unmeasured: on these VMs the first touch of guest memory the page cache then
            # holds costs a host fault per page (a 1 GiB dump took 1.5-4.7 s first, 0.8-1.1 s after).
            through_xos(node, mib), bare(node, mib, c.path)
            rounds = [(through_xos(node, mib), bare(node, mib, c.path)) for _ in range(args.runs)]
            out["sizes"][mib] = {"xos": [r[0] for r in rounds], "bare": [r[1] for r in rounds]}
        mib = max(args.sizes)
        out["migration"]["stop_and_copy"] = downtime(grid, mib, False)
        out["migration"]["live"] = downtime(grid, mib, True) if c.live else None
        out["migration"]["live_mode"] = c.live
        out["migration"]["mib"] = mib
    return out


def report(r: dict[str, Any]) -> str:
    rows = [("workload", "xos checkpoint s", "criu dump s", "ratio", "xos restore s", "criu restore s", "ratio")]
    for mib, v in r["sizes"].items():
        xc = min(x[0] for x in v["xos"])
        xr = min(x[1] for x in v["xos"])
        bc = min(x[0] for x in v["bare"])
        br = min(x[1] for x in v["bare"])
        rows.append((f"{mib} MiB", f"{xc:.3f}", f"{bc:.3f}", f"{xc / bc:.2f}", f"{xr:.3f}", f"{br:.3f}",
                     f"{xr / br:.2f}"))
    lines = table(rows)
    m = r["migration"]
    s = m["stop_and_copy"]
    lines.append(f"\nmigration of {m['mib']} MiB dirtying 10%/s, stop-and-copy: downtime {s['downtime']:.3f}s "
                 f"(freeze {s['freeze']:.3f} dump {s['dump']:.3f} pack {s['pack']:.3f} transfer {s['transfer']:.3f} "
                 f"verify {s['verify']:.3f} restore {s['restore']:.3f})")
    live = m["live"]
    if live:
        after = f"; memory followed in {live['postcopy']:.3f}s more" if "postcopy" in live else ""
        lines.append(f"live ({m.get('live_mode')}): downtime {live['downtime']:.3f}s (dump {live['dump']:.3f} "
                     f"transfer {live['transfer']:.3f} restore {live['restore']:.3f}){after}; ratio to "
                     f"stop-and-copy {live['downtime'] / s['downtime']:.2f} (target < 0.25)")
    else:
        lines.append("live: not measured: this kernel neither tracks dirty memory (CONFIG_MEM_SOFT_DIRTY) nor "
                     "has userfaultfd")
    lines.append("targets: checkpoint and restore within 1.2x bare CRIU (best of runs)")
    return "\n".join(lines)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--sizes", type=int, nargs="+", default=[64, 256, 1024], help="MiB")
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--out")
    args = p.parse_args()
    results = run(args)
    print(report(results))
    write_json(args.out, results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
