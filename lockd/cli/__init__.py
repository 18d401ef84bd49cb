"""The ``lockd`` command: ``serve`` and the operator commands that drive the admin API.

Every subcommand is listed here, where the command is assembled; no module registers
itself on import.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from lockd import __version__
from lockd.cli import operator
from lockd.cli import serve as serve_command
from lockd.config import ConfigError


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lockd",
        description="lockd: a FleetLock reboot-coordination server for Fedora CoreOS and "
        "Flatcar fleets.",
    )
    parser.add_argument("--version", action="version", version=f"lockd {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    serve = sub.add_parser(
        "serve",
        help="run the FleetLock server",
        description="Run the FleetLock server (POST /v1/pre-reboot, /v1/steady-state).",
        epilog=serve_command.EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    serve_command.add_arguments(serve)
    serve.set_defaults(func=serve_command.run)
    for name, (help_text, add_arguments, run) in operator.COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        add_arguments(p)
        p.set_defaults(func=run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)  # a supervisor's workers rerun it
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args))
    except ConfigError as exc:
        print(f"lockd: configuration error: {exc}", file=sys.stderr)
        return 2
