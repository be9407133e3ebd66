/* The request path shared by nss_passwd.c and nss_group.c. */
#define _GNU_SOURCE
#include <errno.h>
#include <string.h>

#include "nss_cache.h"
#include "nss_common.h"

enum nss_status xos_nss_ask(int op, const char *arg, struct xos_reply **reply, int *errnop)
{
    char path[256];
    const char *guard = getenv(XOS_LOOP_GUARD);
    const char *fields[1] = {arg};

    *reply = NULL;
    if (guard && strcmp(guard, "NO") == 0) { /* we are the daemon: answering would recurse */
        *errnop = ENOENT;
        return NSS_STATUS_UNAVAIL;
    }
    *reply = malloc(sizeof(**reply));
    if (*reply == NULL) {
        *errnop = ENOMEM;
        return NSS_STATUS_TRYAGAIN;
    }
    if ((op == XOS_OP_GETPWNAM && xos_cache_passwd(arg, 0, *reply)) ||
        (op == XOS_OP_GETPWUID && xos_cache_passwd(NULL, strtol(arg, NULL, 10), *reply)) ||
        (op == XOS_OP_GETGRNAM && xos_cache_group(arg, 0, *reply)) ||
        (op == XOS_OP_GETGRGID && xos_cache_group(NULL, strtol(arg, NULL, 10), *reply)))
        return NSS_STATUS_SUCCESS;
    xos_socket_path(NULL, path, sizeof(path));
    switch (xos_request(path, op, fields, 1, *reply)) {
    case XOS_OK:
        return NSS_STATUS_SUCCESS;
    case XOS_NOTFOUND:
        *errnop = ENOENT;
        return NSS_STATUS_NOTFOUND;
    default:
        *errnop = ENOENT;
        return NSS_STATUS_UNAVAIL;
    }
}

char *xos_nss_copy(const char *s, char **buf, size_t *left)
{
    size_t n = strlen(s) + 1;
    if (n > *left)
        return NULL;
    char *out = memcpy(*buf, s, n);
    *buf += n;
    *left -= n;
    return out;
}
