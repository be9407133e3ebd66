"""`make demo`: a whole grid on this machine, used as its members would use it.

A VO service, a job manager, an MRC with two OSDs and three nodes, each node in its own network
namespace. A VO with two members and an admin; a volume of the grid file system, mounted; an
array of jobs, a dependency chain passing files through the grid file system, and a long
checkpointable job that is migrated while it runs and survives the loss of its node. Then the
accounting report, and everything is taken down again.

`python -m xos.demo isolation` runs the earlier demo: two VOs' workspaces on one node, one
flooding CPU and network while the other keeps its throughput.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from typing import Any

from xos.testing import AEM_PEER_URL, TestAem, TestGrid, TestVOService, leftovers, purge_cgroups, wait_for
from xos.testing.fsgrid import FsGrid

T0 = time.monotonic()
NODES = (("a", "3", "4G"), ("b", "2", "4G"), ("c", "1", "2G"))  # site, price per CPU hour, memory
STEPS = 300  # of the long job, a tenth of a second each

SIMULATION = f"""
import time
h = 0.0
for i in range(1, {STEPS} + 1):
    h += 1.0 / i  # the state a restart from zero would lose
    print(f"step {{i:3d}}/{STEPS} H={{h:.9f}}", flush=True)
    time.sleep(0.1)
"""


def say(text: str) -> None:
    """One line of what the demo does, with the time since it started."""
    print(f"[{time.monotonic() - T0:5.1f}s] {text}", flush=True)


class Demo:
    """The grid's pieces and the members' credentials, once built."""

    def __init__(self, stack: contextlib.ExitStack) -> None:
        self.stack = stack
        self.base = tempfile.mkdtemp(prefix="xos-demo-")
        os.chmod(self.base, 0o755)
        stack.callback(shutil.rmtree, self.base, True)
        self.creds: dict[str, str] = {}
        self.sessions: dict[str, Any] = {}
        self.grid: TestGrid
        self.fs: FsGrid
        self.aem: TestAem
        self.mount = ""

    # -- building the grid ------------------------------------------------------------------

    def build(self) -> None:
        say("starting a VO service and creating VO 'bio': carol administers it, alice and bob are members")
        vo = self.stack.enter_context(TestVOService())
        for args in (("create", "bio", "--owner", "carol"), ("add", "bio", "carol", "--role", "admin"),
                     ("add", "bio", "alice"), ("add", "bio", "bob")):
            _check(vo.cli("vo", *args), "xos vo " + " ".join(args))
        for user in ("carol", "alice", "bob"):
            token = _check(vo.cli("vo", "issue", "bio", user, "--ttl", "1h"), f"xos vo issue bio {user}").strip()
            path = os.path.join(self.base, f"{user}.cred")
            with open(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "w") as f:
                f.write(token)
            self.creds[user] = path
        pubkey = os.path.join(vo.home, "vo", "signing.key.pub")
        with open(pubkey, "rb") as f:
            pem = f.read()
        say("  credentials issued for an hour, signed by the VO's key; nodes and file system trust that key")

        say("starting the grid file system: an MRC and two OSDs, each in its own network namespace")
        self.fs = self.stack.enter_context(FsGrid(osds=2, clients=1))
        self.fs.trust_vo("bio", pem)
        self.user("alice", "fs", "mkvol", "results", "--mrc", self.fs.mrc_url, "--replicas", "2")
        self.mount = self.fs.mount(0, "results", "alice", "bio", cred=self.creds["alice"])
        say(f"  volume 'results' (every file on both OSDs) is mounted at {self.mount}")

        say("starting three nodes, each in its own network namespace, with a uid pool for VO bio")
        node_args = [["--site", s, "--price", p, "--cpu", "1", "--memory", m, "--aem", AEM_PEER_URL,
                      "--ad-interval", "0.5"] for s, p, m in NODES]
        self.grid = self.stack.enter_context(TestGrid(3, ["--pool", "bio=31000-31999"], node_args,
                                                      ca_dir=self.fs.ca_dir))
        for n in self.grid.nodes:
            _check(n.cli("node", "trust", "bio", pubkey), "xos node trust")
        trust = os.path.join(self.base, "aem-trust")
        from xos.identity.credential import TrustStore

        TrustStore(trust).trust("bio", pem)
        say("starting the job manager; the nodes push their ClassAds to it")
        self.aem = TestAem(self.base, self.grid, trust, self.fs.mrc_url, pull=[])
        self.aem.start()
        self.stack.callback(self.aem.stop)
        wait_for(self.nodes_seen, 30, "the job manager to see three nodes")
        self.user("alice", "nodes", "--constraint", "TARGET.HasCheckpoint", "--rank=-TARGET.Price")

    def nodes_seen(self) -> bool:
        try:
            return len(json.loads(self.user("alice", "nodes", "--json", quiet=True))) == 3
        except RuntimeError:
            return False  # not listening yet

    # -- what members type ---------------------------------------------------------------------

    def user(self, who: str, *args: str, quiet: bool = False) -> str:
        """Run `xos ARGS` as member `who`, shown as typed with its output; its stdout."""
        with open(self.creds[who]) as f:
            env = {**os.environ, "XOS_AEM": self.aem.url if hasattr(self, "aem") else "",
                   "XOS_CA": self.fs.ca if hasattr(self, "fs") else "", "XOS_CREDENTIAL": f.read().strip()}
        if not quiet:
            print(f"         {who}$ xos {' '.join(_quote(a) for a in args)}", flush=True)
        p = subprocess.run([sys.executable, "-m", "xos", *args], env=env, capture_output=True, text=True,
                           timeout=120, cwd=self.base)
        if p.returncode != 0:
            raise RuntimeError(f"xos {' '.join(args)} failed: {p.stderr.strip() or p.stdout.strip()}")
        if not quiet:
            for line in p.stdout.rstrip("\n").splitlines():
                print(f"           {line}", flush=True)
        return p.stdout

    def job_file(self, name: str, spec: dict[str, Any]) -> str:
        path = os.path.join(self.base, name)
        with open(path, "w") as f:
            json.dump(spec, f, indent=1)
        return name

    def submit(self, who: str, name: str, spec: dict[str, Any]) -> list[str]:
        out = self.user(who, "job", "submit", self.job_file(name, spec))
        return [line.split()[0] for line in out.splitlines()]

    def status(self, who: str, job: str) -> dict[str, Any]:
        """A job's info as `who` sees it (the Python API, quietly)."""
        from xos.aem.client import Session

        if who not in self.sessions:
            with open(self.creds[who]) as f:
                self.sessions[who] = Session(self.aem.url, f.read().strip(), ca=self.grid.ca)
                self.stack.callback(self.sessions[who].close)
        return self.sessions[who].job_info(job)

    def wait_state(self, who: str, job: str, check: Callable[[dict[str, Any]], bool], what: str,
                   timeout: float = 90) -> dict[str, Any]:
        wait_for(lambda: check(self.status(who, job)), timeout, what, interval=0.1)
        return self.status(who, job)

    # -- the story ---------------------------------------------------------------------------

    def jobs(self) -> bool:
        say("bob submits an array of four jobs (each gets its own workspace, uid and address)")
        array = self.submit("bob", "squares.json", {
            "name": "squares", "executable": "/bin/sh", "count": 4, "resources": {"cpus": 0.2, "memory": "64M"},
            "arguments": ["-c", 'n=$(( $(od -An -N2 -tu2 /dev/urandom) % 1000 )); '
                                'echo "$XOS_WORKSPACE as uid $(id -u): $n squared is $((n * n))"']})

        say("alice submits a chain: generate -> count -> report, passing files through the grid file system")
        gen = self.submit("alice", "generate.json", {
            "name": "generate", "executable": "/usr/bin/python3", "resources": {"cpus": 0.3, "memory": "64M"},
            "arguments": ["-c", "import random\nrandom.seed(7)\n"
                                "for _ in range(5000): print(random.choice(['gene-a', 'gene-b', 'gene-c']))"],
            "stdout": "grid://results/reads.txt"})[0]
        count = self.submit("alice", "count.json", {
            "name": "count", "executable": "/bin/sh", "arguments": ["-c", "sort | uniq -c | sort -rn"],
            "stdin": "grid://results/reads.txt", "stdout": "grid://results/counts.txt", "after": [gen],
            "resources": {"cpus": 0.2, "memory": "64M"}})[0]
        report = self.submit("alice", "report.json", {
            "name": "report", "executable": "/usr/bin/awk", "arguments": ['{print $2 ": " $1 " reads"}'],
            "stdin": "grid://results/counts.txt", "stdout": "grid://results/report.txt", "after": [count],
            "resources": {"cpus": 0.1, "memory": "64M"}})[0]

        say("alice submits a long simulation: checkpointable, checkpointed every 3 s, output to the grid")
        sim = self.submit("alice", "simulation.json", {
            "name": "simulation", "executable": "/usr/bin/python3", "arguments": ["-c", SIMULATION],
            "checkpointable": True, "checkpoint_interval": "3s", "stdout": "grid://results/simulation.txt",
            "rank": "-TARGET.Price", "resources": {"cpus": 0.3, "memory": "128M"}})[0]

        for j in array + [report]:
            who = "bob" if j in array else "alice"
            self.wait_state(who, j, lambda i: i["state"] in ("done", "failed", "cancelled"), f"job {j} to end")
        say("the array and the chain are done; bob reads his array's output")
        for j in array:
            self.user("bob", "job", "output", j)
        say(f"alice reads the chain's result through the mount: {self.mount}/report.txt")
        with open(os.path.join(self.mount, "report.txt")) as f:
            for line in f.read().splitlines():
                print(f"           {line}", flush=True)
        self.user("alice", "job", "status", report)

        info = self.wait_state("alice", sim, lambda i: i["state"] == "running" and "checkpoint" in i,
                               "the simulation to run and be checkpointed")
        first = info["node"]
        say(f"the simulation runs on {first} (the cheapest); its checkpoints come to the job manager")
        from xos.checkpoint import criu

        live = criu.find().live
        say(f"alice moves it to another node while it runs ({live or 'stop-and-copy'})")
        self.user("alice", "job", "migrate", sim, *(["--live"] if live else []))
        info = self.status("alice", sim)
        second = info["node"]
        if second == first:
            raise RuntimeError(f"the simulation did not move: {info['reason']}")
        self.wait_state("alice", sim, lambda i: any(h["reason"].startswith(f"checkpointed on node {second}")
                                                    for h in i["history"]), f"a checkpoint on {second}")
        victim = next(n for n in self.grid.nodes if n.name == second)
        say(f"node {second} is switched off: its daemon and every process on it are killed")
        victim.expect_warning(".*")
        victim.stop(signal.SIGKILL)
        purge_cgroups(victim.cgroup_root)
        info = self.wait_state("alice", sim, lambda i: i["state"] == "running" and i["node"] not in ("", second),
                               "the simulation to run again elsewhere")
        say(f"the job manager saw {second}'s ad lapse and restored the simulation on {info['node']}:")
        say(f"  {info['reason']}")
        info = self.wait_state("alice", sim, lambda i: i["state"] in ("done", "failed", "cancelled"),
                               "the simulation to end", timeout=120)
        self.show_status("alice", sim)
        return self.check_simulation(info) and info["state"] == "done"

    def show_status(self, who: str, job: str) -> None:
        """`xos job status`, its periodic checkpoints summed up in one line."""
        print(f"         {who}$ xos job status {job}", flush=True)
        lines = self.user(who, "job", "status", job, quiet=True).splitlines()
        periodic = [line for line in lines if "checkpoint every" in line or "(every " in line]
        for line in lines:
            if line not in periodic:
                print(f"           {line}", flush=True)
        print(f"           (and {len(periodic) // 2} periodic checkpoints, left out here)", flush=True)

    def check_simulation(self, info: dict[str, Any]) -> bool:
        with open(os.path.join(self.mount, "simulation.txt")) as f:
            lines = f.read().splitlines()
        steps = [int(line.split()[1].split("/")[0]) for line in lines]
        h = sum(1.0 / i for i in range(1, STEPS + 1))
        ok = steps == list(range(1, STEPS + 1)) and lines[-1].endswith(f"H={h:.9f}")
        nodes = [m.group(1) for h in info["history"] if h["to"] == "running" and h["from"] != "checkpointing"
                 and (m := re.search(r"(?:on|to) node (\S+)", h["reason"]))]
        say(f"simulation.txt on the grid file system: {len(steps)} steps, "
            + ("each exactly once, " if ok else "NOT each exactly once, ")
            + f"final {lines[-1].split()[-1]} (expected H={h:.9f}); it ran on {' then '.join(nodes)}")
        return ok

    def accounting(self) -> None:
        say("carol, the VO's admin, reads the accounting report (CPU seconds at each node's price)")
        self.user("carol", "acct", "report")

    def teardown_checks(self) -> list[str]:
        bad = self.aem.unexpected_warnings(["job .* refused by node", "not reachable", "not restored",
                                            "did not send the checkpoint", "could not leave"])
        return bad + [w for n in self.grid.nodes for w in n.unexpected_warnings()]


def _check(res: tuple[int, str, str], what: str) -> str:
    code, out, err = res
    if code != 0:
        raise RuntimeError(f"{what} failed: {err.strip() or out.strip()}")
    return out


def _quote(arg: str) -> str:
    return arg if arg and all(c.isalnum() or c in "-_./=:@" for c in arg) else json.dumps(arg)


def grid_demo() -> int:
    """The whole grid, start to teardown; 0 when every check held."""
    print("xos demo: a grid on this machine, used by the members of one VO\n", flush=True)
    ok = False
    before = leftovers()
    with contextlib.ExitStack() as stack:
        demo = Demo(stack)
        demo.build()
        ok = demo.jobs()
        demo.accounting()
        bad = demo.teardown_checks()
        if bad:
            say("unexpected warnings: " + "; ".join(bad[:5]))
            ok = False
        say("taking the grid down: job manager, nodes, file system, VO service")
    left = leftovers() - before
    if left:
        say("left behind: " + ", ".join(sorted(left)))
    say("done: every check held and nothing is left behind" if ok and not left else
        "done, but a check did NOT hold (see above)")
    ok = ok and not left
    return 0 if ok else 1


def isolation_demo() -> int:
    """Build a node in its own network namespace, run the isolation experiment, print the table."""
    from xos.testing import node
    from xos.testing.experiments import isolation, isolation_table

    print("xos demo: a node with two VO workspaces (vo-a floods, vo-b runs its job stream)\n", flush=True)
    with node() as n, n.client() as c:
        info = c.info()
        print(f"node {info['name']}: cgroup {info['cgroup']}, {info['capacity']['cpu']:g} CPUs, "
              f"workspace subnet {info['subnet']}\n", flush=True)
        result = c.run(isolation(c.client))
    print(isolation_table(result))
    ok = result["cpu_ratio"] >= 0.9 and result["net_ratio"] >= 0.9
    print("\nisolation held" if ok else "\nisolation did NOT hold on this run")
    return 0 if ok else 1


def main(argv: list[str]) -> int:
    if argv[1:] == ["isolation"]:
        return isolation_demo()
    if argv[1:]:
        print("usage: python -m xos.demo [isolation]", file=sys.stderr)
        return 2
    return grid_demo()


if __name__ == "__main__":
    sys.exit(main(sys.argv))
