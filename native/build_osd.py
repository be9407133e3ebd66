"""CFFI (API mode) builder of `xos._native._osd`: an OSD's object reads on native threads."""

import os

from cffi import FFI

HERE = os.path.dirname(os.path.abspath(__file__))


def _declarations() -> str:
    """osdread.h between its cdef markers: the one place the API is declared."""
    with open(os.path.join(HERE, "osdread.h")) as f:
        text = f.read()
    return text[text.index("/* cdef begin"):text.index("/* cdef end */")]


ffi = FFI()
ffi.cdef(_declarations() + """
extern "Python+C" int xo_check(const char *auth, const char *cap, const char *fid, double *until);
extern "Python+C" void xo_adopt(int fd, const char *buf, size_t n);
""")
ffi.set_source(
    "xos._native._osd",
    '#include "osdread.h"\n',
    sources=[os.path.join("native", "osdread.c")],
    include_dirs=[HERE],
    libraries=["isal", "pthread"],
    extra_compile_args=["-std=gnu11", "-Wall", "-Wextra", "-O2", "-Werror=implicit-function-declaration"],
)

if __name__ == "__main__":
    ffi.compile(verbose=True)
