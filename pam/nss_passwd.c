/* passwd database of libnss_xos: by name, by uid, and enumeration. */
#define _GNU_SOURCE
#include <errno.h>
#include <pthread.h>
#include <pwd.h>
#include <stdio.h>
#include <stdlib.h>

#include "nss_common.h"

static pthread_mutex_t ent_lock = PTHREAD_MUTEX_INITIALIZER;
static int ent_index;

static enum nss_status fill(struct xos_reply *r, struct passwd *pw, char *buf, size_t len, int *errnop)
{
    char *end;
    if (r->nfields != 6) {
        *errnop = ENOENT;
        return NSS_STATUS_UNAVAIL;
    }
    unsigned long uid = strtoul(r->field[1], &end, 10), gid;
    if (*end)
        goto bad;
    gid = strtoul(r->field[2], &end, 10);
    if (*end)
        goto bad;
    pw->pw_uid = (uid_t)uid;
    pw->pw_gid = (gid_t)gid;
    if (!(pw->pw_name = xos_nss_copy(r->field[0], &buf, &len)) || !(pw->pw_passwd = xos_nss_copy("x", &buf, &len)) ||
        !(pw->pw_gecos = xos_nss_copy(r->field[3], &buf, &len)) || !(pw->pw_dir = xos_nss_copy(r->field[4], &buf, &len)) ||
        !(pw->pw_shell = xos_nss_copy(r->field[5], &buf, &len))) {
        *errnop = ERANGE;
        return NSS_STATUS_TRYAGAIN;
    }
    return NSS_STATUS_SUCCESS;
bad:
    *errnop = ENOENT;
    return NSS_STATUS_UNAVAIL;
}

static enum nss_status lookup(int op, const char *arg, struct passwd *pw, char *buf, size_t len, int *errnop)
{
    struct xos_reply *r;
    enum nss_status st = xos_nss_ask(op, arg, &r, errnop);
    if (st == NSS_STATUS_SUCCESS)
        st = fill(r, pw, buf, len, errnop);
    free(r);
    return st;
}

enum nss_status _nss_xos_getpwnam_r(const char *name, struct passwd *pw, char *buf, size_t len, int *errnop)
{
    if (!name || !pw || !buf) {
        *errnop = EINVAL;
        return NSS_STATUS_UNAVAIL;
    }
    return lookup(XOS_OP_GETPWNAM, name, pw, buf, len, errnop);
}

enum nss_status _nss_xos_getpwuid_r(uid_t uid, struct passwd *pw, char *buf, size_t len, int *errnop)
{
    char arg[24];
    snprintf(arg, sizeof(arg), "%u", (unsigned)uid);
    return lookup(XOS_OP_GETPWUID, arg, pw, buf, len, errnop);
}

enum nss_status _nss_xos_setpwent(void)
{
    pthread_mutex_lock(&ent_lock);
    ent_index = 0;
    pthread_mutex_unlock(&ent_lock);
    return NSS_STATUS_SUCCESS;
}

enum nss_status _nss_xos_endpwent(void)
{
    return _nss_xos_setpwent();
}

enum nss_status _nss_xos_getpwent_r(struct passwd *pw, char *buf, size_t len, int *errnop)
{
    char arg[24];
    pthread_mutex_lock(&ent_lock);
    snprintf(arg, sizeof(arg), "%d", ent_index);
    enum nss_status st = lookup(XOS_OP_PWENT, arg, pw, buf, len, errnop);
    if (st == NSS_STATUS_SUCCESS)
        ent_index++;
    pthread_mutex_unlock(&ent_lock);
    return st;
}
