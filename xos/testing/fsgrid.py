"""A grid file system on one machine: an MRC, OSDs and client hosts, each in its own network namespace.

Used by the tests, the demo and the benchmark. The FUSE mounts are made by processes inside a
client host's network namespace but in this mount namespace, so the caller reads and writes
them with plain file calls. Everything is removed on teardown, also after a failure.
"""

from __future__ import annotations

import contextlib
import os
import resource
import secrets
import shutil
import signal
import socket
import ssl
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from pyroute2 import IPRoute

from xos.identity import credential
from xos.kernel import spawn as sp
from xos.node import network
from xos.paths import MRC_PORT, OSD_PORT
from xos.testing import Built, TestNode, claim_subnet, netns, remove_links, signed_host, wait_for
from xos.testing.terminal import Terminal
from xos.wire import hostid
from xos.wire.hostid import HostIdentity

FS_NET = "198.18.1"


@dataclass
class Proc:
    """A daemon in a host's namespace."""

    argv: list[str]
    log: str
    pid: int = 0
    pidfd: int = -1
    status: int | None = None  # exit status once it has exited

    def alive(self) -> bool:
        if self.pidfd < 0:
            return False
        info = os.waitid(os.P_PIDFD, self.pidfd, os.WEXITED | os.WNOHANG)
        if info is None:
            return True
        self.status = info.si_status if info.si_code == os.CLD_EXITED else 128 + info.si_status
        os.close(self.pidfd)
        self.pidfd = -1
        return False

    def send(self, sig: int) -> None:
        if self.pidfd >= 0:
            with contextlib.suppress(ProcessLookupError, OSError):
                sp.pidfd_send_signal(self.pidfd, sig)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 10) -> None:
        """Signal and wait; SIGKILL if it lingers."""
        self.send(sig)
        try:
            wait_for(lambda: not self.alive(), timeout, f"{self.argv[3:5]} to exit")
        except TimeoutError:
            self.send(signal.SIGKILL)
            wait_for(lambda: not self.alive(), timeout, f"{self.argv[3:5]} to die")


class CliRun:
    """An `xos` command running in a host; with a terminal for its stderr, what that shows is read as it
    comes."""

    def __init__(self, host: Host, proc: Proc, out: str, term: Terminal | None = None) -> None:
        self.host, self.proc, self.out, self.term = host, proc, out, term

    def shown(self) -> str:
        """What the terminal showed so far."""
        return self.term.shown() if self.term else ""

    def wait(self, timeout: float = 300) -> tuple[int, str, str]:
        """(status, stdout, stderr or what the terminal showed) once the command ends."""
        try:
            wait_for(lambda: not self.proc.alive(), timeout, f"xos {' '.join(self.proc.argv[3:5])}")
        finally:
            if self.proc.pidfd >= 0:
                self.proc.stop(signal.SIGKILL)
            self.host.procs.remove(self.proc)
            shown = self.term.close() if self.term else None
        with open(self.out) as f:
            text = f.read()
        os.unlink(self.out)
        assert self.proc.status is not None
        return self.proc.status, text, text if shown is None else shown


@dataclass
class Host:
    """A network namespace on the grid bridge with an address."""

    name: str
    index: int
    netns_path: str
    procs: list[Proc] = field(default_factory=list)

    @property
    def address(self) -> str:
        return f"{FS_NET}.{10 + self.index}"


@contextlib.contextmanager
def fs_grid(volumes: dict[str, dict[str, Any]], allowed: list[str] | None = None,
            **grid: Any) -> Iterator[FsGrid]:
    """An FsGrid (`grid`: its arguments) with these volumes (name: mkvol options, as alice of vo-a), whose
    daemons' logs must hold no warning but the `allowed` ones when the block ends."""
    with FsGrid(**grid) as g:
        for name, opts in volumes.items():
            g.mkvol(name, **opts)
        yield g
        bad = g.unexpected_warnings(allowed or [])
        assert not bad, bad


class FsGrid(Built):
    """MRC, `osds` OSDs and `clients` client hosts; VOs vo-a and vo-b with credentials for their members."""

    __test__ = False

    def __init__(self, osds: int = 3, clients: int = 2, grace: float = 3.0, idle: float = 3600.0,
                 cap_ttl: float = 600.0, vo_urls: tuple[str, ...] = (), ca_dir: str | None = None,
                 plaintext: bool = False, cred_ttl: int = 3600, db: str = "", standby: bool = False) -> None:
        self.tag = secrets.token_hex(2)
        self.base = tempfile.mkdtemp(prefix=f"xos-fs-{self.tag}-")
        os.chmod(self.base, 0o755)
        self.bridge = f"xf{self.tag}"
        self.n_osds, self.n_clients = osds, clients
        self.grace, self.idle, self.cap_ttl = grace, idle, cap_ttl
        self.cred_ttl = cred_ttl  # seconds the members' credentials live: a mount outliving its own is refused
        self.db = db  # the MRC's catalogue URL (default: SQLite in its home)
        if standby and not db.startswith("postgresql://"):
            raise ValueError("a standby MRC shares the active one's catalogue: give a PostgreSQL db")
        self.standby = standby  # a second MRC on a host of its own, standing by (xos.leader)
        self.mrcs: list[Host] = []
        self.follow = [a for url in vo_urls for a in ("--vo-url", url)]  # VO services the MRC and OSDs follow
        self.hosts: list[Host] = []
        self.mrc: Host | None = None
        self.osds: list[Host] = []
        self.clients: list[Host] = []
        self.mounts: list[tuple[str, Proc]] = []
        self.trust = os.path.join(self.base, "trust")
        self.key = os.path.join(self.base, "fs.key")
        # The grid's CA (this grid's own unless a node grid's is given) signs the MRC's and OSDs' certificates;
        # `plaintext`: no TLS, only to measure what it costs.
        self.ca_dir = ca_dir or os.path.join(self.base, "ca")
        self.plaintext = plaintext
        self._vo_keys: dict[str, object] = {}
        self.attached = 0  # other namespaces given an interface on the bridge

    @property
    def mrc_url(self) -> str:
        """The MRC's URL; with a standby, both hosts in it (https://A:PORT,B:PORT), as clients are given it."""
        assert self.mrcs
        return f"{self.scheme}://" + ",".join(f"{h.address}:{MRC_PORT}" for h in self.mrcs)

    def osd_url(self, i: int) -> str:
        return f"{self.scheme}://{self.osds[i].address}:{OSD_PORT}"

    @property
    def _plain(self) -> list[str]:
        return ["--plaintext"] if self.plaintext else []

    @property
    def scheme(self) -> str:
        return "http" if self.plaintext else "https"

    @property
    def ca(self) -> str:
        """The grid CA's certificate, for users' clients (XOS_CA)."""
        return os.path.join(self.ca_dir, "ca.pem")

    def host_identity(self, host: Host, roles: list[str]) -> str:
        """`host`'s identity (XOS_HOME/host, where its daemons look), signed by the grid's CA: the directory."""
        return signed_host(self.ca_dir, os.path.join(self.base, host.name, "host"), host.name, roles, [host.address])

    def urlopen(self, req: Any, timeout: float = 10, host: bool = False) -> Any:
        """urllib's urlopen of this grid's MRC or an OSD, as a user's client (or, with `host`, as a host with
        the MRC's role)."""
        import urllib.request

        tls = None if self.plaintext else self.admin_tls() if host else self.user_tls()
        return urllib.request.urlopen(req, timeout=timeout, context=tls)

    def connect(self, host: str, port: int, timeout: float = 10) -> socket.socket:
        """A connection to the MRC or an OSD at host:port as a user's client (TLS unless plaintext)."""
        sock = socket.create_connection((host, port), timeout=timeout)
        if self.plaintext:
            return sock
        try:
            return self.user_tls().wrap_socket(sock, server_hostname=host)
        except BaseException:
            sock.close()
            raise

    def user_tls(self) -> ssl.SSLContext:
        """A TLS context of a user's client: the servers' certificates checked against the grid's CA."""
        return hostid.user_context(self.ca)

    def admin_tls(self) -> ssl.SSLContext:
        """A TLS context of a host with the MRC's role, for the calls only the file system's hosts may make."""
        return HostIdentity(signed_host(self.ca_dir, os.path.join(self.base, "admin"), "grid-admin",
                                        ["mrc"])).client_context()

    def _build(self) -> None:
        with open(os.open(self.key, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "w") as f:
            f.write(secrets.token_hex(32))
        trust = credential.TrustStore(self.trust)
        for vo in ("vo-a", "vo-b"):
            key = credential.new_key(os.path.join(self.base, "vo", f"{vo}.key"))
            self._vo_keys[vo] = key
            trust.trust(vo, credential.public_pem(key.public_key()))
        if not os.path.exists(self.ca):
            hostid.ca_init(self.ca_dir)
        claim_subnet(f"{FS_NET}.1")
        names = ["mrc"] + [f"osd{i}" for i in range(self.n_osds)] + [f"client{i}" for i in range(self.n_clients)]
        names += ["mrc1"] if self.standby else []
        with IPRoute(use_socket=network.netlink_socket()) as ipr:
            ipr.link("add", ifname=self.bridge, kind="bridge")
            br = ipr.link_lookup(ifname=self.bridge)[0]
            ipr.addr("add", index=br, address=f"{FS_NET}.1", prefixlen=24)
            ipr.link("set", index=br, state="up")
            for i, name in enumerate(names):
                host = Host(name, i, netns.create(f"xos-fs-{self.tag}-{name}"))
                self.hosts.append(host)
                self._wire(ipr, br, host)
        self.mrc = self.hosts[0]
        self.osds = self.hosts[1:1 + self.n_osds]
        self.clients = self.hosts[1 + self.n_osds:1 + self.n_osds + self.n_clients]
        self.mrcs = [self.mrc] + self.hosts[1 + self.n_osds + self.n_clients:]
        for host in self.mrcs:
            self.host_identity(host, ["mrc"])
        for host in self.osds:
            self.host_identity(host, ["osd"])
        self.start_mrc()
        for i in range(self.n_osds):
            self.start_osd(i)
        wait_for(lambda: sum(bool(o["alive"]) for o in self.osd_list()) == self.n_osds, 20, "every OSD to register")
        if self.standby:
            self.start_mrc(1, standing_by=True)

    def _wire(self, ipr: IPRoute, br: int, host: Host) -> None:
        veth = f"xf{self.tag}{host.index}"
        nsfd = os.open(host.netns_path, os.O_RDONLY | os.O_CLOEXEC)
        try:
            ipr.link("add", ifname=veth, kind="veth", peer={"ifname": f"{veth}p", "net_ns_fd": nsfd})
            idx = ipr.link_lookup(ifname=veth)[0]
            ipr.link("set", index=idx, master=br, state="up")
            with IPRoute(use_socket=network.netlink_socket(nsfd)) as inner:
                inner.link("set", index=inner.link_lookup(ifname="lo")[0], state="up")
                peer = inner.link_lookup(ifname=f"{veth}p")[0]
                inner.link("set", index=peer, ifname="eth0", state="up")
                inner.addr("add", index=peer, address=host.address, prefixlen=24)
        finally:
            os.close(nsfd)

    def attach(self, netns_path: str) -> str:
        """Give another namespace (a test node, whose workspaces mount volumes) an interface on this grid's
        bridge, `fs0`; its address."""
        self.attached += 1
        veth, address = f"xf{self.tag}x{self.attached}", f"{FS_NET}.{200 + self.attached}"
        nsfd = os.open(netns_path, os.O_RDONLY | os.O_CLOEXEC)
        try:
            with IPRoute(use_socket=network.netlink_socket()) as ipr:
                ipr.link("add", ifname=veth, kind="veth", peer={"ifname": f"{veth}p", "net_ns_fd": nsfd})
                ipr.link("set", index=ipr.link_lookup(ifname=veth)[0],
                         master=ipr.link_lookup(ifname=self.bridge)[0], state="up")
            with IPRoute(use_socket=network.netlink_socket(nsfd)) as inner:
                peer = inner.link_lookup(ifname=f"{veth}p")[0]
                inner.link("set", index=peer, ifname="fs0", state="up")
                inner.addr("add", index=peer, address=address, prefixlen=24)
        finally:
            os.close(nsfd)
        return address

    def spawn(self, host: Host, args: list[str], log_name: str, stderr: int = -1) -> Proc:
        """Start `xos ARGS` inside a host's network namespace (see spawn_argv)."""
        return self.spawn_argv(host, [sys.executable, "-m", "xos", *args], log_name, stderr)

    def spawn_argv(self, host: Host, argv: list[str], log_name: str, stderr: int = -1) -> Proc:
        """Start a program inside a host's network namespace, its output in `log_name` (its stderr on the
        descriptor `stderr` if one is given)."""
        proc = Proc(argv, os.path.join(self.base, log_name))
        env = {**os.environ, "XOS_HOME": os.path.join(self.base, host.name), "XOS_RUN": os.path.join(self.base, "run"),
               "XOS_CA": self.ca}
        if self.plaintext:
            env["XOS_INSECURE_TESTS"] = "1"
        os.makedirs(env["XOS_HOME"], exist_ok=True)
        nsfd = os.open(host.netns_path, os.O_RDONLY | os.O_CLOEXEC)
        logfd = os.open(proc.log, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600)
        null = os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
        try:
            # the soft limit on open files a systemd service or login session starts with (1,024), under
            # the hard one this process has: what the services are started with on real nodes
            hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
            proc.pid = sp.spawn(sp.SpawnSpec(argv=argv, env=env, ns_pidfd=nsfd, ns_flags=sp.CLONE_NEWNET,
                                             rlimits={resource.RLIMIT_NOFILE: (min(1024, hard), hard)},
                                             stdin=null, stdout=logfd, stderr=logfd if stderr < 0 else stderr,
                                             cwd=self.base,
                                             pdeathsig=signal.SIGTERM))
        finally:
            for fd in (nsfd, logfd, null):
                os.close(fd)
        proc.pidfd = sp.pidfd_open(proc.pid)
        host.procs.append(proc)
        return proc

    def start_mrc(self, which: int = 0, standing_by: bool = False) -> Proc:
        """Start MRC `which` (0, or 1: the standby's host); wait until it answers, or with `standing_by`,
        until it says it stands by."""
        host = self.mrcs[which]
        proc = self.spawn(host, ["serve", "mrc", "--listen", f"{host.address}:{MRC_PORT}", "--key", self.key,
                                 "--trust", self.trust, "--grace", str(self.grace), "--idle", str(self.idle),
                                 "--cap-ttl", str(self.cap_ttl), *self.follow, *self._plain,
                                 *(["--db", self.db] if self.db else [])],
                          f"{host.name}.log")
        if standing_by:
            wait_for(lambda: self._says(proc, "standing by"), 20, f"{host.name} to stand by")
        else:
            wait_for(lambda: self._answers(proc, f"{self.scheme}://{host.address}:{MRC_PORT}/v1/osds"), 20,
                     "the MRC to answer")
        return proc

    @staticmethod
    def _says(proc: Proc, what: str) -> bool:
        if not proc.alive():
            with open(proc.log) as f:
                raise RuntimeError(f"{proc.argv[3:5]} exited at start-up:\n{f.read()[-3000:]}")
        with open(proc.log) as f:
            return what in f.read()

    def start_osd(self, i: int) -> Proc:
        host = self.osds[i]
        data = os.path.join(self.base, host.name, "data")
        os.makedirs(data, exist_ok=True)
        return self.spawn(host, ["serve", "osd", "--id", host.name, "--dir", data, "--listen",
                                 f"{host.address}:{OSD_PORT}", "--mrc", self.mrc_url,
                                 "--trust", self.trust, *self.follow, *self._plain], f"{host.name}.log")

    def osd_dir(self, i: int) -> str:
        return os.path.join(self.base, self.osds[i].name, "data")

    def _answers(self, proc: Proc, url: str) -> bool:
        import urllib.error
        import urllib.request

        if not proc.alive():
            with open(proc.log) as f:
                raise RuntimeError(f"{proc.argv[3:5]} exited at start-up:\n{f.read()[-3000:]}")
        try:
            urllib.request.urlopen(url, timeout=1, context=None if self.plaintext else self.user_tls()).close()
            return True
        except urllib.error.HTTPError:
            return True  # it answers, if only to refuse
        except OSError:
            return False

    def osd_list(self) -> list[dict[str, object]]:
        from xos.fs.auth import PLAINTEXT_HOST
        from xos.fs.client.client import Client

        c = Client(self.mrc_url, "", "", tls=None if self.plaintext else self.admin_tls())
        c._auth = {PLAINTEXT_HOST: "mrc grid-admin"} if self.plaintext else {}
        try:
            return list(c.mrc("GET", "/v1/osds")["osds"])
        finally:
            c.close()

    def add_vo(self, vo: str, key: object) -> None:
        """Trust another VO's signing key (an Ed25519 private key, to issue its members' credentials here)."""
        self._vo_keys[vo] = key
        self.trust_vo(vo, credential.public_pem(key.public_key()))  # type: ignore[attr-defined]

    def credential(self, user: str, vo: str = "vo-a", ttl: int | None = None,
                   roles: tuple[str, ...] = ("member",)) -> str:
        """A credential of `user` in `vo`, signed by the VO's key, living `ttl` seconds (the grid's cred_ttl)."""
        token, _ = credential.issue(self._vo_keys[vo], user, vo, list(roles), [],  # type: ignore[arg-type]
                                    self.cred_ttl if ttl is None else ttl)
        return token

    def cred_file(self, user: str, vo: str = "vo-a") -> str:
        path = os.path.join(self.base, f"{user}.{vo}.cred")
        if not os.path.exists(path):
            with open(os.open(path, os.O_WRONLY | os.O_CREAT, 0o600), "w") as f:
                f.write(self.credential(user, vo))
        return path

    def client(self, volume: str, user: str = "alice", vo: str = "vo-a",
               roles: tuple[str, ...] = ("member",)) -> object:
        """A Python API client (from this namespace: the grid bridge is reachable from the host)."""
        from xos.fs.client.client import Client

        return Client(self.mrc_url, volume, self.credential(user, vo, roles=roles), ca=self.ca)

    def cli(self, *args: str, host: Host | None = None, tty: bool = False) -> tuple[int, str, str]:
        """`xos ARGS` in a client host's namespace: (status, stdout, stderr); with `tty`, stderr is a
        terminal and the third is what it showed."""
        return self.start_cli(*args, host=host, tty=tty).wait()

    def start_cli(self, *args: str, host: Host | None = None, tty: bool = False) -> CliRun:
        """`xos ARGS` started in a client host's namespace; `wait()` for its end."""
        host = host or self.clients[0]
        out = os.path.join(self.base, f"cli-{secrets.token_hex(4)}.out")
        if not tty:
            return CliRun(host, self.spawn(host, list(args), os.path.basename(out)), out)
        term = Terminal()
        try:
            proc = self.spawn(host, list(args), os.path.basename(out), term.slave)
        except BaseException:
            term.close()
            raise
        term.started()
        return CliRun(host, proc, out, term)

    def mkvol(self, name: str, user: str = "alice", vo: str = "vo-a", **opts: object) -> None:
        c = self.client(name, user, vo)
        try:
            c.mrc("POST", "/v1/volumes", {"name": name, **opts})  # type: ignore[attr-defined]
        finally:
            c.close()  # type: ignore[attr-defined]

    def trust_vo(self, vo: str, pem: bytes) -> None:
        """Trust a VO whose credentials another service issues (its public key)."""
        credential.TrustStore(self.trust).trust(vo, pem)

    def mount(self, client: int, volume: str, user: str = "alice", vo: str = "vo-a", cred: str | None = None,
              options: tuple[str, ...] = ()) -> str:
        """Mount `volume` from client host `client` as `user` (or with the credential file `cred`), with more
        `xos fs mount` options; the mount point."""
        mp = os.path.join(self.base, f"mnt-{client}-{volume}-{user}")
        held = {where for where, _ in self.mounts}
        n = 1
        while mp in held:  # a second mount of the same volume on the same host: beside the first
            n += 1
            mp = os.path.join(self.base, f"mnt-{client}-{volume}-{user}-{n}")
        os.makedirs(mp, exist_ok=True)
        proc = self.spawn(self.clients[client], ["fs", "mount", f"{self.mrc_url}/{volume}", mp, "--foreground",
                                                 "--cred", cred or self.cred_file(user, vo), *options],
                          f"mount-{client}-{user}.log")
        self.mounts.append((mp, proc))

        def mounted() -> bool:
            if not proc.alive():
                with open(proc.log) as f:
                    raise RuntimeError(f"mount exited:\n{f.read()[-3000:]}")
            with open("/proc/self/mountinfo") as f:
                return any(line.split()[4] == mp for line in f)

        wait_for(mounted, 20, f"{mp} to be mounted")
        # the mount table shows the mount before the kernel has the server's INIT reply; a stat waits for it
        os.stat(mp)
        return mp

    def umount(self, mp: str) -> None:
        for entry in list(self.mounts):
            if entry[0] == mp:
                with contextlib.suppress(OSError, Exception):
                    sp.umount(mp, sp.lib.MNT_DETACH)
                entry[1].stop()
                self.mounts.remove(entry)

    def mount_proc(self, mp: str) -> Proc:
        """The process serving the mount at `mp`."""
        return next(proc for where, proc in self.mounts if where == mp)

    def ring_completions(self, mp: str) -> int | None:
        """How many completions the kernel posted to the io_uring rings of the mount at `mp` (fdinfo's CqTail:
        one per FUSE request through them), or None if it holds none (it serves through /dev/fuse)."""
        pid = self.mount_proc(mp).pid
        total, rings = 0, 0
        for fd in os.listdir(f"/proc/{pid}/fd"):
            try:
                if os.readlink(f"/proc/{pid}/fd/{fd}") != "anon_inode:[io_uring]":
                    continue
                with open(f"/proc/{pid}/fdinfo/{fd}") as f:
                    info = dict(line.split(":", 1) for line in f if ":" in line)
            except OSError:  # closed meanwhile
                continue
            rings += 1
            total += int(info["CqTail"])
        return total if rings else None

    def logs(self) -> dict[str, str]:
        out = {}
        for name in os.listdir(self.base):
            if name.endswith(".log"):
                with open(os.path.join(self.base, name)) as f:
                    out[name] = f.read()
        return out

    def unexpected_warnings(self, allowed: list[str]) -> list[str]:
        return [f"{n}: {w}" for n, text in self.logs().items() for w in TestNode.scan_log(text, allowed)
                if not n.startswith("mount-")]

    def teardown(self) -> None:
        """Unmount, stop every process, remove namespaces, links and files."""
        for mp, _ in list(self.mounts):
            self.umount(mp)
        with open("/proc/self/mountinfo") as f:  # mounts made by `xos fs mount` in the background
            for line in f:
                where = line.split()[4]
                if where.startswith(self.base + "/"):
                    with contextlib.suppress(OSError):
                        sp.umount(where, sp.lib.MNT_DETACH)
        for host in self.hosts:
            for proc in host.procs:
                with contextlib.suppress(Exception):
                    proc.stop(timeout=10)
            netns.remove(host.netns_path)
        remove_links(self.bridge)
        if os.environ.get("XOS_KEEP_LOGS"):  # for a developer chasing a failure
            keep = os.path.join(os.environ["XOS_KEEP_LOGS"], os.path.basename(self.base))
            os.makedirs(keep, exist_ok=True)
            for name in os.listdir(self.base):
                if name.endswith(".log"):
                    shutil.copy(os.path.join(self.base, name), keep)
        shutil.rmtree(self.base, ignore_errors=True)


EMPTY_FS = """
import sys, mfusepy
class Empty(mfusepy.Operations):
    use_ns = True
mfusepy.FUSE(Empty(), sys.argv[1], foreground=True, fsname="xos-test-empty")
"""


@contextlib.contextmanager
def fuse_mount(path: str, dead: bool = False) -> Iterator[str]:
    """A FUSE mount at `path` (an empty file system); with dead=True its daemon is killed, leaving the
    mount that answers ENOTCONN, as a crashed FUSE client leaves it. Unmounted afterwards."""
    import subprocess

    os.makedirs(path, exist_ok=True)
    proc = subprocess.Popen([sys.executable, "-c", EMPTY_FS, path], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        def mounted() -> bool:
            if proc.poll() is not None:
                raise RuntimeError("the test FUSE file system exited at start-up")
            with open("/proc/self/mountinfo") as f:
                return any(line.split()[4] == path for line in f)

        wait_for(mounted, 20, f"a FUSE mount on {path}")
        if dead:
            proc.kill()
            proc.wait()
        yield path
    finally:
        with contextlib.suppress(OSError):
            sp.umount(path, sp.lib.MNT_DETACH)
        if proc.poll() is None:
            proc.kill()
        proc.wait()
