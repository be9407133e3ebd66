"""AEM benchmark: 1,000 trivial jobs on 3 test nodes through the job manager (jobs per second from
the first submission to the last job done, submission latency p50/p99), and matchmaking, one job
against 10,000 node ads and 1,000 queued jobs against 1,000 ads, in HTCondor's ClassAd language
(classad2), beside the naive way (every job evaluated alone, without autoclusters) in the same run.

Target: 50 jobs/s. The peer, SLURM 22.05 from Debian, runs trivial jobs in the same run on
one node with the machine's CPUs and its default scheduler (the issue quotes 5.5 jobs/s for 200 jobs
on one of these machines). Prints a table, writes JSON with --out.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import random
import sys
import time
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench.report import pct, table, write_json  # noqa: E402
from xos.aem.classad import Matchmaker, NodeAd, Wants  # noqa: E402


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


def throughput(n_jobs: int, db: str = "") -> dict[str, Any]:
    """Submit `n_jobs` trivial jobs one after another; time until every one is done (the job store at `db`, a
    URL, or SQLite by default)."""
    import asyncio
    import shutil
    import signal
    import subprocess
    import tempfile

    from xos.aem.client import Client
    from xos.identity import credential
    from xos.testing import TestGrid

    base = tempfile.mkdtemp(prefix="xos-bench-aem-")
    os.chmod(base, 0o755)
    key = credential.new_key(os.path.join(base, "bench.key"))
    trust = credential.TrustStore(os.path.join(base, "trust"))
    trust.trust("bench", credential.public_pem(key.public_key()))
    token, _ = credential.issue(key, "u", "bench", ["member"], [], 3600)
    listen = "198.18.0.1:7301"
    try:
        with TestGrid(3, ["--pool", "bench=32000-32999", "--cpu", "2", "--memory", "4G"]) as grid:
            for n in grid.nodes:
                n.cli("node", "trust", "bench", os.path.join(base, "bench.key.pub"))
            argv = [sys.executable, "-m", "xos", "serve", "aem", "--listen", listen, "--trust", trust.directory,
                    "--host-dir", grid.host_dir("aem", ["aem"], [listen.rpartition(":")[0]]), "--poll", "0.1"]
            argv += [a for n in grid.nodes for a in ("--node", f"{n.name}={n.peer_url}")]
            argv += ["--db", db] if db else []
            with open(os.path.join(base, "aem.log"), "ab") as log:
                proc = subprocess.Popen(argv, env={**os.environ, "XOS_HOME": os.path.join(base, "home")},
                                        stdout=log, stderr=log)
            try:
                async def main() -> dict[str, Any]:
                    async with Client(f"https://{listen}", token, ca=grid.ca) as jm:
                        async def three() -> bool:
                            try:
                                return len([x for x in await jm.nodes() if x["fresh"]]) == 3
                            except Exception:
                                return False

                        for _ in range(300):
                            if await three():
                                break
                            await asyncio.sleep(0.1)
                        lat = []
                        t0 = time.perf_counter()
                        for _ in range(n_jobs):
                            t = time.perf_counter()
                            await jm.submit({"executable": "/bin/true", "resources": {"cpus": 0.05,
                                                                                      "memory": "16M"}})
                            lat.append(time.perf_counter() - t)
                        submitted = time.perf_counter() - t0
                        while True:
                            jobs = await jm.ls()
                            if all(j["state"] in ("done", "failed", "cancelled") for j in jobs):
                                break
                            await asyncio.sleep(0.2)
                        total = time.perf_counter() - t0
                        return {"jobs": n_jobs, "seconds": total, "jobs_per_s": n_jobs / total,
                                "submit_seconds": submitted, "submit_p50_ms": pct(lat, 50) * 1000,
                                "submit_p99_ms": pct(lat, 99) * 1000,
                                "failed": sum(j["state"] != "done" for j in jobs)}

                return asyncio.run(main())
            finally:
                proc.send_signal(signal.SIGTERM)
                proc.wait(30)
    finally:
        shutil.rmtree(base, ignore_errors=True)


SLURM_CONF = """ClusterName=xosbench
SlurmctldHost={host}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
AuthInfo=socket={dir}/munge.sock
CredType=cred/munge
StateSaveLocation={dir}/state
SlurmdSpoolDir={dir}/spool
SlurmctldPidFile={dir}/slurmctld.pid
SlurmdPidFile={dir}/slurmd.pid
SlurmctldPort=16817
SlurmdPort=16818
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
MpiDefault=none
ReturnToService=2
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
NodeName={host} CPUs={cpus} State=UNKNOWN
PartitionName=bench Nodes=ALL Default=YES MaxTime=INFINITE State=UP
"""


def slurm_throughput(n_jobs: int) -> dict[str, Any]:
    """The peer: SLURM 22.05 from Debian on this machine, one node with its real CPUs, the default scheduler
    (cores handed out one per job, as cons_tres does), `sbatch --wrap true` one after another, timed until
    squeue is empty. Its own munged, slurmctld and slurmd, in a scratch directory, stopped at the end."""
    import shutil
    import signal
    import socket
    import subprocess
    import tempfile

    missing = [b for b in ("munged", "slurmctld", "slurmd", "sbatch", "squeue") if shutil.which(b) is None]
    if missing:
        raise SystemExit(f"the SLURM peer needs {', '.join(missing)}: apt-get install slurm-wlm munge "
                         "(make bench does)")
    d = tempfile.mkdtemp(prefix="xos-bench-slurm-")
    procs: list[subprocess.Popen[bytes]] = []
    env = {**os.environ, "SLURM_CONF": os.path.join(d, "slurm.conf")}
    try:
        for sub in ("state", "spool"):
            os.makedirs(os.path.join(d, sub))
        with open(os.open(os.path.join(d, "munge.key"), os.O_WRONLY | os.O_CREAT, 0o400), "wb") as f:
            f.write(os.urandom(1024))
        with open(env["SLURM_CONF"], "w") as f:
            f.write(SLURM_CONF.format(host=socket.gethostname(), dir=d, cpus=os.cpu_count() or 1))

        def start(argv: list[str], name: str) -> None:
            with open(os.path.join(d, f"{name}.log"), "wb") as log:
                procs.append(subprocess.Popen(argv, env=env, stdout=log, stderr=log, start_new_session=True))

        start(["munged", "-F", "--force", "-S", f"{d}/munge.sock", f"--key-file={d}/munge.key",
               f"--log-file={d}/munged.file.log", f"--pid-file={d}/munged.pid", f"--seed-file={d}/munge.seed"],
              "munged")
        wait_until(lambda: os.path.exists(f"{d}/munge.sock"), 10, "munged")
        start(["slurmctld", "-D"], "slurmctld")
        start(["slurmd", "-D"], "slurmd")

        def idle() -> bool:
            p = subprocess.run(["sinfo", "-h", "-o", "%T"], env=env, capture_output=True, text=True)
            return p.stdout.strip() == "idle"

        wait_until(idle, 30, "the SLURM node to be idle")
        lat = []
        t0 = time.perf_counter()
        for _ in range(n_jobs):
            t = time.perf_counter()
            subprocess.run(["sbatch", "-Q", "--wrap=true", "-o", "/dev/null"], env=env, check=True)
            lat.append(time.perf_counter() - t)
        submitted = time.perf_counter() - t0

        def drained() -> bool:
            p = subprocess.run(["squeue", "-h"], env=env, capture_output=True, text=True, check=True)
            return p.stdout.strip() == ""

        wait_until(drained, 60 + 10 * n_jobs, "SLURM's queue to empty")
        total = time.perf_counter() - t0
        return {"jobs": n_jobs, "seconds": total, "jobs_per_s": n_jobs / total, "submit_seconds": submitted,
                "submit_p50_ms": pct(lat, 50) * 1000, "submit_p99_ms": pct(lat, 99) * 1000, "failed": 0,
                "cpus": os.cpu_count()}
    finally:
        for p in reversed(procs):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(p.pid, signal.SIGTERM)
            try:
                p.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait()
        shutil.rmtree(d, ignore_errors=True)


def wait_until(cond: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise SystemExit(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(0.1)


def run(args: argparse.Namespace) -> dict[str, Any]:
    res: dict[str, Any] = {}
    if args.slurm_jobs:
        res["slurm"] = slurm_throughput(args.slurm_jobs)
    if args.jobs_run:
        res["throughput"] = throughput(args.jobs_run)
        if args.db == "postgresql":  # the same jobs with the job store in PostgreSQL, in the same run
            from xos.testing.postgres import TestPostgres

            with TestPostgres() as pg:
                res["throughput_pg"] = throughput(args.jobs_run, pg.url("jobs"))
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
    lines = []
    tp = res.pop("throughput", None)
    sl = res.pop("slurm", None)
    tpg = res.pop("throughput_pg", None)
    if tp or sl:
        rows = [("trivial jobs", "jobs", "seconds", "jobs/s", "submit p50 ms", "submit p99 ms", "failed")]
        for name, r in (("xos job manager, 3 nodes", tp), ("the same, jobs kept in PostgreSQL", tpg),
                        (f"SLURM 22.05, 1 node of {(sl or {}).get('cpus')} CPUs", sl)):
            if r:
                rows.append((name, str(r["jobs"]), f"{r['seconds']:.1f}", f"{r['jobs_per_s']:.1f}",
                             f"{r['submit_p50_ms']:.1f}", f"{r['submit_p99_ms']:.1f}", str(r["failed"])))
        lines += table(rows)
        if tp:
            lines.append(f"target 50 jobs/s: {tp['jobs_per_s'] / 50:.2f}x; the issue's SLURM figure 5.5 jobs/s -> "
                         f"{tp['jobs_per_s'] / 5.5:.1f}x")
        if tpg:
            lines.append(f"PostgreSQL: {tpg['jobs_per_s']:.1f} jobs/s (target 50: {tpg['jobs_per_s'] / 50:.2f}x), "
                         f"{tpg['jobs_per_s'] / tp['jobs_per_s']:.2f}x SQLite's in this run" if tp else "")
        if tp and sl:
            lines.append(f"xos / SLURM in this run: {tp['jobs_per_s'] / sl['jobs_per_s']:.1f}x jobs per second "
                         "(SLURM submits through sbatch, a process per job; xos through its Python API)")
        lines.append("")
    rows = [("matchmaking", "seconds", "job-ad pairs/s")]
    for k, v in res.items():
        rows.append((k, f"{v['seconds']:.3f}", f"{v['pairs_per_s']:,.0f}"))
    lines += table(rows)
    keys = list(res)
    lines.append(f"autoclusters / each alone: {res[keys[1]]['pairs_per_s'] / res[keys[2]]['pairs_per_s']:.0f}x "
                 "pairs per second")
    if tp:
        res["throughput"] = tp
    if tpg:
        res["throughput_pg"] = tpg
    if sl:
        res["slurm"] = sl
    return "\n".join(lines)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--ads", type=int, default=10000)
    p.add_argument("--jobs", type=int, default=1000)
    p.add_argument("--small-ads", type=int, default=1000)
    p.add_argument("--naive-jobs", type=int, default=50, help="jobs timed one by one (the rate is per pair)")
    p.add_argument("--jobs-run", type=int, default=1000, help="trivial jobs through the job manager (0: skip)")
    p.add_argument("--slurm-jobs", type=int, default=50, help="trivial jobs through SLURM, the peer (0: skip)")
    p.add_argument("--db", choices=("sqlite", "postgresql"), default="sqlite",
                   help="postgresql: run the trivial jobs again with the job store in PostgreSQL, beside SQLite")
    p.add_argument("--out")
    args = p.parse_args()
    res = run(args)
    print(report(res))
    write_json(args.out, res)
    return 0


if __name__ == "__main__":
    sys.exit(main())
