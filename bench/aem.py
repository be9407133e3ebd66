"""AEM benchmark. Built so far: matchmaking, one job against 10,000 node ads and 1,000 queued jobs
against 1,000 ads, in HTCondor's ClassAd language (classad2), beside the naive way (every job
evaluated alone, as without autoclusters) in the same run.

Not yet: 1,000 trivial jobs on 3 nodes, which needs the job manager daemon (issue 5).
Prints a table, writes JSON with --out.
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import time
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench.report import table, write_json  # noqa: E402
from xos.classad import Matchmaker, NodeAd, Wants  # noqa: E402


def node_ads(n: int, seed: int = 7) -> list[NodeAd]:
    rng = random.Random(seed)
    return [NodeAd(f"n{i}", {"Memory": rng.choice([2048, 4096, 8192, 16384, 65536]), "Cpus": rng.choice([2, 4, 8, 32]),
                             "Site": rng.choice("abcd"), "Price": round(rng.uniform(0.1, 5), 2), "Arch": "X86_64",
                             "OpSys": "LINUX", "LoadAvg": round(rng.random() * 4, 2),
                             "HasCheckpoint": rng.random() < 0.5},
                   requirements='TARGET.VO =!= "banned"') for i in range(n)]


def jobs(n: int, seed: int = 11) -> list[tuple[str, Wants]]:
    """Jobs as users write them: a few shapes (cpus, memory, site) make many jobs."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        cpus, mem, site = rng.choice([1, 2, 4]), rng.choice([1024, 4096, 8192]), rng.choice("abc")
        out.append((str(i), Wants(f'TARGET.Memory >= MY.RequestMemory && TARGET.Cpus >= MY.RequestCpus && '
                                  f'TARGET.Site == "{site}"', "-TARGET.Price - TARGET.LoadAvg",
                                  (("RequestCpus", cpus), ("RequestMemory", mem), ("VO", "bio")))))
    return out


def run(args: argparse.Namespace) -> dict[str, Any]:
    res: dict[str, Any] = {}
    ads = node_ads(args.ads)
    m = Matchmaker()
    one = Wants('TARGET.Memory >= 4096 && TARGET.Site == "b"', "-TARGET.Price", (("VO", "bio"),))
    m.matches(one, ads[:10])  # parse once, outside the timing
    t0 = time.perf_counter()
    found = m.matches(one, ads)
    dt = time.perf_counter() - t0
    res[f"one job x {args.ads} ads"] = {"seconds": dt, "pairs_per_s": args.ads / dt, "matched": len(found)}
    small = ads[:args.small_ads]
    queue = jobs(args.jobs)
    t0 = time.perf_counter()
    out = Matchmaker().match_all(queue, small)
    dt = time.perf_counter() - t0
    pairs = args.jobs * args.small_ads
    res[f"{args.jobs} jobs x {args.small_ads} ads (autoclusters)"] = {
        "seconds": dt, "pairs_per_s": pairs / dt, "matched": sum(bool(v) for v in out.values())}
    sample = queue[:args.naive_jobs]
    t0 = time.perf_counter()
    naive = Matchmaker()
    for _, wants in sample:
        naive.matches(wants, small)
    dt = time.perf_counter() - t0
    res[f"{args.naive_jobs} jobs x {args.small_ads} ads (each alone)"] = {
        "seconds": dt, "pairs_per_s": args.naive_jobs * args.small_ads / dt, "matched": None}
    return res


def report(res: dict[str, Any]) -> str:
    rows = [("matchmaking", "seconds", "job-ad pairs/s")]
    for k, v in res.items():
        rows.append((k, f"{v['seconds']:.3f}", f"{v['pairs_per_s']:,.0f}"))
    lines = table(rows)
    keys = list(res)
    lines.append(f"autoclusters / each alone: {res[keys[1]]['pairs_per_s'] / res[keys[2]]['pairs_per_s']:.0f}x "
                 "pairs per second")
    lines.append("not measured yet: 1,000 trivial jobs on 3 nodes (needs the job manager daemon)")
    return "\n".join(lines)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--ads", type=int, default=10000)
    p.add_argument("--jobs", type=int, default=1000)
    p.add_argument("--small-ads", type=int, default=1000)
    p.add_argument("--naive-jobs", type=int, default=50, help="jobs timed one by one (the rate is per pair)")
    p.add_argument("--out")
    args = p.parse_args()
    res = run(args)
    print(report(res))
    write_json(args.out, res)
    return 0


if __name__ == "__main__":
    sys.exit(main())
