"""`xos ca`, `xos host` and `xos service`: host identities, the CA that vouches for them, and the systemd
units that run the daemons."""

from __future__ import annotations

import argparse
import os
from typing import Any

from xos import paths, systemd
from xos.cli import common
from xos.errors import InvalidInput


def add(sub: Any) -> None:
    """The `host`, `ca` and `service` command groups."""
    host = sub.add_parser("host", help="this host's identity among the grid's hosts").add_subparsers(
        dest="verb", required=True)
    hi = host.add_parser("init", help="make this host's key and a certificate request (host.csr) for the CA")
    hi.add_argument("--name", required=True, help="the host's name in the grid (a node's --name)")
    hi.add_argument("--role", action="append", required=True, dest="roles", help="node, aem, vo, mrc or osd")
    hi.add_argument("--address", action="append", default=[], dest="addresses", help="an IP address it is reached at")
    hi.add_argument("--dir", help="the host directory (default $XOS_HOME/host)")
    hi.set_defaults(run=host_init)
    ht = host.add_parser("trust", help="trust the grid's CA for links to other hosts")
    ht.add_argument("ca_pem")
    ht.add_argument("--dir", help="the host directory (default $XOS_HOME/host)")
    ht.set_defaults(run=host_trust)

    ca = sub.add_parser("ca", help="the grid's certificate authority for host identities").add_subparsers(
        dest="verb", required=True)
    ci = ca.add_parser("init", help="make a CA: DIR/ca.key (keep it offline) and DIR/ca.pem")
    ci.add_argument("dir")
    ci.set_defaults(run=ca_init)
    cs = ca.add_parser("sign", help="sign a host's certificate request")
    cs.add_argument("csr")
    cs.add_argument("--ca", required=True, help="the CA's directory")
    cs.add_argument("--out", required=True, help="where the certificate goes (the host's host.pem)")
    cs.add_argument("--days", type=int, default=30, help="how long it is valid (default 30)")
    cs.set_defaults(run=ca_sign)
    cr = ca.add_parser("revoke", help="revoke a host's certificate: DIR/crl.pem lists every one revoked")
    cr.add_argument("cert", nargs="?", help="the certificate (a host's host.pem)")
    cr.add_argument("--serial", help="or its serial number, in hexadecimal")
    cr.add_argument("--ca", required=True, help="the CA's directory")
    cr.add_argument("--publish", action="store_true", help="hand the list to the VO service (see xos ca publish)")
    common.address(cr, "vo")
    cr.set_defaults(run=ca_revoke)
    cp = common.command_parser(ca, "publish", "hand a revocation list to the VO service: every host following it "
                               "refuses the certificates it names within seconds", ca_publish, "vo", data=False)
    cp.add_argument("crl", help="the CA's crl.pem")

    svc = sub.add_parser("service", help="systemd units for the daemons").add_subparsers(dest="verb", required=True)
    for verb, what in (("install", "write the unit of a daemon (flags in /etc/xos/ROLE.env: XOS_ARGS=...)"),
                       ("uninstall", "remove the unit of a daemon")):
        p = svc.add_parser(verb, help=what)
        p.add_argument("role", help="node, vo, aem, mrc or osd")
        p.add_argument("--unit-dir", default="/etc/systemd/system", help="where units go")
        p.set_defaults(run=service)


def ca_init(args: argparse.Namespace) -> int:
    """Make a CA."""
    from xos.wire import hostid

    print(hostid.ca_init(args.dir))
    return 0


def ca_sign(args: argparse.Namespace) -> int:
    """Sign a host's certificate request."""
    from xos.wire import hostid

    with open(args.csr, "rb") as f:
        pem = hostid.ca_sign(args.ca, f.read(1 << 16), args.days)
    with open(args.out, "wb") as f:
        f.write(pem)
    print(args.out)
    return 0


def ca_revoke(args: argparse.Namespace) -> int:
    """Revoke a host's certificate."""
    from xos.wire import hostid

    if (args.cert is None) == (args.serial is None):
        raise InvalidInput("name the certificate to revoke, or give --serial HEX (one of them)")
    if args.cert is not None:
        with open(args.cert, "rb") as f:
            path = hostid.ca_revoke(args.ca, f.read(1 << 16))
    else:
        try:
            serial = int(args.serial, 16)
        except ValueError:
            raise InvalidInput(f"--serial {args.serial!r} is not a hexadecimal number", field="serial") from None
        path = hostid.ca_revoke(args.ca, serial=serial)
    print(path)
    if args.publish:
        import asyncio

        args.crl = path
        return int(asyncio.run(ca_publish(args)))
    return 0


async def ca_publish(args: argparse.Namespace) -> int:
    """Hand a revocation list to the VO service."""
    from xos.vo.client import Client

    with open(args.crl) as f:
        pem = f.read(1 << 20)
    async with Client(args.vo_address) as vo:
        d = await vo.publish_crl(pem)
    print(f"revocation list {d['crl']} handed out")
    return 0


def host_init(args: argparse.Namespace) -> int:
    """Make this host's key and certificate request."""
    from xos.wire import hostid

    print(hostid.host_init(args.dir or paths.host_dir(), args.name, args.roles, args.addresses))
    return 0


def host_trust(args: argparse.Namespace) -> int:
    """Trust the grid's CA."""
    from xos.wire import hostid

    directory = args.dir or paths.host_dir()
    with open(args.ca_pem, "rb") as f:
        hostid.trust(directory, f.read(1 << 16))
    print(os.path.join(directory, "ca.pem"))
    return 0


def service(args: argparse.Namespace) -> int:
    """Install or remove a daemon's systemd unit."""
    if args.verb == "install":
        print(systemd.install(args.role, args.unit_dir))
    else:
        gone = systemd.uninstall(args.role, args.unit_dir)
        print(f"{systemd.unit_name(args.role)} {'removed' if gone else 'was not installed'}")
    return 0
