"""Cgroups: one interface (base), a v1/hybrid and a v2 implementation, detected at runtime."""

from __future__ import annotations

from xos.errors import MissingFeature
from xos.kernel.cgroup import v1, v2  # noqa: F401  (each registers itself)
from xos.kernel.cgroup.base import NEEDED, REGISTRY, Cgroup, Hierarchy, Mount, mounts, walk

__all__ = ["Cgroup", "Hierarchy", "Mount", "detect", "mounts", "walk"]


def detect(prefer: str = "auto") -> Hierarchy:
    """The hierarchy this machine offers: v2 when its unified mount has cpu, memory and pids."""
    found = mounts()
    if prefer != "auto":
        if prefer not in REGISTRY:
            raise MissingFeature(f"unknown cgroup hierarchy {prefer!r}: use auto, v1 or v2")
        return REGISTRY[prefer](found)
    for m in found:
        if m.version == 2 and all(c in m.controllers for c in NEEDED):
            return REGISTRY["v2"](found)
    return REGISTRY["v1"](found)
