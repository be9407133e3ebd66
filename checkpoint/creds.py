"""The identities a CRIU image asks for: every task's credentials, read from its core images.

CRIU restores each task with the uids, gids, groups and capabilities its core-PID.img names. An
image from a peer is data someone else wrote, so before CRIU reads it these are checked against the
identity this node maps for the image's owner: nothing in it may run as anyone else, or hold a
capability. The images are protocol buffers (criu/images/core.proto, creds.proto); only the few
fields needed here are decoded, by hand, so a node needs neither crit nor protobuf.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Iterator
from dataclasses import dataclass

from xos.checkpoint.image import ImageInvalid, ImageRefused

IMG_COMMON_MAGIC = 0x54564319
CORE_MAGIC = 0x55053847
MAX_ENTRY = 1 << 24

# Field numbers: core_entry.thread_core = 5, thread_core_entry.creds = 10, creds_entry's own below.
CORE_THREAD_CORE, THREAD_CORE_CREDS = 5, 10
IDS = {1: "uid", 2: "gid", 3: "euid", 4: "egid", 5: "suid", 6: "sgid", 7: "fsuid", 8: "fsgid"}
CAPS = {9: "inheritable", 10: "permitted", 11: "effective", 19: "ambient"}
GROUPS = 14


@dataclass
class TaskCreds:
    """What one task of the image would run as."""

    image: str
    ids: dict[str, int]
    caps: dict[str, int]  # each set as one number, bit N for capability N
    groups: list[int]


def _varint(buf: bytes, i: int) -> tuple[int, int]:
    out = shift = 0
    while True:
        if i >= len(buf) or shift > 63:
            raise ImageInvalid("a CRIU core image is truncated or malformed")
        b = buf[i]
        i += 1
        out |= (b & 0x7F) << shift
        if b < 0x80:
            return out, i
        shift += 7


def _fields(buf: bytes) -> Iterator[tuple[int, int, int | bytes]]:
    """(field number, wire type, value) of a protobuf message; length-delimited values as bytes."""
    i = 0
    while i < len(buf):
        key, i = _varint(buf, i)
        field, wire = key >> 3, key & 7
        if wire == 0:
            value, i = _varint(buf, i)
            yield field, wire, value
        elif wire == 2:
            n, i = _varint(buf, i)
            if i + n > len(buf):
                raise ImageInvalid("a CRIU core image is truncated or malformed")
            yield field, wire, buf[i:i + n]
            i += n
        elif wire == 5:
            i += 4
        elif wire == 1:
            i += 8
        else:
            raise ImageInvalid(f"a CRIU core image has a field of wire type {wire}")


def _uint32s(wire: int, value: int | bytes) -> list[int]:
    """A repeated uint32, packed or not."""
    if wire == 0:
        assert isinstance(value, int)
        return [value]
    assert isinstance(value, bytes)
    out, i = [], 0
    while i < len(value):
        v, i = _varint(value, i)
        out.append(v)
    return out


def _creds(name: str, entry: bytes) -> TaskCreds | None:
    for f, w, v in _fields(entry):
        if f == CORE_THREAD_CORE and w == 2:
            assert isinstance(v, bytes)
            for f2, w2, v2 in _fields(v):
                if f2 == THREAD_CORE_CREDS and w2 == 2:
                    assert isinstance(v2, bytes)
                    return _parse_creds(name, v2)
    return None


def _parse_creds(name: str, buf: bytes) -> TaskCreds:
    ids: dict[str, int] = {}
    words: dict[str, list[int]] = {k: [] for k in CAPS.values()}
    groups: list[int] = []
    for f, w, v in _fields(buf):
        if f in IDS and w == 0:
            assert isinstance(v, int)
            ids[IDS[f]] = v
        elif f in CAPS:
            words[CAPS[f]] += _uint32s(w, v)
        elif f == GROUPS:
            groups += _uint32s(w, v)
    if set(ids) != set(IDS.values()):
        raise ImageInvalid(f"CRIU image {name} names no complete credentials")
    caps = {k: sum(word << (32 * n) for n, word in enumerate(ws)) for k, ws in words.items()}
    return TaskCreds(name, ids, caps, groups)


def task_creds(criu_dir: str) -> list[TaskCreds]:
    """The credentials of every task (every thread's core image) of the CRIU images in `criu_dir`."""
    out = []
    for name in sorted(os.listdir(criu_dir)):
        if not (name.startswith("core-") and name.endswith(".img")):
            continue
        with open(os.path.join(criu_dir, name), "rb") as f:
            data = f.read(MAX_ENTRY)
        if len(data) < 12:
            raise ImageInvalid(f"CRIU image {name} is truncated")
        common, magic, size = struct.unpack_from("<III", data)
        if common != IMG_COMMON_MAGIC or magic != CORE_MAGIC or size > len(data) - 12:
            raise ImageInvalid(f"CRIU image {name} is not a core image")
        creds = _creds(name, data[12:12 + size])
        if creds is None:
            raise ImageInvalid(f"CRIU image {name} names no credentials")
        out.append(creds)
    if not out:
        raise ImageInvalid("the image holds no task")
    return out


def check(criu_dir: str, uid: int, gid: int) -> None:
    """ImageRefused unless every task of the image runs as `uid`:`gid` (its only group) with no capability."""
    for t in task_creds(criu_dir):
        ids = {k: v for k, v in t.ids.items() if v != (uid if "uid" in k else gid)}
        if ids:
            raise ImageRefused(f"a task of the image ({t.image}) asks for {ids}, not the owner's {uid}:{gid}")
        caps = {k: hex(v) for k, v in t.caps.items() if v}
        if caps:
            raise ImageRefused(f"a task of the image ({t.image}) asks for capabilities {caps}")
        if set(t.groups) - {gid}:
            raise ImageRefused(f"a task of the image ({t.image}) asks for groups {sorted(set(t.groups) - {gid})}")
