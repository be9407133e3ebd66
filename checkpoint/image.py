"""Checkpoint images: one tar holding CRIU's files (criu/), the workspace directory (work/) and,
last, manifest.json with the workspace's spec, identity, CRIU version, kernel and a sha256 of
every file. Unpacking checks every file against the manifest before anything is restored."""

from __future__ import annotations

import hashlib
import io
import json
import os
import platform
import re
import shutil
import stat
import tarfile
from typing import IO, Any

from xos.errors import InvalidInput

FORMAT = 1
MANIFEST = "manifest.json"
CHUNK = 1 << 20


class ImageInvalid(InvalidInput):
    """A checkpoint image that is corrupt, truncated, tampered with or from an incompatible node."""

    code = "image-invalid"


class _Hashing:
    """A file object that hashes what is read through it."""

    def __init__(self, f: IO[bytes]) -> None:
        self.f = f
        self.h = hashlib.sha256()

    def read(self, n: int = -1) -> bytes:
        b = self.f.read(n)
        self.h.update(b)
        return b


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
                        info = tar.gettarinfo(path, arc)
                        if info.isreg():
                            with open(path, "rb") as f:
                                h = _Hashing(f)
                                tar.addfile(info, h)  # type: ignore[arg-type]
                            files[arc] = h.h.hexdigest()
                        elif info.issym() or info.islnk():
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


def unpack(path: str, dest: str) -> dict[str, Any]:
    """Extract `path` into `dest` (made here) and verify it whole; the manifest, or ImageInvalid."""
    os.makedirs(dest, mode=0o700)
    try:
        with tarfile.open(path, "r:") as tar:
            for m in tar:
                if not (m.isfile() or m.isdir() or m.issym() or m.islnk()):
                    raise ImageInvalid(f"image member {m.name!r} is not a file, directory or link")
                if m.name != MANIFEST and m.name.split("/", 1)[0] not in ("criu", "work"):
                    raise ImageInvalid(f"image member {m.name!r} is outside criu/ and work/")
                tar.extract(m, dest, set_attrs=True, filter="tar")
    except (tarfile.TarError, EOFError, OSError, ValueError) as e:
        raise ImageInvalid(f"image {path} is corrupt or truncated: {e}") from None
    try:
        with open(os.path.join(dest, MANIFEST), "rb") as f:
            manifest = json.load(f)
        files = manifest["files"]
        if manifest.get("format") != FORMAT or not isinstance(files, dict):
            raise ImageInvalid(f"image {path} has manifest format {manifest.get('format')!r}, not {FORMAT}")
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise ImageInvalid(f"image {path} has no readable manifest (truncated?): {e}") from None
    found = set()
    for top in ("criu", "work"):
        for dirpath, _dirs, filenames in os.walk(os.path.join(dest, top)):
            for name in filenames:
                full = os.path.join(dirpath, name)
                if stat.S_ISREG(os.lstat(full).st_mode):
                    found.add(os.path.relpath(full, dest))
    if found != set(files):
        extra, missing = sorted(found - set(files)), sorted(set(files) - found)
        raise ImageInvalid(f"image {path} does not match its manifest: extra {extra[:3]}, missing {missing[:3]}")
    for arc, want in files.items():
        h = hashlib.sha256()
        with open(os.path.join(dest, arc), "rb") as f:
            while b := f.read(CHUNK):
                h.update(b)
        if h.hexdigest() != want:
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
