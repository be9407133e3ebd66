"""The VO service's TCP listener (revocation feeds, member lists, keys for other hosts) is TLS 1.3 only:
plain HTTP gets no answer, a follower checks its certificate against the grid's CA, and a follower refuses
a VO service named by a plain http:// URL."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys

import pytest

from tests.security.helpers import plain_http_answer
from xos.errors import InvalidInput, XosError
from xos.identity import credential
from xos.testing import TestVOService
from xos.vo.client import Client
from xos.vo.follow import RevocationFeeds
from xos.wire import hostid

ADDRESS = "127.0.0.1:7213"


@pytest.fixture(scope="module")
def vo():
    with TestVOService(listen=ADDRESS) as v:
        assert v.cli("vo", "create", "lab")[0] == 0
        yield v


async def _feed(url: str, ca: str) -> dict:
    async with Client(base_url=url, ca=ca) as c:
        return await c.revocations(0)


def test_followers_reach_it_over_tls_with_the_grids_ca(vo: TestVOService) -> None:
    assert "serial" in asyncio.run(_feed(vo.url, os.path.join(vo.ca_dir, "ca.pem")))


def test_plain_http_gets_no_answer(vo: TestVOService) -> None:
    host, _, port = ADDRESS.rpartition(":")
    got = plain_http_answer(host, int(port), "/v1/revocations")
    assert not got.startswith(b"HTTP/"), f"the VO service answered plain HTTP: {got[:80]!r}"


def test_a_service_with_a_certificate_of_another_ca_is_not_followed(vo: TestVOService, tmp_path) -> None:
    other = str(tmp_path / "other-ca")
    hostid.ca_init(other, "not the grid's CA")
    with pytest.raises(XosError):
        asyncio.run(_feed(vo.url, os.path.join(other, "ca.pem")))


def test_a_plain_http_vo_url_is_refused_before_anything_is_asked(tmp_path) -> None:
    trust = credential.TrustStore(str(tmp_path / "trust"))
    with pytest.raises(InvalidInput, match="not a TLS"):
        RevocationFeeds([f"http://{ADDRESS}"], trust)


def test_plaintext_is_refused_outside_tests(tmp_path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "XOS_INSECURE_TESTS"}
    env["XOS_HOME"] = str(tmp_path)
    p = subprocess.run([sys.executable, "-m", "xos", "serve", "vo", "--listen", "127.0.0.1:0", "--plaintext"],
                       capture_output=True, text=True, timeout=60, env=env)
    assert p.returncode != 0 and "error invalid-input: --plaintext" in p.stderr, p.stderr
