"""Capabilities: every sealed field matters, nothing unsealed gets in, and an OSD's key seals for that OSD
only."""

from __future__ import annotations

import time
from dataclasses import replace

import pytest
from hypothesis import given
from hypothesis import strategies as st

from xos.errors import CapabilityInvalid, StaleCapability, Unavailable
from xos.fs import capability
from xos.fs.capability import Capability, Verifier

KEY = b"k" * 32
OSDS = ["osd0", "osd1"]


def cap(**kw):
    base = Capability("ab" * 16, "rw", time.time() + 60, 3, 7, "alice@vo-a")
    return replace(base, **kw)


def test_round_trip_for_the_mrc_and_each_osd_and_cache():
    token = capability.sign(KEY, cap(), OSDS)
    assert capability.verify(KEY, token) == cap(exp=capability.verify(KEY, token).exp)
    for osd in OSDS:
        assert capability.verify_seal(osd, capability.osd_key(KEY, osd), token).fid == "ab" * 16
    v = Verifier("osd1")
    with pytest.raises(Unavailable, match="not heard from its MRC"):
        v.check(token)
    assert v.rekey(capability.osd_key(KEY, "osd1")) and not v.rekey(capability.osd_key(KEY, "osd1"))
    assert v.check(token) is v.check(token)


@pytest.mark.parametrize("field,value", [("fid", "cd" * 16), ("mode", "r"), ("epoch", 4), ("xver", 8),
                                         ("client", "bob@vo-a"), ("osds", ("https://evil",))])
def test_changing_any_field_breaks_every_seal(field, value):
    token = capability.sign(KEY, cap(), OSDS)
    _, mac, seals = token.split(".")
    other_body = capability.sign(KEY, cap(**{field: value}), OSDS).split(".")[0]
    with pytest.raises(CapabilityInvalid, match="signature"):
        capability.verify(KEY, f"{other_body}.{mac}.{seals}")
    for osd in OSDS:
        with pytest.raises(CapabilityInvalid, match="signature"):
            capability.verify_seal(osd, capability.osd_key(KEY, osd), f"{other_body}.{mac}.{seals}")


def test_an_osds_key_seals_for_that_osd_only():
    """What one OSD knows (its own key) makes no capability another OSD, or the MRC, takes."""
    mine = capability.osd_key(KEY, "osd0")
    forged = capability.sign(mine, cap(), ["osd1"])  # the seal osd1 would check, made with osd0's key
    with pytest.raises(CapabilityInvalid, match="signature"):
        capability.verify_seal("osd1", capability.osd_key(KEY, "osd1"), forged)
    with pytest.raises(CapabilityInvalid, match="signature"):
        capability.verify(KEY, forged)
    assert capability.osd_key(KEY, "osd0") != capability.osd_key(KEY, "osd1")


def test_a_capability_without_a_seal_for_this_osd_is_stale():
    token = capability.sign(KEY, cap(), ["osd0"])
    with pytest.raises(StaleCapability, match="no seal for OSD osd1"):
        capability.verify_seal("osd1", capability.osd_key(KEY, "osd1"), token)


def test_expired_and_wrong_key():
    with pytest.raises(CapabilityInvalid, match="expired"):
        capability.verify(KEY, capability.sign(KEY, cap(exp=time.time() - 1)))
    with pytest.raises(CapabilityInvalid, match="signature"):
        capability.verify(KEY, capability.sign(b"x" * 32, cap()))


@given(st.text(max_size=300))
def test_garbage_is_refused_cleanly(text):
    with pytest.raises(CapabilityInvalid):
        capability.verify(KEY, text)
    with pytest.raises((CapabilityInvalid, StaleCapability)):
        capability.verify_seal("osd0", KEY, text)
