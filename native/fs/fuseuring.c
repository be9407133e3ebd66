/* FUSE over io_uring (Linux 6.14+) under libfuse 3.14's low-level API.
 *
 * Through /dev/fuse a stat wakes a FUSE thread on whichever CPU is idle: on these VMs an idle CPU has
 * halted, and waking it costs about a third of the stat. Through io_uring each CPU has its own queue,
 * and the kernel puts a request in the queue of the CPU it was made on. libfuse 3.14 knows nothing of
 * it: the session's custom I/O (gridfuse.c) asks for it in the INIT reply, a request taken from a ring
 * goes to fuse_session_process_buf as if read from /dev/fuse, and its reply goes back into the ring
 * instead of to write(2).
 *
 * Each queue entry has a thread of its own, bound to the entry's CPU, with a ring of its own: it waits
 * for a request, serves it (from the table, through Python, from the OSDs) and commits the reply while
 * fetching the next, one system call a request. A thread that is serving holds only its own entry, so
 * a slow request never holds up another; the kernel gives a new request to an idle entry of the CPU, the
 * one that finished last first. Handing requests from one thread per CPU to workers instead made 4 KiB
 * reads 27% slower and sequential reads 22% slower: two more wake-ups a request.
 */
#define _GNU_SOURCE
#include "fuseuring.h"

#include <errno.h>
#include <linux/fuse.h>
#include <liburing.h>
#include <poll.h>
#include <pthread.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <unistd.h>

/* The kernel's FUSE-over-io_uring ABI (include/uapi/linux/fuse.h, 7.42); Debian 12's headers predate it. */
#define URING_IN_OUT_HEADER_SZ 128
#define URING_OP_IN_OUT_SZ 128
enum { CMD_REGISTER = 1, CMD_COMMIT_AND_FETCH = 2 };
struct ring_ent_in_out {
    uint64_t flags, commit_id;
    uint32_t payload_sz, padding;
    uint64_t reserved;
};
struct ring_req_header {
    char in_out[URING_IN_OUT_HEADER_SZ]; /* fuse_in_header in, fuse_out_header out */
    char op_in[URING_OP_IN_OUT_SZ];      /* the operation's first argument (fuse_read_in, ...) */
    struct ring_ent_in_out ent_in_out;
};
struct ring_cmd_req {
    uint64_t flags, commit_id;
    uint16_t qid;
    uint8_t padding[6];
};

#define SLACK 4096   /* room before a payload to put its header and first argument back in front */
#define STOP_TAG 1   /* user_data of the stop eventfd's poll (an entry's is its address) */

struct ent {
    int qid;
    pthread_t tid;
    int started;
    struct io_uring ring;
    struct ring_req_header *hdr;
    char *buf; /* SLACK, then the payload */
    struct iovec iov[2];
    uint64_t commit_id;
    uint64_t unique; /* of the request it holds until its reply is in; 0: none */
};

static struct fuse_session *session;
static int fuse_fd = -1, stop_fd = -1;
static size_t payload_size;
static struct ent *ents;
static int nents;
static int go, stopping; /* go: the INIT reply is out, entries may register */
static pthread_mutex_t go_mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t go_cv = PTHREAD_COND_INITIALIZER;

static __thread struct ent *own; /* the entry this thread serves */

int xu_offered(uint32_t init_flags, uint32_t init_flags2)
{
    return (init_flags & FUSE_INIT_EXT) && (init_flags2 & XU_INIT_FLAGS2);
}

static int possible_cpus(void)
{
    FILE *f = fopen("/sys/devices/system/cpu/possible", "re");
    int hi = -1;
    if (f) {
        char line[64];
        if (fgets(line, sizeof line, f)) { /* "0-N", or "0" */
            char *dash = strrchr(line, '-');
            hi = atoi(dash ? dash + 1 : line);
        }
        fclose(f);
    }
    return hi + 1;
}

static void *serve_entry(void *arg);

static void free_entries(void)
{
    for (int i = 0; i < nents; i++) {
        struct ent *e = &ents[i];
        if (e->ring.ring_fd >= 0)
            io_uring_queue_exit(&e->ring);
        if (e->hdr)
            munmap(e->hdr, sizeof *e->hdr);
        if (e->buf)
            munmap(e->buf, SLACK + payload_size);
    }
    free(ents);
    ents = NULL;
    nents = 0;
    if (stop_fd >= 0)
        close(stop_fd);
    stop_fd = -1;
}

int xu_prepare(struct fuse_session *se, int fd, size_t max_payload)
{
    int cpus = possible_cpus();
    if (cpus <= 0)
        return -ENODEV;
    /* Entries a CPU can have busy at once: the kernel's read-ahead keeps 8 requests going, and more
     * wait in the kernel; many CPUs share out a few hundred threads. */
    int per_cpu = 64 / cpus > 16 ? 16 : 64 / cpus < 8 ? 8 : 64 / cpus;
    ents = calloc((size_t)(cpus * per_cpu), sizeof *ents);
    if (!ents)
        return -ENOMEM;
    nents = cpus * per_cpu;
    session = se;
    fuse_fd = fd;
    payload_size = max_payload;
    for (int i = 0; i < nents; i++) {
        ents[i].qid = i / per_cpu;
        ents[i].ring.ring_fd = -1;
    }
    int err = (stop_fd = eventfd(0, EFD_CLOEXEC)) < 0 ? -errno : 0;
    for (int i = 0; i < nents && !err; i++) {
        struct ent *e = &ents[i];
        struct io_uring_params p = {.flags = IORING_SETUP_SQE128};
        if ((err = io_uring_queue_init_params(4, &e->ring, &p)) < 0) {
            e->ring.ring_fd = -1;
            break;
        }
        /* mmap: page-aligned, and the pages of a payload never used cost nothing */
        e->hdr = mmap(NULL, sizeof *e->hdr, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        e->buf = mmap(NULL, SLACK + max_payload, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        if (e->hdr == MAP_FAILED || e->buf == MAP_FAILED) {
            e->hdr = e->hdr == MAP_FAILED ? NULL : e->hdr;
            e->buf = e->buf == MAP_FAILED ? NULL : e->buf;
            err = -ENOMEM;
            break;
        }
        e->iov[0] = (struct iovec){e->hdr, sizeof *e->hdr};
        e->iov[1] = (struct iovec){e->buf + SLACK, max_payload};
    }
    /* Every thread is there before the INIT reply asks for rings: once it has, the kernel holds every
     * request until each CPU's queue has an entry registered. */
    for (int i = 0; i < nents && !err; i++)
        if ((err = -pthread_create(&ents[i].tid, NULL, serve_entry, &ents[i])) == 0)
            ents[i].started = 1;
    if (err)
        xu_stop();
    return err;
}

static void submit_cmd(struct ent *e, int cmd)
{
    struct io_uring_sqe *sqe = io_uring_get_sqe(&e->ring);
    if (!sqe) { /* an entry's ring has room for its command and the stop poll: a bug */
        fprintf(stderr, "xos: FUSE ring of CPU %d has no room for a command\n", e->qid);
        abort();
    }
    memset(sqe, 0, 2 * sizeof *sqe); /* SQE128: the command's data follows */
    sqe->opcode = IORING_OP_URING_CMD;
    sqe->fd = fuse_fd;
    sqe->cmd_op = (uint32_t)cmd;
    sqe->user_data = (uint64_t)(uintptr_t)e;
    struct ring_cmd_req *r = (void *)sqe->cmd;
    r->qid = (uint16_t)e->qid;
    r->commit_id = cmd == CMD_COMMIT_AND_FETCH ? e->commit_id : 0;
    if (cmd == CMD_REGISTER) {
        sqe->addr = (uint64_t)(uintptr_t)e->iov;
        sqe->len = 2;
    }
}

/* A request's reply comes from the thread serving it (gridfuse.c and fs/client/mount.py reply before they
 * return): the thread's own entry, unless it is not one of the ring's. */
int xu_reply(const struct iovec *iov, int count)
{
    struct ent *e = own;
    if (!e || !e->unique || count < 1 || iov[0].iov_len < sizeof(struct fuse_out_header))
        return 0;
    const struct fuse_out_header *out = iov[0].iov_base;
    if (out->unique != e->unique)
        return 0;
    e->unique = 0;
    struct fuse_out_header *h = (void *)e->hdr->in_out;
    *h = *out;
    size_t len = 0;
    for (int i = 1; i < count; i++) {
        if (len + iov[i].iov_len > payload_size) {
            h->error = -EIO;
            len = 0;
            break;
        }
        memcpy(e->buf + SLACK + len, iov[i].iov_base, iov[i].iov_len);
        len += iov[i].iov_len;
    }
    e->hdr->ent_in_out.payload_sz = (uint32_t)len;
    return 1;
}

static void reply_error(struct ent *e, int err)
{
    struct fuse_out_header *h = (void *)e->hdr->in_out;
    *h = (struct fuse_out_header){.len = sizeof *h, .error = -err, .unique = e->unique};
    e->hdr->ent_in_out.payload_sz = 0;
    e->unique = 0;
}

/* Serve the request in `e` as /dev/fuse would give it: header, first argument, payload, in one piece. */
static void serve(struct ent *e)
{
    const struct fuse_in_header *in = (const void *)e->hdr->in_out;
    size_t payload = e->hdr->ent_in_out.payload_sz;
    e->commit_id = e->hdr->ent_in_out.commit_id;
    e->unique = in->unique;
    if (in->len < sizeof *in + payload || in->len - sizeof *in - payload > URING_OP_IN_OUT_SZ) {
        reply_error(e, EPROTO); /* not as this ABI lays requests out: refused, not guessed at */
        return;
    }
    size_t arg0 = in->len - sizeof *in - payload;
    char *start = e->buf + SLACK - arg0 - sizeof *in;
    memcpy(start, in, sizeof *in);
    memcpy(start + sizeof *in, e->hdr->op_in, arg0);
    struct fuse_buf fbuf = {.mem = start, .size = in->len};
    fuse_session_process_buf(session, &fbuf);
    if (e->unique) { /* a bug: the kernel must not wait for ever */
        fprintf(stderr, "xos: FUSE request %d left unanswered by its thread\n", in->opcode);
        reply_error(e, EIO);
    }
}

static void *serve_entry(void *arg)
{
    struct ent *e = arg;
    own = e;
    cpu_set_t cpus;
    CPU_ZERO(&cpus);
    CPU_SET(e->qid, &cpus);
    pthread_setaffinity_np(pthread_self(), sizeof cpus, &cpus); /* refused for an offline CPU: anywhere */
    char name[16];
    snprintf(name, sizeof name, "xos-ring%d", e->qid);
    pthread_setname_np(pthread_self(), name);
    pthread_mutex_lock(&go_mu);
    while (!go && !stopping)
        pthread_cond_wait(&go_cv, &go_mu);
    pthread_mutex_unlock(&go_mu);
    if (stopping)
        return NULL;
    struct io_uring_sqe *poll = io_uring_get_sqe(&e->ring);
    io_uring_prep_poll_add(poll, stop_fd, POLLIN);
    poll->user_data = STOP_TAG;
    int cmd = CMD_REGISTER;
    submit_cmd(e, cmd);
    for (;;) {
        int rc = io_uring_submit_and_wait(&e->ring, 1);
        if (rc < 0 && rc != -EINTR) {
            fprintf(stderr, "xos: FUSE ring of CPU %d: %s\n", e->qid, strerror(-rc));
            return NULL;
        }
        struct io_uring_cqe *cqe;
        while (io_uring_peek_cqe(&e->ring, &cqe) == 0) {
            uint64_t tag = cqe->user_data;
            int res = cqe->res;
            io_uring_cqe_seen(&e->ring, cqe);
            if (tag == STOP_TAG || res == -ENOTCONN || res == -ECANCELED || res == -ECONNABORTED)
                return NULL; /* stopped, or unmounted */
            if (res == 0) {
                serve(e);
                cmd = CMD_COMMIT_AND_FETCH;
            } else if (cmd == CMD_REGISTER) { /* the kernel went back to /dev/fuse */
                fprintf(stderr, "xos: FUSE ring of CPU %d refused: %s\n", e->qid, strerror(-res));
                return NULL;
            } else { /* a commit refused: the entry starts over as a new one */
                fprintf(stderr, "xos: FUSE ring of CPU %d: reply refused: %s\n", e->qid, strerror(-res));
                cmd = CMD_REGISTER;
            }
            submit_cmd(e, cmd);
        }
    }
}

void xu_start(void)
{
    pthread_mutex_lock(&go_mu);
    go = 1;
    pthread_cond_broadcast(&go_cv);
    pthread_mutex_unlock(&go_mu);
}

void xu_stop(void)
{
    if (!ents)
        return;
    pthread_mutex_lock(&go_mu);
    stopping = 1;
    pthread_cond_broadcast(&go_cv);
    pthread_mutex_unlock(&go_mu);
    uint64_t one = 1;
    if (write(stop_fd, &one, sizeof one) < 0)
        perror("xos: stopping the FUSE rings");
    for (int i = 0; i < nents; i++)
        if (ents[i].started)
            pthread_join(ents[i].tid, NULL);
    free_entries();
    stopping = 0;
    go = 0;
}
