"""CFFI (API mode) builder of `xos._native._fuse`: the grid file system's FUSE loop on libfuse 3."""

import os

from cffi import FFI

HERE = os.path.dirname(os.path.abspath(__file__))


def _declarations() -> str:
    """gridfuse.h between its cdef markers: the one place the API is declared."""
    with open(os.path.join(HERE, "gridfuse.h")) as f:
        text = f.read()
    return text[text.index("/* cdef begin"):text.index("/* cdef end */")]


ffi = FFI()
ffi.cdef("""
typedef struct fuse_req *fuse_req_t;
struct fuse_file_info;
""" + _declarations() + """
#define FUSE_SET_ATTR_MODE ...
#define FUSE_SET_ATTR_UID ...
#define FUSE_SET_ATTR_GID ...
#define FUSE_SET_ATTR_SIZE ...
#define FUSE_SET_ATTR_ATIME ...
#define FUSE_SET_ATTR_MTIME ...
#define RENAME_NOREPLACE ...
#define RENAME_EXCHANGE ...

extern "Python+C" void xf_py(fuse_req_t req, struct xf_call *c);

int fuse_reply_err(fuse_req_t req, int err);
void fuse_reply_none(fuse_req_t req);
int fuse_reply_buf(fuse_req_t req, const char *buf, size_t size);
int fuse_reply_write(fuse_req_t req, size_t count);
int fuse_reply_readlink(fuse_req_t req, const char *link);
int fuse_reply_xattr(fuse_req_t req, size_t count);
int fuse_req_interrupted(fuse_req_t req);
""")
ffi.set_source(
    "xos._native._fuse",
    '#include "gridfuse.h"\n#include <linux/fs.h>\n',
    sources=[os.path.join("native", f) for f in ("gridfuse.c", "fusetable.c", "fuselease.c", "fuseosd.c", "fuseuring.c")],
    include_dirs=[HERE, "/usr/include/fuse3"],
    libraries=["fuse3", "uring", "pthread"],
    # hidden: the parts share functions with each other, and none of them may be taken for another library's
    extra_compile_args=["-std=gnu11", "-Wall", "-O2", "-Werror=implicit-function-declaration", "-fvisibility=hidden"],
)

if __name__ == "__main__":
    ffi.compile(verbose=True)
