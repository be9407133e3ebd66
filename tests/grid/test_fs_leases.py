"""Directory leases: a mount creating in a directory makes files there by itself and sends them in batches;
anyone else reading or changing the directory's names has the holder hand them back first.

One grid (MRC, 3 OSDs, 2 client hosts) for the module; mount 0 creates, mount 1 and API clients are
the others.
"""

from __future__ import annotations

import base64
import os
import signal
import stat
import subprocess
import time
from typing import Any

import pytest

from xos.errors import XosError
from xos.fs.client.mount import ATTR_TTL
from xos.fs.layout import INLINE_MAX
from xos.testing import wait_for
from xos.testing.fsgrid import FsGrid, fs_grid


@pytest.fixture(scope="module")
def grid():
    with fs_grid({"data": {}}, ["refused", "unreachable"], osds=3, clients=2) as g:
        yield g


@pytest.fixture(scope="module")
def mounts(grid):
    return grid.mount(0, "data"), grid.mount(1, "data")


@pytest.fixture
def name(request, mounts):
    """A fresh directory name, made through mount 0."""
    n = request.node.name.replace("[", "_").replace("]", "")
    os.mkdir(os.path.join(mounts[0], n))
    return n


@pytest.fixture
def api(grid):
    c = grid.client("data")
    yield c
    c.close()


def stats(api: Any, grid: FsGrid) -> dict[str, Any]:
    return dict(api.mrc("GET", "/v1/stats"))


def create(path: str) -> None:
    os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644))


def lease(d: str, prefix: str = "warm") -> None:
    """Create in directory `d` until this mount holds its lease and makes files there itself."""
    for i in range(20):
        create(os.path.join(d, f"{prefix}{i}"))


def test_files_made_under_a_lease_reach_the_mrc_in_batches(grid, mounts, name, api):
    before = stats(api, grid)["ops"]
    for i in range(300):
        create(os.path.join(mounts[0], name, f"f{i}"))
    after = stats(api, grid)["ops"]
    creates = after.get("create", 0) - before.get("create", 0)
    batches = after.get("made", 0) - before.get("made", 0)
    assert creates < 30, f"{creates} creates went to the MRC one by one"  # a lease is renewed by a create
    assert batches >= 1
    # another client's listing recalls the lease: every file is there, with the inode number shown here
    names = api.listdir(f"/{name}")
    assert sorted(names) == sorted(f"f{i}" for i in range(300))
    here = os.stat(os.path.join(mounts[0], name, "f7")).st_ino
    assert api.stat(f"/{name}/f7")["ino"] == here


def test_a_file_made_here_opens_at_once_on_another_mount(mounts, name):
    lease(os.path.join(mounts[0], name))
    with open(os.path.join(mounts[0], name, "out"), "wb") as f:
        f.write(b"result")
    with open(os.path.join(mounts[1], name, "out"), "rb") as f:
        assert f.read() == b"result"


def test_a_file_made_elsewhere_is_not_answered_missing_by_the_holder(mounts, name):
    lease(os.path.join(mounts[0], name))
    with open(os.path.join(mounts[1], name, "theirs"), "wb") as f:  # recalls mount 0's lease
        f.write(b"theirs")
    with open(os.path.join(mounts[0], name, "theirs"), "rb") as f:
        assert f.read() == b"theirs"
    with pytest.raises(FileExistsError):  # and O_EXCL sees it
        create(os.path.join(mounts[0], name, "theirs"))


def test_exclusive_create_of_a_name_made_here_fails_on_the_other_mount(mounts, name):
    lease(os.path.join(mounts[0], name))
    create(os.path.join(mounts[0], name, "mine"))
    with pytest.raises(FileExistsError):
        create(os.path.join(mounts[1], name, "mine"))


def test_file_made_here_written_renamed_and_unlinked_while_open(mounts, name):
    d = os.path.join(mounts[0], name)
    lease(d)
    fd = os.open(os.path.join(d, "tmp"), os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.unlink(os.path.join(d, "tmp"))  # the tmpfile pattern: the open handle keeps the data
        os.write(fd, b"still here")
        assert os.pread(fd, 100, 0) == b"still here"
        assert os.fstat(fd).st_size == 10
    finally:
        os.close(fd)
    assert "tmp" not in os.listdir(d)
    fd = os.open(os.path.join(d, "a"), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    try:
        os.write(fd, b"moved")
        os.rename(os.path.join(d, "a"), os.path.join(d, "b"))
    finally:
        os.close(fd)
    with open(os.path.join(mounts[1], name, "b"), "rb") as f:
        assert f.read() == b"moved"
    assert not os.path.exists(os.path.join(mounts[1], name, "a"))


def test_made_files_keep_mode_owner_and_group(mounts, name, api):
    d = os.path.join(mounts[0], name)
    lease(d)
    fd = os.open(os.path.join(d, "m"), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o640)
    os.close(fd)
    here = os.stat(os.path.join(d, "m"))
    there = api.stat(f"/{name}/m")
    assert there["mode"] & 0o7777 == here.st_mode & 0o7777 == 0o640 & ~current_umask()
    assert there["owner"] == "alice@vo-a" and there["group"] == "vo-a"
    assert here.st_uid == os.stat(d).st_uid


def current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_a_lost_holder_holds_others_up_only_for_the_term(grid, name, api):
    mp = grid.mount(1, "data", user="bob")
    os.chmod(os.path.join(grid.mounts[0][0], name), 0o777)
    d = os.path.join(mp, name)
    lease(d, "bob")
    proc = next(p for m, p in grid.mounts if m == mp)
    wait_for(lambda: stats(api, grid)["leases"] >= 1, 5, "bob's lease")
    proc.stop(signal.SIGKILL)  # the holder is gone without handing anything back
    try:
        # The MRC waits out the term, no longer: past the client's timeout this would fail as unavailable.
        with api.open(f"/{name}/after", "wb") as f:
            f.write(b"x")
        assert "after" in api.listdir(f"/{name}")
    finally:
        grid.umount(mp)


def test_the_mrc_refuses_bad_batches(grid, name, api):
    dir_ino = api.stat(f"/{name}")["ino"]
    for files, code in (([["../x", 1, 0o644, 0.0]], "bad-path"), ([["a/b", 1, 0o644, 0.0]], "bad-path"),
                        ([["x\0y", 1, 0o644, 0.0]], "bad-path"), ([["x", "one", 0o644, 0.0]], "invalid-input"),
                        ("x", "invalid-input"), ([["x", 1]], "invalid-input"),
                        ([["x", 1, 0o644, 0.0, "content"]], "invalid-input"),
                        ([["x", 1, 0o644, 0.0, {"inline": "%%", "atime": 1, "mtime": 1, "ctime": 1}]],
                         "invalid-input"),
                        ([["x", 1, 0o644, 0.0, {"inline": base64.b64encode(bytes(INLINE_MAX + 1)).decode(),
                                                "atime": 1, "mtime": 1, "ctime": 1}]], "invalid-input"),
                        ([["x", 1, 0o644, 0.0, {"inline": "", "atime": "1", "mtime": 1, "ctime": 1}]],
                         "invalid-input"),
                        ([["x", 1, 0o644, 0.0, {"inline": "", "atime": 1, "mtime": 1e300, "ctime": 1}]],
                         "invalid-input"),
                        ([["x", 1, 0o644, 0.0, {"inline": "", "atime": 1, "mtime": 1}]], "invalid-input")):
        with pytest.raises(XosError) as e:
            api.op("made", dir=dir_ino, files=files)
        assert e.value.code == code, (files, e.value)
    assert api.listdir(f"/{name}") == []
    with pytest.raises(XosError) as e:
        api.op("made", dir=10**12, files=[["x", 1, 0o644, 0.0]])
    assert e.value.code == "no-such-file"
    # an inode number nobody reserved for this client is not taken from it: the file gets another
    made = api.op("made", dir=dir_ino, files=[["y", 1, 0o644, 0.0]])
    assert made["made"]["y"] != 1
    assert api.stat(f"/{name}/y")["ino"] == made["made"]["y"]


def test_unwritable_mode_stays_writable_through_its_handle(mounts, name, api):
    """git makes its objects 0444 and writes them through the handle that made them: kept here, or (past
    the inline limit) opened at the MRC as the kernel checked it."""
    d = os.path.join(mounts[0], name)
    lease(d)
    big = os.urandom(INLINE_MAX + 1000)
    for n, data in (("ro", b"data in it"), ("big", big)):
        fd = os.open(os.path.join(d, n), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o444)
        try:
            assert os.write(fd, data[:10]) == 10
            assert os.write(fd, data[10:]) == len(data) - 10
        finally:
            os.close(fd)
        with open(os.path.join(mounts[1], name, n), "rb") as f:
            assert f.read() == data
        assert stat.S_IMODE(os.stat(os.path.join(mounts[1], name, n)).st_mode) == 0o444
    # the mode holds for a client that has no kernel checking it first; through a mount the kernel decides
    # (root overrides it there, as on a local disk; the mount is its mounting user's alone)
    with pytest.raises(XosError) as e:
        api.open_handle(f"/{name}/ro", write=True)
    assert e.value.code == "access-denied"


def test_files_written_right_after_they_are_made_all_reach_the_mrc(mounts, name, api):
    """The tar pattern: create, write, close, over and over. A write makes Python open the file at the MRC,
    which must wait for a batch the sender has taken and not yet sent."""
    d = os.path.join(mounts[0], name)
    for i in range(300):
        with open(os.path.join(d, f"t{i}"), "w") as f:
            f.write(f"file {i}\n")
    for i in (0, 150, 299):
        with api.open(f"/{name}/t{i}") as f:
            assert f.read() == f"file {i}\n".encode()


def test_a_leased_directory_asked_for_besides_another_is_left_to_its_holder(grid, mounts, name, api):
    """A mount's batched revalidation names directories it may not need now: one another session holds
    is answered null, not recalled (the holder would hand it back, and the asker wait, for nothing)."""
    lease(os.path.join(mounts[0], name))
    before = stats(api, grid)["ops"]
    _, also = api.listing_versions("/", [f"/{name}"])
    after = stats(api, grid)["ops"]
    assert also == [None]
    assert after.get("hand_back", 0) == before.get("hand_back", 0)
    # asked for itself, it is recalled (the handler waits for the hand-back) and answered
    assert api.listing_version(f"/{name}") > 0
    assert stats(api, grid)["ops"].get("hand_back", 0) > after.get("hand_back", 0)


def test_a_file_written_under_a_lease_goes_to_the_mrc_whole_with_its_mode_and_times(grid, mounts, name, api):
    """cp -a's pattern: create, write, set times, chmod, close. The file goes to the MRC with the others made
    here, content, mode and times in one call: none of it is a round trip of its own, and what the mount
    showed before it went is what everyone sees after (tar compares both)."""
    d = os.path.join(mounts[0], name)
    lease(d)
    before = stats(api, grid)["ops"]
    shown = {}
    for i in range(100):
        p = os.path.join(d, f"c{i}")
        fd = os.open(p, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.write(fd, b"x" * 100 + f"file {i}".encode())
            os.pwrite(fd, b"y", 10)
            assert os.pread(fd, 12, 0) == b"x" * 10 + b"yx"  # read back through the same descriptor
            os.ftruncate(fd, 100 + len(f"file {i}") - 2)  # and cut short
            os.utime(fd, ns=(1_000_000_123_000, 1_500_000_456_000 + i * 1000))
            os.fchmod(fd, 0o644 if i % 2 else 0o640)
        finally:
            os.close(fd)
        shown[f"c{i}"] = os.stat(p)
    after = stats(api, grid)["ops"]
    spent = {op: after.get(op, 0) - before.get(op, 0) for op in ("open", "commit", "setattr", "create")}
    # call by call, that is 600 (an open, 3 setattrs and a commit each); a file still open when the sender
    # takes the batch it is in goes on at the MRC, so a few do
    assert sum(spent.values()) < 60, f"files written here went to the MRC call by call: {spent}"
    for i in (0, 1, 57, 99):
        want = (b"x" * 10 + b"y" + b"x" * 89 + f"file {i}".encode())[:-2]
        with open(os.path.join(mounts[1], name, f"c{i}"), "rb") as f:
            assert f.read() == want
        there = os.stat(os.path.join(mounts[1], name, f"c{i}"))
        here = os.stat(os.path.join(d, f"c{i}"))
        for st in (there, here):
            assert stat.S_IMODE(st.st_mode) == (0o644 if i % 2 else 0o640)
            assert st.st_size == len(want)
            assert (st.st_atime_ns, st.st_mtime_ns) == (1_000_000_123_000, 1_500_000_456_000 + i * 1000)
        old = shown[f"c{i}"]
        assert (here.st_ctime_ns, here.st_mtime_ns, here.st_size, here.st_ino) == \
            (old.st_ctime_ns, old.st_mtime_ns, old.st_size, old.st_ino), "the file changed as it went to the MRC"
        assert there.st_ctime_ns == here.st_ctime_ns


def test_a_file_written_here_past_the_inline_limit_goes_to_the_osds_whole(mounts, name):
    d = os.path.join(mounts[0], name)
    lease(d)
    data = os.urandom(INLINE_MAX + 5000)
    fd = os.open(os.path.join(d, "big"), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    try:
        os.write(fd, data[:1000])  # kept here
        os.write(fd, data[1000:])  # past the limit: the file goes to the MRC, and on to the OSDs
        os.fchmod(fd, 0o600)
    finally:
        os.close(fd)
    with open(os.path.join(mounts[1], name, "big"), "rb") as f:
        assert f.read() == data
    assert stat.S_IMODE(os.stat(os.path.join(mounts[1], name, "big")).st_mode) == 0o600
    # unlinked while a handle of a file still here is open: the handle keeps it, the name goes
    fd = os.open(os.path.join(d, "gone"), os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.write(fd, b"kept")
        os.unlink(os.path.join(d, "gone"))
        os.write(fd, b" on")
        assert os.pread(fd, 100, 0) == b"kept on"
    finally:
        os.close(fd)
    assert "gone" not in os.listdir(os.path.join(mounts[1], name))
    assert not [n for n in os.listdir(d) if n.startswith(".fuse_hidden")]


def test_changes_of_names_answer_their_directories_attributes(grid, mounts, name, api):
    """Each unlink, rename, link, mkdir and rmdir answers the attributes of the directories it touched, so
    the kernel's next permission check in them asks the MRC nothing (rm -rf asked it once per name)."""
    d = os.path.join(mounts[0], name)
    lease(d)
    for i in range(50):
        with open(os.path.join(d, f"n{i}"), "w") as f:
            f.write("x")
    os.stat(os.path.join(d, "n0"))  # the files made here are at the MRC now
    before = stats(api, grid)["ops"]
    for i in range(50):
        os.link(os.path.join(d, f"n{i}"), os.path.join(d, f"l{i}"))
        os.rename(os.path.join(d, f"l{i}"), os.path.join(d, f"m{i}"))
        os.unlink(os.path.join(d, f"n{i}"))
        os.mkdir(os.path.join(d, f"d{i}"))
        os.rmdir(os.path.join(d, f"d{i}"))
    after = stats(api, grid)["ops"]
    asked = after.get("getattr", 0) - before.get("getattr", 0)
    assert asked < 10, f"{asked} getattrs for 250 changes of names"
    fd = os.open(d, os.O_RDONLY)  # the directories made here are removed here too: at the MRC after this
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    here, there = os.stat(d), api.stat(f"/{name}")
    assert (here.st_mtime_ns, here.st_ctime_ns, here.st_nlink) == \
        (round(there["mtime"] * 1e6) * 1000, round(there["ctime"] * 1e6) * 1000, there["nlink"])
    assert sorted(os.listdir(d)) == sorted([f"warm{i}" for i in range(20)] + [f"m{i}" for i in range(50)])


def test_names_removed_under_a_lease_reach_the_mrc_in_order(grid, mounts, name, api):
    """A mount holding a directory's lease removes names there by itself and sends the removals in one call
    with the files it made, in the order it made them (rm -rf and git asked the MRC once per name)."""
    d = os.path.join(mounts[0], name)
    lease(d)
    for i in range(100):
        with open(os.path.join(d, f"f{i}"), "w") as f:
            f.write(f"old{i}")
    os.mkdir(os.path.join(d, "sub"))  # sent what was made: the removals below are all that is queued
    os.link(os.path.join(d, "f7"), os.path.join(d, "sub", "g7"))
    before = stats(api, grid)["ops"]
    for i in range(100):
        os.unlink(os.path.join(d, f"f{i}"))
    with open(os.path.join(d, "f5"), "w") as f:  # made, removed and made again under one name
        f.write("new5")
    assert not os.path.exists(os.path.join(d, "f6"))
    # the other name of a file whose name was removed here shows one link less, here and elsewhere
    assert os.stat(os.path.join(d, "sub", "g7")).st_nlink == 1
    # another client's listing recalls the lease: it sees the removals and the new file
    assert sorted(api.listdir(f"/{name}")) == sorted([f"warm{i}" for i in range(20)] + ["f5", "sub"])
    after = stats(api, grid)["ops"]
    unlinks = after.get("unlink", 0) - before.get("unlink", 0)
    assert unlinks < 5, f"{unlinks} unlinks went to the MRC one by one"
    assert after.get("unlinked", 0) > before.get("unlinked", 0)
    assert api.stat(f"/{name}/sub/g7")["nlink"] == 1
    with open(os.path.join(mounts[1], name, "f5")) as f:
        assert f.read() == "new5"
    with open(os.path.join(mounts[1], name, "sub", "g7")) as f:
        assert f.read() == "old7"
    assert not os.path.exists(os.path.join(mounts[1], name, "f6"))


def test_a_removal_names_the_file_it_removes(grid, name, api):
    """A removal a lease holder sends late (its lease ran out meanwhile) never removes another file that
    took the name: the MRC removes a name only if it still names the inode the holder saw there."""
    dir_ino = api.stat(f"/{name}")["ino"]
    with api.open(f"/{name}/x", "wb") as f:
        f.write(b"someone else's")
    ino = api.stat(f"/{name}/x")["ino"]
    r = api.op("changes", changes=[{"op": "unlinked", "dir": dir_ino, "names": [["x", ino + 1000, 1.0]]},
                                   {"op": "unlinked", "dir": dir_ino, "names": [["gone", 5, 1.0]]}])
    assert r["answers"][0]["refused"] == {"x": "no-such-file"} and r["answers"][0]["unlinked"] == []
    assert r["answers"][1]["refused"] == {"gone": "no-such-file"}
    with api.open(f"/{name}/x") as f:
        assert f.read() == b"someone else's"
    for changes, code in (("x", "invalid-input"), ([{"op": "rmdir", "dir": dir_ino}], "invalid-input"),
                          ([{"op": "unlinked", "dir": dir_ino, "names": [["x", "one", 1.0]]}], "invalid-input"),
                          ([{"op": "unlinked", "dir": dir_ino, "names": [["x", ino, 1e300]]}], "invalid-input"),
                          ([{"op": "made", "dir": dir_ino, "files": [["y", 1, 0o644, 1e300]]}], "invalid-input"),
                          ([{"op": "unlinked", "dir": dir_ino, "names": [["../x", ino, 1.0]]}], "bad-path")):
        r = None
        try:
            r = api.op("changes", changes=changes)
        except XosError as e:
            assert e.code == code, (changes, e)
        else:
            assert r["answers"][0]["error"]["code"] == code, (changes, r)
    assert api.stat(f"/{name}/x")["ino"] == ino


def test_a_directory_changed_now_and_then_stays_leased(grid, mounts, name, api):
    """Each batch of changes the MRC takes renews the sender's lease on their directory for another term,
    here as at the MRC: a program coming back to a directory every so often (git's objects) makes its
    files there by itself past the first term, instead of asking the MRC again once a term ran out."""
    from xos.fs.mrc.leases import TERM

    d = os.path.join(mounts[0], name)
    create(os.path.join(d, "first"))  # the create brings the lease
    before = stats(api, grid)["ops"]
    start = time.monotonic()
    i = 0
    while time.monotonic() - start < 2.5 * TERM:
        made = stats(api, grid)["ops"].get("made", 0)
        create(os.path.join(d, f"f{i}"))
        wait_for(lambda m=made: stats(api, grid)["ops"].get("made", 0) > m, 10, "the file to reach the MRC")
        i += 1
    after = stats(api, grid)["ops"]
    assert after.get("create", 0) - before.get("create", 0) == 0, "a create went to the MRC: the lease ran out"
    assert sorted(api.listdir(f"/{name}")) == sorted(["first"] + [f"f{k}" for k in range(i)])


def test_a_leased_directory_is_listed_from_what_the_mount_holds(grid, mounts, name, api):
    """While its lease holds, nobody else changes a directory's names: its holder lists it without asking the
    MRC, with the files it made and without the names it removed; once another mount changed it, the
    holder's listing shows that change."""
    d = os.path.join(mounts[0], name)
    lease(d)
    for i in range(30):
        create(os.path.join(d, f"f{i}"))
    os.unlink(os.path.join(d, "f3"))
    before = stats(api, grid)["ops"]
    want = sorted([f"warm{i}" for i in range(20)] + [f"f{i}" for i in range(30) if i != 3])
    assert sorted(os.listdir(d)) == want
    with os.scandir(d) as it:
        kinds = {e.name: e.is_file(follow_symlinks=False) for e in it}
    assert kinds == dict.fromkeys(want, True)
    after = stats(api, grid)["ops"]
    assert after.get("readdir", 0) == before.get("readdir", 0)
    create(os.path.join(mounts[1], name, "theirs"))  # recalls the lease
    assert sorted(os.listdir(d)) == sorted(want + ["theirs"])


def test_fsync_of_a_directory_puts_what_was_changed_there_at_the_mrc(grid, name, api):
    """Names made and removed under a lease reach the MRC in batches; fsync of their directory returns only
    once they are there (and on its disk: the MRC answers a change once it is). The mount killed right
    after the fsync loses none of them."""
    mp = grid.mount(1, "data", user="bob")
    os.chmod(os.path.join(grid.mounts[0][0], name), 0o777)
    d = os.path.join(mp, name)
    lease(d, "bob")
    proc = next(p for m, p in grid.mounts if m == mp)
    try:
        fd = os.open(d, os.O_RDONLY | os.O_DIRECTORY)  # opened first: an open asks the MRC after what is queued
        try:
            os.unlink(os.path.join(d, "bob0"))
            create(os.path.join(d, "made"))
            os.fsync(fd)
            proc.stop(signal.SIGKILL)
        finally:
            os.close(fd)
        names = api.listdir(f"/{name}")  # waits out the dead holder's term
        assert "made" in names and "bob0" not in names and "bob1" in names
    finally:
        grid.umount(mp)


def tree(d: str) -> str:
    """A tree made in `d`: 20 directories of 10 small files each."""
    top = os.path.join(d, "tree")
    os.mkdir(top)
    for i in range(20):
        os.mkdir(os.path.join(top, f"d{i}"))
        for k in range(10):
            with open(os.path.join(top, f"d{i}", f"f{k}"), "w") as f:
                f.write("x")
    return top


def test_a_tree_removed_under_leases_reaches_the_mrc_in_order(grid, mounts, name, api):
    """rm -rf of a tree whose directories are leased here: names and then empty directories removed here,
    the directory after what was in it, in one call or few; another mount sees none of it after."""
    top = tree(os.path.join(mounts[0], name))
    before = stats(api, grid)["ops"]
    subprocess.run(["rm", "-rf", top], check=True)
    after = stats(api, grid)["ops"]
    rmdirs = after.get("rmdir", 0) - before.get("rmdir", 0)
    assert rmdirs < 5, f"{rmdirs} rmdirs went to the MRC one by one"
    assert not os.path.exists(os.path.join(mounts[1], name, "tree"))
    assert api.listdir(f"/{name}") == []


def test_a_tree_made_here_is_removed_name_by_name_here_after_its_leases_ran_out(grid, mounts, name, api):
    """rm -rf lists each directory, then removes every name in it. A directory this mount held a lease on, and
    was not asked to hand back, is leased again by its listing, so no name there goes to the MRC by itself
    (the first removal in each directory did, a round trip each; one whose listing is still fresh here, as a
    revalidation of another left it, still does); another mount sees none of it after."""
    top = tree(os.path.join(mounts[0], name))
    wait_for(lambda: stats(api, grid)["leases"] == 0, 10, "the tree's leases to run out")
    before = stats(api, grid)["ops"]
    subprocess.run(["rm", "-rf", top], check=True)
    after = stats(api, grid)["ops"]
    unlinks = after.get("unlink", 0) - before.get("unlink", 0)
    assert unlinks < 5, f"{unlinks} names went to the MRC one by one"  # 20, one a directory, before
    assert after.get("unlinked", 0) > before.get("unlinked", 0)
    assert not os.path.exists(os.path.join(mounts[1], name, "tree"))
    assert api.listdir(f"/{name}") == []


def test_a_directory_made_here_comes_leased(grid, mounts, name, api):
    """cp -a, tar x and git make a directory and then files in it: the mkdir brings the new directory's lease,
    so not even the first file made there is an MRC call of its own; another mount sees them all."""
    d = os.path.join(mounts[0], name, "new")
    before = stats(api, grid)["ops"]
    os.mkdir(d)
    for i in range(20):
        with open(os.path.join(d, f"f{i}"), "w") as f:
            f.write(f"file {i}")
    after = stats(api, grid)["ops"]
    creates = after.get("create", 0) - before.get("create", 0)
    assert creates == 0, f"{creates} files made in a new directory were MRC calls of their own"
    assert sorted(os.listdir(os.path.join(mounts[1], name, "new"))) == sorted(f"f{i}" for i in range(20))
    with open(os.path.join(mounts[1], name, "new", "f7")) as f:
        assert f.read() == "file 7"


def test_a_directory_another_mount_asked_for_is_not_leased_by_a_listing(grid, mounts, name, api):
    """Only a directory nobody else wanted of late is leased again when it is listed: a listing that took the
    lease of a directory others use would have them wait for its hand-back."""
    d = os.path.join(mounts[0], name)
    lease(d)
    create(os.path.join(mounts[1], name, "theirs"))  # recalled from mount 0
    wait_for(lambda: stats(api, grid)["leases"] == 0, 10, "the leases to run out")
    assert "theirs" in os.listdir(d)
    assert stats(api, grid)["leases"] == 0


def test_links_in_a_leased_directory_reach_the_mrc_in_order(grid, mounts, name, api):
    """git links each object into place from a temporary name and removes that name, both in the object's
    directory: answered here under the lease and sent in order behind the file made before them."""
    d = os.path.join(mounts[0], name)
    lease(d)
    before = stats(api, grid)["ops"]
    for i in range(50):
        tmp = os.path.join(d, f"tmp{i}")
        with open(tmp, "w") as f:
            f.write(f"object {i}")
        os.chmod(tmp, 0o444)
        os.link(tmp, os.path.join(d, f"obj{i}"))
        assert os.stat(tmp).st_nlink == 2 and os.stat(os.path.join(d, f"obj{i}")).st_nlink == 2
        os.unlink(tmp)
        assert os.stat(os.path.join(d, f"obj{i}")).st_nlink == 1
        with open(os.path.join(d, f"obj{i}")) as f:
            assert f.read() == f"object {i}"
    with pytest.raises(FileExistsError):
        os.link(os.path.join(d, "obj1"), os.path.join(d, "obj2"))
    after = stats(api, grid)["ops"]
    links = after.get("link", 0) - before.get("link", 0)
    assert links == 0, f"{links} links went to the MRC one by one"
    assert after.get("linked", 0) > before.get("linked", 0)
    with open(os.path.join(mounts[1], name, "obj7")) as f:
        assert f.read() == "object 7"
    assert api.stat(f"/{name}/obj7")["nlink"] == 1 and api.stat(f"/{name}/obj7")["mode"] & 0o777 == 0o444
    assert sorted(api.listdir(f"/{name}")) == sorted([f"warm{i}" for i in range(20)] + [f"obj{i}" for i in range(50)])


def test_the_mrc_links_only_the_file_a_holder_linked(grid, name, api):
    """A link a lease holder sends late (its lease ran out meanwhile) never names another file, nor takes a name
    made since, and bad input changes nothing."""
    dir_ino = api.stat(f"/{name}")["ino"]
    for n in ("a", "b", "taken"):
        with api.open(f"/{name}/{n}", "wb") as f:
            f.write(n.encode())
    a, b = api.stat(f"/{name}/a")["ino"], api.stat(f"/{name}/b")["ino"]
    r = api.op("changes", changes=[{"op": "linked", "dir": dir_ino, "links": [
        ["a", a, "a2", 1.0], ["a", b, "wrong", 1.0], ["gone", a, "g2", 1.0], ["b", b, "taken", 1.0]]}])
    assert r["answers"][0]["linked"] == ["a2"]
    assert r["answers"][0]["refused"] == {"wrong": "no-such-file", "g2": "no-such-file", "taken": "file-exists"}
    assert api.stat(f"/{name}/a")["nlink"] == 2 and api.stat(f"/{name}/a2")["ino"] == a
    assert api.stat(f"/{name}/b")["nlink"] == 1
    for bad in (["a", a, "x/y", 1.0], ["a", a, "z"], ["a", "a", "z", 1.0], ["a", a, "z", True]):
        r = api.op("changes", changes=[{"op": "linked", "dir": dir_ino, "links": [bad]}])
        assert r["answers"][0]["error"]["code"] in ("invalid-input", "bad-path"), bad
    assert sorted(api.listdir(f"/{name}")) == ["a", "a2", "b", "taken"]


def test_the_mrc_removes_only_an_empty_directory_a_holder_removed(grid, name, api):
    dir_ino = api.stat(f"/{name}")["ino"]
    api.mkdir(f"/{name}/full")
    with api.open(f"/{name}/full/x", "wb") as f:
        f.write(b"x")
    api.mkdir(f"/{name}/empty")
    full, empty = api.stat(f"/{name}/full")["ino"], api.stat(f"/{name}/empty")["ino"]
    x = api.stat(f"/{name}/full/x")["ino"]
    r = api.op("changes", changes=[{"op": "unlinked", "dir": dir_ino, "names": [["full", full, 1.0, True],
                                                                             ["empty", empty, 1.0, True]]},
                                   {"op": "unlinked", "dir": full, "names": [["x", x, 1.0, True]]}])
    assert r["answers"][0]["refused"] == {"full": "directory-not-empty"} and r["answers"][0]["unlinked"] == ["empty"]
    assert r["answers"][1]["refused"] == {"x": "not-a-directory"}
    assert api.listdir(f"/{name}") == ["full"] and api.listdir(f"/{name}/full") == ["x"]
    assert api.stat(f"/{name}")["nlink"] == 3


def forgotten(base: str) -> list[str]:
    """Eight directories made and leased in `base`, each with a reservation of inode numbers of its own: the
    MRC keeps the newest four, so what is made in the first one gets other numbers there."""
    dirs = [os.path.join(base, f"d{i}") for i in range(8)]
    for d in dirs:
        os.mkdir(d)
        lease(d)
    return dirs


def test_a_file_made_and_removed_here_stays_removed_when_the_mrc_renumbers_it(grid, mounts, name, api):
    """The MRC keeps only a mount's newest reservations of inode numbers: a file made here under an older one
    gets another number there, and its removal, queued with the number it had here, still removes it."""
    dirs = forgotten(os.path.join(mounts[0], name))
    for k in range(40):
        p = os.path.join(dirs[0], f"t{k}")
        with open(p, "w") as f:
            f.write("x")
        os.unlink(p)
    assert sorted(api.listdir(f"/{name}/d0")) == sorted(f"warm{i}" for i in range(20))
    dir_ino = api.stat(f"/{name}/d0")["ino"]
    r = api.op("changes", changes=[{"op": "made", "dir": dir_ino, "files": [["r", 1, 0o644, 0.0]]},
                                   {"op": "unlinked", "dir": dir_ino, "names": [["r", 1, 1.0]]}])
    assert r["answers"][0]["made"]["r"] != 1 and r["answers"][1]["unlinked"] == ["r"]
    assert "r" not in api.listdir(f"/{name}/d0")


def test_a_name_linked_here_to_a_file_the_mrc_renumbered_stays_that_file(grid, mounts, name, api):
    """A file made here under a reservation the MRC forgot gets another inode number there: a name linked to it
    here takes that number too. git fsck failed to read objects linked so: a listing showing the new number
    made the linked name another file here, and the name the kernel held was gone."""
    dirs = forgotten(os.path.join(mounts[0], name))
    for k in range(10):
        tmp, obj = os.path.join(dirs[0], f"tmp{k}"), os.path.join(dirs[0], f"obj{k}")
        with open(tmp, "w") as f:
            f.write(f"object {k}")
        os.link(tmp, obj)
        os.unlink(tmp)
    assert sorted(api.listdir(f"/{name}/d0")) == sorted([f"warm{i}" for i in range(20)] +
                                                         [f"obj{k}" for k in range(10)])
    numbers = [api.stat(f"/{name}/d0/obj{k}")["ino"] for k in range(10)]
    assert len(os.listdir(dirs[0])) == 30  # handed back: listed from the MRC, with its numbers
    for k in range(10):
        with open(os.path.join(dirs[0], f"obj{k}")) as f:
            assert f.read() == f"object {k}"
        assert os.stat(os.path.join(dirs[0], f"obj{k}")).st_ino == numbers[k]


def test_a_file_made_here_keeps_its_open_handle_through_a_rename_onto_its_other_name(mounts, name):
    """A rename of one name of a file onto another of its names does nothing (POSIX), but the kernel moves its
    entry, and the name renamed onto loses its node here. A handle the native loop gave out when it made the
    file on that node is opened at the MRC by the node's name on its first use: it is taken over first."""
    d = os.path.join(mounts[0], name)
    lease(d)
    a, b = os.path.join(d, "a"), os.path.join(d, "b")
    fd = os.open(a, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644)
    try:
        os.link(a, b)
        os.rename(b, a)
        assert os.pwrite(fd, b"still here", 0) == 10
    finally:
        os.close(fd)
    for p in (a, b, os.path.join(mounts[1], name, "a")):
        with open(p, "rb") as f:
            assert f.read() == b"still here"


def test_rmdir_waits_for_the_last_close_of_a_file_removed_while_open(mounts, name):
    """A file removed while open is moved aside until its last close (whose RELEASE the kernel sends after
    close() returns): an rmdir of its directory waits for that close, for a while, and then says it is not
    empty."""
    import errno
    import threading

    from xos.fs.client.mount import RELEASE_WAIT

    d = os.path.join(mounts[0], name, "sub")
    os.mkdir(d)
    fd = os.open(os.path.join(d, "f"), os.O_WRONLY | os.O_CREAT, 0o644)
    os.unlink(os.path.join(d, "f"))
    with pytest.raises(OSError) as e:  # still open past the wait
        os.rmdir(d)
    assert e.value.errno == errno.ENOTEMPTY
    closer = threading.Timer(RELEASE_WAIT / 4, os.close, (fd,))
    closer.start()
    try:
        os.rmdir(d)  # returns once the close came
    finally:
        closer.join()
    assert not os.path.exists(d) and not os.path.exists(os.path.join(mounts[1], name, "sub"))


def test_files_sent_while_open_keep_what_was_written_after_their_close(mounts, name):
    """Files made here, written, sent to the MRC with that content while still open (fsync of their
    directory), then closed: once the kernel's attributes run out, each still shows its size and content.
    (The table kept each file's attributes from when it was made, empty; the directory's listing, found
    unchanged at the MRC, brought them back, and the kernel read the files as empty: a linker saw an object
    file without its symbols.)"""
    d = os.path.join(mounts[0], name)
    lease(d)
    dfd = os.open(d, os.O_RDONLY | os.O_DIRECTORY)
    try:
        files = [open(os.path.join(d, f"o{i}"), "wb") for i in range(10)]
        for i, f in enumerate(files):
            f.write(bytes([i]) * 500)
            f.flush()
        os.fsync(dfd)
        for f in files:
            f.close()
    finally:
        os.close(dfd)
    time.sleep(ATTR_TTL + 0.2)  # the kernel asks again
    for i in range(10):
        p = os.path.join(d, f"o{i}")
        assert os.stat(p).st_size == 500
        with open(p, "rb") as f:
            assert f.read() == bytes([i]) * 500
