"""Leases, quarantine and the static map, without a daemon."""

from __future__ import annotations

import threading

import pytest

from xos.identity.idmap import IdentityMap, MapFileError, Pool, PoolFull, parse_map


@pytest.fixture
def idmap(tmp_path):
    m = IdentityMap(str(tmp_path / "idmap.db"), {"bio": Pool.parse("bio", "30000-30003")},
                    {("bio", "admin"): "root"}, lease_ttl=100, quarantine=50)
    yield m
    m.close()


def test_lease_renew_expire_quarantine(idmap):
    a = idmap.map("bio", "alice", now=0)
    assert a.uid == 30001 and a.gid == 30000 and a.name == "alice.bio"
    assert idmap.map("bio", "alice", now=90).uid == 30001  # renewed to 190
    assert idmap.lookup_name("alice.bio", now=180).uid == 30001
    assert idmap.lookup_name("alice.bio", now=200) is None  # an expired lease never resolves
    assert idmap.lookup_uid(30001, now=200) is None
    assert idmap.expire(now=200) == [30001]
    assert idmap.map("bio", "bob", now=210).uid == 30002  # 30001 is in quarantine until 250
    assert idmap.map("bio", "carol", now=260).uid == 30001  # quarantine over: reused


def test_pool_full_and_static_first(idmap):
    for i, user in enumerate(("a", "b", "c")):
        assert idmap.map("bio", user, now=0).uid == 30001 + i
    with pytest.raises(PoolFull) as e:
        idmap.map("bio", "d", now=0)
    assert e.value.code == "pool-full"
    admin = idmap.map("bio", "admin", now=0)
    assert admin.static and admin.name == "root" and admin.uid == 0


def test_release_of_a_vo(idmap):
    idmap.map("bio", "alice", now=0)
    idmap.map("bio", "bob", now=0)
    assert sorted(idmap.release("bio")) == [30001, 30002]
    assert idmap.accounts() == [] and idmap.group("bio") == ("bio", 30000, [])


def test_concurrent_maps_never_share_a_uid(tmp_path):
    m = IdentityMap(str(tmp_path / "c.db"), {"bio": Pool.parse("bio", "40000-40999")})
    got: list[tuple[str, int]] = []

    def worker(k: int) -> None:
        for i in range(50):
            got.append((f"u{(k * 7 + i) % 100}", m.map("bio", f"u{(k * 7 + i) % 100}").uid))

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    by_user: dict[str, set[int]] = {}
    for u, uid in got:
        by_user.setdefault(u, set()).add(uid)
    assert all(len(v) == 1 for v in by_user.values())
    assert len({next(iter(v)) for v in by_user.values()}) == len(by_user)


@pytest.mark.parametrize("text,line", [
    ("bio alice root\nbio bob\n", 2),
    ("# c\n\nbio alice no-such-account-xos\n", 3),
    ("bio alice root\nbio alice root\n", 2),
    ("BIO alice root\n", 1),
])
def test_bad_map_lines_are_named(text, line):
    with pytest.raises(MapFileError) as e:
        parse_map(text, "gridmap")
    assert f"line {line}:" in e.value.message and e.value.detail["line"] == line


def test_overlapping_pools_refused(tmp_path):
    with pytest.raises(Exception, match="overlap"):
        IdentityMap(str(tmp_path / "o.db"), {"a": Pool.parse("a", "30000-30100"), "b": Pool.parse("b", "30050-30200")})


def test_release_scrubs_processes_and_files(tmp_path):
    import os
    import subprocess

    scratch = tmp_path / "scratch"
    (scratch / "keep").mkdir(parents=True)
    m = IdentityMap(str(tmp_path / "s.db"), {"bio": Pool.parse("bio", "41000-41009")}, scrub_dirs=(str(scratch),))
    uid = m.map("bio", "alice").uid
    mine = scratch / "keep" / "left-behind"
    mine.write_text("x")
    os.chown(mine, uid, uid)
    (scratch / "keep" / "not-mine").write_text("y")
    proc = subprocess.Popen(["sleep", "60"], user=uid, group=41000)
    try:
        assert m.release("bio", "alice") == [uid]
        assert proc.wait(10) == -9  # killed, not left to run under a UID someone else may get
    finally:
        if proc.poll() is None:
            proc.kill()
    assert not mine.exists() and (scratch / "keep" / "not-mine").exists()
    m.close()
