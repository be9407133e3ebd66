# cython: language_level=3
"""Cgroup counters read through descriptors kept open: one pread per file per sample."""

from libc.errno cimport errno
from posix.fcntl cimport O_RDONLY, O_CLOEXEC, open as c_open
from posix.unistd cimport close, pread

cdef enum:
    BUFSZ = 4096


cdef long long _value(const char *buf, Py_ssize_t n, const char *key, Py_ssize_t klen):
    """The integer after `key ` in a flat-keyed file, or the file's only number if klen is 0."""
    cdef Py_ssize_t i = 0
    cdef long long v = 0
    cdef bint found = klen == 0
    while not found and i < n:
        # at a line start: compare the key and require a following space
        if i + klen < n and buf[i + klen] == b' ':
            found = True
            for j in range(klen):
                if buf[i + j] != key[j]:
                    found = False
                    break
            if found:
                i += klen + 1
                break
        while i < n and buf[i] != b'\n':
            i += 1
        i += 1
    if not found or i >= n:
        return -1
    if buf[i] == b'm':  # "max": no limit
        return -2
    while i < n and b'0' <= buf[i] <= b'9':
        v = v * 10 + (buf[i] - 48)
        i += 1
    return v


cdef class Counters:
    """A fixed set of (file, key) counters of one cgroup; read() samples them all."""

    cdef list _fds
    cdef list _keys

    def __cinit__(self):
        self._fds = []
        self._keys = []

    def __init__(self, specs):
        """specs: iterable of (path, key); key is b"" for single-value files."""
        cdef int fd
        cdef bytes bpath
        try:
            for path, key in specs:
                bpath = path.encode() if isinstance(path, str) else path
                fd = c_open(bpath, O_RDONLY | O_CLOEXEC)
                if fd < 0:
                    raise OSError(errno, "cannot open cgroup file", path)
                self._fds.append(fd)
                self._keys.append(key.encode() if isinstance(key, str) else key)
        except BaseException:
            self.close()
            raise

    def read(self):
        """Sample every counter: a tuple of ints; -1 when a key is absent, -2 for "max"."""
        cdef char buf[BUFSZ]
        cdef Py_ssize_t n
        cdef int fd
        cdef bytes key
        out = []
        for i in range(len(self._fds)):
            fd = self._fds[i]
            key = self._keys[i]
            n = pread(fd, buf, BUFSZ - 1, 0)
            if n < 0:
                raise OSError(errno, "cannot read cgroup file")
            out.append(_value(buf, n, key, len(key)))
        return tuple(out)

    def close(self):
        """Release the descriptors."""
        for fd in self._fds:
            close(fd)
        self._fds = []
        self._keys = []

    def __dealloc__(self):
        for fd in self._fds:
            close(fd)


def read_many(list counter_sets):
    """Sample several Counters in one call: a list of tuples, in order."""
    cdef Counters c
    out = []
    for c in counter_sets:
        out.append(c.read())
    return out
