"""`xos node install` / `uninstall`: put pam_xos and libnss_xos where the system looks, and take
exactly that back out. What was changed is recorded, so uninstall touches nothing else."""

from __future__ import annotations

import hashlib
import importlib.resources
import json
import os
import re
import shutil
from typing import Any

from xos.errors import MissingFeature

PAM_SERVICE = "/etc/pam.d/xos"
NSSWITCH = "/etc/nsswitch.conf"
DATABASES = ("passwd", "group")
LIBDIRS = ("/lib/x86_64-linux-gnu", "/usr/lib/x86_64-linux-gnu", "/lib/aarch64-linux-gnu",
           "/usr/lib/aarch64-linux-gnu", "/lib64", "/usr/lib64", "/lib", "/usr/lib")


def built(name: str) -> str:
    """Path of a module built with the package."""
    return str(importlib.resources.files("xos._native") / name)


def _where(filename: str, subdir: str = "") -> str:
    for d in LIBDIRS:
        if os.path.exists(os.path.join(d, subdir, filename)):
            return os.path.join(d, subdir)
    raise MissingFeature(f"cannot find where this system keeps {filename}: is it a glibc system with PAM?")


def _sha(path: str) -> str:
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def _record_path(home: str) -> str:
    return os.path.join(home, "installed.json")


def pam_service_text(socket: str | None) -> str:
    """The /etc/pam.d/xos service that other services can @include."""
    opt = f" socket={socket}" if socket else ""
    return ("# Written by 'xos node install'; removed by 'xos node uninstall'.\n"
            "# Log in with a VO credential as user.vo; names that are not grid accounts are left to others.\n"
            f"auth     sufficient pam_xos.so ignore_unknown_user{opt}\n"
            f"account  sufficient pam_xos.so ignore_unknown_user{opt}\n"
            f"session  optional   pam_xos.so ignore_unknown_user{opt}\n")


def _edit_nsswitch(text: str, add: bool) -> str:
    """Add or remove the 'xos' source on the passwd and group lines, leaving every other byte alone."""
    out = []
    for line in text.splitlines(keepends=True):
        key, colon, rest = line.partition(":")
        if colon and key.strip() in DATABASES and not line.lstrip().startswith("#"):
            sources = rest.split()
            if add and "xos" not in sources:
                # After files, so local accounts always win and never wait on the daemon.
                m = re.search(r"(?<=\s)files(?=\s|$)", rest)
                end = m.end() if m else len(rest.split("#", 1)[0].rstrip())
                rest = rest[:end] + " xos" + rest[end:]
            elif not add:
                rest = re.sub(r"[ \t]+xos(?=\s|$)", "", rest)
            line = key + colon + rest
        out.append(line)
    return "".join(out)


def install(home: str, socket: str | None = None) -> dict[str, Any]:
    """Install both modules, the PAM service and the nsswitch entries; idempotent."""
    nss_dir, pam_dir = _where("libnss_files.so.2"), _where("pam_unix.so", "security")
    record: dict[str, Any] = {"files": {}, "nsswitch": False}
    if os.path.exists(_record_path(home)):
        with open(_record_path(home)) as f:
            record = json.load(f)
    for src, dst in ((built("libnss_xos.so.2"), os.path.join(nss_dir, "libnss_xos.so.2")),
                     (built("pam_xos.so"), os.path.join(pam_dir, "pam_xos.so"))):
        tmp = dst + ".xos-new"
        shutil.copyfile(src, tmp)
        os.chmod(tmp, 0o644)
        os.replace(tmp, dst)
        record["files"][dst] = _sha(dst)
    with open(PAM_SERVICE + ".xos-new", "w") as f:
        f.write(pam_service_text(socket))
    os.replace(PAM_SERVICE + ".xos-new", PAM_SERVICE)
    record["files"][PAM_SERVICE] = _sha(PAM_SERVICE)
    with open(NSSWITCH) as f:
        text = f.read()
    edited = _edit_nsswitch(text, add=True)
    if edited != text:
        with open(NSSWITCH + ".xos-new", "w") as f:
            f.write(edited)
        os.replace(NSSWITCH + ".xos-new", NSSWITCH)
        record["nsswitch"] = True
    os.makedirs(home, exist_ok=True)
    with open(_record_path(home), "w") as f:
        json.dump(record, f, indent=1)
    return record


def uninstall(home: str) -> list[str]:
    """Reverse `install`: only files still as installed, only the 'xos' source; what was undone."""
    done = []
    record: dict[str, Any] = {"files": {}, "nsswitch": False}
    if os.path.exists(_record_path(home)):
        with open(_record_path(home)) as f:
            record = json.load(f)
    for path, sha in record.get("files", {}).items():
        if os.path.exists(path) and _sha(path) == sha:
            os.unlink(path)
            done.append(path)
    with open(NSSWITCH) as f:
        text = f.read()
    edited = _edit_nsswitch(text, add=False) if record.get("nsswitch") else text
    if edited != text:
        with open(NSSWITCH + ".xos-new", "w") as f:
            f.write(edited)
        os.replace(NSSWITCH + ".xos-new", NSSWITCH)
        done.append(NSSWITCH)
    if os.path.exists(_record_path(home)):
        os.unlink(_record_path(home))
    return done
