"""A node's ad pushed to the job managers it names: at once when what a job could get here changes, else
every ad_interval, over TLS as the node its certificate names."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import aiohttp

from xos.errors import XosError
from xos.node.service import NodeService
from xos.wire import codec

log = logging.getLogger(__name__)

AD_CHECK = 0.25  # seconds between looks at the ad for a change worth pushing at once
VOLATILE = ("LoadAvg",)  # changes all the time: pushed with the next interval, not at once


async def advertise(svc: NodeService, aem: str) -> None:
    """Push this node's ad to the job manager at `aem`: at once when what a job could get changes (a
    workspace made or gone, the offer changed), else every ad_interval, so the ad lives while the
    node does. A job manager that cannot be reached is tried again at the next push."""
    cfg = svc.config
    url = f"{aem.rstrip('/')}/v1/peer/ads/{cfg.name}"
    last: dict[str, Any] | None = None
    sent_at = 0.0
    down = False
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5, sock_connect=2),
                                     connector=aiohttp.TCPConnector(ssl=cfg.host().client_context())) as session:
        while True:
            ad = svc.classad()
            stable = {k: v for k, v in ad.items() if k not in VOLATILE}
            if stable != last or time.monotonic() - sent_at >= svc.config.ad_interval:
                try:
                    async with session.put(url, json={"url": cfg.own_peer_url(), "ad": ad}) as r:
                        if r.status >= 400:  # a failure's body is JSON; a success's need not be
                            codec.check(r.status, await r.json(content_type=None))
                    last, sent_at = stable, time.monotonic()
                    if down:
                        log.info("job manager %s takes this node's ad again", aem)
                    down = False
                except (aiohttp.ClientError, OSError, TimeoutError, ValueError, XosError) as e:
                    if not down:
                        log.info("job manager %s did not take this node's ad: %s", aem, e)
                    down, sent_at = True, time.monotonic()  # tried: again at the next interval or change
                    last = stable
            await asyncio.sleep(AD_CHECK)
