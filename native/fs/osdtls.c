/* TLS for the OSD's native threads: the server context, sends and receives on a plain or TLS connection,
 * a host certificate's name and roles, and the relay that hands Python a TLS connection's bytes. */
#define _GNU_SOURCE
#include "osdread.h"
#include "osdtls.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>
#include <openssl/err.h>
#include <openssl/x509v3.h>

/* TLS: with a context from xo_tls, every connection is TLS 1.3, ended here. Users' clients show no
 * certificate (their credential is inside); a host that shows one is checked against the grid's CA and
 * its requests all go to Python, which knows what its roles allow. Python takes a TLS connection through
 * a socket pair, this thread relaying the bytes both ways (relay). */
SSL_CTX *osd_tls;

int xo_tls(const char *cert, const char *key, const char *ca)
{
    SSL_CTX *ctx = SSL_CTX_new(TLS_server_method());
    if (!ctx)
        return -ENOMEM;
    SSL_CTX_set_min_proto_version(ctx, TLS1_3_VERSION);
    if (SSL_CTX_use_certificate_chain_file(ctx, cert) != 1 || SSL_CTX_use_PrivateKey_file(ctx, key, SSL_FILETYPE_PEM) != 1 ||
        SSL_CTX_check_private_key(ctx) != 1 || SSL_CTX_load_verify_locations(ctx, ca, NULL) != 1) {
        SSL_CTX_free(ctx);
        ERR_clear_error();
        return -EINVAL;
    }
    STACK_OF(X509_NAME) *names = SSL_load_client_CA_file(ca);
    if (names)
        SSL_CTX_set_client_CA_list(ctx, names);
    SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER, NULL); /* a certificate if one is shown; none is fine */
    /* sessions resumed (a client's next connection skips the certificate work) need a context to belong to */
    static const unsigned char sid[] = "xos-osd";
    SSL_CTX_set_session_id_context(ctx, sid, sizeof sid - 1);
    SSL_CTX_set_mode(ctx, SSL_MODE_AUTO_RETRY);
    SSL_CTX_set_read_ahead(ctx, 1); /* records read whole, several at once: not a read for a header, one for a body */
    osd_tls = ctx;
    return 0;
}

ssize_t link_recv(struct link l, char *buf, size_t len)
{
    if (!l.ssl)
        return recv(l.fd, buf, len, 0);
    int n = SSL_read(l.ssl, buf, len > INT_MAX ? INT_MAX : (int)len);
    if (n <= 0)
        ERR_clear_error();
    return n;
}

int send_all(struct link l, struct iovec *iov, int n)
{
    if (l.ssl) {
        for (int i = 0; i < n; i++)
            for (size_t done = 0; done < iov[i].iov_len;) {
                size_t left = iov[i].iov_len - done;
                int k = SSL_write(l.ssl, (char *)iov[i].iov_base + done, left > INT_MAX ? INT_MAX : (int)left);
                if (k <= 0) {
                    ERR_clear_error();
                    return -1;
                }
                done += (size_t)k;
            }
        return 0;
    }
    int fd = l.fd;
    while (n) {
        struct msghdr m = {.msg_iov = iov, .msg_iovlen = (size_t)n};
        ssize_t k = sendmsg(fd, &m, MSG_NOSIGNAL);
        if (k < 0 && errno == EINTR)
            continue;
        if (k <= 0)
            return -1;
        while (n && (size_t)k >= iov->iov_len) {
            k -= (ssize_t)iov->iov_len;
            iov++;
            n--;
        }
        if (n) {
            iov->iov_base = (char *)iov->iov_base + k;
            iov->iov_len -= (size_t)k;
        }
    }
    return 0;
}

/* Revocation: from now on every handshake checks the CA's list in `path` (added to the certificates' store,
 * the newest list of a CA being the one used). 0, or -errno. */
int xo_tls_crl(const char *path)
{
    if (!osd_tls)
        return -EINVAL;
    if (SSL_CTX_load_verify_locations(osd_tls, path, NULL) != 1) {
        ERR_clear_error();
        return -EINVAL;
    }
    X509_VERIFY_PARAM_set_flags(SSL_CTX_get0_param(osd_tls), X509_V_FLAG_CRL_CHECK);
    return 0;
}

/* "NAME\nROLE,ROLE\nSERIAL" of a verified host certificate (its common name, its xos:role: URIs, its serial
 * number in hexadecimal: Python checks it against the revocation list at each request). */
void describe(X509 *cert, char *out, size_t size)
{
    int n = X509_NAME_get_text_by_NID(X509_get_subject_name(cert), NID_commonName, out, (int)size - 2);
    size_t at = n > 0 ? (size_t)n : 0;
    out[at++] = '\n';
    out[at] = 0;
    GENERAL_NAMES *sans = X509_get_ext_d2i(cert, NID_subject_alt_name, NULL, NULL);
    for (int i = 0; sans && i < sk_GENERAL_NAME_num(sans); i++) {
        GENERAL_NAME *g = sk_GENERAL_NAME_value(sans, i);
        if (g->type != GEN_URI)
            continue;
        const char *uri = (const char *)ASN1_STRING_get0_data(g->d.uniformResourceIdentifier);
        int len = ASN1_STRING_length(g->d.uniformResourceIdentifier);
        if (len > 9 && strncmp(uri, "xos:role:", 9) == 0 && at + (size_t)len < size - 1) {
            at += (size_t)snprintf(out + at, size - at, "%s%.*s", out[at - 1] == '\n' ? "" : ",", len - 9, uri + 9);
        }
    }
    GENERAL_NAMES_free(sans);
    BIGNUM *bn = ASN1_INTEGER_to_BN(X509_get_serialNumber(cert), NULL);
    char *hex = bn ? BN_bn2hex(bn) : NULL;
    if (hex && at + strlen(hex) + 2 < size)
        snprintf(out + at, size - at, "\n%s", hex);
    OPENSSL_free(hex);
    BN_free(bn);
}

/* Bytes both ways between a TLS connection and Python's end of a socket pair, until either ends: both
 * non-blocking, so neither side's full buffer can stop the other direction. Each way takes as many TLS
 * records (16 KiB at most each) or socket bytes as fit a RELAY_BUFFER before it writes, a write per
 * record being a syscall per 16 KiB. */
#define RELAY_BUFFER (256 << 10)

void relay(SSL *ssl, int fd, int inner, int idle_seconds, const atomic_int *stopping)
{
    char *up = malloc(RELAY_BUFFER), *down = malloc(RELAY_BUFFER);
    size_t ulen = 0, uoff = 0, dlen = 0, doff = 0;
    int inner_done = 0, client_done = 0;
    if (!up || !down)
        goto out;
    fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK);
    fcntl(inner, F_SETFL, fcntl(inner, F_GETFL) | O_NONBLOCK);
    while (!*stopping) {
        short want_fd = 0, want_inner = 0;
        int moved = 0;
        while (!client_done && ulen < RELAY_BUFFER) { /* from the client */
            int n = SSL_read(ssl, up + ulen, (int)(RELAY_BUFFER - ulen));
            if (n > 0) {
                ulen += (size_t)n, moved = 1;
                continue;
            }
            int e = SSL_get_error(ssl, n);
            ERR_clear_error();
            if (e == SSL_ERROR_WANT_READ)
                want_fd |= POLLIN;
            else if (e == SSL_ERROR_WANT_WRITE)
                want_fd |= POLLOUT;
            else
                client_done = 1; /* the client closed or broke the connection */
            break;
        }
        if (ulen > uoff) { /* to Python */
            ssize_t k = write(inner, up + uoff, ulen - uoff);
            if (k > 0) {
                uoff += (size_t)k, moved = 1;
                if (uoff == ulen)
                    uoff = ulen = 0;
            } else if (k < 0 && (errno == EAGAIN || errno == EINTR)) {
                want_inner |= POLLOUT;
            } else {
                break;
            }
        }
        if (client_done && ulen == uoff)
            break;
        if (!dlen && !inner_done) { /* from Python */
            ssize_t k = read(inner, down, RELAY_BUFFER);
            if (k > 0)
                dlen = (size_t)k, doff = 0, moved = 1;
            else if (k < 0 && (errno == EAGAIN || errno == EINTR))
                want_inner |= POLLIN;
            else
                inner_done = 1; /* Python closed it: what it sent goes out, then the connection ends */
        }
        if (dlen) { /* to the client */
            int n = SSL_write(ssl, down + doff, (int)(dlen - doff));
            if (n > 0) {
                doff += (size_t)n, moved = 1;
                if (doff == dlen)
                    dlen = 0;
            } else {
                int e = SSL_get_error(ssl, n);
                ERR_clear_error();
                if (e == SSL_ERROR_WANT_WRITE)
                    want_fd |= POLLOUT;
                else if (e == SSL_ERROR_WANT_READ)
                    want_fd |= POLLIN;
                else
                    break;
            }
        }
        if (inner_done && !dlen) {
            SSL_shutdown(ssl);
            break;
        }
        if (moved)
            continue;
        struct pollfd p[2] = {{fd, want_fd, 0}, {inner, want_inner, 0}};
        if (poll(p, 2, idle_seconds * 1000) <= 0)
            break;
    }
out:
    free(up);
    free(down);
}
