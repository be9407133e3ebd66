"""The README's "VOs and logins" lines, run as they stand: a VO service, a node that follows it, the
modules installed, a member's first ssh login, root's su, a workspace with the credential, a revocation
refused within seconds, and the modules taken back out. Hosts and ports are mapped to a test grid's."""

from __future__ import annotations

import os
import re
import shlex
import subprocess

from tests.grid.helpers import PORT
from tests.grid.sshd import at_default_path, included, run, ssh, sshd
from xos.testing import TestGrid, TestVOService, wait_for

README = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "README.md")
VO_ADDRESS = f"198.18.0.1:{PORT}"  # the test grid's bridge, where nodes reach the VO service


def readme_lines() -> list[tuple[str, str]]:
    """(host, command) of each line of the section's block: "vo" or "node", as its comments say."""
    with open(README) as f:
        section = f.read().split("## VOs and logins\n", 1)[1].split("\n## ", 1)[0]
    host, out = "vo", []
    for line in section.splitlines():
        if not line.startswith("    "):
            continue
        text = line.strip()
        if text.startswith("#"):
            host = "node" if "node" in text else "vo" if "VO service" in text else host
            continue
        command = re.split(r"\s+#", text, maxsplit=1)[0].strip()
        if command:
            out.append((host, command))
    return out


def test_the_readmes_login_lines_run_as_written(tmp_path):
    lines = readme_lines()
    commands = [c for _, c in lines]
    serve_vo = next(c for c in commands if c.startswith("xos serve vo"))
    serve_node = next(c for c in commands if c.startswith("xos serve node"))
    assert commands[0] == "xos init" and re.fullmatch(r"xos serve vo --listen \S+", serve_vo), commands
    # the node as the README starts it, the VO host's name and port mapped to the test grid's
    node_args = [a.replace("vo-host:7001", VO_ADDRESS) for a in shlex.split(serve_node)[3:]]
    with TestGrid(1, node_args) as grid:
        node = grid.nodes[0]
        node.expect_warning("(revocations|member lists) from .* unavailable|refused")
        # runs `xos init` and `xos serve vo --listen`, with a host certificate from the grid's CA
        with TestVOService(listen=VO_ADDRESS, ca_dir=grid.ca_dir) as vo:
            creds: dict[str, str] = {}
            installed = False
            try:
                for host, command in lines:
                    if command in ("xos init", serve_vo, serve_node):
                        continue  # what the fixtures above ran
                    _run(host, command, vo, node, str(tmp_path), creds)
                    installed = installed or command == "xos node install"
                    if command == "xos node uninstall":
                        installed = False
            finally:
                if installed:
                    node.cli("node", "uninstall")
            assert vo.unexpected_warnings() == []
        assert not node.unexpected_warnings()


def _run(host: str, command: str, vo: TestVOService, node, tmp: str, creds: dict[str, str]) -> None:
    """One README line on its host."""
    argv, _, target = command.partition(" > ")
    words = [os.path.join(tmp, w) if w.endswith((".cred", ".pub")) else w for w in shlex.split(argv)]
    if words[0] == "xos":
        code, out, err = (vo.cli if host == "vo" else node.cli)(*words[1:])
        assert code == 0, (command, err)
        if target:
            with open(os.path.join(tmp, target.strip()), "w") as f:
                f.write(out)
        if words[1:3] == ["vo", "issue"]:
            creds[f"{words[4]}.{words[3]}"] = out.strip()  # alice.bio's credential
        if words[1:3] == ["vo", "revoke"]:  # the README says nodes refuse it within seconds
            account = f"{words[4]}.{words[3]}"
            with sshd(node, stack=_stack("sshd")) as (port, _log):
                wait_for(lambda: ssh(port, account, creds[account], "true").returncode != 0, 5,
                         "the revoked credential to be refused")
        if words[1:3] == ["node", "install"]:
            wait_for(lambda: run(node, "getent", "passwd", "alice.bio").returncode == 0, 5, "alice.bio to resolve")
        return
    if words[0] == "ssh":
        account = words[1].split("@")[0]
        with sshd(node, stack=_stack("sshd")) as (port, log):
            p = ssh(port, account, creds[account], "id; pwd; whoami; ls -ld .")
            assert p.returncode == 0, (p.stderr, open(log.name).read()[-2000:])
            out = p.stdout.splitlines()
            assert f"({account})" in out[0] and out[1] == os.path.join(node.home, "homes", account), out
            assert out[2] == account and out[3].split()[2:4] == [account, account.split(".")[1]], out
            assert out[3].startswith("drwx------"), out  # the home: the member's alone
        return
    if words[:2] == ["su", "-"]:
        with at_default_path(node), included("su-l"):
            p = subprocess.run([*words, "-c", "id"], capture_output=True, text=True, timeout=30,
                               stdin=subprocess.DEVNULL)
        assert p.returncode == 0 and f"({words[2]})" in p.stdout, (p.stdout, p.stderr)
        return
    raise AssertionError(f"the test does not know how to run README line {command!r}")


def _stack(service: str) -> bytes:
    """A system PAM service's stack with `@include xos` first, as the README says."""
    with open(f"/etc/pam.d/{service}", "rb") as f:
        return b"@include xos\n" + f.read()
