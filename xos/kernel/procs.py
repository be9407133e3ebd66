"""Processes as /proc shows them: when one started (which tells a reused pid apart) and who its parent is."""

from __future__ import annotations


def _stat_fields(pid: int) -> list[bytes] | None:
    """The fields of /proc/PID/stat after the command name (state first), or None if it is gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read()
    except OSError:
        return None
    return data[data.rindex(b")") + 2:].split()


def start_time(pid: int) -> int | None:
    """The process's start time in clock ticks since boot; None if it is gone or a zombie."""
    fields = _stat_fields(pid)
    return int(fields[19]) if fields and fields[0] != b"Z" else None


def parent(pid: int) -> int | None:
    """The process's parent pid; None if it is gone."""
    fields = _stat_fields(pid)
    return int(fields[1]) if fields else None
