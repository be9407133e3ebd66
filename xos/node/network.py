"""Workspace networking over netlink: the node bridge, veth pairs, addresses, HTB shaping.

One long-lived netlink socket per namespace, created inside that namespace by entering it
with setns(2) on the calling thread for the moment of socket(2): pyroute2's NetNS forks a
helper, which is unsafe inside a threaded daemon (pyroute2 #1213).
"""

from __future__ import annotations

import errno
import ipaddress
import logging
import os
import socket
from dataclasses import dataclass

from pyroute2 import AsyncIPRoute
from pyroute2.netlink.exceptions import NetlinkError

from xos.errors import KernelError
from xos.kernel import netlink as rtnl
from xos.kernel import spawn as sp

log = logging.getLogger(__name__)

NETLINK_ROUTE = 0
HOST_PREFIX = "xvh-"
MTU = 1500


def netlink_socket(nsfd: int | None = None, protocol: int = NETLINK_ROUTE) -> socket.socket:
    """A netlink socket bound to the network namespace of `nsfd` (None: ours)."""
    if nsfd is None:
        s = socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC, protocol)
    else:
        own = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
        try:
            sp.setns(nsfd, sp.CLONE_NEWNET)
            try:
                s = socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC, protocol)
            finally:
                sp.setns(own, sp.CLONE_NEWNET)
        finally:
            os.close(own)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 1 << 20)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 22)
    return s


async def open_rtnl(nsfd: int | None = None) -> AsyncIPRoute:
    """An AsyncIPRoute on a socket of the namespace of `nsfd`."""
    ipr = AsyncIPRoute(use_socket=netlink_socket(nsfd))
    await ipr.setup_endpoint()
    return ipr


def kernel_error(what: str, e: NetlinkError) -> KernelError:
    """A NetlinkError as the KernelError users see."""
    return KernelError(what, e.code or errno.EIO)


async def link_index(ipr: AsyncIPRoute, ifname: str) -> int | None:
    """Index of `ifname`, by a targeted get (never by listing every link, pyroute2 #712)."""
    try:
        msgs = await ipr.link("get", ifname=ifname)
    except NetlinkError as e:
        if e.code == errno.ENODEV:
            return None
        raise kernel_error(f"cannot look up link {ifname}", e) from None
    return int(msgs[0]["index"])


@dataclass(frozen=True)
class Subnet:
    """The node's workspace subnet: the bridge holds the first address."""

    network: ipaddress.IPv4Network

    @classmethod
    def parse(cls, text: str) -> Subnet:
        """From "198.19.0.0/22"."""
        net = ipaddress.IPv4Network(text, strict=True)
        if net.prefixlen > 29:
            raise ValueError(f"subnet {text} is too small for workspaces")
        return cls(net)

    @property
    def gateway(self) -> str:
        """The bridge's address."""
        return str(self.network.network_address + 1)

    def hosts(self) -> list[str]:
        """Addresses workspaces may get, in order."""
        return [str(h) for h in self.network.hosts()][1:]


async def ensure_bridge(ipr: AsyncIPRoute, name: str, subnet: Subnet) -> int:
    """Create (or find) the node bridge with the subnet's gateway address; its index."""
    idx = await link_index(ipr, name)
    try:
        if idx is None:
            await ipr.link("add", ifname=name, kind="bridge")
            idx = await link_index(ipr, name)
            assert idx is not None
        addrs = [a.get_attr("IFA_ADDRESS") for a in await _collect(ipr.get_addr(index=idx))]
        if subnet.gateway not in addrs:
            await ipr.addr("add", index=idx, address=subnet.gateway, prefixlen=subnet.network.prefixlen)
        await ipr.link("set", index=idx, state="up")
    except NetlinkError as e:
        raise kernel_error(f"cannot set up bridge {name}", e) from None
    return idx


async def _collect(coro: object) -> list:
    """The messages of a pyroute2 call, whether it returns a list or an async generator."""
    res = await coro  # type: ignore[misc]
    if isinstance(res, list | tuple):
        return list(res)
    return [m async for m in res]


async def remove_link(ipr: AsyncIPRoute, ifname: str) -> bool:
    """Delete a link if it exists; whether it did."""
    idx = await link_index(ipr, ifname)
    if idx is None:
        return False
    try:
        await ipr.link("del", index=idx)
    except NetlinkError as e:
        if e.code != errno.ENODEV:
            raise kernel_error(f"cannot delete link {ifname}", e) from None
    return True


def attach(node: rtnl.RawRtnl, ws: rtnl.RawRtnl, bridge: int, wsid: str, tag: str, init_pid: int,
           address: str, subnet: Subnet) -> tuple[int, int]:
    """Give a workspace its veth pair: host end on the bridge, eth0 with `address` inside; both indexes.

    Hand-encoded: pyroute2's encoding and decoding of these seven messages was most of a create's cost
    (DEVELOPERS.md, "Measurements behind the code").
    """
    host = HOST_PREFIX + wsid
    # The peer is made inside the workspace's namespace under its final name: no rename, no move.
    rtnl.add_veth(node, host, bridge, "eth0", init_pid)
    hidx, pidx = rtnl.link_index(node, host), rtnl.link_index(ws, "eth0")
    if hidx is None or pidx is None:
        raise KernelError(f"veth pair of workspace {wsid} vanished while being made", errno.ENODEV)
    rtnl.set_link(node, hidx, alias=tag)
    rtnl.set_link(ws, 1)  # lo is always index 1 in a new namespace
    rtnl.set_link(ws, pidx, alias=tag)
    rtnl.add_address(ws, pidx, address, subnet.network.prefixlen)
    rtnl.add_default_route(ws, subnet.gateway)
    return hidx, pidx


def proxy_arp(bridge: str) -> None:
    """Let the bridge answer ARP for addresses routed elsewhere (workspaces that moved between nodes)."""
    path = f"/proc/sys/net/ipv4/conf/{bridge}/proxy_arp"
    with open(path) as f:
        if f.read().strip() == "1":
            return
    with open(path, "w") as f:
        f.write("1")
