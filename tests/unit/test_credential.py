"""Credentials: every way one can be bad is refused with its own code."""

from __future__ import annotations

import base64
import json
import time

import jwt
import pytest
from hypothesis import given
from hypothesis import strategies as st

from xos.identity import credential as c


@pytest.fixture
def env(tmp_path):
    key = c.new_key(str(tmp_path / "vo" / "signing.key"))
    trust = c.TrustStore(str(tmp_path / "trust"))
    trust.trust("bio", c.public_pem(key.public_key()))
    return key, trust


def test_round_trip(env):
    key, trust = env
    token, claims = c.issue(key, "alice", "bio", ["analyst"], ["bio"], 3600)
    got = c.verify(token, trust)
    assert got == claims and got.roles == ("analyst",) and got.kid == c.key_id(key.public_key())


def b64(obj) -> str:
    return base64.urlsafe_b64encode(json.dumps(obj).encode()).rstrip(b"=").decode()


def test_bad_credentials(env, tmp_path):
    key, trust = env
    now = time.time()
    good, claims = c.issue(key, "alice", "bio", [], ["bio"], 3600, now=now)
    other = c.new_key(str(tmp_path / "other.key"))
    forged, _ = c.issue(other, "alice", "bio", [], ["bio"], 3600, now=now)
    head, body, sig = good.split(".")
    tampered = ".".join([head, b64({**json.loads(base64.urlsafe_b64decode(body + "==")), "sub": "root"}), sig])
    hs256 = jwt.encode({"sub": "a", "vo": "bio", "iat": int(now), "exp": int(now) + 60, "jti": "x"}, "secret" * 6,
                       algorithm="HS256")
    none_alg = ".".join([b64({"alg": "none"}), b64({"sub": "a", "vo": "bio"}), ""])
    cases = [
        (lambda: c.verify(good, trust, now=now + 7200), c.CredentialExpired),
        (lambda: c.verify(good, trust, now=now - 3600), c.CredentialNotYetValid),
        (lambda: c.verify(good, trust, revoked={claims.jti}), c.CredentialRevoked),
        (lambda: c.verify(good, trust, vo="chem"), c.CredentialWrongVO),
        (lambda: c.verify(c.issue(key, "alice", "chem", [], [], 60)[0], trust), c.CredentialUnknownVO),
        (lambda: c.verify(forged, trust), c.CredentialBadSignature),
        (lambda: c.verify(tampered, trust), c.CredentialBadSignature),
        (lambda: c.verify(good[: len(good) // 2], trust), c.CredentialMalformed),
        (lambda: c.verify("garbage", trust), c.CredentialMalformed),
        (lambda: c.verify("a" * 9000, trust), c.CredentialMalformed),
        (lambda: c.verify(hs256, trust), c.CredentialMalformed),
        (lambda: c.verify(none_alg, trust), c.CredentialMalformed),
    ]
    for call, exc in cases:
        with pytest.raises(exc) as e:
            call()
        assert e.value.code.startswith("credential-") and e.value.message


def test_trust_takes_effect_without_restart(env, tmp_path):
    key, trust = env
    token, _ = c.issue(key, "alice", "bio", [], [], 60)
    assert trust.untrust("bio")
    with pytest.raises(c.CredentialUnknownVO):
        c.verify(token, trust)
    trust.trust("bio", c.public_pem(key.public_key()))
    assert c.verify(token, trust).sub == "alice"


@given(st.text(max_size=300) | st.binary(max_size=300).map(lambda b: base64.urlsafe_b64encode(b).decode()))
def test_garbage_is_malformed_never_a_crash(tmp_path_factory, text):
    trust = c.TrustStore(str(tmp_path_factory.mktemp("t")))
    with pytest.raises(c.CredentialError):
        c.verify(text, trust)
    with pytest.raises(c.CredentialError):
        c.verify(f"{text}.{text}.{text}", trust)


def test_trust_cache_expires_and_refreshes_on_news_at_a_bounded_rate(tmp_path):
    """Keys are cached for ttl; an unknown key id re-reads the file at once, but at most once per refresh."""
    now = [100.0]
    trust = c.TrustStore(str(tmp_path / "trust"), ttl=5.0, refresh=1.0, clock=lambda: now[0])
    writer = c.TrustStore(str(tmp_path / "trust"))  # `xos node trust` in another process
    old = c.Ed25519PrivateKey.generate()
    new = c.Ed25519PrivateKey.generate()
    writer.trust("bio", c.public_pem(old.public_key()))
    old_token, _ = c.issue(old, "alice", "bio", [], [], 60)
    new_token, _ = c.issue(new, "alice", "bio", [], [], 60)
    assert c.verify(old_token, trust).sub == "alice"
    reads = trust.reads
    for _ in range(50):
        assert c.verify(old_token, trust).sub == "alice"
    assert trust.reads == reads  # cached
    writer.trust("bio", c.public_pem(new.public_key()))  # the VO rotated its key
    now[0] += 1.5
    assert c.verify(new_token, trust).sub == "alice"  # news: read at once, not after the ttl
    assert trust.reads == reads + 1
    forged = [c.issue(c.Ed25519PrivateKey.generate(), "alice", "bio", [], [], 60)[0] for _ in range(50)]
    for f in forged:
        with pytest.raises(c.CredentialBadSignature):
            c.verify(f, trust)
    assert trust.reads == reads + 1  # a flood of unknown key ids within one refresh interval: no re-read
    writer.untrust("bio")
    assert c.verify(new_token, trust).sub == "alice"  # within the ttl the cached key still answers
    now[0] += 5.0
    with pytest.raises(c.CredentialUnknownVO):
        c.verify(new_token, trust)  # stale: read again, gone
