"""Takeover benchmark: two job managers, then two MRCs, on one PostgreSQL database; the active one is killed
(SIGKILL) and a client given both addresses times how long until the standby answers it: the job manager
listing jobs, the MRC answering a stat. Target: within 5 s (each of --runs kills; the worst is the figure).
Prints a table, writes JSON with --out.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import sys
import tempfile
import time
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench.report import table, write_json  # noqa: E402
from xos.aem.client import Session  # noqa: E402
from xos.errors import XosError  # noqa: E402
from xos.identity import credential  # noqa: E402
from xos.testing import TestAem, TestGrid, wait_for  # noqa: E402
from xos.testing.fsgrid import FsGrid  # noqa: E402
from xos.testing.postgres import TestPostgres  # noqa: E402


def _says(path: str, what: str, since: int = 0) -> bool:
    """Whether the log at `path` says `what` after its first `since` bytes."""
    with open(path, "rb") as f:
        f.seek(since)
        return what.encode() in f.read()


def _until_answered(call: Any, limit: float = 60.0) -> float:
    """Seconds until `call` returns without an error (each try after a failed one at once)."""
    t0 = time.perf_counter()
    while True:
        try:
            call()
            return time.perf_counter() - t0
        except XosError:
            if time.perf_counter() - t0 > limit:
                raise


def job_managers(pg: TestPostgres, runs: int) -> list[float]:
    base = tempfile.mkdtemp(prefix="xos-bench-ha-")
    os.chmod(base, 0o755)
    out = []
    try:
        key = credential.new_key(os.path.join(base, "bio.key"))
        trust = credential.TrustStore(os.path.join(base, "trust"))
        trust.trust("bio", credential.public_pem(key.public_key()))
        token, _ = credential.issue(key, "alice", "bio", ["member"], [], 3600)
        with TestGrid(1) as grid:
            db = pg.url("jobs")
            aems = [TestAem(base, grid, trust.directory, db=db, port=7300 + 10 * i, name=f"aem-{i}") for i in (0, 1)]
            aems[0].start()
            s = Session(",".join(a.url for a in aems), token, ca=grid.ca)
            try:
                _until_answered(lambda: s.run(s.jm.ls()))
                aems[1].start()
                wait_for(lambda: _says(aems[1].log_path, "standing by"), 30, "the standby")
                active = 0
                for _ in range(runs):
                    aems[active].kill(signal.SIGKILL)
                    t0 = time.perf_counter()
                    _until_answered(lambda: s.run(s.jm.ls()))
                    out.append(time.perf_counter() - t0)
                    back = aems[active]
                    since = os.path.getsize(back.log_path)
                    back.start()  # back, standing by for the next round
                    wait_for(lambda b=back, n=since: _says(b.log_path, "standing by: the active aem is", n), 30,
                             "the restarted job manager to stand by")
                    active = 1 - active
            finally:
                s.close()
                for a in aems:
                    a.stop()
    finally:
        shutil.rmtree(base, ignore_errors=True)
    return out


def mrcs(pg: TestPostgres, runs: int) -> list[float]:
    out = []
    with FsGrid(osds=2, clients=1, db=pg.url("mrc"), standby=True) as grid:
        grid.mkvol("ha")
        c = grid.client("ha")
        try:
            c.mkdir("/d")  # type: ignore[attr-defined]
            active = 0
            for _ in range(runs):
                grid.mrcs[active].procs[-1].stop(signal.SIGKILL)
                t0 = time.perf_counter()
                _until_answered(lambda: c.stat("/d"))  # type: ignore[attr-defined]
                out.append(time.perf_counter() - t0)
                grid.start_mrc(active, standing_by=True)
                active = 1 - active
        finally:
            c.close()  # type: ignore[attr-defined]
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--runs", type=int, default=3, help="kills of the active one, for each daemon")
    p.add_argument("--out")
    args = p.parse_args()
    with TestPostgres() as pg:
        results = {"job manager": job_managers(pg, args.runs), "MRC": mrcs(pg, args.runs)}
    rows = [("daemon (kill -9 of the active)", "runs", "best s", "worst s")]
    rows += [(k, str(len(v)), f"{min(v):.2f}", f"{max(v):.2f}") for k, v in results.items()]
    print("\n".join(table(rows)))
    worst = max(max(v) for v in results.values())
    print(f"target: the standby answers within 5 s: worst {worst:.2f} s: {'yes' if worst <= 5 else 'NO'}")
    write_json(args.out, {"seconds until the standby answered": results})
    return 0


if __name__ == "__main__":
    sys.exit(main())
