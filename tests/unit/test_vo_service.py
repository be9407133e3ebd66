"""The VO service through its CLI and API: the life cycle of a VO and of its credentials."""

from __future__ import annotations

import asyncio
import json

import pytest

from xos.testing import TestVOService
from xos.vo.client import Client


@pytest.fixture
def vo():
    with TestVOService() as service:
        yield service
        assert service.unexpected_warnings() == []


def test_life_cycle(vo):
    assert vo.cli("vo", "create", "bio", "--owner", "carol")[0] == 0
    assert vo.cli("vo", "add", "bio", "alice", "--role", "analyst")[0] == 0
    code, token, _ = vo.cli("vo", "issue", "bio", "alice", "--ttl", "1h")
    assert code == 0
    code, out, _ = vo.cli("cred", "show", "--json", input=token)
    shown = json.loads(out)
    assert vo.cli("cred", "show", input=token)[1].startswith("alice@bio: verified, expires in ")
    assert code == 0 and shown["verified"] and shown["sub"] == "alice" and shown["roles"] == ["analyst"]
    assert 3500 < shown["expires_in"] <= 3600
    # Operation: roles change for credentials issued later.
    assert vo.cli("vo", "add", "bio", "alice", "--role", "admin")[0] == 0
    code, token2, _ = vo.cli("vo", "issue", "bio", "alice")
    assert json.loads(vo.cli("cred", "show", "--json", input=token2)[1])["roles"] == ["admin"]
    rows = json.loads(vo.cli("vo", "ls", "--json")[1])
    assert [(m["user"], m["roles"]) for m in rows[0]["members"]] == [("alice", ["admin"]), ("carol", ["owner"])]
    # Removal revokes what the member holds.
    code, out, _ = vo.cli("vo", "remove", "bio", "alice")
    assert code == 0 and "2 credential(s) revoked" in out
    code, _, err = vo.cli("vo", "issue", "bio", "alice")
    assert code != 0 and err.startswith("xos: error not-a-member:")
    # Dissolution revokes everything and refuses new credentials.
    vo.cli("vo", "issue", "bio", "carol")
    code, out, _ = vo.cli("vo", "dissolve", "bio")
    assert code == 0 and "1 credential(s) revoked" in out
    code, _, err = vo.cli("vo", "issue", "bio", "carol")
    assert code != 0 and err.startswith("xos: error vo-dissolved:")


@pytest.mark.parametrize("args,code", [
    (["vo", "create", "Bad!"], "invalid-input"),
    (["vo", "create", "bio"], "vo-exists"),
    (["vo", "add", "nope", "alice"], "vo-not-found"),
    (["vo", "add", "bio", "9lives"], "invalid-input"),
    (["vo", "issue", "bio", "mallory"], "not-a-member"),
    (["vo", "issue", "bio", "root", "--ttl", "100y"], "invalid-input"),
    (["vo", "issue", "bio", "root", "--ttl", "1s"], "invalid-input"),
    (["vo", "revoke", "--jti", "doesnotexist"], "not-found"),
    (["vo", "revoke", "--jti", "../x"], "invalid-input"),
    (["vo", "revoke"], "invalid-input"),
    (["vo", "remove", "bio", "mallory"], "not-a-member"),
    (["cred", "show", "/no/such/file"], "invalid-input"),
])
def test_bad_input_changes_nothing(vo, args, code):
    assert vo.cli("vo", "create", "bio")[0] == 0
    before = vo.cli("vo", "ls", "--json")[1]
    rc, out, err = vo.cli(*args)
    assert rc != 0 and err.count("\n") == 1 and err.startswith(f"xos: error {code}:"), err
    assert vo.cli("vo", "ls", "--json")[1] == before


def test_forged_credential_is_refused_by_cred_show(vo):
    vo.cli("vo", "create", "bio")
    _, token, _ = vo.cli("vo", "issue", "bio", "root")
    head, body, sig = token.strip().split(".")
    forged = ".".join([head, body, sig[:-4] + ("AAAA" if not sig.endswith("AAAA") else "BBBB")])
    rc, _, err = vo.cli("cred", "show", input=forged)
    assert rc != 0 and err.startswith("xos: error credential-")


def test_revocation_reaches_a_waiting_poller_at_once(vo):
    vo.cli("vo", "create", "bio")
    vo.cli("vo", "add", "bio", "alice")

    async def scenario() -> None:
        async with Client(vo.socket) as c:
            issued = await c.issue("bio", "alice")
            since = (await c.revocations())["serial"]
            poll = asyncio.ensure_future(c.revocations(since, wait=20))
            await asyncio.sleep(0.2)  # the poller is parked before we revoke
            assert not poll.done()
            await c.revoke(jti=issued["claims"]["jti"])
            # The parked poll answers with the revocation (a poll that ran out would answer empty).
            got = await poll
            assert [r["jti"] for r in got["revocations"]] == [issued["claims"]["jti"]]
            assert got["serial"] > since

    asyncio.run(scenario())


def test_the_service_exports_prometheus_metrics(vo):
    from prometheus_client.parser import text_string_to_metric_families

    assert vo.cli("vo", "create", "bio", "--owner", "carol")[0] == 0
    assert vo.cli("vo", "add", "bio", "alice")[0] == 0
    assert vo.cli("vo", "add", "nope-no-such-vo", "alice")[0] != 0

    async def scrape() -> str:
        async with Client(vo.socket) as c:
            return str(await c._call("GET", "/metrics"))

    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
               for fam in text_string_to_metric_families(asyncio.run(scrape())) for s in fam.samples}
    assert samples[("xos_vo_vos", (("state", "active"),))] == 1
    assert samples[("xos_vo_members", ())] == 2  # the owner and alice
    assert samples[("xos_vo_requests_total", (("op", "POST /v1/vos/{vo}/members"),))] == 2
    assert samples[("xos_vo_errors_total", (("code", "vo-not-found"), ("op", "POST /v1/vos/{vo}/members")))] == 1


def test_the_service_keeps_its_state_in_postgresql_across_a_restart():
    """`xos serve vo --db postgresql://...`: what one process made, the next one finds."""
    from xos.testing.postgres import TestPostgres

    with TestPostgres() as pg:
        url = pg.url("vo")
        with TestVOService(db=url) as first:
            assert first.cli("vo", "create", "lab")[0] == 0
            assert first.cli("vo", "add", "lab", "alice", "--role", "admin")[0] == 0
            token = first.cli("vo", "issue", "lab", "alice")[1].strip()
            code, out, err = first.cli("vo", "revoke", "lab", "alice", "--json")
            assert code == 0 and json.loads(out)["revoked"], err
        with TestVOService(db=url) as second:
            code, out, err = second.cli("vo", "ls", "--json")
            assert code == 0, err
            [lab] = json.loads(out)
            assert lab["name"] == "lab" and ("alice", ["admin"]) in [(m["user"], m["roles"]) for m in lab["members"]]

            async def feed() -> dict:
                async with Client(second.socket) as c:
                    return await c.revocations(0)

            got = asyncio.run(feed())
            assert token and {r["user"] for r in got["revocations"]} == {"alice"} and got["serial"] > 0
