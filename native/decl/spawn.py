"""The fork-to-exec path (spawn.c)."""

INCLUDES = """
#include "spawn.h"
"""

TYPES = """
typedef unsigned int gid_t;
struct xos_spawn_args {
    char *const *paths;
    int n_paths;
    char *const *argv;
    char *const *envp;
    const char *cwd;
    int uid;
    int gid;
    int ngroups;
    const gid_t *groups;
    int cgroup_fd;
    const int *cgroup_procs_fds;
    int n_cgroup_procs;
    int ns_pidfd;
    int ns_flags;
    int new_ns_flags;
    int stdin_fd, stdout_fd, stderr_fd;
    int n_rlimits;
    const int *rlimit_res;
    const uint64_t *rlimit_cur;
    const uint64_t *rlimit_max;
    int pdeathsig;
    int setsid;
    int new_keyring;
    const char *key_desc;
    const char *key_data;
    size_t key_len;
};
"""

FUNCTIONS = """
int xos_spawn(const struct xos_spawn_args *, int *, int *, int *);
"""

CUSTOMIZATIONS = ""
SOURCES = ["native/node/spawn.c"]
INCLUDE_DIRS = ["node"]
