/*
 * The socket transport shared by pam_xos and libnss_xos: connect, check that the peer is root,
 * send one request, read one reply, all within XOS_TIMEOUT_MS. No allocation: the caller owns
 * the reply buffer. Any reply the socket could send is parsed defensively.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include "xos_proto.h"

static long now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1000L + ts.tv_nsec / 1000000L;
}

static int wait_fd(int fd, short events, long deadline)
{
    for (;;) {
        long left = deadline - now_ms();
        if (left <= 0)
            return -1;
        struct pollfd p = {fd, events, 0};
        int rc = poll(&p, 1, (int)left);
        if (rc > 0)
            return 0;
        if (rc == 0 || errno != EINTR)
            return -1;
    }
}

static int io_all(int fd, char *buf, size_t n, int writing, long deadline)
{
    size_t done = 0;
    while (done < n) {
        if (wait_fd(fd, writing ? POLLOUT : POLLIN, deadline) < 0)
            return -1;
        ssize_t r = writing ? send(fd, buf + done, n - done, MSG_NOSIGNAL) : recv(fd, buf + done, n - done, 0);
        if (r < 0 && (errno == EINTR || errno == EAGAIN))
            continue;
        if (r <= 0)
            return -1;
        done += (size_t)r;
    }
    return 0;
}

static void put32(unsigned char *p, uint32_t v)
{
    p[0] = v >> 24;
    p[1] = v >> 16;
    p[2] = v >> 8;
    p[3] = v;
}

static uint32_t get32(const unsigned char *p)
{
    return ((uint32_t)p[0] << 24) | ((uint32_t)p[1] << 16) | ((uint32_t)p[2] << 8) | p[3];
}

void xos_socket_path(const char *override, char *out, size_t size)
{
    const char *run = secure_getenv("XOS_RUN");
    if (override && *override)
        snprintf(out, size, "%s", override);
    else
        snprintf(out, size, "%s/%s", run && *run ? run : XOS_DEFAULT_RUN, XOS_SOCKET_NAME);
}

int xos_connect(const char *socket_path, long deadline)
{
    struct sockaddr_un addr;
    struct ucred peer;
    socklen_t plen = sizeof(peer);

    if (strlen(socket_path) >= sizeof(addr.sun_path))
        return -1;
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    if (fd < 0)
        return -1;
    memset(&addr, 0, sizeof(addr));
    addr.sun_family = AF_UNIX;
    strcpy(addr.sun_path, socket_path);
    if (connect(fd, (struct sockaddr *)&addr, sizeof(addr)) < 0 &&
        ((errno != EINPROGRESS && errno != EAGAIN) || wait_fd(fd, POLLOUT, deadline) < 0))
        goto fail;
    /* Only the root daemon may answer: a socket planted by anyone else is not us. */
    if (getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &peer, &plen) < 0 || peer.uid != 0)
        goto fail;
    return fd;
fail:
    close(fd);
    return -1;
}

int xos_exchange(int fd, int op, const char *const *fields, int nfields, struct xos_reply *reply, long deadline)
{
    unsigned char *msg = malloc(XOS_MAX_MESSAGE); /* per call: NSS is entered from many threads */
    unsigned char head[4];
    int status = XOS_UNAVAIL;
    size_t pos = 8;

    reply->status = XOS_UNAVAIL;
    reply->nfields = 0;
    if (msg == NULL)
        return XOS_UNAVAIL;
    if (nfields < 0 || nfields > XOS_MAX_FIELDS)
        goto out;
    for (int i = 0; i < nfields; i++) {
        size_t n = strlen(fields[i]);
        if (pos + 4 + n > XOS_MAX_MESSAGE)
            goto out;
        put32(msg + pos, (uint32_t)n);
        memcpy(msg + pos + 4, fields[i], n);
        pos += 4 + n;
    }
    put32(msg, (uint32_t)(pos - 4));
    msg[4] = 0;
    msg[5] = XOS_PROTO_VERSION;
    msg[6] = (unsigned char)(op >> 8);
    msg[7] = (unsigned char)op;

    if (io_all(fd, (char *)msg, pos, 1, deadline) < 0 || io_all(fd, (char *)head, 4, 0, deadline) < 0)
        goto out;
    uint32_t len = get32(head);
    if (len < 4 || len > XOS_MAX_MESSAGE)
        goto out;
    if (io_all(fd, (char *)msg, len, 0, deadline) < 0)
        goto out;
    if (msg[0] != 0 || msg[1] != XOS_PROTO_VERSION)
        goto out;
    size_t in = 4, outp = 0;
    while (in < len) {
        if (in + 4 > len || reply->nfields >= XOS_MAX_FIELDS)
            goto out;
        uint32_t n = get32(msg + in);
        in += 4;
        if (n > len - in || outp + n + 1 > sizeof(reply->buf))
            goto out;
        memcpy(reply->buf + outp, msg + in, n);
        reply->buf[outp + n] = '\0';
        reply->field[reply->nfields] = reply->buf + outp;
        reply->len[reply->nfields] = n;
        reply->nfields++;
        outp += n + 1;
        in += n;
    }
    status = (msg[2] << 8) | msg[3];
    if (status > XOS_ERROR)
        status = XOS_ERROR;
    reply->status = status;
out:
    if (status == XOS_UNAVAIL)
        reply->nfields = 0; /* fields of a reply cut short are not an answer */
    free(msg);
    return status;
}

long xos_deadline(void)
{
    return now_ms() + XOS_TIMEOUT_MS;
}

int xos_request(const char *socket_path, int op, const char *const *fields, int nfields, struct xos_reply *reply)
{
    long deadline = xos_deadline();
    int fd = xos_connect(socket_path, deadline);
    if (fd < 0) {
        reply->status = XOS_UNAVAIL;
        reply->nfields = 0;
        return XOS_UNAVAIL;
    }
    int status = xos_exchange(fd, op, fields, nfields, reply, deadline);
    close(fd);
    return status;
}
