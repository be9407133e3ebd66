/*
 * pam_xos: log in with a VO credential. A thin client of the node daemon's identity socket:
 * no cryptography, no JSON, no network; the daemon decides. Daemon away: fail closed within
 * XOS_TIMEOUT_MS (PAM_AUTHINFO_UNAVAIL), never hang, never crash the host program.
 *
 * Options: socket=PATH, ignore_unknown_user (PAM_IGNORE for names that are not grid accounts,
 * as SSSD's module has it), debug.
 */
#define _GNU_SOURCE
#include <linux/keyctl.h>
#include <security/pam_ext.h>
#include <security/pam_modules.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <sys/un.h>
#include <syslog.h>
#include <time.h>
#include <unistd.h>

#include "xos_proto.h"

#define CONN_KEY "xos:connection"
#define AUTH_KEY "xos:authenticated"
/* `account` right after a successful `auth` in the same handle (sshd, su, login do exactly this)
 * takes the daemon's answer to `auth`, which checked membership, expiry and revocation a moment
 * ago, instead of asking again: one round trip less per login. */
#define AUTH_FRESH_MS 1000

struct authenticated {
    long at_ms;
    pid_t pid;
    char user[256];
};

static long now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1000L + ts.tv_nsec / 1000000L;
}

static void drop_auth(pam_handle_t *pamh, void *data, int status)
{
    (void)pamh, (void)status;
    free(data);
}

static void remember_auth(pam_handle_t *pamh, const char *user)
{
    struct authenticated *a = malloc(sizeof(*a));
    if (a == NULL)
        return;
    a->at_ms = now_ms();
    a->pid = getpid();
    snprintf(a->user, sizeof(a->user), "%s", user);
    if (pam_set_data(pamh, AUTH_KEY, a, drop_auth) != PAM_SUCCESS)
        free(a);
}

static int just_authenticated(pam_handle_t *pamh, const char *user)
{
    const void *data = NULL;
    if (pam_get_data(pamh, AUTH_KEY, &data) != PAM_SUCCESS || data == NULL)
        return 0;
    const struct authenticated *a = data;
    return a->pid == getpid() && strcmp(a->user, user) == 0 && now_ms() - a->at_ms < AUTH_FRESH_MS;
}

/* root entering a member's account with su/runuser (root needs no credential; the daemon still checks the
 * membership): the application runs as root, says root asked, and is one of those that switch users. */
static int root_switch(pam_handle_t *pamh, const char *user)
{
    const void *service = NULL, *ruser = NULL;
    if (getuid() != 0 || just_authenticated(pamh, user))
        return 0;
    if (pam_get_item(pamh, PAM_SERVICE, &service) != PAM_SUCCESS || service == NULL ||
        pam_get_item(pamh, PAM_RUSER, &ruser) != PAM_SUCCESS || ruser == NULL || strcmp(ruser, "root") != 0)
        return 0;
    static const char *const switchers[] = {"su", "su-l", "runuser", "runuser-l"};
    for (size_t i = 0; i < sizeof switchers / sizeof *switchers; i++)
        if (strcmp(service, switchers[i]) == 0)
            return 1;
    return 0;
}

struct opts {
    const char *socket;
    int ignore_unknown;
    int debug;
};

static void parse(int argc, const char **argv, struct opts *o)
{
    memset(o, 0, sizeof(*o));
    for (int i = 0; i < argc; i++) {
        if (strncmp(argv[i], "socket=", 7) == 0)
            o->socket = argv[i] + 7;
        else if (strcmp(argv[i], "ignore_unknown_user") == 0)
            o->ignore_unknown = 1;
        else if (strcmp(argv[i], "debug") == 0)
            o->debug = 1;
    }
}

/* One connection per PAM handle and process: auth, account and session reuse it, which saves a
 * connect and an accept per step (sshd forks between steps, so a child opens its own). */
struct conn {
    int fd;
    pid_t pid;
    char path[sizeof(((struct sockaddr_un *)0)->sun_path)];
};

static void drop_conn(pam_handle_t *pamh, void *data, int status)
{
    (void)pamh, (void)status;
    struct conn *c = data;
    close(c->fd);
    free(c);
}

static int exchange(pam_handle_t *pamh, const char *path, int op, const char *const *fields, int n,
                    struct xos_reply *r)
{
    const void *data = NULL;
    long deadline = xos_deadline();
    int st;

    if (pam_get_data(pamh, CONN_KEY, &data) == PAM_SUCCESS && data != NULL) {
        const struct conn *c = data;
        if (c->pid == getpid() && strcmp(c->path, path) == 0) {
            st = xos_exchange(c->fd, op, fields, n, r, deadline);
            if (st != XOS_UNAVAIL) {
                if (st == XOS_BADREQ) /* the daemon hangs up after a bad request */
                    pam_set_data(pamh, CONN_KEY, NULL, NULL);
                return st;
            }
        }
        /* Closed by the daemon (idle, restarted) or another process's: ask on a fresh one. */
        pam_set_data(pamh, CONN_KEY, NULL, NULL);
    }
    struct conn *c = malloc(sizeof(*c));
    if (c == NULL)
        return XOS_UNAVAIL;
    snprintf(c->path, sizeof(c->path), "%s", path);
    c->pid = getpid();
    c->fd = xos_connect(path, deadline);
    if (c->fd < 0) {
        free(c);
        r->status = XOS_UNAVAIL;
        r->nfields = 0;
        return XOS_UNAVAIL;
    }
    st = xos_exchange(c->fd, op, fields, n, r, deadline);
    if (st == XOS_UNAVAIL || st == XOS_BADREQ || pam_set_data(pamh, CONN_KEY, c, drop_conn) != PAM_SUCCESS)
        drop_conn(pamh, c, 0);
    return st;
}

/* One request; maps the reply to a PAM code through `ok`, logs the daemon's reason. */
static int ask(pam_handle_t *pamh, const struct opts *o, int op, const char *const *fields, int n,
               struct xos_reply *r, int ok)
{
    char path[256];
    xos_socket_path(o->socket, path, sizeof(path));
    int st = exchange(pamh, path, op, fields, n, r);
    switch (st) {
    case XOS_OK:
        return ok;
    case XOS_NOTFOUND:
        return o->ignore_unknown ? PAM_IGNORE : PAM_USER_UNKNOWN;
    case XOS_DENIED:
        pam_syslog(pamh, LOG_NOTICE, "xos refused %s: %s", fields[0], r->nfields > 1 ? r->field[1] : "denied");
        return op == XOS_OP_AUTH ? PAM_AUTH_ERR : PAM_PERM_DENIED;
    case XOS_UNAVAIL:
        pam_syslog(pamh, LOG_ERR, "xos identity daemon at %s unavailable", path);
        return PAM_AUTHINFO_UNAVAIL;
    default:
        pam_syslog(pamh, LOG_ERR, "xos identity daemon error for %s: %s", fields[0],
                   r->nfields > 1 ? r->field[1] : "error");
        return PAM_SYSTEM_ERR;
    }
}

static int with_reply(pam_handle_t *pamh, int flags, int argc, const char **argv, int op)
{
    struct opts o;
    const char *user = NULL, *tok = NULL;
    char pid[24];
    struct xos_reply *r = NULL;
    int rc;
    (void)flags;

    parse(argc, argv, &o);
    rc = pam_get_user(pamh, &user, NULL);
    if (rc != PAM_SUCCESS || user == NULL || *user == '\0') {
        rc = PAM_USER_UNKNOWN;
        goto out;
    }
    if (strchr(user, '.') == NULL) { /* grid accounts are user.vo: not ours */
        rc = o.ignore_unknown ? PAM_IGNORE : PAM_USER_UNKNOWN;
        goto out;
    }
    r = malloc(sizeof(*r));
    if (r == NULL) {
        rc = PAM_BUF_ERR;
        goto out;
    }
    if (op == XOS_OP_AUTH && root_switch(pamh, user)) {
        rc = PAM_IGNORE; /* root asks for no credential: pam_rootok decides */
    } else if (op == XOS_OP_AUTH) {
        rc = pam_get_authtok(pamh, PAM_AUTHTOK, &tok, "Credential: ");
        if (rc != PAM_SUCCESS || tok == NULL) {
            rc = PAM_AUTH_ERR;
            goto out;
        }
        const char *f[3] = {user, "pam", tok};
        rc = ask(pamh, &o, op, f, 3, r, PAM_SUCCESS);
        pam_set_data(pamh, AUTH_KEY, NULL, NULL);
        if (rc == PAM_SUCCESS)
            remember_auth(pamh, user);
    } else if (op == XOS_OP_ACCOUNT && just_authenticated(pamh, user)) {
        rc = PAM_SUCCESS;
    } else if (op == XOS_OP_ACCOUNT) {
        const char *f[2] = {user, "root"};
        rc = ask(pamh, &o, op, f, root_switch(pamh, user) ? 2 : 1, r, PAM_SUCCESS);
    } else {
        snprintf(pid, sizeof(pid), "%d", (int)getpid());
        const char *f[3] = {user, pid, "root"};
        rc = ask(pamh, &o, op, f, root_switch(pamh, user) ? 3 : 2, r, PAM_SUCCESS);
        if (rc == PAM_SUCCESS && r->nfields >= 1) {
            /* The credential goes into the session keyring for the session's programs. */
            if (syscall(SYS_add_key, "user", "xos:credential", r->field[0], r->len[0],
                        KEY_SPEC_SESSION_KEYRING) < 0) {
                pam_syslog(pamh, LOG_ERR, "cannot put the credential into the session keyring: %m");
                rc = PAM_SESSION_ERR;
            }
        }
    }
    if (o.debug)
        pam_syslog(pamh, LOG_DEBUG, "op %d for %s: %s", op, user, pam_strerror(pamh, rc));
out:
    if (r != NULL) {
        explicit_bzero(r, sizeof(*r)); /* the reply may hold a credential */
        free(r);
    }
    return rc;
}

PAM_EXTERN int pam_sm_authenticate(pam_handle_t *pamh, int flags, int argc, const char **argv)
{
    return with_reply(pamh, flags, argc, argv, XOS_OP_AUTH);
}

PAM_EXTERN int pam_sm_setcred(pam_handle_t *pamh, int flags, int argc, const char **argv)
{
    (void)pamh, (void)flags, (void)argc, (void)argv;
    return PAM_SUCCESS;
}

PAM_EXTERN int pam_sm_acct_mgmt(pam_handle_t *pamh, int flags, int argc, const char **argv)
{
    return with_reply(pamh, flags, argc, argv, XOS_OP_ACCOUNT);
}

PAM_EXTERN int pam_sm_open_session(pam_handle_t *pamh, int flags, int argc, const char **argv)
{
    return with_reply(pamh, flags, argc, argv, XOS_OP_SESSION);
}

PAM_EXTERN int pam_sm_close_session(pam_handle_t *pamh, int flags, int argc, const char **argv)
{
    (void)pamh, (void)flags, (void)argc, (void)argv;
    return PAM_SUCCESS;
}
