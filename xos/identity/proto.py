"""The identity socket's wire format, small enough for a C client in a few dozen lines (pam/xos_proto.h).

A message is a 4-byte big-endian length of what follows, a 2-byte version, a 2-byte op (requests)
or status (replies), then fields, each a 4-byte big-endian length and that many bytes.
"""

from __future__ import annotations

import struct
from enum import IntEnum

VERSION = 1
MAX_MESSAGE = 65536
MAX_FIELDS = 64
HEAD = struct.Struct(">IHH")
LEN = struct.Struct(">I")


class Op(IntEnum):
    """Requests; keep in sync with pam/xos_proto.h."""

    AUTH = 1  # account, service, credential -> account entry
    ACCOUNT = 2  # account -> ok or denied
    SESSION = 3  # account, pid -> credential (for the session keyring)
    GETPWNAM = 4  # name -> passwd entry
    GETPWUID = 5  # uid -> passwd entry
    GETGRNAM = 6  # name -> group entry
    GETGRGID = 7  # gid -> group entry
    PWENT = 8  # index -> passwd entry
    GRENT = 9  # index -> group entry


class Status(IntEnum):
    """Replies; keep in sync with pam/xos_proto.h."""

    OK = 0
    NOTFOUND = 1
    DENIED = 2
    BADREQ = 3
    ERROR = 4


class ProtocolError(Exception):
    """A message that is not what the protocol says."""


def encode(code: int, fields: list[bytes]) -> bytes:
    """One message."""
    body = b"".join(LEN.pack(len(f)) + f for f in fields)
    msg = HEAD.pack(4 + len(body), VERSION, code) + body
    if len(msg) > MAX_MESSAGE:
        raise ProtocolError(f"message of {len(msg)} bytes is over {MAX_MESSAGE}")
    return msg


def decode_body(data: bytes) -> tuple[int, int, list[bytes]]:
    """(version, code, fields) of what follows a message's length."""
    if len(data) < 4:
        raise ProtocolError("message shorter than its header")
    version, code = struct.unpack_from(">HH", data)
    fields: list[bytes] = []
    pos = 4
    while pos < len(data):
        if pos + 4 > len(data) or len(fields) >= MAX_FIELDS:
            raise ProtocolError("truncated or too many fields")
        (n,) = LEN.unpack_from(data, pos)
        pos += 4
        if pos + n > len(data):
            raise ProtocolError("field runs past the end of the message")
        fields.append(data[pos:pos + n])
        pos += n
    return version, code, fields


def passwd_fields(name: str, uid: int, gid: int, gecos: str, home: str, shell: str) -> list[bytes]:
    """A passwd entry as reply fields."""
    return [name.encode(), str(uid).encode(), str(gid).encode(), gecos.encode(), home.encode(), shell.encode()]


def group_fields(name: str, gid: int, members: list[str]) -> list[bytes]:
    """A group entry as reply fields."""
    return [name.encode(), str(gid).encode(), *[m.encode() for m in members]]
