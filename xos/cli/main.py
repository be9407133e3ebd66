"""The `xos` command: daemons (`xos serve ROLE`) and the user-facing verbs."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import threading
import time
from collections.abc import AsyncIterator, Callable
from typing import Any, NoReturn

from xos import paths, units
from xos.cli import fs as fs_cli
from xos.errors import InvalidInput, NotFound, XosError

ALLOC_FLAGS = ("cpu", "memory", "pids", "egress", "ingress")


def _alloc_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--cpu", help="CPUs, e.g. 0.25 or 2")
    p.add_argument("--memory", help="memory with units, e.g. 512M")
    p.add_argument("--pids", help="most processes at once")
    p.add_argument("--egress", help="outgoing bandwidth, e.g. 20mbit")
    p.add_argument("--ingress", help="incoming bandwidth, e.g. 20mbit")


def _alloc(args: argparse.Namespace) -> dict[str, Any]:
    return {k: getattr(args, k) for k in ALLOC_FLAGS if getattr(args, k) is not None}


def _command(args: argparse.Namespace) -> list[str]:
    cmd = list(args.command or [])
    if not cmd:
        raise InvalidInput("no command given: write it after --")
    return cmd


class _Parser(argparse.ArgumentParser):
    """argparse with usage errors as one line and a stable code, like every other xos error."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"xos: error usage: {self.prog}: {message} (see {self.prog} --help)\n")


def parser() -> argparse.ArgumentParser:
    """The whole command line."""
    p = _Parser(prog="xos", description="xos: a grid operating-system layer for Linux")
    p.add_argument("--socket", help="node daemon socket (default $XOS_RUN/node.sock)")
    sub = p.add_subparsers(dest="area", required=True)

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
    sn.add_argument("--log-level", default="INFO")

    fs_cli.add_serve(serve)
    sa = serve.add_parser("aem", help="the job manager: jobs, node ads, matching, control")
    sa.add_argument("--listen", default="0.0.0.0:7300", help="HOST:PORT (default 0.0.0.0:7300)")
    sa.add_argument("--trust", help="directory of trusted VO keys (default $XOS_HOME/trust)")
    sa.add_argument("--host-dir", help="this host's key, certificate (role aem) and the grid's CA "
                                        "(default $XOS_HOME/host)")
    sa.add_argument("--peer-listen", default="", help="HOST:PORT where nodes push their ads (TLS, node certificates)")
    sa.add_argument("--node", action="append", default=[], help="NAME=URL of a node's peer API")
    sa.add_argument("--poll", type=float, default=1.0, help="seconds between looks at nodes")
    sa.add_argument("--ad-ttl", type=float, default=30.0, help="seconds a node's ad lives without a refresh")
    sa.add_argument("--mrc", default="", help="the grid file system's MRC URL, for jobs' grid:// stdio")
    sa.add_argument("--vo-url", action="append", default=[], dest="vo_urls",
                    help="VO service whose revocations to follow (repeatable): its revoked credentials are refused")
    sa.add_argument("--max-output", type=units.parse_size, default=1 << 30,
                    help="largest stdout or stderr of a job kept (default 1G); the rest is cut and the job told")
    sa.add_argument("--log-level", default="INFO")
    sv = serve.add_parser("vo", help="the VO service: VOs, members, credentials, revocation")
    sv.add_argument("--listen", help="also serve revocations and keys to nodes on HOST:PORT")
    sv.add_argument("--log-level", default="INFO")

    fs_cli.add_verbs(sub)
    nd = sub.add_parser("nodes", help="nodes the job manager knows, matching an expression, best first")
    nd.add_argument("--constraint", help='a ClassAd expression, e.g. Memory >= 4096 && Site == "b"')
    nd.add_argument("--rank", help="a ClassAd expression to order by, e.g. -Price")
    nd.add_argument("--json", action="store_true")
    nd.add_argument("--aem", default=os.environ.get("XOS_AEM", "https://localhost:7300"))
    nd.add_argument("--cred", help="credential file (default $XOS_CREDENTIAL)")
    nd.add_argument("--ca", help="the grid's CA certificate (default $XOS_CA or $XOS_HOME/host/ca.pem)")
    acct = sub.add_parser("acct", help="accounting of jobs").add_subparsers(dest="verb", required=True)
    ar = acct.add_parser("report", help="usage and cost per VO, user and node")
    ar.add_argument("--vo")
    ar.add_argument("--user")
    ar.add_argument("--since", help="a duration back from now (e.g. 24h) or seconds since the epoch")
    ar.add_argument("--json", action="store_true")
    ar.add_argument("--aem", default=os.environ.get("XOS_AEM", "https://localhost:7300"))
    ar.add_argument("--cred", help="credential file (default $XOS_CREDENTIAL)")
    ar.add_argument("--ca", help="the grid's CA certificate (default $XOS_CA or $XOS_HOME/host/ca.pem)")
    job = sub.add_parser("job", help="jobs on the grid").add_subparsers(dest="verb", required=True)
    jr = job.add_parser("run", help="run a command as a job (after --), wait, print its output, exit with its status")
    jr.add_argument("--cpus", default="1")
    jr.add_argument("--memory", default="256M")
    jr.add_argument("--walltime")
    jr.add_argument("--requirements", default="true")
    jr.add_argument("--rank", default="0")
    jr.add_argument("--aem", default=os.environ.get("XOS_AEM", "https://localhost:7300"))
    jr.add_argument("--cred", help="credential file (default $XOS_CREDENTIAL)")
    jr.add_argument("--ca", help="the grid's CA certificate (default $XOS_CA or $XOS_HOME/host/ca.pem)")
    for verb, hlp in (("submit", "submit a job description (JSON or YAML)"), ("ls", "your jobs"),
                      ("status", "a job's state, node and history"), ("output", "a finished job's output"),
                      ("watch", "follow jobs until they end (exit 0 if all are done)"),
                      ("purge", "forget a finished job and its output (its usage records stay)"),
                      *((v, f"{v} a job") for v in ("hold", "release", "suspend", "resume", "cancel",
                                                     "checkpoint", "migrate"))):
        jp = job.add_parser(verb, help=hlp)
        if verb == "submit":
            jp.add_argument("file")
            jp.add_argument("--wait-for-match", action="store_true", help="queue it even if no node matches now")
        elif verb == "ls":
            jp.add_argument("--state")
            jp.add_argument("--json", action="store_true")
        elif verb == "watch":
            jp.add_argument("ids", nargs="+")
        elif verb == "migrate":
            jp.add_argument("id")
            jp.add_argument("--to", help="the node (default: the best other node that matches)")
            jp.add_argument("--live", action="store_true", help="stop it only briefly (see xos ws migrate --live)")
        elif verb == "output":
            jp.add_argument("id")
            jp.add_argument("--stderr", action="store_true", help="its stderr (when it asked for one of its own)")
            jp.add_argument("-f", "--follow", action="store_true", help="follow it while the job runs")
        else:
            jp.add_argument("id")
        jp.add_argument("--aem", default=os.environ.get("XOS_AEM", "https://localhost:7300"),
                       help="the job manager's URL (default $XOS_AEM or https://localhost:7300)")
        jp.add_argument("--cred", help="credential file (default $XOS_CREDENTIAL)")
        jp.add_argument("--ca", help="the grid's CA certificate (default $XOS_CA or $XOS_HOME/host/ca.pem)")
    sub.add_parser("init", help="make this host's VO signing key ($XOS_HOME/vo/signing.key)")

    ca = sub.add_parser("ca", help="the grid's certificate authority for host identities").add_subparsers(
        dest="verb", required=True)
    ca.add_parser("init", help="make a CA: DIR/ca.key (keep it offline) and DIR/ca.pem").add_argument("dir")
    cs = ca.add_parser("sign", help="sign a host's certificate request")
    cs.add_argument("csr")
    cs.add_argument("--ca", required=True, help="the CA's directory")
    cs.add_argument("--out", required=True, help="where the certificate goes (the host's host.pem)")
    cs.add_argument("--days", type=int, default=30, help="how long it is valid (default 30)")
    host = sub.add_parser("host", help="this host's identity among the grid's hosts").add_subparsers(
        dest="verb", required=True)
    hi = host.add_parser("init", help="make this host's key and a certificate request (host.csr) for the CA")
    hi.add_argument("--name", required=True, help="the host's name in the grid (a node's --name)")
    hi.add_argument("--role", action="append", required=True, dest="roles", help="node, aem, vo, mrc or osd")
    hi.add_argument("--address", action="append", default=[], dest="addresses", help="an IP address it is reached at")
    hi.add_argument("--dir", help="the host directory (default $XOS_HOME/host)")
    svc = sub.add_parser("service", help="systemd units for the daemons").add_subparsers(dest="verb", required=True)
    for verb, what in (("install", "write the unit of a daemon (flags in /etc/xos/ROLE.env: XOS_ARGS=...)"),
                       ("uninstall", "remove the unit of a daemon")):
        sp = svc.add_parser(verb, help=what)
        sp.add_argument("role", help="node, vo, aem, mrc or osd")
        sp.add_argument("--unit-dir", default="/etc/systemd/system", help="where units go")
    ht = host.add_parser("trust", help="trust the grid's CA for links to other hosts")
    ht.add_argument("ca_pem")
    ht.add_argument("--dir", help="the host directory (default $XOS_HOME/host)")

    vo = sub.add_parser("vo", help="virtual organizations").add_subparsers(dest="verb", required=True)
    v = vo.add_parser("create", help="form a VO")
    v.add_argument("vo")
    v.add_argument("--owner", default="root")
    v.add_argument("--ttl", help="lifetime of the VO, e.g. 30d")
    v = vo.add_parser("add", help="add a member, or change their roles")
    v.add_argument("vo")
    v.add_argument("user")
    v.add_argument("--role", action="append", dest="roles")
    v.add_argument("--group", action="append", dest="groups")
    v = vo.add_parser("remove", help="remove a member (their credentials are revoked)")
    v.add_argument("vo")
    v.add_argument("user")
    v = vo.add_parser("issue", help="print a credential for a member")
    v.add_argument("vo")
    v.add_argument("user")
    v.add_argument("--ttl", default="12h")
    v = vo.add_parser("revoke", help="revoke a credential, or all of a member's")
    v.add_argument("--jti")
    v.add_argument("vo", nargs="?")
    v.add_argument("user", nargs="?")
    v = vo.add_parser("ls", help="VOs and members")
    v.add_argument("--json", action="store_true")
    vo.add_parser("dissolve", help="dissolve a VO").add_argument("vo")
    vo.add_parser("pubkey", help="print the key that signs a VO's credentials").add_argument("vo")

    cred = sub.add_parser("cred", help="credentials").add_subparsers(dest="verb", required=True)
    cred.add_parser("show", help="decode and verify a credential").add_argument("file", nargs="?")

    ws = sub.add_parser("ws", help="workspaces").add_subparsers(dest="verb", required=True)
    c = ws.add_parser("create", help="create a workspace")
    c.add_argument("name")
    _alloc_args(c)
    c.add_argument("--uid", type=int)
    c.add_argument("--gid", type=int)
    c.add_argument("--vo", help="run as the account this VO's --user maps to on this node")
    c.add_argument("--user", help="grid user (with --vo)")
    c.add_argument("--cred", metavar="FILE", help="run as this credential's owner, the credential in each "
                   "process's session keyring ('-': stdin)")
    c.add_argument("--out", metavar="NAME", help="with a main program (after --): its output file in the "
                   "workspace directory")
    c.add_argument("--grid", action="append", metavar="MRC_URL/VOLUME",
                   help="mount a grid volume at /run/xos-work/grid/VOLUME with --cred (kept across migration)")
    e = ws.add_parser("exec", help="run a command in a workspace (after --), stdin and output streamed")
    e.add_argument("name")
    e.add_argument("-n", "--no-stdin", action="store_true", help="give the command an empty stdin")
    r = ws.add_parser("run", help="create, run a command, destroy")
    r.add_argument("name")
    _alloc_args(r)
    r.add_argument("--uid", type=int)
    r.add_argument("--gid", type=int)
    r.add_argument("--cred", metavar="FILE", help="as with create")
    cp = ws.add_parser("checkpoint", help="dump a workspace's main program tree into an image file")
    cp.add_argument("name")
    cp.add_argument("--out", required=True, metavar="IMAGE")
    cp.add_argument("--leave-running", action="store_true", help="keep the workspace running afterwards")
    rs = ws.add_parser("restore", help="restore an image file as a workspace")
    rs.add_argument("image")
    rs.add_argument("--name", help="a new name (default: the one it had)")
    mg = ws.add_parser("migrate", help="move a workspace to another node (stop-and-copy)")
    mg.add_argument("name")
    mg.add_argument("--to", required=True, metavar="NODE", help="a peer's name or its peer API URL")
    mg.add_argument("--live", action="store_true",
                    help="stop it only briefly: pre-dump rounds while it runs (kernels tracking dirty memory), "
                         "or run it at the target at once while its memory follows (userfaultfd)")
    s = ws.add_parser("set", help="renegotiate the allocation; periodic checkpoints")
    s.add_argument("name")
    _alloc_args(s)
    s.add_argument("--checkpoint-every", metavar="DURATION", help="checkpoint periodically (e.g. 10m; 0 stops)")
    s.add_argument("--keep", type=int, help="periodic checkpoints kept (newest; default 3)")
    st = ws.add_parser("stat", help="allocation, usage, address, state")
    st.add_argument("name")
    st.add_argument("--json", action="store_true")
    for verb in ("freeze", "thaw", "kill", "rm"):
        ws.add_parser(verb).add_argument("name")
    ls = ws.add_parser("ls", help="list workspaces")
    ls.add_argument("--json", action="store_true")
    u = ws.add_parser("usage", help="usage records, also of destroyed workspaces")
    u.add_argument("name", nargs="?")
    u.add_argument("--json", action="store_true")

    node = sub.add_parser("node", help="this node").add_subparsers(dest="verb", required=True)
    node.add_parser("info", help="capacity and allocations")
    node.add_parser("ad", help="the node's ClassAd, as a job manager matches jobs against it")
    o = node.add_parser("offer", help="change what the node hands out while it runs (jobs over it move away)")
    o.add_argument("--cpu", help="CPUs offered, e.g. 1.5")
    o.add_argument("--memory", help="memory offered, e.g. 4G")
    node.add_parser("metrics", help="Prometheus metrics")
    t = node.add_parser("trust", help="trust a VO's signing key (no restart needed)")
    t.add_argument("vo")
    t.add_argument("keyfile")
    node.add_parser("untrust", help="stop trusting a VO").add_argument("vo")
    node.add_parser("doctor", help="what this machine can do: cgroups, checkpoint (CRIU)")
    node.add_parser("install", help="install the PAM and NSS modules (/etc/pam.d/xos, nsswitch.conf)")
    node.add_parser("uninstall", help="undo exactly what install did")
    return p


def _print_stat(d: dict[str, Any]) -> None:
    a = d["allocation"]
    k = d.get("kernel", {})
    u = d["usage"]
    print(f"{d['name']}  {d['state']}  {d['address']}  uid={d['uid']} gid={d['gid']}  id={d['id']}")
    print(f"  allocation  cpu={a['cpu']:g} memory={units.format_size(a['memory'])} pids={a['pids']} "
          f"egress={units.format_rate(a['egress'])} ingress={units.format_rate(a['ingress'])}")
    if k:
        print(f"  kernel      cpu={k['cpu']} memory={k['memory']} pids={k['pids']} egress={k['egress']} "
              f"ingress={k['ingress']}  processes={d.get('processes', 0)}")
    print(f"  usage       cpu={u['cpu_seconds']:.2f}s memory_peak={units.human_size(u['memory_peak'])} "
          f"in={u['bytes_in']}B out={u['bytes_out']}B oom_kills={u['oom_kills']} wall={u['wall_seconds']:.1f}s")
    cp = d.get("checkpointing")
    if cp:
        print(f"  checkpoint  every {cp['every']:g}s, keeping {cp['keep']}: {len(cp.get('images', []))} image(s)"
              + (f", newest {cp['images'][-1]}" if cp.get("images") else ""))


def _write(stream: Any) -> Callable[[bytes], None]:
    def sink(data: bytes) -> None:
        stream.buffer.write(data)
        stream.buffer.flush()
    return sink


def _trust_dir() -> str:
    return paths.trust_dir()


def _init() -> int:
    from xos.identity import credential

    path = os.path.join(paths.home(), "vo", "signing.key")
    if os.path.exists(path):
        key = credential.load_key(path)
        print(f"signing key exists: {path} (key id {credential.key_id(key.public_key())})")
        return 0
    key = credential.new_key(path)
    print(f"signing key made: {path}, public key {path}.pub (key id {credential.key_id(key.public_key())})")
    return 0


def _doctor() -> int:
    from xos.kernel.cgroup import detect
    from xos.node.service import checkpoint_ad

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


def _read_token(path: str | None) -> str:
    try:
        if path is None or path == "-":
            return sys.stdin.read(credential_max() + 1).strip()
        with open(path) as f:
            return f.read(credential_max() + 1).strip()
    except (OSError, UnicodeDecodeError) as e:
        raise InvalidInput(f"cannot read credential {path}: {e}") from None


def credential_max() -> int:
    from xos.identity.credential import MAX_TOKEN

    return MAX_TOKEN


def _cred_show(args: argparse.Namespace) -> int:
    from xos.identity import credential

    token = _read_token(args.file)
    trust: Any = credential.TrustStore(_trust_dir())
    header, payload = credential.unverified(token)
    local = os.path.join(paths.home(), "vo", "signing.key")
    if trust.key(str(payload.get("vo"))) is None and os.path.exists(local):
        key = credential.load_key(local).public_key()

        class Local:
            def key(self, vo: str, kid: str | None = None) -> Any:
                return key

        trust = Local()
    claims = credential.verify(token, trust)
    print(json.dumps({**claims.to_json(), "verified": True, "expires_in": claims.exp - int(time.time())}, indent=2))
    return 0


def _credentials(revoked: list[dict[str, Any]]) -> int:
    # Member and VO markers (jti "member:..." / "vo:...") tell nodes to release leases; not credentials.
    return len([r for r in revoked if ":" not in r["jti"]])


async def _vo_main(args: argparse.Namespace) -> int:
    from xos.vo.client import Client

    async with Client() as vo:
        v = args.verb
        if v == "create":
            d = await vo.create(args.vo, args.owner, args.ttl)
            print(f"VO {d['name']} formed, owner {d['owner']}")
        elif v == "add":
            d = await vo.add(args.vo, args.user, args.roles, args.groups)
            print(f"{d['user']} in {d['vo']}: roles {','.join(d['roles']) or '-'}, groups {','.join(d['groups'])}")
        elif v == "remove":
            d = await vo.remove(args.vo, args.user)
            print(f"{args.user} removed from {args.vo}; {_credentials(d['revoked'])} credential(s) revoked")
        elif v == "issue":
            d = await vo.issue(args.vo, args.user, args.ttl)
            print(d["token"])
        elif v == "revoke":
            if args.jti is None and (args.vo is None or args.user is None):
                raise InvalidInput("name --jti ID, or VO and USER")
            d = await vo.revoke(args.jti, args.vo, args.user)
            print(f"{_credentials(d['revoked'])} credential(s) revoked")
        elif v == "dissolve":
            d = await vo.dissolve(args.vo)
            print(f"VO {args.vo} dissolved; {_credentials(d['revoked'])} credential(s) revoked")
        elif v == "pubkey":
            sys.stdout.write(await vo.public_key(args.vo))
        elif v == "ls":
            rows = await vo.ls()
            if args.json:
                print(json.dumps(rows, indent=2))
            else:
                for r in rows:
                    members = ", ".join(f"{m['user']}({','.join(m['roles'])})" if m["roles"] else m["user"]
                                        for m in r["members"])
                    print(f"{r['name']:16} {r['state']:10} owner={r['owner']}  members: {members}")
    return 0


async def _client_main(args: argparse.Namespace) -> int:
    from xos.node.client import Client

    if args.area == "node" and args.verb in ("install", "uninstall"):
        from xos.identity import install

        if args.verb == "install":
            sock = paths.idmap_socket()
            rec = install.install(paths.home(), None if sock == "/run/xos/idmap.sock" else sock)
            print("installed: " + ", ".join(rec["files"]) + (", nsswitch.conf" if rec["nsswitch"] else ""))
        else:
            print("removed: " + (", ".join(install.uninstall(paths.home())) or "nothing"))
        return 0
    if args.area == "node" and args.verb == "doctor":
        return _doctor()
    if args.area == "node" and args.verb in ("trust", "untrust"):
        from xos.identity import credential

        store = credential.TrustStore(_trust_dir())
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
    if args.area == "vo":
        return await _vo_main(args)
    async with Client(args.socket) as node:
        if args.area == "node":
            if args.verb == "info":
                print(json.dumps(await node.info(), indent=2))
            elif args.verb == "ad":
                print(json.dumps(await node.ad(), indent=2))
            elif args.verb == "offer":
                info = await node.offer(args.cpu, args.memory)
                cap, used = info["capacity"], info["allocated"]
                print(f"offers cpu={cap['cpu']:g} memory={units.format_size(cap['memory'])}; "
                      f"allocated cpu={used['cpu']:g} memory={units.format_size(used['memory'])}")
            else:
                sys.stdout.write(await node.metrics())
            return 0
        v = args.verb
        if v == "create":
            d = await node.create(args.name, uid=args.uid, gid=args.gid, vo=args.vo, user=args.user,
                                  credential=_read_token(args.cred) if args.cred else None,
                                  main=list(args.command) if args.command else None, out=args.out, grid=args.grid,
                                  **_alloc(args))
            print(f"{d['name']} {d['state']} {d['address']}")
        elif v == "exec":
            res = await node.exec(args.name, _command(args), on_stdout=_write(sys.stdout),
                                  on_stderr=_write(sys.stderr), stdin=None if args.no_stdin else _stdin())
            return _status(res)
        elif v == "run":
            cmd = _command(args)
            res = await node.run(args.name, cmd, uid=args.uid, gid=args.gid,
                                 credential=_read_token(args.cred) if args.cred else None, on_stdout=_write(sys.stdout),
                                 on_stderr=_write(sys.stderr), **_alloc(args))
            return _status(res)
        elif v == "checkpoint":
            d = await node.checkpoint(args.name, args.out, args.leave_running)
            t = d["times"]
            print(f"{d['workspace']} -> {d['image']} ({units.human_size(d['bytes'])}): freeze {t['freeze']:.3f}s "
                  f"dump {t['dump']:.3f}s pack {t['pack']:.3f}s; "
                  f"{'left running' if d['left_running'] else 'workspace removed'}")
        elif v == "restore":
            d = await node.restore(args.image, args.name)
            t = d["restore"]["times"]
            print(f"{d['name']} {d['state']} {d['address']}: verify {t['verify']:.3f}s restore {t['restore']:.3f}s")
        elif v == "migrate":
            d = await _with_progress(node, args.name, node.migrate(args.name, args.to, args.live))
            t = d["times"]
            print(f"{d['workspace']} -> {d['to']} {d['address']} ({units.human_size(d['bytes'])}, "
                  f"{d.get('mode', 'stop-and-copy')}): "
                  + " ".join(f"{k} {t[k]:.3f}s" for k in ("freeze", "dump", "pack", "transfer", "verify", "restore",
                                                          "downtime", "postcopy") if k in t))
        elif v == "set":
            d = await node.set(args.name, args.checkpoint_every, args.keep, **_alloc(args))
            _print_stat(d)
        elif v == "stat":
            d = await node.stat(args.name)
            print(json.dumps(d, indent=2)) if args.json else _print_stat(d)
        elif v in ("freeze", "thaw", "kill"):
            d = await getattr(node, v)(args.name)
            print(f"{d['name']} {d['state']} processes={d.get('processes', 0)}")
        elif v == "rm":
            d = await node.rm(args.name)
            print(f"{d['name']} destroyed")
        elif v == "ls":
            rows = await node.ls()
            if args.json:
                print(json.dumps(rows, indent=2))
            else:
                print(f"{'NAME':20} {'STATE':10} {'ADDRESS':15} {'CPU':>5} {'MEMORY':>7} {'EGRESS':>8} {'INGRESS':>8}")
                for d in rows:
                    a = d["allocation"]
                    print(f"{d['name']:20} {d['state']:10} {d['address']:15} {a['cpu']:>5g} "
                          f"{units.format_size(a['memory']):>7} {units.format_rate(a['egress']):>8} "
                          f"{units.format_rate(a['ingress']):>8}")
        elif v == "usage":
            rows = await node.usage(args.name)
            if args.json:
                print(json.dumps(rows, indent=2))
            else:
                print(f"{'WORKSPACE':20} {'CPU s':>8} {'MEM PEAK':>9} {'IN B':>12} {'OUT B':>12} {'OOM':>4} "
                      f"{'WALL s':>8}")
                for r in rows:
                    print(f"{r['workspace']:20} {r['cpu_seconds']:8.2f} {units.human_size(r['memory_peak']):>9} "
                          f"{r['bytes_in']:12d} {r['bytes_out']:12d} {r['oom_kills']:4d} {r['wall_seconds']:8.1f}")
    return 0


def _stdin() -> AsyncIterator[bytes]:
    """Our stdin as chunks, read by a daemon thread: works for pipes, files and terminals alike, and a
    read still blocked on a terminal when the command ends does not keep us from exiting."""
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[bytes] = asyncio.Queue(maxsize=4)

    def pump() -> None:
        while True:
            try:
                data = os.read(0, 65536)
            except OSError:
                data = b""
            asyncio.run_coroutine_threadsafe(queue.put(data), loop).result()
            if not data:
                return

    threading.Thread(target=pump, name="stdin", daemon=True).start()

    async def chunks() -> AsyncIterator[bytes]:
        while data := await queue.get():
            yield data

    return chunks()


async def _with_progress(node: Any, name: str, call: Any) -> Any:
    """Await a migration, drawing its progress on stderr (when a terminal shows it) while it runs."""
    task = asyncio.ensure_future(call)
    if not sys.stderr.isatty():
        return await task
    from xos.node.client import Client

    def draw(p: dict[str, Any]) -> None:
        done = p["sent"] / p["total"] if p.get("total") else 0.0
        bar = "#" * int(done * 30)
        sys.stderr.write(f"\r{name}: {p['phase']:<14} [{bar:<30}] {units.human_size(p['sent']):>8}"
                         f" / {units.human_size(p['total']):<8}")
        sys.stderr.flush()

    last: dict[str, Any] | None = None
    async with Client(node.socket_path) as poll:
        while not task.done():
            await asyncio.wait({task}, timeout=0.2)
            try:
                last = await poll.migration(name)
            except XosError:
                continue
            draw(last)
    if last is not None:
        if not task.cancelled() and task.exception() is None:  # the bar ends where the migration did
            draw({"phase": "done", "sent": last["total"], "total": last["total"]})
        sys.stderr.write("\n")
    return await task


def _status(res: dict[str, Any]) -> int:
    if res.get("oom_killed"):
        print("xos: the command was killed: out of memory in its workspace", file=sys.stderr)
    return int(res["status"])


async def _job_main(args: argparse.Namespace) -> int:
    from xos.aem.client import Client as JobManager
    from xos.fs.client.client import credential_from

    async with JobManager(args.aem, credential_from(args.cred), ca=args.ca) as jm:
        if args.area == "nodes":
            found = await jm.nodes(args.constraint, args.rank)
            if args.json:
                print(json.dumps(found))
                return 0
            print(f"{'NAME':<16} {'SITE':<6} {'CPUS':>6} {'MEMORY':>8} {'PRICE':>7} {'LOAD':>5}  RANK")
            for x in found:
                a = x["ad"]
                print(f"{x['name']:<16} {a.get('Site', ''):<6} {a.get('Cpus', 0):>6g} {a.get('Memory', 0):>7}M "
                      f"{a.get('Price', 0):>7g} {a.get('LoadAvg', 0):>5g}  {x.get('rank', '')}")
            return 0
        if args.area == "acct":
            since = 0.0
            if args.since:
                since = float(args.since) if args.since.replace(".", "", 1).isdigit() and float(args.since) > 1e9 \
                    else time.time() - units.parse_duration(args.since)
            rep = await jm.accounting(args.vo, args.user, since)
            if args.json:
                print(json.dumps(rep))
                return 0
            for view in ("vo", "user", "node"):
                print(f"{view.upper():<22} {'JOBS':>5} {'CPU-S':>10} {'WALL-S':>10} {'IN':>10} {'OUT':>10} "
                      f"{'COST':>10}")
                for key, t in sorted(rep["totals"][view].items()):
                    print(f"{key:<22} {int(t['jobs']):>5} {t['cpu_seconds']:>10.2f} {t['wall_seconds']:>10.1f} "
                          f"{units.human_size(int(t['bytes_in'])):>10} {units.human_size(int(t['bytes_out'])):>10} "
                          f"{t['cost']:>10.4f}")
                print()
            return 0
        if args.verb == "run":
            cmd = _command(args)
            desc: dict[str, Any] = {"executable": cmd[0], "arguments": cmd[1:], "requirements": args.requirements,
                                    "rank": args.rank, "resources": {"cpus": args.cpus, "memory": args.memory}}
            if args.walltime:
                desc["resources"]["walltime"] = args.walltime
            job_id = (await jm.submit(desc))[0]["id"]
            await _follow(jm, job_id)
            j = await jm.status(job_id)
            if j["state"] == "done":
                return 0
            print(f"xos: job {job_id} {j['state']}: {j['reason']}", file=sys.stderr)
            return int(j["exit_status"]) if j["exit_status"] is not None else 1
        if args.verb == "submit":
            try:
                with open(args.file, "rb") as f:
                    text = f.read(1 << 20).decode("utf-8", "replace")
            except OSError as e:
                raise InvalidInput(f"cannot read job file {args.file}: {e.strerror}") from None
            for j in await jm.submit(text, args.wait_for_match):
                print(f"{j['id']} {j['state']}")
        elif args.verb == "ls":
            jobs = await jm.ls(args.state)
            if args.json:
                print(json.dumps(jobs))
            else:
                for j in jobs:
                    print(f"{j['id']:<10} {j['state']:<12} {j['node'] or '-':<14} {j['reason']}")
        elif args.verb == "status":
            j = await jm.status(args.id)
            print(f"{j['id']} {j['state']} on {j['node'] or '-'}: {j['reason']}"
                  + (f" (exit status {j['exit_status']})" if j["exit_status"] is not None else ""))
            for h in j["history"]:
                print(f"  {time.strftime('%H:%M:%S', time.localtime(h['at']))} {h['from'] or '-':>12} -> "
                      f"{h['to']:<12} {h['reason']}")
        elif args.verb == "output":
            stream = "stderr" if args.stderr else "stdout"
            if args.follow:
                await _follow(jm, args.id, stream)
            else:
                sys.stdout.buffer.write((await jm.output_from(args.id, 0, stream))[0])
        elif args.verb == "watch":
            return await _watch(jm, args.ids)
        elif args.verb == "purge":
            await jm.purge(args.id)
            print(f"{args.id} purged")
        else:
            j = await jm.control(args.id, args.verb, getattr(args, "to", None), getattr(args, "live", False))
            print(f"{j['id']} {j['state']} on {j['node'] or '-'}: {j['reason']}")
    return 0


async def _follow(jm: Any, job_id: str, stream: str = "stdout") -> None:
    """Write a job's output as it comes, until the job has ended and all of it is out."""
    offset, delay = 0, 0.05
    out = sys.stdout.buffer if stream == "stdout" else sys.stderr.buffer
    while True:
        try:
            data, state = await jm.output_from(job_id, offset, stream)
        except NotFound:  # it ended without any (cancelled before it ran)
            return
        if data:
            out.write(data)
            out.flush()
            offset += len(data)
            delay = 0.05
        if state in ("done", "failed", "cancelled"):
            return
        if not data:
            await asyncio.sleep(delay)
            delay = min(delay * 1.5, 0.5)


async def _watch(jm: Any, ids: list[str]) -> int:
    """Print each job's state as it changes (a table redrawn in place on a terminal) until all have ended."""
    final = ("done", "failed", "cancelled")
    seen: dict[str, str] = {}
    tty = sys.stdout.isatty()
    while True:
        jobs = [await jm.status(i) for i in ids]
        if tty:
            sys.stdout.write("\x1b[H\x1b[2J" + "\n".join(f"{j['id']:<10} {j['state']:<12} {j['node'] or '-':<14} "
                                                       f"{j['reason']}" for j in jobs) + "\n")
            sys.stdout.flush()
        else:
            for j in jobs:
                now = f"{j['state']} {j['node'] or '-'} {j['reason']}"
                if seen.get(j["id"]) != now:
                    seen[j["id"]] = now
                    print(f"{j['id']} {now}", flush=True)
        if all(j["state"] in final for j in jobs):
            return 0 if all(j["state"] == "done" for j in jobs) else 1
        await asyncio.sleep(0.5)


def _serve_aem(args: argparse.Namespace) -> int:
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


def _hosts(args: argparse.Namespace) -> int:
    """xos ca init|sign, xos host init|trust: host identities and the CA that vouches for them."""
    from xos.wire import hostid

    if args.area == "ca" and args.verb == "init":
        print(hostid.ca_init(args.dir))
        return 0
    if args.area == "ca":
        with open(args.csr, "rb") as f:
            pem = hostid.ca_sign(args.ca, f.read(1 << 16), args.days)
        with open(args.out, "wb") as f:
            f.write(pem)
        print(args.out)
        return 0
    directory = args.dir or paths.host_dir()
    if args.verb == "init":
        print(hostid.host_init(directory, args.name, args.roles, args.addresses))
        return 0
    with open(args.ca_pem, "rb") as f:
        hostid.trust(directory, f.read(1 << 16))
    print(os.path.join(directory, "ca.pem"))
    return 0


def _serve_vo(args: argparse.Namespace) -> int:
    from xos import log
    from xos.vo.service import serve_vo

    log.setup(args.log_level)
    asyncio.run(serve_vo(paths.home(), paths.run_dir(), args.listen))
    return 0


def _serve(args: argparse.Namespace) -> int:
    from xos import log
    from xos.node.api import serve_node
    from xos.node.config import NodeConfig

    log.setup(args.log_level)
    overrides = {k: getattr(args, k) for k in ("name", "subnet", "bridge", "cgroup", "cgroup_root", "cpu",
                                               "memory", "bandwidth", "sample_interval", "pools", "static_map",
                                               "vo_urls", "listen", "host_dir", "peers", "site", "price",
                                               "aem_urls", "ad_interval", "peer_address")}
    cfg = NodeConfig.load(args.config, overrides)
    asyncio.run(serve_node(cfg))
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point; every error a user can cause is one line and a non-zero exit."""
    argv = list(sys.argv[1:] if argv is None else argv)
    # Everything after "--" is the command, untouched by option parsing (flags may precede it).
    command = None
    if "--" in argv:
        cut = argv.index("--")
        argv, command = argv[:cut], argv[cut + 1:]
    args = parser().parse_args(argv)
    args.command = command
    try:
        if args.area == "serve":
            if args.role in ("mrc", "osd"):
                return fs_cli.serve(args)
            if args.role == "aem":
                return _serve_aem(args)
            return _serve_vo(args) if args.role == "vo" else _serve(args)
        if args.area == "fs":
            return fs_cli.run(args)
        if args.area in ("job", "acct", "nodes"):
            return asyncio.run(_job_main(args))
        if args.area == "init":
            return _init()
        if args.area in ("ca", "host"):
            return _hosts(args)
        if args.area == "service":
            from xos import systemd

            if args.verb == "install":
                print(systemd.install(args.role, args.unit_dir))
            else:
                gone = systemd.uninstall(args.role, args.unit_dir)
                print(f"{systemd.unit_name(args.role)} {'removed' if gone else 'was not installed'}")
            return 0
        if args.area == "cred":
            return _cred_show(args)
        return asyncio.run(_client_main(args))
    except XosError as e:
        print(f"xos: error {e.code}: {e.message}", file=sys.stderr)
        return 2 if e.code in ("invalid-input", "bad-request") else 1
    except OSError as e:  # a local file the user named: missing, unreadable, not a directory
        print(f"xos: error os-error: {e.strerror or e}: {e.filename or ''}".rstrip(": "), file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
