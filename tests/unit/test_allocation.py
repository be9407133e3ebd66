"""Allocations and admission control."""

import pytest

from xos.allocation import Allocation, Capacity
from xos.errors import InvalidInput, OverCapacity

CAP = Capacity(cpu=2.0, memory=1 << 30, bandwidth=100_000_000)


def test_parse_keeps_unchanged_fields():
    base = Allocation(cpu=0.5, memory=64 << 20, pids=16, egress=20_000_000, ingress=30_000_000)
    new = Allocation.parse({"cpu": "0.25"}, base=base)
    assert new == Allocation(cpu=0.25, memory=64 << 20, pids=16, egress=20_000_000, ingress=30_000_000)


def test_unknown_field_refused():
    with pytest.raises(InvalidInput, match="bogus"):
        Allocation.parse({"bogus": 1})


def test_tiny_memory_refused():
    with pytest.raises(InvalidInput, match="memory"):
        Allocation.parse({"memory": "1K"})


def test_admission_names_every_shortage():
    others = [Allocation(cpu=1.5, memory=512 << 20, egress=90_000_000, ingress=10_000_000)]
    with pytest.raises(OverCapacity) as e:
        CAP.admit(Allocation(cpu=1, memory=768 << 20, egress=20_000_000, ingress=10_000_000), others)
    short = e.value.detail["short"]
    assert [s.split(":")[0] for s in short] == ["cpu", "memory", "egress"]
    assert "0.5 of 2 free" in short[0]


def test_admission_fits_exactly():
    CAP.admit(Allocation(cpu=1, memory=512 << 20, egress=50_000_000, ingress=50_000_000),
              [Allocation(cpu=1, memory=512 << 20, egress=50_000_000, ingress=50_000_000)])
