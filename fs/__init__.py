"""The grid file system (catalogue, object storage, replicas, FUSE client): see issue 6.

`xos.fs.Client` is the Python API for programs that do not want a mount."""

from __future__ import annotations

from typing import Any

__all__ = ["Client"]


def __getattr__(name: str) -> Any:
    # Lazily: the MRC and OSD import this package and need none of the client.
    if name == "Client":
        from xos.fs.client import Client

        return Client
    raise AttributeError(name)
