"""`xos node`: this node (its daemon, its trusted VOs, its PAM and NSS modules) and `xos node ls`, the nodes
a job manager knows."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from xos import paths, units
from xos.cli import common
from xos.errors import InvalidInput


def add(sub: Any) -> None:
    """The `node` command group, and `nodes`, the old spelling of `node ls`."""
    node = sub.add_parser("node", help="this node, and the nodes a job manager knows").add_subparsers(
        dest="verb", required=True)
    for name, hlp in (("info", "capacity and allocations"),
                      ("ad", "the node's ClassAd, as a job manager matches jobs against it")):
        p = node.add_parser(name, help=hlp)
        common.address(p, "node")
        common.json_flag(p)
        p.set_defaults(run=run)
    o = node.add_parser("offer", help="change what the node hands out while it runs (jobs over it move away)")
    o.add_argument("--cpu", help="CPUs offered, e.g. 1.5")
    o.add_argument("--memory", help="memory offered, e.g. 4G")
    common.address(o, "node")
    common.json_flag(o)
    o.set_defaults(run=run)
    m = node.add_parser("metrics", help="Prometheus metrics")
    common.address(m, "node")
    m.set_defaults(run=run)
    t = node.add_parser("trust", help="trust a VO's signing key (no restart needed)")
    t.add_argument("vo")
    t.add_argument("keyfile")
    t.set_defaults(run=trust)
    node.add_parser("untrust", help="stop trusting a VO").add_argument("vo")
    node.choices["untrust"].set_defaults(run=trust)
    node.add_parser("doctor", help="what this machine can do: cgroups, checkpoint (CRIU)").set_defaults(run=doctor)
    node.add_parser("install", help="install the PAM and NSS modules (/etc/pam.d/xos, nsswitch.conf)").set_defaults(
        run=install)
    node.add_parser("uninstall", help="undo exactly what install did").set_defaults(run=install)
    for parent, name, hlp in ((node, "ls", "the nodes the job manager knows, matching an expression, best first"),
                              (sub, "nodes", common.old_spelling("xos node ls"))):
        p = parent.add_parser(name, help=hlp)
        p.add_argument("--constraint", help='a ClassAd expression, e.g. Memory >= 4096 && Site == "b"')
        p.add_argument("--rank", help="a ClassAd expression to order by, e.g. -Price")
        common.json_flag(p)
        common.address(p, "aem")
        common.cred(p)
        common.ca(p)
        p.set_defaults(run=ls)


def _info(d: dict[str, Any]) -> None:
    cap, used = d["capacity"], d["allocated"]
    print(f"{d['name']}: cgroup {d['cgroup']}, subnet {d['subnet']}, bridge {d['bridge']}, "
          f"{d['workspaces']} workspace(s)")
    print(f"  offers     cpu={cap['cpu']:g} memory={units.format_size(cap['memory'])} "
          f"bandwidth={units.format_rate(cap['bandwidth'])} each way")
    print(f"  allocated  cpu={used['cpu']:g} memory={units.format_size(used['memory'])} "
          f"egress={units.format_rate(used['egress'])} ingress={units.format_rate(used['ingress'])}")
    ck = d["checkpoint"]
    print("  checkpoint " + (f"CRIU {ck['criu']}" if ck.get("available") else f"unavailable: {ck.get('reason')}"))


def _ad(d: dict[str, Any]) -> None:
    for k, v in sorted(d.items()):  # ClassAd text: Name = value
        print(f"{k} = {json.dumps(v)}")


async def run(args: argparse.Namespace) -> int:
    """info, ad, offer, metrics: questions to the node daemon."""
    from xos.node.client import Client

    async with Client(common.node_socket(args)) as node:
        if args.verb == "info":
            return common.emit(args, await node.info(), _info)
        if args.verb == "ad":
            return common.emit(args, await node.ad(), _ad)
        if args.verb == "offer":
            info = await node.offer(args.cpu, args.memory)
            cap, used = info["capacity"], info["allocated"]
            return common.emit(args, info, common.say(
                f"offers cpu={cap['cpu']:g} memory={units.format_size(cap['memory'])}; "
                f"allocated cpu={used['cpu']:g} memory={units.format_size(used['memory'])}"))
        sys.stdout.write(await node.metrics())
        return 0


def trust(args: argparse.Namespace) -> int:
    """trust, untrust: the VO keys this node believes."""
    from xos.identity import credential

    store = credential.TrustStore(common.trust_dir())
    if args.verb == "untrust":
        print(f"VO {args.vo} {'no longer trusted' if store.untrust(args.vo) else 'was not trusted'}")
        return 0
    try:
        with open(args.keyfile, "rb") as f:
            pem = f.read(65536)
    except OSError as e:
        raise InvalidInput(f"cannot read key file {args.keyfile}: {e}") from None
    print(f"VO {args.vo} trusted (key id {store.trust(args.vo, pem)})")
    return 0


def install(args: argparse.Namespace) -> int:
    """install, uninstall: the PAM and NSS modules."""
    from xos.identity import install as modules

    if args.verb == "install":
        sock = paths.idmap_socket()
        rec = modules.install(paths.home(), None if sock == "/run/xos/idmap.sock" else sock)
        print("installed: " + ", ".join(rec["files"]) + (", nsswitch.conf" if rec["nsswitch"] else ""))
    else:
        print("removed: " + (", ".join(modules.uninstall(paths.home())) or "nothing"))
    return 0


def doctor(args: argparse.Namespace) -> int:
    """What this machine can do; exit 1 if it cannot run workspaces or checkpoints."""
    from xos.kernel.cgroup import detect
    from xos.node.accounting import checkpoint_ad

    ok = True
    try:
        print(f"cgroups: {detect().name}")
    except Exception as e:  # noqa: BLE001 - a doctor reports every failure, whatever it is
        print(f"cgroups: unusable: {e}")
        ok = False
    ad = checkpoint_ad()
    if ad["available"]:
        print(f"checkpoint: available, CRIU {ad['criu']} on kernel {ad['kernel']} ({ad['arch']})")
        print("live migration: " + ("available" if ad["live_migration"] else
                                    "unavailable: the kernel does not track dirty memory (CONFIG_MEM_SOFT_DIRTY)"))
    else:
        print(f"checkpoint: unavailable: {ad['reason']}")
        ok = False
    return 0 if ok else 1


def _nodes(found: list[dict[str, Any]]) -> None:
    print(f"{'NAME':<16} {'SITE':<6} {'CPUS':>6} {'MEMORY':>8} {'PRICE':>7} {'LOAD':>5}  RANK")
    for x in found:
        a = x["ad"]
        print(f"{x['name']:<16} {a.get('Site', ''):<6} {a.get('Cpus', 0):>6g} {a.get('Memory', 0):>7}M "
              f"{a.get('Price', 0):>7g} {a.get('LoadAvg', 0):>5g}  {x.get('rank', '')}")


async def ls(args: argparse.Namespace) -> int:
    """The nodes the job manager knows, or those matching --constraint, best --rank first."""
    from xos.aem.client import Client as JobManager

    async with JobManager(args.aem_address, common.token(args) or "", ca=args.ca) as jm:
        return common.emit(args, await jm.nodes(args.constraint, args.rank), _nodes)
