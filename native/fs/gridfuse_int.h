/* What the parts of the grid file system's FUSE loop share, and nothing else sees: the node table's type and
 * lock, and the few functions one part calls in another. Built with -fvisibility=hidden: none of these
 * leaves the extension. */
#ifndef XOS_GRIDFUSE_INT_H
#define XOS_GRIDFUSE_INT_H

#define _GNU_SOURCE
#include "gridfuse.h"

#include <pthread.h>
#include <stdint.h>
#include <sys/stat.h>

#define READAHEAD_REQUESTS 4 /* whole requests the kernel reads ahead (see raise_readahead in gridfuse.c) */

/* A name this mount saw, and what it knows of it (fusetable.c). */
struct node {
    uint64_t id, parent;
    char *name; /* NULL once the name is gone: the kernel may still hold the node */
    uint64_t nlookup;
    struct xf_attr attr;
    double attr_until, list_until; /* monotonic seconds; 0: not known */
    int writers;                   /* open for writing here: only Python knows its size */
    unsigned listed;               /* the listing generation that last saw it */
    uint64_t version;              /* directory: the MRC's listing version its listing was taken at */
    double lease_until;            /* directory: its names are this mount's until then (monotonic) */
    uint64_t lease_ino, ino_next, ino_end; /* the MRC's number of it; inode numbers for files made here */
    uint32_t lease_gid;            /* the group of files made here (unless the directory is setgid) */
    int pending;                   /* made here under a lease, not yet at the MRC */
    int taken;                     /* ... and taken from the queue to be sent */
    uint64_t changed;              /* the count of changes made here when its attributes last changed here */
    struct node *next_id, *next_name;
    struct node *next_kid, **pprev_kid; /* named nodes, chained by their parent's id: a directory's names */
};

extern pthread_mutex_t lock;
extern struct fuse_session *se_of_loop;
extern struct node root;
extern double default_ttl;
extern unsigned io_size;

double now(void);
struct node *find_id(uint64_t id);
struct node *find_name(uint64_t parent, const char *name);
struct node *record(uint64_t parent, const char *name, const struct xf_attr *a, double ttl, int lookup);
void fill_stat(const struct xf_attr *a, struct stat *st, unsigned blksize);
void changed_here(struct node *n); /* its attributes changed here: to be asked again (under `lock`) */
int overtaken(const struct node *n); /* changed here since this thread's request began (under `lock`) */
void unhash_name(struct node *n);
int has_names(uint64_t dir); /* whether the table holds a name in directory `dir` (under `lock`) */
void write_around(struct fuse_file_info *fi);
int table_init(void);
void free_node(struct node *n);
int create_here(fuse_req_t req, fuse_ino_t parent, const char *name, mode_t mode, struct fuse_file_info *fi);
void drop_local(uint64_t fh);
int has_written(uint64_t fh);
int read_direct(fuse_req_t req, uint64_t fh, size_t size, off_t off);
void close_idle(void);
void fill_entry(struct fuse_entry_param *e, uint64_t id, const struct xf_attr *a, double ttl);

#endif
