/*
 * The client side of the NSS cache: the daemon keeps $XOS_RUN/nss.passwd and nss.group
 * (root-owned, lines like passwd(5) plus a lease expiry) and holds a shared lock on them while
 * it lives. A hit answers without a socket round trip; a miss, an expired line or a file
 * nobody holds sends the lookup to the daemon, which stays the authority.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "nss_cache.h"

#define MAX_CACHE (4 << 20)

/* The file's text, NUL-terminated, or NULL when it cannot be trusted or the daemon is gone. */
static char *load(const char *name)
{
    char path[300], *text = NULL;
    const char *run = secure_getenv("XOS_RUN");
    struct stat st;

    snprintf(path, sizeof(path), "%s/%s", run && *run ? run : XOS_DEFAULT_RUN, name);
    int fd = open(path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
    if (fd < 0)
        return NULL;
    if (fstat(fd, &st) < 0 || st.st_uid != 0 || (st.st_mode & 022) || !S_ISREG(st.st_mode) || st.st_size > MAX_CACHE)
        goto out;
    if (flock(fd, LOCK_EX | LOCK_NB) == 0) /* nobody holds it: the daemon is gone, ask the socket */
        goto out;
    text = malloc((size_t)st.st_size + 1);
    if (text == NULL)
        goto out;
    ssize_t got = pread(fd, text, (size_t)st.st_size, 0);
    if (got < 0) {
        free(text);
        text = NULL;
        goto out;
    }
    text[got] = '\0';
out:
    close(fd);
    return text;
}

/* Append a NUL-terminated copy of s as the reply's next field; -1 when it does not fit. */
static int push(struct xos_reply *r, size_t *pos, const char *s)
{
    size_t n = strlen(s);
    if (r->nfields >= XOS_MAX_FIELDS || *pos + n + 1 > sizeof(r->buf))
        return -1;
    memcpy(r->buf + *pos, s, n + 1);
    r->field[r->nfields] = r->buf + *pos;
    r->len[r->nfields++] = n;
    *pos += n + 1;
    return 0;
}

/* Split `line` at ':' into at most n fields; the count. */
static int split(char *line, char **f, int n)
{
    int k = 0;
    f[k++] = line;
    for (char *p = line; *p && k < n; p++)
        if (*p == ':') {
            *p = '\0';
            f[k++] = p + 1;
        }
    return k;
}

int xos_cache_passwd(const char *name, long uid, struct xos_reply *r)
{
    char *text = load("nss.passwd"), *save = NULL;
    int hit = 0;
    if (text == NULL)
        return 0;
    time_t now = time(NULL);
    for (char *line = strtok_r(text, "\n", &save); line; line = strtok_r(NULL, "\n", &save)) {
        char *f[8];
        if (split(line, f, 8) != 8)
            continue;
        if (name ? strcmp(f[0], name) != 0 : strtol(f[2], NULL, 10) != uid)
            continue;
        if (strtoll(f[7], NULL, 10) <= (long long)now)
            break; /* expired here: the daemon decides */
        size_t pos = 0;
        r->nfields = 0;
        for (int i = 0; i < 7; i++)
            if (i != 1 && push(r, &pos, f[i]) < 0) /* field 1 is the "x" */
                goto out;
        r->status = XOS_OK;
        hit = 1;
        break;
    }
out:
    free(text);
    return hit;
}

int xos_cache_group(const char *name, long gid, struct xos_reply *r)
{
    char *text = load("nss.group"), *save = NULL;
    int hit = 0;
    if (text == NULL)
        return 0;
    for (char *line = strtok_r(text, "\n", &save); line; line = strtok_r(NULL, "\n", &save)) {
        char *f[4];
        if (split(line, f, 4) != 4)
            continue;
        if (name ? strcmp(f[0], name) != 0 : strtol(f[2], NULL, 10) != gid)
            continue;
        size_t pos = 0;
        r->nfields = 0;
        char *members = f[3], *msave = NULL;
        if (push(r, &pos, f[0]) < 0 || push(r, &pos, f[2]) < 0)
            goto out;
        for (char *m = strtok_r(members, ",", &msave); m; m = strtok_r(NULL, ",", &msave))
            if (push(r, &pos, m) < 0)
                goto out;
        r->status = XOS_OK;
        hit = 1;
        break;
    }
out:
    free(text);
    return hit;
}
