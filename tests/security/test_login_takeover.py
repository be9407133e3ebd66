"""No takeover, no injection: a VO credential never enters a local account, what a VO signs cannot put a
line into passwd, and a VO's group never becomes a local group."""

from __future__ import annotations

import os
import subprocess
import time

import jwt
import pytest

from xos.errors import InvalidInput
from xos.identity import credential as c
from xos.identity.idmap import IdentityMap, Pool
from xos.identity.proto import Status
from xos.identity.server import IdentityServer


@pytest.fixture
def smith(tmp_path: object) -> tuple[object, c.TrustStore]:
    key = c.new_key(os.path.join(str(tmp_path), "vo", "signing.key"))
    trust = c.TrustStore(os.path.join(str(tmp_path), "trust"))
    trust.trust("smith", c.public_pem(key.public_key()))
    return key, trust


def test_member_jane_of_vo_smith_never_logs_in_as_local_jane_smith(smith: tuple[object, c.TrustStore],
                                                                   tmp_path: object) -> None:
    """A local account `jane.smith` is never entered with member jane's credential of VO smith."""
    key, trust = smith
    subprocess.run(["useradd", "--no-create-home", "--shell", "/bin/sh", "jane.smith"], check=True)
    try:
        idmap = IdentityMap(os.path.join(str(tmp_path), "idmap.db"), {"smith": Pool.parse("smith", "33000-33099")},
                            home_base=os.path.join(str(tmp_path), "homes"), scrub_dirs=())
        server = IdentityServer(idmap, trust, set())
        token, _ = c.issue(key, "jane", "smith", ["member"], [], 3600)  # type: ignore[arg-type]
        status, fields = server._auth("jane.smith", token)
        assert status == Status.NOTFOUND and fields[0] == b"local-account"
        assert "jane.smith" not in server.logins and idmap.lookup_name("jane.smith") is None
        idmap.close()
    finally:
        subprocess.run(["userdel", "jane.smith"], check=True)


@pytest.mark.parametrize("sub", ["eve:x:0:0::/root:/bin/sh\nmallory", "a/b", "-rf", "x\0y", "UPPER", "a" * 40])
def test_signed_names_that_could_inject_are_refused(smith: tuple[object, c.TrustStore], sub: str) -> None:
    """Subjects are validated where credentials are issued and where they are verified (a VO could sign
    anything: today a `sub` with ':' and a newline reached the NSS cache)."""
    key, trust = smith
    with pytest.raises(InvalidInput):
        c.issue(key, sub, "smith", [], [], 3600)  # type: ignore[arg-type]
    now = int(time.time())
    forged = jwt.encode({"sub": sub, "vo": "smith", "roles": [], "groups": [], "iat": now, "nbf": now,
                         "exp": now + 3600, "jti": "j1"}, key, algorithm="EdDSA",  # type: ignore[arg-type]
                        headers={"kid": c.key_id(key.public_key())})  # type: ignore[attr-defined]
    with pytest.raises(c.CredentialMalformed):
        c.verify(forged, trust)


@pytest.mark.parametrize("vo", ["sudo", "adm"])
def test_a_vo_named_like_a_local_group_gets_no_pool(tmp_path: object, vo: str) -> None:
    """A VO whose name is a local group (sudo, adm, ...) does not become that group."""
    with pytest.raises(InvalidInput) as e:
        IdentityMap(os.path.join(str(tmp_path), "idmap.db"), {vo: Pool.parse(vo, "34000-34099")}, scrub_dirs=())
    assert "local group" in e.value.message


def test_root_entering_an_account_without_a_credential_reaches_current_members_only(
        smith: tuple[object, c.TrustStore], tmp_path: object) -> None:
    """What `su - alice.smith` from root asks (an account check and a session marked as root's, no credential):
    only from root, only for a current member of a pooled VO, never for a removed member, a stranger or a
    local account; and it gives no credential."""
    import asyncio

    from xos.identity.proto import LEN, Op, encode

    _, trust = smith
    idmap = IdentityMap(os.path.join(str(tmp_path), "idmap.db"), {"smith": Pool.parse("smith", "33000-33099")},
                        home_base=os.path.join(str(tmp_path), "homes"), scrub_dirs=())
    idmap.set_roster("smith", ["alice", "bob"], time.time())
    server = IdentityServer(idmap, trust, set())

    def ask(op: int, fields: list[str], peer_uid: int = 0) -> tuple[int, list[bytes]]:
        body = encode(op, [f.encode() for f in fields])[LEN.size:]
        reply = server.answer(body, peer_uid)
        return asyncio.run(reply) if asyncio.iscoroutine(reply) else reply  # type: ignore[return-value, arg-type]

    assert ask(Op.ACCOUNT, ["alice.smith", "root"])[0] == Status.OK
    status, fields = ask(Op.SESSION, ["alice.smith", "0", "root"])
    assert status == Status.OK and fields == []  # no credential to hand out: root gave none
    assert os.path.isdir(os.path.join(str(tmp_path), "homes", "alice.smith"))
    assert ask(Op.ACCOUNT, ["alice.smith", "root"], peer_uid=1000)[0] == Status.DENIED  # only root asks
    assert ask(Op.ACCOUNT, ["alice.smith"])[0] == Status.DENIED  # unmarked: a credential is needed
    assert ask(Op.ACCOUNT, ["mallory.smith", "root"])[0] == Status.DENIED  # no member
    assert ask(Op.SESSION, ["mallory.smith", "0", "root"])[0] == Status.DENIED
    idmap.drop_member("smith", "bob")
    idmap.set_roster("smith", ["alice"], time.time() + 1)
    assert ask(Op.ACCOUNT, ["bob.smith", "root"])[0] == Status.DENIED  # removed
    subprocess.run(["useradd", "--no-create-home", "--shell", "/bin/sh", "carol.smith"], check=True)
    try:
        idmap.set_roster("smith", ["alice", "carol"], time.time() + 2)
        assert ask(Op.ACCOUNT, ["carol.smith", "root"])[0] == Status.DENIED  # a local account
    finally:
        subprocess.run(["userdel", "carol.smith"], check=True)
