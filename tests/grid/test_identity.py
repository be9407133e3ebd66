"""Identity on a node: credentials from a VO service, UID leases, the identity socket, revocation."""

from __future__ import annotations

import asyncio
import json
import os
import random
import signal
import subprocess
import time

import pytest

from tests.grid.helpers import POOL
from xos.identity import credential
from xos.identity.proto import LEN, Op, Status, encode
from xos.identity.server import request
from xos.testing import wait_for


def ask(node, op, *fields: str):
    return asyncio.run(request(os.path.join(node.run, "idmap.sock"), op, [f.encode() for f in fields]))


def token(vo, user: str) -> str:
    vo.cli("vo", "add", "bio", user)
    code, out, err = vo.cli("vo", "issue", "bio", user)
    assert code == 0, err
    return out.strip()


def test_login_maps_and_lookups_agree(site):
    node, vo = site
    status, pw = ask(node, Op.AUTH, "alice.bio", "sshd", token(vo, "alice"))
    assert status == Status.OK
    name, uid, gid = pw[0].decode(), int(pw[1]), int(pw[2])
    assert name == "alice.bio" and POOL[0] < uid <= POOL[1] and gid == POOL[0]
    assert ask(node, Op.GETPWNAM, "alice.bio")[1][:3] == pw[:3]
    assert ask(node, Op.GETPWUID, str(uid))[1][0] == b"alice.bio"
    assert ask(node, Op.GETGRNAM, "bio")[1] == [b"bio", str(POOL[0]).encode(), b"alice.bio"]
    assert ask(node, Op.GETGRGID, str(POOL[0]))[1][0] == b"bio"
    assert ask(node, Op.PWENT, "0")[1][0] == b"alice.bio" and ask(node, Op.PWENT, "1")[0] == Status.NOTFOUND
    assert ask(node, Op.ACCOUNT, "alice.bio")[0] == Status.OK
    status, out = ask(node, Op.SESSION, "alice.bio", "0")
    assert status == Status.OK and credential.unverified(out[0].decode())[1]["sub"] == "alice"
    assert ask(node, Op.GETPWNAM, "bob.bio")[0] == Status.NOTFOUND  # never logged in: not mapped


def test_bad_credentials_are_denied_with_a_reason(site, tmp_path):
    node, vo = site
    good = token(vo, "alice")
    key = credential.load_key(os.path.join(vo.home, "vo", "signing.key"))
    expired, _ = credential.issue(key, "alice", "bio", [], ["bio"], 60, now=time.time() - 3600)
    future, _ = credential.issue(key, "alice", "bio", [], ["bio"], 60, now=time.time() + 3600)
    forged, _ = credential.issue(credential.new_key(str(tmp_path / "k")), "alice", "bio", [], [], 600)
    node.expect_warning("refused")
    cases = {
        "credential-expired": ("alice.bio", expired),
        "credential-not-yet-valid": ("alice.bio", future),
        "credential-bad-signature": ("alice.bio", forged),
        "credential-wrong-vo": ("alice.chem", good),
        "credential-malformed": ("alice.bio", good[:40]),
    }
    for code, (account, tok) in cases.items():
        status, out = ask(node, Op.AUTH, account, "sshd", tok)
        assert status == Status.DENIED and out[0].decode() == code, (code, out)
    assert ask(node, Op.AUTH, "mallory.bio", "sshd", good)[1][0] == b"credential-wrong-vo"
    assert ask(node, Op.AUTH, "not-an-account", "sshd", good)[0] == Status.NOTFOUND
    assert ask(node, Op.ACCOUNT, "alice.bio")[0] == Status.DENIED  # nothing authenticated
    assert ask(node, Op.PWENT, "0")[0] == Status.NOTFOUND  # nothing was leased


def test_only_root_may_authenticate_anyone_may_look_up(site):
    node, vo = site
    assert ask(node, Op.AUTH, "alice.bio", "sshd", token(vo, "alice"))[0] == Status.OK
    node.expect_warning("only root may ask")
    # The system python as nobody: this project's venv may live where nobody can read it.
    code = ("import socket, struct, sys\n"
            "def ask(op, name):\n"
            "    s = socket.socket(socket.AF_UNIX); s.connect(sys.argv[1])\n"
            "    body = struct.pack('>HH', 1, op) + struct.pack('>I', len(name)) + name\n"
            "    s.sendall(struct.pack('>I', len(body)) + body)\n"
            "    data = s.recv(65536); return struct.unpack('>H', data[6:8])[0]\n"
            f"print(ask({int(Op.ACCOUNT)}, b'alice.bio'), ask({int(Op.GETPWNAM)}, b'alice.bio'))\n")
    out = subprocess.run(["/usr/bin/python3", "-c", code, os.path.join(node.run, "idmap.sock")], capture_output=True,
                         text=True, check=True, user=65534, group=65534, cwd="/").stdout
    assert out.split() == [str(int(Status.DENIED)), str(int(Status.OK))]


def test_garbage_on_the_identity_socket(site):
    node, _vo = site
    node.expect_warning("bad request|refused|truncated")
    path = os.path.join(node.run, "idmap.sock")

    async def raw(data: bytes) -> bytes:
        r, w = await asyncio.open_unix_connection(path)
        w.write(data)
        await w.drain()
        w.write_eof()
        out = await asyncio.wait_for(r.read(), 10)
        w.close()
        return out

    rng = random.Random(7)
    samples = [b"", b"\x00", b"\xff" * 64, LEN.pack(1 << 30) + b"x", LEN.pack(3) + b"abc",
               encode(Op.GETPWNAM, [b"x"])[:-1], LEN.pack(12) + b"\x00\x02\x00\x04" + LEN.pack(99) + b"abcd",
               encode(99, []), encode(Op.GETPWUID, [b"not-a-number"]), encode(Op.AUTH, [])]
    samples += [bytes(rng.getrandbits(8) for _ in range(rng.randrange(1, 200))) for _ in range(50)]
    for data in samples:
        reply = asyncio.run(raw(data))
        if reply:
            assert int.from_bytes(reply[:4], "big") == len(reply) - 4
            assert int.from_bytes(reply[6:8], "big") != Status.OK
    assert ask(node, Op.GETPWNAM, "nobody.bio")[0] == Status.NOTFOUND  # still answering


def test_concurrent_leases_unique_and_durable(site):
    node, vo = site
    users = [f"u{i}" for i in range(200)]
    # Members and credentials through the API: 200 CLI round trips would dominate the test.
    from xos.vo.client import SyncClient

    with SyncClient(vo.socket) as c:
        tokens = {}
        for u in users:
            c.add("bio", u)
            tokens[u] = c.issue("bio", u)["token"]
    path = os.path.join(node.run, "idmap.sock")

    async def storm() -> list[tuple[str, int]]:
        sem = asyncio.Semaphore(100)

        async def one(u: str) -> tuple[str, int]:
            async with sem:
                status, pw = await request(path, Op.AUTH, [f"{u}.bio".encode(), b"sshd", tokens[u].encode()], 30)
                assert status == Status.OK, pw
                return u, int(pw[1])

        return await asyncio.gather(*[one(u) for u in users for _ in range(5)])

    results = asyncio.run(storm())
    assert len(results) == 1000
    by_user: dict[str, set[int]] = {}
    for u, uid in results:
        by_user.setdefault(u, set()).add(uid)
    assert all(len(v) == 1 for v in by_user.values())
    uids = [next(iter(v)) for v in by_user.values()]
    assert len(set(uids)) == 200
    node.stop(signal.SIGKILL)
    node.start()
    for u in users[:20] + users[-20:]:
        assert int(ask(node, Op.GETPWNAM, f"{u}.bio")[1][1]) == next(iter(by_user[u]))


def test_revocation_and_dissolution_reach_the_node(site):
    node, vo = site
    alice = token(vo, "alice")
    bob = token(vo, "bob")
    assert ask(node, Op.AUTH, "alice.bio", "sshd", alice)[0] == Status.OK
    assert ask(node, Op.AUTH, "bob.bio", "sshd", bob)[0] == Status.OK
    node.expect_warning("refused")
    jti = credential.unverified(alice)[1]["jti"]
    assert vo.cli("vo", "revoke", "--jti", jti)[0] == 0
    wait_for(lambda: ask(node, Op.ACCOUNT, "alice.bio")[0] == Status.DENIED, 5, "the revocation to reach the node")
    assert ask(node, Op.AUTH, "alice.bio", "sshd", alice)[1][0] == b"credential-revoked"
    assert ask(node, Op.ACCOUNT, "bob.bio")[0] == Status.OK
    assert vo.cli("vo", "dissolve", "bio")[0] == 0
    wait_for(lambda: ask(node, Op.GETPWNAM, "bob.bio")[0] == Status.NOTFOUND, 5, "bob's lease to be released")
    assert ask(node, Op.ACCOUNT, "bob.bio")[0] == Status.DENIED
    assert json.loads(node.cli("node", "info", "--json")[1])["name"] == node.name


def test_workspace_runs_as_the_mapped_account(site):
    node, vo = site
    status, pw = ask(node, Op.AUTH, "alice.bio", "sshd", token(vo, "alice"))
    uid = int(pw[1])
    with node.client() as c:
        ws = c.create("alice-job", vo="bio", user="alice")
        assert (ws["uid"], ws["gid"]) == (uid, POOL[0])  # the login's lease, not a second one
        out = bytearray()
        c.exec("alice-job", ["id", "-u"], on_stdout=out.extend)
        assert out.decode().strip() == str(uid)
        node.expect_warning("no UID pool")
        with pytest.raises(Exception) as e:
            c.create("x", vo="chem", user="alice")
        assert getattr(e.value, "code", "") == "no-pool"


def test_workspace_of_a_credential_keyring_and_end_with_the_lease(site, tmp_path):
    """A workspace made from a credential runs as its owner's lease with the credential in each process's
    fresh session keyring; when the member is removed, the workspace, processes and keys of the UID go."""
    node, vo = site
    tok = token(vo, "carol")
    with node.client() as c:
        ws = c.create("carol-job", credential=tok)
        assert ws["owner"] == {"vo": "bio", "user": "carol", "credential": True}
        uid = ws["uid"]
        assert POOL[0] < uid <= POOL[1]

        def run(*argv: str) -> str:
            out = bytearray()
            res = c.exec("carol-job", list(argv), on_stdout=out.extend, on_stderr=out.extend)
            assert res["exit_code"] == 0, (argv, out.decode())
            return out.decode()

        assert run("keyctl", "pipe", "%user:xos:credential") == tok
        session = run("keyctl", "show", "@s")
        assert session.count("\\_") == 1 and "xos:credential" in session, session  # nothing of the daemon's
        run("keyctl", "add", "user", "carols-own", "secret", "@u")  # outlives the process: a user keyring
        assert "carols-own" in run("keyctl", "list", "@u")

        node.expect_warning("refused")
        forged, _ = credential.issue(credential.new_key(str(tmp_path / "k")), "carol", "bio", [], [], 600)
        for bad, code in ((forged, "credential-bad-signature"), ("garbage", "credential-malformed")):
            with pytest.raises(Exception) as e:
                c.create("carol-2", credential=bad)
            assert getattr(e.value, "code", "") == code, e.value
        with pytest.raises(Exception) as e:
            c.create("carol-2", credential=tok, vo="bio", user="bob")
        assert getattr(e.value, "code", "") == "invalid-input"
        assert [w["name"] for w in c.ls()] == ["carol-job"]  # nothing half-made

        assert vo.cli("vo", "remove", "bio", "carol")[0] == 0
        wait_for(lambda: "carol-job" not in [w["name"] for w in c.ls()], 10, "carol's workspace to end")
    keys = subprocess.run(["setpriv", f"--reuid={uid}", f"--regid={POOL[0]}", "--clear-groups", "keyctl", "list",
                           "@u"], capture_output=True, text=True)
    assert "carols-own" not in keys.stdout and "empty" in keys.stdout, keys
