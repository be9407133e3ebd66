"""Every default path, socket name and port of xos, in one place: $XOS_HOME for state, $XOS_RUN for sockets."""

from __future__ import annotations

import os

WORK = "/run/xos-work"  # where a workspace's processes see its directory: one path on every node (init.c)
GRID = WORK + "/grid"  # a workspace's grid volumes: GRID/VOLUME
MRC_PORT = 32636  # the grid file system's catalogue (XtreemFS's)
OSD_PORT = 32640  # an object store (XtreemFS's)
AEM_PORT = 7300  # the job manager's users


def home() -> str:
    """State directory: $XOS_HOME or /var/lib/xos."""
    return os.environ.get("XOS_HOME") or "/var/lib/xos"


def run_dir() -> str:
    """Socket directory: $XOS_RUN or /run/xos."""
    return os.environ.get("XOS_RUN") or "/run/xos"


def node_socket(run: str | None = None) -> str:
    """The node daemon's local HTTP socket."""
    return os.path.join(run or run_dir(), "node.sock")


def idmap_socket(run: str | None = None) -> str:
    """The node's identity socket, spoken by pam_xos and libnss_xos."""
    return os.path.join(run or run_dir(), "idmap.sock")


def vo_socket(run: str | None = None) -> str:
    """The VO service's management socket."""
    return os.path.join(run or run_dir(), "vo.sock")


def trust_dir(base: str | None = None) -> str:
    """Directory of trusted VO public keys."""
    return os.path.join(base or home(), "trust")


def host_dir(base: str | None = None) -> str:
    """This host's key, certificate and the grid's CA."""
    return os.path.join(base or home(), "host")


def mounts_dir(run: str | None = None) -> str:
    """Where `xos fs mount` records the mounts it started."""
    return os.path.join(run or run_dir(), "fs-mounts")
