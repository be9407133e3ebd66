/* The OSD's object writes on native threads.
 *
 * A 4 KiB PUT answered by Python took ~410 us from a client's call to its answer, a native GET ~160:
 * the relay of the TLS connection's bytes to Python, Python's parsing and routing, the hand-off to a
 * thread and back. A write to a file's only replica (or a write the client sends to each replica itself:
 * no X-Xos-Forward) is done here, as fs/osd/store.py's ObjectStore.write does it: under the object's lock,
 * the checksums of the blocks it touches computed first and set aside as pending, the bytes written (around
 * the page cache when large and aligned), then the checksums set and the pending ones removed; with
 * X-Xos-Sync: 1, the file system synced before the answer. Anything unusual (checksums that do not fit the
 * object, pending ones from a write cut short, a failed write) goes to Python with the request whole, which
 * writes it again (a write is idempotent) or says why not.
 */
#define _GNU_SOURCE
#include "osdint.h"
#include "osdread.h"

#include <errno.h>
#include <fcntl.h>
#include <isa-l/crc.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/time.h>
#include <sys/uio.h>
#include <sys/xattr.h>
#include <unistd.h>

#define BODY_BUDGET (64 << 20) /* bytes of write bodies held here at once; past it, writes are Python's */
#define STALLED_SECONDS 30      /* a body no byte of which came this long: its connection is closed (as lean.py) */
#define IDLE_SECONDS 300        /* osdread.c's: how long a kept-alive connection may be silent */

static atomic_llong budget = BODY_BUDGET;
static atomic_ullong written, synced, writes, fsyncs;

uint64_t xo_written(void) { return written; }
uint64_t xo_synced(void) { return synced; }
uint64_t xo_writes(void) { return writes; }
uint64_t xo_fsyncs(void) { return fsyncs; }
uint64_t xo_body_bytes(void) { return (uint64_t)(BODY_BUDGET - budget); }

static int reply(struct link l, const struct request *r, const char *json)
{
    char head[256];
    int k = snprintf(head, sizeof head,
                     "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %zu\r\n%s\r\n",
                     strlen(json), r->close ? "Connection: close\r\n" : "");
    struct iovec iov[2] = {{head, (size_t)k}, {(void *)json, strlen(json)}};
    return send_all(l, iov, 2) == 0 && !r->close;
}

static int open_object(const struct request *r)
{
    char path[PATH_MAX];
    snprintf(path, sizeof path, "%s/%.2s/%s/%llu", root, r->fid, r->fid, r->objno);
    int fd = open(path, O_RDWR | O_CREAT | O_NOFOLLOW | O_CLOEXEC, 0600);
    if (fd < 0 && errno == ENOENT) { /* the file's first object here */
        snprintf(path, sizeof path, "%s/%.2s", root, r->fid);
        if (mkdir(path, 0777) < 0 && errno != EEXIST)
            return -1;
        snprintf(path, sizeof path, "%s/%.2s/%s", root, r->fid, r->fid);
        if (mkdir(path, 0777) < 0 && errno != EEXIST)
            return -1;
        snprintf(path, sizeof path, "%s/%.2s/%s/%llu", root, r->fid, r->fid, r->objno);
        fd = open(path, O_RDWR | O_CREAT | O_NOFOLLOW | O_CLOEXEC, 0600);
    }
    return fd;
}

static int pwrite_all(int fd, const char *data, size_t n, off_t at)
{
    for (size_t done = 0; done < n;) {
        ssize_t k = pwrite(fd, data + done, n - done, at + (off_t)done);
        if (k < 0 && errno == EINTR)
            continue;
        if (k <= 0)
            return -1;
        done += (size_t)k;
    }
    return 0;
}

/* The bytes, large aligned ones around the page cache, as ObjectStore._pwrite: 0, or -1. */
static int put_bytes(int fd, const char *data, size_t n, uint64_t off)
{
    if (direct_ok && n >= DIRECT_MIN && !(off % ALIGN) && !(n % ALIGN) && !((uintptr_t)data % ALIGN)) {
        char path[64];
        snprintf(path, sizeof path, "/proc/self/fd/%d", fd); /* the file the checksums were taken from */
        int dfd = open(path, O_WRONLY | O_DIRECT | O_CLOEXEC);
        if (dfd >= 0) {
            int rc = pwrite_all(dfd, data, n, (off_t)off);
            close(dfd);
            return rc;
        }
        if (errno == EINVAL)
            direct_ok = 0;
    }
    return pwrite_all(fd, data, n, (off_t)off);
}

/* Write `n` bytes at the request's offset of its object, with their checksums: 0, or -1 (Python's to do). */
static int store(const struct request *r, const char *data, size_t n)
{
    int fd = open_object(r);
    if (fd < 0)
        return -1;
    int rc = -1;
    struct stat st;
    uint32_t crcs[MAX_OBJECT / BLOCK + 1]; /* big-endian, as stored */
    char pending[4];
    char *block = NULL;
    pthread_mutex_t *lock = lock_of(r->fid, r->objno);
    pthread_mutex_lock(lock);
    if (fstat(fd, &st) < 0 || !S_ISREG(st.st_mode))
        goto out;
    uint64_t size = (uint64_t)st.st_size, end = r->off + n, new_size = end > size ? end : size;
    uint64_t had = (size + BLOCK - 1) / BLOCK, blocks = (new_size + BLOCK - 1) / BLOCK;
    ssize_t got = fgetxattr(fd, CRC_ATTR, crcs, sizeof crcs);
    if (got < 0 && errno == ENODATA)
        got = 0;
    if (got != (ssize_t)(4 * had)) /* checksums that do not fit: Python's (it says the object is corrupt) */
        goto out;
    if (fgetxattr(fd, PENDING_ATTR, pending, sizeof pending) >= 0 || errno != ENODATA)
        goto out; /* a write cut short: Python finds which blocks are as they were and which as they were to be */
    uint64_t from = (r->off < size ? r->off : size) / BLOCK;
    for (uint64_t b = from; b < blocks; b++) { /* every block from the old end or the write's start, as it will be */
        uint64_t lo = b * BLOCK, hi = (b + 1) * BLOCK < new_size ? (b + 1) * BLOCK : new_size;
        uint32_t crc;
        if (r->off <= lo && hi <= end) {
            crc = crc32_gzip_refl(0, (const unsigned char *)data + (lo - r->off), hi - lo);
        } else { /* a block the write covers in part: its other bytes as they are (zeros past the old end) */
            if (!block && !(block = malloc(BLOCK)))
                goto out;
            memset(block, 0, hi - lo);
            if (lo < size) {
                size_t want = (size < hi ? size : hi) - lo;
                if (pread(fd, block, want, (off_t)lo) != (ssize_t)want)
                    goto out;
            }
            uint64_t a = r->off > lo ? r->off : lo, z = end < hi ? end : hi;
            if (a < z)
                memcpy(block + (a - lo), data + (a - r->off), z - a);
            crc = crc32_gzip_refl(0, (const unsigned char *)block, hi - lo);
        }
        crcs[b] = __builtin_bswap32(crc);
    }
    if (fsetxattr(fd, PENDING_ATTR, crcs, 4 * blocks, 0) < 0)
        goto out;
    if (put_bytes(fd, data, n, r->off) < 0) {
        if (ftruncate(fd, (off_t)size) == 0) /* what it appended goes: the checksums still fit the object */
            fremovexattr(fd, PENDING_ATTR);
        goto out;
    }
    if (fsetxattr(fd, CRC_ATTR, crcs, 4 * blocks, 0) < 0 || fremovexattr(fd, PENDING_ATTR) < 0)
        goto out;
    if (r->sync && syncfs(fd) < 0)
        goto out;
    rc = 0;
out:
    pthread_mutex_unlock(lock);
    free(block);
    close(fd);
    return rc;
}

/* Receive exactly `n` bytes into `buf`: 0, or -1 (gone, silent too long, stopped). */
static int recv_all(struct link l, char *buf, size_t n)
{
    for (size_t done = 0; done < n;) {
        ssize_t k = link_recv(l, buf + done, n - done);
        if (k < 0 && errno == EINTR && !l.ssl)
            continue;
        if (k <= 0)
            return -1;
        done += (size_t)k;
    }
    return 0;
}

int put(struct link l, const struct request *r, char *head, size_t *have, size_t hn, char **handoff, size_t *n)
{
    if (!may(r, 0)) /* refused, or the credential not known yet: Python reads the body and answers */
        return -1;
    if (atomic_fetch_sub(&budget, (long long)r->len) < (long long)r->len) {
        atomic_fetch_add(&budget, (long long)r->len); /* many writes held at once: the rest wait in Python */
        return -1;
    }
    int rc = 0;
    size_t len = (size_t)r->len, early = *have - hn < len ? *have - hn : len; /* body bytes read with the head */
    struct buffer *body = take_buffer(len);
    if (!body)
        goto out;
    memcpy(body->p, head + hn, early);
    if (early < len) { /* the rest of the body, with less patience than for a next request */
        struct timeval stall = {.tv_sec = STALLED_SECONDS}, idle = {.tv_sec = IDLE_SECONDS};
        setsockopt(l.fd, SOL_SOCKET, SO_RCVTIMEO, &stall, sizeof stall);
        int got = recv_all(l, body->p + early, len - early);
        setsockopt(l.fd, SOL_SOCKET, SO_RCVTIMEO, &idle, sizeof idle);
        if (got < 0)
            goto out;
    }
    size_t after = *have - hn - early; /* what followed the body (a pipelined request) */
    int entered = may(r, 1);
    if (!entered || store(r, body->p, len) < 0) {
        if (entered)
            done_writing(r->fid);
        if ((*handoff = malloc(hn + len + after))) {
            memcpy(*handoff, head, hn);
            memcpy(*handoff + hn, body->p, len);
            memcpy(*handoff + hn + len, head + hn + early, after);
            *n = hn + len + after;
            rc = -2;
        }
        goto out;
    }
    done_writing(r->fid);
    written += len;
    synced += r->sync;
    writes++;
    char json[64];
    snprintf(json, sizeof json, "{\"written\":%zu,\"behind\":[]}", len);
    rc = reply(l, r, json);
    memmove(head, head + hn + early, after);
    *have = after;
out:
    if (body)
        give_buffer(body);
    atomic_fetch_add(&budget, (long long)r->len);
    return rc;
}

int sync_file(struct link l, const struct request *r)
{
    if (!may(r, 0))
        return -1;
    char path[PATH_MAX]; /* one syncfs of the objects' file system, as ObjectStore.fsync */
    snprintf(path, sizeof path, "%s/%.2s/%s", root, r->fid, r->fid);
    int fd = open(path, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd < 0 && errno == ENOENT)
        fd = open(root, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd < 0)
        return -1;
    int rc = syncfs(fd);
    close(fd);
    if (rc < 0)
        return -1;
    fsyncs++;
    return reply(l, r, "{}");
}
