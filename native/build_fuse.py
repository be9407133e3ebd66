"""CFFI (API mode) builder of `xos._native._fuse`: the grid file system's FUSE loop on libfuse 3."""

import os

from cffi import FFI

HERE = os.path.dirname(os.path.abspath(__file__))

ffi = FFI()
ffi.cdef("""
typedef struct fuse_req *fuse_req_t;
struct fuse_file_info;

enum xf_op {
    XF_LOOKUP = 1, XF_GETATTR, XF_SETATTR, XF_READLINK, XF_MKDIR, XF_UNLINK, XF_RMDIR, XF_SYMLINK,
    XF_RENAME, XF_LINK, XF_OPEN, XF_READ, XF_WRITE, XF_FLUSH, XF_RELEASE, XF_FSYNC, XF_OPENDIR,
    XF_READDIR, XF_RELEASEDIR, XF_STATFS, XF_SETXATTR, XF_GETXATTR, XF_LISTXATTR, XF_REMOVEXATTR,
    XF_CREATE, XF_MKNOD,
};

struct xf_attr {
    uint64_t ino;
    uint32_t mode, nlink, uid, gid;
    uint64_t size;
    int64_t atime_ns, mtime_ns, ctime_ns;
};

struct xf_call {
    int op;
    uint64_t node, node2;
    const char *name, *name2;
    uint32_t mode, flags;
    uint64_t size;
    int64_t off;
    uint64_t fh;
    const char *buf;
    size_t len;
    int to_set;
    uint32_t uid, gid;
    int64_t atime_ns, mtime_ns;
    int datasync;
    struct fuse_file_info *fi;
};

#define FUSE_SET_ATTR_MODE ...
#define FUSE_SET_ATTR_UID ...
#define FUSE_SET_ATTR_GID ...
#define FUSE_SET_ATTR_SIZE ...
#define FUSE_SET_ATTR_ATIME ...
#define FUSE_SET_ATTR_MTIME ...
#define RENAME_NOREPLACE ...
#define RENAME_EXCHANGE ...

extern "Python+C" void xf_py(fuse_req_t req, struct xf_call *c);

uint64_t xf_entry(uint64_t parent, const char *name, const struct xf_attr *a, double ttl, int lookup);
void xf_fill(uint64_t dir, const char *names, const struct xf_attr *attrs, size_t n, double ttl,
             uint64_t version);
int xf_listing(uint64_t dir, uint64_t *version);
void xf_refresh(uint64_t dir, double ttl);
void xf_advance(uint64_t dir, uint64_t before, uint64_t after);
uint64_t xf_parent(uint64_t node);
int xf_try_lookup(fuse_req_t req, uint64_t parent, const char *name, int deny);
int xf_try_getattr(fuse_req_t req, uint64_t ino);
int xf_path(uint64_t node, char *buf, size_t size);
int xf_peek(uint64_t parent, const char *name, struct xf_attr *out);
int xf_attr_of(uint64_t node, struct xf_attr *out);
void xf_set_attr(uint64_t node, const struct xf_attr *a, double ttl);
void xf_drop(uint64_t parent, const char *name);
void xf_move(uint64_t parent, const char *name, uint64_t newparent, const char *newname);
void xf_forget_attr(uint64_t node);
void xf_forget_all(void);
void xf_touch_dir(uint64_t dir, int links);
void xf_writers(uint64_t node, int delta);
void xf_written(uint64_t fh, int on);
size_t xf_count(void);

int xf_reply_entry(fuse_req_t req, uint64_t parent, const char *name, const struct xf_attr *a, double ttl);
uint64_t xf_reply_create(fuse_req_t req, uint64_t parent, const char *name, const struct xf_attr *a, double ttl,
                    struct fuse_file_info *fi, uint64_t fh);
int xf_reply_attr(fuse_req_t req, uint64_t node, const struct xf_attr *a, double ttl, int cache);
int xf_reply_open(fuse_req_t req, struct fuse_file_info *fi, uint64_t fh, int direct_io);
int xf_reply_statfs(fuse_req_t req, uint64_t blocks, uint64_t bfree, uint64_t files, uint64_t ffree);
int xf_serve(const char *mountpoint, const char *opts, unsigned max_io, double ttl);

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
    sources=[os.path.join("native", "gridfuse.c")],
    include_dirs=[HERE, "/usr/include/fuse3"],
    libraries=["fuse3", "pthread"],
    extra_compile_args=["-std=gnu11", "-Wall", "-O2", "-Werror=implicit-function-declaration"],
)

if __name__ == "__main__":
    ffi.compile(verbose=True)
