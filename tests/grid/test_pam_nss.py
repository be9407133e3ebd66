"""The C modules against the machine's real PAM and NSS: pamtester, keyctl, getent, id, ls."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import tempfile

import pytest

import pam as python_pam
from tests.grid.conftest import POOL
from xos import credential, install

MODULE = install.built("pam_xos.so")


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


def run(node, *cmd: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(cmd), env={**os.environ, "XOS_RUN": node.run}, capture_output=True, text=True,
                          timeout=30)


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
