"""The sorting of pjdfstest failures: only steps that need another identity, and what follows from them on
the same names, count as identity-dependent."""

from tests.grid.pjdfstest import classify

N0, N1 = "pjdfstest_" + "a" * 32, "pjdfstest_" + "b" * 32

OUTPUT = f"""1..7
ok 1
not ok 2 - tried 'chown {N0} 65534 65534', expected 0, got EPERM
not ok 3 - tried 'lstat {N0} uid', expected 65534, got 0
not ok 4 - tried '-u 65534 -g 65534 unlink {N1}', expected 0, got EACCES
not ok 5
not ok 6 - tried 'lstat {N1} type,nlink', expected regular,2, got regular,1
not ok 7 # TODO not on this system
"""


def test_identity_steps_and_their_consequences_are_told_from_the_file_systems_own() -> None:
    count, identity, other = classify("link/00.t", OUTPUT)
    assert count == 7
    # 3 expects a foreign id; 5 is a comparison right after an identity step; 6 looks at a name an
    # identity step failed on (its link count is what the refused step left); 7 is a TODO, no failure
    assert [f.number for f in identity] == [2, 3, 4, 5, 6]
    assert other == []


def test_a_failure_on_untouched_names_is_the_file_systems_own() -> None:
    out = f"1..2\nnot ok 1 - tried 'chown {N0} 65534 -1', expected 0, got EPERM\n" \
          f"not ok 2 - tried 'lstat {N1} type,nlink', expected regular,2, got regular,1\n"
    count, identity, other = classify("link/00.t", out)
    assert [f.number for f in identity] == [1]
    assert [(f.number, f.got) for f in other] == [(2, "regular,1")]
    assert classify("x.t", "1..1\nnot ok 1 - tried 'chown x 0 0', expected 0, got EIO\n")[2][0].got == "EIO"
