"""`xos fs`: mounts, volumes, OSDs, a file's replicas, and copies in and out of the grid file system."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
import time
import urllib.parse
from typing import Any

from xos import paths
from xos.cli import common
from xos.errors import InvalidInput, NotFound, XosError
from xos.paths import MRC_PORT


def add(sub: Any) -> None:
    """`xos fs ...`."""
    fs = sub.add_parser("fs", help="the grid file system").add_subparsers(dest="verb", required=True)
    m = fs.add_parser("mount", help="mount a volume: xos fs mount MRC_URL/VOLUME MOUNTPOINT")
    m.add_argument("source")
    m.add_argument("mountpoint")
    common.cred(m)
    m.add_argument("--foreground", action="store_true", help="serve the mount in this process")
    m.add_argument("--uid", type=int, help="local uid shown for your own files (default: yours)")
    m.add_argument("--gid", type=int, help="local gid shown for your VO (default: yours)")
    m.add_argument("--allow-other", action="store_true",
                   help="let other local users in (they act with your credential, within the mode bits)")
    m.add_argument("--ca", help="the grid CA's certificate the MRC's and OSDs' are checked against "
                                "(default $XOS_CA, else $XOS_HOME/host/ca.pem)")
    m.add_argument("--sync-close", action="store_true",
                   help="close() returns once the file is on stable storage at every replica, as fsync() does")
    m.set_defaults(run=mount)
    fs.add_parser("umount", help="unmount").add_argument("mountpoint")
    fs.choices["umount"].set_defaults(run=umount)

    def admin_verb(parent: Any, name: str, hlp: str, what: str) -> None:
        p = parent.add_parser(name, help=hlp)
        if what in ("create", "rm"):
            p.add_argument("volume")
        common.address(p, "mrc")
        common.cred(p)
        common.json_flag(p)
        if what == "create":
            p.add_argument("--vo", help="owner VO (default: your credential's)")
            p.add_argument("--stripe-size", default="1M")
            p.add_argument("--stripe-width", type=int, default=1)
            p.add_argument("--replicas", type=int, default=1)
            p.add_argument("--acl", action="append", default=[], help="VO=rw or USER@VO=r: let others in")
        p.set_defaults(run=admin, what=what)

    vol = fs.add_parser("vol", help="volumes").add_subparsers(dest="vol_verb", required=True)
    admin_verb(vol, "create", "make a volume", "create")
    admin_verb(vol, "ls", "list volumes", "ls")
    admin_verb(vol, "rm", "remove a volume and its files (its owner or the VO's admin)", "rm")
    osd = fs.add_parser("osd", help="object stores").add_subparsers(dest="osd_verb", required=True)
    admin_verb(osd, "ls", "the OSDs, their room and load", "osds")
    for old, new, what in (("mkvol", "xos fs vol create", "create"), ("lsvol", "xos fs vol ls", "ls"),
                           ("rmvol", "xos fs vol rm", "rm"), ("osds", "xos fs osd ls", "osds")):
        admin_verb(fs, old, common.old_spelling(new), what)
    for verb, hlp in (("stat", "a file's replicas, OSDs and striping"),
                      ("readonly", "make a file read-only for good, so it can be replicated"),
                      ("replicate", "add a replica of a read-only file"), ("unreplicate", "remove a replica")):
        p = fs.add_parser(verb, help=hlp)
        p.add_argument("path", help="a path in a mount, or MRC_URL/VOLUME/PATH")
        common.cred(p, "credential file (default: the mount's, or the token in $XOS_CREDENTIAL)")
        common.json_flag(p)
        if verb in ("replicate", "unreplicate"):
            p.add_argument("--osd", action="append", default=[], help="OSD id (one per stripe column)")
        p.set_defaults(run=files)
    c = fs.add_parser("cp", help="copy a file into or out of the grid file system, with progress")
    c.add_argument("src", help="local path, mount path or MRC_URL/VOLUME/PATH")
    c.add_argument("dst")
    common.cred(c, "credential file (default: the mount's, or the token in $XOS_CREDENTIAL)")
    c.set_defaults(run=copy)


def _mounts_dir() -> str:
    return paths.mounts_dir()


def _record(mountpoint: str) -> str:
    return os.path.join(_mounts_dir(), urllib.parse.quote(os.path.realpath(mountpoint), safe="") + ".json")


def _split_source(source: str) -> tuple[str, str, str]:
    """MRC_URL/VOLUME[/PATH] -> (url, volume, path)."""
    u = urllib.parse.urlsplit(source)
    if u.scheme not in ("http", "https") or not u.netloc:
        raise InvalidInput(f"{source!r} is not MRC_URL/VOLUME (e.g. http://mrc:{MRC_PORT}/data)")
    parts = [p for p in u.path.split("/") if p]
    if not parts:
        raise InvalidInput(f"{source!r} names no volume")
    return f"{u.scheme}://{u.netloc}", parts[0], "/" + "/".join(parts[1:])


def _locate(path: str, cred: str | None) -> tuple[Any, str]:
    """A Client and the volume path for a mount path or MRC_URL/VOLUME/PATH."""
    from xos.fs.client.client import Client

    if path.startswith(("http://", "https://")):
        url, volume, inner = _split_source(path)
        return Client(url, volume, common.token_from(cred) or ""), inner
    real = os.path.realpath(path)
    best = None
    with contextlib.suppress(FileNotFoundError):
        for name in os.listdir(_mounts_dir()):
            if not name.endswith(".json"):
                continue
            try:
                with open(os.path.join(_mounts_dir(), name)) as f:
                    rec = json.load(f)
            except (OSError, ValueError):
                continue  # a mount going away right now
            mp = rec["mountpoint"]
            if (real == mp or real.startswith(mp.rstrip("/") + "/")) and (best is None or len(mp) > len(best[0])):
                best = (mp, rec)
    if best is None:
        raise NotFound(f"{path} is not in a mounted grid volume (give MRC_URL/VOLUME/PATH instead)")
    mp, rec = best
    token = common.token_from(cred) or "" if cred else rec["credential"]
    return Client(rec["url"], rec["volume"], token, ca=rec.get("ca")), "/" + os.path.relpath(real, mp).lstrip(".")


def _is_mount(path: str) -> bool:
    real = os.path.realpath(path)
    try:
        with open("/proc/self/mountinfo") as f:
            return any(line.split()[4] == real for line in f)
    except OSError:  # a workspace's /proc, which does not know us (a node mounting a volume into it)
        return os.path.ismount(real)


def mount(args: argparse.Namespace) -> int:
    from xos.fs.client.client import Client

    url, volume, inner = _split_source(args.source)
    if inner != "/":
        raise InvalidInput("mount a whole volume: MRC_URL/VOLUME")
    token = common.token_from(args.cred) or ""
    mp = os.path.realpath(args.mountpoint)
    if not os.path.isdir(mp):
        raise InvalidInput(f"mount point {mp} is not a directory")
    if _is_mount(mp):
        raise InvalidInput(f"{mp} is already a mount point")
    if not args.foreground:
        argv = [sys.executable, "-m", "xos", "fs", "mount", args.source, mp, "--foreground"]
        argv += [f"--{k}={getattr(args, k)}" for k in ("cred", "uid", "gid", "ca") if getattr(args, k) is not None]
        argv += ["--allow-other"] if args.allow_other else []
        argv += ["--sync-close"] if args.sync_close else []
        logf = os.path.join(_mounts_dir(), urllib.parse.quote(mp, safe="") + ".log")
        os.makedirs(_mounts_dir(), exist_ok=True)
        with open(logf, "ab") as log:
            p = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True)
        deadline = time.monotonic() + 30
        while not _is_mount(mp):
            if p.poll() is not None:
                with open(logf) as f:
                    tail = [ln for ln in f.read().splitlines() if ln.strip()][-1:]
                raise XosError(f"mount of {args.source} failed: {tail[0] if tail else 'no output'}")
            if time.monotonic() > deadline:
                p.kill()
                raise XosError(f"mount of {args.source} did not appear within 30 s (log: {logf})")
            time.sleep(0.05)
        print(f"{args.source} mounted on {mp}")
        return 0
    from xos import log as xlog
    from xos.fs.client.mount import Accounts
    from xos.fs.client.mount import mount as serve_mount
    from xos.identity.credential import unverified
    from xos.kernel import heap

    xlog.setup("WARNING")
    heap.keep_buffers()
    _, claims = unverified(token)
    me = f"{claims.get('sub')}@{claims.get('vo')}"
    client = Client(url, volume, token, ca=args.ca)
    client.op("getattr", path="/")  # the volume exists and lets us in, or the mount fails now
    os.makedirs(_mounts_dir(), exist_ok=True)
    rec = _record(mp)
    with open(os.open(rec, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "w") as f:
        json.dump({"url": url, "volume": volume, "mountpoint": mp, "credential": token, "pid": os.getpid(),
                   "ca": client.ca}, f)
    try:
        serve_mount(client, mp, Accounts(me, args.uid if args.uid is not None else os.getuid(),
                                         args.gid if args.gid is not None else os.getgid()), volume,
                    args.allow_other, args.sync_close)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(rec)
        client.close()
    return 0


def umount(args: argparse.Namespace) -> int:
    from xos.kernel import spawn as sp

    mp = os.path.realpath(args.mountpoint)
    if not _is_mount(mp):
        raise InvalidInput(f"{mp} is not mounted")
    sp.umount(mp, sp.lib.MNT_DETACH)
    print(f"{mp} unmounted")
    return 0


def admin(args: argparse.Namespace) -> int:
    """Volumes and OSDs: create, ls, rm; osd ls."""
    from xos import units
    from xos.fs.client.client import Client

    base = common.mrc(args)
    c = Client(base, "", common.token(args) or "")
    if args.what == "create":
        acl = {}
        for entry in args.acl:
            who, sep, rights = entry.partition("=")
            if not sep:
                raise InvalidInput(f"ACL entry {entry!r} is not WHO=RIGHTS")
            acl[who] = rights
        body = {"name": args.volume, "stripe_size": units.parse_size(args.stripe_size),
                "stripe_width": args.stripe_width, "replicas": args.replicas, "acl": acl}
        if args.vo:
            body["vo"] = args.vo
        res = c.mrc("POST", "/v1/volumes", body)
        print(json.dumps(res) if args.json else f"volume {res['name']} created")
    elif args.what == "rm":
        res = c.mrc("DELETE", f"/v1/volumes/{args.volume}")
        common.emit(args, res, common.say(f"volume {args.volume} removed"))
    elif args.what == "ls":
        vols = c.mrc("GET", "/v1/volumes")["volumes"]
        common.emit(args, vols, lambda v: common.table(v, ["name", "vo", "stripe_size", "stripe_width", "replicas"]))
    else:
        osds = c.mrc("GET", "/v1/osds")["osds"]
        if args.json:
            print(json.dumps(osds))
        else:
            for o in osds:
                o["capacity"], o["free"] = units.human_size(o["capacity"]), units.human_size(o["free"])
                o["state"] = "up" if o["alive"] else "DOWN"
            common.table(osds, ["id", "url", "state", "capacity", "free", "load"])
    return 0


def files(args: argparse.Namespace) -> int:
    """stat, replicate, unreplicate."""
    c, inner = _locate(args.path, args.cred)
    if args.verb == "stat":
        res = c.replicas(inner)
    elif args.verb == "readonly":
        c.op("seal", path=inner)
        res = c.replicas(inner)
    elif args.verb == "replicate":
        _replicate(c, inner, args.osd or None)
        res = c.replicas(inner)  # shown as stat shows it: the answer of the change names no OSD URLs
    else:
        if len(args.osd) != 1:
            raise InvalidInput("name the replica to remove by one of its OSDs: --osd ID")
        c.op("unreplicate", path=inner, osd=args.osd[0])
        res = c.replicas(inner)
    if args.json:
        print(json.dumps(res))
        return 0
    a = res.get("attrs", {})
    x = res.get("xloc")
    if a:
        print(f"{inner}: {a['size']} bytes, owner {a['owner']}, group {a['group']}, mode {oct(a['mode'] & 0o7777)}"
              + (", read-only" if a.get("readonly") else ""))
    if x is None:
        print("  stored inline in the MRC (small file), no OSD replicas")
        return 0
    print(f"  striping: {x['stripe_size']} bytes x {x['stripe_width']} OSD(s); replica list version {x['version']}")
    for i, r in enumerate(x["replicas"]):
        print(f"  replica {i}: " + ", ".join(f"{o} ({x['urls'].get(o, '?')})" for o in r["osds"]))
    return 0


def _bar(done: int, total: int, t0: float) -> str:
    pct = 100 * done / total if total else 100.0
    rate = done / max(time.monotonic() - t0, 1e-6) / 1e6
    return f"\r[{'#' * int(pct / 5):<20}] {pct:5.1f}% {done >> 20} MiB {rate:.0f} MB/s"


def _replicate(c: Any, inner: str, osds: list[str] | None) -> None:
    """Ask the MRC for a new replica, drawing the copy's progress on a terminal while it runs."""
    import threading

    out: dict[str, Any] = {}

    def call() -> None:
        try:
            out["res"] = c.op("replicate", path=inner, osds=osds)
        except BaseException as e:
            out["err"] = e

    t = threading.Thread(target=call, daemon=True)
    t0 = time.monotonic()
    t.start()
    tty, done, total = sys.stderr.isatty(), 0, 0
    while t.is_alive():
        t.join(0.2)
        if tty and t.is_alive():
            p = c.op("progress", path=inner)
            if p["copying"]:
                done, total = p["done"], p["total"]
                print(_bar(done, total, t0), end="", file=sys.stderr)
    if total:  # the bar ends where the copy did, full or not
        print(_bar(total if "res" in out else done, total, t0), file=sys.stderr)
    if "err" in out:
        raise out["err"]
    print(f"replica added in {time.monotonic() - t0:.2f} s")


def copy(args: argparse.Namespace) -> int:
    """Copy a file in or out, drawing progress on a terminal."""
    chunk = 4 << 20

    def side(path: str, write: bool) -> tuple[Any, int]:
        if path.startswith(("http://", "https://")) or _in_mount(path):
            c, inner = _locate(path, args.cred)
            f = c.open(inner, "wb" if write else "rb")
            return f, (0 if write else c.stat(inner)["size"])
        if write:
            return open(path, "wb"), 0
        return open(path, "rb"), os.path.getsize(path)

    src, total = side(args.src, False)
    dst, _ = side(args.dst, True)
    done, t0, shown = 0, time.monotonic(), 0.0
    tty = sys.stderr.isatty()
    try:
        while True:
            buf = src.read(chunk)
            if not buf:
                break
            dst.write(buf)
            done += len(buf)
            now = time.monotonic()
            if tty and now - shown > 0.2:
                shown = now
                print(_bar(done, total, t0), end="", file=sys.stderr)
    finally:
        src.close()
        dst.close()
    elapsed = time.monotonic() - t0
    if tty:
        print(_bar(done, total, t0), file=sys.stderr)
    print(f"copied {done} bytes in {elapsed:.2f} s ({done / max(elapsed, 1e-6) / 1e6:.0f} MB/s)")
    return 0


def _in_mount(path: str) -> bool:
    try:
        _locate(path, None)
        return True
    except (NotFound, XosError):
        return False
