"""Named network namespaces for test nodes, made with unshare(2) and a bind mount (as `ip netns add`)."""

from __future__ import annotations

import contextlib
import os
import threading

from xos.kernel import spawn as sp

NETNS_DIR = "/run/netns"


def create(name: str) -> str:
    """Create network namespace `name` under /run/netns; its path."""
    os.makedirs(NETNS_DIR, exist_ok=True)
    path = os.path.join(NETNS_DIR, name)
    with open(path, "x"):
        pass
    error: list[BaseException] = []

    def inside() -> None:
        # unshare(CLONE_NEWNET) moves only this thread, which ends right after the bind mount.
        try:
            sp.unshare(sp.CLONE_NEWNET)
            sp.mount("/proc/thread-self/ns/net", path, None, sp.lib.MS_BIND)
        except BaseException as e:
            error.append(e)

    t = threading.Thread(target=inside, name=f"netns-{name}")
    t.start()
    t.join()
    if error:
        with contextlib.suppress(OSError):
            os.unlink(path)
        raise error[0]
    return path


def remove(name_or_path: str) -> None:
    """Unmount and remove a named namespace; missing is fine."""
    path = name_or_path if "/" in name_or_path else os.path.join(NETNS_DIR, name_or_path)
    with contextlib.suppress(OSError):
        sp.umount(path, sp.lib.MNT_DETACH)
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)


def write_sysctl(nsfd: int, key: str, value: str) -> None:
    """Set a per-namespace sysctl (net.*) inside the namespace of `nsfd`."""
    def inside() -> None:
        sp.setns(nsfd, sp.CLONE_NEWNET)
        with open("/proc/sys/" + key.replace(".", "/"), "w") as f:
            f.write(value)

    error: list[BaseException] = []

    def run() -> None:
        try:
            inside()
        except BaseException as e:
            error.append(e)

    t = threading.Thread(target=run)
    t.start()
    t.join()
    if error:
        raise error[0]
