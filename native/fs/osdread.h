/* The OSD's object reads and writes on native threads (osdread.c, osdgrant.c, osdwrite.c): what Python sees of them. */
#ifndef XOS_OSDREAD_H
#define XOS_OSDREAD_H

#include <stddef.h>
#include <stdint.h>

/* cdef begin: what follows, to the end marker, is also native/decl/osd.py's declaration for CFFI */

/* TLS 1.3 on every connection from now on, with this host's certificate chain and key, hosts' certificates
 * checked against the CA in `ca` (users show none). 0, or -errno. */
int xo_tls(const char *cert, const char *key, const char *ca);
/* Every handshake from now on also checks the CA's revocation list in `path`. 0, or -errno. */
int xo_tls_crl(const char *path);
/* Serve the connections accepted on `listen_fd` under object directory `root` (DIR/objects); `direct`:
 * large reads may go around the page cache. 0, or -errno. */
int xo_start(int listen_fd, const char *root, int direct);
/* Stop accepting and end every connection the native threads hold. */
void xo_stop(void);
/* The lock one object's bytes and checksums change under, shared with Python's writes. */
void xo_lock(const char *fid, uint64_t objno);
void xo_unlock(const char *fid, uint64_t objno);
/* Forget every cached grant (a key change, a revocation, a test). */
void xo_forget(void);
/* Forget the grants cached for file `fid` (its truncate epoch or replica list raised). */
void xo_forget_file(const char *fid);
/* Wait until no native write of file `fid` is in flight. */
void xo_quiet(const char *fid);
/* The ids of files read natively since the last call, NUL-terminated one after the other; their count. */
int xo_reads(char *out, size_t size);
/* Reads being served now. */
int xo_busy(void);
/* Reads answered natively since the start (for tests and the stats). */
uint64_t xo_served(void);
/* Writes done natively since the start; the bytes they wrote; those synced before their answer. */
uint64_t xo_writes(void);
uint64_t xo_written(void);
uint64_t xo_synced(void);
/* Files synced natively at a client's asking since the start. */
uint64_t xo_fsyncs(void);
/* Bytes of write bodies the native threads hold now (declared; bounded). */
uint64_t xo_body_bytes(void);

/* cdef end */

#endif
