/* FUSE over io_uring (fuseuring.c) for the grid file system's loop: what gridfuse.c sees of it. */
#ifndef XOS_FUSEURING_H
#define XOS_FUSEURING_H

#include "gridfuse.h"

#include <sys/uio.h>

#define XU_INIT_FLAGS2 (1u << 9) /* FUSE_OVER_IO_URING (1 << 41) in INIT's flags2 */

/* Whether the kernel offers FUSE over io_uring in its INIT request (flags2 of fuse_init_in). */
int xu_offered(uint32_t init_flags, uint32_t init_flags2);
/* Rings, buffers and threads for every CPU's queue, before the INIT reply asks for them: 0, or -errno and none. */
int xu_prepare(struct fuse_session *se, int fd, size_t max_payload);
/* The INIT reply is written: the entries register and serve from now on. */
void xu_start(void);
/* Unmounted (or stopping): the entries' threads end, the rings go. */
void xu_stop(void);
/* A reply to a request that came through a ring goes back through it: 1, or 0 (not one of them). */
int xu_reply(const struct iovec *iov, int count);

#endif
