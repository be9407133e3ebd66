/* The node table of the grid file system's FUSE loop: every name the mount saw, by node id and by
 * (parent, name), with its attributes, a directory's listing and its lease. LOOKUP and GETATTR are
 * answered from it within the attribute TTL; listings fill it whole.
 *
 * Node ids are this table's, not the MRC's inode numbers (st_ino): a hard-linked file has one node
 * per name, so a node's path is its parents' names, which is what the MRC is asked by.
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

pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
struct fuse_session *se_of_loop; /* the mount's session (for the rings, and notifications) */
static struct node **ids, **names, **kids;
static size_t cap, count, swept;
static uint64_t next_id = 2;
static unsigned generation;
double default_ttl = 1.0;
struct node root = {.id = FUSE_ROOT_ID, .name = "", .nlookup = 1};

/* attr_until of attributes known but to be asked again (0 is: not known at all) */
#define STALE 1e-9

/* Changes made here to files' attributes (a close that sent a new size, a rename, a link), counted. A
 * request that asks the MRC about a file may get an answer taken before such a change reached it, and
 * hand it over after the change made the table forget the file's attributes: that answer must neither go
 * back into the table nor to the kernel (which would take a size of 0 from it for a file just written
 * here, and read it as empty). A request counts from the changes made before it began (xf_begin). */
static uint64_t changes;
static __thread uint64_t begun = UINT64_MAX;

void changed_here(struct node *n)
{
    if (n->attr_until)
        n->attr_until = STALE;
    n->changed = ++changes;
}

int overtaken(const struct node *n) { return n->changed > begun; }

void xf_begin(void)
{
    pthread_mutex_lock(&lock);
    begun = changes;
    pthread_mutex_unlock(&lock);
}

void xf_end(void) { begun = UINT64_MAX; }

int xf_changed(uint64_t node)
{
    pthread_mutex_lock(&lock);
    struct node *n = node ? find_id(node) : NULL;
    int changed = n && (n->attr_until == STALE || overtaken(n));
    pthread_mutex_unlock(&lock);
    return changed;
}

double now(void)
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

struct node *find_id(uint64_t id)
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

struct node *find_name(uint64_t parent, const char *name)
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

void unhash_name(struct node *n)
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

void free_node(struct node *n)
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

/* The table made, once (under the lock): 0, or -1 without memory. */
int table_init(void)
{
    return cap || grow() == 0 ? 0 : -1;
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

void fill_stat(const struct xf_attr *a, struct stat *st, unsigned blksize)
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

unsigned io_size = 1 << 20;

/* Record (parent, name) -> attributes; with `lookup`, the kernel now holds one more reference. */
struct node *record(uint64_t parent, const char *name, const struct xf_attr *a, double ttl, int lookup)
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
    if (!overtaken(n)) {
        n->attr = *a;
        n->attr_until = now() + ttl;
    }
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
    uint64_t *tell = NULL; /* nodes the kernel holds whose size or mtime the listing changed (ids: a sweep
                            * may free nodes meanwhile) */
    size_t k = 0;
    pthread_mutex_lock(&lock);
    generation++;
    for (size_t i = 0; i < n; i++, names_ += strlen(names_) + 1) {
        struct node *was = find_name(dir, names_);
        int differs = was && was->nlookup && was->attr.ino == attrs[i].ino &&
                      (was->attr.size != attrs[i].size || was->attr.mtime_ns != attrs[i].mtime_ns);
        if (record(dir, names_, &attrs[i], ttl, 0) == was && differs && !overtaken(was)) {
            uint64_t *more = k % 64 ? tell : realloc(tell, (k + 64) * sizeof *tell);
            if (more) {
                tell = more;
                tell[k++] = was->id;
            }
        }
    }
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
    /* what the table holds of a file is what the kernel was told (xf_opened relies on it): told again */
    for (size_t i = 0; i < k; i++)
        if (se_of_loop) /* attributes only: takes no inode lock, safe inside the request */
            fuse_lowlevel_notify_inval_inode(se_of_loop, tell[i], -1, 0);
    free(tell);
}

int has_names(uint64_t dir)
{
    for (struct node *m = cap ? kids[hash_id(dir)] : NULL; m; m = m->next_kid)
        if (m->parent == dir && m->name)
            return 1;
    return 0;
}

long xf_list(uint64_t dir, double recent, char *names, size_t size, uint64_t *inos, uint32_t *modes, size_t max)
{
    pthread_mutex_lock(&lock);
    struct node *d = find_id(dir);
    double t = now();
    long n = -1;
    /* list_until is a TTL past when the MRC last vouched for the listing */
    if (d && d->list_until && (d->lease_until > t || d->list_until - default_ttl > t - recent)) {
        size_t at = 0;
        n = 0;
        for (struct node *m = cap ? kids[hash_id(dir)] : NULL; m; m = m->next_kid) {
            if (m->parent != dir || !m->name)
                continue;
            size_t len = strlen(m->name) + 1;
            if ((size_t)n == max || at + len > size || !m->attr.ino) {
                n = -1;
                break;
            }
            memcpy(names + at, m->name, len);
            at += len;
            inos[n] = m->attr.ino;
            modes[n] = m->attr.mode;
            n++;
        }
    }
    pthread_mutex_unlock(&lock);
    return n;
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
            if (m->parent == dir && m->attr_until && m->attr_until != STALE && !overtaken(m))
                m->attr_until = until; /* not those known to have changed since: the listing never had that */
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

/* The MRC gave a file made here in `dir` inode number `now` instead of `was`: its names there have it too (a
 * name linked here, whose node is not the one the file was made as). */
void xf_renumber(uint64_t dir, uint64_t was, uint64_t now_)
{
    pthread_mutex_lock(&lock);
    for (struct node *m = cap ? kids[hash_id(dir)] : NULL; m; m = m->next_kid)
        if (m->parent == dir && m->attr.ino == was)
            m->attr.ino = now_;
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
    if (n && !overtaken(n)) {
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
        changed_here(n); /* its ctime changed */
        if (copy)
            name_in(n);
    }
    pthread_mutex_unlock(&lock);
}

void xf_forget_attr(uint64_t node)
{
    pthread_mutex_lock(&lock);
    struct node *n = find_id(node);
    if (n)
        changed_here(n);
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
                changed_here(n);
                if (k < sizeof found / sizeof *found)
                    found[k++] = n->id;
            }
    pthread_mutex_unlock(&lock);
    for (size_t i = 0; i < k; i++)
        if (se_of_loop) /* attributes only (offset < 0): takes no inode lock, safe inside a request */
            fuse_lowlevel_notify_inval_inode(se_of_loop, found[i], -1, 0);
}

void xf_opened(uint64_t node, const struct xf_attr *a, double ttl)
{
    pthread_mutex_lock(&lock);
    struct node *n = find_id(node);
    int changed = !n || n->attr.size != a->size || n->attr.mtime_ns != a->mtime_ns;
    if (n && !overtaken(n) && !n->writers) {
        n->attr = *a;
        n->attr_until = now() + ttl;
    }
    pthread_mutex_unlock(&lock);
    if (changed && se_of_loop) /* as above: attributes only, safe inside the OPEN */
        fuse_lowlevel_notify_inval_inode(se_of_loop, node, -1, 0);
}

void xf_forget_all(void)
{
    pthread_mutex_lock(&lock);
    for (size_t i = 0; i < cap; i++)
        for (struct node *n = ids[i]; n; n = n->next_id) {
            changed_here(n);
            n->list_until = 0;
        }
    changed_here(&root);
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
        changed_here(d);
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
void write_around(struct fuse_file_info *fi)
{
    if ((fi->flags & O_ACCMODE) == O_WRONLY)
        fi->direct_io = 1;
}
