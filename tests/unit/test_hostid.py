"""Host identities: the CA, requests and certificates, and what bad input gets."""

from __future__ import annotations

import os
import stat
import subprocess
import sys

import pytest

from xos.errors import InvalidInput
from xos.wire import hostid


def _host(tmp_path, name="n1", roles=("node",)) -> str:
    ca = str(tmp_path / "ca")
    if not os.path.exists(os.path.join(ca, "ca.pem")):
        hostid.ca_init(ca)
    d = str(tmp_path / name)
    with open(hostid.host_init(d, name, list(roles), ["10.0.0.1"]), "rb") as f:
        pem = hostid.ca_sign(ca, f.read())
    with open(os.path.join(d, "host.pem"), "wb") as f:
        f.write(pem)
    with open(os.path.join(ca, "ca.pem"), "rb") as f:
        hostid.trust(d, f.read())
    return d


def test_a_signed_host_knows_its_name_and_roles_and_its_keys_are_private(tmp_path):
    d = _host(tmp_path, "n1", ("node", "aem"))
    ident = hostid.HostIdentity(d)
    assert (ident.name, ident.roles) == ("n1", ("node", "aem"))
    for key in (os.path.join(d, "host.key"), str(tmp_path / "ca" / "ca.key")):
        assert stat.S_IMODE(os.stat(key).st_mode) == 0o600
    assert ident.server_context().minimum_version.name == "TLSv1_3"


def test_bad_input_is_refused_and_changes_nothing(tmp_path):
    hostid.ca_init(str(tmp_path / "ca"))
    with pytest.raises(InvalidInput):
        hostid.ca_init(str(tmp_path / "ca"))  # a key is never overwritten
    for name, roles in (("bad name", ["node"]), ("", ["node"]), ("n1", ["root"]), ("n1", [])):
        with pytest.raises(InvalidInput):
            hostid.host_init(str(tmp_path / "h"), name, roles)
    assert not os.path.exists(tmp_path / "h")
    garbled = b"-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END CERTIFICATE REQUEST-----\n"
    for csr in (b"", b"not a request", garbled):
        with pytest.raises(InvalidInput):
            hostid.ca_sign(str(tmp_path / "ca"), csr)
    with pytest.raises(InvalidInput):
        hostid.ca_sign(str(tmp_path / "ca"), b"", days=0)
    with pytest.raises(InvalidInput):
        hostid.trust(str(tmp_path / "t"), b"junk")
    with pytest.raises(InvalidInput):  # a host's certificate is no CA
        hostid.trust(str(tmp_path / "t"), open(os.path.join(_host(tmp_path), "host.pem"), "rb").read())
    with pytest.raises(InvalidInput):
        hostid.HostIdentity(str(tmp_path / "nowhere"))


def test_the_cli_says_what_is_wrong_in_one_line(tmp_path):
    r = subprocess.run([sys.executable, "-m", "xos", "host", "init", "--name", "bad name", "--role", "node",
                        "--dir", str(tmp_path / "h")], capture_output=True, text=True)
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "error invalid-input" in r.stderr, r.stderr
    r = subprocess.run([sys.executable, "-m", "xos", "ca", "sign", str(tmp_path / "none.csr"), "--ca",
                        str(tmp_path), "--out", str(tmp_path / "x.pem")], capture_output=True, text=True)
    assert r.returncode != 0 and r.stderr.count("\n") == 1 and r.stderr.startswith("xos: error"), r.stderr
    assert not os.path.exists(tmp_path / "x.pem")


def test_the_readme_commands_make_a_host_identity(tmp_path):
    """xos ca init, xos host init, xos ca sign, xos host trust, as the README gives them."""
    def xos(*args: str) -> str:
        r = subprocess.run([sys.executable, "-m", "xos", *args], capture_output=True, text=True,
                           env={**os.environ, "XOS_HOME": str(tmp_path / "home")})
        assert r.returncode == 0, r.stderr
        return r.stdout.strip()

    ca_pem = xos("ca", "init", str(tmp_path / "grid-ca"))
    csr = xos("host", "init", "--name", "n1", "--role", "node", "--address", "10.0.0.11")
    assert csr == str(tmp_path / "home" / "host" / "host.csr")
    xos("ca", "sign", csr, "--ca", str(tmp_path / "grid-ca"), "--out", str(tmp_path / "home" / "host" / "host.pem"),
        "--days", "30")
    xos("host", "trust", ca_pem)
    ident = hostid.HostIdentity(str(tmp_path / "home" / "host"))
    assert (ident.name, ident.roles) == ("n1", ("node",))
    assert stat.S_IMODE(os.stat(tmp_path / "home" / "host" / "host.key").st_mode) == 0o600
