"""Real programs on a grid mount, each checked by what it leaves: cp -a and diff -r, tar out and back,
git, SQLite in WAL mode, and a C build with make, with the MRC's catalogue in SQLite and in PostgreSQL.
bench/fs.py times the same beside the local disk and sshfs."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sysconfig

import pytest

from xos.testing.fsgrid import fs_grid

SOURCES = ("json", "email", "xml")  # about 120 files of Python's standard library


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def mnt(request):
    """A mount of a volume whose MRC keeps its catalogue in SQLite, and one whose MRC keeps it in PostgreSQL
    (these programs are the file-system tests run on both engines). The first has one replica, whose writes
    and fsyncs the OSDs' native threads answer; the second two, whose writes Python forwards."""
    if request.param == "postgresql":
        from xos.testing.postgres import TestPostgres

        with TestPostgres() as pg, fs_grid({"programs": {"replicas": 2}}, osds=2, clients=1,
                                           db=pg.url("catalogue")) as g:
            yield g.mount(0, "programs")
        return
    with fs_grid({"programs": {"replicas": 1}}, osds=2, clients=1) as g:
        yield g.mount(0, "programs")


def run(*argv: str, cwd: str | None = None) -> str:
    p = subprocess.run(argv, cwd=cwd, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, f"{' '.join(argv)}: {p.returncode}\n{p.stdout[-2000:]}\n{p.stderr[-2000:]}"
    return p.stdout


def test_cp_a_diff_r_and_tar_round_trip(mnt: str, tmp_path) -> None:
    lib = sysconfig.get_paths()["stdlib"]
    dest = os.path.join(mnt, "cp")
    os.mkdir(dest)
    for sub in SOURCES:
        run("cp", "-a", os.path.join(lib, sub), dest)
    for sub in SOURCES:
        run("diff", "-r", os.path.join(lib, sub), os.path.join(dest, sub))
    archive = os.path.join(str(tmp_path), "t.tar")
    run("tar", "cf", archive, "-C", dest, ".")
    back = os.path.join(mnt, "back")
    os.mkdir(back)
    run("tar", "xpf", archive, "-C", back)
    run("diff", "-r", dest, back)
    run("rm", "-rf", back)
    assert not os.path.exists(back)


def test_git_init_add_commit_fsck_and_clone(mnt: str) -> None:
    lib = sysconfig.get_paths()["stdlib"]
    repo = os.path.join(mnt, "repo")
    run("cp", "-a", os.path.join(lib, "json"), repo)
    git = ("git", "-c", "user.name=t", "-c", "user.email=t@example.org", "-c", "init.defaultBranch=main")
    run(*git, "init", "-q", cwd=repo)
    run(*git, "add", "-A", cwd=repo)
    run(*git, "commit", "-q", "-m", "first", cwd=repo)
    with open(os.path.join(repo, "decoder.py"), "a") as f:
        f.write("# changed on the grid\n")
    assert "decoder.py" in run(*git, "status", "--porcelain", cwd=repo)
    run(*git, "commit", "-q", "-am", "second", cwd=repo)
    run(*git, "fsck", "--strict", cwd=repo)
    assert run(*git, "rev-list", "--count", "HEAD", cwd=repo).strip() == "2"
    clone = os.path.join(mnt, "clone")
    run(*git, "clone", "-q", repo, clone)
    run("diff", "-r", "-x", ".git", repo, clone)


def test_sqlite_in_wal_mode(mnt: str) -> None:
    path = os.path.join(mnt, "db.sqlite")
    db = sqlite3.connect(path)
    assert db.execute("PRAGMA journal_mode=WAL").fetchone()[0] == "wal"
    db.execute("CREATE TABLE t (k INTEGER PRIMARY KEY, v TEXT)")
    for i in range(50):
        with db:
            db.executemany("INSERT INTO t (v) VALUES (?)", [(f"row {i}-{j}" * 8,) for j in range(100)])
    with db:
        db.execute("DELETE FROM t WHERE k % 3 = 0")
    db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    db.close()
    db = sqlite3.connect(path)
    try:
        assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        assert db.execute("SELECT count(*) FROM t").fetchone()[0] == 5000 - 5000 // 3
    finally:
        db.close()
    # the sqlite3 program, another process, reads what this one wrote
    assert run("sqlite3", path, "SELECT count(*) FROM t").strip() == str(5000 - 5000 // 3)


def test_a_c_build_with_make(mnt: str) -> None:
    src = os.path.join(mnt, "build")
    os.mkdir(src)
    for i in range(8):
        with open(os.path.join(src, f"part{i}.c"), "w") as f:
            f.write(f"int part{i}(int x) {{ return x + {i}; }}\n")
    with open(os.path.join(src, "main.c"), "w") as f:
        decls = "".join(f"int part{i}(int);\n" for i in range(8))
        calls = " + ".join(f"part{i}(1)" for i in range(8))
        f.write(f'#include <stdio.h>\n{decls}int main(void) {{ printf("%d\\n", {calls}); return 0; }}\n')
    objs = " ".join(f"part{i}.o" for i in range(8))
    with open(os.path.join(src, "Makefile"), "w") as f:
        f.write(f"prog: main.o {objs}\n\tcc -o $@ $^\n%.o: %.c\n\tcc -O2 -c -o $@ $<\n")
    p = subprocess.run(["make", "-j2", "-s"], cwd=src, capture_output=True, text=True, timeout=300)
    if p.returncode:  # what each object holds as read back now: which one is not what `as` wrote
        seen = {f"part{i}.o": (os.path.getsize(os.path.join(src, f"part{i}.o")),
                               subprocess.run(["nm", f"part{i}.o"], cwd=src, capture_output=True, text=True).stdout)
                for i in range(8)}
        raise AssertionError(f"make -j2: {p.returncode}\n{p.stderr[-2000:]}\nobjects now: {seen}")
    assert run(os.path.join(src, "prog")).strip() == str(sum(1 + i for i in range(8)))
    # nothing to do when nothing changed: make compares the times the mount keeps
    assert subprocess.run(["make", "-q"], cwd=src).returncode == 0
