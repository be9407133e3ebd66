"""A member whose credential was revoked loses the job manager within seconds: listing, submitting and
controlling jobs are refused; other members go on."""

from __future__ import annotations

import os
import tempfile

from xos.aem.client import Session
from xos.errors import XosError
from xos.testing import GRID_NET, TestAem, TestGrid, TestVOService, wait_for

VO_ADDRESS = f"{GRID_NET}.1:7212"  # the grid bridge, on this host


def test_a_revoked_credential_is_refused_by_the_job_manager_within_5_s() -> None:
    base = tempfile.mkdtemp(prefix="xos-aem-rev-")
    os.chmod(base, 0o755)
    with TestGrid(1) as grid, TestVOService(listen=VO_ADDRESS, ca_dir=grid.ca_dir) as vo:
        assert vo.cli("vo", "create", "lab")[0] == 0
        assert vo.cli("vo", "add", "lab", "alice")[0] == 0
        assert vo.cli("vo", "add", "lab", "bob")[0] == 0
        trust = os.path.join(base, "trust")
        from xos.identity import credential

        with open(os.path.join(vo.home, "vo", "signing.key.pub"), "rb") as f:
            credential.TrustStore(trust).trust("lab", f.read())
        aem = TestAem(base, grid, trust, vo_urls=(vo.url,))
        aem.start()
        alice = Session(aem.url, vo.cli("vo", "issue", "lab", "alice")[1].strip(), ca=aem.ca)
        bob = Session(aem.url, vo.cli("vo", "issue", "lab", "bob")[1].strip(), ca=aem.ca)
        try:
            wait_for(lambda: _answers(alice), 20, "the job manager to answer")
            assert vo.cli("vo", "revoke", "lab", "alice")[0] == 0

            def refused() -> bool:
                try:
                    alice.ls()
                except XosError as e:
                    return e.code == "credential-revoked"
                return False

            wait_for(refused, 5, "the job manager to refuse the revoked credential")
            assert bob.ls() == []  # the others go on
        finally:
            alice.close()
            bob.close()
            aem.stop()
        bad = aem.unexpected_warnings(["revocations from .* unavailable", "not reachable"])
        assert not bad, bad


def _answers(s: Session) -> bool:
    try:
        s.ls()
        return True
    except (XosError, OSError):
        return False
