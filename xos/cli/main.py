"""The `xos` command: the parser, built from one module per command group, and the one place every error
a user can cause becomes one line and a non-zero exit."""

from __future__ import annotations

import argparse
import asyncio
import inspect
import sys

from xos.cli import common, fs, host, job, node, serve, vo, ws
from xos.errors import XosError

# Command groups in the order `xos --help` lists them: what a user types most first, daemons last.
GROUPS = (ws, job, fs, vo, node, host, serve)


def parser() -> argparse.ArgumentParser:
    """The whole command line."""
    p = common.Parser(prog="xos", description="xos: a grid operating-system layer for Linux")
    p.add_argument("--socket", help=argparse.SUPPRESS)  # the old spelling of --node, kept for one release
    sub = p.add_subparsers(dest="area", required=True, metavar="COMMAND")
    for group in GROUPS:
        group.add(sub)
    sub.add_parser("init", help="make this host's VO signing key ($XOS_HOME/vo/signing.key)").set_defaults(
        run=vo.init)
    return p


def main(argv: list[str] | None = None) -> int:
    """Entry point; every error a user can cause is one line and a non-zero exit."""
    argv = list(sys.argv[1:] if argv is None else argv)
    # Everything after "--" is the command, untouched by option parsing (flags may precede it).
    command = None
    if "--" in argv:
        cut = argv.index("--")
        argv, command = argv[:cut], argv[cut + 1:]
    args = parser().parse_args(argv)
    args.command = command
    args.argv = argv  # what the command line itself said (a daemon's config file fills in the rest)
    try:
        if inspect.iscoroutinefunction(args.run):
            return int(asyncio.run(args.run(args)))
        return int(args.run(args))
    except XosError as e:
        print(f"xos: error {e.code}: {e.message}", file=sys.stderr)
        return 2 if e.code in ("invalid-input", "bad-request") else 1
    except OSError as e:  # a local file the user named: missing, unreadable, not a directory
        print(f"xos: error os-error: {e.strerror or e}: {e.filename or ''}".rstrip(": "), file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
