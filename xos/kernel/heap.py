"""Keep large buffers in the heap: glibc otherwise maps and unmaps every buffer over 128 KiB.

Each such buffer is fresh pages, and page faults made a copy into fresh memory many times slower than
into reused heap memory (DEVELOPERS.md, "Measurements behind the code"). The data path (OSDs, the
FUSE client) moves 1 MiB objects all day, so it keeps its freed memory for the next one.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging

log = logging.getLogger(__name__)

M_TRIM_THRESHOLD = -1
M_TOP_PAD = -2
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD_MAX = 32 << 20  # glibc's ceiling on 64-bit


def keep_buffers(pad: int = 64 << 20) -> bool:
    """Serve allocations up to 32 MiB from the heap and keep `pad` bytes of freed heap; whether glibc agreed."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # not glibc: nothing to tune
        return False
    ok = bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_MAX)) and bool(mallopt(M_TRIM_THRESHOLD, 4 * pad))
    ok = bool(mallopt(M_TOP_PAD, pad)) and ok
    if not ok:
        log.info("glibc refused the heap settings; large buffers stay mmap'd")
    return ok
