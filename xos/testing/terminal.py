"""A pseudo-terminal a test gives a child as its stderr, to see what it draws only on a terminal."""

from __future__ import annotations

import os
import threading


class Terminal:
    """A pseudo-terminal for a child's stderr: what it shows is read as it comes (a progress bar is only
    drawn where stderr is a terminal). Give the child `slave`, then call `started()`."""

    def __init__(self) -> None:
        self.master, self.slave = os.openpty()
        self._shown: list[bytes] = []
        self._reader = threading.Thread(target=self._read, daemon=True)

    def started(self) -> None:
        """The child holds its side now: close ours, so the reader ends when the child does."""
        os.close(self.slave)
        self.slave = -1
        self._reader.start()

    def _read(self) -> None:
        while True:
            try:
                chunk = os.read(self.master, 4096)
            except OSError:  # EIO: the last holder of the other side closed it
                return
            if not chunk:
                return
            self._shown.append(chunk)

    def shown(self) -> str:
        """What the terminal showed so far."""
        return b"".join(self._shown).decode(errors="replace")

    def close(self) -> str:
        """Once the child is gone: everything it showed."""
        if self.slave < 0:
            self._reader.join(10)
        else:
            os.close(self.slave)
        os.close(self.master)
        return self.shown()
