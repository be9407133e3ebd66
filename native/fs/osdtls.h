/* TLS for the OSD's native threads (osdtls.c): what osdread.c uses of it. */
#ifndef XOS_OSDTLS_H
#define XOS_OSDTLS_H

#include <openssl/ssl.h>
#include <stdatomic.h>
#include <stddef.h>
#include <sys/types.h>
#include <sys/uio.h>

/* The server context xo_tls made, or NULL: plain HTTP (a measurement of what TLS costs). */
extern SSL_CTX *osd_tls;

/* One connection: its socket, and its TLS session if it has one. */
struct link {
    int fd;
    SSL *ssl;
};

ssize_t link_recv(struct link l, char *buf, size_t len);
int send_all(struct link l, struct iovec *iov, int n);
void describe(X509 *cert, char *out, size_t size);
void relay(SSL *ssl, int fd, int inner, int idle_seconds, const atomic_int *stopping);

#endif
