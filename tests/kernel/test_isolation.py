"""Isolation, as in the Globus workspace experiment: VO B keeps its throughput while VO A floods."""

from xos.testing.experiments import isolation, isolation_table


def test_flooding_workspace_leaves_the_other_unharmed(node):
    with node.client() as c:
        r = c.run(isolation(c.client))
    print(isolation_table(r))
    assert r["cpu_ratio"] >= 0.9, isolation_table(r)
    assert r["net_ratio"] >= 0.9, isolation_table(r)
    # The flood really happened, and was held to A's own allocation.
    assert 0.8 <= r["flooder"]["cpu_share"] <= 1.1
    assert 15 <= r["flooder"]["mbit"] <= 23
