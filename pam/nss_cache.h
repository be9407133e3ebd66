/* The NSS cache files the daemon keeps in $XOS_RUN (see nss_cache.c). */
#ifndef XOS_NSS_CACHE_H
#define XOS_NSS_CACHE_H

#include "xos_proto.h"

/* Fill `r` from the cache by name (or, with name NULL, by id); 1 on a hit, 0 otherwise. */
int xos_cache_passwd(const char *name, long uid, struct xos_reply *r);
int xos_cache_group(const char *name, long gid, struct xos_reply *r);

#endif
