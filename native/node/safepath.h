/*
 * Root-side opens of paths a guest can write (a workspace or job directory, a home, /tmp): beneath a
 * directory, never through a symbolic or magic link, never blocking on a FIFO, and only of the kinds
 * the caller names. Shared by xos-init and, through CFFI, by the node daemon (xos/kernel/safepath.py).
 */
#ifndef XOS_SAFEPATH_H
#define XOS_SAFEPATH_H

#include <sys/types.h>

/* Kinds a caller accepts (a bit mask); anything else (a FIFO, socket or device) is refused. */
#define XOS_KIND_REG 1
#define XOS_KIND_DIR 2

/* The error for an object of a kind the caller did not accept. */
#define XOS_EKIND EMEDIUMTYPE

/* Open `rel` beneath the directory `dirfd`; the descriptor, or -errno: ELOOP for a link on the way,
 * EXDEV for a path leaving the directory, XOS_EKIND for a kind not in `kinds`. O_NONBLOCK is used for
 * the open and cleared afterwards; O_CLOEXEC and O_NOFOLLOW are always added. */
int xos_open_beneath(int dirfd, const char *rel, int flags, unsigned int mode, int kinds);

#endif
