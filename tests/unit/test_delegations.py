"""Read delegations on their own: the MRC's grants and recalls (fs/mrc/delegations.py) and what a mount
keeps of them (fs/client/delegated.py)."""

from __future__ import annotations

import asyncio
import os
import time

import pytest

from xos.fs.client.delegated import MARGIN, Delegated
from xos.fs.mrc import delegations
from xos.fs.mrc.delegations import Delegations
from xos.fs.mrc.leases import Leases, Recall
from xos.fs.mrc.records import Caller
from xos.testing import wait_for

A = Caller("alice@vo", "vo", "rw", (), "sessiona")
B = Caller("bob@vo", "vo", "rw", (), "sessionb")
NOBODY = Caller("carol@vo", "vo", "rw", (), "")


@pytest.fixture
def ds(tmp_path):
    return Delegations(Leases(os.path.join(tmp_path, "leases.horizon")))


def answer(ino: int, instance: str = "one", term: float = 2.0) -> dict:
    return {"attrs": {"ino": ino, "size": 3}, "cap": "c", "delegated": {"term": term, "instance": instance}}


def test_a_delegation_stands_in_the_way_of_other_sessions_only(ds):
    async def run():
        assert ds.grant(5, [1, 2], A)
        assert not ds.grant(6, [1], NOBODY)  # no session: nobody to recall from
        ds.changing(5, False, A)  # the holder's own change
        ds.changing(6, False, B)  # another file
        ds.changing(3, True, B)  # a directory not on its path
        with pytest.raises(Recall):
            ds.changing(5, False, B)
        with pytest.raises(Recall):
            ds.changing(2, True, B)  # a directory on the path it was opened by
        with pytest.raises(Recall):  # the same session named by another identity is not the holder
            ds.changing(5, False, Caller("mallory@vo", "vo", "rw", (), A.session))

    asyncio.run(run())


def test_a_recall_ends_when_the_holder_polls_again_with_the_answers_token(ds):
    async def run():
        ds.grant(5, [1], A)
        with pytest.raises(Recall) as r:
            ds.changing(5, False, B)
        waiting = asyncio.ensure_future(r.value.wait(B.session))
        await asyncio.sleep(0.05)
        assert ds.pending(A) and not waiting.done()
        ds.polling(A, "")
        token, files = ds.polled(A)
        assert files == [5]
        ds.polling(A, "another token")  # that answer was lost: recalled again, still held
        await asyncio.sleep(0.05)
        assert not waiting.done()
        token, files = ds.polled(A)
        assert files == [5]
        ds.polling(A, token)
        await asyncio.wait_for(waiting, 1)
        ds.changing(5, False, B)
        assert not ds.grant(5, [1], A)  # cooling: a writer and readers do not take turns at every change

    asyncio.run(run())


def test_a_holder_gone_silent_holds_a_change_up_for_its_term_only(ds, monkeypatch):
    monkeypatch.setattr(delegations, "TERM", 0.3)

    async def run():
        ds.grant(5, [1], A)
        with pytest.raises(Recall) as r:
            ds.changing(5, False, B)
        t0 = time.monotonic()
        await asyncio.wait_for(r.value.wait(B.session), 2)
        assert time.monotonic() - t0 >= 0.2
        ds.changing(5, False, B)
        assert ds.held() == 0

    asyncio.run(run())


def test_a_pending_poll_keeps_its_session_alive(ds, monkeypatch):
    monkeypatch.setattr(delegations, "TERM", 0.1)

    async def run():
        ds.grant(5, [1], A)
        ds.polling(A, "")  # its poll is under way: the session lives however long that takes
        await asyncio.sleep(0.3)
        with pytest.raises(Recall):
            ds.changing(5, False, B)

    asyncio.run(run())


def test_a_holder_that_polls_without_acknowledging_a_recall_loses_it_after_a_term(ds, monkeypatch):
    monkeypatch.setattr(delegations, "TERM", 0.3)

    async def run():
        ds.grant(5, [1], A)
        ds.grant(6, [1], A)
        with pytest.raises(Recall) as r:
            ds.changing(5, False, B)
        waiting = asyncio.ensure_future(r.value.wait(B.session))
        t0 = time.monotonic()
        while not waiting.done():  # polls on and on, never with the token of the answer that recalled 5
            ds.polling(A, "not the token")
            ds.polled(A)
            await asyncio.sleep(0.02)
            assert time.monotonic() - t0 < 2, "a holder that polls is waited for without end"
        assert time.monotonic() - t0 >= 0.25
        assert not ds.grant(7, [1], A)  # nothing more for it: a mount always acknowledges what it was told
        ds.changing(6, False, B)  # and what it held is gone too

    asyncio.run(run())


def test_delegations_per_session_are_bounded(ds, monkeypatch):
    monkeypatch.setattr(delegations, "PER_SESSION", 3)
    assert [ds.grant(i, [1], A) for i in range(5)] == [True, True, True, False, False]
    assert ds.grant(9, [1], B)


def test_delegations_in_all_are_bounded_and_those_of_sessions_gone_make_room(ds, monkeypatch):
    monkeypatch.setattr(delegations, "TOTAL", 3)
    monkeypatch.setattr(delegations, "TERM", 0.1)
    assert [ds.grant(i, [1], A) for i in range(4)] == [True, True, True, False]
    assert not ds.grant(9, [1], B)
    wait_for(lambda: ds.grant(9, [1], B), 2, "A's session to be gone (it polls no more) and make room")
    assert ds.held() == 1


def test_a_mount_keeps_only_delegated_answers_and_uses_them_within_the_term():
    d = Delegated()
    now = time.monotonic()
    d.keep({"attrs": {"ino": 4}}, "/a", now, d.mark())  # not delegated
    assert d.get(4, "/a") is None
    d.keep(answer(5), "/a/f", now, d.mark())
    assert d.get(5, "/a/f")["attrs"]["ino"] == 5
    assert d.get(5, "/b/f") is None  # opened by another path now
    small = Delegated(most=2)
    for ino in (1, 2, 3):
        small.keep(answer(ino), f"/{ino}", now, small.mark())
    assert len(small) == 2 and small.get(1, "/1") is None and small.get(3, "/3") is not None  # the oldest goes
    old = Delegated()
    old.keep(answer(5), "/a/f", now - 2.0 + MARGIN / 2, old.mark())  # sent a term ago: the MRC may have let go
    assert old.get(5, "/a/f") is None


def test_a_mount_keeps_no_answer_asked_for_before_its_file_was_forgotten():
    d = Delegated()
    mark = d.mark()
    d.drop(5)  # a recall or a change here while the open was under way
    d.drop(9)
    d.keep(answer(5), "/a/f", time.monotonic(), mark)
    d.keep(answer(6), "/a/g", time.monotonic(), mark)  # another file's forgetting is not its
    assert d.get(5, "/a/f") is None and d.get(6, "/a/g") is not None
    mark = d.mark()
    d.drop_all()
    d.keep(answer(7), "/a/h", time.monotonic(), mark)
    assert d.get(7, "/a/h") is None


def test_a_poll_answer_forgets_what_it_recalls_and_another_mrc_forgets_all():
    d = Delegated()
    now = time.monotonic()
    d.keep(answer(5), "/a/f", now, d.mark())
    d.keep(answer(6), "/a/g", now, d.mark())
    assert d.polled({"files": [5], "token": "t1", "instance": "one", "term": 2.0}, now) == "t1"
    assert d.get(5, "/a/f") is None and d.get(6, "/a/g") is not None
    d.polled({"files": [], "token": "t2", "instance": "two", "term": 2.0}, time.monotonic())
    assert d.get(6, "/a/g") is None and len(d) == 0
