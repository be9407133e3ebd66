"""A random-operation model of a directory's names on a grid mount: files made, written through descriptors
held open, closed, renamed, linked, truncated and removed, there and in subdirectories that are made and
removed, the directory fsynced, time let pass so the mount's
cached attributes and listings run out, names changed from a second mount (which recalls the first one's
leases), and every stat, read and listing checked against the model. Files
made here go to the MRC under the directory's lease in batches, with what was written to them: what a
program sees of a file must never depend on where its bytes are on their way.

The seed is printed; XOS_NAMES_SEED replays one, XOS_NAMES_OPS sets the number of operations."""

from __future__ import annotations

import errno
import os
import random
import time
from collections.abc import Callable

import pytest

from xos.fs.client.mount import ATTR_TTL
from xos.testing.fsgrid import FsGrid, fs_grid

OPS = int(os.environ.get("XOS_NAMES_OPS", "3000"))
NAMES = [f"n{i}" for i in range(16)]
SUBDIRS = ("s0", "s1")
PAST_TTL = ATTR_TTL + 0.2  # what a mount cached (kernel entries and attributes, listings) has run out


@pytest.fixture(scope="module")
def grid():
    with fs_grid({"names": {"replicas": 1}}, osds=1, clients=2, cred_ttl=max(3600, OPS // 5)) as g:
        yield g


class Names:
    """The directory as it must look: a name (in it or in one of two subdirectories, which come and go) ->
    an inode (a number of the model's), an inode -> its content, and the descriptors held open, each on an
    inode (a file whose names are all gone keeps its inode for them)."""

    def __init__(self, d: str, other: str, rng: random.Random) -> None:
        self.d, self.other, self.rng = d, other, rng
        self.names: dict[str, int] = {}
        self.data: dict[int, bytearray] = {}
        self.fds: list[tuple[int, int]] = []
        self.dirs: set[str] = set()
        self.hidden: dict[int, str] = {}  # inode open here whose last name went -> the directory it was in
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

    def pick(self) -> str:
        return self.rng.choice(("", "", "s0/", "s1/")) + self.rng.choice(NAMES)

    def placed(self, name: str) -> bool:
        """Whether the directory a name would be in is there."""
        parent = os.path.dirname(name)
        return not parent or parent in self.dirs

    def links(self, ino: int) -> int:
        return sum(1 for i in self.names.values() if i == ino)

    def open_on(self, ino: int) -> bool:
        return any(i == ino for _, i in self.fds)

    def gone(self, ino: int, name: str) -> None:
        """Name `name` of inode `ino` was removed: the inode goes with its last name unless open here."""
        if self.links(ino):
            return
        if self.open_on(ino):
            self.hidden[ino] = os.path.dirname(name)
        else:
            del self.data[ino]

    def expect(self, what: tuple[object, ...], fn: Callable[[], object], err: int) -> bool:
        """Run `fn`; whether it did what the model says (err 0) or failed with `err`, as the model says."""
        self.log.append(what)
        try:
            fn()
        except OSError as e:
            if e.errno != err:
                said = errno.errorcode.get(err, "done")
                self.fail(f"{what}: {errno.errorcode.get(e.errno or 0)}, the model says {said}")
            return False
        if err:
            self.fail(f"{what}: done, the model says {errno.errorcode[err]}")
        return True

    def step(self) -> None:
        r = self.rng.random()
        name = self.pick()
        if r < 0.15:
            self.create(name)
        elif r < 0.37 and self.fds:
            self.write()
        elif r < 0.48 and self.fds:
            self.close(self.rng.randrange(len(self.fds)))
        elif r < 0.61:
            self.stat(name)
        elif r < 0.68:
            self.read(name)
        elif r < 0.73:
            self.unlink(name)
        elif r < 0.78:
            self.rename(name, self.pick())
        elif r < 0.81:
            self.link(name, self.pick())
        elif r < 0.83:
            self.truncate(name)
        elif r < 0.86:
            self.mkdir(self.rng.choice(SUBDIRS))
        elif r < 0.88:
            self.rmdir(self.rng.choice(SUBDIRS))
        elif r < 0.91:
            self.log.append(("fsync dir",))
            os.fsync(self.dfd)
        elif r < 0.95:
            self.listing()
        elif r < 0.962:
            pause = self.rng.choice((0.05, 0.3, ATTR_TTL + 0.1))  # past the mount's attribute and listing TTL at times
            self.log.append(("pause", pause))
            time.sleep(pause)
        elif r < 0.977:
            self.other_mount(name)
        elif r < 0.9795:
            self.other_change(name)
        else:
            self.stat(name)

    def create(self, name: str) -> None:
        trunc = self.rng.random() < 0.5
        flags = os.O_RDWR | os.O_CREAT | (os.O_TRUNC if trunc else 0)
        fd = -1

        def do() -> None:
            nonlocal fd
            fd = os.open(self.path(name), flags, 0o644)

        if not self.expect(("open O_CREAT", name, "O_TRUNC" if trunc else ""), do,
                           0 if self.placed(name) else errno.ENOENT):
            return
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
        try:
            n = os.pwrite(fd, chunk, off)
        except OSError as e:
            self.fail(f"pwrite to inode {ino}: {errno.errorcode.get(e.errno or 0)}")
        if n != len(chunk):
            self.fail("short write")
        if off > len(data):
            data.extend(bytes(off - len(data)))
        data[off:off + len(chunk)] = chunk

    def close(self, i: int) -> None:
        fd, ino = self.fds.pop(i)
        self.log.append(("close", ino))
        os.close(fd)
        if not self.open_on(ino) and not self.links(ino):
            del self.data[ino]
            self.hidden.pop(ino, None)

    def stat(self, name: str) -> None:
        st: list[os.stat_result] = []
        if not self.expect(("stat", name), lambda: st.append(os.stat(self.path(name))),
                           0 if name in self.names else errno.ENOENT):
            return
        ino = self.names[name]
        want = len(self.data[ino])
        if st[0].st_size != want:
            held = [os.fstat(fd).st_size for fd, i in self.fds if i == ino]
            self.fail(f"stat {name}: size {st[0].st_size}, written {want} (its descriptors here say {held})")
        if st[0].st_nlink != self.links(ino):
            self.fail(f"stat {name}: {st[0].st_nlink} links, the model has {self.links(ino)}")

    def read(self, name: str) -> None:
        got: list[bytes] = []

        def do() -> None:
            with open(self.path(name), "rb") as f:
                got.append(f.read())

        if not self.expect(("read", name), do, 0 if name in self.names else errno.ENOENT):
            return
        want = self.data[self.names[name]]
        if got[0] != want:
            at = next((i for i, (x, y) in enumerate(zip(got[0], want, strict=False)) if x != y),
                      min(len(got[0]), len(want)))
            self.fail(f"read {name}: {len(got[0])} bytes, differing at {at} from the {len(want)} written")

    def unlink(self, name: str) -> None:
        if self.expect(("unlink", name), lambda: os.unlink(self.path(name)), 0 if name in self.names else errno.ENOENT):
            self.gone(self.names.pop(name), name)

    def rename(self, old: str, new: str) -> None:
        err = errno.ENOENT if old not in self.names or not self.placed(new) else 0
        if not self.expect(("rename", old, new), lambda: os.rename(self.path(old), self.path(new)), err):
            return
        ino, was = self.names[old], self.names.get(new)
        if was == ino:  # two names of one file: rename does nothing
            return
        del self.names[old]
        self.names[new] = ino
        if was is not None:
            self.gone(was, new)

    def link(self, old: str, new: str) -> None:
        err = (errno.ENOENT if old not in self.names or not self.placed(new) else
               errno.EEXIST if new in self.names else 0)
        if self.expect(("link", old, new), lambda: os.link(self.path(old), self.path(new)), err):
            self.names[new] = self.names[old]

    def truncate(self, name: str) -> None:
        size = self.rng.randrange(0, 5000)
        if not self.expect(("truncate", name, size), lambda: os.truncate(self.path(name), size),
                           0 if name in self.names else errno.ENOENT):
            return
        data = self.data[self.names[name]]
        del data[size:]
        data.extend(bytes(size - len(data)))

    def mkdir(self, sub: str) -> None:
        if self.expect(("mkdir", sub), lambda: os.mkdir(self.path(sub)), errno.EEXIST if sub in self.dirs else 0):
            self.dirs.add(sub)

    def rmdir(self, sub: str) -> None:
        if sub in self.hidden.values():  # a file removed there is still open: kept aside there (as NFS does)
            return
        err = (errno.ENOENT if sub not in self.dirs else
               errno.ENOTEMPTY if any(n.startswith(sub + "/") for n in self.names) else 0)
        if self.expect(("rmdir", sub), lambda: os.rmdir(self.path(sub)), err):
            self.dirs.discard(sub)

    def listing(self) -> None:
        sub = self.rng.choice(("",) + SUBDIRS)
        want = sorted([n[len(sub) + 1:] if sub else n for n in self.names if os.path.dirname(n) == sub]
                      + ([] if sub else sorted(self.dirs)))
        got: list[list[str]] = []
        if not self.expect(("listdir", sub), lambda: got.append(os.listdir(self.path(sub))),
                           0 if not sub or sub in self.dirs else errno.ENOENT):
            return
        seen = sorted(n for n in got[0] if not n.startswith(".fuse_hidden"))
        if seen != want:
            self.fail(f"listdir {sub or '.'}: {seen}, the model has {want}")

    def other_mount(self, name: str) -> None:
        """A file closed here reads whole on another mount (close-to-open); one open here is not looked at."""
        ino = self.names.get(name)
        if ino is None or self.open_on(ino):
            return
        self.log.append(("read on the other mount", name))
        try:
            with open(os.path.join(self.other, name), "rb") as f:
                got = f.read()
        except OSError as e:
            self.fail(f"the other mount: {name}: {errno.errorcode.get(e.errno or 0)}")
        if got != self.data[ino]:
            self.fail(f"the other mount reads {len(got)} bytes of {name}, {len(self.data[ino])} written")

    def other_change(self, name: str) -> None:
        """The other mount changes a name whose file is not open here: writes a file whole, removes a name or
        renames it. Its first request recalls this mount's lease on the directory (what was made here goes to
        the MRC first). A change shows on another mount once what that one cached has run out (the TTL):
        time passes before the other mount acts, and after."""
        ino = self.names.get(name)
        if ino is not None and self.open_on(ino):
            return
        there = os.path.join(self.other, name)
        kind = self.rng.choice(("write", "unlink", "rename"))
        self.log.append(("pause", PAST_TTL))
        time.sleep(PAST_TTL)  # the TTL is a timer: what the other mount cached of this one's changes has run out
        if kind == "write" and self.placed(name):
            data = os.urandom(self.rng.choice((10, 3000, 70000)))
            self.log.append(("other mount: write", name, len(data)))
            with open(there, "wb") as f:
                f.write(data)
            if ino is None:
                ino = self.names[name] = self.next
                self.next += 1
            self.data[ino] = bytearray(data)
        elif kind == "unlink" and ino is not None:
            self.log.append(("other mount: unlink", name))
            os.unlink(there)
            self.gone(self.names.pop(name), name)
        elif kind == "rename" and ino is not None:
            new = self.pick()
            was = self.names.get(new)
            if not self.placed(new) or (was is not None and self.open_on(was)):
                return
            self.log.append(("other mount: rename", name, new))
            os.rename(there, os.path.join(self.other, new))
            if was != ino:
                del self.names[name]
                self.names[new] = ino
                if was is not None:
                    self.gone(was, new)
        else:
            return
        self.log.append(("pause", PAST_TTL))
        time.sleep(PAST_TTL)  # the TTL is a timer: what either mount cached before the change has run out

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
        for name in [p + n for p in ("", "s0/", "s1/") for n in NAMES]:
            m.stat(name)
            m.read(name)
    finally:
        for fd, _ in m.fds:
            os.close(fd)
        grid.umount(a)
        grid.umount(b)
