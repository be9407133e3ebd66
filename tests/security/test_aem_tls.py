"""A member's credential goes to the job manager only inside TLS, and only to a job manager whose certificate
the grid's CA signed: plain HTTP gets no answer, and a host with another CA's certificate never sees it."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import urllib.request

import pytest

from tests.security.helpers import TlsListener
from xos.identity import credential
from xos.testing import AEM_LISTEN, GRID_NET, TestAem, TestGrid, wait_for
from xos.wire import hostid


def test_the_job_managers_users_talk_tls_to_the_grids_own_job_manager() -> None:
    base = tempfile.mkdtemp(prefix="xos-aem-tls-")
    os.chmod(base, 0o755)
    try:
        key = credential.new_key(os.path.join(base, "lab.key"))
        credential.TrustStore(os.path.join(base, "trust")).trust("lab", credential.public_pem(key.public_key()))
        token, _ = credential.issue(key, "alice", "lab", ["member"], [], 600)
        with TestGrid(1) as grid:
            aem = TestAem(base, grid, os.path.join(base, "trust"))
            aem.start()
            try:
                env = {**os.environ, "XOS_CREDENTIAL": token, "XOS_AEM": aem.url, "XOS_CA": aem.ca}

                def xos(*args: str, **extra: str) -> subprocess.CompletedProcess[str]:
                    return subprocess.run([sys.executable, "-m", "xos", *args], env={**env, **extra},
                                          capture_output=True, text=True, timeout=60)

                wait_for(lambda: xos("job", "ls").returncode == 0, 20, "the job manager to answer over TLS")
                with pytest.raises(OSError):  # plain HTTP on its port: no answer
                    urllib.request.urlopen(f"http://{AEM_LISTEN}/v1/jobs", timeout=10)
                # a host with a certificate from another CA, where a member was told the job manager is
                other = os.path.join(base, "other-ca")
                hostid.ca_init(other)
                fake = os.path.join(base, "fake")
                with open(hostid.host_init(fake, "aem", ["aem"], [f"{GRID_NET}.1"]), "rb") as f:
                    cert = hostid.ca_sign(other, f.read())
                with open(os.path.join(fake, "host.pem"), "wb") as f:
                    f.write(cert)
                shutil.copy(os.path.join(other, "ca.pem"), os.path.join(fake, "ca.pem"))
                listener = TlsListener(hostid.HostIdentity(fake).server_context(users=True))
                try:
                    r = xos("job", "ls", XOS_AEM=listener.url)
                finally:
                    listener.close()
                assert r.returncode != 0 and r.stderr.startswith("xos: error unavailable:"), r.stderr
                assert r.stderr.count("\n") == 1 and "certificate" in r.stderr, r.stderr
                assert token.encode() not in listener.heard and b"Authorization" not in listener.heard
                r = xos("job", "ls", XOS_CA=os.path.join(base, "no-such-ca.pem"))
                assert r.returncode == 2 and "error invalid-input" in r.stderr and "CA" in r.stderr, r.stderr
            finally:
                aem.stop()
    finally:
        shutil.rmtree(base, ignore_errors=True)

