"""``rtnstream correct``: correct FITS frames offline with an RTN calibration cube."""

from __future__ import annotations

import argparse
import contextlib
import json
import signal
import sys
from collections.abc import Iterator

from rtnstream.kernels.cube import read_cube
from rtnstream.kernels.engine import EngineSettings
from rtnstream.offline import correct_files


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("inputs", nargs="+", metavar="INPUT",
                        help="FITS files (2-D frames or 3-D stacks), folders or glob patterns; ordered by time")
    parser.add_argument("--dry-run", action="store_true", help="print the series plan and write nothing")
    parser.add_argument("--skip-bad", action="store_true",
                        help="pass over corrupt or truncated files (listed) instead of stopping")
    parser.add_argument("--skip-short", action="store_true",
                        help="pass over series too short for the temporal window (listed) instead of stopping")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument("--scheduler", default=None, metavar="local:N|ADDRESS",
                        help="correct many series at once (a night, an archive) on dask.distributed, one series a "
                             "task: 'local:N' starts a LocalCluster of N workers, an address (tcp://host:8786) "
                             "joins a running scheduler whose workers reach the cube, inputs and output folder by "
                             "the same paths; needs pip install 'rtnstream[scale]'")
    add_correction_options(parser)


def add_correction_options(parser: argparse.ArgumentParser) -> None:
    """The options ``correct`` shares with ``watch``: cube, output, engine settings, products, guards, series."""
    parser.add_argument("--cube", required=True, help="RTN calibration file (FITS)")
    parser.add_argument("-o", "--outdir", required=True, help="output folder")
    parser.add_argument("--reference", choices=("temporal", "causal", "spatial"), default="temporal",
                        help="reference of each pixel: neighbouring frames (centred or past only) or pixels")
    parser.add_argument("--window", type=int, default=10, help="temporal window W, even >= 4 (frames)")
    parser.add_argument("--spatial-size", type=int, default=5, help="spatial neighbourhood k (odd >= 3)")
    parser.add_argument("--alpha", type=float, default=0.003, help="significance of the jump test")
    parser.add_argument("--k-var", type=float, default=1.5, help="variability veto factor")
    parser.add_argument("--backend", choices=("auto", "numpy", "cupy"), default="auto",
                        help="compute backend (auto: CuPy when a GPU is usable, else NumPy)")
    parser.add_argument("--mode", choices=("correct", "mask"), default="correct",
                        help="correct the jumps, or leave the pixels and flag the jumps in DQ and MASK")
    parser.add_argument("--no-dq", action="store_true", help="do not write the DQ extension")
    parser.add_argument("--no-uncert", action="store_true", help="do not write the UNCERT extension")
    parser.add_argument("--force", action="store_true",
                        help="correct frames the guards refuse (already corrected, another camera or setting)")
    parser.add_argument("--order-key", default="DATE-OBS",
                        help="header key giving each frame's time (name order when a file lacks it)")
    parser.add_argument("--max-gap", type=float, default=5.0,
                        help="a time step longer than this many cadences starts a new series")
    parser.add_argument("--origin-keys", nargs=2, default=("XORGSUBF", "YORGSUBF"), metavar=("XKEY", "YKEY"),
                        help="header keys of a subframe's origin on the sensor")
    parser.add_argument("--temp-tolerance", type=float, default=2.0,
                        help="largest sensor temperature difference from the cube's (degrees C)")


def run(args: argparse.Namespace) -> int:
    try:
        settings = EngineSettings(reference=args.reference, window=args.window, spatial_size=args.spatial_size,
                                  alpha=args.alpha, k_var=args.k_var)
    except ValueError as exc:
        raise SystemExit(f"rtnstream correct: error: {exc}") from None
    from rtnstream.calibration.distributed import SchedulerError, parse_scheduler

    if args.scheduler is not None:
        try:
            parse_scheduler(args.scheduler)
        except SchedulerError as exc:
            return _fail(f"--{exc}")
    cube = read_cube(args.cube)
    try:
        with _sigterm_interrupts():  # a stopped run still writes summary.json (what was written)
            summary = correct_files(cube, args.inputs, args.outdir, settings, backend=args.backend,
                                    progress=False if args.no_progress else None, cube_path=args.cube, mode=args.mode,
                                    dq=not args.no_dq, uncertainty=not args.no_uncert, force=args.force,
                                    skip_bad=args.skip_bad, skip_short=args.skip_short, order_key=args.order_key,
                                    max_gap=args.max_gap, origin_keys=tuple(args.origin_keys),
                                    temperature_tolerance_c=args.temp_tolerance, dry_run=args.dry_run,
                                    scheduler=args.scheduler)
    except SchedulerError as exc:  # unreachable, or no workers
        return _fail(f"--{exc}")
    except ImportError as exc:  # --scheduler without dask installed
        raise SystemExit(f"rtnstream correct: error: {exc}") from None
    for entry in summary["skipped"] + summary["bad"]:
        print(f"skipped {entry['file']}: {entry['reason']}", file=sys.stderr)
    for entry in summary["short"]:
        print(f"skipped {entry['reason']}", file=sys.stderr)
    if args.dry_run:
        print("\n".join(summary["plan"]))
        return 0
    print(json.dumps({k: summary[k] for k in ("frames", "corrections", "mode", "backend", "frames_per_s",
                                              "cube_id")}))
    return 0


def _fail(message: str) -> int:
    """Print ``message`` as the command's error; the exit status of bad input (2)."""
    print(f"rtnstream correct: error: {message}", file=sys.stderr)
    return 2


@contextlib.contextmanager
def _sigterm_interrupts() -> Iterator[None]:
    """Turn SIGTERM into KeyboardInterrupt while the block runs (as Ctrl-C: the run stops and says so)."""
    def interrupt(signum, frame):
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
