"""Root-side work on paths a guest can write: workspace and job directories, homes, /tmp, images.

Everything here opens beneath a directory the caller trusts, one component at a time as the kernel
resolves it (openat2 with RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS, native/
safepath.c), never blocks on a FIFO (O_NONBLOCK, then a type check), and walks trees by descriptor,
so a link a guest plants or swaps in between two calls is refused, never followed. Work done for a
guest (reading its output, writing into its directory) is done as the guest (`acting_as`), so even a
hard link to a file it could not open gains it nothing.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import stat
from collections.abc import Iterator

from xos._native._sys import lib
from xos.errors import InvalidInput

REG = lib.XOS_KIND_REG
DIR = lib.XOS_KIND_DIR
EKIND = lib.XOS_EKIND


class UnsafePath(InvalidInput):
    """A path a guest controls leads through a link, out of its directory, or to a FIFO, socket or device."""

    code = "unsafe-path"


def open_beneath(base: int | str, rel: str, flags: int = os.O_RDONLY, mode: int = 0o600, *, kinds: int = REG,
                 as_user: tuple[int, int] | None = None) -> int:
    """Open `rel` beneath the directory `base` (a descriptor or a trusted path); the descriptor.

    UnsafePath for a link on the way, a path leaving `base`, or a kind not in `kinds`; OSError for the
    rest (ENOENT, EACCES...). `as_user` (uid, gid): the open is checked as that user, not as root."""
    own = -1
    if isinstance(base, str):
        own = os.open(base, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
        base = own
    try:
        with acting_as(as_user):
            fd = lib.xos_open_beneath(base, os.fsencode(rel), flags, mode, kinds)
    finally:
        if own >= 0:
            os.close(own)
    if fd >= 0:
        return int(fd)
    err = -fd
    if err in (errno.ELOOP, errno.EXDEV):
        raise UnsafePath(f"{rel!r} leads through a link or out of its directory", path=rel)
    if err == EKIND:
        raise UnsafePath(f"{rel!r} is not a {'regular file' if kinds == REG else 'file or directory'}", path=rel)
    raise OSError(err, os.strerror(err), rel)


@contextlib.contextmanager
def acting_as(ids: tuple[int, int] | None) -> Iterator[None]:
    """File-system checks of the calling thread as user `ids` (uid, gid) inside the block; None: as now.

    setfsuid/setfsgid change only this thread, and root's file capabilities leave with its fsuid."""
    if ids is None:
        yield
        return
    uid, gid = ids
    old_gid = lib.setfsgid(gid)
    old_uid = lib.setfsuid(uid)
    try:
        yield
    finally:
        lib.setfsuid(old_uid)
        lib.setfsgid(old_gid)


def read_small(base: int | str, rel: str, limit: int, as_user: tuple[int, int] | None = None) -> bytes | None:
    """At most `limit` bytes of the regular file `rel` beneath `base`; None if it is not there."""
    try:
        fd = open_beneath(base, rel, os.O_RDONLY, kinds=REG, as_user=as_user)
    except (FileNotFoundError, NotADirectoryError):
        return None
    try:
        return os.read(fd, limit)
    finally:
        os.close(fd)


def _open_dir(at: int, name: str) -> int:
    return open_beneath(at, name, os.O_RDONLY | os.O_DIRECTORY, kinds=DIR)


def remove_owned(uids: set[int], top: str) -> int:
    """Delete every file and directory under `top` owned by one of `uids`; how many.

    Each directory is opened beneath the one before and its entries removed relative to it, so a
    directory swapped for a link mid-walk is refused, never followed out of `top`."""
    try:
        fd = os.open(top, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return 0
    try:
        return _remove_owned_at(fd, uids)
    finally:
        os.close(fd)


def _remove_owned_at(dfd: int, uids: set[int]) -> int:
    n = 0
    for name in os.listdir(dfd):
        try:
            st = os.stat(name, dir_fd=dfd, follow_symlinks=False)
        except OSError:
            continue
        if stat.S_ISDIR(st.st_mode):
            try:
                sub = _open_dir(dfd, name)
            except (OSError, UnsafePath):
                continue
            try:
                n += _remove_owned_at(sub, uids)
            finally:
                os.close(sub)
            if st.st_uid in uids:
                with contextlib.suppress(OSError):  # not empty: someone else's files are in it
                    os.rmdir(name, dir_fd=dfd)
                    n += 1
        elif st.st_uid in uids:
            with contextlib.suppress(OSError):
                os.unlink(name, dir_fd=dfd)
                n += 1
    return n


def copy_tree(src: str, dst: str) -> None:
    """Copy a guest's directory tree into `dst` (made here) keeping modes, owners and times.

    Links are copied as links, never followed; FIFOs are made again (empty, as a process finds them);
    sockets and devices are left out: a restored process binds its sockets itself, and a guest has no
    business with devices. A hard-linked file becomes separate copies."""
    sfd = os.open(src, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        st = os.fstat(sfd)
        os.mkdir(dst, 0o700)
        dfd = os.open(dst, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
        try:
            _copy_at(sfd, dfd)
            _attrs(dfd, None, st)
        finally:
            os.close(dfd)
    finally:
        os.close(sfd)


def _attrs(dfd: int, name: str | None, st: os.stat_result) -> None:
    """Owner, mode and times of `st` onto `name` in `dfd` (or `dfd` itself), never through a link."""
    if name is None:
        os.fchown(dfd, st.st_uid, st.st_gid)
        os.fchmod(dfd, stat.S_IMODE(st.st_mode))
        os.utime(dfd, ns=(st.st_atime_ns, st.st_mtime_ns))
        return
    os.chown(name, st.st_uid, st.st_gid, dir_fd=dfd, follow_symlinks=False)
    if not stat.S_ISLNK(st.st_mode):
        os.chmod(name, stat.S_IMODE(st.st_mode), dir_fd=dfd)
    os.utime(name, ns=(st.st_atime_ns, st.st_mtime_ns), dir_fd=dfd, follow_symlinks=False)


RACE_TRIES = 3  # an entry that changes kind under the copy this often is refused


def _copy_at(sfd: int, dfd: int) -> None:
    for name in sorted(os.listdir(sfd)):
        err: Exception | None = None
        for attempt in range(RACE_TRIES):
            try:
                st = os.stat(name, dir_fd=sfd, follow_symlinks=False)
            except FileNotFoundError:
                break  # gone since the listing
            try:
                _copy_entry(sfd, dfd, name, st)
                break
            except (UnsafePath, FileNotFoundError, NotADirectoryError, IsADirectoryError) as e:
                err = e
            except OSError as e:
                if e.errno != errno.EINVAL:  # readlink of what is no longer a link
                    raise
                err = e
            _remove_entry(dfd, name)  # what the failed try made
            if attempt == RACE_TRIES - 1:
                raise UnsafePath(f"{name!r} kept changing while it was copied ({err})", path=name)


def _remove_entry(dfd: int, name: str) -> None:
    try:
        os.unlink(name, dir_fd=dfd)
    except IsADirectoryError:
        shutil.rmtree(name, dir_fd=dfd)
    except FileNotFoundError:
        pass


def _copy_entry(sfd: int, dfd: int, name: str, st: os.stat_result) -> None:
    """One entry of a directory being copied, as `st` (its lstat) says it is."""
    mode = st.st_mode
    if stat.S_ISDIR(mode):
        sub = _open_dir(sfd, name)
        try:
            os.mkdir(name, 0o700, dir_fd=dfd)
            out = os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dfd)
            try:
                _copy_at(sub, out)
                _attrs(out, None, os.fstat(sub))
            finally:
                os.close(out)
        finally:
            os.close(sub)
    elif stat.S_ISREG(mode):
        fd = open_beneath(sfd, name, os.O_RDONLY, kinds=REG)
        try:
            out = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600,
                          dir_fd=dfd)
            try:
                _copy_data(fd, out)
                got = os.fstat(fd)
                os.fchown(out, got.st_uid, got.st_gid)
                os.fchmod(out, stat.S_IMODE(got.st_mode))
                os.utime(out, ns=(got.st_atime_ns, got.st_mtime_ns))
            finally:
                os.close(out)
        finally:
            os.close(fd)
    elif stat.S_ISLNK(mode):
        os.symlink(os.readlink(name, dir_fd=sfd), name, dir_fd=dfd)
        _attrs(dfd, name, st)
    elif stat.S_ISFIFO(mode):
        os.mkfifo(name, 0o600, dir_fd=dfd)
        _attrs(dfd, name, st)
    # sockets and devices: left out


def _copy_data(src: int, dst: int) -> None:
    """All of `src` into `dst`, in the kernel where it can (copy_file_range), else through a buffer."""
    while True:
        try:
            n = os.copy_file_range(src, dst, 1 << 30)
        except OSError as e:
            if e.errno not in (errno.EXDEV, errno.EINVAL, errno.EOPNOTSUPP, errno.ENOSYS):
                raise
            break
        if n == 0:
            return
    while block := os.read(src, 1 << 20):
        view = memoryview(block)
        while view:
            view = view[os.write(dst, view):]
