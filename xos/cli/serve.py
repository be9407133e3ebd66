"""`xos serve ROLE`: every daemon, each with its flags, and a TOML file per daemon (`--config`, by default
/etc/xos/ROLE.toml if there is one) whose [ROLE] table sets any of them; the command line wins."""

from __future__ import annotations

import argparse
import asyncio
import os
import tomllib
from typing import TYPE_CHECKING, Any

from xos import paths, units
from xos.errors import InvalidInput, XosError
from xos.paths import AEM_PORT, MRC_PORT, OSD_PORT

if TYPE_CHECKING:
    from xos.wire.hostid import HostIdentity


def _vo_urls(p: argparse.ArgumentParser) -> None:
    p.add_argument("--vo-url", action="append", default=[], dest="vo_urls",
                   help="VO service whose revocations to follow (repeatable): its revoked credentials are refused")


def add(sub: Any) -> None:
    """The `serve` command group."""
    serve = sub.add_parser("serve", help="run a daemon").add_subparsers(dest="role", required=True)
    sn = serve.add_parser("node", help="the node daemon: workspaces, accounting")
    sn.add_argument("--config", help="TOML file with a [node] table (default /etc/xos/node.toml if it exists)")
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
    sn.add_argument("--db", help="where workspaces and usage are kept: a SQLite path (default $XOS_HOME/node.db) "
                                 "or postgresql://USER@HOST/DB")
    sn.add_argument("--peer", action="append", dest="peers", help="NAME=URL of another node's peer API")
    sn.add_argument("--site", help="where the node is, for jobs' requirements")
    sn.add_argument("--price", help="price of a CPU-hour here, for ranking and accounting")
    sn.add_argument("--aem", action="append", dest="aem_urls", help="job manager URL to push this node's ad to")
    sn.add_argument("--ad-interval", type=float, help="seconds between pushes of an unchanged ad (default 10)")
    sn.add_argument("--peer-address", help="the peer API's URL for others (default: from --listen)")
    sn.set_defaults(run=node)

    sv = serve.add_parser("vo", help="the VO service: VOs, members, credentials, revocation")
    sv.add_argument("--listen", help="also serve revocations, member lists and keys to other hosts on HOST:PORT, "
                                     "over TLS with this host's certificate (role vo)")
    sv.add_argument("--host-dir", help="this host's key, certificate and the grid's CA (default $XOS_HOME/host)")
    sv.add_argument("--db", help="where VOs, members and revocations are kept: a SQLite path (default "
                                 "$XOS_HOME/vo.db) or postgresql://USER@HOST/DB")
    sv.add_argument("--plaintext", action="store_true",
                    help="plain HTTP on --listen: refused unless $XOS_INSECURE_TESTS=1")
    sv.set_defaults(run=vo)

    sa = serve.add_parser("aem", help="the job manager: jobs, node ads, matching, control")
    sa.add_argument("--listen", default=f"0.0.0.0:{AEM_PORT}", help=f"HOST:PORT (default 0.0.0.0:{AEM_PORT})")
    sa.add_argument("--trust", help="directory of trusted VO keys (default $XOS_HOME/trust)")
    sa.add_argument("--host-dir", help="this host's key, certificate (role aem) and the grid's CA "
                                        "(default $XOS_HOME/host)")
    sa.add_argument("--peer-listen", default="", help="HOST:PORT where nodes push their ads (TLS, node certificates)")
    sa.add_argument("--db", default="", help="where jobs are kept: a SQLite path (default $XOS_HOME/aem/jobs.db) "
                                             "or postgresql://USER@HOST/DB")
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
    m.add_argument("--key", help="(needed) file with the MRC's own key (0600): it seals capabilities, and each "
                                 "OSD is given a key derived from it for its own seals")
    m.add_argument("--trust", help="directory of trusted VO keys (default $XOS_HOME/trust)")
    m.add_argument("--grace", type=float, default=10.0, help="seconds before a silent OSD's replicas are rebuilt")
    m.add_argument("--idle", type=float, default=3600.0, help="seconds before an unread extra replica is dropped")
    m.add_argument("--cap-ttl", type=float, default=600.0, help="seconds a capability is good for (clients renew)")
    m.add_argument("--db", default="", help="where the catalogue is kept: a SQLite path (default $XOS_HOME/mrc.db) "
                                            "or postgresql://USER@HOST/DB")
    _vo_urls(m)
    m.set_defaults(run=fs)
    o = serve.add_parser("osd", help="a grid file system object store")
    o.add_argument("--id", help="the OSD's name (default: the name its host certificate gives)")
    o.add_argument("--dir", help="(needed) where the objects live")
    o.add_argument("--listen", default=f"0.0.0.0:{OSD_PORT}", help=f"HOST:PORT (default 0.0.0.0:{OSD_PORT})")
    o.add_argument("--url", help="the URL clients reach it at (default https://LISTEN)")
    o.add_argument("--mrc", help="(needed) the MRC's URL")
    o.add_argument("--trust", help="directory of trusted VO keys (default $XOS_HOME/trust)")
    _vo_urls(o)
    o.set_defaults(run=fs)
    for p in (m, o):
        p.add_argument("--host-dir", help="this host's key, certificate (role mrc or osd) and the grid's CA "
                                          "(default $XOS_HOME/host): every link is TLS with it")
        p.add_argument("--plaintext", action="store_true",
                       help="plain HTTP, to measure what TLS costs: refused unless $XOS_INSECURE_TESTS=1")
    for role, p in serve.choices.items():
        p.add_argument("--log-level", default="INFO")
        if role != "node":  # the node's file is read by NodeConfig (its [node] table), flags over it
            p.add_argument("--config", help=f"TOML file with a [{role}] table of these options "
                                             f"(default {CONFIG_DIR}/{role}.toml if it exists)")
        p.set_defaults(parser=p)


CONFIG_DIR = "/etc/xos"


def configured(args: argparse.Namespace, role: str) -> argparse.Namespace:
    """`args` with what the daemon's TOML file sets wherever the command line did not: every option by its
    name (`peer_listen = "0.0.0.0:7301"`, `vo_urls = [...]`), strings through the option's own parser."""
    path = getattr(args, "config", None) or os.path.join(CONFIG_DIR, f"{role}.toml")
    if not getattr(args, "config", None) and not os.path.exists(path):
        return args
    try:
        with open(path, "rb") as f:
            table = tomllib.load(f).get(role, {})
    except FileNotFoundError:
        raise InvalidInput(f"configuration file {path} does not exist") from None
    except (OSError, tomllib.TOMLDecodeError) as e:
        raise InvalidInput(f"configuration file {path} cannot be read: {e}") from None
    if not isinstance(table, dict):
        raise InvalidInput(f"configuration file {path}: [{role}] must be a table")
    parser: argparse.ArgumentParser = args.parser
    actions = {a.dest: a for a in parser._actions if a.option_strings and a.dest not in ("help", "config")}
    unknown = sorted(set(table) - set(actions))
    if unknown:
        raise InvalidInput(f"configuration file {path}: unknown {role} option(s) {', '.join(unknown)} "
                           f"(known: {', '.join(sorted(actions))})")
    argv = getattr(args, "argv", None) or []
    given = {a.dest for a in actions.values()
             if any(w == o or w.startswith(o + "=") for o in a.option_strings for w in argv)}
    for dest, value in table.items():
        if dest in given:
            continue
        action = actions[dest]
        many = isinstance(action, argparse._AppendAction)
        values = value if many and isinstance(value, list) else [value]
        if (many and not isinstance(value, list)) or any(isinstance(v, (list, dict)) for v in values):
            raise InvalidInput(f"configuration file {path}: {dest} must be "
                               f"{'a list' if many else 'one value'}")
        try:
            convert = action.type if callable(action.type) else None
            parsed = [convert(v) if convert is not None and isinstance(v, str) else v for v in values]
        except (ValueError, TypeError, XosError) as e:
            raise InvalidInput(f"configuration file {path}: {dest} = {value!r}: {e}") from None
        setattr(args, dest, parsed if many else parsed[0])
    return args


def node(args: argparse.Namespace) -> int:
    """`xos serve node`: flags over the TOML file over the defaults."""
    from xos import log
    from xos.node.config import NodeConfig
    from xos.node.daemon import serve_node

    log.setup(args.log_level)
    overrides = {k: getattr(args, k) for k in ("name", "subnet", "bridge", "cgroup", "cgroup_root", "cpu",
                                               "memory", "bandwidth", "sample_interval", "pools", "static_map",
                                               "vo_urls", "listen", "host_dir", "peers", "site", "price",
                                               "aem_urls", "ad_interval", "peer_address", "db")}
    default = os.path.join(CONFIG_DIR, "node.toml")
    asyncio.run(serve_node(NodeConfig.load(args.config or (default if os.path.exists(default) else None), overrides)))
    return 0


def vo(args: argparse.Namespace) -> int:
    """`xos serve vo`."""
    args = configured(args, "vo")
    from xos import log
    from xos.vo.service import serve_vo

    tls = _tls_identity(args, "vo") if args.listen else None
    log.setup(args.log_level)
    asyncio.run(serve_vo(paths.home(), paths.run_dir(), args.listen,
                         tls.server_context(users=True) if tls is not None else None,
                         tls.directory if tls is not None else None, args.db))
    return 0


def aem(args: argparse.Namespace) -> int:
    """`xos serve aem`."""
    args = configured(args, "aem")
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
                                    args.ad_ttl, args.mrc, args.max_output, tuple(args.vo_urls), args.peer_listen,
                                    args.db)))
    return 0


def fs(args: argparse.Namespace) -> int:
    """`xos serve mrc|osd`, on the lean server's event loop."""
    args = configured(args, args.role)
    needed = ("key",) if args.role == "mrc" else ("dir", "mrc")
    missing = [f"--{n}" for n in needed if not getattr(args, n)]
    if missing:
        raise InvalidInput(f"xos serve {args.role} needs {', '.join(missing)} (on the command line or in its "
                           f"configuration file's [{args.role}] table)")
    tls = _tls_identity(args, args.role)
    if args.role == "osd":
        if tls is not None and args.id and args.id != tls.name:
            raise InvalidInput(f"--id {args.id} is not the name of this host's certificate ({tls.name})", field="id")
        args.id = tls.name if tls is not None else args.id
        if not args.id:
            raise InvalidInput("xos serve osd --plaintext needs --id (with TLS, its certificate names it)", field="id")
    from xos import log
    from xos.fs.capability import load_secret
    from xos.kernel import heap
    from xos.wire import lean

    log.setup(args.log_level)
    heap.keep_buffers()
    trust = args.trust or paths.trust_dir()
    if args.role == "mrc":
        from xos.fs.mrc.service import MrcConfig, serve_mrc

        lean.run(serve_mrc(MrcConfig(paths.home(), args.listen, load_secret(args.key), trust, grace=args.grace,
                                     idle=args.idle, cap_ttl=args.cap_ttl, vo_urls=tuple(args.vo_urls), tls=tls,
                                     db=args.db)))
    else:
        from xos.fs.osd.service import OsdConfig, serve_osd

        url = (args.url or f"{'https' if tls else 'http'}://{args.listen}").rstrip("/")
        lean.run(serve_osd(OsdConfig(args.id, args.dir, args.listen, url, args.mrc.rstrip("/"), trust,
                                     tuple(args.vo_urls), tls=tls)))
    return 0


def _tls_identity(args: argparse.Namespace, role: str) -> HostIdentity | None:
    """The host identity an MRC, OSD or VO service serves TLS with; None with --plaintext (in tests only)."""
    from xos.wire.hostid import HostIdentity

    if args.plaintext:
        if os.environ.get("XOS_INSECURE_TESTS") != "1":
            raise InvalidInput("--plaintext sends credentials and file contents in clear: it is only for measuring "
                               "what TLS costs, in tests (XOS_INSECURE_TESTS=1)", field="plaintext")
        return None
    tls = HostIdentity(args.host_dir or paths.host_dir())
    if role not in tls.roles:
        raise InvalidInput(f"this host's certificate ({tls.name}: {', '.join(tls.roles) or 'no role'}) does not "
                           f"give it the {role} role", field="host-dir")
    return tls
