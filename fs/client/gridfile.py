"""A grid file as a Python file object (`Client.open`), for programs that do not want a mount."""

from __future__ import annotations

import io
from typing import TYPE_CHECKING, Any

from xos.fs.client.open import Open

if TYPE_CHECKING:
    from xos.fs.client.client import Client


class GridFile(io.RawIOBase):
    """A file of the grid file system as a Python binary file."""

    def __init__(self, client: Client, st: Open) -> None:
        self._c = client
        self._st = st
        self._pos = 0

    def readable(self) -> bool:
        return True

    def writable(self) -> bool:
        return self._st.write

    def seekable(self) -> bool:
        return True

    def readinto(self, b: Any) -> int:
        data = self._c.read(self._st, len(b), self._pos)
        b[:len(data)] = data
        self._pos += len(data)
        return len(data)

    def write(self, b: Any) -> int:
        n = self._c.write(self._st, bytes(b), self._pos)
        self._pos += n
        return n

    def seek(self, pos: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: self._st.size}[whence]
        self._pos = base + pos
        return self._pos

    def tell(self) -> int:
        return self._pos

    def flush(self) -> None:
        if not self.closed and self._st.write:
            self._c.flush(self._st)

    def fsync(self) -> None:
        self._c.fsync(self._st)

    def close(self) -> None:
        if not self.closed:
            try:
                self._c.release(self._st)
            finally:
                super().close()
