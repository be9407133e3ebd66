"""What a job manager finds of its jobs when it starts again (after SIGKILL too, or on taking over from
another): each job caught between two states is settled by asking the nodes where it is."""

from __future__ import annotations

import logging

from xos.aem.jobs import JobStore, State
from xos.aem.nodes import Nodes, ws_name
from xos.errors import NotFound, XosError

log = logging.getLogger(__name__)


async def recover(store: JobStore, nodes: Nodes) -> None:
    """A job left matched either started on its node (running now) or did not (queued again) — never started
    twice. A job caught checkpointing or migrating runs wherever its workspace is now."""
    for job in store.ls(State.CHECKPOINTING) + store.ls(State.MIGRATING):
        where = None
        for name in list(nodes.urls):  # a node's first push adds to them while this waits
            try:
                await nodes.call("GET", name, f"/v1/peer/workspaces/{ws_name(job.id)}")
                where = name
                break
            except XosError:
                continue
        if where is None:
            store.transition(job.id, State.REQUEUED, "lost while the job manager was down")
        else:
            store.transition(job.id, State.RUNNING, f"found on node {where} after a restart", node=where)
    for job in store.ls(State.MATCHED):
        try:
            await nodes.call("GET", job.node, f"/v1/peer/workspaces/{ws_name(job.id)}")
        except NotFound:
            store.transition(job.id, State.QUEUED, "the job manager restarted before it started")
            continue
        except XosError as e:
            log.warning("job %s: node %s unknown after restart: %s", job.id, job.node, e)
            continue
        store.transition(job.id, State.RUNNING, f"found running on node {job.node} after a restart")
