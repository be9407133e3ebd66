/* What the OSD's native parts share: osdread.c (the connections, reads), osdgrant.c (who may, writes in
 * flight) and osdwrite.c (object writes). Not Python's: osdread.h is. */
#ifndef XOS_OSDINT_H
#define XOS_OSDINT_H

#include "osdtls.h"

#include <limits.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>

#define BLOCK (64 << 10)        /* fs/osd/store.py's BLOCK: one CRC-32 per block */
#define MAX_OBJECT (16 << 20)   /* fs/osd/store.py's MAX_OBJECT */
#define DIRECT_MIN (256 << 10)  /* fs/osd/store.py's DIRECT_MIN */
#define ALIGN 4096
#define CRC_ATTR "user.xos.crc32"
#define PENDING_ATTR "user.xos.crc32.pending"

extern char root[PATH_MAX];   /* DIR/objects */
extern atomic_int direct_ok;  /* the object file system takes O_DIRECT */
extern atomic_int stopping;

uint64_t fnv(const char *s, size_t n, uint64_t h);
pthread_mutex_t *lock_of(const char *fid, uint64_t objno);

/* One request of the shapes served here: an object GET (off, len) or PUT (off, and len: its body's length),
 * or a file's fsync. */
struct request {
    int put, fsync;
    char fid[65];
    unsigned long long objno, off, len;
    const char *auth, *cap; /* values inside the head; lengths beside */
    size_t auth_len, cap_len;
    int close, sync;
};

/* Whether the request's (credential, capability) pair may read, or write, its file: from the grants cached,
 * else Python's word (cached then). With `enter`, a write is counted in flight on its file from the same
 * moment (done_writing ends it), so xo_quiet waits for it. */
int may(const struct request *r, int enter);
void done_writing(const char *fid);

/* page-aligned buffers, reused */
struct buffer {
    char *p;
    size_t cap;
    struct buffer *next;
};
struct buffer *take_buffer(size_t n);
void give_buffer(struct buffer *b);

/* An object PUT whose head was parsed into `r`, with `have` bytes in `head` (the head's `hn` first):
 * 1 answered, the connection goes on; 0 close it; -1 nothing read past the head, Python is to answer it;
 * -2 the body was read: Python is to answer it from `*handoff` (the head, the body, what followed; `*n`). */
int put(struct link l, const struct request *r, char *head, size_t *have, size_t hn, char **handoff, size_t *n);
/* A file's fsync: 1 answered, 0 close the connection, -1 Python's to answer. */
int sync_file(struct link l, const struct request *r);

#endif
