/* Who may read or write an object on the OSD's native threads, and which writes are in flight.
 *
 * Policy stays in Python: the first time a (credential, capability) pair asks to read, or to write, a file,
 * xo_check asks fs/osd/service.py, and the answer is cached until the pair's end. Whatever changes what
 * Python would answer forgets what was cached: a new capability key or a revocation (xo_forget), a file's
 * truncate epoch or replica list raised (xo_forget_file). A write is counted in flight on its file from the
 * moment it passed, so a fence (the MRC's new replica list) can wait for the writes taken under the old
 * one (xo_quiet); a grant Python gave before a forget is not cached after it (the generation). */
#define _GNU_SOURCE
#include "osdint.h"
#include "osdread.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

extern int xo_check(const char *auth, const char *cap, const char *fid, int write, double *until);

#define MAX_GRANTS 65536
#define GRANT_BUCKETS 4096
#define MAX_WRITING 1024 /* one per native thread at most */
#define MAY_READ 1
#define MAY_WRITE 2

uint64_t fnv(const char *s, size_t n, uint64_t h)
{
    for (size_t i = 0; i < n; i++)
        h = (h ^ (unsigned char)s[i]) * 1099511628211ull;
    return h;
}

static double wall(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}

/* object locks, shared with Python's writes */

static pthread_mutex_t locks[64] = {[0 ... 63] = PTHREAD_MUTEX_INITIALIZER};

pthread_mutex_t *lock_of(const char *fid, uint64_t objno)
{
    uint64_t h = fnv(fid, strlen(fid), 1469598103934665603ull);
    h = fnv((const char *)&objno, sizeof objno, h);
    return &locks[(h ^ (h >> 32)) % 64];
}

void xo_lock(const char *fid, uint64_t objno) { pthread_mutex_lock(lock_of(fid, objno)); }
void xo_unlock(const char *fid, uint64_t objno) { pthread_mutex_unlock(lock_of(fid, objno)); }

/* grants: (credential, capability) pairs Python let read or write a file, until when */

struct grant {
    uint64_t hash;
    char *key; /* auth "\n" cap */
    char fid[65];
    int modes; /* MAY_READ, MAY_WRITE */
    double until;
    struct grant *next;
};

static struct grant *grants[GRANT_BUCKETS];
static int ngrants;
static uint64_t generation; /* one more at every forget */
static pthread_mutex_t grants_lock = PTHREAD_MUTEX_INITIALIZER;

/* writes in flight, per file (under grants_lock) */
static struct {
    char fid[65];
    int n;
} writing[MAX_WRITING];
static int nwriting;
static pthread_cond_t quiet = PTHREAD_COND_INITIALIZER;

static void forget_locked(const char *fid)
{
    generation++;
    for (int i = 0; i < GRANT_BUCKETS; i++)
        for (struct grant **pp = &grants[i]; *pp;) {
            struct grant *g = *pp;
            if (fid && strcmp(g->fid, fid) != 0) {
                pp = &g->next;
                continue;
            }
            *pp = g->next;
            free(g->key);
            free(g);
            ngrants--;
        }
}

void xo_forget(void)
{
    pthread_mutex_lock(&grants_lock);
    forget_locked(NULL);
    pthread_mutex_unlock(&grants_lock);
}

void xo_forget_file(const char *fid)
{
    pthread_mutex_lock(&grants_lock);
    forget_locked(fid);
    pthread_mutex_unlock(&grants_lock);
}

void xo_quiet(const char *fid)
{
    pthread_mutex_lock(&grants_lock);
    for (;;) {
        int busy = 0;
        for (int i = 0; i < nwriting && !busy; i++)
            busy = strcmp(writing[i].fid, fid) == 0;
        if (!busy)
            break;
        pthread_cond_wait(&quiet, &grants_lock);
    }
    pthread_mutex_unlock(&grants_lock);
}

/* under grants_lock: 0, or -1 if too many are in flight (the write is then Python's) */
static int enter_locked(const char *fid)
{
    for (int i = 0; i < nwriting; i++)
        if (strcmp(writing[i].fid, fid) == 0) {
            writing[i].n++;
            return 0;
        }
    if (nwriting == MAX_WRITING)
        return -1;
    snprintf(writing[nwriting].fid, sizeof writing[nwriting].fid, "%s", fid);
    writing[nwriting++].n = 1;
    return 0;
}

void done_writing(const char *fid)
{
    pthread_mutex_lock(&grants_lock);
    for (int i = 0; i < nwriting; i++)
        if (strcmp(writing[i].fid, fid) == 0) {
            if (!--writing[i].n) {
                writing[i] = writing[--nwriting];
                pthread_cond_broadcast(&quiet);
            }
            break;
        }
    pthread_mutex_unlock(&grants_lock);
}

static struct grant *find_locked(const char *key, size_t keylen, uint64_t hash)
{
    for (struct grant *g = grants[hash % GRANT_BUCKETS]; g; g = g->next)
        if (g->hash == hash && strlen(g->key) == keylen && memcmp(g->key, key, keylen) == 0)
            return g;
    return NULL;
}

/* under grants_lock: whether the cached grant covers it (and the write counted in flight, with `enter`) */
static int covered_locked(const struct request *r, const char *key, size_t keylen, uint64_t hash, int enter)
{
    struct grant *g = find_locked(key, keylen, hash);
    int mode = r->put || r->fsync ? MAY_WRITE : MAY_READ;
    if (!g || strcmp(g->fid, r->fid) != 0 || !(g->modes & mode) || wall() >= g->until)
        return 0;
    return !enter || enter_locked(r->fid) == 0;
}

int may(const struct request *r, int enter)
{
    size_t keylen = r->auth_len + 1 + r->cap_len;
    if (keylen > 16384)
        return 0;
    char key[keylen + 1];
    memcpy(key, r->auth, r->auth_len);
    key[r->auth_len] = '\n';
    if (r->cap_len)
        memcpy(key + r->auth_len + 1, r->cap, r->cap_len);
    key[keylen] = 0;
    uint64_t hash = fnv(key, keylen, 1469598103934665603ull);
    for (int tries = 0; tries < 3; tries++) {
        pthread_mutex_lock(&grants_lock);
        int ok = covered_locked(r, key, keylen, hash, enter);
        uint64_t gen = generation;
        pthread_mutex_unlock(&grants_lock);
        if (ok)
            return 1;
        if (stopping)
            return 0;
        key[r->auth_len] = 0;
        double until = 0;
        int refused = xo_check(key, key + r->auth_len + 1, r->fid, r->put || r->fsync, &until) != 0;
        key[r->auth_len] = '\n';
        if (refused)
            return 0;
        struct grant *g = calloc(1, sizeof *g);
        if (!g || !(g->key = strndup(key, keylen))) {
            free(g);
            return 0; /* Python's to answer */
        }
        g->hash = hash;
        snprintf(g->fid, sizeof g->fid, "%s", r->fid);
        g->modes = r->put || r->fsync ? MAY_WRITE : MAY_READ;
        g->until = until;
        pthread_mutex_lock(&grants_lock);
        if (gen != generation) { /* forgotten while Python was asked: its answer may be out of date */
            pthread_mutex_unlock(&grants_lock);
            free(g->key);
            free(g);
            continue;
        }
        struct grant *old = find_locked(key, keylen, hash);
        if (old) { /* another thread asked too, or for the other mode */
            if (strcmp(old->fid, g->fid) != 0) { /* the pair's capability names one file: cannot be */
                memcpy(old->fid, g->fid, sizeof old->fid);
                old->modes = 0;
            }
            old->modes |= g->modes;
            old->until = until;
            free(g->key);
            free(g);
        } else {
            if (ngrants >= MAX_GRANTS)
                forget_locked(NULL);
            g->next = grants[hash % GRANT_BUCKETS];
            grants[hash % GRANT_BUCKETS] = g;
            ngrants++;
        }
        ok = !enter || enter_locked(r->fid) == 0;
        pthread_mutex_unlock(&grants_lock);
        return ok;
    }
    return 0;
}
