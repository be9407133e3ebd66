"""What every command group shares: the parser, daemon addresses and credentials with their environment
variables, `--json`, and the small printing helpers."""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable
from typing import Any, NoReturn

from xos import paths
from xos.errors import InvalidInput

# Each daemon a command talks to: its flag, its environment variable, its default and what it is.
ADDRESSES = {
    "node": ("XOS_NODE", None, "the node daemon's socket (default $XOS_NODE or $XOS_RUN/node.sock)"),
    "vo": ("XOS_VO", None, "the VO service's management socket (default $XOS_VO or $XOS_RUN/vo.sock)"),
    "aem": ("XOS_AEM", "https://localhost:7300", "the job manager's URL (default $XOS_AEM or https://localhost:7300)"),
    "mrc": ("XOS_MRC", None, "the MRC's URL (default $XOS_MRC)"),
}


class Parser(argparse.ArgumentParser):
    """argparse with usage errors as one line and a stable code, like every other xos error."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"xos: error usage: {self.prog}: {message} (see {self.prog} --help)\n")


def address(p: argparse.ArgumentParser, daemon: str) -> None:
    """`--DAEMON`: where that daemon is, from the flag, else its environment variable, else the default."""
    env, default, what = ADDRESSES[daemon]
    p.add_argument(f"--{daemon}", dest=f"{daemon}_address", default=os.environ.get(env) or default, help=what)


def node_socket(args: argparse.Namespace) -> str | None:
    """The node daemon's socket: --node, $XOS_NODE, the old global --socket, else the default."""
    return getattr(args, "node_address", None) or getattr(args, "socket", None) or None


def mrc(args: argparse.Namespace) -> str:
    """The MRC's URL; a clear error when neither --mrc nor $XOS_MRC gives it."""
    url = getattr(args, "mrc_address", None)
    if not url:
        raise InvalidInput("no MRC: give --mrc URL or set XOS_MRC")
    return str(url).rstrip("/")


def command_parser(group: Any, name: str, hlp: str, run: Callable[..., Any], daemon: str | None = None,
                   data: bool = True) -> argparse.ArgumentParser:
    """One command of a group: its help, its handler, the address of the daemon it asks, and --json when it
    prints data."""
    p: argparse.ArgumentParser = group.add_parser(name, help=hlp)
    if daemon:
        address(p, daemon)
    if data:
        json_flag(p)
    p.set_defaults(run=run)
    return p


def cred(p: argparse.ArgumentParser, what: str = "") -> None:
    """`--cred FILE` ('-': stdin); without it the token in $XOS_CREDENTIAL."""
    p.add_argument("--cred", metavar="FILE", help=what or "credential file ('-': stdin; default: the token in "
                                                          "$XOS_CREDENTIAL)")


def ca(p: argparse.ArgumentParser) -> None:
    """`--ca`: the grid's CA certificate, for https URLs."""
    p.add_argument("--ca", help="the grid's CA certificate (default $XOS_CA or $XOS_HOME/host/ca.pem)")


def json_flag(p: argparse.ArgumentParser) -> None:
    """`--json`: print the data as JSON instead of for people."""
    p.add_argument("--json", action="store_true", help="print JSON")


def credential_max() -> int:
    """The longest credential read from a file or stdin."""
    from xos.identity.credential import MAX_TOKEN

    return MAX_TOKEN


def read_token(path: str | None) -> str:
    """A credential from the file `path` ('-' or None: stdin)."""
    try:
        if path is None or path == "-":
            return sys.stdin.read(credential_max() + 1).strip()
        with open(path) as f:
            return f.read(credential_max() + 1).strip()
    except (OSError, UnicodeDecodeError) as e:
        raise InvalidInput(f"cannot read credential {path}: {e}") from None


def token(args: argparse.Namespace, required: bool = True) -> str | None:
    """The credential a command acts with: --cred FILE, else $XOS_CREDENTIAL; None when neither and not
    `required`."""
    return token_from(getattr(args, "cred", None), required)


def token_from(path: str | None, required: bool = True) -> str | None:
    """A credential from the file `path`, else $XOS_CREDENTIAL; None when neither and not `required`."""
    if path:
        return read_token(path)
    env = os.environ.get("XOS_CREDENTIAL", "").strip()
    if env:
        return env
    if required:
        raise InvalidInput("no credential: give --cred FILE or set XOS_CREDENTIAL")
    return None


def emit(args: argparse.Namespace, data: Any, human: Callable[[Any], object]) -> int:
    """Print `data` as JSON with --json, else as `human` shows it."""
    if getattr(args, "json", False):
        print(json.dumps(data, indent=2))
    else:
        human(data)
    return 0


def say(text: str) -> Callable[[Any], None]:
    """A `human` printer of one fixed line."""
    return lambda _: print(text)


def table(rows: list[dict[str, Any]], cols: list[str]) -> None:
    """Rows as aligned columns under upper-case headers."""
    widths = [max(len(c), *(len(str(r.get(c, ""))) for r in rows)) for c in cols]
    print("  ".join(c.upper().ljust(w) for c, w in zip(cols, widths, strict=True)))
    for r in rows:
        print("  ".join(str(r.get(c, "")).ljust(w) for c, w in zip(cols, widths, strict=True)))


def command(args: argparse.Namespace) -> list[str]:
    """The command written after `--`."""
    cmd = list(args.command or [])
    if not cmd:
        raise InvalidInput("no command given: write it after --")
    return cmd


def trust_dir() -> str:
    """Where this host keeps the VO keys it trusts."""
    return paths.trust_dir()


def old_spelling(new: str) -> str:
    """The help of a command kept under its old name for one release."""
    return f"old spelling of `{new}` (kept for one release)"
