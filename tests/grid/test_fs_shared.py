"""Three mounts on three client hosts in one directory at once: creating (O_EXCL), statting and removing,
with exclusive creates and close-to-open holding between them (leases taken in turns, not ping-ponged)."""

from __future__ import annotations

import collections
import concurrent.futures
import os

import pytest

from xos.fs.client.mount import ATTR_TTL
from xos.testing import wait_for
from xos.testing.fsgrid import FsGrid, fs_grid

FILES = 600  # per mount
RACED = 100  # names all three try to make with O_EXCL


@pytest.fixture(scope="module")
def grid():
    with fs_grid({"shared": {"replicas": 1}}, osds=2, clients=3) as g:
        yield g


def _work(mp: str, me: int) -> dict[str, list[str]]:
    d = os.path.join(mp, "one")
    won = []
    for k in range(FILES):
        name = f"m{me}-{k}"
        fd = os.open(os.path.join(d, name), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        try:
            os.write(fd, name.encode())
        finally:
            os.close(fd)
        if k % (FILES // RACED) == 0:  # now and then, a name the others try too
            race = f"race-{k // (FILES // RACED)}"
            try:
                fd = os.open(os.path.join(d, race), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            except FileExistsError:
                continue
            try:
                os.write(fd, f"won by {me}".encode())
            finally:
                os.close(fd)
            won.append(race)
    for k in range(FILES):
        assert os.stat(os.path.join(d, f"m{me}-{k}")).st_size == len(f"m{me}-{k}")
    return {"won": won}


def test_three_mounts_create_stat_and_remove_in_one_directory(grid: FsGrid) -> None:
    mps = [grid.mount(i, "shared") for i in range(3)]
    os.mkdir(os.path.join(mps[0], "one"))
    with concurrent.futures.ThreadPoolExecutor(3) as pool:
        results = list(pool.map(_work, mps, range(3)))
    # O_EXCL: every raced name was made by exactly one of them, and holds what its maker wrote
    wins = collections.Counter(name for r in results for name in r["won"])
    assert sorted(wins) == sorted(f"race-{i}" for i in range(RACED)) and set(wins.values()) == {1}, wins
    for me, r in enumerate(results):
        for race in r["won"]:
            with open(os.path.join(mps[(me + 1) % 3], "one", race), "rb") as f:
                assert f.read() == f"won by {me}".encode()
    # close-to-open: each mount sees every file the others closed, with its content
    want = {f"m{me}-{k}" for me in range(3) for k in range(FILES)} | {f"race-{i}" for i in range(RACED)}
    for i, mp in enumerate(mps):
        assert set(os.listdir(os.path.join(mp, "one"))) == want
        other = (i + 1) % 3
        for k in range(0, FILES, 37):
            with open(os.path.join(mp, "one", f"m{other}-{k}"), "rb") as f:
                assert f.read() == f"m{other}-{k}".encode()

    def remove(args: tuple[str, int]) -> None:
        mp, me = args
        for k in range(FILES):
            os.unlink(os.path.join(mp, "one", f"m{me}-{k}"))

    with concurrent.futures.ThreadPoolExecutor(3) as pool:
        list(pool.map(remove, [(mp, i) for i, mp in enumerate(mps)]))
    for i in range(RACED):
        os.unlink(os.path.join(mps[i % 3], "one", f"race-{i}"))
    for mp in mps:
        assert os.listdir(os.path.join(mp, "one")) == []
    os.rmdir(os.path.join(mps[2], "one"))
    # another mount's cached attributes of the directory itself run out within their TTL (as NFS's do)
    for mp in mps:
        wait_for(lambda mp=mp: not os.path.exists(os.path.join(mp, "one")), 3 * ATTR_TTL, "the rmdir to be seen")
