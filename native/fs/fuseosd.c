/* Reads straight from the OSDs: a read-only handle Python gave a plan (its fid, capability, striping
 * and OSD addresses) is read here, over kept-alive HTTP/1.1 connections, with whole chunks fetched
 * ahead of a sequential reader by a few threads. Anything unusual (a timeout, a short or failed
 * answer) falls back to Python, which fails over to another replica.
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
#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>

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

/* kept-alive connections to OSDs, over TLS once xf_tls has given the grid's CA */

static SSL_CTX *tls;

int xf_tls(const char *ca_file)
{
    SSL_CTX *ctx = SSL_CTX_new(TLS_client_method());
    if (!ctx)
        return -ENOMEM;
    SSL_CTX_set_min_proto_version(ctx, TLS1_3_VERSION);
    if (SSL_CTX_load_verify_locations(ctx, ca_file, NULL) != 1) {
        SSL_CTX_free(ctx);
        return -EINVAL;
    }
    SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER, NULL);
    SSL_CTX_set_mode(ctx, SSL_MODE_AUTO_RETRY);
    SSL_CTX_set_read_ahead(ctx, 1); /* records read whole, several at once: not a read for a header, one for a body */
    tls = ctx;
    return 0;
}

struct conn {
    int fd;
    SSL *ssl;
};

struct idle {
    struct sockaddr_in addr;
    struct conn c;
};

static struct idle idles[64];
static int nidle;
static pthread_mutex_t idle_lock = PTHREAD_MUTEX_INITIALIZER;

static void conn_close(struct conn c);

int xf_tls_crl(const char *path)
{
    if (!tls)
        return -EINVAL;
    if (SSL_CTX_load_verify_locations(tls, path, NULL) != 1) {
        ERR_clear_error();
        return -EINVAL;
    }
    X509_VERIFY_PARAM_set_flags(SSL_CTX_get0_param(tls), X509_V_FLAG_CRL_CHECK);
    /* connections kept from before were checked against no list, or an older one: made again on next use */
    pthread_mutex_lock(&idle_lock);
    while (nidle)
        conn_close(idles[--nidle].c);
    pthread_mutex_unlock(&idle_lock);
    return 0;
}

static int same_addr(const struct sockaddr_in *a, const struct sockaddr_in *b)
{
    return a->sin_addr.s_addr == b->sin_addr.s_addr && a->sin_port == b->sin_port;
}

static void conn_close(struct conn c)
{
    if (c.ssl)
        SSL_free(c.ssl);
    close(c.fd);
}

/* The OSD's certificate must come from the grid's CA and name the address `a` (an IP address SAN). */
static int handshake(struct conn *c, const struct sockaddr_in *a)
{
    char ip[INET_ADDRSTRLEN];
    inet_ntop(AF_INET, &a->sin_addr, ip, sizeof ip);
    if (!(c->ssl = SSL_new(tls)) || SSL_set_fd(c->ssl, c->fd) != 1 ||
        X509_VERIFY_PARAM_set1_ip_asc(SSL_get0_param(c->ssl), ip) != 1)
        return -1;
    if (SSL_connect(c->ssl) == 1)
        return 0;
    unsigned long e = ERR_get_error();
    long v = SSL_get_verify_result(c->ssl);
    fprintf(stderr, "xos: TLS with the OSD at %s:%u refused: %s\n", ip, ntohs(a->sin_port),
            v != X509_V_OK ? X509_verify_cert_error_string(v) : e ? ERR_reason_error_string(e) : "connection closed");
    ERR_clear_error();
    return -1;
}

static int conn_get(const struct sockaddr_in *a, int *reused, struct conn *c)
{
    pthread_mutex_lock(&idle_lock);
    for (int i = 0; i < nidle; i++)
        if (same_addr(&idles[i].addr, a)) {
            *c = idles[i].c;
            idles[i] = idles[--nidle];
            pthread_mutex_unlock(&idle_lock);
            *reused = 1;
            return 0;
        }
    pthread_mutex_unlock(&idle_lock);
    *reused = 0;
    c->ssl = NULL;
    c->fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (c->fd < 0)
        return -1;
    int one = 1;
    struct timeval tv = {.tv_sec = OSD_TIMEOUT};
    setsockopt(c->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    setsockopt(c->fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    setsockopt(c->fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv); /* bounds connect() and the handshake too */
    if (connect(c->fd, (const struct sockaddr *)a, sizeof *a) < 0 || (tls && handshake(c, a) < 0)) {
        conn_close(*c);
        return -1;
    }
    return 0;
}

static void conn_put(const struct sockaddr_in *a, struct conn c)
{
    pthread_mutex_lock(&idle_lock);
    if (nidle < (int)(sizeof idles / sizeof *idles)) {
        idles[nidle].addr = *a;
        idles[nidle++].c = c;
        c.fd = -1;
    }
    pthread_mutex_unlock(&idle_lock);
    if (c.fd >= 0)
        conn_close(c);
}

void close_idle(void)
{
    pthread_mutex_lock(&idle_lock);
    while (nidle)
        conn_close(idles[--nidle].c);
    pthread_mutex_unlock(&idle_lock);
}

static int send_all(struct conn c, const char *buf, size_t len)
{
    while (len) {
        ssize_t n = c.ssl ? SSL_write(c.ssl, buf, (int)len) : send(c.fd, buf, len, MSG_NOSIGNAL);
        if (n <= 0)
            return -1;
        buf += n;
        len -= (size_t)n;
    }
    return 0;
}

static ssize_t recv_some(struct conn c, char *buf, size_t len)
{
    if (!c.ssl)
        return recv(c.fd, buf, len, 0);
    int n = SSL_read(c.ssl, buf, len > INT_MAX ? INT_MAX : (int)len);
    if (n <= 0)
        ERR_clear_error();
    return n;
}

/* One GET on `c`: the body's length (into `out`, at most `want`), or -1 (the connection is unusable
 * or the answer was not a 200 with a body that fits). */
static ssize_t get_range(struct conn c, const char *request, size_t reqlen, char *out, size_t want)
{
    if (send_all(c, request, reqlen) < 0)
        return -1;
    char head[8192];
    size_t have = 0;
    char *end = NULL;
    while (!end) {
        if (have == sizeof head - 1)
            return -1;
        ssize_t n = recv_some(c, head + have, sizeof head - 1 - have);
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
        ssize_t n = recv_some(c, out + got, len - got);
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
        struct conn c;
        if (conn_get(&p->col[col], &reused, &c) < 0)
            break;
        got = get_range(c, request, (size_t)reqlen, buf, len);
        if (got >= 0)
            conn_put(&p->col[col], c);
        else
            conn_close(c);
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
int read_direct(fuse_req_t req, uint64_t fh, size_t size, off_t off)
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
