/* The grid file system's FUSE loop (gridfuse.c): what Python sees of it. */
#ifndef XOS_GRIDFUSE_H
#define XOS_GRIDFUSE_H

#define FUSE_USE_VERSION 312
#include <fuse_lowlevel.h>
#include <stdint.h>

/* cdef begin: what follows, to the end marker, is also native/decl/fuse.py's declaration for CFFI */

/* A file's attributes as the MRC gives them, already mapped to local ids. */
struct xf_attr {
    uint64_t ino;
    uint32_t mode, nlink, uid, gid;
    uint64_t size;
    int64_t atime_ns, mtime_ns, ctime_ns;
    uint64_t rdev; /* a device special file's device */
};

enum xf_op {
    XF_LOOKUP = 1, XF_GETATTR, XF_SETATTR, XF_READLINK, XF_MKDIR, XF_UNLINK, XF_RMDIR, XF_SYMLINK,
    XF_RENAME, XF_LINK, XF_OPEN, XF_READ, XF_WRITE, XF_FLUSH, XF_RELEASE, XF_FSYNC, XF_OPENDIR,
    XF_READDIR, XF_RELEASEDIR, XF_STATFS, XF_SETXATTR, XF_GETXATTR, XF_LISTXATTR, XF_REMOVEXATTR,
    XF_CREATE, XF_MKNOD, XF_FSYNCDIR,
};

/* One request handed to Python: the fields its operation uses, the rest zero. */
struct xf_call {
    int op;
    uint64_t node, node2;        /* the node (or parent); rename's and link's second node */
    const char *name, *name2;    /* entry name; rename's new name, symlink's target, xattr name */
    uint32_t mode, flags;        /* create/mkdir mode; open flags, rename flags, xattr flags */
    uint64_t size;               /* read/xattr size, setattr size, mknod's device */
    int64_t off;                 /* read/write/readdir offset */
    uint64_t fh;                 /* the handle Python gave at open/opendir/create (0: none) */
    const char *buf;             /* write data, xattr value */
    size_t len;
    int to_set;                  /* setattr: FUSE_SET_ATTR_* */
    uint32_t uid, gid;           /* setattr */
    int64_t atime_ns, mtime_ns;  /* setattr; -1: now */
    int datasync;
    struct fuse_file_info *fi;
};

/* The table of nodes (the kernel's node ids) and what is known of them. */
uint64_t xf_entry(uint64_t parent, const char *name, const struct xf_attr *a, double ttl, int lookup);
void xf_fill(uint64_t dir, const char *names, const struct xf_attr *attrs, size_t n, double ttl,
             uint64_t version);
/* 0: no listing of `dir` is held; 1: one is, within its TTL; 2: one is, past it (its version in *version) */
int xf_listing(uint64_t dir, uint64_t *version);
void xf_refresh(uint64_t dir, double ttl);
void xf_unlist(uint64_t dir, uint64_t version);
void xf_advance(uint64_t dir, uint64_t before, uint64_t after);
uint64_t xf_parent(uint64_t node);
int xf_try_lookup(fuse_req_t req, uint64_t parent, const char *name, int deny);
int xf_try_getattr(fuse_req_t req, uint64_t ino);
int xf_path(uint64_t node, char *buf, size_t size);
int xf_peek(uint64_t parent, const char *name, struct xf_attr *out);
int xf_attr_of(uint64_t node, struct xf_attr *out);
void xf_set_attr(uint64_t node, const struct xf_attr *a, double ttl);
/* The names of directory `dir` as the table holds them, while the directory is leased here (nobody else changes
 * them) or the MRC gave or confirmed its listing less than `recent` seconds ago (a listing merely fresh
 * within the TTL could miss another mount's change, which a listing shows at once): each NUL-terminated
 * into `names` (`size` bytes), their inode numbers and modes into `inos` and `modes` (room for `max`); how
 * many, or -1 (not held, or more than the room given). */
long xf_list(uint64_t dir, double recent, char *names, size_t size, uint64_t *inos, uint32_t *modes, size_t max);
void xf_drop(uint64_t parent, const char *name);
void xf_move(uint64_t parent, const char *name, uint64_t newparent, const char *newname);
void xf_forget_attr(uint64_t node);
/* This thread's request begins (its MRC answers older than changes made here after now are not taken), ends. */
void xf_begin(void);
void xf_end(void);
/* Whether what the table holds of `node`'s attributes is known to have changed here since. */
int xf_changed(uint64_t node);
/* A file opened here where nothing else has it open, as the MRC has it now (close-to-open): if its size or
 * mtime is not what the table had, which is what the kernel was told (listings tell it of changes they
 * bring), the kernel is told to ask again, or it would read up to the end it knew before another mount
 * wrote more. */
void xf_opened(uint64_t node, const struct xf_attr *a, double ttl);
void xf_forget_all(void);
void xf_stale_ino(uint64_t ino);
void xf_touch_dir(uint64_t dir, int links);
void xf_writers(uint64_t node, int delta);
void xf_written(uint64_t fh, int on);

/* A change this mount made by itself under a directory lease, for Python to tell the MRC: a file created
 * (XF_MADE_FILE), a name removed (XF_MADE_UNLINK) or a hard link made in the same directory (XF_MADE_LINK). */
#define XF_MADE_FILE 0
#define XF_MADE_UNLINK 1
#define XF_MADE_LINK 2
struct xf_made {
    uint64_t dir_ino, dir_node; /* the directory: the MRC's inode number, the table's node */
    uint64_t node, ino, fh;     /* the file's node, its inode number, the new file's handle (0 for an unlink) */
    uint64_t node2;             /* a link's new name's node */
    uint32_t kind, mode, nlink; /* nlink: the file's link count before (an unlink, a link) */
    int64_t time_ns;
    char name[256];
    char name2[256]; /* a link's new name (name: the name it was made from) */
};

/* Handles of files created under a lease have this bit: Python has them only once it adopts one. */
#define XF_LOCAL_FH 0x4000000000000000

/* Directory leases: while one runs, names missing from the directory's listing are answered
 * missing here, and files are created here (inode numbers from [ino_lo, ino_hi)). until: monotonic
 * seconds; 0 ends it. */
void xf_owner(uint32_t uid);
void xf_lease(uint64_t dir, uint64_t dir_ino, double until, uint32_t gid, uint64_t ino_lo, uint64_t ino_hi);
uint64_t xf_lease_left(uint64_t dir);
size_t xf_take_made(struct xf_made *out, size_t max, double wait);
size_t xf_made_count(void);
void xf_made_sent(void);
void xf_confirm(uint64_t node, uint64_t ino);
/* The MRC gave a file made here in `dir` inode number `now_` instead of `was`: so do its other names there. */
void xf_renumber(uint64_t dir, uint64_t was, uint64_t now_);
/* Whether the file made here at `node` waits in the queue still (not taken to be sent). */
int xf_queued(uint64_t node);
size_t xf_local_handles(uint64_t node, uint64_t *fhs, size_t max);
uint64_t xf_node_of(uint64_t parent, const char *name);
/* UNLINK answered here: `name` in leased directory `parent` was removed from the table and queued for the MRC
 * (a name known with its inode number, not a directory, open by no handle here, in a directory owned by
 * this mount's user): 1, or 2 when its file may have other names; 0: ask the MRC. */
int xf_unlink_here(uint64_t parent, const char *name);
/* LINK answered here (the reply included), as UNLINK: `node`, a file known with its inode number, named in
 * leased directory `parent` and open by no handle here, gets the new name `name` there, absent there. 1, or 2
 * when its other names' attributes are to be asked again (xf_stale_ino); 0: nothing done, ask the MRC. */
int xf_link_here(fuse_req_t req, uint64_t node, uint64_t parent, const char *name);
/* RMDIR answered here, as UNLINK: the directory is leased here too and holds no name. Its inode number, or 0:
 * ask the MRC. */
uint64_t xf_rmdir_here(uint64_t parent, const char *name);
/* Whether a request about `node` (and `node2`, or 0) must wait until the changes queued here reach the MRC:
 * what it would answer shows one of them. */
int xf_made_touches(uint64_t node, uint64_t node2);

/* Reach the OSDs over TLS 1.3 from now on, their certificates checked against the CA in `ca_file` and the
 * address each is reached at. 0, or -errno. */
int xf_tls(const char *ca_file);
/* Every handshake from now on also checks the CA's revocation list in `path`; kept connections are dropped.
 * 0, or -errno. */
int xf_tls_crl(const char *path);
/* Small reads of handle `fh` straight from the OSDs in `osds` ("ip:port", NUL after each, one per stripe
 * column of the replica to read), with `headers` ("Name: value\r\n" each): 0, or -errno. */
int xf_plan(uint64_t fh, const char *fid, const char *headers, uint64_t size, uint32_t stripe, const char *osds,
            size_t ncol);
void xf_unplan(uint64_t fh);
/* Whether read-only handles may be direct I/O: the kernel lets such handles be mapped shared. */
int xf_direct_reads(void);

/* Replies that also record what they tell the kernel. An entry, or attributes to be cached, that the MRC gave
 * before a change made here to the same file (after xf_begin in this thread) is not told: -EAGAIN. */
int xf_reply_entry(fuse_req_t req, uint64_t parent, const char *name, const struct xf_attr *a, double ttl);
uint64_t xf_reply_create(fuse_req_t req, uint64_t parent, const char *name, const struct xf_attr *a, double ttl,
                    struct fuse_file_info *fi, uint64_t fh);
int xf_reply_attr(fuse_req_t req, uint64_t node, const struct xf_attr *a, double ttl, int cache);
int xf_reply_open(fuse_req_t req, struct fuse_file_info *fi, uint64_t fh, int direct_io);
int xf_reply_statfs(fuse_req_t req, uint64_t blocks, uint64_t bfree, uint64_t files, uint64_t ffree);

/* Mount `mountpoint` with `opts` (-o syntax) and serve it until unmounted or signalled: 0, or -1. */
int xf_serve(const char *mountpoint, const char *opts, unsigned max_io, double ttl);

/* cdef end */

#endif
