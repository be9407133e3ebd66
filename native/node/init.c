/*
 * xos-init: PID 1 of a workspace.
 *
 * It holds the workspace's PID, mount and network namespaces open, gives the
 * workspace its own /proc, binds the workspace directory at XOS_WORK (the
 * same path on every node, so open files keep their paths across a
 * migration), reaps orphans, and says "ready" on stdout once the mounts are
 * in place so the node never execs into a half-made workspace. It exits on
 * SIGTERM, which takes every process of the namespace with it.
 *
 * With `-- CMD ARGS` it also starts the workspace's main program as its own
 * child, so the whole workload is one process tree under this init: the tree
 * CRIU checkpoints. Options: --work DIR (bind at XOS_WORK), --uid, --gid,
 * --hold (say "mounted" once the mounts are in place and wait for a "g" on stdin before starting
 * the main program), --in FILE, --out FILE, --err FILE (the main program's stdin, stdout and
 * stderr; stderr goes with stdout unless given; output appended; relative to
 * XOS_WORK or absolute). They are opened as the workspace's user, so a path
 * outside the workspace is reached only as far as that user may. A failure to
 * start is reported as "error STAGE ERRNO" (stdin, stdout, stderr, setup,
 * exec). The main program's exit status is written to XOS_WORK/.main.status.
 *
 * With --uid, init itself becomes the workspace's user once its mounts are made
 * and the main program started: nothing it does afterwards (reaping, writing the
 * status) needs root, so no task of the workspace, and of its checkpoint image,
 * holds root's identity or a capability. The status file lies in a directory the
 * user writes, so it is opened beneath it without following links and without
 * blocking (safepath.h), and only a regular file is written. SIGTERM and SIGINT
 * end init only when they come from outside its PID namespace (the node).
 *
 * Nothing of the host's namespace files (nsfs mounts) or FUSE mounts is kept
 * in the workspace's mount table: they are not the workspace's (a FUSE mount
 * serves its owner's credential to whoever reaches it), and CRIU cannot
 * restore them: one dead FUSE mount on the host made every restore fail.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/wait.h>
#include <unistd.h>

#include "safepath.h"

#define XOS_WORK "/run/xos-work"

/* Whether a mount's file-system type is one the workspace must not keep. */
static int host_only(const char *fstype)
{
    return strncmp(fstype, "nsfs ", 5) == 0 || strncmp(fstype, "fuse ", 5) == 0 ||
           strncmp(fstype, "fuse.", 5) == 0 || strncmp(fstype, "fuseblk ", 8) == 0;
}

/* Unmount every nsfs and FUSE mount (deepest first: a later line may sit on an earlier one). */
static void drop_host_only(void)
{
    char *points[256];
    int n = 0;
    char line[4096];
    FILE *f = fopen("/proc/self/mountinfo", "re");
    if (f == NULL)
        return;
    while (n < 256 && fgets(line, sizeof(line), f)) {
        /* id parent major:minor root mountpoint opts [optional...] - fstype source superopts */
        char *dash = strstr(line, " - ");
        if (dash == NULL || !host_only(dash + 3))
            continue;
        char *p = line;
        for (int field = 0; field < 4 && p; field++)
            p = strchr(p, ' ') ? strchr(p, ' ') + 1 : NULL;
        if (p == NULL)
            continue;
        char *end = strchr(p, ' ');
        if (end)
            *end = '\0';
        points[n++] = strdup(p);
    }
    fclose(f);
    while (n-- > 0) {
        umount2(points[n], MNT_DETACH);
        free(points[n]);
    }
}

static void write_status(int status)
{
    char buf[64];
    int len = WIFEXITED(status) ? snprintf(buf, sizeof(buf), "exit %d\n", WEXITSTATUS(status))
                                : snprintf(buf, sizeof(buf), "signal %d\n", WTERMSIG(status));
    int dir = open(XOS_WORK, O_PATH | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
    if (dir < 0)
        return;
    int fd = xos_open_beneath(dir, ".main.status", O_WRONLY | O_CREAT | O_TRUNC, 0644, XOS_KIND_REG);
    close(dir);
    if (fd >= 0) {
        if (write(fd, buf, (size_t)len) < 0) {
            /* nothing more to do: the status is a courtesy to readers of the directory */
        }
        close(fd);
    }
}

/* Where starting the main program failed, for the "error STAGE ERRNO" line. */
static const char *const STAGES[] = {"exec", "stdin", "stdout", "stderr", "setup"};
enum { S_EXEC, S_STDIN, S_STDOUT, S_STDERR, S_SETUP };

/* Open `path` as the workspace's user onto `fd`; -1 on failure. */
static int open_onto(const char *path, int flags, int fd)
{
    int o = open(path, flags | O_CLOEXEC, 0600);
    if (o < 0)
        return -1;
    if (o == fd)
        return fcntl(o, F_SETFD, 0);
    if (dup3(o, fd, 0) < 0 || close(o) < 0)
        return -1;
    return 0;
}

/* The main program: a child of init, as the workspace's user. Never returns. */
static void main_child(char **argv, int uid, int gid, const char *in, const char *out, const char *err,
                       int report)
{
    int stage = S_SETUP;
    sigset_t none;
    sigemptyset(&none);
    sigprocmask(SIG_SETMASK, &none, NULL);
    setsid();
    if (chdir(XOS_WORK) < 0)
        goto fail;
    if (gid >= 0) {
        gid_t g = (gid_t)gid;
        if (setgroups(1, &g) < 0 || setresgid(g, g, g) < 0)
            goto fail;
    }
    if (uid >= 0 && setresuid((uid_t)uid, (uid_t)uid, (uid_t)uid) < 0)
        goto fail;
    stage = S_STDIN;
    if (open_onto(in ? in : "/dev/null", O_RDONLY, 0) < 0)
        goto fail;
    stage = S_STDOUT;
    if (open_onto(out ? out : "/dev/null", O_WRONLY | O_CREAT | O_APPEND, 1) < 0)
        goto fail;
    stage = S_STDERR;
    if (err ? open_onto(err, O_WRONLY | O_CREAT | O_APPEND, 2) < 0 : dup2(1, 2) < 0)
        goto fail;
    stage = S_EXEC;
    execvp(argv[0], argv);
fail:;
    int why[2] = {stage, errno};
    if (write(report, why, sizeof(why)) < 0) {
        /* the parent sees the pipe close without a word and reports an unknown failure */
    }
    _exit(127);
}

int main(int argc, char **argv)
{
    const char *work = NULL, *in = NULL, *out = NULL, *err = NULL;
    int hold = 0;
    int uid = -1, gid = -1, cmd = argc;
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--") == 0) {
            cmd = i + 1;
            break;
        }
        if (strcmp(argv[i], "--hold") == 0) {
            hold = 1;
            continue;
        }
        if (i + 1 >= argc) {
            dprintf(1, "error usage %s\n", argv[i]);
            return 2;
        }
        if (strcmp(argv[i], "--work") == 0)
            work = argv[++i];
        else if (strcmp(argv[i], "--uid") == 0)
            uid = atoi(argv[++i]);
        else if (strcmp(argv[i], "--gid") == 0)
            gid = atoi(argv[++i]);
        else if (strcmp(argv[i], "--in") == 0)
            in = argv[++i];
        else if (strcmp(argv[i], "--out") == 0)
            out = argv[++i];
        else if (strcmp(argv[i], "--err") == 0)
            err = argv[++i];
        else {
            dprintf(1, "error usage %s\n", argv[i]);
            return 2;
        }
    }

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
    drop_host_only();
    if (work && mount(work, XOS_WORK, NULL, MS_BIND, NULL) < 0) {
        dprintf(1, "error mount-work %d\n", errno);
        return 1;
    }

    /* --hold: the node adds mounts of its own to this namespace (a grid file system) before the
     * main program may see it; it writes a byte on our stdin when they are there. */
    if (hold) {
        char go = 0;
        if (dprintf(1, "mounted\n") < 0 || read(0, &go, 1) != 1 || go != 'g') {
            dprintf(1, "error hold %d\n", errno);
            return 1;
        }
    }

    pid_t main_pid = 0;
    if (cmd < argc) {
        int rep[2];
        if (pipe2(rep, O_CLOEXEC) < 0) {
            dprintf(1, "error pipe %d\n", errno);
            return 1;
        }
        main_pid = fork();
        if (main_pid < 0) {
            dprintf(1, "error fork %d\n", errno);
            return 1;
        }
        if (main_pid == 0) {
            close(rep[0]);
            main_child(argv + cmd, uid, gid, in, out, err, rep[1]);
        }
        close(rep[1]);
        int why[2] = {S_EXEC, 0};
        ssize_t got = read(rep[0], why, sizeof(why));
        close(rep[0]);
        if (got > 0) {
            waitpid(main_pid, NULL, 0);
            dprintf(1, "error %s %d\n", STAGES[why[0] >= 0 && why[0] <= S_SETUP ? why[0] : S_EXEC], why[1]);
            return 1;
        }
    }
    /* Root's work is done: the rest runs as the workspace's user (see the top). */
    if (gid >= 0) {
        gid_t g = (gid_t)gid;
        if (setgroups(1, &g) < 0 || setresgid(g, g, g) < 0) {
            dprintf(1, "error drop %d\n", errno);
            return 1;
        }
    }
    if (uid >= 0 && setresuid((uid_t)uid, (uid_t)uid, (uid_t)uid) < 0) {
        dprintf(1, "error drop %d\n", errno);
        return 1;
    }
    if (dprintf(1, "ready %d %d\n", getpid(), (int)main_pid) < 0)
        return 1;
    close(0);
    close(1);
    close(2);

    for (;;) {
        siginfo_t si;
        if (sigwaitinfo(&all, &si) < 0)
            continue;
        /* From outside the namespace the sender has no pid here: si_pid is 0. */
        if ((si.si_signo == SIGTERM || si.si_signo == SIGINT) && si.si_pid == 0)
            return 0;
        if (si.si_signo == SIGCHLD) {
            int status;
            pid_t p;
            while ((p = waitpid(-1, &status, WNOHANG | __WALL)) > 0)
                if (p == main_pid)
                    write_status(status);
        }
    }
}
