"""systemd units for xos's daemons, written by `xos service install ROLE` and removed by `xos service
uninstall ROLE`.

Each daemon's flags come from /etc/xos/ROLE.env (`XOS_ARGS="..."`; an OSD's from /etc/xos/osd-ID.env).
The node runs as root (it makes cgroups, namespaces, mounts and accounts); every other daemon runs as a
user of its own made up by systemd (`DynamicUser=`), with its state in /var/lib/xos/ROLE, a read-only
system, no capabilities and no way to gain any. Keys those daemons read (the file system's key, a host
directory) are handed to them with `LoadCredential=` in a drop-in of the admin's.
"""

from __future__ import annotations

import os
import sys

from xos.errors import InvalidInput

ROLES = {"node": "the node daemon: workspaces, logins, checkpoints", "vo": "the VO service",
         "aem": "the job manager", "mrc": "the grid file system's metadata and replica catalogue",
         "osd": "a grid file system object store (xos-osd@ID)"}
UNIT_DIR = "/etc/systemd/system"

# What a daemon that is not the node is kept from: it serves TCP and its own state, nothing else.
CONFINED = """DynamicUser=yes
StateDirectory={state}
StateDirectoryMode=0700
RuntimeDirectory={runtime}
Environment=XOS_HOME=%S/{state} XOS_RUN=%t/{runtime}
UMask=0077
ProtectSystem=strict
ProtectHome=read-only
PrivateTmp=yes
PrivateDevices=yes
NoNewPrivileges=yes
CapabilityBoundingSet=
AmbientCapabilities=
RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6
RestrictNamespaces=yes
RestrictRealtime=yes
RestrictSUIDSGID=yes
LockPersonality=yes
ProtectKernelTunables=yes
ProtectKernelModules=yes
ProtectKernelLogs=yes
ProtectControlGroups=yes
ProtectClock=yes
ProtectHostname=yes
SystemCallArchitectures=native
"""

# The node is root's by nature; it still gets no new privileges from its children's binaries' bits.
NODE = """Environment=XOS_HOME=/var/lib/xos XOS_RUN=/run/xos
StateDirectory=xos
StateDirectoryMode=0700
RuntimeDirectory=xos
RuntimeDirectoryPreserve=yes
KillMode=mixed
TimeoutStopSec=60
LimitNOFILE=1048576
Delegate=yes
"""


def unit_name(role: str) -> str:
    """The unit file's name for `role`."""
    if role not in ROLES:
        raise InvalidInput(f"no daemon {role!r}: one of {', '.join(sorted(ROLES))}", field="role")
    return "xos-osd@.service" if role == "osd" else f"xos-{role}.service"


def unit(role: str, python: str = sys.executable) -> str:
    """The text of `role`'s unit, starting `python -m xos serve ROLE`."""
    unit_name(role)
    env = "/etc/xos/osd-%i.env" if role == "osd" else f"/etc/xos/{role}.env"
    if role == "osd":
        extra = "--id %i --dir %S/xos/osd-%i "
        body = CONFINED.format(state="xos/osd-%i", runtime="xos-osd-%i")
    elif role == "node":
        extra, body = "", NODE
    else:
        extra, body = "", CONFINED.format(state=f"xos/{role}", runtime=f"xos-{role}")
    return f"""[Unit]
Description=xos: {ROLES[role]}
After=network-online.target
Wants=network-online.target

[Service]
Type=simple
EnvironmentFile=-{env}
ExecStart={python} -m xos serve {role} {extra}$XOS_ARGS
Restart=on-failure
RestartSec=2
{body}
[Install]
WantedBy=multi-user.target
"""


def install(role: str, directory: str = UNIT_DIR, python: str = sys.executable) -> str:
    """Write `role`'s unit into `directory` (refusing to overwrite one that is not ours); its path."""
    path = os.path.join(directory, unit_name(role))
    text = unit(role, python)
    if os.path.lexists(path):
        with open(path) as f:
            if not f.read().startswith("[Unit]\nDescription=xos: "):
                raise InvalidInput(f"{path} exists and is not an xos unit: not overwritten")
    os.makedirs(directory, exist_ok=True)
    tmp = f"{path}.{os.getpid()}.tmp"
    with open(tmp, "w") as f:
        f.write(text)
    os.replace(tmp, path)
    return path


def uninstall(role: str, directory: str = UNIT_DIR) -> bool:
    """Remove `role`'s unit if it is ours; whether there was one."""
    path = os.path.join(directory, unit_name(role))
    try:
        with open(path) as f:
            if not f.read().startswith("[Unit]\nDescription=xos: "):
                raise InvalidInput(f"{path} is not an xos unit: left alone")
    except FileNotFoundError:
        return False
    os.unlink(path)
    return True
