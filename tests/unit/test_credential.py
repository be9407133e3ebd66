"""Credentials: every way one can be bad is refused with its own code."""

from __future__ import annotations

import base64
import json
import time

import jwt
import pytest
from hypothesis import given
from hypothesis import strategies as st

from xos import credential as c


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
