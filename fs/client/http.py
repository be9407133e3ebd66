"""A lean HTTP/1.1 client connection for the file system's hot path: keep-alive, one send, one parse.

http.client parses every response's headers with the email package and sends headers and body
in separate calls: a third of the client's time on a metadata call (DEVELOPERS.md). This
speaks only what the MRC and OSDs answer (aiohttp: Content-Length or chunked bodies).
"""

from __future__ import annotations

import errno
import socket
import ssl
import time
from collections.abc import Callable

MAX_HEAD = 64 << 10
SMALL_BODY = 64 << 10  # bodies up to this size go out in the same send as the headers
POLL = 0.2  # seconds between looks at whether the caller was interrupted


class HttpError(OSError):
    """The connection broke or the peer did not speak HTTP/1.1 as expected."""


class Connection:
    """One kept-alive connection to host:port."""

    def __init__(self, netloc: str, timeout: float, tls: ssl.SSLContext | None = None,
                 session: ssl.SSLSession | None = None) -> None:
        host, _, port = netloc.rpartition(":")
        self.netloc = netloc
        self.timeout = timeout
        self.interrupted: Callable[[], bool] | None = None  # set per request by callers that can be interrupted
        sock = socket.create_connection((host or netloc, int(port) if port.isdigit() else (443 if tls else 80)),
                                        timeout=timeout)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if tls is not None:
            try:  # a session of an earlier connection to the same server resumes without its certificate work
                sock = tls.wrap_socket(sock, server_hostname=(host or netloc).strip("[]"), session=session)
            except BaseException:
                sock.close()
                raise
        self.sock: socket.socket = sock
        self.buf = bytearray()
        self._scratch = memoryview(bytearray(1 << 16))
        self.used = False  # whether a request went through: a failure on a reused connection may be staleness

    def close(self) -> None:
        self.sock.close()

    def session(self) -> ssl.SSLSession | None:
        """The TLS session a later connection to the same server may resume (None on plain HTTP)."""
        return self.sock.session if isinstance(self.sock, ssl.SSLSocket) else None

    def request(self, method: str, target: str, headers: dict[str, str],
                body: bytes | memoryview | None = None) -> tuple[int, dict[str, str], bytes]:
        """Send one request and read its whole response."""
        self.send(method, target, headers, body)
        return self._response()

    def response(self) -> tuple[int, dict[str, str], bytes]:
        """The whole response to the request sent last."""
        return self._response()

    def send(self, method: str, target: str, headers: dict[str, str], body: bytes | memoryview | None = None) -> None:
        """Send one request (its response is read by `response`)."""
        n = len(body) if body is not None else 0
        head = [f"{method} {target} HTTP/1.1\r\nHost: {self.netloc}\r\nContent-Length: {n}\r\n"]
        head.extend(f"{k}: {v}\r\n" for k, v in headers.items())
        head.append("\r\n")
        raw = "".join(head).encode("latin-1")
        if body is not None and n <= SMALL_BODY:
            self.sock.sendall(raw + bytes(body))
        else:
            self.sock.sendall(raw)
            if body is not None:
                self.sock.sendall(body)
        self.used = True

    def _recv_into(self, view: memoryview) -> int:
        """Bytes received into `view` (at least one; HttpError if the peer closed)."""
        if self.interrupted is None:
            n = self.sock.recv_into(view)
        else:  # wait in short slices, so an interrupted caller gets EINTR now, not at the timeout
            deadline = time.monotonic() + self.timeout
            self.sock.settimeout(POLL)
            try:
                while True:
                    try:
                        n = self.sock.recv_into(view)
                        break
                    except TimeoutError:
                        if self.interrupted():
                            raise InterruptedError(errno.EINTR, "interrupted while waiting for the server") from None
                        if time.monotonic() > deadline:
                            raise
            finally:
                self.sock.settimeout(self.timeout)
        if not n:
            raise HttpError("the peer closed the connection")
        return n

    def _fill(self) -> None:
        # into a scratch buffer: recv(1 MiB) allocated a megabyte for each TLS record (16 KiB) it returned
        n = self._recv_into(self._scratch)
        self.buf += self._scratch[:n]

    def _response(self) -> tuple[int, dict[str, str], bytes]:
        while (end := self.buf.find(b"\r\n\r\n")) < 0:
            if len(self.buf) > MAX_HEAD:
                raise HttpError("response headers too long")
            self._fill()
        lines = bytes(self.buf[:end]).decode("latin-1").split("\r\n")
        del self.buf[:end + 4]
        parts = lines[0].split(" ", 2)
        if len(parts) < 2 or not parts[0].startswith("HTTP/1.") or not parts[1].isdigit():
            raise HttpError(f"not an HTTP response: {lines[0][:80]!r}")
        headers = {}
        for line in lines[1:]:
            k, _, v = line.partition(":")
            headers[k.strip().lower()] = v.strip()
        if "content-length" in headers:
            size = int(headers["content-length"])
            if len(self.buf) >= size:
                body = bytes(self.buf[:size])
                del self.buf[:size]
            else:  # received in place, the part already here first
                whole = bytearray(size)
                got = len(self.buf)
                whole[:got] = self.buf
                self.buf.clear()
                view = memoryview(whole)
                while got < size:
                    got += self._recv_into(view[got:])
                body = bytes(whole)
        elif headers.get("transfer-encoding", "").lower() == "chunked":
            body = self._chunked()
        else:
            raise HttpError("response without a length")
        return int(parts[1]), headers, body

    def _chunked(self) -> bytes:
        out = bytearray()
        while True:
            while (eol := self.buf.find(b"\r\n")) < 0:
                self._fill()
            size = int(bytes(self.buf[:eol]).split(b";")[0], 16)
            del self.buf[:eol + 2]
            while len(self.buf) < size + 2:
                self._fill()
            out += self.buf[:size]
            del self.buf[:size + 2]
            if size == 0:
                return bytes(out)
