"""A login's home, made at its first session as pam_mkhomedir would: the lease's, 0700, from a skeleton."""

from __future__ import annotations

import os

from xos.identity.idmap import Account, make_home


def test_home_made_once_from_the_skeleton_as_the_user(tmp_path: object) -> None:
    skel = os.path.join(str(tmp_path), "skel")
    os.makedirs(os.path.join(skel, ".config", "app"))
    with open(os.path.join(skel, ".profile"), "w") as f:
        f.write("PS1='\\u@\\h$ '\n")
    os.chmod(os.path.join(skel, ".profile"), 0o644)
    with open(os.path.join(skel, ".config", "app", "rc"), "w") as f:
        f.write("x\n")
    os.symlink("/etc/hostname", os.path.join(skel, "hostname"))
    acct = Account("alice.bio", 30001, 30000, "bio", "alice", os.path.join(str(tmp_path), "homes", "alice.bio"))
    assert make_home(acct, skel)
    st = os.stat(acct.home)
    assert (st.st_uid, st.st_gid, st.st_mode & 0o777) == (30001, 30000, 0o700)
    assert os.stat(os.path.dirname(acct.home)).st_mode & 0o777 == 0o755  # the user can reach it
    for rel in (".profile", ".config", os.path.join(".config", "app", "rc"), "hostname"):
        got = os.lstat(os.path.join(acct.home, rel))
        assert (got.st_uid, got.st_gid) == (30001, 30000), rel
    assert open(os.path.join(acct.home, ".profile")).read() == "PS1='\\u@\\h$ '\n"
    assert os.readlink(os.path.join(acct.home, "hostname")) == "/etc/hostname"
    os.unlink(os.path.join(acct.home, ".profile"))
    assert not make_home(acct, skel)  # there already: left as the user keeps it
    assert not os.path.exists(os.path.join(acct.home, ".profile"))
