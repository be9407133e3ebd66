"""The lean HTTP server of the file system's daemons: routes, order, and garbage answered with a JSON
error and a closed connection, over a Unix socket (no network needed)."""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import hashlib
import json
import os
import random
import socket
import struct
import tempfile
import termios
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest
import uvloop
from aiohttp import web

from xos.errors import FileExists, NoSuchFile
from xos.testing import wait_for
from xos.wire import threaded as answers
from xos.wire.codec import json_response, read_body
from xos.wire.lean import App, Connection

calls: list[str] = []


async def echo(request):
    body = await read_body(request)
    calls.append(request.match_info["name"])
    return json_response({"name": request.match_info["name"], "n": request.query.get("n"), "body": body,
                          "auth": request.headers.get("authorization")})


async def refuse(request):
    raise FileExists("it is there")


@pytest.fixture(scope="module")
def server() -> Iterator[str]:
    app = App(client_max_size=1000)
    app.router.add_post("/v1/echo/{name}", echo)
    app.router.add_get("/v1/refuse", refuse)
    path = os.path.join(tempfile.mkdtemp(prefix="xos-httpd-"), "sock")
    loop = asyncio.new_event_loop()
    ready = threading.Event()

    stop = asyncio.Event()

    async def main() -> None:
        srv = await loop.create_unix_server(lambda: Connection(app), path)
        ready.set()
        async with srv:
            await stop.wait()

    t = threading.Thread(target=loop.run_until_complete, args=(main(),), daemon=True)
    t.start()
    assert ready.wait(10)
    yield path
    loop.call_soon_threadsafe(stop.set)
    t.join(5)
    loop.close()
    os.unlink(path)
    os.rmdir(os.path.dirname(path))


def exchange(path: str, raw: bytes) -> bytes:
    """Send `raw` and read until the server closes the connection (every case here ends with a close)."""
    with socket.socket(socket.AF_UNIX) as s:
        s.connect(path)
        s.settimeout(10)  # a server that never closes fails the test
        s.sendall(raw)
        out = b""
        while chunk := s.recv(65536):
            out += chunk
        return out


def responses(raw: bytes) -> list[tuple[int, dict[str, str], bytes]]:
    out = []
    while raw:
        head, _, rest = raw.partition(b"\r\n\r\n")
        lines = head.decode().split("\r\n")
        headers = {k.lower(): v.strip() for k, _, v in (ln.partition(":") for ln in lines[1:])}
        n = int(headers["content-length"])
        out.append((int(lines[0].split()[1]), headers, rest[:n]))
        raw = rest[n:]
    return out


def post(name: str, body: bytes, extra: str = "") -> bytes:
    return (f"POST /v1/echo/{name}?n=7 HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer t\r\n"
            f"Content-Length: {len(body)}\r\n{extra}\r\n").encode() + body


def test_pipelined_requests_are_answered_in_order_on_one_connection(server):
    got = responses(exchange(server, post("a", b'{"k": 1}') + post("b", b"") + post("c", b'{"k": 3}',
                                                                                      "Connection: close\r\n")))
    assert [json.loads(b)["name"] for _, _, b in got] == ["a", "b", "c"]
    assert all(s == 200 for s, _, _ in got)
    first = json.loads(got[0][2])
    assert first == {"name": "a", "n": "7", "body": {"k": 1}, "auth": "Bearer t"}
    assert got[0][1]["content-type"] == "application/json"
    assert got[2][1].get("connection") == "close"


def test_a_body_arriving_in_pieces_is_read_whole(server):
    with socket.socket(socket.AF_UNIX) as s:
        s.connect(server)
        s.settimeout(5)
        raw = post("slow", b'{"k": "' + b"x" * 500 + b'"}', "Connection: close\r\n")
        for i in range(0, len(raw), 37):
            s.sendall(raw[i:i + 37])
        out = b""
        while chunk := s.recv(65536):
            out += chunk
    [(status, _, body)] = responses(out)
    assert status == 200 and json.loads(body)["body"]["k"] == "x" * 500


@pytest.mark.parametrize("raw, status, code", [
    (b"GET /nowhere HTTP/1.1\r\nConnection: close\r\n\r\n", 404, "not-found"),
    (b"GET /v1/echo/x HTTP/1.1\r\nConnection: close\r\n\r\n", 405, "method-not-allowed"),
    (b"GET /v1/refuse HTTP/1.1\r\nConnection: close\r\n\r\n", 409, "file-exists"),
    (b"\x00\xff garbage\r\n\r\n", 400, "bad-request"),
    (b"POST /v1/echo/x HTTP/1.1\r\nContent-Length: -3\r\n\r\n", 400, "bad-request"),
    (b"POST /v1/echo/x HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n", 411, "bad-request"),
    (b"POST /v1/echo/big HTTP/1.1\r\nContent-Length: 5000\r\n\r\n" + b"x" * 5000, 413, "too-large"),
    (b"POST /v1/echo/x HTTP/1.1\r\nConnection: close\r\nContent-Length: 5\r\n\r\nnope!", 400, "bad-request"),
    (b"GET /v1/refuse HTTP/1.1\r\n" + b"X-Long: " + b"y" * (70 << 10), 431, "too-large"),
])
def test_bad_requests_get_a_json_error_and_reach_no_handler(server, raw, status, code):
    calls.clear()
    got = responses(exchange(server, raw))
    assert got[0][0] == status
    assert json.loads(got[0][2])["error"]["code"] == code
    assert calls == []


def test_a_refused_request_ends_the_connection_after_those_before_it(server):
    got = responses(exchange(server, post("first", b"") + b"BREW /pot HTCPCP/1.0\r\n\r\n" + post("never", b"")))
    assert [s for s, _, _ in got] == [200, 400]
    assert json.loads(got[0][2])["name"] == "first"


async def digest(request):
    body = await request.read()
    return json_response({"n": len(body), "sha": hashlib.sha256(body).hexdigest()})


@contextlib.contextmanager
def serving(app: App, loop_kind: str, write_buffer: int | None = None, workers: int | None = None,
            failures: list[dict] | None = None) -> Iterator[str]:
    """`app` served on a Unix socket by an event loop of `loop_kind` in a thread; the socket's path.
    `write_buffer`: how much a connection's transport may hold before the loop waits for the client;
    `workers`: the threads of the loop's executor; `failures`: gets what reaches the loop's exception handler."""

    class Conn(Connection):
        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            super().connection_made(transport)
            if write_buffer is not None:
                transport.set_write_buffer_limits(high=write_buffer)  # type: ignore[attr-defined]

    path = os.path.join(tempfile.mkdtemp(prefix="xos-httpd-"), "sock")
    loop = uvloop.new_event_loop() if loop_kind == "uvloop" else asyncio.new_event_loop()
    if workers is not None:
        loop.set_default_executor(ThreadPoolExecutor(workers))
    if failures is not None:
        loop.set_exception_handler(lambda _, context: failures.append(context))
    ready, stop = threading.Event(), asyncio.Event()

    async def main() -> None:
        srv = await loop.create_unix_server(lambda: Conn(app), path)
        ready.set()
        async with srv:
            await stop.wait()
        rest = asyncio.all_tasks() - {asyncio.current_task()}  # connections: ended here, not by the GC later
        for task in rest:
            task.cancel()
        await asyncio.gather(*rest, return_exceptions=True)

    t = threading.Thread(target=loop.run_until_complete, args=(main(),), daemon=True)
    t.start()
    try:
        assert ready.wait(10)
        yield path
    finally:
        loop.call_soon_threadsafe(stop.set)
        t.join(5)
        loop.close()
        os.unlink(path)
        os.rmdir(os.path.dirname(path))


def read_answer(reader) -> tuple[int, dict[str, str], bytes]:
    status = int(reader.readline().split()[1])
    headers = {}
    while (line := reader.readline()) != b"\r\n":
        k, _, v = line.decode().partition(":")
        headers[k.lower()] = v.strip()
    return status, headers, reader.read(int(headers["content-length"]))


@pytest.mark.parametrize("loop_kind", ["uvloop", "asyncio"])
def test_pipelined_bodies_of_every_size_in_any_fragments_arrive_whole(loop_kind):
    """Heads and small bodies share one buffer; large bodies are received in place: pipelined requests
    of 0 bytes to 3 MiB, sent in fragments of random sizes, each arrive whole and in order."""
    app = App(client_max_size=4 << 20)
    app.router.add_put("/v1/d", digest)
    with serving(app, loop_kind) as path:
        rng = random.Random(11)
        sizes = [0, 1, 100, 65000, 65536, 70000, 1 << 20, 3 << 20] + [rng.choice((10, 4000, 60000, 300000))
                                                                       for _ in range(24)]
        bodies = [rng.randbytes(n) for n in sizes]
        wire = b"".join(f"PUT /v1/d HTTP/1.1\r\nContent-Length: {len(b)}\r\n\r\n".encode() + b for b in bodies)
        with socket.socket(socket.AF_UNIX) as s:
            s.connect(path)
            s.settimeout(20)
            reader = s.makefile("rb")

            def send() -> None:
                pos = 0
                while pos < len(wire):
                    n = rng.choice((1, 7, 1000, 65536, 200000))
                    s.sendall(wire[pos:pos + n])
                    pos += n

            sender = threading.Thread(target=send)
            sender.start()
            for b in bodies:
                status, _, body = read_answer(reader)
                assert status == 200
                assert json.loads(body) == {"n": len(b), "sha": hashlib.sha256(b).hexdigest()}
            sender.join()


@pytest.mark.parametrize("loop_kind", ["uvloop", "asyncio"])
def test_bytes_after_a_refused_request_are_dropped_while_the_answers_before_it_wait(loop_kind):
    """A malformed request behind one still being answered, then a megabyte more: the server drops what
    follows the refusal (its transport reads on until the answer before it is sent) and fails nothing."""
    go = threading.Event()

    async def slow(request):
        await asyncio.get_running_loop().run_in_executor(None, go.wait, 20)
        return json_response({"slow": True})

    app = App(client_max_size=1000)
    app.router.add_get("/v1/slow", slow)
    failures: list[dict] = []
    with serving(app, loop_kind, failures=failures) as path, socket.socket(socket.AF_UNIX) as s:
        s.connect(path)
        s.settimeout(20)
        s.sendall(b"GET /v1/slow HTTP/1.1\r\nHost: x\r\n\r\n" + b"BREW /pot HTCPCP/1.0\r\n\r\n")
        s.sendall(b"x" * (1 << 20))
        # every byte taken by the server before the answers come (a close over unread bytes resets the peer)
        wait_for(lambda: unread(s) == 0, 10, "the server to read all that was sent")
        go.set()
        out = b""
        while chunk := s.recv(65536):
            out += chunk
    assert [st for st, _, _ in responses(out)] == [200, 400]
    assert failures == []


@pytest.mark.parametrize("loop_kind", ["uvloop", "asyncio"])
def test_a_head_buffer_grown_by_bodies_that_fit_in_it_shrinks_back_without_failing(loop_kind):
    """A body that fits where its head arrived, taken in two reads, grows the head buffer once nearly full
    (to 128, 256 and 512 KiB here); once it holds little again it shrinks back, which it may only do
    while the loop holds no view of it."""
    app = App(client_max_size=1 << 20)
    app.router.add_put("/v1/d", digest)
    failures: list[dict] = []
    with serving(app, loop_kind, failures=failures) as path, socket.socket(socket.AF_UNIX) as s:
        s.connect(path)
        s.settimeout(20)
        reader = s.makefile("rb")
        for size in ((64 << 10) - 100, (128 << 10) - 100, (256 << 10) - 100, 10, 0):
            head = f"PUT /v1/d HTTP/1.1\r\nContent-Length: {size}\r\n\r\n".encode()
            body = random.Random(size).randbytes(size)
            wire = head + body
            s.sendall(wire[:-1])
            wait_for(lambda: unread(s) == 0, 10, "the server to read what was sent")
            s.sendall(wire[-1:])
            status, _, answer = read_answer(reader)
            assert (status, json.loads(answer)) == (200, {"n": len(body), "sha": hashlib.sha256(body).hexdigest()})
    assert failures == []


def unread(s: socket.socket) -> int:
    """Bytes sent on `s` that its peer has not read yet."""
    return struct.unpack("i", fcntl.ioctl(s, termios.TIOCOUTQ, b"\0" * 4))[0]


def pattern(n: int, seed: int) -> bytes:
    return random.Random(seed).randbytes(n)


_buffers = threading.local()


async def threaded(request):
    """An answer made and sent in a worker thread, from a buffer the thread reuses (as an OSD's reads do)."""
    n, seed = int(request.query["n"]), int(request.query["seed"])

    def make() -> tuple[memoryview, list[tuple[str, str]]]:
        if seed < 0:
            raise NoSuchFile("nothing here")
        buf = getattr(_buffers, "buf", None)
        if buf is None or len(buf) < n:
            buf = _buffers.buf = bytearray(n)
        buf[:n] = pattern(n, seed)
        return memoryview(buf)[:n], [("X-Seed", str(seed))]

    return await answers.reply_from_thread(request, make)


async def plain(request):
    return web.Response(body=pattern(int(request.query["n"]), int(request.query["seed"])))


def thread_app() -> App:
    app = App(client_max_size=1000)
    app.router.add_get("/v1/threaded", threaded)
    app.router.add_get("/v1/plain", plain)
    return app


@pytest.mark.parametrize("loop_kind", ["uvloop", "asyncio"])
def test_answers_sent_from_threads_keep_their_place_and_bytes_among_pipelined_ones(loop_kind):
    """A thread's answer goes out only after what the loop still holds of the answers before it (a 4 MiB
    one the transport may keep whole), is whole although its buffer is reused, and a failure in the
    thread is an ordinary JSON error on a connection that goes on."""
    asks = [("plain", 4 << 20, 1), ("threaded", 3 << 20, 2), ("plain", 10, 3), ("threaded", 1 << 20, 4),
            ("threaded", 100, -1), ("plain", 1000, 5), ("threaded", 5 << 20, 6), ("threaded", 0, 7),
            ("threaded", 2 << 20, 8)]
    wire = b"".join(f"GET /v1/{kind}?n={n}&seed={seed} HTTP/1.1\r\nHost: x\r\n\r\n".encode()
                    for kind, n, seed in asks)
    with serving(thread_app(), loop_kind, write_buffer=64 << 20) as path, socket.socket(socket.AF_UNIX) as s:
        s.connect(path)
        s.settimeout(20)
        s.sendall(wire)
        reader = s.makefile("rb")
        for kind, n, seed in asks:
            status, headers, body = read_answer(reader)
            if seed < 0:
                assert (status, json.loads(body)["error"]["code"]) == (404, "no-such-file")
                continue
            assert status == 200 and body == pattern(n, seed), (kind, n, seed)
            if kind == "threaded":
                assert headers["x-seed"] == str(seed)


def test_clients_that_take_nothing_of_thread_answers_hold_no_thread():
    """A worker thread gives a client PATIENCE to take its answer, then leaves the rest to the loop: five
    clients that read nothing do not starve a server of two threads, and each still gets its whole
    answer once it reads."""
    with serving(thread_app(), "uvloop", workers=2) as path:
        stalled = []
        try:
            for seed in range(5):
                s = socket.socket(socket.AF_UNIX)
                stalled.append(s)
                s.connect(path)
                s.settimeout(20)
                s.sendall(f"GET /v1/threaded?n={32 << 20}&seed={seed} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
            with socket.socket(socket.AF_UNIX) as s:
                s.connect(path)
                s.settimeout(20)  # threads held until the stalled clients read would time this out
                s.sendall(b"GET /v1/threaded?n=100&seed=9 HTTP/1.1\r\nConnection: close\r\n\r\n")
                status, _, body = read_answer(s.makefile("rb"))
                assert status == 200 and body == pattern(100, 9)
            for seed, s in enumerate(stalled):
                status, _, body = read_answer(s.makefile("rb"))
                assert status == 200 and body == pattern(32 << 20, seed), seed
        finally:
            for s in stalled:
                s.close()


def test_a_client_gone_while_a_thread_answer_waits_for_the_loop_ends_quietly():
    """A client that closes while an earlier answer still fills the transport: the thread's answer stops
    waiting for it and ends as a cancelled request, not an internal error (uvloop refuses buffer limits
    on a closed transport)."""
    ended: list[str] = []
    done = threading.Event()

    async def watched(request):
        try:
            resp = await threaded(request)
            ended.append("sent" if resp.ok else "not sent")
            return resp
        except BaseException as e:
            ended.append(type(e).__name__)
            raise
        finally:
            done.set()

    app = thread_app()
    app.router.add_get("/v1/watched", watched)
    with serving(app, "uvloop", write_buffer=64 << 20) as path:
        with socket.socket(socket.AF_UNIX) as s:
            s.connect(path)
            s.sendall(b"GET /v1/plain?n=8388608&seed=1 HTTP/1.1\r\nHost: x\r\n\r\n"
                      b"GET /v1/watched?n=1048576&seed=2 HTTP/1.1\r\nHost: x\r\n\r\n")
            s.recv(1)  # the first answer is going out
        assert done.wait(20)
    assert ended in (["CancelledError"], ["not sent"]), ended


def _read_into(sock: socket.socket, out: bytearray, n: int) -> None:
    out.extend(sock.makefile("rb").read(n))


def test_a_thread_send_returns_what_a_slow_client_left_and_none_when_the_client_is_gone(monkeypatch):
    """`_send`'s three outcomes on a real socket pair: all sent (b""); the client takes nothing for PATIENCE,
    and what it did not get comes back, so that it and the rest make the whole answer; the client has
    closed, and the connection is reported broken (None), not raised."""
    head, body = b"HEAD\r\n\r\n", random.Random(5).randbytes(8 << 20)
    for case in ("reads", "stalls", "gone"):
        # PATIENCE bounds the whole send: a client that reads gets time to take 8 MiB on a loaded machine
        # (50 ms was not always enough); one that never reads is given up on soon.
        monkeypatch.setattr(answers, "PATIENCE", 30.0 if case == "reads" else 0.05)
        ours, theirs = socket.socketpair()
        with ours, theirs:
            ours.setblocking(False)
            got = bytearray()
            if case == "gone":
                theirs.close()
                assert answers._send(ours.fileno(), head, memoryview(body)) is None
                continue
            reader = threading.Thread(target=_read_into, args=(theirs, got, len(head) + len(body)))
            if case == "reads":
                reader.start()
            rest = answers._send(ours.fileno(), head, memoryview(body))
            if case == "stalls":
                assert rest and len(rest) < len(body)
                reader.start()
                ours.setblocking(True)
                ours.sendall(rest)
            else:
                assert rest == b""
            reader.join(20)
            assert bytes(got) == head + body, case
