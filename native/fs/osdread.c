/* The OSD's object reads and writes on native threads.
 *
 * An OSD's Python spent ~0.8 ms of CPU on each 1 MiB GET (parsing, routing, the read and its
 * checksums, the hand-off to a thread and back) and ~250 us on each 4 KiB one: a third of the
 * OSD's CPU in a sequential read and most of it in a random one. Here the listening socket is
 * accepted by a C thread and each connection served by one of its own: a request of the shapes
 * the data path sends, `GET /v1/o/<fid>/<objno>?off=N&len=N`, `PUT /v1/o/<fid>/<objno>?off=N` (to no
 * other replica) and `POST /v1/o/<fid>/fsync` (osdwrite.c) with the client's credential and capability,
 * is answered without Python. Policy stays in Python: whether a (credential, capability) pair may read or write
 * a file is Python's word, cached (osdgrant.c). Anything else (another request, a refusal, a
 * missing file, a corrupt block, a malformed number) hands the connection with the bytes already
 * read to Python's server (xo_adopt), which answers it as it always did, error bodies and codes
 * included. Nothing is sent before that decision, so a request is answered whole by one side or
 * the other.
 */
#define _GNU_SOURCE
#include "osdread.h"
#include "osdint.h"

#include <errno.h>
#include <fcntl.h>
#include <isa-l/crc.h>
#include <limits.h>
#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <sys/xattr.h>
#include <time.h>
#include <unistd.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>
#include <poll.h>

/* Python's side (fs/osd/service.py). xo_adopt: the connection `fd` is Python's from now on, with the `n` bytes
 * read of it; `peer`: the name and roles of the host certificate its TLS peer showed ("NAME\nROLE,ROLE"), ""
 * for none, or NOT_BEGUN. */
extern void xo_adopt(int fd, const char *buf, size_t n, const char *peer);
#define NOT_BEGUN "\001" /* xo_adopt's peer for a TLS connection nothing was read of: Python does its TLS */

#define HEAD_MAX (16 << 10)     /* longer heads go to Python, which takes 64 KiB */
#define IDLE_SECONDS 300        /* a kept-alive connection silent this long is closed (osdwrite.c has it too) */
#define SEND_SECONDS 30         /* a client that takes nothing of an answer this long is cut off */
#define MAX_CONNS 1024          /* past it, connections go to Python's loop */
#define SPARE_BUFFERS 16

char root[PATH_MAX];
atomic_int direct_ok;
atomic_int stopping;
static int listen_fd = -1;
static pthread_t acceptor;
static int accepting;
static atomic_int busy;
static atomic_ullong served;

/* connections held here, so xo_stop can end them */

static int conns[MAX_CONNS];
static int nconns;
static pthread_mutex_t conns_lock = PTHREAD_MUTEX_INITIALIZER;

static int hold(int fd)
{
    pthread_mutex_lock(&conns_lock);
    int ok = nconns < MAX_CONNS && !stopping;
    if (ok)
        conns[nconns++] = fd;
    pthread_mutex_unlock(&conns_lock);
    return ok;
}

static void let_go(int fd)
{
    pthread_mutex_lock(&conns_lock);
    for (int i = 0; i < nconns; i++)
        if (conns[i] == fd) {
            conns[i] = conns[--nconns];
            break;
        }
    pthread_mutex_unlock(&conns_lock);
}

/* files read since the heartbeat last asked (the replica manager drops replicas nobody reads) */

static char (*reads)[65];
static size_t nreads, reads_cap;
static pthread_mutex_t reads_lock = PTHREAD_MUTEX_INITIALIZER;

static void was_read(const char *fid)
{
    pthread_mutex_lock(&reads_lock);
    size_t i = 0;
    while (i < nreads && strcmp(reads[i], fid) != 0)
        i++;
    if (i == nreads) {
        if (nreads == reads_cap) {
            size_t ncap = reads_cap ? reads_cap * 2 : 64;
            void *p = realloc(reads, ncap * sizeof *reads);
            if (p) {
                reads = p;
                reads_cap = ncap;
            }
        }
        if (nreads < reads_cap)
            snprintf(reads[nreads++], sizeof *reads, "%s", fid);
    }
    pthread_mutex_unlock(&reads_lock);
}

int xo_reads(char *out, size_t size)
{
    pthread_mutex_lock(&reads_lock);
    size_t used = 0;
    int n = 0;
    while (nreads) {
        size_t len = strlen(reads[nreads - 1]) + 1;
        if (used + len > size)
            break; /* the rest next time */
        memcpy(out + used, reads[--nreads], len);
        used += len;
        n++;
    }
    pthread_mutex_unlock(&reads_lock);
    return n;
}

int xo_busy(void) { return busy; }
uint64_t xo_served(void) { return served; }

/* page-aligned buffers for object reads, reused: fresh pages cost ~2 us each to touch here */

static struct buffer *spare;
static int nspare;
static pthread_mutex_t spare_lock = PTHREAD_MUTEX_INITIALIZER;

struct buffer *take_buffer(size_t n)
{
    pthread_mutex_lock(&spare_lock);
    for (struct buffer **pp = &spare; *pp; pp = &(*pp)->next)
        if ((*pp)->cap >= n) {
            struct buffer *b = *pp;
            *pp = b->next;
            nspare--;
            pthread_mutex_unlock(&spare_lock);
            return b;
        }
    pthread_mutex_unlock(&spare_lock);
    struct buffer *b = calloc(1, sizeof *b);
    size_t cap = n < (1u << 20) ? (1u << 20) : (n + ALIGN - 1) / ALIGN * ALIGN;
    if (!b || posix_memalign((void **)&b->p, ALIGN, cap) != 0) {
        free(b);
        return NULL;
    }
    b->cap = cap;
    return b;
}

void give_buffer(struct buffer *b)
{
    pthread_mutex_lock(&spare_lock);
    if (nspare < SPARE_BUFFERS) {
        b->next = spare;
        spare = b;
        nspare++;
        b = NULL;
    }
    pthread_mutex_unlock(&spare_lock);
    if (b) {
        free(b->p);
        free(b);
    }
}

/* one request */

/* A whole number of at most `digits` digits in [s, s+n) into *out: 0, or -1. */
static int number(const char *s, size_t n, size_t digits, unsigned long long *out)
{
    if (!n || n > digits)
        return -1;
    unsigned long long v = 0;
    for (size_t i = 0; i < n; i++) {
        if (s[i] < '0' || s[i] > '9')
            return -1;
        v = v * 10 + (unsigned long long)(s[i] - '0');
    }
    *out = v;
    return 0;
}

static int header_is(const char *line, size_t n, const char *name)
{
    size_t k = strlen(name);
    return n > k && line[k] == ':' && strncasecmp(line, name, k) == 0;
}

static void value_of(const char *line, size_t n, size_t name_len, const char **v, size_t *vlen)
{
    const char *p = line + name_len + 1, *end = line + n;
    while (p < end && (*p == ' ' || *p == '\t'))
        p++;
    while (end > p && (end[-1] == ' ' || end[-1] == '\t'))
        end--;
    *v = p;
    *vlen = (size_t)(end - p);
}

/* The head [head, head+n) (ending in its blank line) as an object GET or PUT, or a file's fsync, served
 * here: 0, or -1. */
static int parse(const char *head, size_t n, struct request *r)
{
    memset(r, 0, sizeof *r);
    r->len = MAX_OBJECT;
    const char *end = head + n - 2, *line = head;
    const char *eol = memmem(line, (size_t)(end - line), "\r\n", 2);
    if (!eol || (size_t)(eol - line) < 14 || memcmp(eol - 9, " HTTP/1.1", 9) != 0)
        return -1;
    r->put = memcmp(line, "PUT /v1/o/", 10) == 0;
    r->fsync = memcmp(line, "POST /v1/o/", 11) == 0;
    if (!r->put && !r->fsync && memcmp(line, "GET /v1/o/", 10) != 0)
        return -1;
    const char *p = line + 10 + r->fsync, *target_end = eol - 9;
    size_t f = 0;
    while (p < target_end && ((*p >= '0' && *p <= '9') || (*p >= 'a' && *p <= 'f')) && f < 64)
        r->fid[f++] = *p++;
    if (f < 8 || p >= target_end || *p != '/')
        return -1;
    p++;
    if (r->fsync && (target_end - p != 5 || memcmp(p, "fsync", 5) != 0))
        return -1;
    if (r->fsync)
        p = target_end;
    const char *num = p;
    while (p < target_end && *p >= '0' && *p <= '9')
        p++;
    if (!r->fsync && number(num, (size_t)(p - num), 18, &r->objno) < 0)
        return -1;
    int seen_off = 0, seen_len = 0; /* a name twice: which one counts is Python's to say */
    if (p < target_end) {
        if (*p++ != '?')
            return -1;
        while (p < target_end) { /* off=N and len=N, nothing else */
            const char *amp = memchr(p, '&', (size_t)(target_end - p));
            const char *stop = amp ? amp : target_end;
            unsigned long long *dst = NULL;
            if (stop - p > 4 && memcmp(p, "off=", 4) == 0)
                dst = &r->off;
            else if (stop - p > 4 && memcmp(p, "len=", 4) == 0 && !r->put)
                dst = &r->len;
            if (!dst || (dst == &r->off ? seen_off++ : seen_len++) || number(p + 4, (size_t)(stop - p - 4), 8, dst) < 0 || *dst > MAX_OBJECT)
                return -1; /* Python says what is wrong with it */
            p = amp ? amp + 1 : target_end;
        }
    }
    int seen_length = 0, seen_sync = 0, seen_forward = 0;
    if (r->put)
        r->len = 0;
    for (line = eol + 2; line < end; line = eol + 2) {
        eol = memmem(line, (size_t)(end - line) + 2, "\r\n", 2);
        if (!eol)
            return -1;
        size_t ln = (size_t)(eol - line);
        const char *v;
        size_t vlen;
        const char *colon = memchr(line, ':', ln);
        if (!colon || colon == line || memchr(line, ' ', (size_t)(colon - line)) ||
            memchr(line, '\t', (size_t)(colon - line)))
            return -1; /* Python refuses it, with the reason */
        if (header_is(line, ln, "Authorization")) {
            if (r->auth)
                return -1;
            value_of(line, ln, 13, &r->auth, &r->auth_len);
        } else if (header_is(line, ln, "X-Xos-Cap")) {
            if (r->cap)
                return -1;
            value_of(line, ln, 9, &r->cap, &r->cap_len);
        } else if (header_is(line, ln, "Connection")) {
            value_of(line, ln, 10, &v, &vlen);
            r->close = vlen == 5 && strncasecmp(v, "close", 5) == 0;
        } else if (header_is(line, ln, "Content-Length")) {
            value_of(line, ln, 14, &v, &vlen);
            if (seen_length++ || (r->put ? number(v, vlen, 8, &r->len) < 0 || !r->len || r->off + r->len > MAX_OBJECT
                                         : vlen != 1 || v[0] != '0'))
                return -1; /* a GET or fsync with a body, a write past an object's end or of nothing: Python's */
        } else if (header_is(line, ln, "X-Xos-Sync")) {
            value_of(line, ln, 10, &v, &vlen);
            if (seen_sync++ || vlen != 1 || (v[0] != '0' && v[0] != '1'))
                return -1;
            r->sync = v[0] == '1';
        } else if (header_is(line, ln, "X-Xos-Forward")) {
            value_of(line, ln, 13, &v, &vlen);
            if (seen_forward++ || vlen)
                return -1; /* a write the other replicas are to have: Python sends it on */
        } else if (header_is(line, ln, "Transfer-Encoding") || header_is(line, ln, "Expect") ||
                   header_is(line, ln, "X-Xos-Forwarded") || header_is(line, ln, "X-Xos-Host")) {
            return -1;
        }
    }
    return r->auth && (!r->put || seen_length) ? 0 : -1;
}

enum loaded { LOADED, HOLE, CORRUPT, OTHER };

/* The requested range, its blocks checked, into a buffer: *data and *n point at it. */
static enum loaded load(const struct request *r, struct buffer **buf, const char **data, size_t *n)
{
    char path[PATH_MAX];
    snprintf(path, sizeof path, "%s/%.2s/%s/%llu", root, r->fid, r->fid, r->objno);
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        if (errno != ENOENT)
            return OTHER;
        struct stat st;
        snprintf(path, sizeof path, "%s/%.2s/%s", root, r->fid, r->fid);
        return stat(path, &st) == 0 ? HOLE : OTHER; /* no objects of the file at all: Python says NoSuchFile */
    }
    enum loaded res = OTHER;
    struct stat st;
    if (fstat(fd, &st) < 0)
        goto out;
    uint64_t size = (uint64_t)st.st_size, end = r->off + r->len < size ? r->off + r->len : size;
    if (r->off >= end) {
        *data = NULL;
        *n = 0;
        res = LOADED;
        goto out;
    }
    uint32_t crcs[MAX_OBJECT / BLOCK + 1];
    ssize_t got = fgetxattr(fd, CRC_ATTR, crcs, sizeof crcs);
    uint64_t blocks = (size + BLOCK - 1) / BLOCK;
    if (got != (ssize_t)(4 * blocks)) {
        res = CORRUPT;
        goto out;
    }
    uint64_t first = r->off / BLOCK, last = (end - 1) / BLOCK, lo = first * BLOCK;
    uint64_t hi = (last + 1) * BLOCK < size ? (last + 1) * BLOCK : size, span = hi - lo;
    size_t whole = (size_t)((span + ALIGN - 1) / ALIGN * ALIGN);
    if (!(*buf = take_buffer(whole)))
        goto out;
    ssize_t have = -1;
    if (direct_ok && span >= DIRECT_MIN) {
        snprintf(path, sizeof path, "/proc/self/fd/%d", fd); /* the file opened, even if replaced since */
        int dfd = open(path, O_RDONLY | O_DIRECT | O_CLOEXEC);
        if (dfd >= 0) {
            have = pread(dfd, (*buf)->p, whole, (off_t)lo); /* whole pages; the object's end stops it */
            close(dfd);
        } else if (errno == EINVAL) {
            direct_ok = 0; /* as ObjectStore does: this file system refuses O_DIRECT */
        }
    }
    if (have < 0) {
        have = 0;
        while ((uint64_t)have < span) {
            ssize_t k = pread(fd, (*buf)->p + have, span - (uint64_t)have, (off_t)(lo + (uint64_t)have));
            if (k <= 0)
                break;
            have += k;
        }
    }
    if ((uint64_t)have < span) { /* shortened meanwhile: once more under the lock */
        res = CORRUPT;
        goto out;
    }
    for (uint64_t b = first; b <= last; b++) {
        uint64_t at = (b - first) * BLOCK, len = (b + 1) * BLOCK < size ? BLOCK : size - b * BLOCK;
        if (crc32_gzip_refl(0, (unsigned char *)(*buf)->p + at, len) != __builtin_bswap32(crcs[b])) {
            res = CORRUPT;
            goto out;
        }
    }
    *data = (*buf)->p + (r->off - lo);
    *n = (size_t)(end - r->off);
    res = LOADED;
out:
    close(fd);
    if (res != LOADED && *buf) {
        give_buffer(*buf);
        *buf = NULL;
    }
    return res;
}

/* 1: answered, the connection goes on; 0: close it; -1: nothing sent, Python is to answer it. */
static int answer(struct link l, const struct request *r)
{
    if (!may(r, 0))
        return -1;
    busy++;
    struct buffer *buf = NULL;
    const char *data = NULL;
    size_t n = 0;
    enum loaded res = load(r, &buf, &data, &n);
    if (res == CORRUPT) { /* or read between a write's bytes and its checksums: once more, alone */
        xo_lock(r->fid, r->objno);
        res = load(r, &buf, &data, &n);
        xo_unlock(r->fid, r->objno);
    }
    int ret = -1;
    if (res == LOADED || res == HOLE) {
        char head[256];
        int hn = snprintf(head, sizeof head, "HTTP/1.1 200 OK\r\nContent-Length: %zu\r\n%s%s\r\n", n,
                          res == HOLE ? "X-Xos-Hole: 1\r\n" : n ? "Content-Type: application/octet-stream\r\n" : "",
                          r->close ? "Connection: close\r\n" : "");
        struct iovec iov[2] = {{head, (size_t)hn}, {(void *)data, n}};
        ret = send_all(l, iov, n ? 2 : 1) == 0 && !r->close;
        served++;
        was_read(r->fid);
    }
    if (buf)
        give_buffer(buf);
    busy--;
    return ret;
}

static void *serve(void *arg)
{
    int fd = (int)(intptr_t)arg;
    struct link l = {fd, NULL};
    char head[HEAD_MAX], peer[512] = "", *handoff = NULL; /* handoff: a write's head and body, Python's to do */
    size_t have = 0, handoff_n = 0;
    if (osd_tls) {
        if (!(l.ssl = SSL_new(osd_tls)) || SSL_set_fd(l.ssl, fd) != 1)
            goto close;
        int rc = SSL_accept(l.ssl);
        if (rc != 1) {
            int why = SSL_get_error(l.ssl, rc);
            unsigned long e = ERR_peek_last_error();
            if (why == SSL_ERROR_SYSCALL || why == SSL_ERROR_ZERO_RETURN ||
                ERR_GET_REASON(e) == SSL_R_UNEXPECTED_EOF_WHILE_READING) { /* the client went away: no news */
                ERR_clear_error();
                goto close;
            }
            long v = SSL_get_verify_result(l.ssl);
            struct sockaddr_storage ss;
            socklen_t sl = sizeof ss;
            char who[INET6_ADDRSTRLEN] = "?";
            if (getpeername(fd, (struct sockaddr *)&ss, &sl) == 0)
                inet_ntop(ss.ss_family, ss.ss_family == AF_INET ? (void *)&((struct sockaddr_in *)&ss)->sin_addr
                                                                : (void *)&((struct sockaddr_in6 *)&ss)->sin6_addr,
                          who, sizeof who);
            fprintf(stderr, "xos-osd: TLS from %s refused: %s\n", who,
                    v != X509_V_OK ? X509_verify_cert_error_string(v)
                    : e ? ERR_reason_error_string(e) : "no TLS handshake (plain HTTP?)");
            ERR_clear_error();
            goto close;
        }
        X509 *cert = SSL_get1_peer_certificate(l.ssl);
        if (cert) { /* a host: Python weighs what its roles allow */
            describe(cert, peer, sizeof peer);
            X509_free(cert);
            goto adopt;
        }
    }
    for (;;) {
        char *end;
        while (!(end = memmem(head, have, "\r\n\r\n", 4))) {
            if (have == sizeof head)
                goto adopt;
            ssize_t k = link_recv(l, head + have, sizeof head - have);
            if (k < 0 && errno == EINTR && !l.ssl)
                continue;
            if (k <= 0)
                goto close; /* gone, silent too long, or stopped */
            have += (size_t)k;
        }
        size_t hn = (size_t)(end - head) + 4;
        struct request r;
        if (parse(head, hn, &r) < 0)
            goto adopt;
        int rc;
        if (r.put) {
            busy++;
            rc = put(l, &r, head, &have, hn, &handoff, &handoff_n);
            busy--;
        } else if ((rc = r.fsync ? sync_file(l, &r) : answer(l, &r)) > 0) {
            memmove(head, head + hn, have - hn);
            have -= hn;
        }
        if (rc < 0)
            goto adopt;
        if (rc == 0)
            goto close;
    }
adopt:
    if (stopping)
        goto close;
    const char *give = handoff ? handoff : head;
    size_t give_n = handoff ? handoff_n : have;
    if (!l.ssl) {
        let_go(fd);
        xo_adopt(fd, give, give_n, ""); /* Python's now, with what came of it */
        free(handoff);
        return NULL;
    }
    int pair[2];
    if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, pair) < 0)
        goto close;
    xo_adopt(pair[1], give, give_n, peer);
    free(handoff);
    handoff = NULL;
    relay(l.ssl, fd, pair[0], IDLE_SECONDS, &stopping);
    close(pair[0]);
close:
    free(handoff);
    let_go(fd);
    if (l.ssl)
        SSL_free(l.ssl);
    close(fd);
    return NULL;
}

static void *accept_loop(void *arg)
{
    (void)arg;
    pthread_attr_t attr;
    pthread_attr_init(&attr);
    pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
    pthread_attr_setstacksize(&attr, 256 << 10); /* a head, a path and the checksums */
    while (!stopping) {
        int fd = accept4(listen_fd, NULL, NULL, SOCK_CLOEXEC);
        if (fd < 0) {
            if (stopping)
                break;
            if (errno == EMFILE || errno == ENFILE || errno == ENOBUFS || errno == ENOMEM) {
                struct timespec ts = {0, 10 * 1000 * 1000};
                nanosleep(&ts, NULL); /* out of descriptors: let some close */
            }
            continue;
        }
        int one = 1;
        struct timeval idle = {.tv_sec = IDLE_SECONDS}, snd = {.tv_sec = SEND_SECONDS};
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &idle, sizeof idle);
        setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &snd, sizeof snd);
        pthread_t t;
        if (!hold(fd)) {
            if (stopping) {
                close(fd);
                break;
            }
            xo_adopt(fd, "", 0, osd_tls ? NOT_BEGUN : "");
        } else if (pthread_create(&t, &attr, serve, (void *)(intptr_t)fd) != 0) {
            let_go(fd);
            xo_adopt(fd, "", 0, osd_tls ? NOT_BEGUN : "");
        }
    }
    pthread_attr_destroy(&attr);
    return NULL;
}

int xo_start(int fd, const char *dir, int direct)
{
    if (accepting)
        return -EBUSY;
    if (snprintf(root, sizeof root, "%s", dir) >= (int)sizeof root)
        return -ENAMETOOLONG;
    int flags = fcntl(fd, F_GETFL);
    if (flags < 0 || fcntl(fd, F_SETFL, flags & ~O_NONBLOCK) < 0)
        return -errno;
    listen_fd = fd;
    direct_ok = direct;
    stopping = 0;
    int err = pthread_create(&acceptor, NULL, accept_loop, NULL);
    if (err)
        return -err;
    accepting = 1;
    return 0;
}

void xo_stop(void)
{
    if (!accepting)
        return;
    stopping = 1;
    shutdown(listen_fd, SHUT_RDWR); /* wakes accept() */
    pthread_join(acceptor, NULL);
    accepting = 0;
    pthread_mutex_lock(&conns_lock);
    for (int i = 0; i < nconns; i++)
        shutdown(conns[i], SHUT_RDWR); /* their threads see the end and close them */
    pthread_mutex_unlock(&conns_lock);
}
