"""A job's standard streams: the names they have in its directory on its node, grid stdin read and sent along
with the job, grid stdout and stderr written back to the grid file system as the job's owner."""

from __future__ import annotations

import asyncio
import base64
from typing import Any

from xos.aem.jobspec import grid_path
from xos.errors import InvalidInput, NotFound
from xos.fs.client.client import Client as GridClient

STDIO = {"out": "stdout", "err": "stderr", "in": "stdin"}  # names in the job's directory, unless it names others
MAX_INPUT = 16 << 20  # grid stdin sent with the job (the node takes that much)


def name_on_node(stream: str, where: str) -> str:
    """The file of the job's directory its `stream` (stdout or stderr) is written to, given where it asked."""
    return STDIO["out" if stream == "stdout" else "err"] if grid_path(where) or not where else where


class GridFiles:
    """Files of the grid file system read and written with one member's credential."""

    def __init__(self, mrc: str, token: str, ca: str | None = None) -> None:
        self.mrc = mrc
        self.token = token
        self.ca = ca  # the grid CA's certificate the file system's servers are checked against

    async def read(self, where: str) -> bytes:
        """The grid file `where` (grid://VOLUME/PATH), at most MAX_INPUT bytes."""
        return await self._io(where, None)

    async def write(self, where: str, upload: str) -> None:
        """Write the local file `upload` to the grid file `where`."""
        await self._io(where, upload)

    async def _io(self, where: str, upload: str | None) -> bytes:
        if not self.mrc:
            raise InvalidInput(f"this job manager has no grid file system (--mrc) for {where}")
        loc = grid_path(where)
        assert loc is not None
        volume, path = loc

        def work() -> bytes:
            c = GridClient(self.mrc, volume, self.token, ca=self.ca)
            try:
                if upload is None:
                    with c.open(path, "rb") as f:
                        data = f.read(MAX_INPUT + 1)
                    if len(data) > MAX_INPUT:
                        raise InvalidInput(f"{where} is larger than {MAX_INPUT >> 20} MiB: have the job read it "
                                           "from a grid file system mount instead")
                    return data
                with open(upload, "rb") as src, c.open(path, "wb") as dst:
                    while block := src.read(1 << 20):
                        dst.write(block)
                return b""
            except OSError as e:
                raise NotFound(f"{where}: {e.strerror or e}") from None
            finally:
                c.close()

        return await asyncio.to_thread(work)


async def main_program(spec: dict[str, Any], grid: GridFiles) -> dict[str, Any]:
    """The job's program for its node: argv, environment, and where its stdio go. Grid file system stdout and
    stderr are written in the job's directory and copied to the grid when the job ends; grid stdin is read
    now and sent along."""
    main: dict[str, Any] = {"argv": [spec["executable"], *spec.get("arguments", [])],
                            "env": spec.get("environment", {})}
    for key, where in (("out", spec.get("stdout")), ("err", spec.get("stderr")), ("in", spec.get("stdin"))):
        name = STDIO[key]
        if where and not grid_path(where):
            name = where
        elif not where and key != "out":
            continue  # stderr with stdout; stdin empty
        main[key] = name
    stdin = spec.get("stdin") or ""
    if grid_path(stdin):
        main["input"] = base64.b64encode(await grid.read(stdin)).decode()
    return main
