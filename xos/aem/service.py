"""The job manager (`xos serve aem`): the job directory, node ads, event-driven matching, dispatch, control.

Nodes are reached on their peer API over TLS, as the host its certificate names (role aem); nodes push
their ads to its peer listener as themselves (role node). Their ads are fetched every
`poll` seconds and live for `ad_ttl`: a node that stops answering drops out of matching. A new
job, a changed ad or a finished job starts a matching pass at once (HTCondor users wait for the
negotiator's next cycle, 20 s by default). A job runs as its submitter's mapped account: the
node verifies the credential the job was submitted with.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from dataclasses import dataclass, field
from typing import Any

from xos.aem import stdio
from xos.aem.classad import Matchmaker, NodeAd, Wants
from xos.aem.jobs import Job, JobStore, State, open_store
from xos.aem.jobspec import JobSpec, grid_path, parse
from xos.aem.nodes import Nodes, OutputTooLarge, ws_name
from xos.aem.recovery import recover
from xos.errors import (
    Conflict,
    IllegalTransition,
    InvalidInput,
    OverCapacity,
    Unavailable,
    XosError,
)
from xos.identity import credential
from xos.wire import hostid
from xos.wire.metrics import Registry

log = logging.getLogger(__name__)


class NoMatch(Conflict):
    """No node can run the job now, and it was not asked to wait."""

    code = "no-match"


@dataclass
class AemConfig:
    home: str
    listen: str
    trust: str
    host_dir: str  # this host's key, certificate (role aem) and the grid's CA
    nodes: dict[str, str]  # name -> peer URL
    poll: float = 1.0
    ad_ttl: float = 30.0
    mrc: str = ""  # the grid file system's MRC, for jobs' grid:// stdin, stdout and stderr
    max_output: int = 1 << 30  # bytes of a job's stdout or stderr kept here; the rest is refused
    vo_urls: tuple[str, ...] = ()  # VO services whose revocations are followed: their credentials refused
    peer_listen: str = ""  # HOST:PORT where nodes push their ads (TLS, node certificates), off when empty
    db: str = ""  # the job store's URL (default: SQLite in home)


@dataclass
class Ad:
    node: NodeAd
    url: str
    expires: float


@dataclass
class Aem:
    """The job directory and the loops that match, dispatch, watch, checkpoint and recover its jobs."""

    cfg: AemConfig
    store: JobStore = field(init=False)
    trust: credential.TrustStore = field(init=False)
    ads: dict[str, Ad] = field(default_factory=dict)
    matchmaker: Matchmaker = field(default_factory=Matchmaker)
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    tasks: set[asyncio.Task[None]] = field(default_factory=set)

    def __post_init__(self) -> None:
        self.store = open_store(self.cfg.db or os.path.join(self.cfg.home, "aem", "jobs.db"))
        self.trust = credential.TrustStore(self.cfg.trust)
        self.revoked: set[str] = set()  # credentials the followed VO services revoked (xos.vo.follow fills it)
        self.host = hostid.HostIdentity(self.cfg.host_dir)
        if "aem" not in self.host.roles:
            raise InvalidInput(f"the certificate in {self.cfg.host_dir} is for {', '.join(self.host.roles)}, "
                               "not a job manager (aem)")
        for sub in ("output", "images"):  # jobs' outputs and memory: the owners' alone
            os.makedirs(os.path.join(self.cfg.home, "aem", sub), mode=0o700, exist_ok=True)
            os.chmod(os.path.join(self.cfg.home, "aem", sub), 0o700)
        self.checkpoint_due: dict[str, float] = {}  # job -> monotonic time of its next periodic checkpoint
        self.busy: set[str] = set()  # jobs with a checkpoint under way
        self.ending: set[str] = set()  # ended jobs whose output and usage are being collected
        self.last_usage: dict[str, dict[str, Any]] = {}  # job -> its workspace as last listed (for a lost node)
        self.refused: dict[str, dict[str, float]] = {}  # job -> node -> until when it is not offered there again
        # Every node's peer URL: those named at start (their ads are fetched) and those that push theirs,
        # remembered across restarts so their jobs are found again before their next push.
        self.requests = Registry("aem")
        self.requests.gauge("jobs", "Jobs by state.",
                            lambda: [({"state": st}, float(n)) for st, n in sorted(self.store.counts().items())])
        self.requests.gauge("nodes", "Nodes by whether their ad is fresh.",
                            lambda: [({"fresh": str(f).lower()}, float(sum(1 for a in self.ads.values()
                                                                          if (a.expires > time.monotonic()) is f)))
                                     for f in (True, False)])
        self.matchmaking = self.requests.histogram("matchmaking_seconds",
                                                   "Time a matching pass took to match the queue to the ads.")
        self.nodes = Nodes({**self.store.known_nodes(), **self.cfg.nodes}, self.host.client_context())

    def fresh_ads(self) -> list[NodeAd]:
        now = time.monotonic()
        return [a.node for a in self.ads.values() if a.expires > now]

    async def refresh_ads(self, names: list[str] | None = None) -> None:
        """Fetch the ad of every node named at start (or of `names`); a changed set of ads is a reason to match
        again."""
        async def one(name: str) -> None:
            try:
                ad = NodeAd.checked(name, await self.nodes.call("GET", name, "/v1/peer/ad"))
            except InvalidInput as e:
                log.warning("refused the ad node %s sent: %s", name, e.message)
                return
            except XosError as e:
                log.info("no ad from node %s: %s", name, e)
                return
            old = self.ads.get(name)
            self.ads[name] = Ad(ad, self.nodes.urls[name], time.monotonic() + self.cfg.ad_ttl)
            if old is None or old.node.attrs != ad.attrs:
                self.wake.set()

        await asyncio.gather(*(one(n) for n in (self.cfg.nodes if names is None else names)))

    # matching and dispatch

    def wants(self, job: Job) -> Wants:
        """What `job` asks of a node, as its owner."""
        return wants_of(parse(job.spec), job.vo, job.owner)

    async def match_pass(self) -> None:
        """Match every queued job whose dependencies allow it, best node first, and dispatch them together.

        What a pass hands out is claimed against the ads' free Cpus and Memory until the next ads
        arrive, as a partitionable slot is claimed in HTCondor, so one pass does not send a node
        more than it advertised."""
        t0 = time.perf_counter()
        ads = self.fresh_ads()
        claimed: dict[str, list[float]] = {}
        matched: list[tuple[str, State, str, str | None]] = []
        for job in self.store.ls(State.QUEUED) + self.store.ls(State.REQUEUED):
            ready, why = self.store.ready(job)
            if not ready:
                if why.startswith("never"):
                    self.store.transition(job.id, State.FAILED, f"dependency can never be met: {why[7:]}")
                elif why != job.reason:
                    self.store.set_reason(job.id, why)
                continue
            spec = parse(job.spec)
            wants = self.wants(job)
            found = self.matchmaker.matches(wants, ads)
            if not found:
                reason = f"no match: {self.matchmaker.why_not(wants, ads)}"
                if reason != job.reason:
                    self.store.set_reason(job.id, reason)
                continue
            pick = None
            shunned = self.refused.get(job.id, {})
            for m in found:
                if shunned.get(m.node, 0) > time.monotonic():
                    continue  # it said no a moment ago: another node, or this one once that has passed
                attrs = self.ads[m.node].node.attrs
                cpu, mem = claimed.setdefault(m.node, [0.0, 0.0])
                fits_cpu = cpu + spec.cpus <= attrs.get("Cpus", 0) + 1e-9
                if fits_cpu and mem + (spec.memory >> 20) <= attrs.get("Memory", 0):
                    pick = m
                    break
            if pick is None:
                if job.reason != "matching nodes are full":
                    self.store.set_reason(job.id, "matching nodes are full")
                continue
            claimed[pick.node][0] += spec.cpus
            claimed[pick.node][1] += spec.memory >> 20
            matched.append((job.id, State.MATCHED, f"matched node {pick.node} (rank {pick.rank:g})", pick.node))
        starts = self.store.transitions(matched)  # one commit for the pass
        self.matchmaking(time.perf_counter() - t0)
        limit = asyncio.Semaphore(16)
        started: list[tuple[str, State, str, str | None]] = []

        async def start(job: Job) -> None:
            async with limit:
                await self.dispatch(job, started)

        await asyncio.gather(*(start(j) for j in starts))
        try:
            self.store.transitions(started)  # one commit for the jobs this pass started
        except IllegalTransition:  # one was cancelled meanwhile: the others one by one
            for step in started:
                try:
                    self.store.transition(*step)
                except IllegalTransition as e:
                    log.info("job %s: %s", step[0], e)

    async def dispatch(self, job: Job, started: list[tuple[str, State, str, str | None]] | None = None) -> None:
        """Start a matched job on its node as a workspace with the job's allocation; back to the queue if refused.
        Its start goes into `started` (the caller commits them together) if given, else is committed here."""
        spec = job.spec
        res = spec.get("resources", {})
        alloc = {k: res[k] for k in ("memory", "egress", "ingress") if res.get(k)}
        alloc["cpu"] = res.get("cpus", 1.0)
        if os.path.exists(self.image_path(job.id)):
            await self._resume(job)
            return
        try:
            main = await stdio.main_program(job.spec, self._grid(job))
        except XosError as e:
            self._step(job.id, State.FAILED, f"stdin {spec['stdin']}: {e.code}: {e.message}")
            self.wake.set()
            return
        body = {"name": ws_name(job.id), "credential": self.store.credential(job.id), "allocation": alloc, "main": main,
                "grid": [f"{self.cfg.mrc}/{v}" for v in spec.get("volumes", [])]}
        try:
            await self.nodes.call("POST", job.node, "/v1/peer/workspaces", body)
        except InvalidInput as e:  # the job itself (its stdio cannot be opened, say): no node will do better
            self._step(job.id, State.FAILED, f"node {job.node} could not start it: {e.code}: {e.message}")
            self.wake.set()
            return
        except XosError as e:
            log.warning("job %s refused by node %s: %s", job.id, job.node, e)
            self.refused.setdefault(job.id, {})[job.node] = time.monotonic() + REFUSAL_MEMORY
            self._step(job.id, State.QUEUED, f"node {job.node} refused: {e.code}: {e.message}")
            self.wake.set()  # matched again at once, elsewhere
            return
        step = (job.id, State.RUNNING, f"started on node {job.node}", None)
        started.append(step) if started is not None else self._step(*step)

    def _step(self, job_id: str, to: State, reason: str, node: str | None = None) -> None:
        """A job's transition after its node was asked something: the job may have moved on meanwhile
        (cancelled by its owner, say), and then it stays as it is."""
        try:
            self.store.transition(job_id, to, reason, node)
        except IllegalTransition as e:
            log.info("job %s: %s", job_id, e)

    def _not_ending(self, job: Job) -> None:
        """Conflict if the job's program has ended and its end is being collected: its workspace is going."""
        if job.id in self.ending:
            raise Conflict(f"job {job.id} has ended; its output and usage are being collected")

    def _grid(self, job: Job) -> stdio.GridFiles:
        """The grid file system as the job's owner: with the credential the job was submitted with."""
        return stdio.GridFiles(self.cfg.mrc, self.store.credential(job.id),
                               os.path.join(self.host.directory, "ca.pem"))

    async def _resume(self, job: Job) -> None:
        """Restore a requeued job on its new node from the last checkpoint the job manager keeps. An image
        the node finds corrupt or incompatible is dropped and the job starts from the beginning instead."""
        path = self.image_path(job.id)
        taken = time.strftime("%H:%M:%S", time.localtime(os.path.getmtime(path)))
        try:
            await self.nodes.restore(job.node, job.id, path)
        except XosError as e:
            log.warning("job %s not restored on node %s: %s", job.id, job.node, e)
            if isinstance(e, (Unavailable, OverCapacity, Conflict)):  # this node, now: another may take it
                why = f"node {job.node} did not restore it: {e.code}: {e.message}"
            else:  # the image itself (corrupt, incompatible, CRIU failing on it): never retried
                os.unlink(path)
                why = f"its checkpoint was refused ({e.code}: {e.message}); it starts from the beginning"
            self._step(job.id, State.QUEUED, why)
            return
        self._step(job.id, State.RUNNING, f"restored on node {job.node} from its checkpoint of {taken}")

    async def monitor(self) -> None:
        """Finished main programs make done or failed jobs; their output is kept and the workspace goes.

        One listing per node tells which jobs ended; only those are visited."""
        running = self.store.ls(State.RUNNING)
        nodes = {j.node for j in running}
        seen: dict[str, dict[str, Any]] = {}
        reached: set[str] = set()

        async def listing(node: str) -> None:
            try:
                for ws in await self.nodes.workspaces(node):
                    seen[f"{node}/{ws['name']}"] = ws
                reached.add(node)
            except XosError:
                pass  # unreachable for now: the ad's lapse decides

        await asyncio.gather(*(listing(n) for n in nodes))
        limit = asyncio.Semaphore(16)

        async def finish(job: Job, ws: dict[str, Any]) -> None:
            try:
                async with limit:
                    await self._finish(job, ws)
            finally:
                self.ending.discard(job.id)

        work = []
        # a job that left running there while its node was asked (migrated, being checkpointed, cancelled):
        # what the node answered is no longer about it
        still = {j.id: j.node for j in self.store.ls(State.RUNNING)}
        for job in running:
            if job.node not in reached or still.get(job.id) != job.node:
                continue
            ws = seen.get(f"{job.node}/{ws_name(job.id)}")
            if ws is not None:
                self.last_usage[job.id] = ws
            if ws is None:
                self.store.transition(job.id, State.FAILED, f"its workspace vanished from node {job.node}")
            elif ws.get("main_exit") is not None:
                self.ending.add(job.id)  # from now: no checkpoint or migration of what has ended
                work.append(finish(job, ws))
            elif self._over_walltime(job):
                self.ending.add(job.id)
                work.append(finish(job, {**ws, "main_exit": {"walltime": 1}}))
        await asyncio.gather(*work)

    def _over_walltime(self, job: Job) -> bool:
        limit = float(job.spec.get("resources", {}).get("walltime") or 0)
        if not limit:
            return False
        started = next((h["at"] for h in self.store.history(job.id) if h["to"] == State.RUNNING.value), None)
        return started is not None and time.time() - started > limit

    async def _finish(self, job: Job, ws: dict[str, Any]) -> None:
        """Collect an ended job: output (copied to the grid file system where it asked), usage, exit
        status; then its workspace goes."""
        ended = ws["main_exit"]
        notes = []
        for stream in ("stdout", "stderr"):
            where = job.spec.get(stream) or ""
            name = stdio.name_on_node(stream, where)
            if name.startswith("/") or (stream == "stderr" and not where):
                continue  # on the node, where it asked; or stderr with stdout
            try:
                await self.nodes.collect(job.node, job.id, name, self.output_path(job.id, stream),
                                         self.cfg.max_output)
            except OutputTooLarge as e:  # the job's doing, not the grid's: told, not warned of
                log.info("%s of job %s cut: %s", stream, job.id, e)
                notes.append(f"{stream} cut: {e.message}")
            except XosError as e:
                log.warning("%s of job %s not collected: %s", stream, job.id, e)
                notes.append(f"{stream} not collected: {e.message}")
                continue
            if grid_path(where):
                try:
                    await self._grid(job).write(where, self.output_path(job.id, stream))
                except XosError as e:
                    notes.append(f"{stream} not written to {where} ({e.message}); xos job output has it")
        try:  # the listing's usage may be a sampling period old: ask for it fresh
            ws = await self.nodes.workspace(job.node, job.id)
        except XosError as e:
            log.info("usage of job %s from the listing: %s", job.id, e)
        status = ended.get("exit", 128 + ended.get("signal", 0))
        note = "".join(f"; {n}" for n in notes)
        if ended.get("exit") == 0:
            then: tuple[State, str, int | None] = (State.DONE, "exit 0" + note, 0)
        elif "walltime" in ended:
            limit = job.spec["resources"]["walltime"]
            then = (State.FAILED, f"walltime of {limit:g} s exceeded: stopped" + note, None)
        else:
            what = f"exit {ended['exit']}" if "exit" in ended else f"signal {ended['signal']}"
            then = (State.FAILED, what + note, status)
        try:
            self.account(job, ws, then)  # its usage and its end in one commit
        except IllegalTransition:  # it was cancelled meanwhile: its usage all the same
            self.account(job, ws)
        self.last_usage.pop(job.id, None)
        self.drop_image(job.id)
        try:  # after: a job manager gone meanwhile has its stray removed by the next one's sweep
            await self.nodes.call("DELETE", job.node, f"/v1/peer/workspaces/{ws_name(job.id)}")
        except XosError as e:
            log.warning("workspace of job %s not removed: %s", job.id, e)
        self.wake.set()  # dependants may run now

    def account(self, job: Job, ws: dict[str, Any], then: tuple[State, str, int | None] | None = None) -> None:
        """The job's usage as its node measured it, at the price the node advertises (and with `then`, the
        job's transition, in the same commit)."""
        ad = self.ads.get(job.node)
        price = float(ad.node.attrs.get("Price", 0.0)) if ad is not None else 0.0
        self.store.add_usage(job, ws.get("usage", {}), price, then)

    def output_path(self, job_id: str, stream: str = "stdout") -> str:
        return os.path.join(self.cfg.home, "aem", "output", job_id + ("" if stream == "stdout" else f".{stream}"))

    def image_path(self, job_id: str) -> str:
        """Where the job's last checkpoint is kept: here, not on its node, so that a lost node does not take
        it along."""
        return os.path.join(self.cfg.home, "aem", "images", f"{job_id}.tar")

    def drop_image(self, job_id: str) -> None:
        self.checkpoint_due.pop(job_id, None)
        self.refused.pop(job_id, None)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.image_path(job_id))

    async def lost_nodes(self) -> None:
        """Jobs on a node whose ad has not been refreshed for `ad_ttl` are queued again, to restart elsewhere."""
        now = time.monotonic()
        for job in self.store.ls(State.RUNNING) + self.store.ls(State.SUSPENDED):
            ad = self.ads.get(job.node)
            if ad is not None and ad.expires <= now:
                last = self.last_usage.pop(job.id, None)
                if last is not None:  # charged for what it was last seen to have used there
                    self.account(job, last)
                self.store.transition(job.id, State.REQUEUED, f"node {job.node} lost (no ad for "
                                                              f"{self.cfg.ad_ttl:g} s)")
                self.wake.set()

    async def rebalance(self) -> None:
        """Move jobs off nodes whose running jobs hold more than the node offers now (its owner took
        capacity back), newest first, until they fit: a checkpointable job migrates to the best other
        node, or waits in the queue as its checkpoint when none has room; another job is stopped and
        queued again, to restart elsewhere."""
        for name, ad in list(self.ads.items()):
            over_cpu = float(ad.node.attrs.get("OverCpus") or 0)
            over_mem = float(ad.node.attrs.get("OverMemory") or 0)
            if ad.expires <= time.monotonic() or (over_cpu <= 0 and over_mem <= 0):
                continue
            here = sorted((j for j in self.store.ls(State.RUNNING) if j.node == name and j.id not in self.busy),
                          key=lambda j: j.created, reverse=True)
            for job in here:
                if over_cpu <= 1e-9 and over_mem <= 0:
                    break
                spec = parse(job.spec)
                over_cpu -= spec.cpus
                over_mem -= spec.memory >> 20
                why = f"node {name} took capacity back"
                try:
                    if spec.checkpointable:
                        try:
                            await self.migrate(self.store.get(job.id), None, why)
                            if self.store.get(job.id).node != name:
                                continue
                        except NoMatch:
                            pass
                        await self.checkpoint(self.store.get(job.id), f"before leaving node {name}")
                    await self._evict(self.store.get(job.id), why)
                except XosError as e:
                    log.warning("job %s could not leave node %s: %s", job.id, name, e)
            ad.node.attrs["OverCpus"] = ad.node.attrs["OverMemory"] = 0  # acted on: the next ad says what is left

    async def _evict(self, job: Job, why: str) -> None:
        """Stop a running job on its node and queue it again (from its checkpoint, when it has one)."""
        self.account(job, await self.nodes.workspace(job.node, job.id))
        await self.nodes.call("DELETE", job.node, f"/v1/peer/workspaces/{ws_name(job.id)}")
        then = "from its checkpoint" if os.path.exists(self.image_path(job.id)) else "from the beginning"
        self.store.transition(job.id, State.REQUEUED, f"{why}: queued again, to run elsewhere {then}")
        self.wake.set()

    async def sweep_strays(self) -> None:
        """Workspaces of jobs that no longer run there (a node back after its jobs were requeued) go, so no
        job runs twice."""
        for name, ad in list(self.ads.items()):  # a node's first push adds to them while this waits
            if ad.expires <= time.monotonic():
                continue
            try:
                listing = await self.nodes.workspaces(name)
            except XosError:
                continue
            jobs = {ws_name(j.id): j for j in self.store.ls()} if listing else {}  # once a listing, after it
            for ws in listing:
                wname = ws.get("name", "")
                if not wname.startswith("job-"):
                    continue
                owner = jobs.get(wname)
                if owner is not None and owner.state == State.MIGRATING:
                    continue  # on its way: at the source, the target or both until the target confirms
                if owner is None or owner.node != name or owner.state not in (
                        State.RUNNING, State.SUSPENDED, State.MATCHED, State.CHECKPOINTING):
                    log.info("removing stray workspace %s on node %s", wname, name)
                    try:
                        await self.nodes.call("DELETE", name, f"/v1/peer/workspaces/{wname}")
                    except XosError as e:
                        log.info("stray workspace %s on node %s stays for now: %s", wname, name, e)

    async def run_loops(self) -> None:
        # Every node it knows, those that push their ads too: after a restart or a takeover, their jobs are
        # watched and matching resumes without waiting for their next push.
        await self.refresh_ads(list(self.nodes.urls))
        await recover(self.store, self.nodes)
        rounds = 0
        while True:
            try:
                await self.refresh_ads()
                await self.lost_nodes()
                await self.monitor()
                await self.rebalance()
                await self.periodic_checkpoints()
                rounds += 1
                if rounds % 5 == 0:
                    await self.sweep_strays()
                try:
                    await asyncio.wait_for(self.wake.wait(), self.cfg.poll)
                except TimeoutError:
                    pass
                self.wake.clear()
                await self.match_pass()
            except Exception:  # a bug in one pass: said loudly, and the next pass still runs
                log.exception("job manager pass failed")
                await asyncio.sleep(self.cfg.poll)

    async def checkpoint(self, job: Job, why: str = "by request") -> Job:
        """Checkpoint a running job where it runs; it goes on running. The image comes here, streamed, and
        replaces the job's previous one only once it arrived whole."""
        job = self.store.may(job.id, "checkpoint")
        self._not_ending(job)
        if job.id in self.busy:
            raise Conflict(f"job {job.id} is being checkpointed already")
        self.busy.add(job.id)
        back = State(job.state)
        try:
            self.store.transition(job.id, State.CHECKPOINTING, f"checkpoint {why}")
            path = self.image_path(job.id)
            try:
                summary = await self.nodes.fetch_image(job.node, job.id, path + ".part")
            except XosError as e:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(path + ".part")
                return self.store.transition(job.id, back, f"checkpoint failed: {e.code}: {e.message}")
            try:
                size = os.path.getsize(path + ".part")
                done = self.store.transition(job.id, back, f"checkpointed on node {job.node} ({why}): "
                                                           f"{size / 2**20:.1f} MiB kept by the job manager, "
                                                           f"frozen {summary.get('frozen', 0):.2f} s")
            except IllegalTransition:  # cancelled meanwhile: the image is of nothing that runs
                os.unlink(path + ".part")
                raise
            os.replace(path + ".part", path)
            return done
        finally:
            self.busy.discard(job.id)

    async def periodic_checkpoints(self) -> None:
        """Checkpoint every running job that asks for it every `checkpoint_interval`, in the background."""
        now = time.monotonic()
        for job in self.store.ls(State.RUNNING):
            every = float(job.spec.get("checkpoint_interval") or 0)
            if not every or job.id in self.busy:
                continue
            due = self.checkpoint_due.setdefault(job.id, now + every)
            if now >= due:
                self.checkpoint_due[job.id] = now + every
                task = asyncio.create_task(self._periodic(job))
                self.tasks.add(task)
                task.add_done_callback(self.tasks.discard)

    async def _periodic(self, job: Job) -> None:
        try:
            await self.checkpoint(job, f"every {float(job.spec['checkpoint_interval']):g} s")
        except XosError as e:  # it ended or changed state meanwhile
            log.info("periodic checkpoint of job %s skipped: %s", job.id, e)

    async def migrate(self, job: Job, to: str | None, why: str = "", live: bool = False) -> Job:
        """Move a running job to node `to`, or to the best other node that matches it; on failure it runs on
        where it was (the node keeps it until the target confirms)."""
        job = self.store.may(job.id, "migrate")
        self._not_ending(job)
        if to is None:
            w = self.wants(job)
            others = [a for a in self.fresh_ads() if a.name != job.node]
            found = self.matchmaker.matches(w, others)
            if not found:
                raise NoMatch(f"no other node can take job {job.id}: {self.matchmaker.why_not(w, others)}")
            to = found[0].node
        if to not in self.nodes.urls or to == job.node:
            raise InvalidInput(f"cannot migrate job {job.id} to {to!r}: name another node of this grid", field="to")
        self.store.transition(job.id, State.MIGRATING, f"{why}: migrating to node {to}" if why else
                              f"migrating to node {to}")
        try:
            before = await self.nodes.workspace(job.node, job.id)
            await self.nodes.call("POST", job.node, f"/v1/peer/workspaces/{ws_name(job.id)}/migrate",
                                  {"to": to, "live": live})
        except XosError as e:
            return self.store.transition(job.id, State.RUNNING, f"migration to {to} failed, still on {job.node}: "
                                                                f"{e.code}: {e.message}")
        self.account(job, before)  # its part at the source, at the source's price; the target counts afresh
        self.last_usage.pop(job.id, None)
        self.wake.set()
        return self.store.transition(job.id, State.RUNNING, f"migrated from node {job.node} to node {to}", node=to)


REFUSAL_MEMORY = 60.0  # seconds a node that refused a job is not offered that job again


def wants_of(spec: JobSpec, vo: str, owner: str) -> Wants:
    """A job's wants with who submits it; a checkpointable job only where checkpoints can be taken."""
    w = spec.wants()
    req = f"({w.requirements}) && TARGET.HasCheckpoint =?= true" if spec.checkpointable else w.requirements
    return Wants(req, w.rank, (*w.attrs, ("VO", vo), ("Owner", owner)))

