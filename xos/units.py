"""Parsing of sizes (bytes), rates (bit/s) and CPU counts as users write them."""

from __future__ import annotations

import re

from xos.errors import BadRate, BadSize, UnknownUnit

_NUM = re.compile(r"^\s*([0-9]+(?:\.[0-9]+)?)\s*([A-Za-z/]*)\s*$")

# Sizes are binary, as in cgroup and ulimit usage: 64M is 64 MiB.
_SIZE_UNITS = {
    "": 1, "b": 1,
    "k": 1 << 10, "kb": 1 << 10, "kib": 1 << 10,
    "m": 1 << 20, "mb": 1 << 20, "mib": 1 << 20,
    "g": 1 << 30, "gb": 1 << 30, "gib": 1 << 30,
    "t": 1 << 40, "tb": 1 << 40, "tib": 1 << 40,
}

# Rates are decimal bits per second, as tc(8) writes them: 20mbit is 20,000,000 bit/s.
_RATE_UNITS = {
    "": 1, "bit": 1, "bps": 8,
    "k": 10**3, "kbit": 10**3, "kbps": 8 * 10**3,
    "m": 10**6, "mbit": 10**6, "mbps": 8 * 10**6,
    "g": 10**9, "gbit": 10**9, "gbps": 8 * 10**9,
    "kibit": 1 << 10, "mibit": 1 << 20, "gibit": 1 << 30,
}

MAX_SIZE = 1 << 62
MAX_RATE = 10**12


def parse_size(text: str | int) -> int:
    """Bytes from "64M", "1.5G", "4096"; BadSize or UnknownUnit otherwise."""
    if isinstance(text, bool):
        raise BadSize(f"size {text!r} is not a number of bytes", value=str(text))
    if isinstance(text, int):
        if text < 0 or text > MAX_SIZE:
            raise BadSize(f"size {text} is out of range", value=text)
        return text
    m = _NUM.match(str(text))
    if not m:
        raise BadSize(f"cannot read size {text!r}: expected a number with an optional unit (K, M, G, T)",
                      value=str(text))
    unit = m.group(2).lower()
    if unit not in _SIZE_UNITS:
        raise UnknownUnit(f"unknown size unit {m.group(2)!r} in {text!r}: use K, M, G or T", value=str(text))
    value = int(float(m.group(1)) * _SIZE_UNITS[unit])
    if value > MAX_SIZE:
        raise BadSize(f"size {text!r} is out of range", value=str(text))
    return value


def parse_rate(text: str | int) -> int:
    """Bits per second from "20mbit", "1gbit", "500kbit"; BadRate or UnknownUnit otherwise."""
    if isinstance(text, bool):
        raise BadRate(f"rate {text!r} is not a number of bit/s", value=str(text))
    if isinstance(text, int):
        if text <= 0 or text > MAX_RATE:
            raise BadRate(f"rate {text} is out of range (1 bit/s to 1tbit)", value=text)
        return text
    m = _NUM.match(str(text))
    if not m:
        raise BadRate(f"cannot read rate {text!r}: expected a number with a unit (kbit, mbit, gbit)",
                      value=str(text))
    unit = m.group(2).lower()
    if unit not in _RATE_UNITS:
        raise UnknownUnit(f"unknown rate unit {m.group(2)!r} in {text!r}: use kbit, mbit or gbit",
                          value=str(text))
    value = int(float(m.group(1)) * _RATE_UNITS[unit])
    if value <= 0 or value > MAX_RATE:
        raise BadRate(f"rate {text!r} is out of range (1 bit/s to 1tbit)", value=str(text))
    return value


def parse_cpus(text: str | float | int) -> float:
    """A CPU count such as 0.25 or 2; at least 0.01."""
    try:
        value = float(text)
    except (TypeError, ValueError):
        raise BadSize(f"cannot read CPU count {text!r}: expected a number such as 0.5 or 2",
                      value=str(text)) from None
    if not (value >= 0.01) or value > 4096:
        raise BadSize(f"CPU count {text!r} is out of range (0.01 to 4096)", value=str(text))
    return round(value, 4)


def parse_count(text: str | int, what: str) -> int:
    """A positive integer such as a pids limit."""
    try:
        value = int(str(text), 10)
    except ValueError:
        raise BadSize(f"cannot read {what} {text!r}: expected a whole number", value=str(text)) from None
    if value <= 0 or value > 4194304:
        raise BadSize(f"{what} {text!r} is out of range (1 to 4194304)", value=str(text))
    return value


_DURATION = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


def parse_duration(text: str | int | float) -> float:
    """Seconds from "500ms", "30s", "10m", "12h", "1d" or a plain number of seconds."""
    s = str(text).strip().lower()
    for suffix in sorted(_DURATION, key=len, reverse=True):
        if s.endswith(suffix):
            number, scale = s[: -len(suffix)], _DURATION[suffix]
            break
    else:
        number, scale = s, 1.0
    try:
        value = float(number) * scale
    except ValueError:
        raise BadSize(f"cannot read the duration {text!r}: expected e.g. 30s, 10m, 12h", value=str(text)) from None
    if not 0 <= value <= 365 * 86400 or value != value:
        raise BadSize(f"duration {text!r} is out of range (0 to 365d)", value=str(text))
    return value


SIZE_UNITS = (("G", 1 << 30), ("M", 1 << 20), ("K", 1 << 10))


def format_size(n: int) -> str:
    """A short human form of a byte count."""
    for unit, factor in SIZE_UNITS:
        if n >= factor and n % factor == 0:
            return f"{n // factor}{unit}"
    return str(n)


def human_size(n: int) -> str:
    """A measured byte count as people read it: 272814512 -> '260.2M' (format_size is exact, for sizes given)."""
    for unit, factor in SIZE_UNITS:
        if n >= factor:
            return f"{n / factor:.1f}{unit}"
    return str(n)


def format_rate(bps: int) -> str:
    """A short human form of a rate in bit/s, in tc's units."""
    for unit, factor in (("gbit", 10**9), ("mbit", 10**6), ("kbit", 10**3)):
        if bps >= factor and bps % factor == 0:
            return f"{bps // factor}{unit}"
    return f"{bps}bit"
