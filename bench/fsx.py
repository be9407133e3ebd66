"""The grid file system's random-operation model (tests/grid/test_fs_model.py) in its long mode: millions
of operations on a 1-replica and a 2-replica volume instead of the 10,000 each that `make test` runs.

Prints the seed (XOS_FSX_SEED replays a failure) and the rate; writes JSON with --out."""

from __future__ import annotations

import argparse
import os
import random
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench.report import write_json  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--ops", type=int, default=1_000_000, help="operations per volume")
    p.add_argument("--seed", type=int, default=None, help="replay a seed (default: a new one)")
    p.add_argument("--out")
    args = p.parse_args()
    seed = args.seed if args.seed is not None else random.randrange(1 << 32)
    print(f"fsx: {args.ops} operations per volume, seed {seed} (bench/fsx.py --seed {seed} replays it)", flush=True)
    env = {**os.environ, "XOS_FSX_OPS": str(args.ops), "XOS_FSX_SEED": str(seed)}
    t0 = time.perf_counter()
    run = subprocess.run([sys.executable, "-m", "pytest", "-q", "-x", "-s", "-p", "no:cacheprovider",
                          "tests/grid/test_fs_model.py::test_random_operations_match_the_model"], cwd=ROOT, env=env)
    took = time.perf_counter() - t0
    ok = run.returncode == 0
    print(f"fsx: {'passed' if ok else 'FAILED'}: {2 * args.ops} operations in {took:.0f} s "
          f"({2 * args.ops / took:.0f} per second, the mounts' checks after each close included)")
    write_json(args.out, {"ops per volume": args.ops, "seed": seed, "passed": ok, "seconds": took})
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
