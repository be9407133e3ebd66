"""A random-operation model of one file on a grid mount (after fsx): writes (runs of small ones too, as a
log is written), reads (small ones of what was written lately too), truncates up and down, fallocate,
copy_file_range, mmap reads and writes through several descriptors opened and closed while the file stays
open, every read checked against the model, and at every close the whole file read through a second
mount (close-to-open).

The seed is printed; XOS_FSX_SEED replays one, XOS_FSX_OPS sets the number of operations per volume
(`bench/fsx.py` runs millions)."""

from __future__ import annotations

import mmap
import os
import random

import pytest

from xos.testing.fsgrid import FsGrid, fs_grid

MAX_OFFSET = 8 << 20
OPS = int(os.environ.get("XOS_FSX_OPS", "10000"))  # per volume: two volumes make 20,000 a run
PAGE = mmap.PAGESIZE


@pytest.fixture(scope="module")
def grid():
    # The mounts' credential outlives the run: 200,000 operations per volume take an hour on these VMs, and a
    # mount whose credential ran out is refused (EACCES), as it should be.
    with fs_grid({"one": {"replicas": 1}, "two": {"replicas": 2}}, osds=2, clients=2,
                 cred_ttl=max(3600, OPS // 10)) as g:
        yield g


class Model:
    """The file as it must read, and the operations applied to the mount and to it alike."""

    def __init__(self, path: str, other: str, rng: random.Random) -> None:
        self.path, self.other, self.rng = path, other, rng
        self.data = bytearray()
        self.fds: list[int] = []
        self.log: list[tuple[object, ...]] = []
        self.written: list[tuple[int, int]] = []  # the last few writes' offsets and lengths
        self.src = path + ".src"  # copy_file_range's source, on the same mount
        with open(self.src, "wb") as f:
            f.write(bytes(rng.randrange(256) for _ in range(4096)) * 256)
        with open(self.src, "rb") as f:
            self.src_data = f.read()
        self.src_fd = os.open(self.src, os.O_RDONLY)
        self.reopen()

    def reopen(self) -> None:
        flags = os.O_RDWR | (os.O_CREAT if not self.fds else 0)
        self.fds = [os.open(self.path, flags, 0o644) for _ in range(self.rng.randint(1, 3))]

    def close_all(self) -> None:
        for fd in self.fds:
            os.close(fd)
        self.fds = []

    def fail(self, what: str) -> None:
        pytest.fail(f"{what}; last operations: {self.log[-6:]}")

    def _grow(self, end: int) -> None:
        if end > len(self.data):
            self.data.extend(bytes(end - len(self.data)))

    def step(self) -> None:
        r, fd = self.rng.random(), self.rng.choice(self.fds)
        if r < 0.07:  # a run of small writes one after another, as a log is written
            off, n, k = self.rng.randrange(MAX_OFFSET), self.rng.choice([24, 4120, 8192]), self.rng.randint(2, 80)
            self.log.append(("pwrite-run", off, n, k))
            self.written = (self.written + [(off, n * k)])[-4:]
            for i in range(k):
                data = self.rng.randbytes(n)
                assert os.pwrite(fd, data, off + i * n) == n
                self._grow(off + (i + 1) * n)
                self.data[off + i * n:off + (i + 1) * n] = data
        elif r < 0.35:
            off = self.rng.randrange(MAX_OFFSET)
            n = self.rng.choice([1, 17, 4096, 65536, self.rng.randrange(1, 1 << 20)])
            data = self.rng.randbytes(n)
            self.log.append(("pwrite", off, n))
            self.written = (self.written + [(off, n)])[-4:]
            assert os.pwrite(fd, data, off) == n
            self._grow(off + n)
            self.data[off:off + n] = data
        elif r < 0.43:
            size = self.rng.randrange(MAX_OFFSET)
            self.log.append(("ftruncate", size))
            os.ftruncate(fd, size)
            del self.data[size:]
            self._grow(size)
        elif r < 0.47:
            off, n = self.rng.randrange(MAX_OFFSET), self.rng.randrange(1, 1 << 20)
            self.log.append(("fallocate", off, n))
            os.posix_fallocate(fd, off, n)
            self._grow(off + n)
        elif r < 0.52:
            soff, off = self.rng.randrange(len(self.src_data)), self.rng.randrange(MAX_OFFSET)
            n = self.rng.randrange(1, len(self.src_data) - soff + 1)
            self.log.append(("copy_file_range", soff, off, n))
            done = 0
            while done < n:
                got = os.copy_file_range(self.src_fd, fd, n - done, soff + done, off + done)
                assert got > 0
                done += got
            self._grow(off + n)
            self.data[off:off + n] = self.src_data[soff:soff + n]
        elif r < 0.58 and self.data:
            self._mmap(fd, write=self.rng.random() < 0.5)
        elif r < 0.60:  # another descriptor, the file open throughout (an open drops the kernel's cached pages)
            self.log.append(("reopen-one",))
            self.fds.append(os.open(self.path, os.O_RDWR))
            if len(self.fds) > 3:
                victim = next(f for f in self.fds if f != fd)
                self.fds.remove(victim)
                os.close(victim)
        else:
            off, n = self.rng.randrange(MAX_OFFSET), self.rng.randrange(1, 1 << 20)
            if self.written and self.rng.random() < 0.5:  # a small read of what was written lately
                woff, wn = self.rng.choice(self.written)
                off, n = woff + self.rng.randrange(-100, wn + 100), self.rng.choice([1, 17, 4096, 5000])
                off = max(0, off)
            self.log.append(("pread", off, n))
            got = os.pread(fd, n, off)
            want = bytes(self.data[off:off + n])
            if got != want:
                at = next((i for i in range(min(len(got), len(want))) if got[i] != want[i]), min(len(got), len(want)))
                self.fail(f"pread({off}, {n}) differs at byte {off + at} (read {len(got)}, expected {len(want)})")
        size = os.fstat(fd).st_size
        if size != len(self.data):
            self.fail(f"size {size}, expected {len(self.data)}")

    def _mmap(self, fd: int, write: bool) -> None:
        start = self.rng.randrange(len(self.data)) // PAGE * PAGE
        n = min(self.rng.randrange(1, 1 << 20), len(self.data) - start)
        self.log.append(("mmap-write" if write else "mmap-read", start, n))
        with mmap.mmap(fd, n, offset=start) as m:
            if write:
                at = self.rng.randrange(n)
                data = self.rng.randbytes(min(n - at, self.rng.randrange(1, 65536)))
                m[at:at + len(data)] = data
                m.flush()
                self.data[start + at:start + at + len(data)] = data
            elif m[:] != bytes(self.data[start:start + n]):
                self.fail(f"mmap read of {n} at {start} differs")

    def check_other_mount(self) -> None:
        self.close_all()
        with open(self.other, "rb") as f:
            whole = f.read()
        if whole != bytes(self.data):
            at = next((i for i in range(min(len(whole), len(self.data))) if whole[i] != self.data[i]),
                      min(len(whole), len(self.data)))
            self.fail(f"the second mount reads {len(whole)} bytes after close, differing at {at} "
                      f"(expected {len(self.data)})")
        self.reopen()


@pytest.mark.parametrize("volume", ["one", "two"])
def test_random_operations_match_the_model(grid: FsGrid, volume: str) -> None:
    seed = int(os.environ.get("XOS_FSX_SEED") or random.randrange(1 << 32))
    print(f"fsx seed {seed} (XOS_FSX_SEED={seed} replays it)")
    a, b = grid.mount(0, volume), grid.mount(1, volume)
    try:
        rng = random.Random(seed)
        name = f"model-{seed}"
        m = Model(os.path.join(a, name), os.path.join(b, name), rng)
        for i in range(OPS):
            m.step()
            if rng.random() < 0.002 or i == OPS - 1:
                m.check_other_mount()
        m.close_all()
        os.close(m.src_fd)
    finally:
        grid.umount(a)
        grid.umount(b)


def test_tar_of_a_tree_just_copied_in(grid: FsGrid, tmp_path: object) -> None:
    """Attributes stay still when nothing writes: `cp -a` of part of Python's standard library into the
    mount, then tar reads it without `file changed as we read it`, and cp -a's times are kept."""
    import subprocess
    import sysconfig

    a = grid.mount(0, "one")
    try:
        lib = sysconfig.get_paths()["stdlib"]
        dest = os.path.join(a, "copied")
        os.mkdir(dest)
        for sub in ("json", "email", "xml"):
            cp = subprocess.run(["cp", "-a", os.path.join(lib, sub), dest], capture_output=True, text=True)
            assert cp.returncode == 0, cp.stderr
        src = os.path.join(lib, "json", "decoder.py")
        assert os.stat(os.path.join(dest, "json", "decoder.py")).st_mtime_ns // 1000 == os.stat(src).st_mtime_ns // 1000
        out = subprocess.run(["tar", "czf", os.path.join(str(tmp_path), "t.tgz"), "-C", dest, "."],
                             capture_output=True, text=True)
        assert out.returncode == 0 and "changed as we read it" not in out.stderr, out.stderr
    finally:
        grid.umount(a)
