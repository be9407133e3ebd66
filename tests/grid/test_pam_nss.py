"""The C modules against the machine's real PAM and NSS: pamtester, keyctl, getent, id, ls."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import tempfile

import pytest

import pam as python_pam
from tests.grid.helpers import POOL
from tests.grid.sshd import MODULE, at_default_path, included, run, ssh, sshd
from xos.identity import credential, install
from xos.testing import wait_for


@contextlib.contextmanager
def pam_service(node):
    """A PAM service file naming the built module by path (nothing installed)."""
    name = f"xos-test-{node.tag}"
    sock = os.path.join(node.run, "idmap.sock")
    path = f"/etc/pam.d/{name}"
    with open(path, "w") as f:
        for kind in ("auth", "account", "session"):
            f.write(f"{kind} required {MODULE} socket={sock}\n")
    try:
        yield name
    finally:
        os.unlink(path)


def pamtester(service: str, user: str, *ops: str, secret: str = "", keyring: bool = False):
    cmd = ["pamtester", "-v", service, user, *ops]
    if keyring:  # a session keyring that outlives pamtester, to read the key back from
        cmd = ["keyctl", "session", "-", "sh", "-c", " ".join(cmd) + " && keyctl pipe %user:xos:credential"]
    return subprocess.run(cmd, input=secret + "\n", capture_output=True, text=True, timeout=30)


def issue(vo, user: str) -> str:
    vo.cli("vo", "add", "bio", user)
    return vo.cli("vo", "issue", "bio", user)[1].strip()


def test_login_account_session_keyring(site):
    node, vo = site
    tok = issue(vo, "alice")
    with pam_service(node) as svc:
        p = pamtester(svc, "alice.bio", "authenticate", "acct_mgmt", "open_session", "close_session",
                      secret=tok, keyring=True)
        assert p.returncode == 0, p.stderr
        assert "successfully opened a session" in p.stderr or "successfully opened a session" in p.stdout
        assert p.stdout.strip().endswith(tok)  # read back from the session keyring with keyctl
        # python-pam, as a program embedding PAM would
        assert python_pam.pam().authenticate("alice.bio", tok, service=svc)
    with node.client() as c:
        assert "vo-bio" in [w["name"] for w in c.ls()]  # the session was placed in its VO's workspace
    home = os.path.join(node.home, "homes", "alice.bio")  # made at the session's opening, as pam_mkhomedir
    st = os.stat(home)
    assert st.st_mode & 0o777 == 0o700 and st.st_uid in range(POOL[0] + 1, POOL[1] + 1), (oct(st.st_mode), st.st_uid)


def test_bad_credentials_and_revocation_fail_login(site, tmp_path):
    node, vo = site
    node.expect_warning("refused")
    tok = issue(vo, "alice")
    key = credential.load_key(os.path.join(vo.home, "vo", "signing.key"))
    import time

    expired, _ = credential.issue(key, "alice", "bio", [], [], 60, now=time.time() - 7200)
    forged, _ = credential.issue(credential.new_key(str(tmp_path / "k")), "alice", "bio", [], [], 600)
    with pam_service(node) as svc:
        for bad in (expired, forged, tok[:-5], "garbage", ""):
            p = pamtester(svc, "alice.bio", "authenticate", secret=bad)
            assert p.returncode != 0 and "Authentication failure" in p.stderr, p.stderr
        assert pamtester(svc, "bob.bio", "authenticate", secret=tok).returncode != 0  # someone else's
        assert pamtester(svc, "alice.bio", "authenticate", "acct_mgmt", secret=tok).returncode == 0
        assert pamtester(svc, "alice.bio", "acct_mgmt").returncode == 0  # a later check, in a new handle
        vo.cli("vo", "revoke", "bio", "alice")
        from xos.testing import wait_for

        wait_for(lambda: pamtester(svc, "alice.bio", "authenticate", secret=tok).returncode != 0, 5,
                 "the revocation to reach PAM")
        p = pamtester(svc, "alice.bio", "acct_mgmt")  # the daemon is asked again, and refuses
        assert p.returncode != 0 and "Permission denied" in p.stderr, p.stderr


def test_daemon_down_fails_closed(site):
    node, vo = site
    tok = issue(vo, "alice")
    with pam_service(node) as svc:
        node.stop(signal.SIGTERM)
        p = pamtester(svc, "alice.bio", "authenticate", secret=tok)
        assert p.returncode != 0
        assert "Authentication service cannot retrieve authentication info" in p.stderr, p.stderr
        node.start()


@pytest.fixture
def installed(site):
    """pam_xos and libnss_xos installed system-wide for the test, and exactly removed after."""
    node, vo = site
    before = {p: open(p, "rb").read() for p in ("/etc/nsswitch.conf",)}
    code, out, err = node.cli("node", "install")
    try:
        assert code == 0, err
        yield node, vo
    finally:
        code, out, err = node.cli("node", "uninstall")
        assert code == 0, err
        assert open("/etc/nsswitch.conf", "rb").read() == before["/etc/nsswitch.conf"]
        assert not os.path.exists("/etc/pam.d/xos")
        assert not any(os.path.exists(os.path.join(d, "libnss_xos.so.2")) for d in install.LIBDIRS)


def test_nss_shows_mapped_names(installed):
    node, vo = installed
    tok = issue(vo, "alice")
    with pam_service(node) as svc:
        assert pamtester(svc, "alice.bio", "authenticate", secret=tok).returncode == 0  # leases the uid
    p = run(node, "getent", "passwd", "alice.bio")
    name, _x, uid, gid, gecos, home, shell = p.stdout.strip().split(":")
    assert p.returncode == 0 and name == "alice.bio" and 30000 < int(uid) <= 30999 and gid == "30000"
    assert run(node, "getent", "passwd", uid).stdout.split(":")[0] == "alice.bio"
    assert run(node, "getent", "group", "bio").stdout.strip() == "bio:x:30000:alice.bio"
    idline = run(node, "id", "alice.bio").stdout
    assert f"uid={uid}(alice.bio)" in idline and "gid=30000(bio)" in idline
    with tempfile.NamedTemporaryFile(dir="/tmp") as f:
        os.chown(f.name, int(uid), 30000)
        assert run(node, "ls", "-l", f.name).stdout.split()[2:4] == ["alice.bio", "bio"]
    assert "alice.bio" in run(node, "getent", "passwd").stdout  # enumeration
    assert run(node, "getent", "passwd", "nobody.bio").returncode == 2
    assert open("/etc/pam.d/xos").read().count("pam_xos.so") == 3
    # Daemon down: NSS answers UNAVAIL at once and local accounts still resolve.
    node.stop(signal.SIGTERM)
    assert run(node, "getent", "passwd", "alice.bio").returncode == 2
    assert run(node, "getent", "passwd", "root").stdout.startswith("root:x:0:0")
    node.start()


def test_install_is_idempotent(site):
    node, _vo = site
    before = open("/etc/nsswitch.conf").read()
    try:
        assert node.cli("node", "install")[0] == 0
        once = open("/etc/nsswitch.conf").read()
        assert node.cli("node", "install")[0] == 0
        assert open("/etc/nsswitch.conf").read() == once and once.count(" xos") == 2
    finally:
        assert node.cli("node", "uninstall")[0] == 0
        assert node.cli("node", "uninstall")[0] == 0
    assert open("/etc/nsswitch.conf").read() == before


def test_members_resolve_before_any_lease_and_stop_when_removed(installed):
    """Names before leases: a member who never logged in resolves (sshd looks the name up before PAM runs),
    through the VO's signed member list; the lookup binds the UID the session will run as; a removed
    member stops resolving within seconds; a non-member never resolves."""
    node, vo = installed
    assert vo.cli("vo", "add", "bio", "carol")[0] == 0
    wait_for(lambda: run(node, "getent", "passwd", "carol.bio").returncode == 0, 10, "carol.bio to resolve")
    uid = run(node, "getent", "passwd", "carol.bio").stdout.split(":")[2]
    assert run(node, "getent", "passwd", uid).stdout.split(":")[0] == "carol.bio"  # bound at the lookup
    assert vo.cli("vo", "add", "bio", "dave")[0] == 0
    wait_for(lambda: run(node, "getent", "passwd", "dave.bio").returncode == 0, 10, "dave.bio to resolve")
    assert run(node, "getent", "passwd", "dave.bio").stdout.split(":")[2] != uid  # never one UID for two
    tok = issue(vo, "carol")
    with pam_service(node) as svc:  # the session runs as the UID the lookup bound
        assert pamtester(svc, "carol.bio", "authenticate", secret=tok).returncode == 0
    assert run(node, "getent", "passwd", "carol.bio").stdout.split(":")[2] == uid
    assert run(node, "getent", "passwd", "mallory.bio").returncode == 2  # not a member
    assert vo.cli("vo", "remove", "bio", "dave")[0] == 0
    wait_for(lambda: run(node, "getent", "passwd", "dave.bio").returncode == 2, 10, "dave.bio to stop resolving")


def test_first_ssh_login_of_a_member(installed):
    """A member who never logged in logs in over ssh with the credential as the password (both methods):
    `id` shows the mapped names, the home exists and is the cwd, the credential is in the session
    keyring, the shell is in the VO's workspace; a second member gets another UID; a garbage credential,
    a non-member, a revoked credential and a removed member are refused."""
    node, vo = installed
    node.expect_warning("refused")  # the garbage, the others' and the revoked credentials below
    tok = issue(vo, "alice")
    bob = issue(vo, "bob")
    for user in ("alice.bio", "bob.bio"):  # the VO service's word reaches the node at once; the pull is its net
        wait_for(lambda u=user: run(node, "getent", "passwd", u).returncode == 0, 5, f"{user} to resolve")
    with sshd(node) as (port, log):
        for method in ("keyboard-interactive", "password"):
            p = ssh(port, "alice.bio", tok, "id; pwd; keyctl pipe %user:xos:credential; echo; cat /proc/self/cgroup",
                    method)
            assert p.returncode == 0, (p.stderr, open(log.name).read()[-2000:])
            out = p.stdout.splitlines()
            assert "(alice.bio)" in out[0] and "gid=30000(bio)" in out[0], out
            assert out[1] == os.path.join(node.home, "homes", "alice.bio")
            assert out[2] == tok
            assert any(node.cgroup_root in line for line in out[3:]), out  # placed in its VO's workspace
        uid_a = ssh(port, "alice.bio", tok, "id -u").stdout.strip()
        uid_b = ssh(port, "bob.bio", bob, "id -u").stdout.strip()
        assert uid_a and uid_b and uid_a != uid_b
        assert ssh(port, "alice.bio", "garbage", "true").returncode != 0
        assert ssh(port, "alice.bio", bob, "true").returncode != 0  # someone else's credential
        assert ssh(port, "mallory.bio", tok, "true").returncode != 0  # not a member
        assert vo.cli("vo", "revoke", "bio", "alice")[0] == 0
        wait_for(lambda: ssh(port, "alice.bio", tok, "true").returncode != 0, 5, "the revocation to be refused")
        # why is said on the server's side only (sshd's log, and the node's); the client learns no more than
        # that it was refused
        p = ssh(port, "alice.bio", tok, "true")
        log.seek(0)
        assert "alice.bio" not in p.stderr.replace("alice.bio@127.0.0.1", "") and "revoked" not in p.stderr
        assert re.search(r"Failed keyboard-interactive/pam for (invalid user )?alice\.bio", log.read())
        assert vo.cli("vo", "remove", "bio", "bob")[0] == 0
        wait_for(lambda: ssh(port, "bob.bio", bob, "true").returncode != 0, 5, "the removed member to be refused")


def test_su_from_root_and_login_through_pamtester_behave_as_ssh(installed):
    """`su - alice.bio` from root (no credential: root needs none, the membership is checked) and `login`
    through pamtester with the credential: the mapped names, the home made and entered, the VO's workspace;
    a removed member is refused by both. Both services as the README says: `@include xos`."""
    node, vo = installed
    node.expect_warning("refused")  # the removed member below
    tok = issue(vo, "alice")
    issue(vo, "dave")
    for user in ("alice.bio", "dave.bio"):
        wait_for(lambda u=user: run(node, "getent", "passwd", u).returncode == 0, 5, f"{user} to resolve")
    login = f"login-xos-{node.tag}"
    with open("/etc/pam.d/login", "rb") as f:
        stack = f.read()
    with open(f"/etc/pam.d/{login}", "wb") as f:  # login's own stack, xos first, under a name of its own
        f.write(b"@include xos\n" + stack)
    try:
        with at_default_path(node), included("su-l"):
            p = subprocess.run(["su", "-", "dave.bio", "-c", "id; pwd; cat /proc/self/cgroup"],
                               capture_output=True, text=True, timeout=30, stdin=subprocess.DEVNULL)
            assert p.returncode == 0, p.stderr
            out = p.stdout.splitlines()
            assert "(dave.bio)" in out[0] and "(bio)" in out[0], out
            assert out[1] == os.path.join(node.home, "homes", "dave.bio")
            assert any(node.cgroup_root in line for line in out[2:]), out
            p = pamtester(login, "alice.bio", "authenticate", "acct_mgmt", "open_session", "close_session",
                          secret=tok)
            assert p.returncode == 0, p.stderr
            assert os.path.isdir(os.path.join(node.home, "homes", "alice.bio"))
            assert pamtester(login, "alice.bio", "authenticate", secret="garbage").returncode != 0
            assert vo.cli("vo", "remove", "bio", "dave")[0] == 0
            wait_for(lambda: subprocess.run(["su", "-", "dave.bio", "-c", "true"], capture_output=True,
                                            timeout=30, stdin=subprocess.DEVNULL).returncode != 0,
                     5, "the removed member to be refused by su")
    finally:
        os.unlink(f"/etc/pam.d/{login}")


def test_a_local_account_is_not_entered_with_a_members_credential_over_ssh(installed):
    """A local account named as a member would be (`jane.bio`, in /etc/passwd) is not entered over ssh with
    member jane's credential: pam_xos leaves it alone, sshd's log says why, the account is untouched."""
    node, vo = installed
    node.expect_warning("refused|local account")
    tok = issue(vo, "jane")
    subprocess.run(["useradd", "-M", "-d", "/nonexistent", "-s", "/bin/sh", "jane.bio"], check=True)
    try:
        entry = subprocess.run(["getent", "passwd", "jane.bio"], capture_output=True, text=True).stdout
        with sshd(node) as (port, log):
            p = ssh(port, "jane.bio", tok, "id")
            assert p.returncode != 0 and "uid=" not in p.stdout, p.stdout
            log.seek(0)
            assert "jane.bio" in log.read()
        assert subprocess.run(["getent", "passwd", "jane.bio"], capture_output=True, text=True).stdout == entry
    finally:
        subprocess.run(["userdel", "jane.bio"], check=True)
