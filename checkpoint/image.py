"""Checkpoint images: a directory holding CRIU's files (criu/), the workspace directory (work/) and
manifest.json with the workspace's spec, identity, CRIU version, kernel and a sha256 of every
file, written last (and the directory renamed into place), so a half-written image never looks whole.

CRIU dumps straight into the image and restores straight from it, and nothing is copied on
the way: a tar in between cost 3-6 times bare CRIU (bench/checkpoint.py). For the wire, the
same directory travels as a tar (`pack`/`unpack`), checked against the same manifest."""

from __future__ import annotations

import contextlib
import errno
import hashlib
import io
import json
import mmap
import os
import platform
import re
import shutil
import tarfile
import zlib
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import IO, Any

from xos._native._sys import ffi, lib
from xos.errors import InvalidInput
from xos.kernel import safepath

FORMAT = 1
MANIFEST = "manifest.json"
CHUNK = 4 << 20


class ImageInvalid(InvalidInput):
    """A checkpoint image that is corrupt, truncated, tampered with or from an incompatible node."""

    code = "image-invalid"


class ImageRefused(ImageInvalid):
    """A checkpoint image that asks for more than its owner may have: links out, devices, root's
    identity or capabilities for its tasks."""

    code = "image-refused"


class _Checksum:
    """What _checksum computes, fed block by block as a stream passes (blocks of exactly CHUNK bytes)."""

    def __init__(self) -> None:
        self.crcs: list[bytes] = []
        self.pending = b""

    def update(self, data: bytes | memoryview) -> None:
        view = memoryview(data)
        if self.pending:  # top the pending block up first
            need = CHUNK - len(self.pending)
            self.pending += bytes(view[:need])
            view = view[need:]
            if len(self.pending) < CHUNK:
                return
            self.crcs.append(_crc(self.pending).to_bytes(4, "big"))
            self.pending = b""
        while len(view) >= CHUNK:  # whole blocks straight from the caller's buffer
            self.crcs.append(_crc(view[:CHUNK]).to_bytes(4, "big"))
            view = view[CHUNK:]
        self.pending = bytes(view)

    def hexdigest(self) -> str:
        crcs = self.crcs + ([_crc(self.pending).to_bytes(4, "big")] if self.pending else [])
        return TAG + hashlib.sha256(b"".join(crcs)).hexdigest()


def _add_file(tar: tarfile.TarFile, info: tarfile.TarInfo, path: str) -> str:
    """Append a regular file to `tar` in large blocks, hashing as it goes; its sha256.

    tarfile copies in 16 KiB steps through Python, about a third as fast."""
    tar.addfile(info)  # the header only
    h = _Checksum()
    buf = bytearray(CHUNK)
    view = memoryview(buf)
    out = tar.fileobj
    assert out is not None
    left = info.size
    with open(path, "rb", buffering=0) as f:
        while left > 0:
            n = f.readinto(view[: min(CHUNK, left)])
            if not n:
                raise OSError(f"{path} shrank while being packed")
            h.update(view[:n])
            out.write(view[:n])  # type: ignore[arg-type]  # any buffer will do; typeshed says bytes
            left -= n
    pad = -info.size % tarfile.BLOCKSIZE
    out.write(b"\0" * pad)
    tar.offset += info.size + pad
    return h.hexdigest()


def _tarinfo(tar: tarfile.TarFile, path: str, arc: str) -> tarfile.TarInfo:
    """The header of `path`; a second name of a file already in the tar is its data again, not a hard
    link (unpacking refuses links between members)."""
    tar.inodes.clear()  # type: ignore[attr-defined]  # tarfile's own record of names seen by inode
    return tar.gettarinfo(path, arc)


def _member_parent(dest_fd: int, name: str) -> tuple[int, str]:
    """The directory of member `name` beneath `dest_fd`, made where missing, never through a link; (its
    descriptor, the last component)."""
    parts = name.split("/")
    if not name or name.startswith("/") or any(p in ("", ".", "..") for p in parts):
        raise ImageInvalid(f"image member {name!r} is not a plain relative path")
    at = os.dup(dest_fd)
    try:
        for part in parts[:-1]:
            with contextlib.suppress(FileExistsError):
                os.mkdir(part, 0o700, dir_fd=at)
            nxt = safepath.open_beneath(at, part, os.O_RDONLY | os.O_DIRECTORY, kinds=safepath.DIR)
            os.close(at)
            at = nxt
    except BaseException:
        os.close(at)
        raise
    return at, parts[-1]


def _extract_file(tar: tarfile.TarFile, m: tarfile.TarInfo, dest_fd: int) -> str:
    """Write a regular member beneath `dest_fd` in large blocks, hashing as it goes; its sha256."""
    at, last = _member_parent(dest_fd, m.name)
    try:
        fd = os.open(last, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600, dir_fd=at)
    finally:
        os.close(at)
    src = tar.extractfile(m)
    assert src is not None
    h = _Checksum()
    with open(fd, "wb", buffering=0) as out:
        while block := src.read(CHUNK):
            h.update(block)
            out.write(block)
        os.fchown(fd, m.uid, m.gid)
        os.fchmod(fd, m.mode & 0o7777 & ~0o6000)  # no set-id bits from an image
        os.utime(fd, (m.mtime, m.mtime))
    return h.hexdigest()


def _extract_other(m: tarfile.TarInfo, dest_fd: int) -> None:
    """A directory or symbolic link member beneath `dest_fd`; the link's target is kept as data and
    never followed here (a guest's directory may hold absolute links, such as a virtualenv's)."""
    at, last = _member_parent(dest_fd, m.name)
    try:
        if m.isdir():
            with contextlib.suppress(FileExistsError):
                os.mkdir(last, 0o700, dir_fd=at)
            fd = safepath.open_beneath(at, last, os.O_RDONLY | os.O_DIRECTORY, kinds=safepath.DIR)
            try:
                os.fchown(fd, m.uid, m.gid)
                os.fchmod(fd, m.mode & 0o7777 & ~0o6000)
            finally:
                os.close(fd)
        else:
            if m.name.startswith("criu/") and (os.path.isabs(m.linkname) or m.name != "criu/parent"):
                raise ImageInvalid(f"image member {m.name!r} is a link inside CRIU's files")
            os.symlink(m.linkname, last, dir_fd=at)
            os.chown(last, m.uid, m.gid, dir_fd=at, follow_symlinks=False)
    finally:
        os.close(at)


def seal(image: str, manifest: dict[str, Any]) -> dict[str, Any]:
    """Checksum every file of the image directory and write its manifest, last; the manifest written.

    The files are read once more, from the page cache, after CRIU wrote them. Following CRIU while it
    wrote (a thread checksumming each block as it landed) competed with it on two cores: 256 MiB
    dumped in 1.21-1.38 times bare CRIU that way, 1.06 with CRC-32C afterwards."""
    files = {}
    for arc, full in _regular_files(image):
        files[arc] = _checksum(full)
    manifest = {**manifest, "format": FORMAT, "files": files}
    tmp = os.path.join(image, MANIFEST + ".tmp")
    with open(tmp, "w") as f:
        json.dump(manifest, f, indent=1, sort_keys=True)
    os.replace(tmp, os.path.join(image, MANIFEST))
    return manifest


def verify(image: str) -> dict[str, Any]:
    """The manifest of the image directory once every file matches it; ImageInvalid otherwise."""
    if not os.path.isdir(image):
        raise ImageInvalid(f"{image} is not a checkpoint image (a directory with a manifest)")
    manifest = manifest_of(image)
    found = dict(_regular_files(image))
    files = manifest["files"]
    if set(found) != set(files):
        extra, missing = sorted(set(found) - set(files)), sorted(set(files) - set(found))
        raise ImageInvalid(f"image {image} does not match its manifest: extra {extra[:3]}, missing {missing[:3]}")
    for arc, want in files.items():
        if _checksum(found[arc], want.partition(":")[0] + ":") != want:
            raise ImageInvalid(f"image {image}: {arc} does not match its checksum (corrupt or tampered with)")
    return manifest


def manifest_of(image: str) -> dict[str, Any]:
    try:
        with open(os.path.join(image, MANIFEST), "rb") as f:
            manifest = json.load(f)
        if manifest.get("format") != FORMAT or not isinstance(manifest.get("files"), dict):
            raise ImageInvalid(f"image {image} has manifest format {manifest.get('format')!r}, not {FORMAT}")
    except (OSError, ValueError, AttributeError) as e:
        raise ImageInvalid(f"image {image} has no readable manifest (unfinished or truncated?): {e}") from None
    return dict(manifest)


def _regular_files(image: str) -> list[tuple[str, str]]:
    out = []
    for top in ("criu", "work"):
        for dirpath, _dirs, filenames in os.walk(os.path.join(image, top)):
            for name in filenames:
                full = os.path.join(dirpath, name)
                if os.path.isfile(full) and not os.path.islink(full):
                    out.append((os.path.relpath(full, image), full))
    return sorted(out)


TAG = "crc32cx4m:"  # CRC-32C of each 4 MiB block, SHA-256 over them
OLD_TAG = "crc32x4m:"  # the same with zlib's CRC-32, as images made before it were sealed


def _crc(data: bytes | memoryview) -> int:
    """CRC-32C of one block."""
    out = ffi.new("uint32_t[1]")
    lib.xos_crc32c_blocks(ffi.from_buffer(data), len(data), max(len(data), 1), out)
    return int(out[0])


_checksummers: ThreadPoolExecutor | None = None


def _pool() -> ThreadPoolExecutor:
    """Two threads for the CRCs of large files, made once: a pool per file costs its start-up each time,
    and an image has dozens of files."""
    global _checksummers
    if _checksummers is None:
        _checksummers = ThreadPoolExecutor(2, thread_name_prefix="xos-crc")
    return _checksummers


def _checksum(path: str, tag: str = TAG) -> str:
    """The file's checksum: the CRC of each 4 MiB block, then SHA-256 over them.

    A whole-file SHA-256 made a checkpoint 2.5 times bare CRIU (DEVELOPERS.md); CRCs of blocks on two
    threads, CRC-32C with the SSE4.2 instruction, three blocks at once per thread, release the GIL and
    take a fraction of that. Any flipped or lost byte still changes the result. The
    manifest is not signed, so a stronger hash would not stop a forger anyway: it would only have to
    rewrite the manifest too."""
    crcs: list[int] = []
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        if size:
            # Straight from the page cache: a read() copy cost more than the CRCs themselves.
            with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as m:
                view = memoryview(m)
                try:
                    if tag == OLD_TAG:
                        crcs = [zlib.crc32(view[i:i + CHUNK]) for i in range(0, size, CHUNK)]
                    else:
                        nblocks = -(-size // CHUNK)
                        out = ffi.new("uint32_t[]", nblocks)
                        buf = ffi.from_buffer(view)
                        if nblocks == 1:  # most of an image's files: a hand-off would cost more than the CRC
                            lib.xos_crc32c_blocks(buf, size, CHUNK, out)
                        else:
                            half = (nblocks + 1) // 2 * CHUNK  # two threads, a half each, on block bounds
                            parts = [(0, min(half, size)), (half, size - half)] if size > half else [(0, size)]
                            for f_ in [_pool().submit(lib.xos_crc32c_blocks, buf + start, n, CHUNK,
                                                      out + start // CHUNK) for start, n in parts]:
                                f_.result()
                        crcs = list(out)
                        del buf
                finally:
                    view.release()
    digest = hashlib.sha256(b"".join(c.to_bytes(4, "big") for c in crcs))
    return tag + digest.hexdigest()


def copy_tree(src: str, dst: str) -> None:
    """Copy a directory tree keeping modes, owners and links, never following one (a workspace
    directory into an image, or back): see `safepath.copy_tree`."""
    safepath.copy_tree(src, dst)


def move_tree(src: str, dst: str) -> None:
    """Move a directory tree, keeping owners and modes also across file systems (tmpfs scratch to disk)."""
    try:
        os.rename(src, dst)
    except OSError as e:
        if e.errno != errno.EXDEV:
            raise
        copy_tree(src, dst)
        shutil.rmtree(src)


def pack(out: str, criu_dir: str, work_dir: str | None, manifest: dict[str, Any]) -> dict[str, Any]:
    """Write the image `out` (atomically: a .part renamed at the end); the manifest written."""
    files: dict[str, str] = {}
    tmp = out + ".part"
    try:
        with tarfile.open(tmp, "w", format=tarfile.PAX_FORMAT) as tar:
            for prefix, top in (("criu", criu_dir), ("work", work_dir or "")):
                if not top:
                    continue
                for dirpath, dirnames, filenames in os.walk(top):
                    dirnames.sort()
                    rel = os.path.relpath(dirpath, top)
                    arc_dir = prefix if rel == "." else f"{prefix}/{rel}"
                    tar.add(dirpath, arc_dir, recursive=False)
                    for name in sorted(filenames):
                        path = os.path.join(dirpath, name)
                        arc = f"{arc_dir}/{name}"
                        info = _tarinfo(tar, path, arc)
                        if info.isreg():
                            files[arc] = _add_file(tar, info, path)
                        elif info.issym():
                            tar.addfile(info)
                        # sockets, fifos and devices are not data: CRIU recreates what processes hold
            manifest = {**manifest, "format": FORMAT, "files": files}
            data = json.dumps(manifest, indent=1, sort_keys=True).encode()
            info = tarfile.TarInfo(MANIFEST)
            info.size = len(data)
            info.mode = 0o600
            tar.addfile(info, io.BytesIO(data))
        os.replace(tmp, out)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return manifest


def stream(image: str) -> Iterator[bytes]:
    """A sealed image directory as a tar, made block by block as it is read: for the wire, with no file
    in between (a 1 GiB image spent a second being packed and as long being written at each end)."""
    manifest_of(image)
    maker = tarfile.open(fileobj=io.BytesIO(), mode="w", format=tarfile.PAX_FORMAT)  # for gettarinfo only
    total = 0

    def header(info: tarfile.TarInfo) -> bytes:
        nonlocal total
        buf = info.tobuf(tarfile.PAX_FORMAT, "utf-8", "surrogateescape")
        total += len(buf)
        return buf

    for prefix in ("criu", "work"):
        top = os.path.join(image, prefix)
        for dirpath, dirnames, filenames in os.walk(top):
            dirnames.sort()
            rel = os.path.relpath(dirpath, top)
            arc_dir = prefix if rel == "." else f"{prefix}/{rel}"
            yield header(maker.gettarinfo(dirpath, arc_dir))
            for name in sorted(filenames):
                path = os.path.join(dirpath, name)
                info = _tarinfo(maker, path, f"{arc_dir}/{name}")
                if not (info.isreg() or info.issym()):
                    continue
                yield header(info)
                if info.isreg():
                    with open(path, "rb", buffering=0) as f:
                        left = info.size
                        while left > 0 and (block := f.read(min(CHUNK, left))):
                            left -= len(block)
                            yield block
                    if left:
                        raise OSError(f"{path} shrank while being sent")
                    pad = -info.size % tarfile.BLOCKSIZE
                    total += info.size + pad
                    yield b"\0" * pad
    with open(os.path.join(image, MANIFEST), "rb") as mf:
        data = mf.read()
    info = tarfile.TarInfo(MANIFEST)
    info.size, info.mode = len(data), 0o600
    yield header(info) + data + b"\0" * (-len(data) % tarfile.BLOCKSIZE)
    total += len(data) + -len(data) % tarfile.BLOCKSIZE + 2 * tarfile.BLOCKSIZE
    yield b"\0" * (2 * tarfile.BLOCKSIZE + -total % tarfile.RECORDSIZE)


def unpack(path: str | IO[bytes], dest: str) -> dict[str, Any]:
    """Extract the image tar `path` (a file, or a stream read to its end) into `dest` (made here) and
    verify it whole; the manifest, or ImageInvalid."""
    os.makedirs(dest, mode=0o700)
    got: dict[str, str] = {}
    dest_fd = os.open(dest, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        opened = tarfile.open(path, "r:") if isinstance(path, str) else tarfile.open(fileobj=path, mode="r|")
        with opened as tar:
            for m in tar:
                # Regular files, directories and links to names only: no hard links, devices or FIFOs.
                if not (m.isreg() or m.isdir() or m.issym()):
                    raise ImageRefused(f"image member {m.name!r} is not a file, directory or symbolic link")
                if m.name not in (MANIFEST, "criu", "work") and m.name.split("/", 1)[0] not in ("criu", "work"):
                    raise ImageInvalid(f"image member {m.name!r} is outside criu/ and work/")
                if m.isreg() and m.name != MANIFEST:
                    got[m.name] = _extract_file(tar, m, dest_fd)
                elif m.isreg():
                    _extract_file(tar, m, dest_fd)
                else:
                    _extract_other(m, dest_fd)
    except safepath.UnsafePath as e:
        raise ImageRefused(f"image {path} writes through a link: {e.message}") from None
    except (tarfile.TarError, EOFError, OSError, ValueError) as e:
        raise ImageInvalid(f"image {path} is corrupt or truncated: {e}") from None
    finally:
        os.close(dest_fd)
    try:
        with open(os.path.join(dest, MANIFEST), "rb") as f:
            manifest = json.load(f)
        files = manifest["files"]
        if manifest.get("format") != FORMAT or not isinstance(files, dict):
            raise ImageInvalid(f"image {path} has manifest format {manifest.get('format')!r}, not {FORMAT}")
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise ImageInvalid(f"image {path} has no readable manifest (truncated?): {e}") from None
    if set(got) != set(files):
        extra, missing = sorted(set(got) - set(files)), sorted(set(files) - set(got))
        raise ImageInvalid(f"image {path} does not match its manifest: extra {extra[:3]}, missing {missing[:3]}")
    for arc, want in files.items():
        if want.startswith(OLD_TAG):  # sealed before CRC-32C: checked again the old way
            got[arc] = _checksum(os.path.join(dest, arc), OLD_TAG)
        if got[arc] != want:
            raise ImageInvalid(f"image {path}: {arc} does not match its checksum (corrupt or tampered with)")
    return dict(manifest)


def check_compatible(manifest: dict[str, Any], criu_version: str) -> None:
    """Refuse an image this node cannot restore: another architecture, a newer CRIU or kernel."""
    arch = platform.machine()
    if manifest.get("arch") != arch:
        raise ImageInvalid(f"image is for {manifest.get('arch')!r}, this node is {arch}")
    if _version(str(manifest.get("criu", ""))) > _version(criu_version):
        raise ImageInvalid(f"image was made by CRIU {manifest.get('criu')}, newer than this node's {criu_version}")
    if _version(str(manifest.get("kernel", "")))[:2] > _version(platform.release())[:2]:
        raise ImageInvalid(f"image was made on kernel {manifest.get('kernel')}, newer than this node's "
                           f"{platform.release()}")


def _version(v: str) -> tuple[int, ...]:
    parts = []
    for p in v.split("."):
        m = re.match(r"\d+", p)
        if m is None:
            break
        parts.append(int(m.group()))
        if m.end() < len(p):  # "44-fc": the rest is a suffix
            break
    return tuple(parts) or (0,)


def discard(path: str) -> None:
    """Remove an unpacked image directory."""
    shutil.rmtree(path, ignore_errors=True)
