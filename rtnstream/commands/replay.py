"""``rtnstream replay``: publish FITS frames (2-D frames or 3-D stacks) to a job's ingest as a live series."""

from __future__ import annotations

import argparse

from rtnstream.commands.source import add_delivery_options, deliver

__all__ = ["configure", "run"]


def configure(parser: argparse.ArgumentParser) -> None:
    """Add the options of ``rtnstream replay``."""
    parser.add_argument("files", nargs="+", metavar="FILE", help="FITS files in time order")
    add_delivery_options(parser)
    parser.add_argument("--camera", default="replay", help="camera name in the headers")
    parser.add_argument("--fps", type=float, default=0.0, help="frames/s (0: as fast as possible)")
    parser.add_argument("--series", help="series id (default: a new unique one)")


def run(args: argparse.Namespace) -> int:
    """Send the files' frames; returns 0, or 1 when the job rejected frames (``--service``)."""
    from rtnstream.clients.replay import replay_files  # ZeroMQ: the service extra

    if args.fps < 0:
        raise SystemExit(f"rtnstream replay: error: --fps must be >= 0, got {args.fps}")
    return deliver(args, lambda sender: replay_files(sender, args.files, args.fps or None, args.series,
                                                     progress=True))
