"""Clients of the job manager: `Client` (asyncio) and `Session`, shaped after a DRMAA v2 job session
(run a job template, wait for it to start or end, control it, read its info)."""

from __future__ import annotations

import json
import time
from typing import Any

import aiohttp

from xos.errors import XosError
from xos.wire import client as rpc
from xos.wire import codec

FINAL = ("done", "failed", "cancelled")


class Client(rpc.HttpClient):
    """An asyncio client of `xos serve aem` as one grid identity."""

    def __init__(self, url: str, token: str, timeout: float = 60.0, ca: str | None = None) -> None:
        super().__init__(base_url=url.rstrip("/"), timeout=timeout, what="job manager",
                         headers={"Authorization": f"Bearer {token.strip()}"}, ca=ca)

    async def submit(self, description: dict[str, Any] | str, wait_for_match: bool = False) -> list[dict[str, Any]]:
        """Submit a job description (an object, or JSON/YAML text); the job(s) it made."""
        text = description if isinstance(description, str) else json.dumps(description)

        async def read(resp: aiohttp.ClientResponse) -> list[dict[str, Any]]:
            data = await resp.json(content_type=None)
            codec.check(resp.status, data)
            return list(data["jobs"])

        return await self._send("POST", "/v1/jobs" + ("?wait=1" if wait_for_match else ""), read, data=text.encode())

    async def ls(self, state: str | None = None) -> list[dict[str, Any]]:
        return list((await self._call("GET", "/v1/jobs" + (f"?state={state}" if state else "")))["jobs"])

    async def status(self, job_id: str) -> dict[str, Any]:
        return dict(await self._call("GET", f"/v1/jobs/{job_id}"))

    async def control(self, job_id: str, verb: str, to: str | None = None, live: bool = False) -> dict[str, Any]:
        """hold, release, suspend, resume, cancel, checkpoint, or migrate (`to` a node, or the best other;
        `live`: stopped only briefly)."""
        query = "&".join(q for q in ((f"to={to}" if to else ""), ("live=1" if live else "")) if q)
        return dict(await self._call("POST", f"/v1/jobs/{job_id}/{verb}" + (f"?{query}" if query else ""), {}))

    async def output(self, job_id: str, stream: str = "stdout") -> str:
        """A job's stdout or stderr as text: what it wrote so far, or all of it once it ended."""
        return (await self.output_from(job_id, 0, stream))[0].decode("utf-8", "replace")

    async def output_from(self, job_id: str, offset: int, stream: str = "stdout") -> tuple[bytes, str]:
        """What a job wrote to `stream` from byte `offset` on, and the job's state when it was read: once
        that is final, nothing more will come."""
        async def read(resp: aiohttp.ClientResponse) -> tuple[bytes, str]:
            data = await resp.read()
            if resp.status >= 400:  # a failure's body is JSON; a success's need not be
                codec.check(resp.status, json.loads(data) if data.startswith(b"{") else {})
            return data, resp.headers.get("X-Job-State", "")

        return await self._send("GET", f"/v1/jobs/{job_id}/output?stream={stream}&offset={offset}", read)

    async def purge(self, job_id: str) -> dict[str, Any]:
        """Forget a finished job (its usage records stay)."""
        return dict(await self._call("DELETE", f"/v1/jobs/{job_id}"))

    async def accounting(self, vo: str | None = None, user: str | None = None, since: float = 0.0) -> dict[str, Any]:
        """Usage records and totals per VO, user and node."""
        q = "&".join(f"{k}={v}" for k, v in (("vo", vo), ("user", user), ("since", since)) if v)
        return dict(await self._call("GET", "/v1/accounting" + (f"?{q}" if q else "")))

    async def nodes(self, constraint: str | None = None, rank: str | None = None) -> list[dict[str, Any]]:
        """Node ads; with a constraint or rank, the matching ones best first."""
        from urllib.parse import urlencode

        q = urlencode({k: v for k, v in (("constraint", constraint), ("rank", rank)) if v})
        return list((await self._call("GET", "/v1/nodes" + (f"?{q}" if q else "")))["nodes"])


class Session(rpc.Sync):
    """DRMAA v2's job session without asyncio: run_job, wait_started, wait_terminated, control, job_info."""

    def __init__(self, url: str, token: str, ca: str | None = None) -> None:
        self.jm = Client(url, token, ca=ca)
        super().__init__(self.jm)
        self.__enter__()

    def run_job(self, template: dict[str, Any]) -> str:
        """Submit one job; its id."""
        return str(self.run(self.jm.submit(template))[0]["id"])

    def run_bulk_jobs(self, template: dict[str, Any], count: int) -> list[str]:
        """Submit an array of `count` jobs; their ids."""
        return [str(j["id"]) for j in self.run(self.jm.submit({**template, "count": count}))]

    def job_info(self, job_id: str) -> dict[str, Any]:
        return dict(self.run(self.jm.status(job_id)))

    def control(self, job_id: str, verb: str, to: str | None = None, live: bool = False) -> dict[str, Any]:
        """A control verb (DRMAA's control, with checkpoint and migrate added); the job as it is after it."""
        return dict(self.run(self.jm.control(job_id, verb, to, live)))

    def _wait(self, job_id: str, until: tuple[str, ...], timeout: float) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        delay = 0.05
        while True:
            info = self.job_info(job_id)
            if info["state"] in until:
                return info
            if time.monotonic() > deadline:
                raise XosError(f"job {job_id} is still {info['state']} after {timeout:g} s")
            time.sleep(delay)
            delay = min(delay * 1.5, 1.0)

    def wait_started(self, job_id: str, timeout: float = 60.0) -> dict[str, Any]:
        """Until the job runs (or has already ended)."""
        return self._wait(job_id, ("running", "suspended", *FINAL), timeout)

    def wait_terminated(self, job_id: str, timeout: float = 3600.0) -> dict[str, Any]:
        """Until the job has ended; its info (state, exit_status)."""
        return self._wait(job_id, FINAL, timeout)
