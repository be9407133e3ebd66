"""The Cython counter reader parses cgroup file formats through kept-open descriptors."""

from hypothesis import given
from hypothesis import strategies as st

from xos._native.cgstat import Counters


def test_reads_flat_and_keyed(tmp_path):
    single = tmp_path / "memory.current"
    keyed = tmp_path / "memory.events"
    limit = tmp_path / "pids.max"
    single.write_text("123456\n")
    keyed.write_text("low 0\nhigh 0\nmax 7\noom 3\noom_kill 2\n")
    limit.write_text("max\n")
    c = Counters([(str(single), ""), (str(keyed), "oom_kill"), (str(keyed), "oom"), (str(keyed), "absent"),
                  (str(limit), "")])
    assert c.read() == (123456, 2, 3, -1, -2)
    single.write_text("99\n")  # same inode: the kept descriptor sees the new value
    assert c.read()[0] == 99
    c.close()


@given(st.dictionaries(st.from_regex(r"[a-z_]{1,12}", fullmatch=True), st.integers(0, 2**62), min_size=1))
def test_any_keyed_file(tmp_path_factory, values):
    f = tmp_path_factory.mktemp("c") / "stat"
    f.write_text("".join(f"{k} {v}\n" for k, v in values.items()))
    keys = list(values)
    c = Counters([(str(f), k) for k in keys])
    assert c.read() == tuple(values[k] for k in keys)
    c.close()
