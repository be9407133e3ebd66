"""An OSD's heartbeat reports the files it read (the MRC drops replicas unread for long): hostile until
checked. A flood of made-up file ids fills only that OSD's own table, and a bounded one; what is not a
file id with a finite time is not taken; another OSD's reports are untouched."""

from __future__ import annotations

import time

from xos.fs.mrc.replicas import READS_KEPT, ReplicaManager


def test_an_osds_flood_of_read_reports_stays_bounded_and_its_own() -> None:
    r = ReplicaManager(None, b"", 60.0)  # type: ignore[arg-type]  # reports need no catalogue
    now = time.time()
    r.seen("osd-honest", {"ab" * 16: now})
    for burst in range(5):  # five heartbeats of made-up ids, each as many as one may carry
        r.seen("osd-evil", {f"{burst:02x}{i:030x}": now + burst for i in range(READS_KEPT)})
    assert len(r.last_read["osd-evil"]) <= READS_KEPT
    assert r.last_read["osd-honest"] == {"ab" * 16: now}
    kept = r.last_read["osd-evil"].values()
    assert min(kept) == now + 4  # the newest reports are the ones kept


def test_what_is_not_a_file_id_with_a_finite_time_is_not_taken() -> None:
    r = ReplicaManager(None, b"", 60.0)  # type: ignore[arg-type]
    good = "0123456789abcdef"
    r.seen("osd0", {good: 5.0, "../../etc": 1.0, "AB" * 8: 1.0, "x" * 10_000: 1.0, "cd" * 8: float("nan"),
                    "ef" * 8: float("inf"), "12" * 8: True, "34" * 8: "yesterday"})
    assert r.last_read == {"osd0": {good: 5.0}}
