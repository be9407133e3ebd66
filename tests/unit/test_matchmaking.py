"""Matchmaking with HTCondor's ClassAd language: requirements both ways, rank, autoclusters, reasons."""

from __future__ import annotations

import pytest

from xos.aem.classad import BadExpression, Matchmaker, NodeAd, Wants

NODES = [
    NodeAd("n0", {"Memory": 8192, "Cpus": 4, "Site": "a", "Price": 3.0, "Arch": "X86_64"}),
    NodeAd("n1", {"Memory": 8192, "Cpus": 2, "Site": "b", "Price": 2.0, "Arch": "X86_64"}),
    NodeAd("n2", {"Memory": 2048, "Cpus": 8, "Site": "b", "Price": 1.0, "Arch": "X86_64"},
           requirements='TARGET.Owner != "mallory"'),
]


def test_requirements_pick_the_only_such_node():
    m = Matchmaker()
    found = m.matches(Wants('TARGET.Memory >= 4096 && TARGET.Site == "b"'), NODES)
    assert [x.node for x in found] == ["n1"]


def test_rank_on_price_picks_the_cheapest_first():
    m = Matchmaker()
    found = m.matches(Wants("true", "-TARGET.Price", (("Owner", "alice"),)), NODES)
    assert [x.node for x in found] == ["n2", "n1", "n0"]


def test_my_attributes_and_the_nodes_own_requirements():
    m = Matchmaker()
    wants = Wants("TARGET.Cpus >= MY.RequestCpus", "0", (("RequestCpus", 4), ("Owner", "mallory")))
    assert [x.node for x in m.matches(wants, NODES)] == ["n0"]  # n2 has the cpus but refuses mallory


def test_an_unmatched_job_says_why():
    m = Matchmaker()
    reason = m.why_not(Wants("TARGET.Memory > 100000"), NODES)
    assert "of 3 node(s), 3 fail the job's requirements" in reason
    assert m.why_not(Wants("true"), []) == "no node advertises itself"


@pytest.mark.parametrize("text", ["TARGET.Memory >=", "((", "", "   "])
def test_expressions_that_do_not_parse_are_refused(text):
    with pytest.raises(BadExpression):
        Matchmaker().check(Wants(text))


def test_identical_jobs_are_one_autocluster():
    m = Matchmaker()
    w = Wants("TARGET.Cpus >= 2", "-TARGET.Price")
    out = m.match_all([(str(i), w) for i in range(100)], NODES)
    assert len(out) == 100 and all(v is out["0"] for v in out.values())
