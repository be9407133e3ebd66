/* Helpers shared by the NSS databases of libnss_xos. */
#ifndef XOS_NSS_COMMON_H
#define XOS_NSS_COMMON_H

#include <nss.h>
#include <stdlib.h>

#include "xos_proto.h"

/* Ask the daemon; NSS_STATUS_UNAVAIL at once when it cannot answer or when we are the daemon. */
enum nss_status xos_nss_ask(int op, const char *arg, struct xos_reply **reply, int *errnop);

/* Copy a string into the caller's buffer; NULL when it does not fit. */
char *xos_nss_copy(const char *s, char **buf, size_t *left);

#endif
