"""Configuration of a node: one TOML file, every option also a flag, XOS_HOME and XOS_RUN honoured."""

from __future__ import annotations

import os
import socket
import tomllib
from dataclasses import dataclass, fields, replace
from typing import Any

from xos import units
from xos.allocation import Capacity
from xos.errors import InvalidInput
from xos.paths import home, host_dir, run_dir
from xos.wire.hostid import HostIdentity

_hosts: dict[str, HostIdentity] = {}  # host directory -> its identity, read once per process


@dataclass(frozen=True)
class NodeConfig:
    """Everything `xos serve node` needs to know."""

    name: str = ""
    home: str = ""
    run: str = ""
    subnet: str = "198.19.0.0/22"
    bridge: str = "xosbr0"
    cgroup: str = "auto"
    cgroup_root: str = ""
    cpu: float = 0.0
    memory: int = 0
    bandwidth: int = 10_000_000_000
    sample_interval: float = 5.0
    default_uid: int = 65534
    default_gid: int = 65534
    pools: tuple[str, ...] = ()  # "VO=FIRST-LAST": each VO's UID range for leases
    static_map: str = ""  # gridmap-like file of "VO USER ACCOUNT" (default $XOS_HOME/gridmap if present)
    vo_urls: tuple[str, ...] = ()  # VO services whose revocation lists this node follows
    lease_ttl: float = 7 * 86400
    quarantine: float = 3600
    listen: str = ""  # HOST:PORT of the peer API (images from other nodes), off when empty
    host_dir: str = ""  # this host's key, certificate and trusted CA (xos host init); default $XOS_HOME/host
    peers: tuple[str, ...] = ()  # "NAME=URL": other nodes, for `xos ws migrate NAME --to NODE`
    site: str = ""  # where the node is, for jobs' requirements (Site == "b")
    price: float = 0.0  # what a CPU-hour here costs, for ranking and accounting
    aem_urls: tuple[str, ...] = ()  # job managers' peer URLs this node pushes its ad to (over TLS, as itself)
    ad_interval: float = 10.0  # seconds between pushes of an unchanged ad (a change is pushed at once)
    peer_address: str = ""  # the peer API's URL for others, when --listen does not say (0.0.0.0)
    db: str = ""  # the node store's URL (default: SQLite in home)

    def own_peer_url(self) -> str:
        """Where other nodes and job managers reach this node's peer API."""
        if self.peer_address:
            return self.peer_address.rstrip("/")
        host, _, port = self.listen.rpartition(":")
        if not host or host in ("0.0.0.0", "::", "[::]"):
            raise InvalidInput("pushing the ad needs the peer API's address: --listen HOST:PORT with a host, "
                               "or --peer-address URL")
        return f"https://{host}:{port}"

    def peer_url(self, to: str) -> str:
        """The peer API URL of node `to` (a URL, or a name from `peers`)."""
        if to.startswith(("http://", "https://")):
            return to.rstrip("/")
        for spec in self.peers:
            name, _, url = spec.partition("=")
            if name == to:
                return url.rstrip("/")
        raise InvalidInput(f"unknown node {to!r}: give a URL or one of the peers ({', '.join(self.peers) or 'none'})")

    def ca_file(self) -> str | None:
        """The grid CA's certificate this host trusts (its host directory's), if it has one."""
        path = os.path.join(self.host_dir or host_dir(self.home or home()), "ca.pem")
        return path if os.path.exists(path) else None

    def host(self) -> HostIdentity:
        """This host's identity for links to other hosts (read once); InvalidInput when it has none."""
        directory = self.host_dir or host_dir(self.home or home())
        ident = _hosts.get(directory)
        if ident is None:
            try:
                ident = HostIdentity(directory)
            except InvalidInput as e:
                raise InvalidInput(f"this node cannot talk to other hosts: {e.message}") from None
            if "node" not in ident.roles:
                raise InvalidInput(f"the certificate in {directory} is for {', '.join(ident.roles)}, not a node")
            _hosts[directory] = ident
        return ident

    def resolved(self) -> NodeConfig:
        """Fill what was left empty from the environment and the machine."""
        name = self.name or socket.gethostname()
        cap = Capacity.of_machine(self.bandwidth)
        return replace(
            self,
            name=name,
            home=self.home or home(),
            run=self.run or run_dir(),
            cgroup_root=self.cgroup_root or f"xos.{name}",
            cpu=self.cpu or cap.cpu,
            memory=self.memory or cap.memory,
        )

    @property
    def capacity(self) -> Capacity:
        """What admission control may hand out."""
        return Capacity(cpu=self.cpu, memory=self.memory, bandwidth=self.bandwidth)

    @classmethod
    def load(cls, path: str | None, overrides: dict[str, Any]) -> NodeConfig:
        """The TOML file's [node] table (if any), then flags, then defaults for the rest."""
        values: dict[str, Any] = {}
        if path:
            try:
                with open(path, "rb") as f:
                    values.update(tomllib.load(f).get("node", {}))
            except FileNotFoundError:
                raise InvalidInput(f"configuration file {path} does not exist") from None
            except tomllib.TOMLDecodeError as e:
                raise InvalidInput(f"configuration file {path} is not valid TOML: {e}") from None
        values.update({k: v for k, v in overrides.items() if v is not None})
        known = {f.name: f for f in fields(cls)}
        unknown = set(values) - set(known)
        if unknown:
            raise InvalidInput(f"unknown node option(s): {', '.join(sorted(unknown))}")
        if "memory" in values:
            values["memory"] = units.parse_size(values["memory"])
        if "bandwidth" in values:
            values["bandwidth"] = units.parse_rate(values["bandwidth"])
        if "cpu" in values:
            values["cpu"] = units.parse_cpus(values["cpu"])
        if "price" in values:
            try:
                values["price"] = float(values["price"])
            except (TypeError, ValueError):
                raise InvalidInput(f"price {values['price']!r} is not a number") from None
            if not 0 <= values["price"] < 1e9:
                raise InvalidInput(f"price {values['price']} is out of range")
        for key in ("pools", "vo_urls", "peers", "aem_urls"):
            if key in values:
                if isinstance(values[key], dict):
                    values[key] = tuple(f"{k}={v}" for k, v in values[key].items())
                values[key] = tuple(values[key])
        return cls(**values).resolved()
