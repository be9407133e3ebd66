"""The grid file system's smaller holes on the member/member line: renewing a capability by a guessed
inode number, listing the attributes of a file one may not read, removing someone else's volume."""

from __future__ import annotations

from typing import Any

import pytest

from xos.errors import XosError
from xos.testing.fsgrid import FsGrid


@pytest.fixture(scope="module")
def grid():
    with FsGrid(osds=1, clients=0) as g:
        g.mkvol("shared")
        yield g


def _private_file(grid: FsGrid) -> Any:
    """alice's 0644 file inside her 0700 directory, with an attribute; its handle (inode number)."""
    a: Any = grid.client("shared", "alice")
    try:
        a.mkdir("/alice", 0o700)
        with a.open("/alice/notes", "wb") as f:
            f.write(b"alice's own")
        a.setxattr("/alice/notes", "user.topic", b"secret plans")
        return a.open_handle("/alice/notes")
    finally:
        a.close()


def test_renew_by_inode_number_needs_a_capability_held(grid: FsGrid) -> None:
    """op_renew by inode: a member renewing another member's inode number inside a 0700 directory got a
    capability to read it (the ancestors' search permission was never checked)."""
    st = _private_file(grid)
    b: Any = grid.client("shared", "bob")
    try:
        with pytest.raises(XosError) as e:
            b.op("renew", ino=st.ino, write=False, cap="")
        assert e.value.code in ("capability-invalid", "invalid-input"), e.value
        with pytest.raises(XosError) as e:
            b.op("renew", ino=st.ino, write=False, cap=st.cap)  # alice's capability is not bob's
        assert e.value.code == "capability-invalid"
    finally:
        b.close()


def test_listxattr_needs_read_permission(grid: FsGrid) -> None:
    """listxattr: attribute names of a file are refused to who may not read it."""
    a: Any = grid.client("shared", "alice")
    try:
        with a.open("/mine", "wb") as f:
            f.write(b"x")
        a.setxattr("/mine", "user.topic", b"secret plans")
        a.setattr("/mine", mode=0o600)
    finally:
        a.close()
    b: Any = grid.client("shared", "bob")
    try:
        with pytest.raises(XosError) as e:
            b.listxattr("/mine")
        assert e.value.code == "access-denied"
    finally:
        b.close()


def test_only_its_owner_or_a_vo_admin_removes_a_volume(grid: FsGrid) -> None:
    """Deleting a volume is for its owner or the VO's admin: any member of the VO could."""
    grid.mkvol("alices", user="alice")
    b: Any = grid.client("alices", "bob")
    try:
        with pytest.raises(XosError) as e:
            b._json("DELETE", f"{grid.mrc_url}/v1/volumes/alices")
        assert e.value.code == "not-permitted"
    finally:
        b.close()
    admin: Any = grid.client("alices", "carol", roles=("member", "admin"))
    try:
        admin._json("DELETE", f"{grid.mrc_url}/v1/volumes/alices")
    finally:
        admin.close()


def _rss(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        return next(int(line.split()[1]) << 10 for line in f if line.startswith("VmRSS:"))


@pytest.mark.parametrize("declared,allowed", [(17825792, False), (16 << 20, True)])
def test_promised_bodies_cost_an_osd_a_bounded_amount(grid: FsGrid, declared: int, allowed: bool) -> None:
    """The lean server and the native threads bound what they buffer: 200 connections each declaring a body
    (17 MB, past an object's end, with no credential; or 16 MiB, an object's most, with a capability that
    may write: the native threads take such writes) and sending a little of it raise the OSD's memory by a
    bounded amount (each used to cost its declared size at once: 3.4 GB), and the OSD keeps serving."""
    import json
    import urllib.parse
    import urllib.request

    from xos.testing import wait_for

    head = b"PUT /v1/o/" + b"ab" * 16 + b"/0"
    url = urllib.parse.urlsplit(grid.osd_url(0))
    if allowed:
        a: Any = grid.client("shared", "alice")
        try:
            with a.open("/promised", "wb") as f:
                f.write(b"x" * (200 << 10))  # past what is kept inline: it has objects
            st = a.open_handle("/promised", write=True)
        finally:
            a.close()
        url = urllib.parse.urlsplit(st.xloc.urls[st.xloc.replicas[0].osds[0]])
        head = (f"PUT /v1/o/{st.fid}/0?off=0 HTTP/1.1\r\nAuthorization: Bearer {grid.credential('alice')}\r\n"
                f"X-Xos-Cap: {st.cap}").encode()
    osd = grid.osds[0].procs[0]
    before = _rss(osd.pid)
    socks = []
    try:
        for _ in range(200):
            s = grid.connect(url.hostname, url.port)
            s.sendall(head + b" HTTP/1.1\r\nContent-Length: %d\r\n\r\n" % declared + b"x" * 1000 if not allowed
                      else head + b"\r\nContent-Length: %d\r\n\r\n" % declared + b"x" * 1000)
            socks.append(s)

        def taken_in() -> bool:  # the event loop holds those the native threads gave it; they hold the rest
            with grid.urlopen(f"{grid.osd_url(0)}/v1/status", timeout=5) as r:
                st = json.loads(r.read())
                return int(st["http"]["connections"]) + int(st["load"]) >= 200

        wait_for(taken_in, 60, "the OSD to take the 200 connections in")
        with grid.urlopen(f"{grid.osd_url(0)}/v1/status", timeout=5) as r:
            held = int(json.loads(r.read())["native_body_bytes"])
        assert held <= 64 << 20, f"the native threads hold {held >> 20} MiB of promised bodies"
        c: Any = grid.client("shared", "alice")
        try:  # still serving writes (object bodies) and reads, while they hold on
            import os

            data = os.urandom(4 << 20)
            with c.open("/after-flood", "wb") as f:
                f.write(data)
            with c.open("/after-flood", "rb") as f:
                assert f.read() == data
        finally:
            c.close()
        grown = _rss(osd.pid) - before
        assert grown < 300 << 20, f"the OSD grew by {grown >> 20} MiB for 200 promised bodies"
    finally:
        for s in socks:
            s.close()


def test_a_mount_saying_the_kernel_checked_reaches_only_its_own_files(grid: FsGrid) -> None:
    """`checked` (a mount's kernel checked the mode bits) lets an owner write their own read-only file, as
    chmod would; said by another member it opens and truncates nothing the mode bits refuse them."""
    a: Any = grid.client("shared", "alice")
    try:
        with a.open("/readonly", "wb") as f:
            f.write(b"alice's, read-only")
        a.setattr("/readonly", mode=0o444)
        assert a.op("open", path="/readonly", write=True, checked=True)["attrs"]["size"] == 18
    finally:
        a.close()
    b: Any = grid.client("shared", "bob")
    try:
        for op, args in (("open", {"write": True}), ("setattr", {"size": 0})):
            with pytest.raises(XosError) as e:
                b.op(op, path="/readonly", checked=True, **args)
            assert e.value.code == "access-denied", (op, e.value)
    finally:
        b.close()
    a = grid.client("shared", "alice")
    try:
        assert a.stat("/readonly")["size"] == 18
    finally:
        a.close()


def test_only_an_osd_holding_a_replica_reports_others_behind(grid: FsGrid) -> None:
    """The MRC drops replicas that missed a write on the word of an OSD of that file only, said over TLS with
    that OSD's own host certificate: not a member's credential, not another OSD's certificate."""
    import json
    import os
    import urllib.error
    import urllib.request

    from xos.testing import signed_host
    from xos.wire.hostid import HostIdentity

    a: Any = grid.client("shared", "alice")
    try:
        with a.open("/kept", "wb") as f:
            f.write(b"k" * (1 << 20))
        fid = a.replicas("/kept")["fid"]
    finally:
        a.close()

    def report(tls: Any, osd: str, auth: str = "", **body: Any) -> int:
        body = {"osd": osd, "fid": fid, "behind": [grid.osd_url(0)], **body}
        req = urllib.request.Request(f"{grid.mrc_url}/v1/osds/behind", method="POST", data=json.dumps(body).encode(),
                                     headers={"Authorization": auth, "Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=10, context=tls) as r:
                return r.status
        except urllib.error.HTTPError as e:
            return e.code

    def host(name: str) -> Any:
        return HostIdentity(signed_host(grid.ca_dir, os.path.join(grid.base, "others", name), name,
                                        ["osd"])).client_context()

    assert report(grid.user_tls(), "osd0", f"Bearer {grid.credential('alice')}") in (401, 403)
    assert report(host("osd9"), "osd0") == 403  # not who it says
    assert report(host("osd9"), "osd9") == 403  # holds no replica of it
    own = HostIdentity(os.path.join(grid.base, "osd0", "host")).client_context()
    for bad in ({"fid": ""}, {"behind": "x"}, {"behind": [1]}, {"behind": []}):  # refused, whole, naming why
        assert report(own, "osd0", **bad) == 400, bad
    c: Any = grid.client("shared", "alice")
    try:
        assert c.replicas("/kept")["xloc"]["replicas"], "the replica list is untouched"
        with c.open("/kept", "rb") as f:
            assert f.read() == b"k" * (1 << 20)
    finally:
        c.close()


def test_an_osd_forwards_a_write_only_to_the_files_replicas(grid: FsGrid) -> None:
    """A member writing through an OSD names where the write goes on (X-Xos-Forward): the OSD sends it, with
    the member's credential and capability, only to OSDs the capability names as the file's replicas;
    anything else is refused and reaches nobody (before, it went wherever a client said)."""
    import http.server
    import socket
    import threading
    import urllib.error
    import urllib.request

    heard: list[str] = []

    class Listener(http.server.BaseHTTPRequestHandler):
        def do_PUT(self) -> None:  # noqa: N802 (http.server's name)
            heard.append(self.path)
            self.send_response(200)
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:  # our address towards the grid (no packet)
        probe.connect((grid.mrc_url.split("//")[1].split(":")[0], 9))
        here = probe.getsockname()[0]
    srv = http.server.ThreadingHTTPServer((here, 0), Listener)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    a: Any = grid.client("shared", "alice")
    try:
        with a.open("/forwarded", "wb") as f:
            f.write(b"f" * (1 << 20))
        st = a.open_handle("/forwarded", write=True)
        evil = f"http://{here}:{srv.server_address[1]}"
        req = urllib.request.Request(f"{grid.osd_url(0)}/v1/o/{st.fid}/0?off=0", data=b"x", method="PUT",
                                     headers={**a._osd_headers(st), "X-Xos-Forward": evil})
        with pytest.raises(urllib.error.HTTPError) as e:
            grid.urlopen(req, timeout=10)
        assert e.value.code in (400, 403) and b"capability-invalid" in e.value.read()
        assert heard == [], "the OSD sent a member's write where the member said"
        a.release(st)
        with a.open("/forwarded", "rb") as f:
            assert f.read() == b"f" * (1 << 20)  # and the write itself was not taken
    finally:
        a.close()
        srv.shutdown()


def test_an_osd_refuses_a_write_whose_sync_header_is_neither_0_nor_1(grid: FsGrid) -> None:
    """X-Xos-Sync says whether a write is put on disk before it is answered: any other value is refused with
    a clear error, and the write is not taken."""
    import urllib.error
    import urllib.request

    a: Any = grid.client("shared", "alice")
    try:
        with a.open("/synced", "wb") as f:
            f.write(b"s" * (1 << 20))
        st = a.open_handle("/synced", write=True)
        for value, taken in (("yes", False), ("1", True)):
            req = urllib.request.Request(f"{grid.osd_url(0)}/v1/o/{st.fid}/0?off=0", data=value.encode(),
                                         method="PUT", headers={**a._osd_headers(st), "X-Xos-Sync": value})
            if taken:
                with grid.urlopen(req, timeout=10) as r:
                    assert r.status == 200
            else:
                with pytest.raises(urllib.error.HTTPError) as e:
                    grid.urlopen(req, timeout=10)
                assert e.value.code == 400 and b"X-Xos-Sync is 0 or 1" in e.value.read()
        a.release(st)
        with a.open("/synced", "rb") as f:
            assert f.read() == b"1" + b"s" * ((1 << 20) - 1)  # the refused "yes" wrote nothing
    finally:
        a.close()


def test_a_capability_to_read_writes_nothing_through_the_native_threads(grid: FsGrid) -> None:
    """The OSD's native threads cache what Python let a (credential, capability) pair do: a pair that read a
    file (its grant cached) is still refused a write with a read-only capability, a capability is refused
    for another file, and another member is refused alice's capability; the object keeps its bytes."""
    import json
    import os
    import urllib.parse

    from tests.grid.helpers import http_answers

    a: Any = grid.client("shared", "alice")
    try:
        first, second = os.urandom(200 << 10), os.urandom(200 << 10)
        for path, data in (("/read-only-cap", first), ("/other-file", second)):
            with a.open(path, "wb") as f:
                f.write(data)
        st = a.open_handle("/read-only-cap")  # to read: a capability of mode "r"
        other = a.open_handle("/other-file", write=True)
    finally:
        a.close()
    url = urllib.parse.urlsplit(st.xloc.urls[st.xloc.replicas[0].osds[0]])
    alice, bob = (f"Authorization: Bearer {grid.credential(u)}\r\n" for u in ("alice", "bob"))

    def request(method: str, fid: str, who: str, cap: str, body: bytes = b"") -> bytes:
        query = "?off=0&len=16" if method == "GET" else "?off=0"
        return (f"{method} /v1/o/{fid}/0{query} HTTP/1.1\r\n{who}X-Xos-Cap: {cap}\r\n"
                f"Content-Length: {len(body)}\r\n\r\n").encode() + body

    with grid.connect(url.hostname, url.port) as s:
        s.sendall(request("GET", st.fid, alice, st.cap) + request("PUT", st.fid, alice, st.cap, b"overwritten")
                  + request("PUT", st.fid, alice, other.cap, b"overwritten")
                  + request("PUT", other.fid, bob, other.cap, b"overwritten"))
        answers = http_answers(s, 4)
    assert answers[0][0] == 200 and answers[0][2] == first[:16]
    for status, _, body in answers[1:]:
        assert status in (401, 403), (status, body)
        assert json.loads(body)["error"]["code"], body
    b: Any = grid.client("shared", "alice")
    try:
        for path, data in (("/read-only-cap", first), ("/other-file", second)):
            with b.open(path, "rb") as f:
                assert f.read() == data
    finally:
        b.close()


def test_a_link_does_not_delegate_a_file_its_maker_may_not_read(grid: FsGrid) -> None:
    """A hard link needs only write access to the directory; the delegation a lease holder's linked batch
    asks for would hand out a capability to read the file."""
    a: Any = grid.client("shared", "alice")
    b: Any = grid.client("shared", "bob")
    try:
        a.mkdir("/links", 0o777)
        with a.open("/links/secret", "wb") as f:
            f.write(b"alice only")
        a.setattr("/links/secret", mode=0o600)
        ino, dir_ino = a.op("getattr", path="/links/secret")["ino"], a.op("getattr", path="/links")["ino"]
        r = b.op("changes", changes=[{"op": "linked", "dir": dir_ino, "delegate": True,
                                      "links": [["secret", ino, "mine", 1.0e9]]}])
        assert r["answers"][0]["linked"] == ["mine"]  # a link bob may make, as on a system without protected links
        assert not r.get("opened") and not r["answers"][0].get("opened")
        with pytest.raises(XosError):
            b.open("/links/mine", "rb")
    finally:
        a.close()
        b.close()
