"""Namespaces and mounts: setns(2), unshare(2), mount(2), umount2(2)."""

INCLUDES = """
#include <sched.h>
#include <sys/mount.h>
"""

TYPES = """
static const int CLONE_NEWNS;
static const int CLONE_NEWPID;
static const int CLONE_NEWNET;
static const int CLONE_NEWUTS;
static const int CLONE_NEWIPC;
static const int CLONE_NEWUSER;
static const int CLONE_NEWCGROUP;
static const unsigned long MS_RDONLY;
static const unsigned long MS_NOSUID;
static const unsigned long MS_NODEV;
static const unsigned long MS_NOEXEC;
static const unsigned long MS_BIND;
static const unsigned long MS_REC;
static const unsigned long MS_PRIVATE;
static const unsigned long MS_SLAVE;
static const unsigned long MS_REMOUNT;
static const int MNT_DETACH;
static const int MNT_FORCE;
"""

FUNCTIONS = """
int setns(int, int);
int unshare(int);
int mount(const char *, const char *, const char *, unsigned long, const void *);
int umount2(const char *, int);
"""

CUSTOMIZATIONS = ""
SOURCES: list[str] = []
