"""Command-line entry point: ``rtnstream <command> ...``.

Each sub-command lives in :mod:`rtnstream.commands` as a module with ``configure(parser)`` and
``run(args) -> int``; modules are imported only when their command runs, so ``rtnstream --help``
stays fast and no command pulls in another's dependencies.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

from rtnstream import __version__
from rtnstream.kernels.exceptions import RTNStreamError

__all__ = ["main", "build_parser"]

# name -> (module under rtnstream.commands, one-line help)
_COMMANDS: dict[str, tuple[str, str]] = {
    "simulate": ("simulate", "simulate a sensor with RTN pixels: bias / illuminated stacks, truth, cube"),
    "correct": ("correct", "correct FITS frames offline with an RTN calibration cube"),
    "cube": ("cube", "RTN calibration cubes: import the RTN paper's output, inspect"),
}


def build_parser() -> argparse.ArgumentParser:
    """Build the top-level parser with every sub-command's options."""
    parser = argparse.ArgumentParser(prog="rtnstream", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"rtnstream {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log at DEBUG level")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, (module, help_text) in _COMMANDS.items():
        cmd = importlib.import_module(f"rtnstream.commands.{module}")
        p = sub.add_parser(name, help=help_text, description=help_text)
        cmd.configure(p)
        p.set_defaults(_run=cmd.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the command line; returns the process exit status."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        return int(args._run(args) or 0)
    except RTNStreamError as exc:
        print(f"rtnstream {args.command}: error: {exc}", file=sys.stderr)
        return 2
