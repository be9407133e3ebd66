"""A random-operation model of a directory's names on a grid mount: files made, written through descriptors
held open, closed, renamed, truncated and removed, the directory fsynced, time let pass so the mount's
cached attributes and listings run out, and every stat, read and listing checked against the model. Files
made here go to the MRC under the directory's lease in batches, with what was written to them: what a
program sees of a file must never depend on where its bytes are on their way.

The seed is printed; XOS_NAMES_SEED replays one, XOS_NAMES_OPS sets the number of operations."""

from __future__ import annotations

import errno
import os
import random
import time

import pytest

from xos.testing.fsgrid import FsGrid, fs_grid

OPS = int(os.environ.get("XOS_NAMES_OPS", "3000"))
NAMES = [f"n{i}" for i in range(24)]


@pytest.fixture(scope="module")
def grid():
    with fs_grid({"names": {"replicas": 1}}, osds=1, clients=2, cred_ttl=max(3600, OPS // 5)) as g:
        yield g


class Names:
    """The directory as it must look: name -> inode (a number of the model's), inode -> content, and the
    descriptors held open, each on an inode (a name removed while open keeps its inode for them)."""

    def __init__(self, d: str, other: str, rng: random.Random) -> None:
        self.d, self.other, self.rng = d, other, rng
        self.names: dict[str, int] = {}
        self.data: dict[int, bytearray] = {}
        self.fds: list[tuple[int, int]] = []
        self.next = 1
        self.log: list[tuple[object, ...]] = []
        self.dfd = os.open(d, os.O_RDONLY | os.O_DIRECTORY)

    def fail(self, what: str) -> None:
        if os.environ.get("XOS_NAMES_LOG"):
            with open(os.environ["XOS_NAMES_LOG"], "w") as f:
                f.write("\n".join(map(repr, self.log)))
        raise AssertionError(f"{what}\nlast operations: {self.log[-25:]}")

    def path(self, name: str) -> str:
        return os.path.join(self.d, name)

    def step(self) -> None:
        r = self.rng.random()
        name = self.rng.choice(NAMES)
        if r < 0.16:
            self.create(name)
        elif r < 0.40 and self.fds:
            self.write()
        elif r < 0.52 and self.fds:
            self.close(self.rng.randrange(len(self.fds)))
        elif r < 0.66:
            self.stat(name)
        elif r < 0.74:
            self.read(name)
        elif r < 0.79:
            self.unlink(name)
        elif r < 0.84:
            self.rename(name, self.rng.choice(NAMES))
        elif r < 0.87:
            self.truncate(name)
        elif r < 0.91:
            self.log.append(("fsync dir",))
            os.fsync(self.dfd)
        elif r < 0.95:
            self.listing()
        elif r < 0.962:
            pause = self.rng.choice((0.05, 0.3, 1.1))  # past the mount's attribute and listing TTL at times
            self.log.append(("pause", pause))
            time.sleep(pause)
        elif r < 0.977:
            self.other_mount(name)
        else:
            self.stat(name)

    def create(self, name: str) -> None:
        trunc = self.rng.random() < 0.5
        self.log.append(("open O_CREAT", name, "O_TRUNC" if trunc else ""))
        fd = os.open(self.path(name), os.O_RDWR | os.O_CREAT | (os.O_TRUNC if trunc else 0), 0o644)
        ino = self.names.get(name)
        if ino is None:
            ino = self.names[name] = self.next
            self.data[ino] = bytearray()
            self.next += 1
        elif trunc:
            del self.data[ino][:]
        self.fds.append((fd, ino))

    def write(self) -> None:
        fd, ino = self.rng.choice(self.fds)
        data = self.data[ino]
        off = self.rng.randrange(0, len(data) + 2000)
        chunk = os.urandom(self.rng.choice((1, 100, 3000, 70000)))  # past the inline limit at times
        self.log.append(("pwrite", ino, off, len(chunk)))
        if os.pwrite(fd, chunk, off) != len(chunk):
            self.fail("short write")
        if off > len(data):
            data.extend(bytes(off - len(data)))
        data[off:off + len(chunk)] = chunk

    def close(self, i: int) -> None:
        fd, ino = self.fds.pop(i)
        self.log.append(("close", ino))
        os.close(fd)
        if not any(i2 == ino for _, i2 in self.fds) and ino not in self.names.values():
            del self.data[ino]

    def stat(self, name: str) -> None:
        self.log.append(("stat", name))
        try:
            size = os.stat(self.path(name)).st_size
        except FileNotFoundError:
            if name in self.names:
                self.fail(f"stat {name}: missing")
            return
        if name not in self.names:
            self.fail(f"stat {name}: there, though removed")
        want = len(self.data[self.names[name]])
        if size != want:
            held = [os.fstat(fd).st_size for fd, i in self.fds if i == self.names[name]]
            self.fail(f"stat {name}: size {size}, written {want} (its descriptors held open here say {held})")

    def read(self, name: str) -> None:
        self.log.append(("read", name))
        try:
            with open(self.path(name), "rb") as f:
                got = f.read()
        except FileNotFoundError:
            if name in self.names:
                self.fail(f"read {name}: missing")
            return
        if name not in self.names:
            self.fail(f"read {name}: there, though removed")
        want = self.data[self.names[name]]
        if got != want:
            at = next((i for i, (x, y) in enumerate(zip(got, want, strict=False)) if x != y), min(len(got), len(want)))
            self.fail(f"read {name}: {len(got)} bytes, differing at {at} from the {len(want)} written")

    def unlink(self, name: str) -> None:
        self.log.append(("unlink", name))
        try:
            os.unlink(self.path(name))
        except FileNotFoundError:
            if name in self.names:
                self.fail(f"unlink {name}: missing")
            return
        ino = self.names.pop(name, None)
        if ino is None:
            self.fail(f"unlink {name}: there, though removed")
        if not any(i == ino for _, i in self.fds):
            del self.data[ino]

    def rename(self, old: str, new: str) -> None:
        self.log.append(("rename", old, new))
        try:
            os.rename(self.path(old), self.path(new))
        except FileNotFoundError:
            if old in self.names:
                self.fail(f"rename {old}: missing")
            return
        if old == new:
            return
        ino = self.names.pop(old)
        gone = self.names.get(new)
        self.names[new] = ino
        if gone is not None and not any(i == gone for _, i in self.fds):
            del self.data[gone]

    def truncate(self, name: str) -> None:
        size = self.rng.randrange(0, 5000)
        self.log.append(("truncate", name, size))
        try:
            os.truncate(self.path(name), size)
        except FileNotFoundError:
            if name in self.names:
                self.fail(f"truncate {name}: missing")
            return
        data = self.data[self.names[name]]
        del data[size:]
        data.extend(bytes(size - len(data)))

    def listing(self) -> None:
        self.log.append(("listdir",))
        got = sorted(n for n in os.listdir(self.d) if not n.startswith(".fuse_hidden"))
        if got != sorted(self.names):
            self.fail(f"listdir: {got}, the model has {sorted(self.names)}")

    def other_mount(self, name: str) -> None:
        """A file closed here reads whole on another mount (close-to-open); one open here is not looked at."""
        ino = self.names.get(name)
        if ino is None or any(i == ino for _, i in self.fds):
            return
        self.log.append(("read on the other mount", name))
        try:
            with open(os.path.join(self.other, name), "rb") as f:
                got = f.read()
        except OSError as e:
            self.fail(f"the other mount: {name}: {errno.errorcode.get(e.errno or 0)}")
        if got != self.data[ino]:
            self.fail(f"the other mount reads {len(got)} bytes of {name}, {len(self.data[ino])} written")

    def close_all(self) -> None:
        while self.fds:
            self.close(0)
        os.close(self.dfd)


def test_random_changes_of_names_match_the_model(grid: FsGrid) -> None:
    seed = int(os.environ.get("XOS_NAMES_SEED") or random.randrange(1 << 32))
    print(f"names seed {seed} (XOS_NAMES_SEED={seed} replays it)")
    a, b = grid.mount(0, "names"), grid.mount(1, "names")
    d = f"names-{seed}"
    os.mkdir(os.path.join(a, d))
    m = Names(os.path.join(a, d), os.path.join(b, d), random.Random(seed))
    try:
        for _ in range(OPS):
            m.step()
        m.close_all()
        for name in NAMES:
            m.stat(name)
            m.read(name)
    finally:
        for fd, _ in m.fds:
            os.close(fd)
        grid.umount(a)
        grid.umount(b)
