"""Constants and small helpers the grid tests share."""

from __future__ import annotations

from typing import Any

from xos.errors import XosError

PORT = 7101  # the VO service's TCP port in the grid tests
POOL = (30000, 30999)  # the UID range of the test VO's leases


def fresh_nodes(s: Any) -> int:
    """How many nodes' ads the job manager of Session `s` holds fresh (0 while it does not answer)."""
    try:
        return len([n for n in s.run(s.jm.nodes()) if n["fresh"]])
    except XosError:
        return 0


def http_answers(sock: Any, n: int) -> list[tuple[int, dict[str, str], bytes]]:
    """`n` HTTP answers read off `sock`: (status, headers, body) each."""
    got = b""
    out: list[tuple[int, dict[str, str], bytes]] = []
    while len(out) < n:
        while b"\r\n\r\n" not in got:
            chunk = sock.recv(1 << 16)
            assert chunk, f"connection closed after {len(out)} answers"
            got += chunk
        head, _, got = got.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
        length = int(headers["content-length"])
        while len(got) < length:
            chunk = sock.recv(1 << 16)
            assert chunk
            got += chunk
        out.append((int(lines[0].split()[1]), headers, got[:length]))
        got = got[length:]
    return out
