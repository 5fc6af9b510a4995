"""``rtnstream watch``: correct FITS frames as the camera software writes them into a folder."""

from __future__ import annotations

import argparse
import json
import signal
import threading

from rtnstream.commands.correct import add_correction_options
from rtnstream.kernels.cube import read_cube
from rtnstream.kernels.engine import EngineSettings
from rtnstream.watch import WatchConfig, watch_folder


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("indir", metavar="INDIR", help="the folder the camera software saves into (and sub-folders)")
    parser.add_argument("--pattern", default="*",
                        help="name pattern (glob) of the files to take; only FITS names (.fits, .fit, .fts, .fz, "
                             ".gz) are taken")
    parser.add_argument("--idle-s", type=float, metavar="S",
                        help="end the open series after S seconds without a new file (default: only a settings "
                             "change, a gap or the end of the watch)")
    parser.add_argument("--settle-s", type=float, default=1.0, metavar="S",
                        help="a file is taken once unchanged for S seconds and complete as FITS")
    parser.add_argument("--poll-s", type=float, default=0.5, metavar="S", help="interval between looks at INDIR")
    add_correction_options(parser)


def run(args: argparse.Namespace) -> int:
    try:
        settings = EngineSettings(reference=args.reference, window=args.window, spatial_size=args.spatial_size,
                                  alpha=args.alpha, k_var=args.k_var)
        config = WatchConfig(backend=args.backend, mode=args.mode, dq=not args.no_dq, uncertainty=not args.no_uncert,
                             force=args.force, order_key=args.order_key, max_gap=args.max_gap,
                             origin_keys=tuple(args.origin_keys), temperature_tolerance_c=args.temp_tolerance,
                             cube_path=args.cube, pattern=args.pattern, settle_s=args.settle_s, poll_s=args.poll_s,
                             idle_s=args.idle_s)
    except ValueError as exc:
        raise SystemExit(f"rtnstream watch: error: {exc}") from None
    cube = read_cube(args.cube)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):  # flush the open series and exit 0
        signal.signal(sig, lambda *_: stop.set())
    summary = watch_folder(cube, args.indir, args.outdir, settings, config, stop)
    print(json.dumps(summary), flush=True)
    return 0
