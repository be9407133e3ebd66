"""Kernel keyrings through raw add_key(2)/keyctl(2): where a session's credential will live."""

from __future__ import annotations

import os

from xos._native._sys import ffi, lib

SESSION = lib.KEY_SPEC_SESSION_KEYRING
PROCESS = lib.KEY_SPEC_PROCESS_KEYRING
USER = lib.KEY_SPEC_USER_KEYRING


def _u(value: int) -> int:
    # Special keyring ids are negative; keyctl(2) takes them in unsigned long registers.
    return value & 0xFFFFFFFFFFFFFFFF


def _check(rc: int) -> int:
    if rc < 0:
        err = ffi.errno
        raise OSError(err, os.strerror(err))
    return int(rc)


def join_session(name: str | None = None) -> int:
    """Join (or create) a session keyring for this process; its serial."""
    arg = ffi.new("char[]", name.encode()) if name else ffi.NULL
    return _check(lib.xos_keyctl(lib.KEYCTL_JOIN_SESSION_KEYRING, int(ffi.cast("uintptr_t", arg)), 0, 0, 0))


def add(description: str, payload: bytes, keyring: int = SESSION, kind: str = "user") -> int:
    """Add a key to `keyring`; its serial."""
    return _check(lib.xos_add_key(kind.encode(), description.encode(), payload, len(payload), keyring))


def read(serial: int) -> bytes:
    """The payload of a key this process may read."""
    size = _check(lib.xos_keyctl(lib.KEYCTL_READ, serial, 0, 0, 0))
    buf = ffi.new("char[]", max(size, 1))
    got = _check(lib.xos_keyctl(lib.KEYCTL_READ, serial, int(ffi.cast("uintptr_t", buf)), size, 0))
    return ffi.buffer(buf, min(got, size))[:]


def search(description: str, keyring: int = SESSION, kind: str = "user") -> int:
    """The serial of a key found from `keyring` down."""
    k, d = ffi.new("char[]", kind.encode()), ffi.new("char[]", description.encode())
    return _check(lib.xos_keyctl(lib.KEYCTL_SEARCH, _u(keyring), int(ffi.cast("uintptr_t", k)),
                                 int(ffi.cast("uintptr_t", d)), 0))


def revoke(serial: int) -> None:
    """Revoke a key: every later read fails with EKEYREVOKED."""
    _check(lib.xos_keyctl(lib.KEYCTL_REVOKE, serial, 0, 0, 0))
