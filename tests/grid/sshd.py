"""A real OpenSSH sshd and the system PAM files a login test needs, set up for one test and taken back after."""

from __future__ import annotations

import contextlib
import os
import subprocess
import tempfile

from xos.identity import install
from xos.testing import wait_for

MODULE = install.built("pam_xos.so")


def run(node, *cmd: str) -> subprocess.CompletedProcess[str]:
    """A program run against `node`'s identity socket and NSS caches."""
    return subprocess.run(list(cmd), env={**os.environ, "XOS_RUN": node.run}, capture_output=True, text=True,
                          timeout=30)


NSS_FILES = ("idmap.sock", "nss.passwd", "nss.group")  # what the NSS module reads in its run directory


@contextlib.contextmanager
def at_default_path(node):
    """The node's identity socket and NSS caches at the default run directory, where programs that do not
    know the test's (sshd, su, a session's id and ls) look for them."""
    taken = [n for n in NSS_FILES if os.path.lexists(os.path.join("/run/xos", n))]
    assert not taken, f"/run/xos holds {taken}: a node runs on this machine; the test needs the default path"
    linked: list[str] = []
    try:
        os.makedirs("/run/xos", mode=0o755, exist_ok=True)
        for n in NSS_FILES:
            os.symlink(os.path.join(node.run, n), os.path.join("/run/xos", n))
            linked.append(os.path.join("/run/xos", n))
        yield
    finally:
        for path in linked:
            os.unlink(path)


@contextlib.contextmanager
def included(service: str):
    """`@include xos` put first in a system PAM service file, as the README says, and the file restored."""
    path = f"/etc/pam.d/{service}"
    with open(path, "rb") as f:
        before = f.read()
    try:
        with open(path, "wb") as f:
            f.write(b"@include xos\n" + before)
        yield
    finally:
        with open(path, "wb") as f:
            f.write(before)


@contextlib.contextmanager
def sshd(node, port: int = 2222, stack: bytes | None = None):
    """A real OpenSSH sshd on 127.0.0.1:`port` whose PAM service (named after the program, as sshd names
    it) is pam_xos (or `stack`), and the node's identity socket and NSS caches at the default run directory,
    where a session's programs (id, ls) look for them."""
    base = tempfile.mkdtemp(prefix="xos-sshd-")
    name = f"sshd-xos-{node.tag}"
    prog = os.path.join(base, name)
    made_privsep = not os.path.exists("/run/sshd")
    proc = None
    cleanup = contextlib.ExitStack()
    log = open(os.path.join(base, "sshd.log"), "w+")
    try:
        os.symlink("/usr/sbin/sshd", prog)
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", os.path.join(base, "host")], check=True)
        with open(os.path.join(base, "sshd_config"), "w") as f:
            f.write(f"Port {port}\nListenAddress 127.0.0.1\nHostKey {base}/host\nPidFile none\nUsePAM yes\n"
                    "KbdInteractiveAuthentication yes\nPasswordAuthentication yes\nPubkeyAuthentication no\n"
                    "PermitRootLogin no\nLogLevel VERBOSE\n")
        sock = os.path.join(node.run, "idmap.sock")
        with open(f"/etc/pam.d/{name}", "wb") as f:
            f.write(stack if stack is not None else "".join(
                f"{kind} required {MODULE} socket={sock}\n" for kind in ("auth", "account", "session")).encode())
        cleanup.enter_context(at_default_path(node))
        os.makedirs("/run/sshd", mode=0o755, exist_ok=True)
        proc = subprocess.Popen([prog, "-D", "-e", "-f", os.path.join(base, "sshd_config")], stdout=log,
                                stderr=log, env={**os.environ, "XOS_RUN": node.run})
        wait_for(lambda: subprocess.run(["ss", "-ltn", f"sport = :{port}"], capture_output=True,
                                        text=True).stdout.count("LISTEN") > 0, 10, "sshd to listen")
        yield port, log
    finally:
        if proc is not None:
            proc.terminate()
            proc.wait(10)
        log.close()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(f"/etc/pam.d/{name}")
        cleanup.close()
        if made_privsep:
            os.rmdir("/run/sshd")
        subprocess.run(["rm", "-rf", base], check=True)


def ssh(port: int, user: str, secret: str, command: str, method: str = "keyboard-interactive"):
    """ssh with `secret` as the password, given by an askpass program (no terminal)."""
    with tempfile.NamedTemporaryFile("w", dir="/tmp", suffix=".sh", delete=False) as f:
        f.write(f"#!/bin/sh\nprintf '%s\\n' '{secret}'\n")
    os.chmod(f.name, 0o700)
    try:
        return subprocess.run(
            ["ssh", "-p", str(port), "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
             "-o", f"PreferredAuthentications={method}", "-o", "NumberOfPasswordPrompts=1", "-o", "LogLevel=ERROR",
             f"{user}@127.0.0.1", command],
            env={**os.environ, "SSH_ASKPASS": f.name, "SSH_ASKPASS_REQUIRE": "force", "DISPLAY": ":0"},
            stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=60, start_new_session=True)
    finally:
        os.unlink(f.name)
