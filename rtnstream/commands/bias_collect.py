"""``rtnstream bias-collect``: keep a long bias run as a compact stack (the screen and candidates' values).

From files given (folders, glob patterns, files; natural name order) or, with ``--watch``, from a folder
as the camera software writes the frames (a file is taken once its size and time stay unchanged for
``--settle`` seconds, as ``rtnstream watch`` does). ``rtnstream fit COMPACT.fits`` then fits it.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

__all__ = ["configure", "run"]

log = logging.getLogger(__name__)


def configure(parser: argparse.ArgumentParser) -> None:
    """Add the options of ``rtnstream bias-collect`` to ``parser``."""
    from rtnstream.commands.fit import parse_size

    parser.add_argument("inputs", nargs="+", metavar="INPUT",
                        help="bias FITS files, folders or glob patterns, in time order (natural name order); with "
                             "--watch, the one folder to watch")
    parser.add_argument("-o", "--output", type=Path, required=True, metavar="COMPACT.fits",
                        help="compact stack to write")
    parser.add_argument("--screen", type=int, default=400, metavar="N",
                        help="first frames kept whole and screened for candidate RTN pixels")
    parser.add_argument("--frames", type=int, default=None, metavar="N",
                        help="stop after N frames (with --watch: the run's length)")
    parser.add_argument("--watch", action="store_true",
                        help="take the folder's FITS files as they are written, until --frames or --idle")
    parser.add_argument("--settle", type=float, default=1.0, metavar="S",
                        help="--watch: seconds a file must stay unchanged before it is taken")
    parser.add_argument("--idle", type=float, default=600.0, metavar="S",
                        help="--watch: stop after S seconds without a new file")
    parser.add_argument("--poll", type=float, default=0.5, metavar="S", help="--watch: seconds between looks")
    parser.add_argument("--remove-taken", action="store_true",
                        help="delete each input file once its candidates' values are kept (the first --screen frames' "
                             "files once screened; a file cut by --frames is kept), so the run never takes more disk "
                             "than the screen's frames")
    parser.add_argument("--memory-limit", type=parse_size, default="1G", metavar="SIZE",
                        help="memory of the screen's bands and work arrays, e.g. 512M, 4G")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing output")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")


def run(args: argparse.Namespace) -> int:
    """Collect, then write the compact stack; returns 0, or 2 on bad input.

    A file that cannot be taken (not FITS, truncated, a compact stack while watching, another frame shape or
    pixel type) is skipped with a warning and listed at the end; the frames taken are always written (with
    ``--remove-taken`` a skipped file is kept). The spool ``<output>.part`` never outlives a failure.
    """
    from rtnstream.calibration.compact import is_compact_stack
    from rtnstream.calibration.prescreen import BiasCollector
    from rtnstream.calibration.stacks import FitsStack, inspect_fits
    from rtnstream.kernels.exceptions import RTNStreamError
    from rtnstream.series import discover

    if args.frames is not None and args.frames < args.screen:
        return _fail(f"--frames ({args.frames}) must be at least --screen ({args.screen})")
    if args.watch and (len(args.inputs) != 1 or not Path(args.inputs[0]).is_dir()):
        return _fail(f"--watch takes one folder, got {' '.join(args.inputs)}")
    if not args.watch:
        paths = list(discover(args.inputs)[0])
        compact = [p for p in paths if is_compact_stack(p)]
        if compact:
            return _fail(f"{', '.join(map(str, compact))}: a compact stack, not bias frames; bias-collect takes "
                         f"the frames (fit a compact stack alone: rtnstream fit COMPACT.fits)")
    try:
        collector = BiasCollector(args.output, args.screen, memory_limit_bytes=args.memory_limit,
                                  progress=not args.no_progress, overwrite=args.overwrite)
    except (ValueError, FileExistsError) as exc:
        return _fail(str(exc))
    args.output.parent.mkdir(parents=True, exist_ok=True)
    skipped: dict[Path, str] = {}  # files not taken -> why
    files = _watched(args, skipped) if args.watch else iter(paths)
    t0 = time.perf_counter()
    taken: list[Path] = []  # whole files whose values are kept (or that wait for the screen)
    try:
        for path in files:
            screened = None
            try:
                stack = FitsStack([inspect_fits(path)])
                whole = True
                if args.frames is not None:
                    left = args.frames - collector.n_frames
                    if stack.n_frames > left:
                        stack, whole = stack.subset(range(left)), False
                collector.check(stack)
                screened = collector.writer is not None
                collector.add(stack)  # after the screen, a failure leaves the frames kept before as they were
            except Exception as exc:  # noqa: BLE001 - any failure of one file: skipped, the frames kept stay
                if screened is False:
                    raise  # the screen itself failed (its files are all kept: nothing is removed before it)
                _skip(skipped, path, exc)
                continue
            taken += [path] if whole else []
            if args.remove_taken and collector.writer is not None:  # screened: their values are in the spool
                for done in taken:
                    done.unlink()
                taken = []
            if args.frames is not None and collector.n_frames >= args.frames:
                break
        if args.watch:
            files.close()  # the watch's files not taken are listed now
        compact = collector.close()
    except (ValueError, OSError, RTNStreamError) as exc:
        collector.discard()
        _report_skipped(skipped)
        return _fail(str(exc))
    except BaseException:
        collector.discard()
        raise
    _report_skipped(skipped)
    full = compact.n_frames * compact.shape[0] * compact.shape[1] * compact.dtype.itemsize
    print(f"rtnstream bias-collect: {compact.n_frames} frames, {compact.n_candidates} candidates "
          f"({100 * compact.n_candidates / (compact.shape[0] * compact.shape[1]):.2f} % of pixels) in "
          f"{compact.nbytes()} bytes, {full / compact.nbytes():.1f}x less than the frames' {full} bytes of pixels "
          f"({time.perf_counter() - t0:.1f} s): {compact.path}"
          + (f"; {len(skipped)} files skipped" if skipped else ""))
    return 0


def _skip(skipped: dict[Path, str], path: Path, exc: BaseException) -> None:
    message = str(exc)
    if not message.startswith(str(path)):
        message = f"{path}: {message}"
    skipped[path] = message
    log.warning("bias-collect: skipped %s", message)


def _report_skipped(skipped: dict[Path, str]) -> None:
    if skipped:
        print(f"rtnstream bias-collect: warning: {len(skipped)} files not taken:", file=sys.stderr)
        for message in skipped.values():
            print(f"  {message}", file=sys.stderr)


def _watched(args: argparse.Namespace, skipped: dict[Path, str]):
    """Paths of the watched folder's FITS files as they settle, in natural name order within each look.

    Files that are still not FITS (or truncated) at their settled size when the watch ends go into
    ``skipped`` (path -> why), each with a warning.
    """
    from rtnstream.calibration.stacks import inspect_fits
    from rtnstream.kernels.exceptions import FrameError
    from rtnstream.series import natural_key
    from rtnstream.watch import _Folder

    folder = _Folder(Path(args.inputs[0]), args.output.resolve(), "*")
    handled: set[str] = set()
    why: dict[Path, FrameError] = {}
    last = time.monotonic()
    try:
        while time.monotonic() - last < args.idle:
            ready, changed = folder.settled(handled, args.settle)
            if changed:
                last = time.monotonic()
            for path in sorted(ready, key=lambda p: natural_key(p.name)):
                try:
                    inspect_fits(path)
                except FrameError as exc:  # not complete yet
                    folder.not_complete(path)
                    why[path] = exc
                    continue
                why.pop(path, None)
                handled.add(path.relative_to(Path(args.inputs[0])).as_posix())
                folder.forget(path)
                last = time.monotonic()
                yield path
            time.sleep(args.poll)
        log.info("bias-collect: no new file for %.0f s; stopping", args.idle)
    finally:
        for path in folder.incomplete():
            if path in why:
                _skip(skipped, path, why[path])


def _fail(message: str) -> int:
    print(f"rtnstream bias-collect: error: {message}", file=sys.stderr)
    return 2
