"""Fixtures that build real nodes: each in its own network namespace on a bridge made for it.

Used by the tests, the demo and the benchmarks. Everything is removed on teardown, also when
the daemon was killed or a test failed half-way.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TypeVar

from pyroute2 import IPRoute

from xos.errors import Unavailable, XosError
from xos.kernel import spawn as sp
from xos.kernel.cgroup import detect, v1
from xos.node import network
from xos.node.client import SyncClient
from xos.testing import netns
from xos.testing.terminal import Terminal
from xos.wire import hostid

B = TypeVar("B", bound="Built")
GRID_NET = "198.18.0"  # the grid bridge's /24; node i is .(10+i)
PEER_PORT = 7200  # every test node's peer API, on its grid address


def unwind_on_sigterm() -> None:
    """Make SIGTERM raise KeyboardInterrupt in this process, so `with` blocks and pytest's teardowns run.

    Python's default is to die at once: a test run or benchmark stopped by a timeout then left its
    grids' namespaces, links and mounts behind. Only from the main thread, and only over the default."""
    if threading.current_thread() is threading.main_thread() and signal.getsignal(signal.SIGTERM) == signal.SIG_DFL:
        signal.signal(signal.SIGTERM, _interrupt)


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def wait_for(cond: object, timeout: float, what: str, interval: float = 0.01, cap: float = 0.2) -> None:
    """Poll a condition until true, every `interval` growing to `cap`; TimeoutError naming `what` otherwise."""
    deadline = time.monotonic() + timeout
    delay = interval
    while not cond():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(delay)
        delay = min(delay * 1.5, cap)


@dataclass
class TestNode:
    """One node: state dir, run dir, cgroup root and network namespace of its own, its own daemon."""

    __test__ = False  # not a pytest test class

    index: int
    tag: str
    base: str
    subnet: str
    netns_path: str
    extra_args: list[str] = field(default_factory=list)
    pid: int = 0
    pidfd: int = -1
    allowed_warnings: list[str] = field(default_factory=list)

    @property
    def name(self) -> str:
        """The node's name."""
        return f"n{self.index}-{self.tag}"

    @property
    def home(self) -> str:
        return os.path.join(self.base, self.name, "home")

    @property
    def run(self) -> str:
        return os.path.join(self.base, self.name, "run")

    @property
    def log_path(self) -> str:
        return os.path.join(self.base, self.name, "node.log")

    @property
    def socket(self) -> str:
        return os.path.join(self.run, "node.sock")

    @property
    def cgroup_root(self) -> str:
        return f"xos.{self.name}"

    @property
    def address(self) -> str:
        """The node's address on the grid bridge."""
        return f"{GRID_NET}.{10 + self.index}"

    @property
    def peer_url(self) -> str:
        """The node's peer API (migrations from other nodes)."""
        return f"https://{self.address}:{PEER_PORT}"

    def env(self) -> dict[str, str]:
        """Environment that points CLI calls at this node."""
        return {**os.environ, "XOS_HOME": self.home, "XOS_RUN": self.run}

    def start(self) -> None:
        """Start `xos serve node` inside the node's namespace and wait until it answers."""
        os.makedirs(self.home, exist_ok=True)
        os.makedirs(self.run, exist_ok=True)
        argv = [sys.executable, "-m", "xos", "serve", "node", "--name", self.name, "--subnet", self.subnet,
                "--cgroup-root", self.cgroup_root, *self.extra_args]
        nsfd = os.open(self.netns_path, os.O_RDONLY | os.O_CLOEXEC)
        logfd = os.open(self.log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600)
        null = os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
        try:
            self.pid = sp.spawn(sp.SpawnSpec(argv=argv, env=self.env(), ns_pidfd=nsfd, ns_flags=sp.CLONE_NEWNET,
                                             stdin=null, stdout=logfd, stderr=logfd, cwd=self.base,
                                             pdeathsig=signal.SIGTERM))
        finally:
            for fd in (nsfd, logfd, null):
                os.close(fd)
        self.pidfd = sp.pidfd_open(self.pid)
        wait_for(self._answers, 20, f"node {self.name} to answer on {self.socket}")

    def _answers(self) -> bool:
        if self.exited() is not None:
            raise RuntimeError(f"node {self.name} exited at start-up:\n{self.log()[-3000:]}")
        if not os.path.exists(self.socket):
            return False
        try:
            with SyncClient(self.socket) as c:
                c.info()
            return True
        except Unavailable:
            return False

    def exited(self) -> int | None:
        """The daemon's exit status once it has exited (reaped here), else None."""
        if self.pidfd < 0:
            return -1
        try:
            info = os.waitid(os.P_PIDFD, self.pidfd, os.WEXITED | os.WNOHANG)
        except ChildProcessError:
            return -1
        if info is None:
            return None
        os.close(self.pidfd)
        self.pidfd = -1
        return info.si_status

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 20) -> None:
        """Signal the daemon and wait for it to exit."""
        if self.pidfd < 0:
            return
        with contextlib.suppress(ProcessLookupError, OSError):
            sp.pidfd_send_signal(self.pidfd, sig)
        wait_for(lambda: self.exited() is not None, timeout, f"node {self.name} to exit")

    def client(self) -> SyncClient:
        """A client of this node's daemon (close it, or use `with`)."""
        return SyncClient(self.socket).__enter__()

    def cli(self, *args: str, tty: bool = False) -> tuple[int, str, str]:
        """Run the `xos` CLI against this node: (exit status, stdout, stderr); with `tty`, stderr is a
        terminal and the third is what it showed."""
        import subprocess

        argv = [sys.executable, "-m", "xos", *args]
        if not tty:
            p = subprocess.run(argv, env=self.env(), capture_output=True, text=True, timeout=120)
            return p.returncode, p.stdout, p.stderr
        term = Terminal()
        try:
            proc = subprocess.Popen(argv, env=self.env(), stdout=subprocess.PIPE, stderr=term.slave, text=True)
        except BaseException:
            term.close()
            raise
        term.started()
        try:
            out, _ = proc.communicate(timeout=120)
        finally:
            proc.kill()
            proc.wait()
            shown = term.close()
        return proc.returncode, out, shown

    def log(self) -> str:
        """What the daemon wrote so far."""
        try:
            with open(self.log_path) as f:
                return f.read()
        except FileNotFoundError:
            return ""

    def expect_warning(self, pattern: str) -> None:
        """Declare a warning the test provokes on purpose."""
        self.allowed_warnings.append(pattern)

    def unexpected_warnings(self) -> list[str]:
        """Warnings and errors in the daemon log that no test declared."""
        return self.scan_log(self.log(), self.allowed_warnings)

    @staticmethod
    def scan_log(text: str, allowed: list[str]) -> list[str]:
        """Warning and error lines of a JSON log that match none of the `allowed` patterns."""
        bad = []
        for line in text.splitlines():
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                bad.append(line)  # a traceback or anything not from our logger
                continue
            if rec.get("level") in ("warning", "error", "critical") and not any(
                    re.search(p, rec.get("msg", "")) for p in allowed):
                # with where it was raised and what, when it carries an exception: a failed check says why
                tb = [t.strip() for t in rec.get("exc", "").splitlines()]
                where = [t for t in tb if t.startswith("File ")][-1:] + tb[-1:]
                bad.append(" | ".join([rec.get("msg", line), *where]))
        return bad

    def teardown(self) -> None:
        """Destroy workspaces through the daemon if it lives, then remove whatever is left."""
        if self.exited() is None:
            with contextlib.suppress(XosError, OSError, TimeoutError):
                with SyncClient(self.socket, timeout=30) as c:
                    for ws in c.ls():
                        c.rm(ws["name"])
            with contextlib.suppress(TimeoutError):
                self.stop()
            if self.exited() is None:
                self.stop(signal.SIGKILL)
        purge_cgroups(self.cgroup_root)


def purge_cgroups(root: str) -> None:
    """Kill every process under a node's cgroup root and remove the cgroups (no daemon needed)."""
    hierarchy = detect()
    for child in hierarchy.children(root):
        cg = hierarchy.cgroup(f"{root}/{child}")
        with contextlib.suppress(XosError, OSError):
            cg.kill()
        cg.remove()
    with contextlib.suppress(FileNotFoundError):
        hierarchy.remove_root(root)


class Built:
    """A fixture made whole on entry (or taken down again if making it failed) and taken down on exit, also
    when the process gets SIGTERM."""

    def _build(self) -> None:
        raise NotImplementedError

    def teardown(self) -> None:
        raise NotImplementedError

    def __enter__(self: B) -> B:
        unwind_on_sigterm()
        try:
            self._build()
        except BaseException:
            self.teardown()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.teardown()


class TestGrid(Built):
    """N nodes, each in its own network namespace, joined by a bridge in the root namespace."""

    __test__ = False

    def __init__(self, n: int = 1, extra_args: list[str] | None = None,
                 node_args: list[list[str]] | None = None, ca_dir: str | None = None, start: bool = True) -> None:
        """`start`: give the nodes identities from the grid's CA and start them; without, the namespaces and
        the bridge only (a test starts each node itself, with identities made as an admin would)."""
        self.start = start
        self.tag = secrets.token_hex(2)
        self.base = tempfile.mkdtemp(prefix=f"xos-grid-{self.tag}-")
        os.chmod(self.base, 0o755)
        self.bridge = f"xg{self.tag}"
        self.nodes: list[TestNode] = []
        self._n = n
        self._extra = extra_args or []
        self._node_args = node_args or [[] for _ in range(n)]  # each node's own flags (site, price)
        self.ca_dir = ca_dir or os.path.join(self.base, "ca")  # the grid's CA: this grid's own unless given

    @property
    def ca(self) -> str:
        """The grid CA's certificate, for users' clients of TLS daemons (XOS_CA)."""
        return os.path.join(self.ca_dir, "ca.pem")

    def host_dir(self, name: str, roles: list[str], addresses: list[str] | None = None, days: int = 1) -> str:
        """A host identity signed by the grid's CA (made once per name): its directory."""
        return signed_host(self.ca_dir, os.path.join(self.base, "hosts", name), name, roles, addresses, days)

    def _build(self) -> None:
        claim_subnet(f"{GRID_NET}.1")
        with IPRoute(use_socket=network.netlink_socket()) as ipr:
            ipr.link("add", ifname=self.bridge, kind="bridge")
            br = ipr.link_lookup(ifname=self.bridge)[0]
            ipr.addr("add", index=br, address=f"{GRID_NET}.1", prefixlen=24)
            ipr.link("set", index=br, state="up")
            for i in range(self._n):
                ns_path = netns.create(f"xos-{self.tag}-n{i}")
                node = TestNode(i, self.tag, self.base, f"198.19.{8 + i}.0/24", ns_path,
                                list(self._extra) + list(self._node_args[i]))
                self.nodes.append(node)
                self._wire(ipr, br, node)
        if not self.start:
            return
        # Every node serves the peer API on its grid address, as the host its certificate from the grid's CA
        # names, and knows the others by name.
        if not os.path.exists(self.ca):
            hostid.ca_init(self.ca_dir)
        for node in self.nodes:
            host = self.host_dir(node.name, ["node"], [node.address])
            node.extra_args += ["--listen", f"{node.address}:{PEER_PORT}", "--host-dir", host]
            node.extra_args += [arg for other in self.nodes if other is not node
                                for arg in ("--peer", f"{other.name}={other.peer_url}")]
        for node in self.nodes:
            node.start()

    def _wire(self, ipr: IPRoute, br: int, node: TestNode) -> None:
        host = f"xg{self.tag}n{node.index}"
        nsfd = os.open(node.netns_path, os.O_RDONLY | os.O_CLOEXEC)
        try:
            ipr.link("add", ifname=host, kind="veth", peer={"ifname": f"{host}p", "net_ns_fd": nsfd})
            idx = ipr.link_lookup(ifname=host)[0]
            ipr.link("set", index=idx, master=br, state="up")
            with IPRoute(use_socket=network.netlink_socket(nsfd)) as inner:
                lo = inner.link_lookup(ifname="lo")[0]
                inner.link("set", index=lo, state="up")
                peer = inner.link_lookup(ifname=f"{host}p")[0]
                inner.link("set", index=peer, ifname="eth0", state="up")
                inner.addr("add", index=peer, address=node.address, prefixlen=24)
                for other in range(self._n):
                    if other != node.index:
                        inner.route("add", dst=f"198.19.{8 + other}.0/24", gateway=f"{GRID_NET}.{10 + other}")
            netns.write_sysctl(nsfd, "net.ipv4.ip_forward", "1")
        finally:
            os.close(nsfd)

    def teardown(self) -> None:
        """Remove every node, namespace, link and directory, whatever state they are in."""
        errors = []
        for node in self.nodes:
            try:
                node.teardown()
            except Exception as e:  # keep going: the rest must still be removed
                errors.append(e)
            netns.remove(node.netns_path)
        remove_links(self.bridge)
        shutil.rmtree(self.base, ignore_errors=True)
        if errors:
            raise errors[0]


def claim_subnet(address: str) -> None:
    """Fail, naming it, if a link here holds `address` already: two test grids (one left behind by a run
    that was killed, or one running now) would route each other's traffic."""
    with IPRoute(use_socket=network.netlink_socket()) as ipr:
        for a in ipr.get_addr(family=socket.AF_INET, address=address):
            link = ipr.get_links(a["index"])[0].get_attr("IFLA_IFNAME")
            raise RuntimeError(f"{address} is held by link {link}: another test grid runs, or one was left behind "
                               f"(python -c 'from xos.testing import leftovers; print(leftovers())' lists it)")


def remove_links(prefix: str) -> None:
    """Delete the links whose names start with `prefix` (a test grid's bridge and host-side veths): now,
    not when the kernel gets round to the namespaces their peers were in."""
    with contextlib.suppress(Exception), IPRoute(use_socket=network.netlink_socket()) as ipr:
        for link in ipr.get_links():
            if link.get_attr("IFLA_IFNAME", "").startswith(prefix):
                with contextlib.suppress(Exception):
                    ipr.link("del", index=link["index"])


class TestVOService:
    """A VO service with its own XOS_HOME, signing key and management socket (and optionally TCP, over TLS
    with a certificate for role vo from the CA in `ca_dir`, its own if none is given)."""

    __test__ = False

    def __init__(self, listen: str | None = None, ca_dir: str | None = None, db: str | None = None) -> None:
        self.base = tempfile.mkdtemp(prefix="xos-vo-")
        self.db = db  # its store's URL (default: SQLite in its home)
        os.chmod(self.base, 0o755)
        self.home = os.path.join(self.base, "home")
        self.run = os.path.join(self.base, "run")
        self.listen = listen
        self.ca_dir = ca_dir or os.path.join(self.base, "ca")
        self.log_path = os.path.join(self.base, "vo.log")
        self.proc: subprocess.Popen[bytes] | None = None
        self.allowed_warnings: list[str] = []

    @property
    def socket(self) -> str:
        return os.path.join(self.run, "vo.sock")

    @property
    def url(self) -> str:
        """Where other hosts follow it (TLS)."""
        assert self.listen is not None
        return f"https://{self.listen}"

    def env(self) -> dict[str, str]:
        """Environment that points CLI calls at this service."""
        return {**os.environ, "XOS_HOME": self.home, "XOS_RUN": self.run}

    def cli(self, *args: str, input: str | None = None) -> tuple[int, str, str]:
        """Run the `xos` CLI against this service: (exit status, stdout, stderr)."""
        p = subprocess.run([sys.executable, "-m", "xos", *args], env=self.env(), capture_output=True,
                           text=True, timeout=120, input=input)
        return p.returncode, p.stdout, p.stderr

    def __enter__(self) -> TestVOService:
        unwind_on_sigterm()
        code, out, err = self.cli("init")
        if code != 0:
            raise RuntimeError(f"xos init failed: {err}")
        if self.listen:  # its host identity where `xos serve vo` looks: $XOS_HOME/host
            if not os.path.exists(os.path.join(self.ca_dir, "ca.pem")):
                hostid.ca_init(self.ca_dir)
            signed_host(self.ca_dir, os.path.join(self.home, "host"), "vo", ["vo"], [self.listen.rpartition(":")[0]])
        argv = [sys.executable, "-m", "xos", "serve", "vo"] + (["--listen", self.listen] if self.listen else [])
        argv += ["--db", self.db] if self.db else []
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(argv, env=self.env(), stdout=log, stderr=log, stdin=subprocess.DEVNULL)
        from xos.vo.client import SyncClient as VOClient

        def answers() -> bool:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise RuntimeError(f"VO service exited at start-up: {open(self.log_path).read()[-2000:]}")
            try:
                with VOClient(self.socket) as c:
                    c.ls()
                return True
            except (Unavailable, FileNotFoundError):
                return False

        try:
            wait_for(answers, 20, "the VO service to answer")
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        shutil.rmtree(self.base, ignore_errors=True)

    def unexpected_warnings(self) -> list[str]:
        """Warnings and errors in the service log that no test declared."""
        with open(self.log_path) as f:
            text = f.read()
        return TestNode.scan_log(text, self.allowed_warnings)


def leftovers() -> set[str]:
    """What test grids leave when they fail to clean up: their namespaces, links, mounts, cgroups and
    daemons. Compare before and after (other software may hold similar names)."""
    found = {f"netns {n}" for n in (os.listdir(netns.NETNS_DIR) if os.path.isdir(netns.NETNS_DIR) else [])
             if n.startswith("xos-")}
    found |= {f"link {n}" for n in os.listdir("/sys/class/net") if re.match(r"^x[gf][0-9a-f]{4}", n)}
    with open("/proc/self/mountinfo") as f:
        found |= {f"mount {line.split()[4]}" for line in f if re.search(r" /tmp/xos-", line)}
    for top in ("/sys/fs/cgroup", *(f"/sys/fs/cgroup/{c}" for c in ("unified", *v1.CONTROLLERS))):
        with contextlib.suppress(OSError):
            found |= {f"cgroup {top}/{n}" for n in os.listdir(top) if n.startswith("xos.n")}
    for pid in filter(str.isdigit, os.listdir("/proc")):
        with contextlib.suppress(OSError), open(f"/proc/{pid}/cmdline", "rb") as f:
            argv = f.read().split(b"\0")
        if argv[1:3] == [b"-m", b"xos"] and argv[3:4] in ([b"serve"], [b"fs"]) and pid != str(os.getpid()):
            found.add(f"process {pid} {b' '.join(argv[3:5]).decode()}")
        elif any(a.startswith(b"/tmp/xos-pg-") for a in argv):  # a test's PostgreSQL cluster
            found.add(f"process {pid} {os.path.basename(argv[0]).decode(errors='replace')}")
    return found


@contextlib.contextmanager
def node(extra_args: list[str] | None = None) -> Iterator[TestNode]:
    """A single test node (a grid of one)."""
    with TestGrid(1, extra_args) as grid:
        yield grid.nodes[0]


def signed_host(ca_dir: str, directory: str, name: str, roles: list[str], addresses: list[str] | None = None,
                days: int = 1) -> str:
    """A host identity in `directory` signed by the CA in `ca_dir` (made once): the directory."""
    if not os.path.exists(os.path.join(directory, "host.pem")):
        csr = hostid.host_init(directory, name, roles, addresses)
        with open(csr, "rb") as f:
            pem = hostid.ca_sign(ca_dir, f.read(), days)
        with open(os.path.join(directory, "host.pem"), "wb") as f:
            f.write(pem)
        with open(os.path.join(ca_dir, "ca.pem"), "rb") as f:
            hostid.trust(directory, f.read())
    return directory


def tls_call(host_dir: str | None, url: str, method: str = "GET", body: bytes | None = None,
             timeout: float = 10, headers: dict[str, str] | None = None) -> tuple[int, bytes]:
    """One HTTPS call as the host in `host_dir` (None: with no certificate of our own); (status, body)."""
    import ssl
    import urllib.error
    import urllib.request

    if host_dir is None:
        ctx = ssl.create_default_context()
        ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
    else:
        ctx = hostid.HostIdentity(host_dir).client_context()
    req = urllib.request.Request(url, data=body, method=method,
                                 headers={"Content-Type": "application/json", **(headers or {})})
    try:
        with urllib.request.urlopen(req, timeout=timeout, context=ctx) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


AEM_LISTEN = f"{GRID_NET}.1:7300"  # the job manager, on the grid bridge in the root namespace
AEM_URL = f"https://{AEM_LISTEN}"  # its users' API (TLS; they check it against the grid's CA, TestGrid.ca)
AEM_PEER_LISTEN = f"{GRID_NET}.1:7301"  # where nodes push their ads to it (TLS)
AEM_PEER_URL = f"https://{AEM_PEER_LISTEN}"


class TestAem:
    """The job manager of a TestGrid as a process of its own, to kill and start again."""

    __test__ = False

    def __init__(self, base: str, grid: TestGrid, trust: str, mrc: str = "", poll: float = 0.2,
                 ad_ttl: float = 2.0, pull: list[TestNode] | None = None, max_output: str = "",
                 vo_urls: tuple[str, ...] = (), db: str = "", port: int = 7300, name: str = "aem") -> None:
        """`pull`: the nodes whose ads it fetches (default all); the others push theirs (`--aem`).
        `max_output`: its cap on a job's collected stdout or stderr (default its own). `db`: its job store's
        URL (default SQLite in its home). `port`: its users' (the next one is its peers'); `name`: its
        host's, a second job manager's (a standby) is another."""
        self.base = base
        listen, peer_listen = f"{GRID_NET}.1:{port}", f"{GRID_NET}.1:{port + 1}"
        self.url, self.peer_url = f"https://{listen}", f"https://{peer_listen}"
        self.ca = grid.ca  # what its users check its certificate against
        self.argv = [sys.executable, "-m", "xos", "serve", "aem", "--listen", listen, "--trust", trust,
                     "--host-dir", grid.host_dir(name, ["aem"], [GRID_NET + ".1"]), "--peer-listen", peer_listen,
                     "--poll", str(poll), "--ad-ttl", str(ad_ttl)]
        self.argv += ["--mrc", mrc] if mrc else []
        self.argv += ["--max-output", max_output] if max_output else []
        self.argv += [a for url in vo_urls for a in ("--vo-url", url)]
        self.argv += ["--db", db] if db else []
        self.argv += [a for n in (grid.nodes if pull is None else pull) for a in ("--node", f"{n.name}={n.peer_url}")]
        self.log_path = os.path.join(base, f"{name}.log")
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        """Start it (again); its state lives under `base`."""
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(self.argv, env={**os.environ, "XOS_HOME": os.path.join(self.base, "home")},
                                         stdout=log, stderr=log, stdin=subprocess.DEVNULL)

    def kill(self, sig: int = signal.SIGKILL) -> None:
        """Signal it and wait for it to exit."""
        assert self.proc is not None
        self.proc.send_signal(sig)
        self.proc.wait(20)

    def stop(self) -> None:
        """SIGTERM if it still runs (teardown)."""
        if self.proc is not None and self.proc.poll() is None:
            self.kill(signal.SIGTERM)

    def unexpected_warnings(self, allowed: list[str]) -> list[str]:
        """Warnings and errors in its log that match none of `allowed`."""
        with open(self.log_path) as f:
            return TestNode.scan_log(f.read(), allowed)
