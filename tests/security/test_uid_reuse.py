"""A UID goes to a new holder only once its previous holder's leftovers are gone, also when the daemon
is killed between releasing it and scrubbing it."""

from __future__ import annotations

import os

import pytest

from xos import idmap as idmap_mod
from xos.idmap import IdentityMap, Pool


def _map(path: str, scratch: str) -> IdentityMap:
    return IdentityMap(path, {"bio": Pool.parse("bio", "30000-30002")}, lease_ttl=100, quarantine=50,
                       home_base=os.path.join(scratch, "homes"), scrub_dirs=(scratch,))


def _leftover(scratch: str, uid: int) -> str:
    path = os.path.join(scratch, f"left-by-{uid}")
    with open(path, "w") as f:
        f.write("the last holder's\n")
    os.chown(path, uid, uid)
    return path


def test_killed_between_release_and_scrub(tmp_path: object, monkeypatch: pytest.MonkeyPatch) -> None:
    """UID reuse: release() used to commit before scrubbing, so a daemon killed in between handed the
    next holder the last one's files. The UID stays unleasable until a scrub is recorded, and the next
    start finishes the scrub."""
    scratch = str(tmp_path)
    db = os.path.join(scratch, "idmap.db")
    m = _map(db, scratch)
    uid = m.map("bio", "alice", now=0).uid
    left = _leftover(scratch, uid)

    def killed(_uid: int) -> int:
        raise KeyboardInterrupt("the daemon is killed here")

    monkeypatch.setattr(idmap_mod, "kill_uid", killed)
    with pytest.raises(KeyboardInterrupt):
        m.release("bio", "alice", now=10)
    monkeypatch.undo()
    assert m.map("bio", "bob", now=1000).uid != uid  # quarantine is over, but no scrub is recorded
    assert os.path.exists(left)
    m.close()

    m = _map(db, scratch)  # the next start
    assert not os.path.exists(left)
    assert m.map("bio", "carol", now=1000).uid == uid  # scrubbed: now it may be reused
    m.close()


def test_expired_lease_met_by_map_is_scrubbed(tmp_path: object) -> None:
    """UID reuse: an expired lease that map() met was quarantined without a scrub."""
    scratch = str(tmp_path)
    m = _map(os.path.join(scratch, "idmap.db"), scratch)
    uid = m.map("bio", "alice", now=0).uid
    left = _leftover(scratch, uid)
    assert m.map("bio", "alice", now=500).uid != uid  # expired: a fresh lease
    assert not os.path.exists(left)
    m.close()
