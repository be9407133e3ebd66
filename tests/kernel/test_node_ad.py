"""The node's ClassAd: what it is and what is free, and local admission written into the ad itself."""

from __future__ import annotations

import json

from xos.aem.classad import Matchmaker, NodeAd, Wants
from xos.identity import credential
from xos.testing import node as xos_node


def test_the_ad_tracks_allocations_and_admits_only_trusted_vos_that_fit(tmp_path):
    with xos_node(["--cpu", "2", "--memory", "2G", "--site", "b", "--price", "0.25"]) as n:
        credential.new_key(str(tmp_path / "bio.key"))
        assert n.cli("node", "trust", "bio", str(tmp_path / "bio.key.pub"))[0] == 0
        code, out, _ = n.cli("node", "ad", "--json")
        assert 'Site = "b"' in n.cli("node", "ad")[1].splitlines()  # for people: ClassAd text
        before = json.loads(out)
        assert (before["Site"], before["Price"], before["Cpus"], before["Memory"]) == ("b", 0.25, 2.0, 2048)
        assert before["AllowedVOs"] == ["bio"] and before["OpSys"] == "LINUX"
        with n.client() as c:
            c.create("hog", cpu="1.5", memory="1536M")
            after = c.ad()
            assert (after["Cpus"], after["Memory"], after["Workspaces"]) == (0.5, 512, 1)
            m = Matchmaker()
            ad = [NodeAd.of(after)]
            fits = Wants('TARGET.Site == "b"', "0", (("VO", "bio"), ("RequestCpus", 0.5), ("RequestMemory", 512)))
            assert [x.node for x in m.matches(fits, ad)] == [n.name]
            too_big = Wants('TARGET.Site == "b"', "0", (("VO", "bio"), ("RequestCpus", 1), ("RequestMemory", 512)))
            stranger = Wants("true", "0", (("VO", "chem"), ("RequestCpus", 0.1), ("RequestMemory", 1)))
            assert m.matches(too_big, ad) == [] and m.matches(stranger, ad) == []
            assert "refuse the job" in m.why_not(stranger, ad)
            c.rm("hog")
