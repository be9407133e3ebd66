"""Process file descriptors: pidfd_open(2), pidfd_send_signal(2)."""

INCLUDES = """
#include <errno.h>
#include <signal.h>
#include <sys/syscall.h>
#include <unistd.h>
#ifndef SYS_pidfd_open
#define SYS_pidfd_open 434
#endif
#ifndef SYS_pidfd_send_signal
#define SYS_pidfd_send_signal 424
#endif
"""

TYPES = ""

FUNCTIONS = """
int xos_pidfd_open(int, unsigned int);
int xos_pidfd_send_signal(int, int, unsigned int);
"""

CUSTOMIZATIONS = """
int xos_pidfd_open(int pid, unsigned int flags)
{
    return (int)syscall(SYS_pidfd_open, pid, flags);
}

int xos_pidfd_send_signal(int pidfd, int sig, unsigned int flags)
{
    return (int)syscall(SYS_pidfd_send_signal, pidfd, sig, NULL, flags);
}
"""
SOURCES: list[str] = []
