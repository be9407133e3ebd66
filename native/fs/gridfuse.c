/* The grid file system's FUSE loop: libfuse's low-level API on its own threads, requests coming through
 * /dev/fuse or, where the kernel offers it, through io_uring rings (fuseuring.c).
 *
 * The kernel's most frequent requests are answered here without Python: LOOKUP and GETATTR of what
 * the mount saw within the attribute TTL (a listing fetched whole fills the table), LOOKUP of a name
 * missing from a fresh listing, and FORGET. Everything else goes to fs/client/mount.py through xf_py.
 * Python's FUSE stack cost ~65 us per stat here; the kernel round trip alone is ~15 us.
 *
 * The parts: the node table (fusetable.c), directory leases and files made under them (fuselease.c),
 * reads straight from the OSDs (fuseosd.c); here, the replies Python sends, the session's I/O hooks,
 * the operations and the mount.
 */
#include "gridfuse_int.h"
#include "fuseuring.h"

#include <arpa/inet.h>
#include <linux/fuse.h>
#include <stddef.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <limits.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>

extern void xf_py(fuse_req_t req, struct xf_call *c);

/* replies */

void fill_entry(struct fuse_entry_param *e, uint64_t id, const struct xf_attr *a, double ttl)
{
    memset(e, 0, sizeof *e);
    e->ino = id;
    e->attr_timeout = e->entry_timeout = ttl;
    fill_stat(a, &e->attr, io_size);
}

int xf_reply_entry(fuse_req_t req, uint64_t parent, const char *name, const struct xf_attr *a, double ttl)
{
    struct fuse_entry_param e;
    pthread_mutex_lock(&lock);
    struct node *n = find_name(parent, name);
    if (n && n->attr.ino == a->ino && overtaken(n)) { /* the answer is older than a change made here: ask again */
        pthread_mutex_unlock(&lock);
        return -EAGAIN;
    }
    n = record(parent, name, a, ttl, 1);
    pthread_mutex_unlock(&lock);
    if (!n)
        return fuse_reply_err(req, ENOMEM);
    fill_entry(&e, n->id, a, ttl);
    if (fuse_reply_entry(req, &e) != 0) { /* the request was interrupted: the kernel holds nothing */
        pthread_mutex_lock(&lock);
        n->nlookup--;
        pthread_mutex_unlock(&lock);
    }
    return 0;
}

/* The new file's node id (it counts as open for writing until its release), or 0: not created. */
uint64_t xf_reply_create(fuse_req_t req, uint64_t parent, const char *name, const struct xf_attr *a, double ttl,
                         struct fuse_file_info *fi, uint64_t fh)
{
    struct fuse_entry_param e;
    pthread_mutex_lock(&lock);
    struct node *n = record(parent, name, a, ttl, 1);
    if (n)
        n->writers++;
    pthread_mutex_unlock(&lock);
    if (!n) {
        fuse_reply_err(req, ENOMEM);
        return 0;
    }
    fill_entry(&e, n->id, a, ttl);
    fi->fh = fh;
    write_around(fi);
    if (fuse_reply_create(req, &e, fi) != 0) { /* interrupted: no release will come */
        pthread_mutex_lock(&lock);
        n->nlookup--;
        n->writers--;
        pthread_mutex_unlock(&lock);
        return 0;
    }
    return n->id;
}

int xf_reply_attr(fuse_req_t req, uint64_t node, const struct xf_attr *a, double ttl, int cache)
{
    struct stat st;
    if (cache) { /* an answer of the MRC's: not one older than a change made here (ask again) */
        pthread_mutex_lock(&lock);
        struct node *n = find_id(node);
        int old = n && overtaken(n);
        if (n && !old) {
            n->attr = *a;
            n->attr_until = now() + ttl;
        }
        pthread_mutex_unlock(&lock);
        if (old)
            return -EAGAIN;
    }
    fill_stat(a, &st, io_size);
    return fuse_reply_attr(req, &st, ttl);
}

int xf_reply_open(fuse_req_t req, struct fuse_file_info *fi, uint64_t fh, int direct_io)
{
    fi->fh = fh;
    fi->direct_io = direct_io ? 1 : 0;
    write_around(fi);
    return fuse_reply_open(req, fi);
}

int xf_reply_statfs(fuse_req_t req, uint64_t blocks, uint64_t bfree, uint64_t files, uint64_t ffree)
{
    struct statvfs s = {.f_bsize = io_size, .f_frsize = 4096, .f_blocks = blocks, .f_bfree = bfree,
                        .f_bavail = bfree, .f_files = files, .f_ffree = ffree, .f_favail = ffree,
                        .f_namemax = 255};
    return fuse_reply_statfs(req, &s);
}

/* Read-only handles with a plan are direct I/O (read_direct fetches ahead itself): a sequential read
 * through the page cache spent as much CPU filling fresh cache pages (fuse_copy_folio) as every other
 * copy on the way together. The kernel refuses MAP_SHARED maps of direct I/O handles unless INIT's reply
 * carries FUSE_DIRECT_IO_ALLOW_MMAP (Linux 6.6), which libfuse 3.14 does not know: the session's
 * custom I/O sees the kernel's INIT and adds it to the reply when the kernel offers it. */
#define INIT_ALLOW_MMAP (1u << 4) /* FUSE_DIRECT_IO_ALLOW_MMAP, 1 << 36, in flags2 */
static uint64_t init_unique;
static int init_offers_mmap, init_offers_ring, mmap_allowed;

static ssize_t io_read(int fd, void *buf, size_t len, void *userdata)
{
    (void)userdata;
    ssize_t n = read(fd, buf, len);
    if (n >= (ssize_t)(sizeof(struct fuse_in_header) + offsetof(struct fuse_init_in, flags2) + 4)) {
        const struct fuse_in_header *h = buf;
        if (h->opcode == FUSE_INIT) {
            const struct fuse_init_in *in = (const void *)(h + 1);
            init_unique = h->unique;
            init_offers_mmap = (in->flags & FUSE_INIT_EXT) && (in->flags2 & INIT_ALLOW_MMAP);
            init_offers_ring = xu_offered(in->flags, in->flags2);
        }
    }
    return n;
}

static ssize_t io_writev(int fd, struct iovec *iov, int count, void *userdata)
{
    (void)userdata;
    if (xu_reply(iov, count)) {
        ssize_t n = 0;
        for (int i = 0; i < count; i++)
            n += (ssize_t)iov[i].iov_len;
        return n;
    }
    int ring = 0;
    if (init_unique && count >= 2 && iov[0].iov_len >= sizeof(struct fuse_out_header)) {
        struct fuse_out_header *h = iov[0].iov_base;
        if (h->unique == init_unique) {
            init_unique = 0;
            struct fuse_init_out *out = iov[1].iov_base;
            if (!h->error && iov[1].iov_len >= offsetof(struct fuse_init_out, flags2) + 4) {
                if (init_offers_mmap) {
                    out->flags |= FUSE_INIT_EXT;
                    out->flags2 |= INIT_ALLOW_MMAP;
                    mmap_allowed = 1;
                }
                /* the kernel's largest payload: its max_write, or max_pages pages (dev_uring.c) */
                size_t payload = out->max_write > 8192 ? out->max_write : 8192;
                if ((size_t)out->max_pages * 4096 > payload)
                    payload = (size_t)out->max_pages * 4096;
                int err = init_offers_ring ? xu_prepare(se_of_loop, fd, payload) : 0;
                if (init_offers_ring && !err) {
                    out->flags |= FUSE_INIT_EXT;
                    out->flags2 |= XU_INIT_FLAGS2;
                    ring = 1;
                } else if (err) {
                    fprintf(stderr, "xos: FUSE over io_uring offered, but no rings could be made (%s): "
                            "requests come through /dev/fuse\n", strerror(-err));
                }
            }
        }
    }
    ssize_t n = writev(fd, iov, count);
    if (ring)
        xu_start(); /* the kernel took the reply (or is gone, and the queues see that) */
    return n;
}

int xf_direct_reads(void) { return mmap_allowed; }

/* the operations */

static void ll_init(void *userdata, struct fuse_conn_info *conn)
{
    (void)userdata;
    /* Direct I/O as plain requests the caller waits on, so a signal interrupts them (EINTR);
     * asynchronous direct I/O waits uninterruptibly in the kernel. */
    conn->want &= ~FUSE_CAP_ASYNC_DIO;
    conn->max_write = io_size;
    conn->max_read = io_size;
    conn->max_readahead = READAHEAD_REQUESTS * io_size;
}

/* LOOKUP answered from the table if it can be: 1, or 0 and nothing sent. A name missing from a fresh
 * listing is answered missing only with `deny`, once Python has checked the listing with the MRC:
 * close-to-open means a file closed on another node opens here at once, and a lookup does not say
 * whether an open follows. */
int xf_try_lookup(fuse_req_t req, uint64_t parent, const char *name, int deny)
{
    struct fuse_entry_param e;
    double t = now();
    pthread_mutex_lock(&lock);
    struct node *n = find_name(parent, name), *d = find_id(parent);
    if (n && n->attr_until > t && !n->writers) {
        n->nlookup++;
        fill_entry(&e, n->id, &n->attr, n->attr_until - t);
        pthread_mutex_unlock(&lock);
        if (fuse_reply_entry(req, &e) != 0) {
            pthread_mutex_lock(&lock);
            n->nlookup--;
            pthread_mutex_unlock(&lock);
        }
        return 1;
    }
    int absent = !n && d && d->list_until && ((deny && d->list_until > t) || d->lease_until > t);
    pthread_mutex_unlock(&lock);
    if (absent) {
        fuse_reply_err(req, ENOENT);
        return 1;
    }
    return 0;
}

static void ll_lookup(fuse_req_t req, fuse_ino_t parent, const char *name)
{
    if (strlen(name) > 255) { /* NAME_MAX: the kernel leaves that check to the file system */
        fuse_reply_err(req, ENAMETOOLONG);
        return;
    }
    if (xf_try_lookup(req, parent, name, 0))
        return;
    struct xf_call c = {.op = XF_LOOKUP, .node = parent, .name = name};
    xf_py(req, &c);
}

static void ll_forget_one(fuse_ino_t ino, uint64_t nlookup)
{
    struct node *n = find_id(ino);
    if (!n || n == &root)
        return;
    n->nlookup = n->nlookup > nlookup ? n->nlookup - nlookup : 0;
    if (!n->nlookup && !n->name && !n->writers)
        free_node(n);
}

static void ll_forget(fuse_req_t req, fuse_ino_t ino, uint64_t nlookup)
{
    pthread_mutex_lock(&lock);
    ll_forget_one(ino, nlookup);
    pthread_mutex_unlock(&lock);
    fuse_reply_none(req);
}

static void ll_forget_multi(fuse_req_t req, size_t n, struct fuse_forget_data *forgets)
{
    pthread_mutex_lock(&lock);
    for (size_t i = 0; i < n; i++)
        ll_forget_one(forgets[i].ino, forgets[i].nlookup);
    pthread_mutex_unlock(&lock);
    fuse_reply_none(req);
}

/* GETATTR answered from the table if it can be: 1, or 0 and nothing sent. */
int xf_try_getattr(fuse_req_t req, uint64_t ino)
{
    struct stat st;
    double t = now();
    pthread_mutex_lock(&lock);
    struct node *n = find_id(ino);
    /* a node whose name is gone (unlinked while open) can be asked of nobody: as last seen */
    if (n && !n->writers && (n->attr_until > t || (!n->name && n != &root && n->attr_until))) {
        double ttl = n->attr_until > t ? n->attr_until - t : 0;
        fill_stat(&n->attr, &st, io_size);
        pthread_mutex_unlock(&lock);
        fuse_reply_attr(req, &st, ttl);
        return 1;
    }
    pthread_mutex_unlock(&lock);
    return 0;
}

static void ll_getattr(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
    if (xf_try_getattr(req, ino))
        return;
    struct xf_call c = {.op = XF_GETATTR, .node = ino, .fh = fi ? fi->fh : 0, .fi = fi};
    xf_py(req, &c);
}

static void ll_setattr(fuse_req_t req, fuse_ino_t ino, struct stat *attr, int to_set, struct fuse_file_info *fi)
{
    struct xf_call c = {.op = XF_SETATTR, .node = ino, .to_set = to_set, .mode = attr->st_mode,
                        .uid = attr->st_uid, .gid = attr->st_gid, .size = (uint64_t)attr->st_size,
                        .fh = fi ? fi->fh : 0, .fi = fi};
    c.atime_ns = to_set & FUSE_SET_ATTR_ATIME_NOW ? -1
                 : (int64_t)attr->st_atim.tv_sec * 1000000000 + attr->st_atim.tv_nsec;
    c.mtime_ns = to_set & FUSE_SET_ATTR_MTIME_NOW ? -1
                 : (int64_t)attr->st_mtim.tv_sec * 1000000000 + attr->st_mtim.tv_nsec;
    xf_py(req, &c);
}

#define CALL(...)                                   \
    do {                                            \
        struct xf_call c = {__VA_ARGS__};           \
        xf_py(req, &c);                             \
    } while (0)

static void ll_readlink(fuse_req_t req, fuse_ino_t ino) { CALL(.op = XF_READLINK, .node = ino); }

static void ll_mknod(fuse_req_t req, fuse_ino_t parent, const char *name, mode_t mode, dev_t rdev)
{
    CALL(.op = XF_MKNOD, .node = parent, .name = name, .mode = mode, .size = rdev);
}

static void ll_mkdir(fuse_req_t req, fuse_ino_t parent, const char *name, mode_t mode)
{
    CALL(.op = XF_MKDIR, .node = parent, .name = name, .mode = mode);
}

static void ll_unlink(fuse_req_t req, fuse_ino_t parent, const char *name)
{
    CALL(.op = XF_UNLINK, .node = parent, .name = name);
}

static void ll_rmdir(fuse_req_t req, fuse_ino_t parent, const char *name)
{
    CALL(.op = XF_RMDIR, .node = parent, .name = name);
}

static void ll_symlink(fuse_req_t req, const char *link, fuse_ino_t parent, const char *name)
{
    CALL(.op = XF_SYMLINK, .node = parent, .name = name, .name2 = link);
}

static void ll_rename(fuse_req_t req, fuse_ino_t parent, const char *name, fuse_ino_t newparent,
                      const char *newname, unsigned int flags)
{
    CALL(.op = XF_RENAME, .node = parent, .name = name, .node2 = newparent, .name2 = newname, .flags = flags);
}

static void ll_link(fuse_req_t req, fuse_ino_t ino, fuse_ino_t newparent, const char *newname)
{
    CALL(.op = XF_LINK, .node = ino, .node2 = newparent, .name = newname);
}

static void ll_open(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
    CALL(.op = XF_OPEN, .node = ino, .flags = (uint32_t)fi->flags, .fi = fi);
}

static void ll_read(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off, struct fuse_file_info *fi)
{
    if (read_direct(req, fi->fh, size, off))
        return;
    CALL(.op = XF_READ, .node = ino, .size = size, .off = off, .fh = fi->fh, .fi = fi);
}

static void ll_write(fuse_req_t req, fuse_ino_t ino, const char *buf, size_t size, off_t off,
                     struct fuse_file_info *fi)
{
    CALL(.op = XF_WRITE, .node = ino, .buf = buf, .len = size, .off = off, .fh = fi->fh, .fi = fi);
}

static void ll_flush(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
    if (!has_written(fi->fh)) {
        fuse_reply_err(req, 0);
        return;
    }
    CALL(.op = XF_FLUSH, .node = ino, .fh = fi->fh, .fi = fi);
}

static void ll_release(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
    if (fi->fh & XF_LOCAL_FH && !has_written(fi->fh)) { /* made here, never adopted by Python */
        drop_local(fi->fh);
        fuse_reply_err(req, 0);
        return;
    }
    CALL(.op = XF_RELEASE, .node = ino, .fh = fi->fh, .flags = (uint32_t)fi->flags, .fi = fi);
}

static void ll_fsync(fuse_req_t req, fuse_ino_t ino, int datasync, struct fuse_file_info *fi)
{
    CALL(.op = XF_FSYNC, .node = ino, .datasync = datasync, .fh = fi->fh, .fi = fi);
}

static void ll_opendir(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
    CALL(.op = XF_OPENDIR, .node = ino, .fi = fi);
}

static void ll_readdir(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off, struct fuse_file_info *fi)
{
    CALL(.op = XF_READDIR, .node = ino, .size = size, .off = off, .fh = fi->fh, .fi = fi);
}

static void ll_releasedir(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
    CALL(.op = XF_RELEASEDIR, .node = ino, .fh = fi->fh, .fi = fi);
}

static void ll_fsyncdir(fuse_req_t req, fuse_ino_t ino, int datasync, struct fuse_file_info *fi)
{
    CALL(.op = XF_FSYNCDIR, .node = ino, .datasync = datasync, .fh = fi->fh, .fi = fi);
}

static void ll_statfs(fuse_req_t req, fuse_ino_t ino) { CALL(.op = XF_STATFS, .node = ino); }

static void ll_setxattr(fuse_req_t req, fuse_ino_t ino, const char *name, const char *value, size_t size,
                        int flags)
{
    if (strncmp(name, "user.", 5) != 0) { /* as getxattr below: cp -a sets ACLs on every file it makes */
        fuse_reply_err(req, ENOTSUP);
        return;
    }
    CALL(.op = XF_SETXATTR, .node = ino, .name = name, .buf = value, .len = size, .flags = (uint32_t)flags);
}

static void ll_getxattr(fuse_req_t req, fuse_ino_t ino, const char *name, size_t size)
{
    /* Only user.* attributes are kept (at the MRC). The kernel asks for security.capability before every
     * write to a file; answered here, that costs no trip into Python, nor the files made here their batch. */
    if (strncmp(name, "user.", 5) != 0) {
        fuse_reply_err(req, ENODATA);
        return;
    }
    CALL(.op = XF_GETXATTR, .node = ino, .name = name, .size = size);
}

static void ll_listxattr(fuse_req_t req, fuse_ino_t ino, size_t size)
{
    CALL(.op = XF_LISTXATTR, .node = ino, .size = size);
}

static void ll_removexattr(fuse_req_t req, fuse_ino_t ino, const char *name)
{
    CALL(.op = XF_REMOVEXATTR, .node = ino, .name = name);
}

static void ll_create(fuse_req_t req, fuse_ino_t parent, const char *name, mode_t mode, struct fuse_file_info *fi)
{
    if (create_here(req, parent, name, mode, fi))
        return;
    CALL(.op = XF_CREATE, .node = parent, .name = name, .mode = mode, .flags = (uint32_t)fi->flags, .fi = fi);
}

static const struct fuse_lowlevel_ops ops = {
    .init = ll_init,
    .lookup = ll_lookup,
    .forget = ll_forget,
    .forget_multi = ll_forget_multi,
    .getattr = ll_getattr,
    .setattr = ll_setattr,
    .readlink = ll_readlink,
    .mknod = ll_mknod,
    .mkdir = ll_mkdir,
    .unlink = ll_unlink,
    .rmdir = ll_rmdir,
    .symlink = ll_symlink,
    .rename = ll_rename,
    .link = ll_link,
    .open = ll_open,
    .read = ll_read,
    .write = ll_write,
    .flush = ll_flush,
    .release = ll_release,
    .fsync = ll_fsync,
    .opendir = ll_opendir,
    .readdir = ll_readdir,
    .releasedir = ll_releasedir,
    .fsyncdir = ll_fsyncdir,
    .statfs = ll_statfs,
    .setxattr = ll_setxattr,
    .getxattr = ll_getxattr,
    .listxattr = ll_listxattr,
    .removexattr = ll_removexattr,
    .create = ll_create,
};

/* mountinfo's octal escapes (space, tab, newline, backslash) undone in place */
static void unescape(char *s)
{
    char *out = s;
    for (; *s; s++, out++) {
        if (s[0] == '\\' && s[1] >= '0' && s[1] <= '7' && s[2] >= '0' && s[2] <= '7' && s[3] >= '0' && s[3] <= '7') {
            *out = (char)((s[1] - '0') * 64 + (s[2] - '0') * 8 + (s[3] - '0'));
            s += 3;
        } else {
            *out = *s;
        }
    }
    *out = 0;
}

/* How far the kernel reads ahead on a FUSE mount is the smaller of the bdi's read_ahead_kb when the
 * INIT reply arrives (128 KiB unless raised, as here, once mounted: root only) and the reply's
 * max_readahead (ll_init); both are set to READAHEAD_REQUESTS whole requests, which the loop's
 * threads serve from the OSDs at once (read_direct). With only the first raised, the reply capped
 * the window at one request and two READs were in flight. Cold 1 GiB reads, interleaved in one grid
 * (6 rounds each): 1 request ahead 276-486 MB/s, 2 requests 346-507, 4 requests 402-572 (4-8 READs
 * in flight most of the time), 8 requests 362-486. `real` is the mount point resolved before mounting:
 * resolving it now would ask this very loop, which is not running yet. */
static void raise_readahead(const char *real)
{
    FILE *f = fopen("/proc/self/mountinfo", "re");
    if (!f)
        return;
    char *line = NULL, mp[PATH_MAX];
    size_t cap_ = 0;
    unsigned maj = 0, min = 0, a, b;
    int found = 0;
    while (getline(&line, &cap_, f) > 0)
        if (sscanf(line, "%*d %*d %u:%u %*s %4095s", &a, &b, mp) == 3) {
            unescape(mp);
            if (strcmp(mp, real) == 0) { /* the last one: mounts stack */
                maj = a;
                min = b;
                found = 1;
            }
        }
    free(line);
    fclose(f);
    if (!found)
        return;
    char path[64];
    snprintf(path, sizeof path, "/sys/class/bdi/%u:%u/read_ahead_kb", maj, min);
    FILE *ra = fopen(path, "we");
    if (ra) {
        fprintf(ra, "%u", READAHEAD_REQUESTS * io_size / 1024);
        fclose(ra);
    }
}

int xf_serve(const char *mountpoint, const char *opts, unsigned max_io, double ttl)
{
    char real[PATH_MAX];
    if (!realpath(mountpoint, real))
        real[0] = 0;
    char *argv[] = {"xos", "-o", (char *)opts, NULL};
    struct fuse_args args = FUSE_ARGS_INIT(3, argv);
    int ret = -1;
    io_size = max_io;
    default_ttl = ttl;
    root.attr_until = 0;
    pthread_mutex_lock(&lock);
    if (table_init() < 0) {
        pthread_mutex_unlock(&lock);
        return -1;
    }
    pthread_mutex_unlock(&lock);
    struct fuse_session *se = fuse_session_new(&args, &ops, sizeof ops, NULL);
    if (!se)
        return -1;
    se_of_loop = se;
    if (fuse_set_signal_handlers(se) == 0) {
        static const struct fuse_custom_io io = {.read = io_read, .writev = io_writev};
        if (fuse_session_mount(se, mountpoint) == 0) {
            fuse_session_custom_io(se, &io, fuse_session_fd(se)); /* if refused: page-cached reads */
            if (real[0])
                raise_readahead(real);
            struct fuse_loop_config *config = fuse_loop_cfg_create();
            fuse_loop_cfg_set_clone_fd(config, 0);
            fuse_loop_cfg_set_idle_threads(config, 10);
            ret = fuse_session_loop_mt(se, config);
            xu_stop();
            close_idle();
            fuse_loop_cfg_destroy(config);
            fuse_session_unmount(se);
        }
        fuse_remove_signal_handlers(se);
    }
    fuse_session_destroy(se);
    return ret;
}
