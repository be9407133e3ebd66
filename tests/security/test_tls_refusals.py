"""A refused TLS handshake is said on the server's side too: a host from another CA, plain HTTP on a TLS
port, a client without a certificate where hosts must show one. asyncio and uvloop log a server's failed
handshake at debug level only, so the lean server (MRC) and the aiohttp daemons (job manager, node peer
API, VO service) make their handshakes themselves (xos.wire.server.TlsAcceptor), on both event loops."""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import ssl
import urllib.error
import urllib.request

import pytest
from aiohttp import web

from xos.testing import signed_host
from xos.wire import hostid, lean
from xos.wire import server as wire_server
from xos.wire.hostid import HostIdentity


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def hosts(tmp_path):
    """Two CAs; a server and a client host of the first, an intruder with a certificate of the second (that
    checks servers against the first, as the grid's hosts do)."""
    for ca in ("ca", "other-ca"):
        hostid.ca_init(str(tmp_path / ca))
    signed_host(str(tmp_path / "other-ca"), str(tmp_path / "intruder"), "cli", ["osd"])
    with open(tmp_path / "ca" / "ca.pem", "rb") as f:
        hostid.trust(str(tmp_path / "intruder"), f.read())
    return {
        "server": HostIdentity(signed_host(str(tmp_path / "ca"), str(tmp_path / "server"), "srv", ["mrc"],
                                           ["127.0.0.1"])),
        "client": HostIdentity(signed_host(str(tmp_path / "ca"), str(tmp_path / "client"), "cli", ["osd"])),
        "intruder": HostIdentity(str(tmp_path / "intruder")),
    }


def _call(url: str, ctx: ssl.SSLContext | None, body: bytes | None = None) -> int | str:
    try:
        with urllib.request.urlopen(urllib.request.Request(url, data=body), timeout=10, context=ctx) as r:
            return int(r.status) if r.read() in (b"hello", b"x" * 300000) else "wrong answer"
    except urllib.error.HTTPError as e:
        return int(e.code)
    except (urllib.error.URLError, OSError) as e:
        return str(getattr(e, "reason", e))


async def _hello(request: web.Request) -> web.Response:
    hostid.require(request.transport, "osd")  # the client's certificate reached the app
    body = await request.read()
    return web.Response(body=body or b"hello")


async def _lean_server(tls: ssl.SSLContext, port: int) -> asyncio.AbstractServer:
    app = lean.App(1 << 20)
    app.router.add_get("/hello", _hello)
    app.router.add_post("/hello", _hello)
    return await asyncio.get_running_loop().create_server(
        lambda: wire_server.TlsAcceptor(lambda: lean.Connection(app), tls), "127.0.0.1", port)


async def _aiohttp_server(tls: ssl.SSLContext, port: int) -> web.AppRunner:
    app = web.Application()
    app.router.add_get("/hello", _hello)
    app.router.add_post("/hello", _hello)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await wire_server.start_site(runner, "127.0.0.1", port, tls)
    return runner


@pytest.mark.parametrize("kind", ["lean", "lean on uvloop", "aiohttp"])
def test_refused_handshakes_are_said_and_good_ones_pass(hosts, kind, caplog) -> None:
    port = _free_port()
    url = f"https://127.0.0.1:{port}/hello"
    caplog.set_level(logging.INFO, logger="xos.wire.server")

    async def run() -> list[int | str]:
        tls = hosts["server"].server_context()
        server = await (_aiohttp_server(tls, port) if kind == "aiohttp" else _lean_server(tls, port))
        try:
            good = hosts["client"].client_context()
            out = [await asyncio.to_thread(_call, url, good) for _ in range(3)]
            out.append(await asyncio.to_thread(_call, url, good, b"x" * 300000))  # a body past the handshake
            out.append(await asyncio.to_thread(_call, url, hosts["intruder"].client_context()))
            out.append(await asyncio.to_thread(_call, f"http://127.0.0.1:{port}/hello", None))  # plain HTTP
            anonymous = ssl.create_default_context(cafile=os.path.join(hosts["server"].directory, "ca.pem"))
            out.append(await asyncio.to_thread(_call, url, anonymous))  # no certificate where hosts need one
            return out
        finally:
            if isinstance(server, web.AppRunner):
                await server.cleanup()
            else:
                server.close()
                await server.wait_closed()

    *good, other_ca, plain, anonymous = lean.run(run()) if "uvloop" in kind else asyncio.run(run())
    assert good == [200] * 4
    assert other_ca != 200 and plain != 200 and anonymous != 200
    said = [r.getMessage() for r in caplog.records if "TLS from 127.0.0.1 refused" in r.getMessage()]
    assert len(said) == 3, said
    assert any("CERTIFICATE_VERIFY_FAILED" in m for m in said), said  # the other CA's host
    assert any("WRONG_VERSION_NUMBER" in m or "HTTP_REQUEST" in m for m in said), said  # plain HTTP
    assert any("CERTIFICATE" in m and "VERIFY" not in m for m in said), said  # no certificate shown
