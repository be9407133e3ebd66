"""`xos job` and `xos acct`: jobs on the grid and their accounts, through a job manager."""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from typing import Any

from xos import units
from xos.cli import common
from xos.errors import InvalidInput, NotFound

FINAL = ("done", "failed", "cancelled")


def _endpoint(p: argparse.ArgumentParser) -> None:
    common.address(p, "aem")
    common.cred(p)
    common.ca(p)


def add(sub: Any) -> None:
    """The `job` and `acct` command groups."""
    job = sub.add_parser("job", help="jobs on the grid").add_subparsers(dest="verb", required=True)
    jr = job.add_parser("run", help="run a command as a job (after --), wait, print its output, exit with its status")
    jr.add_argument("--cpus", default="1")
    jr.add_argument("--memory", default="256M")
    jr.add_argument("--walltime")
    jr.add_argument("--requirements", default="true")
    jr.add_argument("--rank", default="0")
    _endpoint(jr)
    jr.set_defaults(run=run)
    verbs = (("submit", "submit a job description (JSON or YAML)"), ("ls", "your jobs"),
             ("status", "a job's state, node and history"), ("output", "a job's output"),
             ("watch", "follow jobs until they end (exit 0 if all are done)"),
             ("rm", "forget a finished job and its output (its usage records stay)"),
             ("purge", common.old_spelling("xos job rm")),
             *((v, f"{v} a job") for v in ("hold", "release", "suspend", "resume", "cancel", "checkpoint",
                                           "migrate")))
    for verb, hlp in verbs:
        jp = job.add_parser(verb, help=hlp)
        if verb == "submit":
            jp.add_argument("file")
            jp.add_argument("--wait-for-match", action="store_true", help="queue it even if no node matches now")
        elif verb == "ls":
            jp.add_argument("--state")
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
        if verb not in ("output", "watch"):
            common.json_flag(jp)
        _endpoint(jp)
        jp.set_defaults(run=run)
    acct = sub.add_parser("acct", help="accounting of jobs").add_subparsers(dest="verb", required=True)
    ar = acct.add_parser("report", help="usage and cost per VO, user and node")
    ar.add_argument("--vo", help="the VO whose usage (default: your credential's)")
    ar.add_argument("--user")
    ar.add_argument("--since", help="a duration back from now (e.g. 24h) or seconds since the epoch")
    common.json_flag(ar)
    _endpoint(ar)
    ar.set_defaults(run=report)


def _since(arg: str | None) -> float:
    if not arg:
        return 0.0
    if arg.replace(".", "", 1).isdigit() and float(arg) > 1e9:
        return float(arg)
    return time.time() - units.parse_duration(arg)


def _report(rep: dict[str, Any]) -> None:
    for view in ("vo", "user", "node"):
        print(f"{view.upper():<22} {'JOBS':>5} {'CPU-S':>10} {'WALL-S':>10} {'IN':>10} {'OUT':>10} {'COST':>10}")
        for key, t in sorted(rep["totals"][view].items()):
            print(f"{key:<22} {int(t['jobs']):>5} {t['cpu_seconds']:>10.2f} {t['wall_seconds']:>10.1f} "
                  f"{units.human_size(int(t['bytes_in'])):>10} {units.human_size(int(t['bytes_out'])):>10} "
                  f"{t['cost']:>10.4f}")
        print()


async def report(args: argparse.Namespace) -> int:
    """`xos acct report`."""
    from xos.aem.client import Client as JobManager

    async with JobManager(args.aem_address, common.token(args) or "", ca=args.ca) as jm:
        return common.emit(args, await jm.accounting(args.vo, args.user, _since(args.since)), _report)


def _line(j: dict[str, Any]) -> str:
    return f"{j['id']} {j['state']} on {j['node'] or '-'}: {j['reason']}"


def _status(j: dict[str, Any]) -> None:
    print(_line(j) + (f" (exit status {j['exit_status']})" if j["exit_status"] is not None else ""))
    for h in j["history"]:
        print(f"  {time.strftime('%H:%M:%S', time.localtime(h['at']))} {h['from'] or '-':>12} -> "
              f"{h['to']:<12} {h['reason']}")


async def run(args: argparse.Namespace) -> int:
    """`xos job VERB`."""
    from xos.aem.client import Client as JobManager

    async with JobManager(args.aem_address, common.token(args) or "", ca=args.ca) as jm:
        v = args.verb
        if v == "run":
            cmd = common.command(args)
            desc: dict[str, Any] = {"executable": cmd[0], "arguments": cmd[1:], "requirements": args.requirements,
                                    "rank": args.rank, "resources": {"cpus": args.cpus, "memory": args.memory}}
            if args.walltime:
                desc["resources"]["walltime"] = args.walltime
            job_id = (await jm.submit(desc))[0]["id"]
            await follow(jm, job_id)
            j = await jm.status(job_id)
            if j["state"] == "done":
                return 0
            print(f"xos: job {job_id} {j['state']}: {j['reason']}", file=sys.stderr)
            return int(j["exit_status"]) if j["exit_status"] is not None else 1
        if v == "submit":
            try:
                with open(args.file, "rb") as f:
                    text = f.read(1 << 20).decode("utf-8", "replace")
            except OSError as e:
                raise InvalidInput(f"cannot read job file {args.file}: {e.strerror}") from None
            jobs = await jm.submit(text, args.wait_for_match)
            return common.emit(args, jobs, lambda js: [print(f"{j['id']} {j['state']}") for j in js])
        if v == "ls":
            return common.emit(args, await jm.ls(args.state), lambda js: [
                print(f"{j['id']:<10} {j['state']:<12} {j['node'] or '-':<14} {j['reason']}") for j in js])
        if v == "status":
            return common.emit(args, await jm.status(args.id), _status)
        if v == "output":
            stream = "stderr" if args.stderr else "stdout"
            if args.follow:
                await follow(jm, args.id, stream)
            else:
                sys.stdout.buffer.write((await jm.output_from(args.id, 0, stream))[0])
            return 0
        if v == "watch":
            return await watch(jm, args.ids)
        if v in ("rm", "purge"):
            await jm.purge(args.id)
            return common.emit(args, {"purged": args.id}, common.say(f"{args.id} removed"))
        j = await jm.control(args.id, v, getattr(args, "to", None), getattr(args, "live", False))
        return common.emit(args, j, lambda j: print(_line(j)))


async def follow(jm: Any, job_id: str, stream: str = "stdout") -> None:
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
        if state in FINAL:
            return
        if not data:
            await asyncio.sleep(delay)
            delay = min(delay * 1.5, 0.5)


async def watch(jm: Any, ids: list[str]) -> int:
    """Print each job's state as it changes (a table redrawn in place on a terminal) until all have ended."""
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
        if all(j["state"] in FINAL for j in jobs):
            return 0 if all(j["state"] == "done" for j in jobs) else 1
        await asyncio.sleep(0.5)
