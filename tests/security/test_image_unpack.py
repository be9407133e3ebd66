"""Image unpacking accepts regular files, directories and links kept as data, all beneath the destination:
no hard links, devices or FIFOs, nothing written through a link (tarfile's filter="tar" allows links out)."""

from __future__ import annotations

import io
import os
import tarfile

import pytest

from xos.checkpoint import image


def _tar(path: str, members: list[tuple[tarfile.TarInfo, bytes | None]]) -> str:
    with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as t:
        for info, data in members:
            t.addfile(info, io.BytesIO(data) if data is not None else None)
    return path


def _member(name: str, kind: bytes = tarfile.REGTYPE, data: bytes | None = None, link: str = "") -> tuple[
        tarfile.TarInfo, bytes | None]:
    info = tarfile.TarInfo(name)
    info.type, info.linkname, info.mode = kind, link, 0o644
    if data is not None:
        info.size = len(data)
    return info, data


@pytest.mark.parametrize("members", [
    [_member("work/x", tarfile.SYMTYPE, link="/etc"), _member("work/x/owned", data=b"root's now")],
    [_member("work/x", tarfile.SYMTYPE, link="../../.."), _member("work/x/owned", data=b"root's now")],
    [_member("work/shadow", tarfile.LNKTYPE, link="/etc/shadow")],
    [_member("work/null", tarfile.CHRTYPE)],
    [_member("work/fifo", tarfile.FIFOTYPE)],
    [_member("work/../../owned", data=b"out")],
    [_member("/owned", data=b"out")],
])
def test_unpacking_refuses_what_reaches_out(tmp_path: object,
                                            members: list[tuple[tarfile.TarInfo, bytes | None]]) -> None:
    """Image unpacking: links out, hard links, devices, FIFOs and escaping names are refused."""
    dest = os.path.join(str(tmp_path), "unpacked")
    tar = _tar(os.path.join(str(tmp_path), "image.tar"), members)
    with pytest.raises(image.ImageInvalid) as e:
        image.unpack(tar, dest)
    assert e.value.code in ("image-refused", "image-invalid")
    assert not os.path.exists("/etc/owned") and not os.path.exists(os.path.join(str(tmp_path), "owned"))


def test_links_in_the_workspace_directory_are_kept_as_data(tmp_path: object) -> None:
    """A guest's absolute link (a virtualenv's python) travels as a link and is never followed here."""
    dest = os.path.join(str(tmp_path), "unpacked")
    tar = _tar(os.path.join(str(tmp_path), "image.tar"), [
        _member("work/venv-python", tarfile.SYMTYPE, link="/usr/bin/python3"),
        _member("manifest.json", data=b'{"format": 1, "files": {}}'),
    ])
    image.unpack(tar, dest)
    assert os.readlink(os.path.join(dest, "work", "venv-python")) == "/usr/bin/python3"
