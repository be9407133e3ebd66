/* The grid file system's FUSE loop: libfuse's low-level API on its own threads, requests coming through
 * /dev/fuse or, where the kernel offers it, through io_uring rings (fuseuring.c).
 *
 * The kernel's most frequent requests are answered here without Python: LOOKUP and GETATTR of what
 * the mount saw within the attribute TTL (a listing fetched whole fills the table), LOOKUP of a name
 * missing from a fresh listing, and FORGET. Everything else goes to fs/client/mount.py through xf_py.
 * Python's FUSE stack cost ~65 us per stat here; the kernel round trip alone is ~15 us.
 *
 * Node ids are this table's, not the MRC's inode numbers (st_ino): a hard-linked file has one node
 * per name, so a node's path is its parents' names, which is what the MRC is asked by.
 */
#define _GNU_SOURCE
#include "gridfuse.h"
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

struct node {
    uint64_t id, parent;
    char *name; /* NULL once the name is gone: the kernel may still hold the node */
    uint64_t nlookup;
    struct xf_attr attr;
    double attr_until, list_until; /* monotonic seconds; 0: not known */
    int writers;                   /* open for writing here: only Python knows its size */
    unsigned listed;               /* the listing generation that last saw it */
    uint64_t version;              /* directory: the MRC's listing version its listing was taken at */
    double lease_until;            /* directory: its names are this mount's until then (monotonic) */
    uint64_t lease_ino, ino_next, ino_end; /* the MRC's number of it; inode numbers for files made here */
    uint32_t lease_gid;            /* the group of files made here (unless the directory is setgid) */
    int pending;                   /* made here under a lease, not yet at the MRC */
    int taken;                     /* ... and taken from the queue to be sent */
    struct node *next_id, *next_name;
    struct node *next_kid, **pprev_kid; /* named nodes, chained by their parent's id: a directory's names */
};

static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static struct fuse_session *se_of_loop; /* the mount's session (for the rings, and notifications) */
static struct node **ids, **names, **kids;
static size_t cap, count, swept;
static uint64_t next_id = 2;
static unsigned generation;
static double default_ttl = 1.0;
static struct node root = {.id = FUSE_ROOT_ID, .name = "", .nlookup = 1};

/* attr_until of attributes known but to be asked again (0 is: not known at all) */
#define STALE 1e-9

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}

static size_t hash_id(uint64_t id)
{
    return (size_t)((id * 0x9E3779B97F4A7C15ull) >> 20) & (cap - 1);
}

static size_t hash_name(uint64_t parent, const char *name)
{
    uint64_t h = 1469598103934665603ull ^ (parent * 0x9E3779B97F4A7C15ull);
    for (; *name; name++)
        h = (h ^ (unsigned char)*name) * 1099511628211ull;
    return (size_t)(h ^ (h >> 29)) & (cap - 1);
}

static struct node *find_id(uint64_t id)
{
    if (id == FUSE_ROOT_ID)
        return &root;
    if (!cap)
        return NULL;
    for (struct node *n = ids[hash_id(id)]; n; n = n->next_id)
        if (n->id == id)
            return n;
    return NULL;
}

static struct node *find_name(uint64_t parent, const char *name)
{
    if (!cap)
        return NULL;
    for (struct node *n = names[hash_name(parent, name)]; n; n = n->next_name)
        if (n->parent == parent && strcmp(n->name, name) == 0)
            return n;
    return NULL;
}

/* A directory's names are the named nodes in its kids chain (other directories' share a chain only by
 * a hash collision): listing or refreshing one directory costs its size, not the table's. */
static void kid_in(struct node *n)
{
    size_t k = hash_id(n->parent);
    n->next_kid = kids[k];
    if (n->next_kid)
        n->next_kid->pprev_kid = &n->next_kid;
    kids[k] = n;
    n->pprev_kid = &kids[k];
}

static void kid_out(struct node *n)
{
    if (!n->pprev_kid)
        return;
    *n->pprev_kid = n->next_kid;
    if (n->next_kid)
        n->next_kid->pprev_kid = n->pprev_kid;
    n->pprev_kid = NULL;
}

static void unhash_name(struct node *n)
{
    if (!n->name)
        return;
    kid_out(n);
    for (struct node **p = &names[hash_name(n->parent, n->name)]; *p; p = &(*p)->next_name)
        if (*p == n) {
            *p = n->next_name;
            break;
        }
    free(n->name);
    n->name = NULL;
}

static void name_in(struct node *n)
{
    size_t j = hash_name(n->parent, n->name);
    n->next_name = names[j];
    names[j] = n;
    kid_in(n);
}

static void hash_in(struct node *n)
{
    size_t i = hash_id(n->id);
    n->next_id = ids[i];
    ids[i] = n;
    name_in(n);
}

static void free_node(struct node *n)
{
    for (struct node **p = &ids[hash_id(n->id)]; *p; p = &(*p)->next_id)
        if (*p == n) {
            *p = n->next_id;
            break;
        }
    unhash_name(n);
    free(n);
    count--;
}

static int grow(void)
{
    size_t old = cap, ncap = cap ? cap * 2 : 1 << 12;
    struct node **nids = calloc(ncap, sizeof *nids), **nnames = calloc(ncap, sizeof *nnames);
    struct node **nkids = calloc(ncap, sizeof *nkids);
    if (!nids || !nnames || !nkids) {
        free(nids);
        free(nnames);
        free(nkids);
        return -1;
    }
    struct node **oids = ids;
    free(names);
    free(kids);
    ids = nids;
    names = nnames;
    kids = nkids;
    cap = ncap;
    for (size_t i = 0; i < old; i++)
        for (struct node *n = oids[i], *next; n; n = next) {
            next = n->next_id;
            if (n->name)
                hash_in(n);
            else { /* nameless: only in the id table */
                size_t k = hash_id(n->id);
                n->next_id = ids[k];
                ids[k] = n;
            }
        }
    free(oids);
    return 0;
}

/* Drop cached nodes the kernel does not hold and whose attributes expired: a 10,000-file listing
 * should not stay in memory forever. Amortised: runs when the table doubled since the last sweep. */
static void sweep(void)
{
    if (!cap)
        return;
    double t = now();
    for (size_t i = 0; i < cap; i++)
        for (struct node *n = ids[i], *next; n; n = next) {
            next = n->next_id;
            if (!n->nlookup && !n->writers && !n->pending && n->attr_until < t && n->list_until < t)
                free_node(n); /* a file made here stays until the MRC has it: a lease answers by the table */
        }
    swept = count;
}

static struct node *new_node(uint64_t parent, const char *name)
{
    if (count + 1 > cap && grow() < 0)
        return NULL;
    struct node *n = calloc(1, sizeof *n);
    if (!n || !(n->name = strdup(name))) {
        free(n);
        return NULL;
    }
    n->id = next_id++;
    n->parent = parent;
    hash_in(n);
    count++;
    return n;
}

static void fill_stat(const struct xf_attr *a, struct stat *st, unsigned blksize)
{
    memset(st, 0, sizeof *st);
    st->st_ino = a->ino;
    st->st_mode = a->mode;
    st->st_nlink = a->nlink;
    st->st_uid = a->uid;
    st->st_gid = a->gid;
    st->st_rdev = (dev_t)a->rdev;
    st->st_size = (off_t)a->size;
    st->st_blocks = (blkcnt_t)((a->size + 511) / 512);
    st->st_blksize = blksize;
    st->st_atim.tv_sec = a->atime_ns / 1000000000;
    st->st_atim.tv_nsec = a->atime_ns % 1000000000;
    st->st_mtim.tv_sec = a->mtime_ns / 1000000000;
    st->st_mtim.tv_nsec = a->mtime_ns % 1000000000;
    st->st_ctim.tv_sec = a->ctime_ns / 1000000000;
    st->st_ctim.tv_nsec = a->ctime_ns % 1000000000;
}

static unsigned io_size = 1 << 20;

/* Record (parent, name) -> attributes; with `lookup`, the kernel now holds one more reference. */
static struct node *record(uint64_t parent, const char *name, const struct xf_attr *a, double ttl, int lookup)
{
    struct node *n = find_name(parent, name);
    if (n && n->attr.ino != a->ino) { /* another file under this name now: another node */
        unhash_name(n);
        if (!n->nlookup && !n->writers)
            free_node(n);
        n = NULL;
    }
    if (!n && !(n = new_node(parent, name)))
        return NULL;
    n->attr = *a;
    n->attr_until = now() + ttl;
    n->listed = generation;
    if (lookup)
        n->nlookup++;
    if (count > 2 * swept + 4096)
        sweep();
    return n;
}

uint64_t xf_entry(uint64_t parent, const char *name, const struct xf_attr *a, double ttl, int lookup)
{
    pthread_mutex_lock(&lock);
    struct node *n = record(parent, name, a, ttl, lookup);
    uint64_t id = n ? n->id : 0;
    pthread_mutex_unlock(&lock);
    return id;
}

/* `dir` holds exactly these names now (`names_`: n NUL-terminated names back to back): recorded (without a kernel reference), the names it no
 * longer holds forgotten, and absent names answered from it until the TTL runs out. One lock
 * throughout, so two listings of one directory cannot drop each other's names. */
void xf_fill(uint64_t dir, const char *names_, const struct xf_attr *attrs, size_t n, double ttl,
             uint64_t version)
{
    pthread_mutex_lock(&lock);
    generation++;
    for (size_t i = 0; i < n; i++, names_ += strlen(names_) + 1)
        record(dir, names_, &attrs[i], ttl, 0);
    struct node *d = find_id(dir);
    if (d) {
        for (struct node *m = cap ? kids[hash_id(dir)] : NULL, *next; m; m = next) {
            next = m->next_kid;
            if (m->parent == dir && m->listed != generation && !m->pending) {
                unhash_name(m);
                if (!m->nlookup && !m->writers)
                    free_node(m);
            }
        }
        d->list_until = now() + ttl;
        d->version = version;
    }
    pthread_mutex_unlock(&lock);
}

int xf_listing(uint64_t dir, uint64_t *version)
{
    pthread_mutex_lock(&lock);
    struct node *d = find_id(dir);
    int has = d && d->list_until ? (d->list_until > now() ? 1 : 2) : 0;
    if (has)
        *version = d->version;
    pthread_mutex_unlock(&lock);
    return has;
}

/* The MRC says `dir` changed nothing its listing shows since the listing: it, and what is known of
 * the names in it, hold for another TTL. */
void xf_refresh(uint64_t dir, double ttl)
{
    double until = now() + ttl;
    pthread_mutex_lock(&lock);
    struct node *d = find_id(dir);
    if (d && d->list_until) {
        for (struct node *m = cap ? kids[hash_id(dir)] : NULL; m; m = m->next_kid)
            if (m->parent == dir && m->attr_until)
                m->attr_until = until;
        d->list_until = until;
    }
    pthread_mutex_unlock(&lock);
}

/* The MRC says `dir` changed since its listing at `version`: the listing is no longer held, unless a
 * newer one came meanwhile. (Under a lease here that stops native creates until the next create's
 * lease fills the listing again: slower, never wrong.) */
void xf_unlist(uint64_t dir, uint64_t version)
{
    pthread_mutex_lock(&lock);
    struct node *d = find_id(dir);
    if (d && d->version == version)
        d->list_until = 0;
    pthread_mutex_unlock(&lock);
}

void xf_advance(uint64_t dir, uint64_t before, uint64_t after)
{
    pthread_mutex_lock(&lock);
    struct node *d = find_id(dir);
    if (d && d->list_until && d->version == before)
        d->version = after;
    pthread_mutex_unlock(&lock);
}

uint64_t xf_parent(uint64_t node)
{
    pthread_mutex_lock(&lock);
    struct node *n = find_id(node);
    uint64_t parent = n && n->name && n != &root ? n->parent : 0;
    pthread_mutex_unlock(&lock);
    return parent;
}

int xf_path(uint64_t node, char *buf, size_t size)
{
    pthread_mutex_lock(&lock);
    size_t need = 1; /* the NUL */
    struct node *n = find_id(node);
    for (; n && n != &root && n->name; n = find_id(n->parent))
        need += strlen(n->name) + 1;
    if (n != &root) {
        pthread_mutex_unlock(&lock);
        return -ENOENT;
    }
    if (need == 1)
        need = 2; /* "/" */
    if (need > size || need > INT32_MAX) {
        pthread_mutex_unlock(&lock);
        return -ENAMETOOLONG;
    }
    size_t pos = need; /* filled from the end */
    buf[--pos] = 0;
    for (n = find_id(node); n != &root; n = find_id(n->parent)) {
        size_t len = strlen(n->name);
        pos -= len;
        memcpy(buf + pos, n->name, len);
        buf[--pos] = '/';
    }
    if (pos == 1)
        buf[0] = '/';
    pthread_mutex_unlock(&lock);
    return (int)need - 1;
}

int xf_peek(uint64_t parent, const char *name, struct xf_attr *out)
{
    pthread_mutex_lock(&lock);
    struct node *n = find_name(parent, name);
    int known = n && n->attr_until;
    if (known)
        *out = n->attr;
    pthread_mutex_unlock(&lock);
    return known;
}

int xf_attr_of(uint64_t node, struct xf_attr *out)
{
    pthread_mutex_lock(&lock);
    struct node *n = find_id(node);
    int known = n && n->attr.ino; /* however old: the inode number does not change */
    if (known)
        *out = n->attr;
    pthread_mutex_unlock(&lock);
    return known;
}

void xf_set_attr(uint64_t node, const struct xf_attr *a, double ttl)
{
    pthread_mutex_lock(&lock);
    struct node *n = find_id(node);
    if (n) {
        n->attr = *a;
        n->attr_until = now() + ttl;
    }
    pthread_mutex_unlock(&lock);
}

void xf_drop(uint64_t parent, const char *name)
{
    pthread_mutex_lock(&lock);
    struct node *n = find_name(parent, name);
    if (n) {
        unhash_name(n);
        n->attr_until = 0;
        if (!n->nlookup && !n->writers)
            free_node(n);
    }
    pthread_mutex_unlock(&lock);
}

void xf_move(uint64_t parent, const char *name, uint64_t newparent, const char *newname)
{
    pthread_mutex_lock(&lock);
    struct node *over = find_name(newparent, newname), *n = find_name(parent, name);
    if (over && over != n) {
        unhash_name(over);
        over->attr_until = 0;
        if (!over->nlookup && !over->writers)
            free_node(over);
    }
    if (n) {
        char *copy = strdup(newname);
        unhash_name(n);
        n->name = copy;
        n->parent = newparent;
        if (n->attr_until)
            n->attr_until = STALE; /* its ctime changed */
        if (copy)
            name_in(n);
    }
    pthread_mutex_unlock(&lock);
}

void xf_forget_attr(uint64_t node)
{
    pthread_mutex_lock(&lock);
    struct node *n = find_id(node);
    if (n && n->attr_until)
        n->attr_until = STALE;
    pthread_mutex_unlock(&lock);
}

/* A file's other names (one node per name here, so hard links are separate nodes) keep its old link count
 * and ctime: asked again, here and in the kernel's cache. Scans the table: only for files with links. */
void xf_stale_ino(uint64_t ino)
{
    uint64_t found[64];
    size_t k = 0;
    pthread_mutex_lock(&lock);
    for (size_t i = 0; i < cap; i++)
        for (struct node *n = ids[i]; n; n = n->next_id)
            if (n->attr_until && n->attr.ino == ino) {
                n->attr_until = STALE;
                if (k < sizeof found / sizeof *found)
                    found[k++] = n->id;
            }
    pthread_mutex_unlock(&lock);
    for (size_t i = 0; i < k; i++)
        if (se_of_loop) /* attributes only (offset < 0): takes no inode lock, safe inside a request */
            fuse_lowlevel_notify_inval_inode(se_of_loop, found[i], -1, 0);
}

void xf_forget_all(void)
{
    pthread_mutex_lock(&lock);
    for (size_t i = 0; i < cap; i++)
        for (struct node *n = ids[i]; n; n = n->next_id) {
            if (n->attr_until)
                n->attr_until = STALE;
            n->list_until = 0;
        }
    if (root.attr_until)
        root.attr_until = STALE;
    root.list_until = 0;
    pthread_mutex_unlock(&lock);
}

/* Something changed in `dir`: its times (and link count) as the MRC now has them, near enough. The
 * kernel asks for a directory's attributes after every change in it; forgetting them would make
 * that a round trip per create. */
void xf_touch_dir(uint64_t dir, int links)
{
    pthread_mutex_lock(&lock);
    struct node *d = find_id(dir);
    if (d) {
        d->attr.nlink += links;
        /* Its times are the MRC's from now on, asked for again: times made up here differed from them, and a
         * directory whose times move when nothing changes it is one tar says "changed as we read it". */
        if (d->attr_until)
            d->attr_until = STALE;
    }
    pthread_mutex_unlock(&lock);
}

void xf_writers(uint64_t node, int delta)
{
    pthread_mutex_lock(&lock);
    struct node *n = find_id(node);
    if (n)
        n->writers += delta;
    pthread_mutex_unlock(&lock);
}

/* A handle open write-only writes around the page cache: it cannot be read or mapped, and copying
 * its data into freshly allocated cache pages cost a third of a sequential write's CPU here. The
 * kernel drops cached pages of the range it writes, so other handles see the new bytes. */
static void write_around(struct fuse_file_info *fi)
{
    if ((fi->flags & O_ACCMODE) == O_WRONLY)
        fi->direct_io = 1;
}

/* Directory leases and the files made under them */

static void fill_entry(struct fuse_entry_param *e, uint64_t id, const struct xf_attr *a, double ttl);

static uint32_t owner_uid;
static struct xf_made *made;
static size_t made_n, made_cap;
static pthread_cond_t made_cond = PTHREAD_COND_INITIALIZER;
static uint64_t local_fh;

void xf_owner(uint32_t uid) { owner_uid = uid; }

void xf_lease(uint64_t dir, uint64_t dir_ino, double until, uint32_t gid, uint64_t ino_lo, uint64_t ino_hi)
{
    pthread_mutex_lock(&lock);
    struct node *d = find_id(dir);
    if (d) {
        d->lease_until = until;
        d->lease_ino = dir_ino;
        d->lease_gid = gid;
        if (ino_hi > ino_lo) {
            d->ino_next = ino_lo;
            d->ino_end = ino_hi;
        }
    }
    pthread_mutex_unlock(&lock);
}

uint64_t xf_lease_left(uint64_t dir)
{
    pthread_mutex_lock(&lock);
    struct node *d = find_id(dir);
    uint64_t left = d && d->ino_end > d->ino_next ? d->ino_end - d->ino_next : 0;
    pthread_mutex_unlock(&lock);
    return left;
}

size_t xf_made_count(void)
{
    pthread_mutex_lock(&lock);
    size_t n = made_n;
    pthread_mutex_unlock(&lock);
    return n;
}

/* Up to `max` files made here, oldest first, waiting up to `wait` seconds for one (max 0: only wait,
 * and say how many there are). */
size_t xf_take_made(struct xf_made *out, size_t max, double wait)
{
    pthread_mutex_lock(&lock);
    if (!made_n && wait > 0) {
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        double end = ts.tv_sec + ts.tv_nsec * 1e-9 + wait;
        ts.tv_sec = (time_t)end;
        ts.tv_nsec = (long)((end - (double)ts.tv_sec) * 1e9);
        pthread_cond_timedwait(&made_cond, &lock, &ts);
    }
    if (!max) { /* only waiting */
        size_t n = made_n;
        pthread_mutex_unlock(&lock);
        return n;
    }
    size_t n = made_n < max ? made_n : max;
    for (size_t i = 0; i < n; i++) {
        struct node *f = find_id(made[i].node);
        if (f)
            f->taken = 1;
    }
    memcpy(out, made, n * sizeof *made);
    memmove(made, made + n, (made_n - n) * sizeof *made);
    made_n -= n;
    pthread_mutex_unlock(&lock);
    return n;
}

/* The MRC has the file made here as inode `ino` (0: it refused it, the name was taken meanwhile). */
void xf_confirm(uint64_t node, uint64_t ino)
{
    pthread_mutex_lock(&lock);
    struct node *n = find_id(node);
    if (n) {
        n->pending = 0;
        if (!ino) {
            unhash_name(n);
            n->attr_until = 0;
        } else {
            n->attr.ino = ino;
        }
    }
    pthread_mutex_unlock(&lock);
}

int xf_queued(uint64_t node)
{
    pthread_mutex_lock(&lock);
    struct node *n = find_id(node);
    int queued = n && n->pending && !n->taken;
    pthread_mutex_unlock(&lock);
    return queued;
}

uint64_t xf_node_of(uint64_t parent, const char *name)
{
    pthread_mutex_lock(&lock);
    struct node *n = find_name(parent, name);
    uint64_t id = n ? n->id : 0;
    pthread_mutex_unlock(&lock);
    return id;
}

/* Handles open on files made here that Python has not adopted: (handle, node) */
struct local {
    uint64_t fh, node;
    struct local *next;
};

static struct local *locals[256];

static void written_lock_(void);
static void written_unlock_(void);

static void add_local(uint64_t fh, uint64_t node)
{
    struct local *l = malloc(sizeof *l);
    if (!l)
        return;
    l->fh = fh;
    l->node = node;
    written_lock_();
    l->next = locals[fh & 255];
    locals[fh & 255] = l;
    written_unlock_();
}

static void drop_local(uint64_t fh)
{
    written_lock_();
    for (struct local **p = &locals[fh & 255]; *p; p = &(*p)->next)
        if ((*p)->fh == fh) {
            struct local *l = *p;
            *p = l->next;
            free(l);
            break;
        }
    written_unlock_();
}

size_t xf_local_handles(uint64_t node, uint64_t *fhs, size_t max)
{
    size_t n = 0;
    written_lock_();
    for (size_t i = 0; i < 256; i++)
        for (struct local *l = locals[i]; l; l = l->next)
            if (l->node == node && n < max)
                fhs[n++] = l->fh;
    written_unlock_();
    return n;
}

/* CREATE answered here when the directory is leased to this mount and its listing known: the file
 * gets an inode number from the lease's, and goes to the MRC with others in a batch. 1: answered. */
static int create_here(fuse_req_t req, fuse_ino_t parent, const char *name, mode_t mode, struct fuse_file_info *fi)
{
    /* a file its owner may not write is made here too (git's objects are 0444): a handle Python adopts
     * is reopened at the MRC as the kernel checked it, which the MRC honours for the owner */
    if (strlen(name) > 255)
        return 0;
    double t = now();
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    int64_t wall = (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
    wall -= wall % 1000; /* microseconds: what the MRC's times (seconds in a double) carry exactly */
    pthread_mutex_lock(&lock);
    struct node *d = find_id(parent);
    if (!d || d->lease_until <= t || !d->list_until || d->ino_next >= d->ino_end || find_name(parent, name)) {
        pthread_mutex_unlock(&lock);
        return 0;
    }
    if (made_n == made_cap) {
        size_t ncap = made_cap ? made_cap * 2 : 256;
        struct xf_made *m = realloc(made, ncap * sizeof *m);
        if (!m) {
            pthread_mutex_unlock(&lock);
            return 0;
        }
        made = m;
        made_cap = ncap;
    }
    struct xf_attr a = {.ino = d->ino_next, .mode = S_IFREG | (mode & 07777), .nlink = 1, .uid = owner_uid,
                        .gid = d->attr.mode & S_ISGID ? d->attr.gid : d->lease_gid,
                        .atime_ns = wall, .mtime_ns = wall, .ctime_ns = wall};
    struct node *n = record(parent, name, &a, default_ttl, 1);
    if (!n) {
        pthread_mutex_unlock(&lock);
        return 0;
    }
    d->ino_next++;
    n->pending = 1;
    uint64_t fh = XF_LOCAL_FH | ++local_fh;
    struct xf_made *m = &made[made_n++];
    m->dir_ino = d->lease_ino;
    m->dir_node = parent;
    m->node = n->id;
    m->ino = a.ino;
    m->fh = fh;
    m->mode = a.mode;
    m->time_ns = wall;
    strcpy(m->name, name);
    d->attr.mtime_ns = d->attr.ctime_ns = wall;
    uint64_t id = n->id;
    pthread_cond_signal(&made_cond);
    pthread_mutex_unlock(&lock);
    add_local(fh, id);
    struct fuse_entry_param e;
    fill_entry(&e, id, &a, default_ttl);
    fi->fh = fh;
    write_around(fi);
    if (fuse_reply_create(req, &e, fi) != 0) { /* interrupted: made all the same, but nobody holds it */
        drop_local(fh);
        pthread_mutex_lock(&lock);
        n->nlookup--;
        pthread_mutex_unlock(&lock);
    }
    return 1;
}

/* Handles that wrote since they were opened: only their FLUSH (every close sends one) has work for
 * Python; a clean one's is answered here. A create-and-close spent a third of its Python calls on it. */
struct written {
    uint64_t fh;
    struct written *next;
};

static struct written *written_[256];
static pthread_mutex_t written_lock = PTHREAD_MUTEX_INITIALIZER;

void xf_written(uint64_t fh, int on)
{
    if (on && fh & XF_LOCAL_FH)
        drop_local(fh); /* Python adopted it: its FLUSH and RELEASE go there now */
    pthread_mutex_lock(&written_lock);
    struct written **p = &written_[fh & 255];
    while (*p && (*p)->fh != fh)
        p = &(*p)->next;
    if (on && !*p) {
        struct written *w = malloc(sizeof *w);
        if (w) {
            w->fh = fh;
            w->next = NULL;
            *p = w;
        }
    } else if (!on && *p) {
        struct written *w = *p;
        *p = w->next;
        free(w);
    }
    pthread_mutex_unlock(&written_lock);
}

static void written_lock_(void) { pthread_mutex_lock(&written_lock); }
static void written_unlock_(void) { pthread_mutex_unlock(&written_lock); }

static int has_written(uint64_t fh)
{
    pthread_mutex_lock(&written_lock);
    struct written *w = written_[fh & 255];
    while (w && w->fh != fh)
        w = w->next;
    pthread_mutex_unlock(&written_lock);
    return w != NULL;
}

/* replies */

static void fill_entry(struct fuse_entry_param *e, uint64_t id, const struct xf_attr *a, double ttl)
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
    struct node *n = record(parent, name, a, ttl, 1);
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
    if (cache)
        xf_set_attr(node, a, ttl);
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

/* Reads straight from an OSD.
 *
 * A random 4 KiB read through Python cost a FUSE hand-off to Python, the client's bookkeeping and its
 * HTTP request; here it is one request on a kept-alive socket. A whole 1 MiB request costs the mount
 * 0.7-0.9 ms of CPU here against 2.0-2.3 through Python. Such handles are direct I/O (see io_writev),
 * so the kernel neither caches nor reads ahead for them: a reader that goes on where it stopped has
 * the next 4 MiB fetched by the fetcher threads in whole chunks, and its reads are answered from them.
 * Python registers a plan for a
 * handle open read-only on a file with OSD objects (its capability, the OSDs of the replica it
 * prefers, the size it opened it at) and drops it when anything could make the OSDs' bytes not the
 * ones to read (a write here, a truncate). Anything but a whole 200 answer goes to Python, which
 * retries, fails over, renews the capability and tells a removed file from a hole. */

#define PLAN_MAX_READ (1 << 20) /* a whole request (max_read) */
#define READAHEAD_REQUESTS 4 /* see raise_readahead */
#define MAX_COLUMNS 64
#define OSD_TIMEOUT 2 /* seconds; past it Python takes the read and fails over */

#define CHUNK_MAX PLAN_MAX_READ
#define AHEAD_BYTES (4 << 20) /* what a sequential reader has fetched ahead of it */
#define MAX_SLOTS 96          /* 4 MiB ahead and two requests' worth, in chunks of 64 KiB at the least */
#define FETCHERS 4
#define PREFETCH_MAX (256 << 20) /* all handles' chunks together: past it, readers get one GET per read */

enum slot_state { EMPTY, FETCHING, READY, FAILED };

/* One chunk of the file (a whole object, or 1 MiB of it) fetched ahead of a sequential reader. */
struct slot {
    uint64_t start, len;
    int state, pins; /* pins: replies being sent from it */
    char *buf;
};

struct plan {
    uint64_t fh, size;
    uint32_t stripe;
    size_t ncol;
    char *fid, *headers;
    struct sockaddr_in col[MAX_COLUMNS];
    char host[MAX_COLUMNS][48];
    int refs;           /* the table's, and each fetch's and read's under way */
    int dead;           /* out of the table: what is fetched for it is read by nobody */
    uint64_t reads;
    uint64_t next_off;  /* where the reader reads next if it reads on */
    uint64_t chunk;
    int nslots;
    struct slot slots[MAX_SLOTS];
    struct plan *next;
};

static struct plan *plans[256];
static pthread_mutex_t plans_lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t slots_cond = PTHREAD_COND_INITIALIZER; /* a slot's fetch ended */
static uint64_t slot_bytes; /* chunk buffers of every plan (under plans_lock) */

static void free_plan(struct plan *p) /* under plans_lock if it has chunk buffers */
{
    for (int i = 0; i < p->nslots; i++)
        if (p->slots[i].buf) {
            free(p->slots[i].buf);
            slot_bytes -= p->chunk;
        }
    free(p->fid);
    free(p->headers);
    free(p);
}

static void put_plan(struct plan *p) /* under plans_lock */
{
    if (--p->refs == 0)
        free_plan(p);
}

void xf_unplan(uint64_t fh)
{
    pthread_mutex_lock(&plans_lock);
    for (struct plan **pp = &plans[fh & 255]; *pp; pp = &(*pp)->next)
        if ((*pp)->fh == fh) {
            struct plan *p = *pp;
            *pp = p->next;
            p->dead = 1;
            put_plan(p); /* fetches under way finish into it, and nobody reads them */
            break;
        }
    pthread_mutex_unlock(&plans_lock);
}

int xf_plan(uint64_t fh, const char *fid, const char *headers, uint64_t size, uint32_t stripe, const char *osds,
            size_t ncol)
{
    if (!ncol || ncol > MAX_COLUMNS || !stripe)
        return -EINVAL;
    struct plan *p = calloc(1, sizeof *p);
    if (!p)
        return -ENOMEM;
    p->fh = fh;
    p->size = size;
    p->stripe = stripe;
    p->ncol = ncol;
    p->refs = 1;
    p->chunk = stripe < CHUNK_MAX ? stripe : CHUNK_MAX;
    uint64_t n = (AHEAD_BYTES + 2 * PLAN_MAX_READ) / p->chunk + 2;
    p->nslots = n < MAX_SLOTS ? (int)n : MAX_SLOTS;
    p->fid = strdup(fid);
    p->headers = strdup(headers);
    for (size_t i = 0; i < ncol; i++, osds += strlen(osds) + 1) {
        const char *colon = strrchr(osds, ':');
        char ip[48];
        if (!colon || (size_t)(colon - osds) >= sizeof ip || strlen(osds) >= sizeof p->host[i]) {
            free_plan(p);
            return -EINVAL;
        }
        memcpy(ip, osds, (size_t)(colon - osds));
        ip[colon - osds] = 0;
        p->col[i].sin_family = AF_INET;
        p->col[i].sin_port = htons((uint16_t)atoi(colon + 1));
        if (inet_pton(AF_INET, ip, &p->col[i].sin_addr) != 1) { /* a host name: Python resolves those */
            free_plan(p);
            return -EINVAL;
        }
        strcpy(p->host[i], osds);
    }
    if (!p->fid || !p->headers) {
        free_plan(p);
        return -ENOMEM;
    }
    xf_unplan(fh);
    pthread_mutex_lock(&plans_lock);
    p->next = plans[fh & 255];
    plans[fh & 255] = p;
    pthread_mutex_unlock(&plans_lock);
    return 0;
}

/* kept-alive connections to OSDs */
struct idle {
    struct sockaddr_in addr;
    int fd;
};

static struct idle idles[64];
static int nidle;
static pthread_mutex_t idle_lock = PTHREAD_MUTEX_INITIALIZER;

static int same_addr(const struct sockaddr_in *a, const struct sockaddr_in *b)
{
    return a->sin_addr.s_addr == b->sin_addr.s_addr && a->sin_port == b->sin_port;
}

static int conn_get(const struct sockaddr_in *a, int *reused)
{
    pthread_mutex_lock(&idle_lock);
    for (int i = 0; i < nidle; i++)
        if (same_addr(&idles[i].addr, a)) {
            int fd = idles[i].fd;
            idles[i] = idles[--nidle];
            pthread_mutex_unlock(&idle_lock);
            *reused = 1;
            return fd;
        }
    pthread_mutex_unlock(&idle_lock);
    *reused = 0;
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return -1;
    int one = 1;
    struct timeval tv = {.tv_sec = OSD_TIMEOUT};
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv); /* bounds connect() too */
    if (connect(fd, (const struct sockaddr *)a, sizeof *a) < 0) {
        close(fd);
        return -1;
    }
    return fd;
}

static void conn_put(const struct sockaddr_in *a, int fd)
{
    pthread_mutex_lock(&idle_lock);
    if (nidle < (int)(sizeof idles / sizeof *idles)) {
        idles[nidle].addr = *a;
        idles[nidle++].fd = fd;
        fd = -1;
    }
    pthread_mutex_unlock(&idle_lock);
    if (fd >= 0)
        close(fd);
}

static void close_idle(void)
{
    pthread_mutex_lock(&idle_lock);
    while (nidle)
        close(idles[--nidle].fd);
    pthread_mutex_unlock(&idle_lock);
}

static int send_all(int fd, const char *buf, size_t len)
{
    while (len) {
        ssize_t n = send(fd, buf, len, MSG_NOSIGNAL);
        if (n <= 0)
            return -1;
        buf += n;
        len -= (size_t)n;
    }
    return 0;
}

/* One GET on `fd`: the body's length (into `out`, at most `want`), or -1 (the connection is unusable
 * or the answer was not a 200 with a body that fits). */
static ssize_t get_range(int fd, const char *request, size_t reqlen, char *out, size_t want)
{
    if (send_all(fd, request, reqlen) < 0)
        return -1;
    char head[8192];
    size_t have = 0;
    char *end = NULL;
    while (!end) {
        if (have == sizeof head - 1)
            return -1;
        ssize_t n = recv(fd, head + have, sizeof head - 1 - have, 0);
        if (n <= 0)
            return -1;
        have += (size_t)n;
        head[have] = 0;
        end = strstr(head, "\r\n\r\n");
    }
    *end = 0;
    size_t body_start = (size_t)(end - head) + 4;
    if (strncmp(head, "HTTP/1.1 200 ", 13) != 0)
        return -1;
    const char *cl = strcasestr(head, "\r\nContent-Length:");
    if (!cl)
        return -1;
    char *stop;
    unsigned long long len = strtoull(cl + 17, &stop, 10);
    if (stop == cl + 17 || len > want)
        return -1;
    size_t got = have - body_start;
    if (got > len)
        return -1; /* more than this answer: out of step */
    memcpy(out, head + body_start, got);
    while (got < len) {
        ssize_t n = recv(fd, out + got, len - got, 0);
        if (n <= 0)
            return -1;
        got += (size_t)n;
    }
    return (ssize_t)len;
}

/* The chunk holding `off`: chunks never cross an object's end, nor the file's. */
static uint64_t chunk_start(const struct plan *p, uint64_t off)
{
    uint64_t obj = off - off % p->stripe;
    return obj + (off - obj) / p->chunk * p->chunk;
}

static uint64_t chunk_end(const struct plan *p, uint64_t start)
{
    uint64_t obj_end = start - start % p->stripe + p->stripe, end = start + p->chunk;
    end = end < obj_end ? end : obj_end;
    return end < p->size ? end : p->size;
}

/* `len` bytes at `start` (within one object) from its OSD into `buf`, zeros past the object's end: 0, or -1. */
static int fetch(const struct plan *p, uint64_t start, size_t len, char *buf)
{
    char request[8192];
    uint64_t objno = start / p->stripe, inner = start % p->stripe;
    size_t col = (size_t)(objno % p->ncol);
    int reqlen = snprintf(request, sizeof request,
                          "GET /v1/o/%s/%llu?off=%llu&len=%zu HTTP/1.1\r\nHost: %s\r\nContent-Length: 0\r\n%s\r\n",
                          p->fid, (unsigned long long)objno, (unsigned long long)inner, len, p->host[col],
                          p->headers);
    if (reqlen < 0 || (size_t)reqlen >= sizeof request)
        return -1;
    ssize_t got = -1;
    for (int attempt = 0; attempt < 2 && got < 0; attempt++) {
        int reused;
        int fd = conn_get(&p->col[col], &reused);
        if (fd < 0)
            break;
        got = get_range(fd, request, (size_t)reqlen, buf, len);
        if (got >= 0)
            conn_put(&p->col[col], fd);
        else
            close(fd);
        if (!reused)
            break; /* a fresh connection failed: the OSD's trouble, for Python to fail over from */
    }
    if (got < 0)
        return -1;
    memset(buf + got, 0, len - (size_t)got); /* past the object's end, within the file: a hole */
    return 0;
}

/* prefetching: a few threads fetch the chunks a sequential reader will want next */

struct job {
    struct plan *p;
    int slot;
};

static struct job jobs[512];
static unsigned jobs_head, jobs_tail;
static pthread_cond_t jobs_cond = PTHREAD_COND_INITIALIZER;
static pthread_once_t fetchers_once = PTHREAD_ONCE_INIT;
static int fetchers_started;

static void *fetcher(void *arg)
{
    (void)arg;
    pthread_mutex_lock(&plans_lock);
    for (;;) {
        while (jobs_head == jobs_tail)
            pthread_cond_wait(&jobs_cond, &plans_lock);
        struct job j = jobs[jobs_tail++ % (sizeof jobs / sizeof *jobs)];
        struct slot *s = &j.p->slots[j.slot];
        uint64_t start = s->start, len = s->len;
        char *buf = s->buf;
        int dead = j.p->dead;
        pthread_mutex_unlock(&plans_lock);
        int ok = !dead && fetch(j.p, start, (size_t)len, buf) == 0;
        pthread_mutex_lock(&plans_lock);
        s->state = ok ? READY : FAILED;
        pthread_cond_broadcast(&slots_cond);
        put_plan(j.p);
    }
    return NULL;
}

static void start_fetchers(void)
{
    pthread_attr_t attr;
    pthread_attr_init(&attr);
    pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
    for (int i = 0; i < FETCHERS; i++) {
        pthread_t t;
        if (pthread_create(&t, &attr, fetcher, NULL) == 0)
            fetchers_started++;
    }
    pthread_attr_destroy(&attr);
}

static struct slot *slot_of(struct plan *p, uint64_t start)
{
    for (int i = 0; i < p->nslots; i++)
        if (p->slots[i].state != EMPTY && p->slots[i].start == start)
            return &p->slots[i];
    return NULL;
}

/* Have the chunk at `start` fetched unless it is, into a slot the reader has left behind (under plans_lock). */
static void schedule(struct plan *p, uint64_t start)
{
    struct slot *s = slot_of(p, start);
    if (s && s->state != FAILED)
        return;
    if (!s)
        for (int i = 0; i < p->nslots && !s; i++) {
            struct slot *c = &p->slots[i];
            if (c->state == EMPTY || (!c->pins && c->state != FETCHING && c->start + c->len <= p->next_off))
                s = c;
        }
    if (!s || jobs_head - jobs_tail >= sizeof jobs / sizeof *jobs)
        return;
    if (!s->buf) {
        if (slot_bytes + p->chunk > PREFETCH_MAX || !(s->buf = malloc(p->chunk)))
            return;
        slot_bytes += p->chunk;
    }
    s->start = start;
    s->len = chunk_end(p, start) - start;
    s->state = FETCHING;
    p->refs++;
    jobs[jobs_head++ % (sizeof jobs / sizeof *jobs)] = (struct job){p, (int)(s - p->slots)};
    pthread_cond_signal(&jobs_cond);
}

/* READ answered from the OSDs if the handle has a plan: 1, or 0 and nothing sent (Python answers it).
 * A reader that goes on where it stopped has the next AHEAD_BYTES fetched by the fetcher threads, its
 * reads answered from those chunks; any other read is one GET of its own, if it lies in one chunk. */
static int read_direct(fuse_req_t req, uint64_t fh, size_t size, off_t off)
{
    if (size > PLAN_MAX_READ || off < 0)
        return 0;
    pthread_mutex_lock(&plans_lock);
    struct plan *p = plans[fh & 255];
    while (p && p->fh != fh)
        p = p->next;
    if (!p) {
        pthread_mutex_unlock(&plans_lock);
        return 0;
    }
    uint64_t o = (uint64_t)off;
    if (o >= p->size) {
        pthread_mutex_unlock(&plans_lock);
        fuse_reply_buf(req, NULL, 0);
        return 1;
    }
    size_t len = size < p->size - o ? size : (size_t)(p->size - o);
    int sequential = p->reads++ && o == p->next_off; /* a first read at 0 is no sign of more */
    p->next_off = o + len;
    p->refs++;
    if (sequential) {
        pthread_once(&fetchers_once, start_fetchers);
        if (fetchers_started)
            for (uint64_t c = chunk_start(p, o); c < p->size && c < o + len + AHEAD_BYTES; c = chunk_end(p, c))
                schedule(p, c);
    }
    struct slot *used[MAX_SLOTS];
    int n = 0, ok = 1, failed = 0;
    for (uint64_t c = chunk_start(p, o); c < o + len && ok; c = chunk_end(p, c)) {
        struct slot *s = n < MAX_SLOTS ? slot_of(p, c) : NULL;
        failed = s && s->state == FAILED;
        ok = s && !failed;
        if (ok)
            used[n++] = s;
    }
    if (ok) {
        for (int i = 0; i < n; i++)
            used[i]->pins++; /* not reused while this read waits for them or is answered from them */
        struct timespec deadline;
        clock_gettime(CLOCK_REALTIME, &deadline);
        deadline.tv_sec += 3 * OSD_TIMEOUT; /* past it Python takes the read, and fails over */
        for (int i = 0; i < n && ok; i++) {
            while (used[i]->state == FETCHING && ok)
                ok = pthread_cond_timedwait(&slots_cond, &plans_lock, &deadline) == 0;
            ok = ok && used[i]->state == READY;
        }
        if (ok) {
            struct iovec iov[MAX_SLOTS];
            for (int i = 0; i < n; i++) {
                uint64_t from = i ? used[i]->start : o, to = used[i]->start + used[i]->len;
                to = to < o + len ? to : o + len;
                iov[i] = (struct iovec){used[i]->buf + (from - used[i]->start), (size_t)(to - from)};
            }
            pthread_mutex_unlock(&plans_lock);
            fuse_reply_iov(req, iov, n);
            pthread_mutex_lock(&plans_lock);
        }
        for (int i = 0; i < n; i++)
            used[i]->pins--;
        if (ok) {
            put_plan(p);
            pthread_mutex_unlock(&plans_lock);
            return 1;
        }
        failed = 1; /* a fetch failed or outlasted its deadline */
    }
    if (failed) { /* the OSD's trouble: Python retries, fails over, or reports an interrupt */
        put_plan(p);
        pthread_mutex_unlock(&plans_lock);
        return 0;
    }
    /* not fetched ahead: one GET if the range lies in one chunk */
    uint64_t cs = chunk_start(p, o);
    int one = o + len <= chunk_end(p, cs);
    pthread_mutex_unlock(&plans_lock);
    char *buf = one ? malloc(len ? len : 1) : NULL;
    int done = buf && fetch(p, o, len, buf) == 0;
    if (done)
        fuse_reply_buf(req, buf, len);
    free(buf);
    pthread_mutex_lock(&plans_lock);
    put_plan(p);
    pthread_mutex_unlock(&plans_lock);
    return done;
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
    if (!cap && grow() < 0) {
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
