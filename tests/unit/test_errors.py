"""The error hierarchy: stable codes that survive a trip over HTTP."""

import errno

from xos import errors


def test_round_trip_keeps_class_and_code():
    e = errors.OverCapacity("cpu short", short=["cpu"])
    back = errors.from_json(e.to_json(), 409)
    assert type(back) is errors.OverCapacity
    assert back.code == "over-capacity" and back.message == "cpu short" and back.detail == {"short": ["cpu"]}


def test_unknown_code_from_newer_peer_stays_visible():
    back = errors.from_json({"error": {"code": "brand-new", "message": "m"}}, 400)
    assert back.code == "brand-new"


def test_garbage_body_is_unavailable():
    assert isinstance(errors.from_json("<html>", 502), errors.Unavailable)  # type: ignore[arg-type]


def test_kernel_error_names_errno():
    e = errors.KernelError("cannot write", errno.EBUSY)
    assert "EBUSY" in str(e) and e.errno == errno.EBUSY


def test_codes_are_unique():
    seen = {}

    def walk(cls):
        assert seen.setdefault(cls.code, cls) is cls, f"{cls} reuses code {cls.code}"
        for sub in cls.__subclasses__():
            walk(sub)

    walk(errors.XosError)


def test_a_peers_unknown_code_keeps_its_meaning_through_the_status():
    from xos.errors import InvalidInput, NotFound, XosError, from_json

    e = from_json({"error": {"code": "main-not-started-elsewhere", "message": "m"}}, 400)
    assert isinstance(e, InvalidInput) and e.code == "main-not-started-elsewhere"
    assert isinstance(from_json({"error": {"code": "gone-somewhere", "message": "m"}}, 404), NotFound)
    assert type(from_json({"error": {"code": "odd", "message": "m"}}, 500)) is XosError


def test_a_daemon_whose_background_loop_fails_stops_with_the_reason():
    import asyncio

    import pytest
    from aiohttp import web

    from xos.wire import server as wire_server

    async def broken() -> None:
        raise ValueError("a bug in the loop")

    async def main() -> None:
        await asyncio.wait_for(wire_server.serve_tcp(web.Application(), "127.0.0.1:0", broken()), 10)

    with pytest.raises(RuntimeError) as e:
        asyncio.run(main())
    assert isinstance(e.value.__cause__, ValueError)
