"""Constants and small helpers the grid tests share."""

from __future__ import annotations

from typing import Any

from xos.errors import XosError

PORT = 7101  # the VO service's TCP port in the grid tests
POOL = (30000, 30999)  # the UID range of the test VO's leases


def fresh_nodes(s: Any) -> int:
    """How many nodes' ads the job manager of Session `s` holds fresh (0 while it does not answer)."""
    try:
        return len([n for n in s.run(s.jm.nodes()) if n["fresh"]])
    except XosError:
        return 0
