/* Wire constants of the identity socket; keep in sync with xos/identity/proto.py. */
#ifndef XOS_PROTO_H
#define XOS_PROTO_H

#include <stddef.h>
#include <stdint.h>

#define XOS_PROTO_VERSION 1
#define XOS_MAX_MESSAGE 65536
#define XOS_MAX_FIELDS 64
#define XOS_DEFAULT_RUN "/run/xos"
#define XOS_SOCKET_NAME "idmap.sock"
#define XOS_TIMEOUT_MS 1000 /* the whole request: connect, send, reply */
#define XOS_LOOP_GUARD "_XOS_NSS_LOOPS" /* set to NO in the daemon: never resolve through ourselves */

enum xos_op {
    XOS_OP_AUTH = 1,
    XOS_OP_ACCOUNT = 2,
    XOS_OP_SESSION = 3,
    XOS_OP_GETPWNAM = 4,
    XOS_OP_GETPWUID = 5,
    XOS_OP_GETGRNAM = 6,
    XOS_OP_GETGRGID = 7,
    XOS_OP_PWENT = 8,
    XOS_OP_GRENT = 9,
};

enum xos_status {
    XOS_OK = 0,
    XOS_NOTFOUND = 1,
    XOS_DENIED = 2,
    XOS_BADREQ = 3,
    XOS_ERROR = 4,
    XOS_UNAVAIL = -1, /* transport: the daemon could not be asked */
};

struct xos_reply {
    int status;
    int nfields;
    const char *field[XOS_MAX_FIELDS]; /* NUL-terminated copies inside buf */
    size_t len[XOS_MAX_FIELDS];
    char buf[XOS_MAX_MESSAGE + XOS_MAX_FIELDS];
};

/* Send one request and read the reply; the reply's status, or XOS_UNAVAIL. */
int xos_request(const char *socket_path, int op, const char *const *fields, int nfields, struct xos_reply *reply);

/* The pieces of xos_request, for a client that keeps its connection (pam_xos, per PAM handle):
 * a connected socket whose peer is root, or -1; one request on it; the deadline of one request. */
int xos_connect(const char *socket_path, long deadline);
int xos_exchange(int fd, int op, const char *const *fields, int nfields, struct xos_reply *reply, long deadline);
long xos_deadline(void);

/* The socket path: `override` if given, else $XOS_RUN/idmap.sock (not for setuid callers), else the default. */
void xos_socket_path(const char *override, char *out, size_t size);

#endif
