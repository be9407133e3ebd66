/*
 * What safepath.h promises. openat2(2) with RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS |
 * RESOLVE_NO_MAGICLINKS where the kernel has it (5.6+); elsewhere a walk of one component at a time,
 * each opened O_NOFOLLOW relative to the one before, with ".." refused.
 */
#define _GNU_SOURCE
#include "safepath.h"

#include <errno.h>
#include <fcntl.h>
#include <linux/openat2.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

#ifndef SYS_openat2
#define SYS_openat2 437
#endif

/* The fallback walk: every directory on the way O_NOFOLLOW, the last component with `flags`. */
static int walk(int dirfd, const char *rel, int flags, unsigned int mode)
{
    char buf[4096];
    size_t len = strlen(rel);
    if (len == 0 || len >= sizeof(buf) || rel[0] == '/') {
        errno = rel[0] == '/' ? EXDEV : ENOENT;
        return -1;
    }
    memcpy(buf, rel, len + 1);
    int at = dirfd, owned = -1;
    char *name = buf;
    for (;;) {
        char *slash = strchr(name, '/');
        if (slash)
            *slash = '\0';
        if (strcmp(name, "..") == 0) {
            if (owned >= 0)
                close(owned);
            errno = EXDEV;
            return -1;
        }
        int fd;
        if (slash == NULL || slash[1] == '\0')
            fd = openat(at, *name ? name : ".", flags, mode);
        else
            fd = *name && strcmp(name, ".") ? openat(at, name, O_PATH | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC)
                                            : fcntl(at, F_DUPFD_CLOEXEC, 0);
        int saved = errno;
        if (owned >= 0)
            close(owned);
        if (fd < 0) {
            errno = saved;
            return -1;
        }
        if (slash == NULL || slash[1] == '\0')
            return fd;
        at = owned = fd;
        name = slash + 1;
    }
}

int xos_open_beneath(int dirfd, const char *rel, int flags, unsigned int mode, int kinds)
{
    int all = flags | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC;
    struct open_how how = {
        .flags = (unsigned long long)all,
        .mode = (flags & O_CREAT) ? mode : 0,
        .resolve = RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS,
    };
    int fd = (int)syscall(SYS_openat2, dirfd, rel, &how, sizeof(how));
    if (fd < 0 && errno == ENOSYS)
        fd = walk(dirfd, rel, all, mode);
    if (fd < 0)
        return -errno;
    struct stat st;
    if (fstat(fd, &st) < 0) {
        int e = errno;
        close(fd);
        return -e;
    }
    int kind = S_ISREG(st.st_mode) ? XOS_KIND_REG : S_ISDIR(st.st_mode) ? XOS_KIND_DIR : 0;
    if (!(kind & kinds)) {
        close(fd);
        return -XOS_EKIND;
    }
    if (!(flags & O_NONBLOCK) && fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) & ~O_NONBLOCK) < 0) {
        int e = errno;
        close(fd);
        return -e;
    }
    return fd;
}
