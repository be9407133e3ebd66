"""Revocation that is authentic: the feed a node follows is signed by the VO it concerns and only ever
affects that VO; a forged answer (scope "vo", a huge serial) changes nothing."""

from __future__ import annotations

import json
import os
import tempfile
import time
import urllib.parse
from http.server import BaseHTTPRequestHandler
from typing import Any

from tests.security.helpers import tls_feed_server
from xos.identity import credential
from xos.testing import GRID_NET, TestGrid, wait_for

POOL = "bio=32000-32099"


class ForgedFeed(BaseHTTPRequestHandler):
    """A 'VO service' answering every poll with a revocation of the whole VO bio, signed by its own key."""

    key = credential.new_key(os.path.join(tempfile.mkdtemp(prefix="xos-forger-"), "forger.key"))
    sinces: list[int] = []

    def log_message(self, *args: object) -> None:
        pass

    def do_GET(self) -> None:  # noqa: N802 (http.server's name)
        url = urllib.parse.urlsplit(self.path)
        if url.path != "/v1/revocations":
            self._answer(404, {"error": {"code": "not-found", "message": "no such VO here"}})
            return
        since = int(urllib.parse.parse_qs(url.query).get("since", ["0"])[0])
        self.sinces.append(since)
        now = time.time()
        revs = [{"serial": 10 ** 12, "jti": "forged", "vo": "bio", "user": "", "exp": int(now) + 3600, "at": now,
                 "reason": "forged", "scope": "vo"}]
        self._answer(200, {"serial": 10 ** 12, "revocations": revs, "members_changed": 0,
                           "signed": credential.sign_feed(self.key, since, revs)})

    def _answer(self, status: int, body: dict[str, object]) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


def test_a_forged_feed_revokes_nothing(tmp_path: object) -> None:
    """The revocation feed: an answer not signed by VO bio's key, naming scope 'vo' for bio and a huge
    serial, neither ends bio's workspaces and leases nor silences later revocations."""
    # over TLS as a VO service host of the grid's CA: what it may say is the VO keys' to decide, not TLS's
    ca = os.path.join(str(tmp_path), "ca")
    server, url = tls_feed_server(ForgedFeed, ca, f"{GRID_NET}.1", "0.0.0.0")  # the bridge comes with the grid
    key = credential.new_key(os.path.join(str(tmp_path), "bio.key"))
    try:
        with TestGrid(1, ["--pool", POOL, "--vo-url", url], ca_dir=ca) as grid:
            node = grid.nodes[0]
            node.expect_warning("revocation feed of .* left out|revocations from .* unavailable")
            assert node.cli("node", "trust", "bio", os.path.join(str(tmp_path), "bio.key.pub"))[0] == 0
            token, _ = credential.issue(key, "alice", "bio", ["member"], [], 3600)
            with node.client() as c:
                made: list[dict[str, object]] = []

                def create() -> bool:  # the node re-reads a VO's key at most once a second
                    try:
                        made.append(c.create("mine", credential=token))
                    except credential.CredentialUnknownVO:
                        return False
                    return True

                wait_for(create, 5, "the node to trust VO bio")
                ws = made[0]
                n = len(ForgedFeed.sinces)
                wait_for(lambda: len(ForgedFeed.sinces) >= n + 3, 20, "the node to take the forged feed in")
                assert [w["name"] for w in c.ls()] == ["mine"] and c.stat("mine")["uid"] == ws["uid"]
                assert set(ForgedFeed.sinces) == {0}  # the huge serial was not taken either
                c.rm("mine")
            bad = node.unexpected_warnings()
            assert not bad, bad
    finally:
        server.shutdown()
        server.server_close()


class EvilFeed(BaseHTTPRequestHandler):
    """A VO service of a VO trusted here ("evil"), whose signed feed names the id of another VO's credential
    (and of one of its own)."""

    key: Any = None
    jtis: list[str] = []

    def log_message(self, *args: object) -> None:
        pass

    def do_GET(self) -> None:  # noqa: N802 (http.server's name)
        since = int(urllib.parse.parse_qs(urllib.parse.urlsplit(self.path).query).get("since", ["0"])[0])
        now = time.time()
        revs = [{"serial": since + 1 + i, "jti": jti, "vo": "evil", "user": "x", "exp": int(now) + 3600, "at": now,
                 "reason": "spite", "scope": "credential"} for i, jti in enumerate(self.jtis)] if since == 0 else []
        body = json.dumps({"serial": since + len(revs), "revocations": revs, "members_changed": 0,
                           "signed": credential.sign_feed(self.key, since, revs)}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


def test_a_vo_revokes_only_its_own_credentials(tmp_path: object) -> None:
    """Revoked credentials are kept by VO and id: a trusted VO whose signed feed names the id of another VO's
    credential revokes its own credential of that id, never the other VO's (what the node, the MRC, the OSDs
    and the job manager follow)."""
    import asyncio

    from xos.vo.follow import RevocationFeeds

    base = str(tmp_path)
    trust = credential.TrustStore(os.path.join(base, "trust"))
    keys = {vo: credential.new_key(os.path.join(base, f"{vo}.key")) for vo in ("bio", "evil")}
    for vo, key in keys.items():
        trust.trust(vo, credential.public_pem(key.public_key()))
    victim, claims = credential.issue(keys["bio"], "alice", "bio", ["member"], [], 3600)
    own, own_claims = credential.issue(keys["evil"], "mallory", "evil", ["member"], [], 3600)
    EvilFeed.key, EvilFeed.jtis = keys["evil"], [claims.jti, own_claims.jti]
    server, url = tls_feed_server(EvilFeed, os.path.join(base, "ca"), "127.0.0.1")

    async def follow() -> set[str]:
        taken = asyncio.Event()

        async def apply(entries: list[dict[str, Any]]) -> None:
            taken.set()

        feeds = RevocationFeeds([url], trust, apply=apply, ca=os.path.join(base, "ca", "ca.pem"))
        feeds.start()
        try:
            await asyncio.wait_for(taken.wait(), 10)
            return set(feeds.revoked)
        finally:
            await feeds.stop()

    try:
        revoked = asyncio.run(follow())
    finally:
        server.shutdown()
    assert len(revoked) == 2, revoked
    assert credential.verify(victim, trust, revoked).jti == claims.jti  # bio's credential stands
    try:
        credential.verify(own, trust, revoked)
    except credential.CredentialRevoked:
        pass
    else:
        raise AssertionError("the VO's revocation of its own credential was not taken")
