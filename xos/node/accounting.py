"""A node's accounting and monitoring: every workspace's counters swept into its usage record, what the node
has and has handed out, its ClassAd for job managers, and its Prometheus metrics."""

from __future__ import annotations

import asyncio
import logging
import os
import platform
from typing import Any

from xos._native.cgstat import read_many
from xos.checkpoint import criu as criu_mod
from xos.identity import credential
from xos.kernel import netlink as rtnl_raw
from xos.node.config import NodeConfig
from xos.node.store import UsageRecord, WorkspaceState
from xos.node.workspace import NodeContext, Workspace
from xos.paths import trust_dir

log = logging.getLogger(__name__)

PERSIST_EVERY = 6  # sweeps between writes of the usage records (30 s at the default interval)


class Accounting:
    """The part of the node service that measures and advertises."""

    config: NodeConfig
    ctx: NodeContext | None
    workspaces: dict[str, Workspace]
    _sweeps: int
    _dirty: dict[str, UsageRecord]

    def _ctx(self) -> NodeContext:
        raise NotImplementedError  # the service's

    def sample(self, persist: bool | None = None) -> None:
        """Sweep every workspace's counters into its usage record; persist the changed records every
        PERSIST_EVERY sweeps (or now, or never, as `persist` says), in one transaction.

        Persisting less often loses nothing: the kernel's counters are cumulative and outlive the
        daemon, and a destroyed workspace's final record is written at once."""
        if self.ctx is None:
            return
        self._sweeps += 1
        if self.workspaces:
            self._sweep()
        if self._dirty and (persist or (persist is None and self._sweeps % PERSIST_EVERY == 0)):
            self.ctx.store.save_usage(*self._dirty.values())
            self._dirty.clear()

    def _sweep(self) -> None:
        assert self.ctx is not None
        live = [ws for ws in self.workspaces.values()
                if ws.rec.state in (WorkspaceState.RUNNING, WorkspaceState.FROZEN)]
        try:
            values = read_many([ws.cgroup.counters() for ws in live])
        except OSError as e:
            log.warning("cannot sample workspaces: %s", e)
            return
        net = rtnl_raw.link_counters(self.ctx.raw)
        for ws, v in zip(live, values, strict=True):
            if ws.take(v, net.get(ws.host_index)):
                self._dirty[ws.rec.id] = ws.usage_rec

    async def _sample_loop(self) -> None:
        while True:
            await asyncio.sleep(self.config.sample_interval)
            try:
                self.sample()
            except Exception:
                log.exception("sampling failed")

    def node_info(self) -> dict[str, Any]:
        """What the node is and what it has handed out."""
        ctx = self._ctx()
        allocs = [w.rec.alloc for w in self.workspaces.values()]
        return {
            "name": self.config.name, "cgroup": ctx.hierarchy.name, "subnet": self.config.subnet,
            "bridge": self.config.bridge, "capacity": self.config.capacity.to_json(),
            "allocated": {"cpu": round(sum(a.cpu for a in allocs), 4), "memory": sum(a.memory for a in allocs),
                          "egress": sum(a.egress for a in allocs), "ingress": sum(a.ingress for a in allocs)},
            "workspaces": len(self.workspaces), "checkpoint": checkpoint_ad(),
        }

    def classad(self) -> dict[str, Any]:
        """The node's advertisement in HTCondor's attribute names: static (what it is) and dynamic (what is
        free now). Cpus and Memory are what a job can still get, as for a partitionable slot."""
        info = self.node_info()
        cap, used = info["capacity"], info["allocated"]
        ckpt = info["checkpoint"]
        vos = credential.TrustStore(trust_dir(self.config.home)).vos()
        arch = {"x86_64": "X86_64", "aarch64": "aarch64"}.get(platform.machine(), platform.machine())
        return {
            "Name": self.config.name, "Machine": self.config.name, "Arch": arch, "OpSys": "LINUX",
            "KernelVersion": platform.release(), "Site": self.config.site, "Price": self.config.price,
            "TotalCpus": cap["cpu"], "TotalMemory": cap["memory"] >> 20,
            "Cpus": round(max(cap["cpu"] - used["cpu"], 0.0), 4),
            "Memory": max(cap["memory"] - used["memory"], 0) >> 20,
            # Held beyond what is offered (the owner took capacity back): what a job manager must move away.
            "OverCpus": round(max(used["cpu"] - cap["cpu"], 0.0), 4),
            "OverMemory": -(-max(used["memory"] - cap["memory"], 0) >> 20),
            "LoadAvg": round(os.getloadavg()[0], 2), "Workspaces": info["workspaces"], "AllowedVOs": vos,
            "HasCheckpoint": bool(ckpt["available"]), "HasLiveMigration": bool(ckpt["live_migration"]),
            "CriuVersion": ckpt.get("criu") or "", "CGroup": info["cgroup"],
            # Local admission in the ad itself: only VOs this node trusts, only what fits.
            "Requirements": "member(TARGET.VO, MY.AllowedVOs) && TARGET.RequestCpus <= MY.Cpus && "
                            "TARGET.RequestMemory <= MY.Memory",
        }

    def metrics(self) -> str:
        """Prometheus text exposition of workspaces, allocations and usage."""
        self.sample()
        info = self.node_info()
        lines: list[str] = []

        def metric(name: str, kind: str, helptext: str, rows: list[tuple[dict[str, str], float]]) -> None:
            lines.append(f"# HELP {name} {helptext}")
            lines.append(f"# TYPE {name} {kind}")
            for labels, value in rows:
                lab = ",".join(f'{k}="{_escape(v)}"' for k, v in labels.items())
                lines.append(f"{name}{{{lab}}} {value}" if lab else f"{name} {value}")

        node = {"node": self.config.name}
        metric("xos_workspaces", "gauge", "Live workspaces on this node.", [(node, info["workspaces"])])
        metric("xos_capacity", "gauge", "What the node may hand out.",
               [({**node, "resource": k}, float(v)) for k, v in info["capacity"].items()])
        metric("xos_allocated", "gauge", "What the node has handed out.",
               [({**node, "resource": k}, float(v)) for k, v in info["allocated"].items()])
        per_ws: dict[str, list[tuple[dict[str, str], float]]] = {}
        for ws in self.workspaces.values():
            lab = {**node, "workspace": ws.rec.name, "id": ws.rec.id}
            u = ws.usage_rec
            for key, value in (("xos_workspace_cpu_seconds_total", u.cpu_ns / 1e9),
                               ("xos_workspace_memory_peak_bytes", u.memory_peak),
                               ("xos_workspace_bytes_in_total", u.bytes_in),
                               ("xos_workspace_bytes_out_total", u.bytes_out),
                               ("xos_workspace_oom_kills_total", u.oom_kills)):
                per_ws.setdefault(key, []).append((lab, float(value)))
            for res, value in ws.rec.alloc.to_json().items():
                per_ws.setdefault("xos_workspace_allocation", []).append(({**lab, "resource": res}, float(value)))
        kinds = {"xos_workspace_memory_peak_bytes": "gauge", "xos_workspace_allocation": "gauge"}
        for key, rows in per_ws.items():
            metric(key, kinds.get(key, "counter"), key.replace("xos_workspace_", "workspace ").replace("_", " "), rows)
        return "\n".join(lines) + "\n"


def _escape(v: str) -> str:
    """A Prometheus label value, escaped."""
    return v.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def checkpoint_ad() -> dict[str, Any]:
    """Whether this node checkpoints and restores, and with which CRIU: a job manager picks targets by it."""
    c = criu_mod.find()
    out: dict[str, Any] = {"available": c.ok, "criu": c.version, "kernel": platform.release(),
                           "arch": platform.machine(), "live_migration": c.ok and bool(c.live),
                           "live_mode": c.live if c.ok else ""}
    if not c.ok:
        out["reason"] = c.reason
    return out
