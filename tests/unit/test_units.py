"""Sizes, rates and CPU counts as users write them."""

import pytest
from hypothesis import given
from hypothesis import strategies as st

from xos import units
from xos.errors import BadRate, BadSize, InvalidInput, UnknownUnit


@pytest.mark.parametrize("text,value", [
    ("64M", 64 << 20), ("1G", 1 << 30), ("1.5g", 3 << 29), ("4096", 4096), ("512KiB", 512 << 10), ("2 T", 2 << 40),
])
def test_sizes(text, value):
    assert units.parse_size(text) == value


@pytest.mark.parametrize("text,value", [
    ("20mbit", 20_000_000), ("1gbit", 10**9), ("500kbit", 500_000), ("1mbps", 8_000_000), ("123", 123),
])
def test_rates(text, value):
    assert units.parse_rate(text) == value


@pytest.mark.parametrize("text,exc", [
    ("-5M", BadSize), ("", BadSize), ("M", BadSize), ("12Q", UnknownUnit), ("1e9", BadSize), ("nan", BadSize),
])
def test_bad_sizes(text, exc):
    with pytest.raises(exc) as e:
        units.parse_size(text)
    assert isinstance(e.value, InvalidInput) and e.value.code in ("bad-size", "unknown-unit")


@pytest.mark.parametrize("text,exc", [
    ("-1mbit", BadRate), ("0", BadRate), ("10parsecs", UnknownUnit), ("fast", BadRate), ("9999gbit", BadRate),
])
def test_bad_rates(text, exc):
    with pytest.raises(exc):
        units.parse_rate(text)


@pytest.mark.parametrize("text", ["0", "-1", "abc", "0.001", "inf", "nan", "5000"])
def test_bad_cpus(text):
    with pytest.raises(BadSize):
        units.parse_cpus(text)


@given(st.integers(min_value=0, max_value=1 << 50))
def test_size_round_trip(n):
    assert units.parse_size(units.format_size(n)) == n


@given(st.integers(min_value=1, max_value=10**12))
def test_rate_round_trip(n):
    assert units.parse_rate(units.format_rate(n)) == n


@given(st.text(max_size=20))
def test_garbage_never_crashes(text):
    for parse in (units.parse_size, units.parse_rate, units.parse_cpus):
        try:
            parse(text)
        except InvalidInput:
            pass


@pytest.mark.parametrize("n,shown", [(0, "0"), (1023, "1023"), (1024, "1.0K"), (272814512, "260.2M"),
                                     (3 << 30, "3.0G")])
def test_measured_sizes_are_shown_rounded(n, shown):
    assert units.human_size(n) == shown
