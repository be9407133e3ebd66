/*
 * xos-init: PID 1 of a workspace.
 *
 * It holds the workspace's PID, mount and network namespaces open, gives the
 * workspace its own /proc, reaps orphans, and says "ready" on stdout once the
 * mounts are in place so the node never execs into a half-made workspace.
 * It exits on SIGTERM, which takes every process of the namespace with it.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/wait.h>
#include <unistd.h>

int main(void)
{
    sigset_t all;
    sigfillset(&all);
    sigprocmask(SIG_BLOCK, &all, NULL);

    /* Our mounts must not leak back to the node, nor the node's to us. */
    if (mount(NULL, "/", NULL, MS_REC | MS_PRIVATE, NULL) < 0) {
        dprintf(1, "error mount-private %d\n", errno);
        return 1;
    }
    if (mount("proc", "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC, NULL) < 0) {
        dprintf(1, "error mount-proc %d\n", errno);
        return 1;
    }
    if (dprintf(1, "ready %d\n", getpid()) < 0)
        return 1;
    close(0);
    close(1);
    close(2);

    for (;;) {
        siginfo_t si;
        if (sigwaitinfo(&all, &si) < 0)
            continue;
        if (si.si_signo == SIGTERM || si.si_signo == SIGINT)
            return 0;
        if (si.si_signo == SIGCHLD)
            while (waitpid(-1, NULL, WNOHANG | __WALL) > 0)
                ;
    }
}
