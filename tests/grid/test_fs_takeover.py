"""Two MRCs on one PostgreSQL catalogue, on two hosts: one active, one standing by. The active is killed
(SIGKILL) while a mount given both addresses creates and writes files: the standby takes over on its own,
the mount and the OSDs move to it, every file whose close returned is there with its bytes, and the killed
one started again stands by."""

from __future__ import annotations

import os
import signal
import threading

from xos.testing import wait_for
from xos.testing.fsgrid import FsGrid
from xos.testing.postgres import TestPostgres


def _log(grid: FsGrid, host: str) -> str:
    with open(os.path.join(grid.base, f"{host}.log")) as f:
        return f.read()


def test_the_standby_mrc_takes_over_a_killed_one_mid_storm() -> None:
    with TestPostgres() as pg, FsGrid(osds=2, clients=1, db=pg.url("mrc"), standby=True) as grid:
        grid.mkvol("ha", replicas=2)
        mp = grid.mount(0, "ha")
        os.mkdir(os.path.join(mp, "out"))
        written: list[int] = []
        failures: list[str] = []
        stop = threading.Event()

        def storm() -> None:
            i = 0
            while not stop.is_set():
                try:
                    with open(os.path.join(mp, "out", f"f{i}"), "wb") as f:
                        f.write(f"file {i}\n".encode() * (1 + i % 300))
                    written.append(i)
                except OSError as e:  # not acknowledged: its close did not return
                    failures.append(f"f{i}: {e}")
                i += 1

        writer = threading.Thread(target=storm)
        writer.start()
        try:
            wait_for(lambda: len(written) >= 200, 60, "files written through the first MRC")
            grid.mrc.procs[0].stop(signal.SIGKILL)  # type: ignore[union-attr]
            wait_for(lambda: "active mrc (epoch 2)" in _log(grid, "mrc1"), 30, "the standby to take over")
            took_over_at = len(written)  # files made under a lease went on meanwhile: more, past its term
            wait_for(lambda: len(written) >= took_over_at + 500, 60, "files written through the second MRC")
        finally:
            stop.set()
            writer.join(60)
        grid.start_mrc(0, standing_by=True)  # back: it stands by now
        c = grid.client("ha")
        try:
            names = set(c.listdir("/out"))
            missing = [i for i in written if f"f{i}" not in names]
            assert not missing, f"{len(missing)} of {len(written)} files missing, from f{missing[0]} on"
            for i in written:
                with c.open(f"/out/f{i}") as f:
                    assert f.read() == f"file {i}\n".encode() * (1 + i % 300), i
        finally:
            c.close()
        for i in written[::50]:  # and the mount sees them so
            with open(os.path.join(mp, "out", f"f{i}"), "rb") as f:
                assert f.read() == f"file {i}\n".encode() * (1 + i % 300)
        # Files past what the MRC keeps inline go to the OSDs, which beat to the new MRC now: written and read
        # back through the mount, and every OSD alive in the new MRC's eyes.
        big = os.urandom(3 << 20)
        with open(os.path.join(mp, "out", "big"), "wb") as f:
            f.write(big)
        with open(os.path.join(mp, "out", "big"), "rb") as f:
            assert f.read() == big
        wait_for(lambda: all(o["alive"] for o in grid.osd_list()), 30, "the OSDs to beat to the new MRC")
        assert len(failures) <= 2, failures
        bad = grid.unexpected_warnings(["not reachable", "does not answer", "standing by", "not-active",
                                        "no longer the active"])
        assert not bad, bad
