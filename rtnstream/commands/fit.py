"""``rtnstream fit``: fit an RTN calibration cube from bias stacks; write it with a JSON report and plots."""

from __future__ import annotations

import argparse
import logging
import re
import sys
from pathlib import Path

__all__ = ["configure", "run", "parse_size", "gain_from_args"]

log = logging.getLogger(__name__)

_UNITS = {"": 1, "k": 1024, "m": 1024**2, "g": 1024**3, "t": 1024**4}


def parse_size(text: str) -> int:
    """Bytes from a size such as ``1073741824``, ``512M``, ``1.5G``, ``2GiB`` or ``300MB`` (binary units).

    Raises
    ------
    argparse.ArgumentTypeError
        Not a positive size.
    """
    match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([kKmMgGtT]?)(?:i?[bB])?\s*", text)
    if not match:
        raise argparse.ArgumentTypeError(f"not a size: {text!r} (examples: 512M, 2G, 1073741824)")
    value = int(float(match.group(1)) * _UNITS[match.group(2).lower()])
    if value <= 0:
        raise argparse.ArgumentTypeError(f"size must be positive, got {text!r}")
    return value


def configure(parser: argparse.ArgumentParser) -> None:
    """Add the options of ``rtnstream fit`` to ``parser``."""
    parser.add_argument("bias", nargs="+", metavar="BIAS",
                        help="bias FITS files: 2D frames or 3D stacks, in any mix, in time order; or one compact "
                             "stack written by rtnstream bias-collect")
    gain = parser.add_mutually_exclusive_group()
    gain.add_argument("--gain-e-per-adu", type=float, metavar="G",
                      help="conversion gain, e-/ADU (FITS GAIN convention; default: the headers' EGAIN, or GAIN "
                           "when its comment says e-/ADU)")
    gain.add_argument("--gain-adu-per-e", type=float, metavar="G",
                      help="conversion gain given the other way, ADU/e- (e.g. 3.26 for 0.3067 e-/ADU)")
    parser.add_argument("-o", "--output", type=Path, required=True, metavar="CUBE.fits",
                        help="RTN calibration cube to write; the JSON report goes beside it")
    parser.add_argument("--frames", type=int, default=None, metavar="N", help="use only the first N frames")
    parser.add_argument("--prescreen", type=int, default=None, metavar="N",
                        help="find the candidate pixels in the first N frames (e.g. 400) and read only their values "
                             "from the others (the RTN paper's section V.1; one process); default: off")
    parser.add_argument("--plots", type=Path, default=None, metavar="DIR",
                        help="folder for the PNG plots (default: <cube stem>_plots beside the cube)")
    parser.add_argument("--no-plots", action="store_true", help="write no plots")
    parser.add_argument("--workers", type=int, default=1, metavar="N", help="worker processes")
    parser.add_argument("--scheduler", default=None, metavar="local:N|ADDRESS",
                        help="map the bands on dask.distributed: 'local:N' starts a LocalCluster of N workers, "
                             "an address (tcp://host:8786) joins a running scheduler whose workers read the bias "
                             "files by the same paths; needs pip install 'rtnstream[scale]'")
    parser.add_argument("--memory-limit", type=parse_size, default="4G", metavar="SIZE",
                        help="memory of the fit: the whole-sensor maps (48 bytes a pixel, 2.9 GB for a 61 Mpx "
                             "sensor), then the bands and work arrays of all workers, e.g. 512M, 4G")
    parser.add_argument("--alpha", type=float, default=0.003, help="jump-test significance")
    parser.add_argument("--no-two-trap", action="store_true",
                        help="no two-trap refit: fit every pixel with one trap (default: candidates the three-level "
                             "model rejects or fits badly are refitted with two independent traps)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing cube and report")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    parser.add_argument("--allow-imagetyp", action="append", default=[], metavar="KIND",
                        help="also fit frames whose IMAGETYP is KIND (e.g. dark); repeatable; default: bias only")


def run(args: argparse.Namespace) -> int:
    """Fit, then write the cube, the report and the plots; returns 0, or 2 on bad input."""
    from rtnstream.calibration.distributed import SchedulerError, parse_scheduler
    from rtnstream.calibration.fit import FitSettings, fit_bias_stack
    from rtnstream.calibration.fit_report import report_path, write_plots, write_report_json
    from rtnstream.kernels.cube import write_cube
    from rtnstream.kernels.exceptions import RTNStreamError

    out: Path = args.output
    try:
        gain_e_per_adu = gain_from_args(args)
    except ValueError as exc:
        return _fail(str(exc))
    if args.scheduler is not None:
        try:
            parse_scheduler(args.scheduler)
        except SchedulerError as exc:
            return _fail(f"--{exc}")
    report = report_path(out)
    if not args.overwrite:
        existing = [p for p in (out, report) if p.exists()]
        if existing:
            return _fail(f"{', '.join(map(str, existing))} exists; give --overwrite to replace it")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        return _fail(f"--output: cannot create folder {out.parent}: {exc}")
    try:
        settings = FitSettings(alpha=args.alpha, two_trap=not args.no_two_trap)
        result = fit_bias_stack(
            args.bias, gain_e_per_adu, n_frames=args.frames, settings=settings,
            memory_limit_bytes=args.memory_limit, workers=args.workers, scheduler=args.scheduler,
            progress=not args.no_progress,
            allowed_imagetyp=("bias", *args.allow_imagetyp), prescreen=args.prescreen,
        )
    except RTNStreamError:  # unreadable or mismatched files: reported by the CLI
        raise
    except SchedulerError as exc:  # unreachable, or no workers
        return _fail(f"--{exc}")
    except (ValueError, ImportError) as exc:  # bad option values (the message names the option), no dask
        return _fail(str(exc))
    print(f"rtnstream fit: gain {result.report['gain']['e_per_adu']:.6g} e-/ADU "
          f"({result.report['gain']['detail']})")
    counts, timing, two = result.report["counts"], result.report["timing_s"], result.report["two_trap"]
    refit = (f"{counts['two_trap']} with two traps (the refit took {timing['pass3_two_trap_s']:.1f} s, "
             f"{100 * two['time_share_of_pass3']:.0f} % of pass 3)" if settings.two_trap else "two-trap refit off")
    print(f"rtnstream fit: {counts['accepted']} RTN pixels of {counts['candidates']} candidates, {refit}")
    write_cube(result.cube, out, overwrite=args.overwrite)
    write_report_json(result, report)
    log.info("wrote %s (%d RTN pixels) and %s", out, result.cube.n_rtn, report)
    if not args.no_plots:
        folder = args.plots if args.plots is not None else out.with_name(f"{out.stem}_plots")
        plots = write_plots(result, folder)
        log.info("wrote %d plots to %s", len(plots), folder)
    return 0


def gain_from_args(args: argparse.Namespace) -> float | None:
    """The conversion gain, e-/ADU, from ``--gain-e-per-adu`` or ``--gain-adu-per-e`` (its inverse); None
    when neither is given (the fit then takes it from the headers).

    Raises
    ------
    ValueError
        The gain given is not a positive finite number (the message names the option).
    """
    if args.gain_e_per_adu is None and args.gain_adu_per_e is None:
        return None
    name, value = (("--gain-e-per-adu", args.gain_e_per_adu) if args.gain_e_per_adu is not None
                   else ("--gain-adu-per-e", args.gain_adu_per_e))
    if not (0 < value < float("inf")):
        raise ValueError(f"{name} must be a positive number, got {value}")
    return value if name == "--gain-e-per-adu" else 1.0 / value


def _fail(message: str) -> int:
    print(f"rtnstream fit: error: {message}", file=sys.stderr)
    return 2
