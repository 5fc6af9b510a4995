"""``rtnstream sink``: subscribe to a job's output and write each corrected frame as a FITS file."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

__all__ = ["configure", "run"]

log = logging.getLogger(__name__)


def configure(parser: argparse.ArgumentParser) -> None:
    """Add the options of ``rtnstream sink``."""
    parser.add_argument("--endpoint", required=True,
                        help="the job's publish endpoint (or its push endpoint with --pull)")
    parser.add_argument("-o", "--outdir", required=True, type=Path, help="folder for the FITS files")
    parser.add_argument("--pull", action="store_true",
                        help="connect as the job's one lossless consumer (its push endpoint)")
    parser.add_argument("--frames", type=int, help="stop after this many frames")
    parser.add_argument("--idle-timeout", type=float, help="stop after this many seconds without a message")
    parser.add_argument("--cube", help="the job's RTN calibration file: write DQ and UNCERT extensions too")
    parser.add_argument("--no-dq", action="store_true", help="with --cube: no DQ extension")
    parser.add_argument("--no-uncert", action="store_true", help="with --cube: no UNCERT extension")


def run(args: argparse.Namespace) -> int:
    """Write frames until stopped (Ctrl-C), ``--frames`` or ``--idle-timeout``; returns 0."""
    from rtnstream.clients.sink import SinkProducts, run_sink  # ZeroMQ: the service extra
    from rtnstream.clients.stream import FrameReceiver
    from rtnstream.kernels.cube import read_cube

    products = None
    if args.cube:
        products = SinkProducts(read_cube(args.cube), dq=not args.no_dq, uncertainty=not args.no_uncert)
    with FrameReceiver(args.endpoint, "pull" if args.pull else "sub") as receiver:
        try:
            n = run_sink(receiver, args.outdir, args.frames, args.idle_timeout, products=products)
        except KeyboardInterrupt:
            return 0
    log.info("wrote %d frames to %s", n, args.outdir)
    return 0
