"""A member whose credential was revoked loses the grid file system within seconds: the MRC refuses their
calls, and the OSDs refuse their reads and writes even with a capability the MRC signed before."""

from __future__ import annotations

import os
import urllib.error
import urllib.request
from typing import Any

from xos.errors import XosError
from xos.testing import TestVOService, wait_for
from xos.testing.fsgrid import FS_NET, FsGrid

VO_ADDRESS = f"{FS_NET}.1:7211"  # the file system grid's bridge, on this host: the MRC and OSDs reach it


def members(grid: FsGrid, vo: TestVOService) -> tuple[str, str]:
    """VO "lab" at `vo`, trusted by the grid, with alice and bob: their credentials."""
    assert vo.cli("vo", "create", "lab")[0] == 0
    with open(os.path.join(vo.home, "vo", "signing.key.pub"), "rb") as f:
        grid.trust_vo("lab", f.read())
    assert vo.cli("vo", "add", "lab", "alice")[0] == 0
    assert vo.cli("vo", "add", "lab", "bob")[0] == 0
    return vo.cli("vo", "issue", "lab", "alice")[1].strip(), vo.cli("vo", "issue", "lab", "bob")[1].strip()


def test_a_revoked_credential_is_refused_by_the_mrc_and_the_osds_within_5_s() -> None:
    with FsGrid(osds=2, clients=0, vo_urls=(f"https://{VO_ADDRESS}",)) as grid, \
            TestVOService(listen=VO_ADDRESS, ca_dir=grid.ca_dir) as vo:
        alice, bob = members(grid, vo)
        from xos.fs.client.client import Client

        a = Client(grid.mrc_url, "labvol", alice, ca=grid.ca)
        b = Client(grid.mrc_url, "labvol", bob, ca=grid.ca)
        try:
            a._json("POST", f"{grid.mrc_url}/v1/volumes", {"name": "labvol", "replicas": 2})
            with a.open("/data", "wb") as f:
                f.write(os.urandom(2 << 20))
            st = a.open_handle("/data")  # a capability the MRC signed while alice was in good standing
            url = f"{st.xloc.urls[st.xloc.replicas[0].osds[0]]}/v1/o/{st.fid}/0?off=0&len=4096"

            def osd_get() -> int:
                req = urllib.request.Request(url, headers={"Authorization": f"Bearer {alice}", "X-Xos-Cap": st.cap})
                try:
                    with grid.urlopen(req, timeout=5) as r:
                        r.read()
                        return r.status
                except urllib.error.HTTPError as e:
                    return e.code

            assert osd_get() == 200  # and the native reader holds a grant for it now

            def mrc_refuses() -> bool:
                try:
                    a.stat("/data")
                except XosError as e:
                    return e.code == "credential-revoked"
                return False

            assert vo.cli("vo", "revoke", "lab", "alice")[0] == 0
            wait_for(mrc_refuses, 5, "the MRC to refuse the revoked credential")
            wait_for(lambda: osd_get() in (401, 403), 5, "the OSD to refuse the revoked credential")
            assert b.stat("/data")["size"] == 2 << 20  # the others go on
        finally:
            a.close()
            b.close()
        bad: Any = grid.unexpected_warnings(["revocations from .* unavailable", "revoked"])
        assert not bad, bad


def test_a_revoked_members_mount_stops_opening_files_delegated_to_it_within_5_s(tmp_path) -> None:
    with FsGrid(osds=1, clients=1, vo_urls=(f"https://{VO_ADDRESS}",)) as grid, \
            TestVOService(listen=VO_ADDRESS, ca_dir=grid.ca_dir) as vo:
        alice, _ = members(grid, vo)
        from xos.fs.client.client import Client

        a = Client(grid.mrc_url, "labvol", alice, ca=grid.ca)
        try:
            a._json("POST", f"{grid.mrc_url}/v1/volumes", {"name": "labvol", "replicas": 1})
        finally:
            a.close()
        cred = os.path.join(tmp_path, "alice.cred")
        fd = os.open(cred, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        os.write(fd, alice.encode())
        os.close(fd)
        mp = grid.mount(0, "labvol", user="alice", vo="lab", cred=cred)
        path = os.path.join(mp, "small")
        with open(path, "wb") as f:
            f.write(b"kept whole in the open's answer")  # an inline file: no OSD to refuse a read

        def readable() -> bool:
            try:
                with open(path, "rb") as f:
                    return f.read() == b"kept whole in the open's answer"
            except OSError:
                return False

        assert readable() and readable()  # the second open was the mount's own
        assert vo.cli("vo", "revoke", "lab", "alice")[0] == 0
        wait_for(lambda: not readable(), 5, "the mount to stop opening the revoked member's files")
        bad: Any = grid.unexpected_warnings(["revocations from .* unavailable", "revoked", "directory leases"])
        assert not bad, bad
