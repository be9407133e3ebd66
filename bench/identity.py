"""Identity benchmark: PAM login with pam_xos beside pam_unix, NSS lookups beside `files`, lease throughput.

Prints a table, writes JSON with --out. Targets: pam_xos p50 under 2 ms; getpwnam and
getpwuid of a mapped account within 5 times a `files` account.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import pwd
import statistics
import subprocess
import sys
import time
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import pam as python_pam  # noqa: E402
from bench.report import pct, table, write_json  # noqa: E402
from xos.identity import install  # noqa: E402
from xos.identity.proto import Op, Status  # noqa: E402
from xos.identity.server import request  # noqa: E402
from xos.testing import TestGrid, TestVOService  # noqa: E402
from xos.vo.client import SyncClient as VOClient  # noqa: E402

LOCAL_USER = "xosbenchu"
LOCAL_PASSWORD = "bench-password-1"


def timed(fn: Any, runs: int) -> list[float]:
    out = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return out


def run(args: argparse.Namespace) -> dict[str, Any]:
    results: dict[str, Any] = {}
    with TestGrid(1, ["--pool", "bio=30000-39999"]) as grid:
        node = grid.nodes[0]
        with TestVOService() as vo:
            vo.cli("vo", "create", "bio")
            node.cli("node", "trust", "bio", os.path.join(vo.home, "vo", "signing.key.pub"))
            with VOClient(vo.socket) as c:
                c.add("bio", "alice")
                token = c.issue("bio", "alice")["token"]
                users = [f"n{i}" for i in range(args.leases)]
                tokens = {}
                for u in users:
                    c.add("bio", u)
                    tokens[u] = c.issue("bio", u)["token"]
            sock = os.path.join(node.run, "idmap.sock")
            # python-pam runs auth and account; pam_permit is the harness's own floor.
            services = {"xos": f"{install.built('pam_xos.so')} socket={sock}", "unix": "pam_unix.so",
                        "permit": "pam_permit.so"}
            for name, module in services.items():
                with open(f"/etc/pam.d/xos-bench-{name}-{node.tag}", "w") as f:
                    f.write(f"auth required {module}\naccount required {module}\n")
            subprocess.run(["useradd", "-M", "-s", "/usr/sbin/nologin", LOCAL_USER], check=True)
            try:
                subprocess.run(["chpasswd"], input=f"{LOCAL_USER}:{LOCAL_PASSWORD}\n", text=True, check=True)
                p = python_pam.pam()
                logins = {"xos": ("alice.bio", token), "unix": (LOCAL_USER, LOCAL_PASSWORD),
                          "permit": (LOCAL_USER, LOCAL_PASSWORD)}
                for name, (user, secret) in logins.items():
                    assert p.authenticate(user, secret, service=f"xos-bench-{name}-{node.tag}"), p.reason
                # Interleaved in rounds, so the shared machine's drift falls on all three alike.
                results["pam"] = {name: [] for name in logins}
                for _ in range(max(1, args.runs // 20)):
                    for name, (user, secret) in logins.items():
                        svc = f"xos-bench-{name}-{node.tag}"
                        results["pam"][name] += timed(
                            lambda u=user, s=secret, v=svc: p.authenticate(u, s, service=v), 20)
                os.environ["XOS_RUN"] = node.run
                code, _out, err = node.cli("node", "install")
                assert code == 0, err
                try:
                    uid = pwd.getpwnam("alice.bio").pw_uid
                    local_uid = pwd.getpwnam(LOCAL_USER).pw_uid
                    results["nss"] = {
                        "getpwnam_xos": timed(lambda: pwd.getpwnam("alice.bio"), args.runs),
                        "getpwnam_files": timed(lambda: pwd.getpwnam(LOCAL_USER), args.runs),
                        "getpwuid_xos": timed(lambda: pwd.getpwuid(uid), args.runs),
                        "getpwuid_files": timed(lambda: pwd.getpwuid(local_uid), args.runs),
                    }
                finally:
                    node.cli("node", "uninstall")
            finally:
                subprocess.run(["userdel", LOCAL_USER], check=False)
                for name in services:
                    os.unlink(f"/etc/pam.d/xos-bench-{name}-{node.tag}")

            async def storm() -> float:
                sem = asyncio.Semaphore(50)

                async def one(u: str) -> None:
                    async with sem:
                        st, out = await request(sock, Op.AUTH, [f"{u}.bio".encode(), b"b", tokens[u].encode()], 30)
                        assert st == Status.OK, out

                t0 = time.perf_counter()
                await asyncio.gather(*[one(u) for u in users])
                return time.perf_counter() - t0

            seconds = asyncio.run(storm())
            results["leases"] = {"count": len(users), "seconds": seconds}
    return results


def report(r: dict[str, Any]) -> str:
    ms = 1000.0
    rows = [("measurement", "xos p50", "xos p99", "peer", "peer p50", "peer p99", "xos/peer p50")]
    pam = r["pam"]
    rows.append(("PAM authenticate (ms)", f"{statistics.median(pam['xos']) * ms:.2f}",
                 f"{pct(pam['xos'], 99) * ms:.2f}",
                 "pam_unix", f"{statistics.median(pam['unix']) * ms:.2f}", f"{pct(pam['unix'], 99) * ms:.2f}",
                 f"{statistics.median(pam['xos']) / statistics.median(pam['unix']):.2f}"))
    rows.append(("  python-pam floor (ms)", f"{statistics.median(pam['permit']) * ms:.2f}",
                 f"{pct(pam['permit'], 99) * ms:.2f}", "pam_permit", "", "", ""))
    for call in ("getpwnam", "getpwuid"):
        x, f = r["nss"][f"{call}_xos"], r["nss"][f"{call}_files"]
        rows.append((f"{call} through NSS (us)", f"{statistics.median(x) * 1e6:.1f}", f"{pct(x, 99) * 1e6:.1f}",
                     "files", f"{statistics.median(f) * 1e6:.1f}", f"{pct(f, 99) * 1e6:.1f}",
                     f"{statistics.median(x) / statistics.median(f):.2f}"))
    lines = table(rows)
    le = r["leases"]
    lines.append(f"\nlease allocation for new users (login over the identity socket, 50 at once): "
                 f"{le['count'] / le['seconds']:.0f} per second ({le['count']} users)")
    lines.append("targets: pam_xos p50 < 2 ms; NSS within 5x files")
    return "\n".join(lines)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--runs", type=int, default=300)
    p.add_argument("--leases", type=int, default=300)
    p.add_argument("--out")
    args = p.parse_args()
    results = run(args)
    print(report(results))
    write_json(args.out, results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
