"""The MRC's directory leases on their own: grants, recalls, hand-backs, terms, and the horizon a restarted
MRC waits out."""

from __future__ import annotations

import asyncio
import os
import time

import pytest

from xos.fs.mrc import leases
from xos.fs.mrc.leases import Leases, Recall
from xos.fs.mrc.records import Caller

A = Caller("alice@vo", "vo", "rw", (), "sessiona")
B = Caller("bob@vo", "vo", "rw", (), "sessionb")
C = Caller("carol@vo", "vo", "rw", (), "sessionc")
NOBODY = Caller("carol@vo", "vo", "rw", (), "")


@pytest.fixture
def horizon(tmp_path):
    return os.path.join(tmp_path, "leases.horizon")


def test_a_lease_stands_in_the_way_of_others_only(horizon):
    async def run():
        ls = Leases(horizon)
        assert ls.grant(7, A) == leases.TERM
        ls.check(7, A)  # the holder's own calls
        ls.check(8, B)  # another directory
        with pytest.raises(Recall) as r:
            ls.check(7, B)
        assert r.value.lease.session == A.session
        with pytest.raises(Recall):
            ls.check(7, NOBODY)
        assert ls.grant(7, B) == 0.0  # held
        assert ls.grant(9, NOBODY) == 0.0  # no session: nobody to recall from
        assert ls.held() == 1

    asyncio.run(run())


def _held_by_a_wanted_by_b(ls: Leases, ino: int) -> tuple[float, asyncio.Future[None]]:
    """Directory `ino` leased to A, and B's request recalling it: when B began to wait, and its wait."""
    ls.grant(ino, A)
    with pytest.raises(Recall) as r:
        ls.check(ino, B)
    return time.monotonic(), asyncio.ensure_future(ls.recall(r.value.lease, B.session))


def test_a_recall_comes_after_the_holders_slice_and_waits_for_the_hand_back(horizon, monkeypatch):
    monkeypatch.setattr(leases, "MIN_HOLD", 0.2)

    async def run():
        ls = Leases(horizon)
        t0, waiter = _held_by_a_wanted_by_b(ls, 7)
        assert ls.grant(7, C) == 0.0  # B waits for this directory: nobody else is given it meanwhile
        assert await ls.recalls(A) == [7]  # the holder's long poll answers once its slice is over
        assert time.monotonic() - t0 >= 0.15
        await asyncio.sleep(0.05)
        assert not waiter.done()  # still the holder's until it hands it back
        ls.hand_back(A, [7])
        await asyncio.wait_for(waiter, 1)
        ls.check(7, B)
        assert ls.grant(7, B) > 0  # B's turn: its slice starts now
        with pytest.raises(Recall):
            ls.check(7, A)

    asyncio.run(run())


def test_a_holder_still_sending_what_it_made_is_waited_for(horizon, monkeypatch):
    """A recalled holder whose files-made calls go on (renew) keeps the directory past its term, until it
    hands it back: the waiter reads what it sent. One that stops is waited for one term more only."""
    monkeypatch.setattr(leases, "TERM", 0.3)
    monkeypatch.setattr(leases, "MIN_HOLD", 0.0)

    async def run():
        ls = Leases(horizon)
        t0, waiter = _held_by_a_wanted_by_b(ls, 7)
        await asyncio.sleep(0)  # B waits from here on
        assert ls.grant(7, A) == 0.0  # no new term for the holder while B waits: only renewals of sends
        for _ in range(6):  # 0.6 s of sends, twice the term
            await asyncio.sleep(0.1)
            assert ls.renew(7, A)
            assert not waiter.done()
        assert not ls.renew(7, B)  # only the holder's sends renew it
        ls.hand_back(A, [7])
        await asyncio.wait_for(waiter, 1)
        assert time.monotonic() - t0 >= 0.6
        ls.grant(8, A)
        with pytest.raises(Recall) as r:
            ls.check(8, B)
        await asyncio.wait_for(ls.recall(r.value.lease, B.session), 2)  # it stops sending: its term runs out
        assert not ls.renew(8, A) and ls.held() == 0  # and a lease run out is not renewed

    asyncio.run(run())


def test_a_silent_holder_holds_others_up_for_its_term_only(horizon, monkeypatch):
    monkeypatch.setattr(leases, "TERM", 0.3)

    async def run():
        ls = Leases(horizon)
        ls.grant(7, A)
        with pytest.raises(Recall) as r:
            ls.check(7, B)
        await asyncio.wait_for(ls.recall(r.value.lease), 2)  # nobody hands it back
        ls.check(7, B)
        assert ls.held() == 0

    asyncio.run(run())


def test_a_hand_back_by_another_session_or_identity_is_ignored(horizon):
    async def run():
        ls = Leases(horizon)
        ls.grant(7, A)
        ls.hand_back(B, [7])
        ls.hand_back(Caller("mallory@vo", "vo", "rw", (), A.session), [7])  # A's session, not A
        with pytest.raises(Recall):
            ls.check(7, B)

    asyncio.run(run())


def test_an_mrc_restarted_waits_out_the_terms_granted_before(horizon, monkeypatch):
    monkeypatch.setattr(leases, "TERM", 0.3)

    async def run():
        granted_at = time.time()
        Leases(horizon).grant(7, A)
        again = Leases(horizon)  # the MRC killed and started again: it knows no lease
        assert again.grace_until >= granted_at + leases.TERM  # past the term granted, however slow this runs
        await again.grace()
        assert time.time() >= again.grace_until - 0.05  # served only once that term is over
        assert Leases(horizon + ".none").grace_until == 0.0  # never granted any: nothing to wait for

    asyncio.run(run())


def test_reserved_inode_numbers_are_the_sessions_own(horizon):
    ls = Leases(horizon)
    ls.reserve(A, range(100, 200))
    assert ls.reserved(A) == [range(100, 200)]
    assert ls.reserved(B) == [] and ls.reserved(NOBODY) == []
