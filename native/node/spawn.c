/*
 * The fork-to-exec path of xos.
 *
 * Everything between the clone and the exec runs in a child of a threaded
 * Python process, so it may not allocate, take a lock or call a glibc
 * function that consults per-thread state of the parent (setuid() in glibc
 * broadcasts to the parent's threads).  The child therefore uses raw system
 * calls only and reports a failure as (step, errno) over a close-on-exec
 * pipe, the way CPython's _posixsubprocess does.
 *
 * Two shapes:
 *  - no namespace to join: clone3() straight into the target cgroup (v2) and
 *    into any new namespaces requested, then the child steps, then exec;
 *  - joining a workspace: an intermediate child enters the namespaces of the
 *    workspace's init through its pidfd, then clones the final child with
 *    CLONE_PARENT, so the exec'd process is in the workspace's PID namespace
 *    and still a child of the caller, which can wait for its exit status.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <linux/keyctl.h>
#include <linux/close_range.h>
#include <linux/sched.h>
#include <sched.h>
#include <signal.h>
#include <stdint.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>

#include "spawn.h"

#ifndef SYS_clone3
#define SYS_clone3 435
#endif
#ifndef SYS_pidfd_open
#define SYS_pidfd_open 434
#endif
#ifndef SYS_close_range
#define SYS_close_range 436
#endif

struct report {
    int32_t kind; /* 1: failure at step, 2: pid of the final child */
    int32_t step;
    int32_t err;
    int32_t pid;
};

enum { REPORT_FAIL = 1, REPORT_PID = 2 };

static void child_write(int fd, const struct report *r)
{
    const char *p = (const char *)r;
    size_t left = sizeof(*r);
    while (left > 0) {
        long n = syscall(SYS_write, fd, p, left);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            return;
        }
        p += n;
        left -= (size_t)n;
    }
}

static _Noreturn void child_fail(int fd, int step, int err)
{
    struct report r = {REPORT_FAIL, step, err, 0};
    child_write(fd, &r);
    syscall(SYS_exit_group, 127);
    for (;;)
        ;
}

#define CHILD_STACK (64 * 1024)

typedef int (*child_fn)(void *);

#if defined(__x86_64__)
/*
 * clone3() with CLONE_VM | CLONE_VFORK: the child runs `fn(arg)` on its own stack in our
 * address space and we sleep until it execs or exits, as posix_spawn and CPython do with
 * vfork.  No page tables are copied, which for a daemon of some 60 MB is most of a fork's
 * cost.  The child must return here on a stack of its own, hence a few lines of assembly
 * (glibc's clone3 wrapper is not public).
 */
static long clone3_vm(struct clone_args *ca, child_fn fn, void *arg)
{
    long ret;
    register child_fn r12 __asm__("r12") = fn;
    register void *r13 __asm__("r13") = arg;
    __asm__ __volatile__(
        "syscall\n\t"
        "testq %%rax, %%rax\n\t"
        "jnz 1f\n\t"
        "xorl %%ebp, %%ebp\n\t"
        "movq %%r13, %%rdi\n\t"
        "callq *%%r12\n\t"
        "movl %%eax, %%edi\n\t"
        "movl $231, %%eax\n\t" /* exit_group: never return into the parent's frames */
        "syscall\n\t"
        "hlt\n\t"
        "1:\n\t"
        : "=a"(ret)
        : "0"((long)SYS_clone3), "D"(ca), "S"(sizeof(*ca)), "r"(r12), "r"(r13)
        : "rcx", "r11", "memory", "cc");
    return ret;
}
#define XOS_HAVE_VFORK 1
#endif

/* Start fn(arg) in a child; its pid, or -1 with errno. `stack` holds CHILD_STACK bytes. */
static long start_child(uint64_t flags, int cgroup_fd, void *stack, child_fn fn, void *arg)
{
    struct clone_args ca;
    memset(&ca, 0, sizeof(ca));
    ca.flags = flags;
    /* With CLONE_PARENT the kernel takes our own exit signal; clone3 wants 0. */
    ca.exit_signal = (flags & CLONE_PARENT) ? 0 : SIGCHLD;
    if (cgroup_fd >= 0) {
        ca.flags |= CLONE_INTO_CGROUP;
        ca.cgroup = (uint64_t)cgroup_fd;
    }
#ifdef XOS_HAVE_VFORK
    ca.flags |= CLONE_VM | CLONE_VFORK;
    ca.stack = (uint64_t)(uintptr_t)stack;
    ca.stack_size = CHILD_STACK;
    long pid = clone3_vm(&ca, fn, arg);
    if (pid < 0) {
        errno = (int)-pid;
        return -1;
    }
    return pid;
#else
    (void)stack;
    long pid = syscall(SYS_clone3, &ca, sizeof(ca));
    if (pid == 0) {
        fn(arg);
        syscall(SYS_exit_group, 127);
    }
    return pid;
#endif
}

struct child_ctx {
    const struct xos_spawn_args *a;
    int rep;
    char *stack2; /* the final child's stack when an intermediate starts it */
};

/* Signal handlers of the parent must not run in the child. */
static void reset_signals(void)
{
    struct sigaction_k {
        void *handler;
        unsigned long flags;
        void *restorer;
        uint64_t mask;
    } dfl;
    memset(&dfl, 0, sizeof(dfl));
    for (int sig = 1; sig < 65; sig++) {
        if (sig == SIGKILL || sig == SIGSTOP)
            continue;
        syscall(SYS_rt_sigaction, sig, &dfl, NULL, 8);
    }
    uint64_t empty = 0;
    syscall(SYS_rt_sigprocmask, SIG_SETMASK, &empty, NULL, 8);
}

/* The final child: runs in the workspace, becomes the user's program. */
static _Noreturn void final_child(const struct xos_spawn_args *a, int rep)
{
    int fds[3] = {a->stdin_fd, a->stdout_fd, a->stderr_fd};

    for (int i = 0; i < a->n_cgroup_procs; i++) {
        /* "0" moves the writer itself: v1 has no CLONE_INTO_CGROUP. */
        if (syscall(SYS_write, a->cgroup_procs_fds[i], "0", 1) < 0)
            child_fail(rep, XOS_STEP_CGROUP, errno);
    }
    if (a->setsid && syscall(SYS_setsid) < 0)
        child_fail(rep, XOS_STEP_SETSID, errno);

    for (int i = 0; i < 3; i++) {
        if (fds[i] >= 0 && fds[i] < 3 && fds[i] != i) {
            fds[i] = (int)syscall(SYS_fcntl, fds[i], F_DUPFD_CLOEXEC, 3);
            if (fds[i] < 0)
                child_fail(rep, XOS_STEP_STDIO, errno);
        }
    }
    for (int i = 0; i < 3; i++) {
        if (fds[i] < 0)
            continue;
        if (fds[i] == i) {
            if (syscall(SYS_fcntl, i, F_SETFD, 0) < 0)
                child_fail(rep, XOS_STEP_STDIO, errno);
        } else if (syscall(SYS_dup3, fds[i], i, 0) < 0) {
            child_fail(rep, XOS_STEP_STDIO, errno);
        }
    }

    for (int i = 0; i < a->n_rlimits; i++) {
        struct rlimit rl = {a->rlimit_cur[i], a->rlimit_max[i]};
        if (syscall(SYS_prlimit64, 0, a->rlimit_res[i], &rl, NULL) < 0)
            child_fail(rep, XOS_STEP_RLIMIT, errno);
    }

    /* Before setuid: the keyring and key are root's (no user key quota to exhaust); the process
     * possesses its session keyring, so it reads and links there as the user all the same. */
    if (a->new_keyring) {
        long ring = syscall(SYS_keyctl, KEYCTL_JOIN_SESSION_KEYRING, (const char *)0);
        if (ring < 0)
            child_fail(rep, XOS_STEP_KEYRING, errno);
        if (a->key_desc && syscall(SYS_add_key, "user", a->key_desc, a->key_data, a->key_len, ring) < 0)
            child_fail(rep, XOS_STEP_KEYRING, errno);
    }

    if (a->gid >= 0) {
        if (syscall(SYS_setgroups, (size_t)a->ngroups, a->groups) < 0)
            child_fail(rep, XOS_STEP_SETGROUPS, errno);
        if (syscall(SYS_setresgid, a->gid, a->gid, a->gid) < 0)
            child_fail(rep, XOS_STEP_SETGID, errno);
    }
    if (a->uid >= 0 && syscall(SYS_setresuid, a->uid, a->uid, a->uid) < 0)
        child_fail(rep, XOS_STEP_SETUID, errno);

    if (a->cwd && syscall(SYS_chdir, a->cwd) < 0)
        child_fail(rep, XOS_STEP_CHDIR, errno);

    if (a->pdeathsig > 0 &&
        syscall(SYS_prctl, PR_SET_PDEATHSIG, (unsigned long)a->pdeathsig, 0, 0, 0) < 0)
        child_fail(rep, XOS_STEP_PDEATHSIG, errno);

    if (syscall(SYS_close_range, 3U, ~0U, CLOSE_RANGE_CLOEXEC) < 0)
        child_fail(rep, XOS_STEP_CLOSE_FDS, errno);

    reset_signals();

    int err = ENOENT;
    for (int i = 0; i < a->n_paths; i++) {
        syscall(SYS_execve, a->paths[i], a->argv, a->envp);
        if (errno != ENOENT && errno != ENOTDIR)
            err = errno;
    }
    child_fail(rep, XOS_STEP_EXEC, err);
}

/* The intermediate child: enters the workspace, clones the final child. */
static int final_entry(void *p)
{
    struct child_ctx *c = p;
    final_child(c->a, c->rep);
}

static _Noreturn void intermediate(struct child_ctx *c)
{
    const struct xos_spawn_args *a = c->a;
    int rep = c->rep;
    if (syscall(SYS_setns, a->ns_pidfd, a->ns_flags) < 0)
        child_fail(rep, XOS_STEP_SETNS, errno);
    long pid = start_child(CLONE_PARENT, a->cgroup_fd, c->stack2, final_entry, c);
    if (pid < 0)
        child_fail(rep, XOS_STEP_CLONE, errno);
    struct report r = {REPORT_PID, 0, 0, (int32_t)pid};
    child_write(rep, &r);
    syscall(SYS_exit_group, 0);
    for (;;)
        ;
}

static int intermediate_entry(void *p)
{
    intermediate(p);
}

static int read_reports(int fd, int *pid, int *step, int *err)
{
    struct report r;
    size_t got = 0;
    for (;;) {
        ssize_t n = read(fd, (char *)&r + got, sizeof(r) - got);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            return -errno;
        }
        if (n == 0)
            return 0;
        got += (size_t)n;
        if (got < sizeof(r))
            continue;
        got = 0;
        if (r.kind == REPORT_PID)
            *pid = r.pid;
        else if (r.kind == REPORT_FAIL && *step == 0) {
            *step = r.step;
            *err = r.err;
        }
    }
}

int xos_spawn(const struct xos_spawn_args *a, int *out_pid, int *out_step, int *out_err)
{
    int pipefd[2];
    sigset_t all, old;
    int pid = -1, step = 0, err = 0;

    *out_pid = -1;
    *out_step = 0;
    *out_err = 0;
    if (pipe2(pipefd, O_CLOEXEC) < 0) {
        *out_step = XOS_STEP_PIPE;
        *out_err = errno;
        return -1;
    }

    char *stacks = mmap(NULL, 2 * CHILD_STACK, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_STACK,
                        -1, 0);
    if (stacks == MAP_FAILED) {
        *out_step = XOS_STEP_CLONE;
        *out_err = errno;
        close(pipefd[0]);
        close(pipefd[1]);
        return -1;
    }
    struct child_ctx ctx = {a, pipefd[1], stacks + CHILD_STACK};

    sigfillset(&all);
    pthread_sigmask(SIG_BLOCK, &all, &old);
    int joining = a->ns_pidfd >= 0;
    long first = joining ? start_child(0, -1, stacks, intermediate_entry, &ctx)
                         : start_child((uint64_t)a->new_ns_flags, a->cgroup_fd, stacks, final_entry, &ctx);
    int clone_errno = errno;
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    close(pipefd[1]);

    if (first < 0) {
        munmap(stacks, 2 * CHILD_STACK);
        close(pipefd[0]);
        *out_step = XOS_STEP_CLONE;
        *out_err = clone_errno;
        return -1;
    }

    int rc = read_reports(pipefd[0], &pid, &step, &err);
    close(pipefd[0]);
    /* Every child that used a stack has exec'd or exited: the vfork wait saw to that. With a
     * plain fork (no XOS_HAVE_VFORK) the stacks were never used. */
    munmap(stacks, 2 * CHILD_STACK);
    if (joining) {
        int status;
        while (waitpid((pid_t)first, &status, __WALL) < 0 && errno == EINTR)
            ;
    } else {
        pid = (int)first;
    }
    if (rc < 0 && step == 0) {
        step = XOS_STEP_PIPE;
        err = -rc;
    }
    if (step != 0) {
        if (pid > 0) {
            int status;
            while (waitpid((pid_t)pid, &status, __WALL) < 0 && errno == EINTR)
                ;
        }
        *out_step = step;
        *out_err = err;
        return -1;
    }
    if (pid <= 0) {
        *out_step = XOS_STEP_CLONE;
        *out_err = ECHILD;
        return -1;
    }
    *out_pid = pid;
    return 0;
}
