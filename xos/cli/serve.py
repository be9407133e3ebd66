"""`xos serve ROLE`: every daemon, each with its flags."""

from __future__ import annotations

import argparse
import asyncio
from typing import Any

from xos import paths, units
from xos.errors import InvalidInput
from xos.paths import AEM_PORT, MRC_PORT, OSD_PORT


def _vo_urls(p: argparse.ArgumentParser) -> None:
    p.add_argument("--vo-url", action="append", default=[], dest="vo_urls",
                   help="VO service whose revocations to follow (repeatable): its revoked credentials are refused")


def add(sub: Any) -> None:
    """The `serve` command group."""
    serve = sub.add_parser("serve", help="run a daemon").add_subparsers(dest="role", required=True)
    sn = serve.add_parser("node", help="the node daemon: workspaces, accounting")
    sn.add_argument("--config", help="TOML file with a [node] table")
    sn.add_argument("--name", help="node name (default: host name)")
    sn.add_argument("--subnet", help="workspace subnet (default 198.19.0.0/22)")
    sn.add_argument("--bridge", help="bridge name (default xosbr0)")
    sn.add_argument("--cgroup", choices=["auto", "v1", "v2"], help="cgroup hierarchy (default auto)")
    sn.add_argument("--cgroup-root", help="the node's own cgroup (default xos.NAME)")
    sn.add_argument("--cpu", help="CPUs the node may hand out (default: all)")
    sn.add_argument("--memory", help="memory the node may hand out (default: all)")
    sn.add_argument("--bandwidth", help="bandwidth per direction it may hand out (default 10gbit)")
    sn.add_argument("--sample-interval", type=float, help="seconds between usage samples (default 5)")
    sn.add_argument("--pool", action="append", dest="pools", help="VO=FIRST-LAST UID range for a VO's leases")
    sn.add_argument("--static-map", help="file of 'VO USER ACCOUNT' lines")
    sn.add_argument("--vo-url", action="append", dest="vo_urls", help="VO service to follow for revocations")
    sn.add_argument("--listen", help="HOST:PORT of the peer API: migrations from other nodes")
    sn.add_argument("--host-dir", help="this host's key, certificate and the grid's CA (default $XOS_HOME/host)")
    sn.add_argument("--peer", action="append", dest="peers", help="NAME=URL of another node's peer API")
    sn.add_argument("--site", help="where the node is, for jobs' requirements")
    sn.add_argument("--price", help="price of a CPU-hour here, for ranking and accounting")
    sn.add_argument("--aem", action="append", dest="aem_urls", help="job manager URL to push this node's ad to")
    sn.add_argument("--ad-interval", type=float, help="seconds between pushes of an unchanged ad (default 10)")
    sn.add_argument("--peer-address", help="the peer API's URL for others (default: from --listen)")
    sn.set_defaults(run=node)

    sv = serve.add_parser("vo", help="the VO service: VOs, members, credentials, revocation")
    sv.add_argument("--listen", help="also serve revocations and keys to nodes on HOST:PORT")
    sv.set_defaults(run=vo)

    sa = serve.add_parser("aem", help="the job manager: jobs, node ads, matching, control")
    sa.add_argument("--listen", default=f"0.0.0.0:{AEM_PORT}", help=f"HOST:PORT (default 0.0.0.0:{AEM_PORT})")
    sa.add_argument("--trust", help="directory of trusted VO keys (default $XOS_HOME/trust)")
    sa.add_argument("--host-dir", help="this host's key, certificate (role aem) and the grid's CA "
                                        "(default $XOS_HOME/host)")
    sa.add_argument("--peer-listen", default="", help="HOST:PORT where nodes push their ads (TLS, node certificates)")
    sa.add_argument("--node", action="append", default=[], help="NAME=URL of a node's peer API")
    sa.add_argument("--poll", type=float, default=1.0, help="seconds between looks at nodes")
    sa.add_argument("--ad-ttl", type=float, default=30.0, help="seconds a node's ad lives without a refresh")
    sa.add_argument("--mrc", default="", help="the grid file system's MRC URL, for jobs' grid:// stdio")
    _vo_urls(sa)
    sa.add_argument("--max-output", type=units.parse_size, default=1 << 30,
                    help="largest stdout or stderr of a job kept (default 1G); the rest is cut and the job told")
    sa.set_defaults(run=aem)

    m = serve.add_parser("mrc", help="the grid file system's catalogue: volumes, namespace, replicas")
    m.add_argument("--listen", default=f"0.0.0.0:{MRC_PORT}", help=f"HOST:PORT (default 0.0.0.0:{MRC_PORT})")
    m.add_argument("--key", required=True, help="file with the key the MRC shares with its OSDs")
    m.add_argument("--trust", help="directory of trusted VO keys (default $XOS_HOME/trust)")
    m.add_argument("--grace", type=float, default=10.0, help="seconds before a silent OSD's replicas are rebuilt")
    m.add_argument("--idle", type=float, default=3600.0, help="seconds before an unread extra replica is dropped")
    m.add_argument("--cap-ttl", type=float, default=600.0, help="seconds a capability is good for (clients renew)")
    _vo_urls(m)
    m.set_defaults(run=fs)
    o = serve.add_parser("osd", help="a grid file system object store")
    o.add_argument("--id", required=True, help="the OSD's name")
    o.add_argument("--dir", required=True, help="where the objects live")
    o.add_argument("--listen", default=f"0.0.0.0:{OSD_PORT}", help=f"HOST:PORT (default 0.0.0.0:{OSD_PORT})")
    o.add_argument("--url", help="the URL clients reach it at (default http://LISTEN)")
    o.add_argument("--mrc", required=True, help="the MRC's URL")
    o.add_argument("--key", required=True, help="file with the key shared with the MRC")
    o.add_argument("--trust", help="directory of trusted VO keys (default $XOS_HOME/trust)")
    _vo_urls(o)
    o.set_defaults(run=fs)
    for p in serve.choices.values():
        p.add_argument("--log-level", default="INFO")


def node(args: argparse.Namespace) -> int:
    """`xos serve node`: flags over the TOML file over the defaults."""
    from xos import log
    from xos.node.config import NodeConfig
    from xos.node.daemon import serve_node

    log.setup(args.log_level)
    overrides = {k: getattr(args, k) for k in ("name", "subnet", "bridge", "cgroup", "cgroup_root", "cpu",
                                               "memory", "bandwidth", "sample_interval", "pools", "static_map",
                                               "vo_urls", "listen", "host_dir", "peers", "site", "price",
                                               "aem_urls", "ad_interval", "peer_address")}
    asyncio.run(serve_node(NodeConfig.load(args.config, overrides)))
    return 0


def vo(args: argparse.Namespace) -> int:
    """`xos serve vo`."""
    from xos import log
    from xos.vo.service import serve_vo

    log.setup(args.log_level)
    asyncio.run(serve_vo(paths.home(), paths.run_dir(), args.listen))
    return 0


def aem(args: argparse.Namespace) -> int:
    """`xos serve aem`."""
    from xos import log
    from xos.aem.api import serve_aem
    from xos.aem.service import AemConfig

    log.setup(args.log_level)
    nodes = {}
    for spec in args.node:
        name, sep, url = spec.partition("=")
        if not sep or not url.startswith(("http://", "https://")):
            raise InvalidInput(f"--node {spec!r} is not NAME=URL")
        nodes[name] = url.rstrip("/")
    asyncio.run(serve_aem(AemConfig(paths.home(), args.listen, args.trust or paths.trust_dir(),
                                    args.host_dir or paths.host_dir(), nodes, args.poll,
                                    args.ad_ttl, args.mrc, args.max_output, tuple(args.vo_urls), args.peer_listen)))
    return 0


def fs(args: argparse.Namespace) -> int:
    """`xos serve mrc|osd`, on the lean server's event loop."""
    from xos import log
    from xos.fs.capability import load_secret
    from xos.kernel import heap
    from xos.wire import lean

    log.setup(args.log_level)
    heap.keep_buffers()
    secret = load_secret(args.key)
    trust = args.trust or paths.trust_dir()
    if args.role == "mrc":
        from xos.fs.mrc.service import MrcConfig, serve_mrc

        lean.run(serve_mrc(MrcConfig(paths.home(), args.listen, secret, trust, grace=args.grace,
                                     idle=args.idle, cap_ttl=args.cap_ttl, vo_urls=tuple(args.vo_urls))))
    else:
        from xos.fs.osd.service import OsdConfig, serve_osd

        url = (args.url or f"http://{args.listen}").rstrip("/")
        lean.run(serve_osd(OsdConfig(args.id, args.dir, args.listen, url, args.mrc.rstrip("/"), secret, trust,
                                     tuple(args.vo_urls))))
    return 0
