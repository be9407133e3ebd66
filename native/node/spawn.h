/* Wire between Python and the fork-to-exec path (see spawn.c). */
#ifndef XOS_SPAWN_H
#define XOS_SPAWN_H

#include <stdint.h>
#include <sys/types.h>

/* Steps of the child; a failure names one. Keep in sync with xos/kernel/spawn.py. */
#define XOS_STEP_PIPE 1
#define XOS_STEP_CLONE 2
#define XOS_STEP_CGROUP 3
#define XOS_STEP_SETNS 4
#define XOS_STEP_SETSID 5
#define XOS_STEP_STDIO 6
#define XOS_STEP_RLIMIT 7
#define XOS_STEP_SETGROUPS 8
#define XOS_STEP_SETGID 9
#define XOS_STEP_SETUID 10
#define XOS_STEP_CHDIR 11
#define XOS_STEP_PDEATHSIG 12
#define XOS_STEP_CLOSE_FDS 13
#define XOS_STEP_EXEC 14
#define XOS_STEP_KEYRING 15

struct xos_spawn_args {
    char *const *paths; /* candidates for the program, tried in order */
    int n_paths;
    char *const *argv;
    char *const *envp;
    const char *cwd; /* NULL: keep */
    int uid;         /* -1: keep */
    int gid;         /* -1: keep (then groups are kept too) */
    int ngroups;
    const gid_t *groups;
    int cgroup_fd;              /* v2 cgroup directory for CLONE_INTO_CGROUP, or -1 */
    const int *cgroup_procs_fds; /* v1 cgroup.procs files the child writes itself into */
    int n_cgroup_procs;
    int ns_pidfd; /* pidfd whose namespaces to enter, or -1 */
    int ns_flags; /* CLONE_NEW* set for setns() */
    int new_ns_flags; /* CLONE_NEW* set for new namespaces (only without ns_pidfd) */
    int stdin_fd, stdout_fd, stderr_fd; /* -1: inherit */
    int n_rlimits;
    const int *rlimit_res;
    const uint64_t *rlimit_cur;
    const uint64_t *rlimit_max;
    int pdeathsig; /* 0: none */
    int setsid;
    int new_keyring;      /* join a fresh anonymous session keyring (never the daemon's) */
    const char *key_desc; /* with new_keyring: a "user" key put into it, or NULL */
    const char *key_data;
    size_t key_len;
};

int xos_spawn(const struct xos_spawn_args *a, int *out_pid, int *out_step, int *out_err);

#endif
