"""A UID goes to a new holder only once its previous holder's leftovers are gone, also when the daemon
is killed between releasing it and scrubbing it."""

from __future__ import annotations

import os

import pytest

from xos.identity import idmap as idmap_mod
from xos.identity.idmap import IdentityMap, Pool


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


SWAPPER = """
import ctypes, os, sys
libc = ctypes.CDLL(None, use_errno=True)
os.chdir(sys.argv[1])


def kind(n):
    return 'link' if os.path.islink(n) else 'dir' if os.path.isdir(n) else None


while True:  # d and l swap places atomically: a directory holding f, and a link to elsewhere
    try:
        k = {n: kind(n) for n in ('d', 'l')}
        if 'dir' not in k.values():
            os.makedirs('t', exist_ok=True)
            for i in range(100):
                open(f't/f{i}', 'a').close()
            free = [n for n in ('d', 'l') if k[n] is None] or ['l']
            if k[free[0]] is not None:
                os.unlink(free[0])
            os.rename('t', free[0])
        k = {n: kind(n) for n in ('d', 'l')}
        for n in ('d', 'l'):
            if k[n] is None:
                os.symlink(sys.argv[2], n)
        libc.renameat2(-100, b'd', -100, b'l', 2)  # RENAME_EXCHANGE
    except OSError:
        pass
"""


def test_scrub_never_follows_a_directory_swapped_for_a_link() -> None:
    """The scrub of /tmp, /var/tmp and homes on quarantine: the released user's process swaps one of its
    directories for a link to elsewhere while the scrub walks; nothing outside is removed."""
    import shutil
    import subprocess
    import tempfile

    root = tempfile.mkdtemp(prefix="xos-scrub-")  # where uid 1000 may go
    os.chmod(root, 0o755)
    scrubbed, victim = os.path.join(root, "tmp"), os.path.join(root, "elsewhere")
    os.mkdir(scrubbed, 0o1777)
    os.chmod(scrubbed, 0o1777)
    os.mkdir(victim, 0o755)
    precious = [os.path.join(victim, f"f{i}") for i in range(100)]
    racer = subprocess.Popen(["/usr/bin/python3", "-c", SWAPPER, scrubbed, victim], user=1000, group=1000)
    try:
        for path in precious:
            with open(path, "w") as f:
                f.write("not the scrub's\n")
            os.chown(path, 1000, 1000)  # the same owner: only where it lies protects it
        for _ in range(300):
            idmap_mod.remove_owned({1000}, scrubbed)
            gone = [p for p in precious if not os.path.exists(p)]
            assert not gone, f"the scrub followed a link out of the scrubbed directory: {gone[:3]}"
    finally:
        racer.kill()
        racer.wait()
        shutil.rmtree(root)


def test_a_uid_waits_for_its_workspaces_too(tmp_path: object) -> None:
    """UID reuse on a node: the scrub is recorded only once the node has also ended the UID's workspaces
    and cgroups (mark_scrubbed, after NodeIdentity ends them); until then the UID goes to nobody."""
    scratch = str(tmp_path)
    m = IdentityMap(os.path.join(scratch, "idmap.db"), {"bio": Pool.parse("bio", "30000-30002")}, lease_ttl=100,
                    quarantine=0, home_base=os.path.join(scratch, "homes"), scrub_dirs=(scratch,),
                    finish_scrubs=False)
    uid = m.map("bio", "alice", now=0).uid
    m.release("bio", "alice", now=10)
    assert m.pending_scrubs() == {uid}
    assert m.map("bio", "bob", now=1000).uid != uid  # files and processes gone, workspaces not yet
    m.mark_scrubbed({uid})
    assert m.map("bio", "carol", now=1000).uid == uid
    m.close()
