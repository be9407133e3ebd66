"""What crosses the wire, both ways: JSON bodies read and checked, responses and stream frames made, and
failures turned into {"error": {"code", "message"}} with a stable code and back into an XosError."""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import logging
import struct
import time
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
from aiohttp import web

from xos.errors import BadRequest, InvalidInput, XosError, from_json
from xos.wire import metrics

log = logging.getLogger(__name__)

MAX_BODY = 1 << 20

# Stream frames: one channel byte, a 4-byte big-endian length, the payload.
FRAME = struct.Struct(">cI")
STDOUT, STDERR, EXIT = b"1", b"2", b"x"
STREAM_TYPE = "application/x-xos-stream"


def frame(channel: bytes, payload: bytes) -> bytes:
    """One frame of an exec stream."""
    return FRAME.pack(channel, len(payload)) + payload


async def read_body(request: web.Request, limit: int = MAX_BODY) -> dict[str, Any]:
    """The JSON object of a request, at most `limit` bytes; BadRequest for anything else."""
    if request.content_length is not None and request.content_length > limit:
        raise BadRequest(f"request body over {limit} bytes")
    # StreamReader.read(n) returns what has arrived so far, so a body in several TCP segments
    # needs the loop (found with 64 KiB inline files of the grid file system).
    chunks, size = [], 0
    while size <= limit:
        chunk = await request.content.read(limit + 1 - size)
        if not chunk:
            break
        chunks.append(chunk)
        size += len(chunk)
    raw = b"".join(chunks)
    if len(raw) > limit:
        raise BadRequest(f"request body over {limit} bytes")
    if not raw:
        return {}
    try:
        body = json.loads(raw)
    except ValueError as e:  # bad JSON or UTF-8, and a number of over 4,300 digits (not a JSONDecodeError)
        raise BadRequest(f"request body is not JSON: {str(e)[:200]}") from None
    if not isinstance(body, dict):
        raise BadRequest("request body must be a JSON object")
    return body


async def read_head(request: web.Request) -> dict[str, Any]:
    """The JSON object on the first line of a streamed body; what follows stays in request.content."""
    try:
        raw = await request.content.readline()
    except ValueError:
        raise BadRequest("the first line of the request body is too long") from None
    try:
        body = json.loads(raw) if raw.strip() else {}
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise BadRequest(f"request body does not start with a JSON line: {e}") from None
    if not isinstance(body, dict):
        raise BadRequest("request body must start with a JSON object")
    return body


def field(body: dict[str, Any], name: str, kind: type | tuple[type, ...], default: Any = None) -> Any:
    """body[name] if it has the right type, `default` if absent; InvalidInput naming the field otherwise."""
    value = body.get(name, default)
    if value is default:
        return value
    if not isinstance(value, kind) or (isinstance(value, bool) and kind is not bool):
        raise InvalidInput(f"field {name!r} has the wrong type", field=name)
    return value


def unb64(text: Any, name: str) -> bytes:
    """The bytes a field holds as base64 text; InvalidInput naming the field otherwise."""
    if not isinstance(text, str):
        raise InvalidInput(f"field {name!r} must be base64 text", field=name)
    try:
        return base64.b64decode(text, validate=True)
    except (ValueError, binascii.Error):
        raise InvalidInput(f"field {name!r} is not base64", field=name) from None


def dumps(data: Any) -> bytes:
    """Compact JSON: orjson (large directory listings are its measured reason), json for what orjson
    refuses (integers past 64 bits)."""
    try:
        return orjson.dumps(data, option=orjson.OPT_NON_STR_KEYS)
    except TypeError:
        return json.dumps(data, separators=(",", ":")).encode()


def json_response(data: Any, status: int = 200) -> web.Response:
    """A JSON response."""
    return web.Response(body=dumps(data), status=status, content_type="application/json")


@web.middleware
async def error_middleware(request: web.Request,
                           handler: Callable[[web.Request], Awaitable[web.StreamResponse]]) -> web.StreamResponse:
    """Every failure as {"error": {"code", "message"}} with a stable code; never a traceback. Every request
    counted in the app's metrics, if it has them, by operation, with its time and its failure's code.

    Successful responses carry Server-Timing with the time spent inside the daemon.
    """
    t0 = time.perf_counter()
    code: str | None = None
    try:
        resp = await handler(request)
        if not resp.prepared:
            resp.headers["Server-Timing"] = f"app;dur={(time.perf_counter() - t0) * 1000:.3f}"
        return resp
    except XosError as e:
        code = e.code
        if e.http_status >= 500:
            log.warning("%s %s: %s", request.method, request.path, e)
        return json_response(e.to_json(), status=e.http_status)
    except web.HTTPException as e:
        if e.status < 400:
            raise
        code = {404: "not-found", 405: "method-not-allowed", 413: "too-large"}.get(e.status, "bad-request")
        return json_response({"error": {"code": code, "message": e.reason}}, status=e.status)
    except asyncio.CancelledError:
        code = "cancelled"
        raise
    except Exception as e:
        code = "internal"
        log.exception("%s %s failed", request.method, request.path)
        return json_response({"error": {"code": "internal", "message": f"internal error: {type(e).__name__}"}},
                             status=500)
    finally:
        registry = metrics.of(request)
        if registry is not None:
            registry.observe(metrics.operation(request, code is None), time.perf_counter() - t0, code)


def check(status: int, body: Any) -> None:
    """Raise the XosError a failed answer (`status` >= 400) carries; whatever its body, a stable code."""
    if status >= 400:
        raise from_json(body if isinstance(body, dict) else {}, status)


def error_body(code: str, message: str) -> bytes:
    """The JSON body of a failure made without an XosError (the lean server's own refusals)."""
    return dumps({"error": {"code": code, "message": message}})
