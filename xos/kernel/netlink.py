"""The hot netlink paths, encoded by hand: HTB qdiscs and classes, per-link byte counters.

pyroute2 builds HTB's 256-entry rate tables in Python and decodes every attribute it gets, which was
most of a renegotiation and of a usage sweep (DEVELOPERS.md, "Measurements behind the code"). The
kernel ignores rate tables for HTB when the link layer is given, and RTM_GETSTATS returns counters
without the rest of a link, so a few fixed messages do.
"""

from __future__ import annotations

import contextlib
import errno
import socket
import struct
from collections.abc import Iterator

from xos.errors import KernelError

NLMSG = struct.Struct("=IHHII")
TCMSG = struct.Struct("=BBHiIII")
STATSMSG = struct.Struct("=BBHII")
RTA = struct.Struct("=HH")
RATESPEC = struct.Struct("=BBHhHI")
HTB_OPT = struct.Struct("=12s12sIIIII")
HTB_GLOB = struct.Struct("=IIIII")

NLM_F_REQUEST, NLM_F_ACK, NLM_F_EXCL, NLM_F_CREATE, NLM_F_DUMP = 0x1, 0x4, 0x200, 0x400, 0x300
NLMSG_ERROR, NLMSG_DONE = 2, 3
RTM_NEWQDISC, RTM_NEWTCLASS, RTM_GETTCLASS = 36, 40, 42
RTM_NEWSTATS, RTM_GETSTATS = 92, 94
TCA_KIND, TCA_OPTIONS = 1, 2
TCA_HTB_PARMS, TCA_HTB_INIT, TCA_HTB_RATE64, TCA_HTB_CEIL64 = 1, 2, 6, 7
IFLA_STATS_LINK_64 = 1
TC_H_ROOT = 0xFFFFFFFF
LINKLAYER_ETHERNET = 1
QDISC_HANDLE, CLASS_HANDLE, DEFAULT_CLASS = 0x10000, 0x10010, 0x10
U32_MAX = 0xFFFFFFFF


def attr(kind: int, payload: bytes) -> bytes:
    """One netlink attribute, padded to 4 bytes."""
    head = RTA.pack(RTA.size + len(payload), kind)
    return head + payload + b"\0" * (-len(payload) % 4)


def _ticks_per_usec() -> float:
    # As tc(8) computes it from /proc/net/psched (tc_core_init).
    with open("/proc/net/psched") as f:
        t2us, us2t, clock_res = (int(x, 16) for x in f.read().split()[:3])
    if clock_res == 1_000_000_000:
        t2us = us2t
    return t2us / us2t * (clock_res / 1_000_000)


TICKS_PER_USEC = _ticks_per_usec()


class RawRtnl:
    """Blocking request/ack on a netlink route socket (rtnetlink answers before send returns)."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self._seq = 0

    def close(self) -> None:
        """Close the socket."""
        self.sock.close()

    def _send(self, mtype: int, flags: int, body: bytes) -> int:
        self._seq = (self._seq + 1) & 0xFFFFFFFF
        self.sock.send(NLMSG.pack(NLMSG.size + len(body), mtype, flags | NLM_F_REQUEST, self._seq, 0) + body)
        return self._seq

    def request(self, mtype: int, flags: int, body: bytes, what: str) -> None:
        """Send one request and wait for its acknowledgement; KernelError with errno on refusal."""
        seq = self._send(mtype, flags | NLM_F_ACK, body)
        while True:
            data = self.sock.recv(65536)
            off = 0
            while off + NLMSG.size <= len(data):
                length, kind, _flags, mseq, _pid = NLMSG.unpack_from(data, off)
                if kind == NLMSG_ERROR and mseq == seq:
                    (code,) = struct.unpack_from("=i", data, off + NLMSG.size)
                    if code:
                        raise KernelError(what, -code)
                    return
                off += (length + 3) & ~3

    def dump(self, mtype: int, body: bytes) -> Iterator[tuple[int, bytes]]:
        """(message type, payload) of every message of a dump."""
        seq = self._send(mtype, NLM_F_DUMP, body)
        while True:
            data = self.sock.recv(1 << 20)
            off = 0
            while off + NLMSG.size <= len(data):
                length, kind, _flags, mseq, _pid = NLMSG.unpack_from(data, off)
                if mseq == seq:
                    if kind == NLMSG_DONE:
                        return
                    if kind == NLMSG_ERROR:
                        (code,) = struct.unpack_from("=i", data, off + NLMSG.size)
                        raise KernelError("netlink dump failed", -code or errno.EIO)
                    yield kind, data[off + NLMSG.size:off + length]
                off += (length + 3) & ~3


def _attrs(payload: bytes, start: int) -> dict[int, bytes]:
    out = {}
    pos = start
    while pos + RTA.size <= len(payload):
        alen, kind = RTA.unpack_from(payload, pos)
        if alen < RTA.size:
            break
        out[kind & 0x3FFF] = payload[pos + RTA.size:pos + alen]
        pos += (alen + 3) & ~3
    return out


def _ratespec(bytes_per_s: int) -> bytes:
    return RATESPEC.pack(0, LINKLAYER_ETHERNET, 0, 0, 0, min(bytes_per_s, U32_MAX))


def htb_root(rt: RawRtnl, ifindex: int) -> None:
    """An HTB root qdisc 1: whose unclassified traffic goes to class 1:10."""
    body = TCMSG.pack(socket.AF_UNSPEC, 0, 0, ifindex, QDISC_HANDLE, TC_H_ROOT, 0)
    body += attr(TCA_KIND, b"htb\0") + attr(TCA_OPTIONS, attr(TCA_HTB_INIT, HTB_GLOB.pack(3, 10, DEFAULT_CLASS, 0, 0)))
    rt.request(RTM_NEWQDISC, NLM_F_CREATE | NLM_F_EXCL, body, f"cannot add an HTB root to link {ifindex}")


def htb_class(rt: RawRtnl, ifindex: int, rate_bits: int, quantum: int, create: bool) -> None:
    """Create or change class 1:10 to `rate_bits` bit/s (rate and ceil), with an explicit quantum."""
    rate = rate_bits // 8
    # Bytes the class may send at line speed: 10 ms of its rate, at least a few MTUs, or TCP never
    # reaches the configured rate.
    burst = max(rate // 100, 4 * 1514)
    buffer = min(int(1_000_000 * burst / max(rate, 1) * TICKS_PER_USEC), U32_MAX)
    opt = HTB_OPT.pack(_ratespec(rate), _ratespec(rate), buffer, buffer, quantum, 0, 0)
    opts = attr(TCA_HTB_PARMS, opt)
    if rate > U32_MAX:
        opts += attr(TCA_HTB_RATE64, struct.pack("=Q", rate)) + attr(TCA_HTB_CEIL64, struct.pack("=Q", rate))
    body = TCMSG.pack(socket.AF_UNSPEC, 0, 0, ifindex, CLASS_HANDLE, QDISC_HANDLE, 0)
    body += attr(TCA_KIND, b"htb\0") + attr(TCA_OPTIONS, opts)
    flags = NLM_F_CREATE | NLM_F_EXCL if create else 0
    rt.request(RTM_NEWTCLASS, flags, body, f"cannot shape link {ifindex} to {rate_bits} bit/s")


def htb_rate(rt: RawRtnl, ifindex: int) -> int | None:
    """The rate in bit/s the kernel holds for class 1:10 of `ifindex`, read back."""
    body = TCMSG.pack(socket.AF_UNSPEC, 0, 0, ifindex, 0, 0, 0)
    found = None
    for kind, payload in rt.dump(RTM_GETTCLASS, body):
        if kind != RTM_NEWTCLASS:
            continue
        _f, _p1, _p2, idx, handle, _parent, _info = TCMSG.unpack_from(payload)
        if idx != ifindex or handle != CLASS_HANDLE:
            continue
        top = _attrs(payload, TCMSG.size)
        opts = _attrs(top.get(TCA_OPTIONS, b""), 0)
        if TCA_HTB_RATE64 in opts:
            found = struct.unpack("=Q", opts[TCA_HTB_RATE64][:8])[0] * 8
        elif TCA_HTB_PARMS in opts:
            found = RATESPEC.unpack_from(opts[TCA_HTB_PARMS], 0)[5] * 8
    return found


def link_counters(rt: RawRtnl) -> dict[int, tuple[int, int]]:
    """(rx_bytes, tx_bytes) of every link of the namespace by index, from one RTM_GETSTATS dump."""
    body = STATSMSG.pack(socket.AF_UNSPEC, 0, 0, 0, 1 << (IFLA_STATS_LINK_64 - 1))
    out = {}
    head = STATSMSG.size + RTA.size
    for kind, payload in rt.dump(RTM_GETSTATS, body):
        if kind == RTM_NEWSTATS and len(payload) >= head + 32:
            ifindex = STATSMSG.unpack_from(payload)[3]
            _rxp, _txp, rx, tx = struct.unpack_from("=QQQQ", payload, head)
            out[ifindex] = (rx, tx)
    return out


# -- links, addresses, routes: the workspace's veth pair ---------------------------------------

IFINFO = struct.Struct("=BxHiII")
IFADDR = struct.Struct("=BBBBI")
RTMSG = struct.Struct("=BBBBBBBBI")
RTM_NEWLINK, RTM_GETLINK, RTM_NEWADDR, RTM_NEWROUTE = 16, 18, 20, 24
IFLA_IFNAME, IFLA_MASTER, IFLA_LINKINFO, IFLA_NET_NS_PID, IFLA_IFALIAS = 3, 10, 18, 19, 20
IFLA_INFO_KIND, IFLA_INFO_DATA, VETH_INFO_PEER = 1, 2, 1
IFA_ADDRESS, IFA_LOCAL = 1, 2
RTA_GATEWAY = 5
IFF_UP = 0x1
RT_TABLE_MAIN, RTPROT_BOOT, RT_SCOPE_UNIVERSE, RTN_UNICAST = 254, 3, 0, 1


def link_names(rt: RawRtnl, prefix: str = "") -> list[str]:
    """The names of the namespace's links that start with `prefix`, from one RTM_GETLINK dump."""
    out = []
    for kind, payload in rt.dump(RTM_GETLINK, IFINFO.pack(socket.AF_UNSPEC, 0, 0, 0, 0)):
        if kind == RTM_NEWLINK:
            name = _attrs(payload, IFINFO.size).get(IFLA_IFNAME, b"").rstrip(b"\0").decode(errors="replace")
            if name.startswith(prefix):
                out.append(name)
    return out


def _name(name: str) -> bytes:
    return attr(IFLA_IFNAME, name.encode() + b"\0")


def add_veth(rt: RawRtnl, host: str, master: int, peer: str, peer_pid: int) -> None:
    """A veth pair: `host` up on bridge `master` here, `peer` (down) made inside `peer_pid`'s netns."""
    # Asking for the peer up in the same message is refused (ENOTCONN): the pair is not joined yet.
    peer_msg = IFINFO.pack(socket.AF_UNSPEC, 0, 0, 0, 0) + _name(peer) + attr(
        IFLA_NET_NS_PID, struct.pack("=I", peer_pid))
    info = attr(IFLA_INFO_KIND, b"veth") + attr(IFLA_INFO_DATA, attr(VETH_INFO_PEER, peer_msg))
    body = IFINFO.pack(socket.AF_UNSPEC, 0, 0, IFF_UP, IFF_UP) + _name(host) + attr(
        IFLA_MASTER, struct.pack("=I", master)) + attr(IFLA_LINKINFO, info)
    rt.request(RTM_NEWLINK, NLM_F_CREATE | NLM_F_EXCL, body, f"cannot create veth pair {host}")


def set_link(rt: RawRtnl, index: int, up: bool = True, alias: str | None = None) -> None:
    """Bring a link up and optionally label it (ifalias)."""
    body = IFINFO.pack(socket.AF_UNSPEC, 0, index, IFF_UP if up else 0, IFF_UP)
    if alias is not None:
        body += attr(IFLA_IFALIAS, alias.encode())
    rt.request(RTM_NEWLINK, 0, body, f"cannot set link {index}")


def link_index(rt: RawRtnl, name: str) -> int | None:
    """The index of link `name`, None if there is none."""
    rt._seq = (rt._seq + 1) & 0xFFFFFFFF
    body = IFINFO.pack(socket.AF_UNSPEC, 0, 0, 0, 0) + _name(name)
    rt.sock.send(NLMSG.pack(NLMSG.size + len(body), RTM_GETLINK, NLM_F_REQUEST, rt._seq, 0) + body)
    while True:
        data = rt.sock.recv(65536)
        length, kind, _flags, seq, _pid = NLMSG.unpack_from(data, 0)
        if seq != rt._seq:
            continue
        if kind == NLMSG_ERROR:
            (code,) = struct.unpack_from("=i", data, NLMSG.size)
            if -code == errno.ENODEV:
                return None
            raise KernelError(f"cannot look up link {name}", -code or errno.EIO)
        return int(IFINFO.unpack_from(data, NLMSG.size)[2])


def add_address(rt: RawRtnl, index: int, address: str, prefixlen: int) -> None:
    """An IPv4 address on a link."""
    raw = socket.inet_aton(address)
    body = IFADDR.pack(socket.AF_INET, prefixlen, 0, 0, index) + attr(IFA_LOCAL, raw) + attr(IFA_ADDRESS, raw)
    rt.request(RTM_NEWADDR, NLM_F_CREATE | NLM_F_EXCL, body, f"cannot add address {address}")


def add_default_route(rt: RawRtnl, gateway: str) -> None:
    """The default IPv4 route via `gateway`."""
    body = RTMSG.pack(socket.AF_INET, 0, 0, 0, RT_TABLE_MAIN, RTPROT_BOOT, RT_SCOPE_UNIVERSE, RTN_UNICAST, 0)
    body += attr(RTA_GATEWAY, socket.inet_aton(gateway))
    rt.request(RTM_NEWROUTE, NLM_F_CREATE | NLM_F_EXCL, body, f"cannot add a default route via {gateway}")


RTM_DELADDR, RTM_DELROUTE = 21, 25
RTA_DST, RTA_OIF = 1, 4
RT_SCOPE_LINK = 253
NLM_F_REPLACE = 0x100


def host_route(rt: RawRtnl, add: bool, dst: str, oif: int = 0, gateway: str | None = None) -> None:
    """Add (replacing) or delete the route to the single address `dst`: on link `oif` or via `gateway`."""
    scope = RT_SCOPE_LINK if gateway is None else RT_SCOPE_UNIVERSE
    body = RTMSG.pack(socket.AF_INET, 32, 0, 0, RT_TABLE_MAIN, RTPROT_BOOT, scope, RTN_UNICAST, 0)
    body += attr(RTA_DST, socket.inet_aton(dst))
    if oif:
        body += attr(RTA_OIF, struct.pack("=I", oif))
    if gateway is not None:
        body += attr(RTA_GATEWAY, socket.inet_aton(gateway))
    if add:
        rt.request(RTM_NEWROUTE, NLM_F_CREATE | NLM_F_REPLACE, body, f"cannot add a route to {dst}")
    else:
        rt.request(RTM_DELROUTE, 0, body, f"cannot remove the route to {dst}")


def host_address(rt: RawRtnl, add: bool, index: int, address: str) -> None:
    """Add (if missing) or delete `address`/32 on a link."""
    raw = socket.inet_aton(address)
    body = IFADDR.pack(socket.AF_INET, 32, 0, 0, index) + attr(IFA_LOCAL, raw) + attr(IFA_ADDRESS, raw)
    if add:
        rt.request(RTM_NEWADDR, NLM_F_CREATE | NLM_F_REPLACE, body, f"cannot add address {address}")
    else:
        rt.request(RTM_DELADDR, 0, body, f"cannot remove address {address}")


RTM_DELNEIGH = 29
NDMSG = struct.Struct("=BxxxiHBB")
NDA_DST = 1


def forget_neighbour(rt: RawRtnl, index: int, address: str) -> None:
    """Drop the neighbour (ARP) entry of `address` on a link, if there is one."""
    body = NDMSG.pack(socket.AF_INET, index, 0, 0, 0) + attr(NDA_DST, socket.inet_aton(address))
    with contextlib.suppress(KernelError):  # none there: nothing to forget
        rt.request(RTM_DELNEIGH, 0, body, f"cannot forget neighbour {address}")
