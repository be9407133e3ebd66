"""Following VO services' signed revocation feeds: what a node, the MRC, the OSDs and the job manager refuse.

Each feed is long-polled (a revocation arrives within a second of being made), verified against each VO's
trusted key (a feed signed by another VO's key is left out, said once), and its serial kept, so a restart
asks only for what is new where the owner keeps the serials (the node keeps them on disk)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import Awaitable, Callable
from typing import Any

from xos.errors import InvalidInput, NotFound, PermissionDenied, Unavailable, XosError
from xos.identity import credential
from xos.vo.client import Client
from xos.wire import hostid

log = logging.getLogger(__name__)

WAIT = 25  # seconds a feed request waits for news
MAX_BACKOFF = 5.0  # seconds between tries while a VO service is away: a revocation made meanwhile waits no longer


class RevocationFeeds:
    """The credentials the followed VO services revoked (credential.revocation_key: VO and id), and hooks for
    those who do more."""

    def __init__(self, urls: list[str], trust: credential.TrustStore,
                 apply: Callable[[list[dict[str, Any]]], Awaitable[None]] | None = None,
                 serials: dict[str, int] | None = None,
                 saved: Callable[[str, int], None] | None = None,
                 members_changed: Callable[[str], None] | None = None, ca: str | None = None) -> None:
        for url in urls:
            if not url.startswith("https://"):
                raise InvalidInput(f"VO service {url} is not a TLS (https) address: VO services are followed over "
                                   "TLS only", field="vo-url")
        self.urls = list(urls)
        self.ca = ca  # the grid CA's certificate the VO services' are checked against (None: the default)
        # With a host directory's CA, the CA's revocation lists of host certificates are followed too.
        self.host_dir = os.path.dirname(ca) if ca else None
        self._crl_refused: dict[str, int] = {}  # a list a service handed out that we could not take: not again
        self.trust = trust
        self.revoked: set[str] = set()
        self.serials: dict[str, int] = dict(serials or {})
        self._apply = apply
        self._saved = saved
        self._members_changed = members_changed
        self._members_seen: dict[str, object] = {}  # each service's member-change count, as last seen
        self._tasks: list[asyncio.Task[None]] = []

    def start(self) -> None:
        """Follow every feed, each in a task of its own."""
        self._tasks = [asyncio.create_task(self.follow(url)) for url in self.urls]

    async def stop(self) -> None:
        """Stop following."""
        for t in self._tasks:
            t.cancel()
        for t in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await t
        self._tasks = []

    async def follow(self, url: str) -> None:
        """Long-poll one VO service's revocation feed forever, with bounded backoff when it is away."""
        delay = 0.5
        said: set[str] = set()
        while True:
            try:
                async with Client(base_url=url, ca=self.ca) as c:
                    while True:
                        since = self.serials.get(url, 0)
                        known = (max(hostid.crl_number(self.host_dir), self._crl_refused.get(url, 0)) if self.host_dir
                                 else None)
                        got = await c.revocations(since, wait=WAIT, crl=known)
                        if known is not None and isinstance(got.get("crl"), int) and got["crl"] > known:
                            await self._take_crl(c, url, got["crl"])
                        if got.get("members_changed") != self._members_seen.get(url):
                            self._members_seen[url] = got.get("members_changed")
                            if self._members_changed is not None:
                                self._members_changed(url)
                        # Only what each VO's own key signed, for that VO; the serial is ours to work out.
                        taken, refused, serial = credential.verify_feed(got.get("signed"), self.trust, since)
                        for why in set(refused) - said:  # each reason once, not at every poll
                            log.warning("revocation feed of %s: %s; left out", url, why)
                        said.update(refused)
                        if taken:
                            self.revoked.update(credential.revocation_key(str(r["vo"]), str(r["jti"])) for r in taken)
                            if self._apply is not None:
                                await self._apply(taken)
                            log.info("%d revocation(s) from %s", len(taken), url)
                        self.serials[url] = serial
                        if self._saved is not None:
                            self._saved(url, serial)
                        delay = 0.5
            except asyncio.CancelledError:
                raise
            except (Unavailable, XosError, OSError, ValueError) as e:
                log.warning("revocations from %s unavailable, retrying in %.1fs: %s", url, delay, e)
                await asyncio.sleep(delay)
                delay = min(delay * 2, MAX_BACKOFF)

    async def _take_crl(self, c: Client, url: str, number: int) -> None:
        """Take the host revocation list a VO service hands out, if the grid's CA signed it."""
        assert self.host_dir is not None
        try:
            hostid.take_crl(self.host_dir, (await c.crl()).encode())
        except (InvalidInput, PermissionDenied, NotFound) as e:
            log.warning("host revocation list %d from %s: %s; kept list %d", number, url, e.message,
                        hostid.crl_number(self.host_dir))
            self._crl_refused[url] = number
