"""What a daemon log's scan reports: warnings no test declared, and for one carrying an exception, where it
was raised and what it was (a check that failed in the demo says why without the log, which goes with it)."""

from __future__ import annotations

import io
import logging

from xos.log import JsonFormatter
from xos.testing import TestNode


def _log(fn: object) -> str:
    out = io.StringIO()
    h = logging.StreamHandler(out)
    h.setFormatter(JsonFormatter())
    lg = logging.getLogger("xos.test.scan")
    lg.addHandler(h)
    lg.propagate = False
    try:
        fn(lg)  # type: ignore[operator]
    finally:
        lg.removeHandler(h)
    return out.getvalue()


def test_an_exception_is_reported_with_its_type_message_and_place() -> None:
    def failing(lg: logging.Logger) -> None:
        try:
            {}["absent-key"]
        except KeyError:
            lg.exception("job manager pass failed")
        lg.warning("job 7 refused by node n1")
        lg.info("all well")

    bad = TestNode.scan_log(_log(failing), ["refused by node"])
    assert len(bad) == 1
    assert bad[0].startswith("job manager pass failed | File ")
    assert "test_log_scan.py" in bad[0] and bad[0].endswith("KeyError: 'absent-key'")


def test_a_warning_without_exception_is_its_message_alone() -> None:
    bad = TestNode.scan_log(_log(lambda lg: lg.warning("disk %s is slow", "vda")), [])
    assert bad == ["disk vda is slow"]
