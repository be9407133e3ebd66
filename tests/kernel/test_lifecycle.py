"""Destroy leaves nothing; a daemon killed with SIGKILL comes back and reconciles."""

from __future__ import annotations

import os
import signal

from pyroute2 import IPRoute

from tests.kernel.helpers import cgroup_dirs
from xos.kernel.cgroup import detect
from xos.node import network
from xos.testing import TestNode, traffic, wait_for


def links(node: TestNode) -> set[str]:
    fd = os.open(node.netns_path, os.O_RDONLY)
    try:
        with IPRoute(use_socket=network.netlink_socket(fd)) as ipr:
            return {link.get_attr("IFLA_IFNAME") for link in ipr.get_links()}
    finally:
        os.close(fd)


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_destroy_leaves_nothing(node):
    with node.client() as c:
        ws = c.create("gone", egress="10mbit", ingress="10mbit")
        pid = c.spawn("gone", ["sleep", "600"])
        host = network.HOST_PREFIX + ws["id"]
        assert host in links(node) and cgroup_dirs(node, ws["id"]) and os.path.isdir(ws["directory"])
        netns = os.readlink(f"/proc/{ws['init_pid']}/ns/net")
        c.rm("gone")
    # The kernel removes the veth pair with the namespace, in its own (asynchronous) clean-up.
    wait_for(lambda: host not in links(node), 10, "the veth pair to go with the namespace")
    assert cgroup_dirs(node, ws["id"]) == []
    assert not os.path.exists(ws["directory"])
    assert not alive(pid) and not alive(ws["init_pid"])
    # No process on the machine holds the workspace's network namespace any more.
    holders = []
    for p in filter(str.isdigit, os.listdir("/proc")):
        try:
            if os.readlink(f"/proc/{p}/ns/net") == netns:
                holders.append(p)
        except OSError:
            pass
    assert holders == []


def test_sigkill_restart_adopts_live_and_removes_dead(node):
    with node.client() as c:
        live = c.create("live", cpu="0.5")
        dead = c.create("dead")
        c.spawn("live", ["sleep", "600"])
        c.exec("live", traffic.burn(1.0))
        used = c.stat("live")["usage"]["cpu_seconds"]
        assert used >= 0.3  # a second of burning at cpu 0.5
    node.stop(signal.SIGKILL)
    # While the daemon is down: one workspace dies, and someone leaves an orphan cgroup and an orphan link.
    os.kill(dead["init_pid"], signal.SIGKILL)
    wait_for(lambda: not alive(dead["init_pid"]), 10, "the dead workspace's init to go")
    hierarchy = detect()
    orphan = hierarchy.create(f"{node.cgroup_root}/ws-0rphan00")
    stray = network.HOST_PREFIX + "0rphan01"
    fd = os.open(node.netns_path, os.O_RDONLY)
    try:
        with IPRoute(use_socket=network.netlink_socket(fd)) as ipr:
            ipr.link("add", ifname=stray, kind="veth", peer="stray-peer")  # no dummy links in this kernel
    finally:
        os.close(fd)
    assert stray in links(node)
    node.expect_warning("did not survive")
    node.expect_warning("removed orphans")
    node.start()
    with node.client() as c:
        names = [w["name"] for w in c.ls()]
        assert names == ["live"]
        again = c.stat("live")
        assert again["id"] == live["id"] and again["address"] == live["address"] and again["kernel"]["cpu"] == 0.5
        assert again["processes"] == 1  # the sleep survived the daemon
        assert again["usage"]["cpu_seconds"] >= used  # accounting carries on from the kernel counters
        assert c.exec("live", ["true"])["status"] == 0
        [rec] = c.usage("dead")
        assert rec["ended"] is not None
    assert cgroup_dirs(node, dead["id"]) == [] and not orphan.exists() and stray not in links(node)
    wait_for(lambda: network.HOST_PREFIX + dead["id"] not in links(node), 10, "the dead veth to go")
    assert network.HOST_PREFIX + live["id"] in links(node)
