"""The public pjdfstest POSIX suite on a grid mount: no failure but the documented identity-dependent ones.

A mount serves its mounting user with one member's credential; the suite's steps that act as other local
users are refused by the kernel (EACCES: the mount is not allow_other) and its chowns to uids and gids
that are no grid identity by the mount (EPERM). DEVELOPERS.md lists them by test file."""

from __future__ import annotations

import collections
import os
import stat

import pytest

from tests.grid import pjdfstest
from xos.testing.fsgrid import fs_grid


@pytest.fixture(scope="module")
def mount():
    with fs_grid({"posix": {"replicas": 2}}, osds=2, clients=1) as g:
        yield g.mount(0, "posix")


def test_pjdfstest_fails_only_where_a_step_needs_another_identity(mount: str) -> None:
    result = pjdfstest.run(mount)
    by_file = collections.Counter(f.test for f in result.identity)
    print(f"pjdfstest: {result.assertions} assertions, {len(result.identity)} identity-dependent failures "
          f"({dict(by_file.most_common())}), {len(result.other)} others")
    assert result.assertions > 8000  # the whole suite ran
    assert not result.other, "\n".join(f.line() for f in result.other[:50])
    # what is refused is refused as documented: EACCES for another local user, EPERM for a chown away
    reasons = collections.Counter(f.got for f in result.identity if pjdfstest.identity_step(f.command))
    assert set(reasons) <= {"EACCES", "EPERM"}, reasons


def test_fifos_sockets_and_devices_are_names_on_the_mount(mount: str) -> None:
    d = os.path.join(mount, "special")
    os.mkdir(d)
    fifo, sock, dev = (os.path.join(d, n) for n in ("fifo", "sock", "null"))
    os.mkfifo(fifo, 0o640)
    os.mknod(dev, 0o600 | stat.S_IFCHR, os.makedev(1, 3))
    import socket

    with socket.socket(socket.AF_UNIX) as s:
        s.bind(sock)
        assert stat.S_ISSOCK(os.lstat(sock).st_mode)
    st = os.lstat(fifo)
    assert stat.S_ISFIFO(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o640
    st = os.lstat(dev)
    assert stat.S_ISCHR(st.st_mode) and st.st_rdev == os.makedev(1, 3)
    # a FIFO works as a local pipe on the host that opens it
    r = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)
    w = os.open(fifo, os.O_WRONLY)
    os.write(w, b"through the fifo")
    assert os.read(r, 100) == b"through the fifo"
    os.close(w)
    os.close(r)
    # devices are names only: the mount is nodev, so no grid user reaches a device through one
    with pytest.raises(PermissionError):
        open(dev, "rb")
    assert sorted(os.listdir(d)) == ["fifo", "null", "sock"]
    for n in os.listdir(d):
        os.unlink(os.path.join(d, n))
    os.rmdir(d)
