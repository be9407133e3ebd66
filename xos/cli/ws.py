"""`xos ws`: this node's workspaces, through the node daemon's socket."""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import threading
from collections.abc import AsyncIterator, Callable
from typing import Any

from xos import units
from xos.cli import common
from xos.errors import XosError

ALLOC_FLAGS = ("cpu", "memory", "pids", "egress", "ingress")


def _alloc_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--cpu", help="CPUs, e.g. 0.25 or 2")
    p.add_argument("--memory", help="memory with units, e.g. 512M")
    p.add_argument("--pids", help="most processes at once")
    p.add_argument("--egress", help="outgoing bandwidth, e.g. 20mbit")
    p.add_argument("--ingress", help="incoming bandwidth, e.g. 20mbit")


def _alloc(args: argparse.Namespace) -> dict[str, Any]:
    return {k: getattr(args, k) for k in ALLOC_FLAGS if getattr(args, k) is not None}


def add(sub: Any) -> None:
    """The `ws` command group."""
    ws = sub.add_parser("ws", help="workspaces on this node").add_subparsers(dest="verb", required=True)

    def verb(name: str, hlp: str, data: bool = True) -> argparse.ArgumentParser:
        return common.command_parser(ws, name, hlp, run, "node", data)

    c = verb("create", "create a workspace")
    c.add_argument("name")
    _alloc_args(c)
    c.add_argument("--uid", type=int)
    c.add_argument("--gid", type=int)
    c.add_argument("--vo", help="run as the account this VO's --user maps to on this node")
    c.add_argument("--user", help="grid user (with --vo)")
    common.cred(c, "run as this credential's owner, the credential in each process's session keyring ('-': "
                   "stdin; default: the token in $XOS_CREDENTIAL, if set)")
    c.add_argument("--out", metavar="NAME", help="with a main program (after --): its output file in the "
                   "workspace directory")
    c.add_argument("--grid", action="append", metavar="MRC_URL/VOLUME",
                   help="mount a grid volume at /run/xos-work/grid/VOLUME with --cred (kept across migration)")
    e = verb("exec", "run a command in a workspace (after --), stdin and output streamed", data=False)
    e.add_argument("name")
    e.add_argument("-n", "--no-stdin", action="store_true", help="give the command an empty stdin")
    r = verb("run", "create, run a command (after --), destroy", data=False)
    r.add_argument("name")
    _alloc_args(r)
    r.add_argument("--uid", type=int)
    r.add_argument("--gid", type=int)
    common.cred(r, "as with create")
    cp = verb("checkpoint", "dump a workspace's main program tree into an image file")
    cp.add_argument("name")
    cp.add_argument("--out", required=True, metavar="IMAGE")
    cp.add_argument("--leave-running", action="store_true", help="keep the workspace running afterwards")
    rs = verb("restore", "restore an image file as a workspace")
    rs.add_argument("image")
    rs.add_argument("--name", help="a new name (default: the one it had)")
    mg = verb("migrate", "move a workspace to another node (stop-and-copy)")
    mg.add_argument("name")
    mg.add_argument("--to", required=True, metavar="NODE", help="a peer's name or its peer API URL")
    mg.add_argument("--live", action="store_true",
                    help="stop it only briefly: pre-dump rounds while it runs (kernels tracking dirty memory), "
                         "or run it at the target at once while its memory follows (userfaultfd)")
    s = verb("set", "renegotiate the allocation; periodic checkpoints")
    s.add_argument("name")
    _alloc_args(s)
    s.add_argument("--checkpoint-every", metavar="DURATION", help="checkpoint periodically (e.g. 10m; 0 stops)")
    s.add_argument("--keep", type=int, help="periodic checkpoints kept (newest; default 3)")
    verb("stat", "allocation, usage, address, state").add_argument("name")
    for name, hlp in (("freeze", "stop every process of a workspace where it is"), ("thaw", "let them run again"),
                      ("kill", "kill every process of a workspace; it stays"), ("rm", "destroy a workspace")):
        verb(name, hlp).add_argument("name")
    verb("ls", "list workspaces")
    verb("usage", "usage records, also of destroyed workspaces").add_argument("name", nargs="?")


def print_stat(d: dict[str, Any]) -> None:
    """A workspace as `xos ws stat` shows it."""
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


def _ls(rows: list[dict[str, Any]]) -> None:
    print(f"{'NAME':20} {'STATE':10} {'ADDRESS':15} {'CPU':>5} {'MEMORY':>7} {'EGRESS':>8} {'INGRESS':>8}")
    for d in rows:
        a = d["allocation"]
        print(f"{d['name']:20} {d['state']:10} {d['address']:15} {a['cpu']:>5g} "
              f"{units.format_size(a['memory']):>7} {units.format_rate(a['egress']):>8} "
              f"{units.format_rate(a['ingress']):>8}")


def _usage(rows: list[dict[str, Any]]) -> None:
    print(f"{'WORKSPACE':20} {'CPU s':>8} {'MEM PEAK':>9} {'IN B':>12} {'OUT B':>12} {'OOM':>4} {'WALL s':>8}")
    for r in rows:
        print(f"{r['workspace']:20} {r['cpu_seconds']:8.2f} {units.human_size(r['memory_peak']):>9} "
              f"{r['bytes_in']:12d} {r['bytes_out']:12d} {r['oom_kills']:4d} {r['wall_seconds']:8.1f}")


def _checkpointed(d: dict[str, Any]) -> None:
    t = d["times"]
    print(f"{d['workspace']} -> {d['image']} ({units.human_size(d['bytes'])}): freeze {t['freeze']:.3f}s "
          f"dump {t['dump']:.3f}s pack {t['pack']:.3f}s; "
          f"{'left running' if d['left_running'] else 'workspace removed'}")


def _migrated(d: dict[str, Any]) -> None:
    t = d["times"]
    print(f"{d['workspace']} -> {d['to']} {d['address']} ({units.human_size(d['bytes'])}, "
          f"{d.get('mode', 'stop-and-copy')}): "
          + " ".join(f"{k} {t[k]:.3f}s" for k in ("freeze", "dump", "pack", "transfer", "verify", "restore",
                                                  "downtime", "postcopy") if k in t))


async def run(args: argparse.Namespace) -> int:
    """`xos ws VERB`."""
    from xos.node.client import Client

    v = args.verb
    credential = common.token(args, required=False) if v in ("create", "run") else None
    async with Client(common.node_socket(args)) as node:
        if v == "create":
            d = await node.create(args.name, uid=args.uid, gid=args.gid, vo=args.vo, user=args.user,
                                  credential=credential, main=list(args.command) if args.command else None,
                                  out=args.out, grid=args.grid, **_alloc(args))
            return common.emit(args, d, lambda d: print(f"{d['name']} {d['state']} {d['address']}"))
        if v == "exec":
            res = await node.exec(args.name, common.command(args), on_stdout=_write(sys.stdout),
                                  on_stderr=_write(sys.stderr), stdin=None if args.no_stdin else _stdin())
            return _status(res)
        if v == "run":
            res = await node.run(args.name, common.command(args), uid=args.uid, gid=args.gid, credential=credential,
                                 on_stdout=_write(sys.stdout), on_stderr=_write(sys.stderr), **_alloc(args))
            return _status(res)
        if v == "checkpoint":
            return common.emit(args, await node.checkpoint(args.name, args.out, args.leave_running), _checkpointed)
        if v == "restore":
            d = await node.restore(args.image, args.name)
            t = d["restore"]["times"]
            return common.emit(args, d, common.say(f"{d['name']} {d['state']} {d['address']}: verify "
                                                   f"{t['verify']:.3f}s restore {t['restore']:.3f}s"))
        if v == "migrate":
            d = await _with_progress(node, args.name, node.migrate(args.name, args.to, args.live))
            return common.emit(args, d, _migrated)
        if v == "set":
            return common.emit(args, await node.set(args.name, args.checkpoint_every, args.keep, **_alloc(args)),
                               print_stat)
        if v == "stat":
            return common.emit(args, await node.stat(args.name), print_stat)
        if v in ("freeze", "thaw", "kill"):
            d = await getattr(node, v)(args.name)
            return common.emit(args, d, common.say(f"{d['name']} {d['state']} processes={d.get('processes', 0)}"))
        if v == "rm":
            d = await node.rm(args.name)
            return common.emit(args, d, common.say(f"{d['name']} destroyed"))
        if v == "ls":
            return common.emit(args, await node.ls(), _ls)
        return common.emit(args, await node.usage(args.name), _usage)


def _write(stream: Any) -> Callable[[bytes], None]:
    def sink(data: bytes) -> None:
        stream.buffer.write(data)
        stream.buffer.flush()
    return sink


def _status(res: dict[str, Any]) -> int:
    if res.get("oom_killed"):
        print("xos: the command was killed: out of memory in its workspace", file=sys.stderr)
    return int(res["status"])


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
