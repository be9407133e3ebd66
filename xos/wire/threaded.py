"""Answers made and sent from worker threads, for the lean server (lean.py): a handler whose answer is large and
made by blocking work (an OSD's object read) makes it and writes it to the socket away from the event loop and
the GIL; and the response heads both write."""

from __future__ import annotations

import asyncio
import logging
import os
import select
import time
from collections.abc import Callable
from typing import Any

log = logging.getLogger(__name__)

REASONS = {200: "OK", 201: "Created", 204: "No Content", 400: "Bad Request", 403: "Forbidden", 404: "Not Found",
           405: "Method Not Allowed", 409: "Conflict", 410: "Gone", 411: "Length Required",
           413: "Payload Too Large", 431: "Request Header Fields Too Large", 500: "Internal Server Error",
           503: "Service Unavailable", 507: "Insufficient Storage"}


def _head(status: int, headers: list[tuple[str, str]], length: int, close: bool) -> bytes:
    lines = [f"HTTP/1.1 {status} {REASONS.get(status, 'Status')}\r\nContent-Length: {length}\r\n"]
    lines.extend(f"{k}: {v}\r\n" for k, v in headers)
    if close:
        lines.append("Connection: close\r\n")
    lines.append("\r\n")
    return "".join(lines).encode("latin-1")


class Sent:
    """What a handler returns when `reply_from_thread` has already sent its answer."""

    prepared = True  # error_middleware adds no header to it

    def __init__(self, ok: bool) -> None:
        self.ok = ok  # False: the connection broke mid-answer and is to be closed


PATIENCE = 0.2  # what a worker thread gives a client to take an answer before the loop sends the rest


async def reply_from_thread(request: Any,
                            make: Callable[[], tuple[bytes | memoryview, list[tuple[str, str]]]]) -> Sent:
    """Run `make` in a worker thread and send the body and headers it returns from that thread.

    For large answers made by blocking work: an OSD's event loop sent each 1 MiB body itself,
    holding the GIL through the TCP send (and, over a veth, the receiver's part of it), so one OSD
    never used more than one CPU; from the thread the send runs beside the loop, and `make` may
    return a view of a buffer it reuses once the call is over. What a slow client has not taken
    after PATIENCE is copied and left to the loop, so no client holds a thread. What `make` raises
    reaches the caller with nothing sent."""
    conn = getattr(request, "connection", None)  # handlers see web.Request's type; this server gives them a Request
    assert conn is not None and conn.transport is not None, "reply_from_thread needs a request from a connection"
    if not conn.transport.is_closing():
        await conn.drained()  # the thread writes to the socket itself: nothing may still wait to go out before it
    if conn.transport.is_closing():
        return Sent(False)
    if conn.transport.get_extra_info("sslcontext") is not None:  # the loop's TLS encrypts what goes out
        body, headers = await asyncio.get_running_loop().run_in_executor(None, lambda: _copied(make()))
        conn.transport.write(_head(200, headers, len(body), getattr(request, "close", False)) + body)
        return Sent(True)
    sock = conn.transport.get_extra_info("socket")
    fd = os.dup(sock.fileno())  # its own descriptor: the loop may close the connection's meanwhile
    close = getattr(request, "close", False)

    def work() -> bytes | None:
        try:
            body, headers = make()
            return _send(fd, _head(200, headers, len(body), close), body)
        finally:
            os.close(fd)

    rest = await asyncio.get_running_loop().run_in_executor(None, work)
    if rest is None or conn.transport.is_closing():
        return Sent(False)
    if rest:
        conn.transport.write(rest)
    return Sent(True)


def _copied(made: tuple[bytes | memoryview, list[tuple[str, str]]]) -> tuple[bytes, list[tuple[str, str]]]:
    """What `make` returned, its body copied out of a buffer it may reuse."""
    return bytes(made[0]), made[1]


def _send(fd: int, head: bytes, body: bytes | memoryview) -> bytes | None:
    """Write head and body to a non-blocking socket for up to PATIENCE: what is left of them, copied (b"" when
    all went), or None if the connection broke."""
    views = [v for v in (memoryview(head), memoryview(body)) if len(v)]
    poll = select.poll()
    poll.register(fd, select.POLLOUT)
    deadline = time.monotonic() + PATIENCE
    try:
        while views:
            try:
                n = os.writev(fd, views)
            except BlockingIOError:
                left = deadline - time.monotonic()
                if left > 0 and poll.poll(left * 1000):
                    continue
                return b"".join(views)
            while n:
                if n >= len(views[0]):
                    n -= len(views.pop(0))
                else:
                    views[0], n = views[0][n:], 0
        return b""
    except OSError as e:  # the client went away
        log.debug("answer not sent: %s", e)
        return None
