/* Directory leases and the files made under them: a CREATE in a directory leased to this mount is
 * answered here, with an inode number from the lease's, and queued for Python to send to the MRC in a
 * batch; the handles open on such files until Python adopts them; and which handles wrote since they
 * were opened (a clean handle's FLUSH is answered here).
 */
#include "gridfuse_int.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

/* Directory leases and the files made under them */

static uint32_t owner_uid;
static struct xf_made *made;
/* On PostgreSQL the MRC took about 1,000 made files a second against 10,000-14,000 made here: unbounded,
 * the backlog grew to seconds and another client's listing waited on it past its timeout. */
#define MADE_BACKLOG 1024
static size_t made_n, made_cap;
static size_t made_multi; /* changes in the queue to a file with other names, whose attributes they change */

/* Whether change `m` changes what other names of its file show: a link always, a removal of a file with
 * other names (nlink: its link count before, 2 if not known). */
static int counts_multi(const struct xf_made *m)
{
    return m->kind == XF_MADE_LINK || (m->kind == XF_MADE_UNLINK && !S_ISDIR(m->mode) && m->nlink > 1);
}
/* Changes the sender took from the queue and the MRC has not answered yet: a request they show in is held
 * until then, as one they are queued for (a request about anything else goes on at once). */
static struct xf_made *flying;
static size_t flying_n, flying_cap;
static int flying_unknown; /* memory ran out for the list: anything may be on its way */
static pthread_cond_t made_cond = PTHREAD_COND_INITIALIZER;
static uint64_t local_fh;

void xf_owner(uint32_t uid) { owner_uid = uid; }

/* Room for one more change in the queue (under `lock`): 0 when memory ran out. */
static int made_room(void)
{
    if (made_n < made_cap)
        return 1;
    size_t ncap = made_cap ? made_cap * 2 : 256;
    struct xf_made *m = realloc(made, ncap * sizeof *m);
    if (!m)
        return 0;
    made = m;
    made_cap = ncap;
    return 1;
}

static int64_t wall_us_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    int64_t wall = (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
    return wall - wall % 1000; /* microseconds: what the MRC's times (seconds in a double) carry exactly */
}

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
        struct node *f = made[i].kind == XF_MADE_FILE ? find_id(made[i].node) : NULL;
        if (f)
            f->taken = 1;
    }
    for (size_t i = 0; i < n; i++)
        made_multi -= counts_multi(&made[i]); /* as queued */
    memcpy(out, made, n * sizeof *made);
    if (flying_n + n > flying_cap) {
        size_t ncap = flying_n + n > 2 * flying_cap ? flying_n + n : 2 * flying_cap;
        struct xf_made *f = realloc(flying, ncap * sizeof *f);
        if (f) {
            flying = f;
            flying_cap = ncap;
        }
    }
    if (flying_n + n <= flying_cap) {
        memcpy(flying + flying_n, made, n * sizeof *made);
        flying_n += n;
    } else {
        flying_unknown = 1;
    }
    memmove(made, made + n, (made_n - n) * sizeof *made);
    made_n -= n;
    pthread_mutex_unlock(&lock);
    return n;
}

/* Whether one of the `n` changes at `m` shows in what the MRC would answer about `node` (under `lock`): one in
 * it, one in a directory it lists, one of a name on its path, or another name of its file removed (`multi`:
 * whether any removal there is of a file with other names). A change elsewhere in a directory on its path
 * does not: rm -rf listing a directory waited for the removals queued in its parent to reach the MRC. */
static int touches(const struct xf_made *m, size_t n, int multi, uint64_t node)
{
    struct node *self = find_id(node);
    for (size_t i = 0; i < n; i++) {
        struct node *d = find_id(m[i].dir_node);
        if (d && d != &root && d->parent == node)
            return 1;
        if (multi && counts_multi(&m[i]) && self && self->attr.ino == m[i].ino)
            return 1;
    }
    for (struct node *p = find_id(node); p; p = p != &root && p->name ? find_id(p->parent) : NULL) {
        for (size_t i = 0; i < n; i++)
            if ((p == self && m[i].dir_node == p->id) || m[i].node == p->id || (m[i].node2 && m[i].node2 == p->id))
                return 1;
        if (p == &root)
            break;
    }
    return 0;
}

/* Whether a request about `node` (and `node2`) must wait for changes made here to reach the MRC: ones queued
 * or on their way that show in its answer. A request about anything else goes to the MRC at once. */
int xf_made_touches(uint64_t node, uint64_t node2)
{
    pthread_mutex_lock(&lock);
    int t = flying_unknown;
    for (int k = 0; k < 2 && !t; k++) {
        uint64_t x = k ? node2 : node;
        t = x && (touches(made, made_n, made_multi > 0, x) || touches(flying, flying_n, 1, x));
    }
    pthread_mutex_unlock(&lock);
    return t;
}

/* The MRC answered for the changes the sender took: none is on its way any more. */
void xf_made_sent(void)
{
    pthread_mutex_lock(&lock);
    flying_n = 0;
    flying_unknown = 0;
    pthread_mutex_unlock(&lock);
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

void drop_local(uint64_t fh)
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

/* Whether a handle the native loop gave out is open on `node` (under `lock`; takes the handles' lock). */
static int has_local(uint64_t node)
{
    int found = 0;
    written_lock_();
    for (size_t i = 0; i < 256 && !found; i++)
        for (struct local *l = locals[i]; l && !found; l = l->next)
            found = l->node == node;
    written_unlock_();
    return found;
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
int create_here(fuse_req_t req, fuse_ino_t parent, const char *name, mode_t mode, struct fuse_file_info *fi)
{
    /* a file its owner may not write is made here too (git's objects are 0444): a handle Python adopts
     * is reopened at the MRC as the kernel checked it, which the MRC honours for the owner */
    if (strlen(name) > 255)
        return 0;
    double t = now();
    int64_t wall = wall_us_ns();
    pthread_mutex_lock(&lock);
    struct node *d = find_id(parent);
    /* More made here than the MRC has taken so far than MADE_BACKLOG: asked of the MRC itself until the
     * sender catches up, so that the files a recall waits for go in well within a lease's term. */
    if (!d || d->lease_until <= t || !d->list_until || d->ino_next >= d->ino_end || find_name(parent, name) ||
        made_n >= MADE_BACKLOG) {
        pthread_mutex_unlock(&lock);
        return 0;
    }
    if (!made_room()) {
        pthread_mutex_unlock(&lock);
        return 0;
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
    m->node2 = 0;
    m->kind = XF_MADE_FILE;
    m->nlink = 1;
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

/* UNLINK answered here, under the same lease and in the same queue as files made here: rm -rf and git (which
 * links each object into place and unlinks its temporary name) otherwise wait on the MRC's transaction for
 * every name. The queue keeps the order: a file made, removed and made again under one name reaches the
 * MRC so. Only where the MRC would agree without a doubt: the directory is this mount user's own and
 * writable to it (no sticky bit, group or other rights to weigh), and the name's inode number is known.
 * A file open here is left to Python, which moves it aside until its last close. */
/* Whether names may be removed in directory `d` here (under `lock`): leased, its listing known, and the mount
 * user's own and writable to it. */
static int removable_in(const struct node *d, double t)
{
    return d && d->lease_until > t && d->list_until && made_n < MADE_BACKLOG && d->attr.uid == owner_uid &&
           (d->attr.mode & (S_IWUSR | S_IXUSR)) == (S_IWUSR | S_IXUSR) && made_room();
}

/* Queue the removal of `n` from `d` and drop it from the table (under `lock`). */
static void queue_removal(struct node *d, struct node *n, uint32_t nlink, int64_t wall)
{
    struct xf_made *m = &made[made_n++];
    m->kind = XF_MADE_UNLINK;
    m->dir_ino = d->lease_ino;
    m->dir_node = d->id;
    m->node = n->id;
    m->ino = n->attr.ino;
    m->fh = 0;
    m->mode = n->attr.mode;
    m->nlink = nlink;
    m->node2 = 0;
    made_multi += counts_multi(m);
    m->time_ns = wall;
    strcpy(m->name, n->name);
    unhash_name(n);
    n->attr_until = 0;
    if (!n->nlookup && !n->writers)
        free_node(n);
    d->attr.mtime_ns = d->attr.ctime_ns = wall;
    pthread_cond_signal(&made_cond);
}

/* A removal's start: the clocks, `lock` taken, the directory and the name's node (either NULL if unknown).
 * 0 (nothing taken) for a name longer than the queue holds. */
static int removal(uint64_t parent, const char *name, double *t, int64_t *wall, struct node **d, struct node **n)
{
    if (strlen(name) > 255)
        return 0;
    *t = now();
    *wall = wall_us_ns();
    pthread_mutex_lock(&lock);
    *d = find_id(parent);
    *n = find_name(parent, name);
    return 1;
}

int xf_unlink_here(uint64_t parent, const char *name)
{
    double t;
    int64_t wall;
    struct node *d, *n;
    if (!removal(parent, name, &t, &wall, &d, &n))
        return 0;
    if (!n || !removable_in(d, t) || !n->attr_until || !n->attr.ino || S_ISDIR(n->attr.mode) || n->writers ||
        has_local(n->id)) {
        pthread_mutex_unlock(&lock);
        return 0;
    }
    /* attributes no longer fresh (a link made since marks them stale): it may have other names */
    uint32_t nlink = n->attr_until > t ? n->attr.nlink : 2;
    queue_removal(d, n, nlink, wall);
    pthread_mutex_unlock(&lock);
    return nlink > 1 ? 2 : 1;
}

/* LINK answered here, as UNLINK is: git links each object into place from a temporary name it then removes,
 * both in the object's directory, and each link was an MRC call behind the batch holding the file. The
 * MRC makes the link with the changes queued before it. The new name is a node of its own (as every name
 * of a file is here); its link count is known only if the file's attributes are fresh, else it is asked
 * again, and the MRC's answer then waits for the link to reach it (xf_made_touches). */
int xf_link_here(fuse_req_t req, uint64_t node, uint64_t parent, const char *name)
{
    if (strlen(name) > 255)
        return 0;
    double t = now();
    int64_t wall = wall_us_ns();
    pthread_mutex_lock(&lock);
    struct node *d = find_id(parent), *n = find_id(node);
    if (!n || !n->name || n->parent != parent || !removable_in(d, t) || !n->attr_until || !n->attr.ino ||
        !S_ISREG(n->attr.mode) || n->writers || has_local(n->id) || find_name(parent, name)) {
        pthread_mutex_unlock(&lock);
        return 0;
    }
    int exact = n->attr_until > t && n->attr.nlink == 1;
    struct xf_attr a = n->attr;
    a.nlink = exact ? 2 : a.nlink + 1;
    a.ctime_ns = wall;
    struct node *m2 = record(parent, name, &a, exact ? n->attr_until - t : 0, 1);
    if (!m2) {
        pthread_mutex_unlock(&lock);
        return 0;
    }
    struct xf_made *m = &made[made_n++];
    m->kind = XF_MADE_LINK;
    m->dir_ino = d->lease_ino;
    m->dir_node = parent;
    m->node = n->id;
    m->node2 = m2->id;
    m->ino = n->attr.ino;
    m->fh = 0;
    m->mode = n->attr.mode;
    m->nlink = exact ? 1 : 2;
    m->time_ns = wall;
    strcpy(m->name, n->name);
    strcpy(m->name2, name);
    made_multi += counts_multi(m);
    if (exact) {
        n->attr.nlink = 2;
        n->attr.ctime_ns = wall;
    } else {
        changed_here(n);
        changed_here(m2);
    }
    d->attr.mtime_ns = d->attr.ctime_ns = wall;
    struct fuse_entry_param e;
    fill_entry(&e, m2->id, &a, exact ? m2->attr_until - t : 0);
    pthread_cond_signal(&made_cond);
    pthread_mutex_unlock(&lock);
    if (fuse_reply_entry(req, &e) != 0) { /* interrupted: linked all the same, but the kernel holds nothing */
        pthread_mutex_lock(&lock);
        m2->nlookup--;
        pthread_mutex_unlock(&lock);
    }
    if (se_of_loop) /* the name linked from is another inode to the kernel: its link count is asked again */
        fuse_lowlevel_notify_inval_inode(se_of_loop, node, -1, 0);
    return exact ? 1 : 2;
}

/* RMDIR answered here, as UNLINK is: the directory removed is leased here too and its listing here is empty
 * (nobody else can have made a name in it), so the MRC will find it empty once the removals queued before
 * this one reach it. Its inode number, or 0: ask the MRC. */
uint64_t xf_rmdir_here(uint64_t parent, const char *name)
{
    double t;
    int64_t wall;
    struct node *d, *n;
    if (!removal(parent, name, &t, &wall, &d, &n))
        return 0;
    int empty = n && S_ISDIR(n->attr.mode) && n->attr.ino && n->lease_until > t && n->list_until &&
                !has_names(n->id);
    if (!empty || !removable_in(d, t)) {
        pthread_mutex_unlock(&lock);
        return 0;
    }
    uint64_t ino = n->attr.ino;
    n->lease_until = 0;
    queue_removal(d, n, 2, wall);
    if (d->attr.nlink > 2)
        d->attr.nlink--;
    pthread_mutex_unlock(&lock);
    return ino;
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

int has_written(uint64_t fh)
{
    pthread_mutex_lock(&written_lock);
    struct written *w = written_[fh & 255];
    while (w && w->fh != fh)
        w = w->next;
    pthread_mutex_unlock(&written_lock);
    return w != NULL;
}
