/* group database of libnss_xos: a group per VO, its members the VO's mapped accounts. */
#define _GNU_SOURCE
#include <errno.h>
#include <grp.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

#include "nss_common.h"

static pthread_mutex_t ent_lock = PTHREAD_MUTEX_INITIALIZER;
static int ent_index;

static enum nss_status fill(struct xos_reply *r, struct group *gr, char *buf, size_t len, int *errnop)
{
    char *end;
    if (r->nfields < 2) {
        *errnop = ENOENT;
        return NSS_STATUS_UNAVAIL;
    }
    unsigned long gid = strtoul(r->field[1], &end, 10);
    if (*end) {
        *errnop = ENOENT;
        return NSS_STATUS_UNAVAIL;
    }
    gr->gr_gid = (gid_t)gid;
    int members = r->nfields - 2;
    /* The member array comes first in the buffer, pointer-aligned. */
    size_t pad = (sizeof(char *) - ((uintptr_t)buf % sizeof(char *))) % sizeof(char *);
    size_t need = pad + (size_t)(members + 1) * sizeof(char *);
    if (need > len)
        goto range;
    char **mem = (char **)(buf + pad);
    buf += need;
    len -= need;
    if (!(gr->gr_name = xos_nss_copy(r->field[0], &buf, &len)) || !(gr->gr_passwd = xos_nss_copy("x", &buf, &len)))
        goto range;
    for (int i = 0; i < members; i++)
        if (!(mem[i] = xos_nss_copy(r->field[i + 2], &buf, &len)))
            goto range;
    mem[members] = NULL;
    gr->gr_mem = mem;
    return NSS_STATUS_SUCCESS;
range:
    *errnop = ERANGE;
    return NSS_STATUS_TRYAGAIN;
}

static enum nss_status lookup(int op, const char *arg, struct group *gr, char *buf, size_t len, int *errnop)
{
    struct xos_reply *r;
    enum nss_status st = xos_nss_ask(op, arg, &r, errnop);
    if (st == NSS_STATUS_SUCCESS)
        st = fill(r, gr, buf, len, errnop);
    free(r);
    return st;
}

enum nss_status _nss_xos_getgrnam_r(const char *name, struct group *gr, char *buf, size_t len, int *errnop)
{
    if (!name || !gr || !buf) {
        *errnop = EINVAL;
        return NSS_STATUS_UNAVAIL;
    }
    return lookup(XOS_OP_GETGRNAM, name, gr, buf, len, errnop);
}

enum nss_status _nss_xos_getgrgid_r(gid_t gid, struct group *gr, char *buf, size_t len, int *errnop)
{
    char arg[24];
    snprintf(arg, sizeof(arg), "%u", (unsigned)gid);
    return lookup(XOS_OP_GETGRGID, arg, gr, buf, len, errnop);
}

enum nss_status _nss_xos_setgrent(void)
{
    pthread_mutex_lock(&ent_lock);
    ent_index = 0;
    pthread_mutex_unlock(&ent_lock);
    return NSS_STATUS_SUCCESS;
}

enum nss_status _nss_xos_endgrent(void)
{
    return _nss_xos_setgrent();
}

enum nss_status _nss_xos_getgrent_r(struct group *gr, char *buf, size_t len, int *errnop)
{
    char arg[24];
    pthread_mutex_lock(&ent_lock);
    snprintf(arg, sizeof(arg), "%d", ent_index);
    enum nss_status st = lookup(XOS_OP_GRENT, arg, gr, buf, len, errnop);
    if (st == NSS_STATUS_SUCCESS)
        ent_index++;
    pthread_mutex_unlock(&ent_lock);
    return st;
}
