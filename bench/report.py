"""What every benchmark prints: percentiles and an aligned table."""

from __future__ import annotations

import json
import os
from typing import Any


def pct(values: list[float], p: float) -> float:
    """The p-th percentile (nearest rank)."""
    s = sorted(values)
    return s[min(len(s) - 1, max(0, round(p / 100 * len(s)) - 1))]


def table(rows: list[tuple[str, ...]]) -> list[str]:
    """Rows as aligned lines: the first column left, the others right, a rule under the header."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths, strict=True)))
             for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return lines


def write_json(path: str | None, results: dict[str, Any]) -> None:
    """Write the raw results where --out says, if it says."""
    if path:
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        with open(path, "w") as f:
            json.dump(results, f, indent=1)
