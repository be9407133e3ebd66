"""The C clients' wire constants (pam/xos_proto.h) against the daemon's (xos.identity.proto and xos.paths):
a drift between them would make every login and lookup fail, or worse, mean something else."""

from __future__ import annotations

import os
import re

from xos import paths
from xos.identity import proto
from xos.node.logins import NSS_GUARD

HEADER = os.path.join(os.path.dirname(__file__), "..", "..", "pam", "xos_proto.h")


def header() -> tuple[dict[str, str], dict[str, int]]:
    """The header's #defines (name -> text) and enum members (name -> value)."""
    with open(HEADER) as f:
        text = f.read()
    defines = {m[0]: m[1].strip() for m in re.findall(r"^#define (XOS_\w+) (.+?)(\s*/\*.*)?$", text, re.M)}
    members = {m[0]: int(m[1]) for m in re.findall(r"^\s+(XOS_\w+) = (-?\d+),", text, re.M)}
    return defines, members


def test_the_limits_and_the_version_agree() -> None:
    defines, _ = header()
    assert int(defines["XOS_PROTO_VERSION"]) == proto.VERSION
    assert int(defines["XOS_MAX_MESSAGE"]) == proto.MAX_MESSAGE
    assert int(defines["XOS_MAX_FIELDS"]) == proto.MAX_FIELDS


def test_every_op_and_status_has_the_same_number_on_both_sides() -> None:
    _, members = header()
    ops = {k[len("XOS_OP_"):]: v for k, v in members.items() if k.startswith("XOS_OP_")}
    statuses = {k[len("XOS_"):]: v for k, v in members.items() if not k.startswith("XOS_OP_") and v >= 0}
    assert ops == {op.name: op.value for op in proto.Op}
    assert statuses == {s.name: s.value for s in proto.Status}


def test_the_socket_and_the_loop_guard_are_where_the_daemon_puts_them(monkeypatch) -> None:
    defines, _ = header()
    monkeypatch.delenv("XOS_RUN", raising=False)
    run, name = defines["XOS_DEFAULT_RUN"].strip('"'), defines["XOS_SOCKET_NAME"].strip('"')
    assert os.path.join(run, name) == paths.idmap_socket()
    assert defines["XOS_LOOP_GUARD"].strip('"') == NSS_GUARD
