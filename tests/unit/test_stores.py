"""One conformance suite per store, run against every implementation its module registers in BACKENDS:
what the daemons rely on (durable across a reopen, one transaction per change, the lifecycle's checks)
must hold whichever engine keeps the state."""

from __future__ import annotations

import stat
import time

import pytest

from xos.aem import jobs, jobspec
from xos.allocation import Allocation
from xos.errors import DirectoryNotEmpty, FileExists, IllegalTransition, InvalidInput, NoSuchFile, NotFound
from xos.fs.layout import Striping
from xos.fs.mrc import store as catalogue
from xos.fs.mrc.records import Caller
from xos.node import store as node_store
from xos.node.store import WORKSPACE, ProcessRecord, UsageRecord, WorkspaceRecord
from xos.node.store import WorkspaceState as W
from xos.vo import store as vo_store


@pytest.fixture(scope="module")
def postgres():
    from xos.testing.postgres import TestPostgres

    with TestPostgres() as pg:
        yield pg


def _url(request, backend: str, tmp_path, name: str) -> str:
    """Where a store of `backend` is kept for one test: a file, or a database of its own."""
    if backend == "postgresql":
        return str(request.getfixturevalue("postgres").url(name))
    return f"{backend}:///{tmp_path}/{name}.db"


@pytest.mark.parametrize("backend", sorted(node_store.BACKENDS))
def test_node_store(request, tmp_path, backend) -> None:
    url = _url(request, backend, tmp_path, "node")
    s = node_store.open_store(url)
    rec = WorkspaceRecord(id="w1", name="a", state=W.CREATING, alloc=Allocation(cpu=0.5), uid=1, gid=2,
                          address="198.19.0.2")
    s.add_workspace(rec)
    s.transition(rec, WORKSPACE.step("a", W.CREATING, W.RUNNING, "created"))
    s.save_usage(UsageRecord("w1", "a", 1.0, cpu_ns=5, bytes_in=9))
    s.set_forward("198.19.0.9", "https://n2:7200")
    s.close()
    s = node_store.open_store(url)  # a restarted daemon finds all of it
    [back] = s.workspaces()
    assert (back.state, back.alloc.cpu) == ("running", 0.5)
    assert [t[:2] for t in s.transitions("w1")] == [("", "creating"), ("creating", "running")]
    assert s.usage("a")[0].bytes_in == 9 and s.forwards() == {"198.19.0.9": "https://n2:7200"}
    s.save_usage(UsageRecord("w1", "a", 1.0, cpu_ns=7, bytes_in=11))  # a later sample replaces the last
    assert [(u.cpu_ns, u.bytes_in) for u in s.usage("a")] == [(7, 11)]
    first, second = (s.add_process(ProcessRecord("w1", pid, ["/bin/sh", "-c", "x"], 2.0)) for pid in (40, 41))
    s.end_process(second, 3.0, None, 9, True)
    assert first != second and [(p.pid, p.signal, p.oom_killed) for p in s.processes("w1")] == [
        (40, None, False), (41, 9, True)]
    s.set_forward("198.19.0.9", None)
    assert s.forwards() == {}
    s.transition(back, WORKSPACE.step("a", W.RUNNING, W.DESTROYING, "asked"))
    s.transition(back, WORKSPACE.step("a", W.DESTROYING, W.DESTROYED, "gone"))
    assert s.workspaces() == [] and len(s.workspaces(include_destroyed=True)) == 1
    s.add_workspace(WorkspaceRecord(id="w2", name="a", state=W.CREATING, alloc=Allocation(), uid=1, gid=2,
                                    address="198.19.0.3"))  # a destroyed workspace's name is free again
    s.close()


@pytest.mark.parametrize("backend", sorted(vo_store.BACKENDS))
def test_vo_store(request, tmp_path, backend) -> None:
    url = _url(request, backend, tmp_path, "vo")
    s = vo_store.open_store(url)
    s.add_vo(vo_store.VO("bio", "carol", "active", 1.0, None))
    s.put_member(vo_store.Member("bio", "alice", ["analyst"], ["bio"], 2.0))
    s.put_member(vo_store.Member("bio", "bob", [], ["bio"], 3.0))
    now = int(time.time())
    s.add_credential("j1", "bio", "alice", now, now + 3600)
    s.add_credential("j2", "bio", "alice", now, now + 3600)
    s.add_credential("j3", "bio", "bob", now, now + 3600)
    s.close()
    s = vo_store.open_store(url)
    assert [m.user for m in s.members("bio")] == ["alice", "bob"] and s.member("bio", "alice").roles == ["analyst"]
    first = s.revoke(None, "bio", "alice", "removed", "member")
    assert sorted(r.jti for r in first if ":" not in r.jti) == ["j1", "j2"]  # and the member's marker
    assert s.revoke(["j1"], None, None, "again") == []  # a credential is revoked once
    later = s.revoke(["j3"], None, None, "lost")
    serials = [r.serial for r in s.revocations()]
    assert serials == sorted(serials) and len(set(serials)) == len(first) + len(later)
    assert [r.jti for r in s.revocations(since=max(r.serial for r in first))] == [r.jti for r in later]
    assert s.remove_member("bio", "alice") and not s.remove_member("bio", "alice")
    s.set_vo_state("bio", "dissolved")
    assert s.vo("bio").state == "dissolved" and s.vo("chem") is None
    s.close()


@pytest.mark.parametrize("backend", sorted(jobs.BACKENDS))
def test_job_store(request, tmp_path, backend) -> None:
    url = _url(request, backend, tmp_path, "jobs")
    s = jobs.open_store(url)
    spec = jobspec.parse({"executable": "/bin/true", "count": 2, "token": "t-1"})
    made = s.submit(spec, "alice@bio", "bio", "cred-of-alice")
    assert [j.id for j in made] == ["1.0", "1.1"]
    assert [j.id for j in s.submit(spec, "alice@bio", "bio", "cred-of-alice")] == ["1.0", "1.1"]  # a retry
    s.transition("1.0", jobs.State.MATCHED, "node n1", node="n1")
    s.transition("1.0", jobs.State.RUNNING, "started")
    with pytest.raises(IllegalTransition):
        s.transition("1.0", jobs.State.QUEUED, "back")
    s.remember_node("n1", "https://n1:7200")
    s.close()
    s = jobs.open_store(url)
    assert (s.get("1.0").state, s.get("1.0").node) == (jobs.State.RUNNING, "n1")
    assert [h["to"] for h in s.history("1.0")] == ["queued", "matched", "running"]
    assert s.known_nodes() == {"n1": "https://n1:7200"} and s.credential("1.0") == "cred-of-alice"
    s.transition("1.0", jobs.State.DONE, "exit 0", exit_status=0)
    assert s.credential("1.0") == ""  # nothing runs as its owner again
    assert [j.id for j in s.ls(jobs.State.QUEUED, owner="alice@bio")] == ["1.1"]
    assert s.counts() == {"done": 1, "queued": 1}
    [two] = s.submit(jobspec.parse({"executable": "/bin/true"}), "alice@bio", "bio", "c")
    with pytest.raises(IllegalTransition):  # one step of a batch refused: none of it happens
        s.transitions([(two.id, jobs.State.MATCHED, "m", "n1"), ("1.0", jobs.State.MATCHED, "m", "n1")])
    assert s.get(two.id).state == jobs.State.QUEUED and [h["to"] for h in s.history(two.id)] == ["queued"]
    moved = s.transitions([(two.id, jobs.State.MATCHED, "m", "n2"), ("1.1", jobs.State.HELD, "held", None)])
    assert [(j.id, j.state) for j in moved] == [(two.id, jobs.State.MATCHED), ("1.1", jobs.State.HELD)]
    assert moved[0].node == "n2" and not moved[1].node
    s.transition("1.1", jobs.State.QUEUED, "released")
    s.transition(two.id, jobs.State.CANCELLED, "cancelled")
    assert s.counts() == {"done": 1, "queued": 1, "cancelled": 1}
    s.add_usage(s.get("1.0"), {"cpu_seconds": 7.5, "memory_peak": 1 << 33, "wall_seconds": 9.0}, 2.0)
    [rec] = s.usage(vo="bio")
    assert (rec["cpu_seconds"], rec["memory_peak"], rec["node"]) == (7.5, 1 << 33, "n1") and s.usage(vo="chem") == []
    s.purge("1.0")
    with pytest.raises(NotFound):
        s.get("1.0")
    s.close()


@pytest.mark.parametrize("backend", sorted(catalogue.BACKENDS))
def test_catalogue(request, tmp_path, backend) -> None:
    url = _url(request, backend, tmp_path, "mrc")
    me = Caller("alice@bio", "bio")
    c = catalogue.open_store(url)
    c.create_volume("data", "bio", "alice@bio", {}, Striping(1 << 20, 1), 1)
    c.mkdir("data", "/d", 0o755, me)
    c.create("data", "/d/f", 0o644, me)
    c.link("data", "/d/f", "/d/g", me)
    c.setxattr("data", "/d/f", "user.k", b"v", me)
    with pytest.raises(FileExists):
        c.create("data", "/d/f", 0o644, me)
    c.close()
    c = catalogue.open_store(url)
    assert c.getattr("data", "/d/g", me)["nlink"] == 2 and c.getxattr("data", "/d/f", "user.k", me) == b"v"
    c.rename("data", "/d/g", "/h", me)
    _, rows = c.readdir("data", "/d", me)
    assert [r[0] for r in rows] == ["f"]
    with pytest.raises(DirectoryNotEmpty):
        c.rmdir("data", "/d", me)
    c.unlink("data", "/d/f", me)
    assert c.getattr("data", "/h", me)["nlink"] == 1 and stat.S_ISREG(c.getattr("data", "/h", me)["mode"])
    with pytest.raises(NoSuchFile):
        c.getattr("data", "/d/f", me)
    c.rmdir("data", "/d", me)
    assert [v.name for v in c.volumes()] == ["data"]
    root = c.getattr("data", "/", me)["ino"]
    ino = c.reserve(4)[0]
    batch = [("m", ino, 0o644, 1.0, None)]
    first = c.made("data", root, batch, me)
    again = c.made("data", root, batch, me)  # its answer was lost and it came again: made once, refused never
    assert first["made"] == again["made"] == {"m": ino} and again["refused"] == {}
    other = c.made("data", root, [("m", ino + 1, 0o644, 1.0, None)], me)  # another file by that name
    assert other["made"] == {} and "m" in other["refused"]
    c.close()


@pytest.mark.parametrize("backend", sorted(catalogue.BACKENDS))
def test_catalogue_versions_numbers_and_replicas(request, tmp_path, backend) -> None:
    """What the MRC relies on beyond names: listing versions bumped by every change a listing shows, reserved
    inode numbers, a made file whose number was taken meanwhile, content and times, replica lists, OSDs and
    the orphans of a removed volume."""
    from xos.fs.layout import Replica
    from xos.fs.mrc.records import Made

    me = Caller("alice@bio", "bio")
    c = catalogue.open_store(_url(request, backend, tmp_path, "mrc2"))
    c.create_volume("v", "bio", "alice@bio", {}, Striping(1 << 20, 1), 1)
    root = c.getattr("v", "/", me)["ino"]
    v0 = c.dir_version("v", "/", me)
    for name in ("b", "a", "Z", "é", "_"):
        c.create("v", f"/{name}", 0o644, me)
    v1 = c.dir_version("v", "/", me)
    assert v1 >= v0 + 5
    assert [r[0] for r in c.readdir("v", "/", me)[1]] == sorted(["b", "a", "Z", "é", "_"])  # by code point
    c.setattr("v", "/a", me, mode=0o600)
    assert c.dir_version("v", "/", me) > v1  # an attribute the listing shows
    c.symlink("v", "target", "/s", me)
    c.mknod("v", "/p", stat.S_IFIFO | 0o644, 0, me)
    assert c.readlink("v", "/s", me) == "target" and stat.S_ISFIFO(c.getattr("v", "/p", me)["mode"])
    nums = c.reserve(8)
    assert list(c.reserve(8))[0] > nums[-1]  # never handed out twice
    c.create("v", "/other", 0o644, me)
    assert c.getattr("v", "/other", me)["ino"] not in nums  # a create that names no number takes none of them
    taken = c.getattr("v", "/a", me)["ino"]
    r = c.made("v", root, [("m1", nums[0], 0o640, 5.0, Made(b"hello", 1.0, 2.0, 3.0)),
                           ("m2", taken, 0o644, 5.0, None)], me)  # that number is a's: m2 gets another
    assert r["made"]["m1"] == nums[0] and r["made"]["m2"] not in (taken, nums[0]) and not r["refused"]
    a = c.getattr("v", "/m1", me)
    assert (a["size"], a["mtime"], stat.S_IMODE(a["mode"])) == (5, 2.0, 0o640)
    node = c.commit(a["ino"], 5, 9.0, b"HELLO", False)
    assert node.inline == b"HELLO" and node.mtime == 9.0
    c.mkdir("v", "/many", 0o755, me)
    many = c.getattr("v", "/many", me)["ino"]
    batch = [(f"n{i}", None, 0o644, 6.0, None) for i in range(450)] + [("n7", None, 0o644, 6.0, None)]
    v0 = c.dir_version("v", "/many", me)
    r = c.made("v", many, batch, me)  # more rows than one statement takes; a name twice: the second refused
    assert len(r["made"]) == 450 and list(r["refused"]) == ["n7"] and r["dir_version"][0] == v0
    listed = sorted(row[0] for row in c.readdir("v", "/many", me)[1])
    assert len(set(r["made"].values())) == 450 and listed == sorted(r["made"])
    assert c.dir_version("v", "/many", me) == r["dir_version"][1] > v0
    assert c.getattr("v", "/many", me)["mtime"] == 6.0 and c.getattr("v", "/many/n449", me)["ino"] == r["made"]["n449"]
    c.heartbeat("osd0", "https://o0", 100, 50, 0.0)
    c.heartbeat("osd0", "https://o0b", 100, 40, 0.5)  # a later heartbeat replaces the first
    assert [(o["id"], o["url"], o["free"], o["alive"]) for o in c.osds()] == [("osd0", "https://o0b", 40, True)]
    f = c.create("v", "/big", 0o644, me)
    placed = c.place(f.ino, 1)
    assert placed.layout() is not None and placed.layout().osds() == {"osd0"}
    xloc = c.set_xloc(f.ino, placed.xver, [Replica(("osd0",))])
    with pytest.raises(InvalidInput):
        c.set_xloc(f.ino, placed.xver, [Replica(("osd0",))])  # that version is gone
    assert c.inode(f.ino).xver == xloc.version and c.by_fid(placed.fid).ino == f.ino
    assert [(n.ino, want) for n, want in c.replicated()] == [(f.ino, 1)]
    c.setxattr("v", "/big", "user.a", b"1", me)
    c.setxattr("v", "/big", "user.a", b"2", me)
    assert c.listxattr("v", "/big", me) == ["user.a"] and c.getxattr("v", "/big", "user.a", me) == b"2"
    assert c.sizes()["volumes"] == 1 and c.statfs()["free"] == 40
    gone = c.delete_volume("v")
    assert [fid for fid, _ in gone] == [placed.fid] and [fid for fid, _ in c.orphans()] == [placed.fid]
    c.forget_orphan(placed.fid, [])
    assert c.orphans() == [] and c.volumes() == []
    c.close()


def test_a_store_url_names_its_engine_and_an_unknown_one_is_refused(tmp_path) -> None:
    s = jobs.open_store(str(tmp_path / "plain.db"))  # a plain path is SQLite
    s.close()
    assert (tmp_path / "plain.db").exists()
    with pytest.raises(InvalidInput, match="no job store for 'oracle'"):
        jobs.open_store("oracle://db/jobs")


def test_a_postgresql_schema_is_made_once_and_a_newer_one_is_refused(postgres) -> None:
    from xos.errors import BadConfig
    from xos.pg import Database

    url = postgres.url("schema")
    vo_store.open_store(url).close()
    s = vo_store.open_store(url)  # a second start finds its tables and applies nothing again
    s.add_vo(vo_store.VO("bio", "carol", "active", 1.0, None))
    s.close()
    db = Database(url, "other", [])
    with db.tx() as c:
        c.execute("UPDATE xos_schema SET version=99 WHERE store='vo'")
    db.close()
    with pytest.raises(BadConfig, match="schema version 99, newer than this xos knows"):
        vo_store.open_store(url)


def test_an_unreachable_postgresql_is_one_clear_error(tmp_path) -> None:
    from xos.errors import Unavailable

    with pytest.raises(Unavailable, match="PostgreSQL at postgresql://xos@/nowhere"):
        vo_store.open_store(f"postgresql://xos:secret@/nowhere?host={tmp_path}&connect_timeout=2")
