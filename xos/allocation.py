"""What a workspace may use, and what a node may hand out (admission control)."""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, replace
from typing import Any

from xos import units
from xos.errors import InvalidInput, OverCapacity

FIELDS = ("cpu", "memory", "pids", "egress", "ingress")


@dataclass(frozen=True)
class Allocation:
    """A workspace's limits: CPUs, memory bytes, pids, egress and ingress bit/s."""

    cpu: float = 1.0
    memory: int = 256 << 20
    pids: int = 512
    egress: int = 100_000_000
    ingress: int = 100_000_000

    @classmethod
    def parse(cls, values: dict[str, Any], base: Allocation | None = None) -> Allocation:
        """Build from user input (strings with units or numbers); unknown keys are refused."""
        unknown = set(values) - set(FIELDS)
        if unknown:
            raise InvalidInput(f"unknown allocation field(s): {', '.join(sorted(unknown))}",
                               fields=sorted(unknown))
        changes: dict[str, Any] = {}
        for key, raw in values.items():
            if raw is None:
                continue
            if key == "cpu":
                changes[key] = units.parse_cpus(raw)
            elif key == "memory":
                mem = units.parse_size(raw)
                if mem < 4 << 20:
                    raise InvalidInput(f"memory {raw!r} is below the 4M a workspace needs", field="memory")
                changes[key] = mem
            elif key == "pids":
                changes[key] = units.parse_count(raw, "pids limit")
            else:
                changes[key] = units.parse_rate(raw)
        return replace(base or cls(), **changes)

    def to_json(self) -> dict[str, Any]:
        """Plain numbers (bytes, bit/s)."""
        return asdict(self)

    def describe(self) -> str:
        """One line for people."""
        return (f"cpu={self.cpu:g} memory={units.format_size(self.memory)} pids={self.pids} "
                f"egress={units.format_rate(self.egress)} ingress={units.format_rate(self.ingress)}")


def _mem_total() -> int:
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no MemTotal in /proc/meminfo")


@dataclass(frozen=True)
class Capacity:
    """What a node may hand out in total."""

    cpu: float
    memory: int
    bandwidth: int  # per direction, bit/s

    @classmethod
    def of_machine(cls, bandwidth: int = 10_000_000_000) -> Capacity:
        """Defaults: every CPU, all memory, 10gbit per direction on the node bridge."""
        return cls(cpu=float(os.cpu_count() or 1), memory=_mem_total(), bandwidth=bandwidth)

    def admit(self, wanted: Allocation, others: list[Allocation]) -> None:
        """Raise OverCapacity naming what is short if `wanted` does not fit beside `others`."""
        short = []
        used_cpu = sum(a.cpu for a in others)
        used_mem = sum(a.memory for a in others)
        used_egress = sum(a.egress for a in others)
        used_ingress = sum(a.ingress for a in others)
        if used_cpu + wanted.cpu > self.cpu + 1e-9:
            short.append(f"cpu: {wanted.cpu:g} wanted, {max(self.cpu - used_cpu, 0):g} of {self.cpu:g} free")
        if used_mem + wanted.memory > self.memory:
            free = max(self.memory - used_mem, 0)
            short.append(f"memory: {units.format_size(wanted.memory)} wanted, "
                         f"{units.format_size(free)} of {units.format_size(self.memory)} free")
        for name, used, want in (("egress", used_egress, wanted.egress), ("ingress", used_ingress, wanted.ingress)):
            if used + want > self.bandwidth:
                free = max(self.bandwidth - used, 0)
                short.append(f"{name}: {units.format_rate(want)} wanted, "
                             f"{units.format_rate(free)} of {units.format_rate(self.bandwidth)} free")
        if short:
            raise OverCapacity("allocation does not fit on this node: " + "; ".join(short), short=short)

    def to_json(self) -> dict[str, Any]:
        """Plain numbers."""
        return asdict(self)
