"""The grid file system's FUSE loop (fs/gridfuse.c and its parts) on libfuse 3: what Python sees of it."""

from xos_decl import between_markers  # type: ignore[import-not-found]  # see load() in __init__.py

INCLUDES = """
#include "gridfuse.h"
#include <linux/fs.h>
"""

TYPES = """
typedef struct fuse_req *fuse_req_t;
struct fuse_file_info;
""" + between_markers("fs/gridfuse.h") + """
#define FUSE_SET_ATTR_MODE ...
#define FUSE_SET_ATTR_UID ...
#define FUSE_SET_ATTR_GID ...
#define FUSE_SET_ATTR_SIZE ...
#define FUSE_SET_ATTR_ATIME ...
#define FUSE_SET_ATTR_MTIME ...
#define RENAME_NOREPLACE ...
#define RENAME_EXCHANGE ...
"""

FUNCTIONS = """
extern "Python+C" void xf_py(fuse_req_t req, struct xf_call *c);

int fuse_reply_err(fuse_req_t req, int err);
void fuse_reply_none(fuse_req_t req);
int fuse_reply_buf(fuse_req_t req, const char *buf, size_t size);
int fuse_reply_write(fuse_req_t req, size_t count);
int fuse_reply_readlink(fuse_req_t req, const char *link);
int fuse_reply_xattr(fuse_req_t req, size_t count);
int fuse_req_interrupted(fuse_req_t req);
"""

CUSTOMIZATIONS = ""
SOURCES = [f"native/fs/{f}" for f in ("gridfuse.c", "fusetable.c", "fuselease.c", "fuseosd.c", "fuseuring.c")]
INCLUDE_DIRS = ["fs"]
SYSTEM_INCLUDE_DIRS = ["/usr/include/fuse3"]
LIBRARIES = ["fuse3", "uring", "ssl", "crypto", "pthread"]
# hidden: the parts share functions with each other, and none of them may be taken for another library's
COMPILE_ARGS = ["-fvisibility=hidden"]
