"""Offline correction of FITS files (``rtnstream correct``): a night of frames, series by series.

The inputs (files, folders, globs: :func:`rtnstream.series.discover`) are scanned once for their headers
(one file open at a time), checked complete, ordered by time and split into series
(:func:`rtnstream.series.plan`). Every frame is checked against the cube before anything is written
(:mod:`rtnstream.guards`). Each series then runs through the engine (:class:`~rtnstream.products.
SeriesCorrector`) and each frame is written, atomically, to a file of the same name in the output folder
with the input's layout, the provenance keywords and its ``DQ`` / ``UNCERT`` (/ ``MASK``) extensions
(:func:`rtnstream.fitsio.write_frame_file`). The bias offset map of each series goes to ``calib/`` and
``summary.json`` beside the frames.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from astropy.io import fits
from tqdm import tqdm

from rtnstream import __version__
from rtnstream.fitsio import (
    FrameSink,
    FrameSource,
    apply_cards,
    extension_hdus,
    read_image,
    write_atomic,
    write_frame_file,
)
from rtnstream.guards import DEFAULT_TEMPERATURE_TOLERANCE_C, check_frame_header, cube_part, frame_origin
from rtnstream.kernels.cube import RTNCube
from rtnstream.kernels.engine import BackendName, EngineSettings
from rtnstream.kernels.exceptions import FrameError, SeriesError
from rtnstream.kernels.numpy_backend import FrameCounts
from rtnstream.products import DQ_BITS, FrameProducts, Mode, SeriesCorrector, history_line, rtn_header_cards
from rtnstream.series import FrameFile, Series, discover, plan, plan_lines, scan

__all__ = ["CALIB_DIR", "rtn_header_cards", "correct_files", "frame_cards", "write_output", "write_offset_map"]

log = logging.getLogger(__name__)

CALIB_DIR = "calib"


def _add(a: FrameCounts, b: FrameCounts) -> FrameCounts:
    return FrameCounts(a.low + b.low, a.high + b.high, a.vetoed + b.vetoed, a.out_of_table + b.out_of_table)


def frame_cards(settings: EngineSettings, cube_id: str, counts: FrameCounts, corrected: bool, mode: Mode,
                had_bunit: bool, **provenance: Any) -> fits.Header:
    """Header cards added to an output frame: BUNIT (when the input has none), the provenance keywords
    (:func:`rtnstream.products.rtn_header_cards`) and the HISTORY line."""
    cards = fits.Header()
    if not had_bunit:
        cards["BUNIT"] = ("adu", "physical unit of the array values")
    for key, value, comment in rtn_header_cards(settings, cube_id, counts, corrected, mode=mode, **provenance):
        cards[key] = (value, comment)
    cards.add_history(history_line(cube_id, mode, corrected))
    return cards


def write_output(path: Path, f: FrameFile, out: FrameProducts, counts: FrameCounts, settings: EngineSettings,
                 cube_id: str, mode: Mode, forced: tuple[str, ...] = (), **provenance: Any) -> Path:
    """Write the corrected 2-D frame ``out`` of input ``f`` to ``path`` (atomic): the input's layout, the
    :func:`frame_cards` and the DQ / UNCERT / MASK extensions :class:`~rtnstream.products.FrameProducts` holds.

    Parameters
    ----------
    path : pathlib.Path
    f : FrameFile
        The input (a 2-D frame), as scanned.
    out : FrameProducts
    counts : FrameCounts
        The frame's corrections (RTNNLO, RTNNHI, RTNNVETO).
    settings : EngineSettings
    cube_id : str
    mode : {'correct', 'mask'}
    forced : tuple of str
        The guards overridden (RTNFORCE).
    **provenance
        ``cube_file``, ``origin``, ``series`` of :func:`rtnstream.products.rtn_header_cards`.

    Returns
    -------
    pathlib.Path
    """
    cards = frame_cards(settings, cube_id, counts, out.corrected, mode, "BUNIT" in f.header, forced=forced,
                        **provenance)
    exts = extension_hdus(out.dq, out.uncertainty, out.mask, DQ_BITS, f.compressed)
    return write_frame_file(path, out.data, cards, like=f.path, like_index=f.hdu_index, extensions=exts)


@dataclass
class _Options:
    settings: EngineSettings
    backend: BackendName
    mode: Mode
    dq: bool
    uncertainty: bool
    cube_file: str | None
    skip_bad: bool


def correct_files(
    cube: RTNCube,
    inputs: Sequence[str | os.PathLike],
    outdir: str | os.PathLike,
    settings: EngineSettings,
    backend: BackendName = "auto",
    progress: bool | None = None,
    cube_path: str | None = None,
    *,
    mode: Mode = "correct",
    dq: bool = True,
    uncertainty: bool = True,
    force: bool = False,
    skip_bad: bool = False,
    skip_short: bool = False,
    order_key: str = "DATE-OBS",
    max_gap: float = 5.0,
    origin_keys: Sequence[str] = ("XORGSUBF", "YORGSUBF"),
    temperature_tolerance_c: float = DEFAULT_TEMPERATURE_TOLERANCE_C,
    dry_run: bool = False,
    scheduler: str | None = None,
) -> dict[str, Any]:
    """Correct the frames of ``inputs`` into ``outdir``, series by series.

    Parameters
    ----------
    cube : RTNCube
    inputs : sequence of path-like
        FITS files (each a (ny, nx) frame or an (n, ny, nx) stack), folders, or glob patterns.
    outdir : path-like
        Created if needed; no output may overwrite an input.
    settings : EngineSettings
    backend : {'auto', 'numpy', 'cupy'}
    progress : bool or None
        Show progress bars (None: only on a terminal).
    cube_path : str, optional
        The cube's file, recorded in the outputs (RTNCUBEF) and the summary.
    mode : {'correct', 'mask'}
        ``'mask'``: pixels unchanged, jumps flagged in DQ and a MASK extension.
    dq, uncertainty : bool
        Write the DQ / UNCERT extensions (2-D frames).
    force : bool
        Correct frames the guards refuse (already corrected, another camera's setting); the overridden
        guards are recorded in RTNFORCE.
    skip_bad : bool
        Pass over corrupt or truncated files (listed in the summary) instead of stopping.
    skip_short : bool
        Pass over series too short for the temporal window (listed) instead of stopping.
    order_key : str
        Header key giving each frame's time (ISO date or a number); natural name order when a file lacks it.
    max_gap : float
        A time step longer than ``max_gap`` times the cadence starts a new series.
    origin_keys : (str, str)
        Header keys of a subframe's x and y origin on the sensor.
    temperature_tolerance_c : float
        Largest sensor temperature difference (degrees C) between frame and cube.
    dry_run : bool
        Only plan: return the series (``summary['plan']``, a line each, with the reason a series would be
        refused), write nothing.
    scheduler : str, optional
        Correct the series on dask.distributed, one task each (``'local:N'`` or a scheduler address;
        :func:`rtnstream.calibration.distributed.correct_series`); needs ``cube_path``, which the workers
        read, as they read the inputs and write ``outdir``, by the same paths.

    Returns
    -------
    dict
        The summary, also written to ``outdir/summary.json`` (not in a dry run).

    Raises
    ------
    FrameError
        A corrupt or truncated input (without ``skip_bad``), a frame the guards refuse, a frame that does
        not fit the cube, or an output that would overwrite an input. Raised before anything is written.
    SeriesError
        A series with fewer frames than the temporal window needs (without ``skip_short``).
    """
    if scheduler is not None and cube_path is None:
        raise ValueError("cube_path: correcting on a scheduler needs the cube's file (the workers read it)")
    outdir = Path(outdir)
    paths, skipped = discover(inputs)
    files, bad = scan(paths, order_key=order_key, skip_bad=skip_bad, progress=progress)
    if not files:
        raise FrameError("no FITS frames in the inputs")
    names = [f.path.name for f in files]
    if len(set(names)) != len(names):
        dup = sorted({n for n in names if names.count(n) > 1})[:3]
        raise FrameError(f"input files must have distinct names (outputs keep them): {', '.join(dup)}")
    for f in files:
        if (outdir / f.path.name).resolve() == f.path.resolve():
            raise FrameError(f"{f.path}: the output would overwrite the input; choose another -o")
    series = plan(files, max_gap=max_gap, order_key=order_key)
    checks: dict[int, tuple[tuple[int, int] | None, dict[Path, tuple[str, ...]]]] = {}
    refused: dict[int, str] = {}
    short: dict[int, str] = {}
    for s in series:  # every frame's guards first (the clearest refusal), then the series lengths
        try:
            checks[s.number] = _check_series(s, cube, force, temperature_tolerance_c, origin_keys)
        except FrameError as exc:
            if not dry_run:
                raise
            refused[s.number] = str(exc)
    for s in series:
        try:
            _check_length(s, settings)
        except SeriesError as exc:
            if skip_short:
                short[s.number] = str(exc)
                log.debug("skipped %s", exc)
            elif not dry_run:
                raise
            elif s.number not in refused:
                refused[s.number] = str(exc)
    notes = {n: f" SKIPPED: {m}" for n, m in short.items()} | {n: f" REFUSED: {m}" for n, m in refused.items()}
    summary: dict[str, Any] = {
        "plan": [line + notes.get(s.number, "") for s, line in zip(series, plan_lines(series), strict=True)],
        "skipped": [{"file": str(p), "reason": r} for p, r in skipped],
        "bad": [{"file": str(p), "reason": r} for p, r in bad],
        "short": [{"series": n, "reason": m} for n, m in short.items()],
    }
    if dry_run:
        return summary
    series = [s for s in series if s.number not in short]
    outdir.mkdir(parents=True, exist_ok=True)
    opts = _Options(settings, backend, mode, dq, uncertainty, Path(cube_path).name if cube_path else None,
                    skip_bad)
    total = sum(s.n_frames for s in series)
    summary.update({"settings": asdict(settings), "mode": mode, "cube_id": cube.cube_id, "cube_path": cube_path,
                    "n_rtn_pixels": cube.n_rtn, "software_version": __version__})
    started = time.time() - 1.0  # a file's mtime comes from a coarser clock: a margin, far below a rerun's gap
    t0 = time.perf_counter()
    results: list[dict[str, Any]] = []
    try:
        with tqdm(total=total, unit="frame", desc="correct",
                  disable=(not progress) if progress is not None else None) as bar:
            if scheduler is not None:  # one series a task on dask.distributed
                from rtnstream.calibration.distributed import correct_series

                results = correct_series(scheduler, cube_path, series, checks, opts, outdir, bar, summary["bad"])
            for s in series if scheduler is None else ():
                origin, forced = checks[s.number]
                results.append(_run_series(s, cube_part(cube, origin, s.files[0].shape), origin, forced, opts,
                                           outdir, bar, summary["bad"]))
    except BaseException as exc:  # a failure or an interrupt mid-run: say in summary.json what was written
        _summarise(summary, results)
        done = {r["number"] for r in results}
        summary["complete"] = False
        summary["error"] = f"{type(exc).__name__}: {exc}"
        summary["unfinished"] = [{"series": s.number, "written": _written_since(outdir, s, started)}
                                 for s in series if s.number not in done]
        try:
            _write_summary(outdir, summary)
        except OSError as write_error:  # a full disk: the run's own error is the one to raise
            log.error("correct stopped after %d of %d series (%s); summary.json could not be written either: %s",
                      len(done), len(series), exc or type(exc).__name__, write_error)
        else:
            log.error("correct stopped after %d of %d series (%s); %s lists the outputs written", len(done),
                      len(series), exc or type(exc).__name__, outdir / "summary.json")
        raise
    elapsed = time.perf_counter() - t0
    totals = _summarise(summary, results)
    summary.update({
        "complete": True,
        "backend": ", ".join(sorted({r["backend"] for r in results})) or None,
        "elapsed_s": round(elapsed, 3),
        "frames_per_s": round(total / elapsed, 3) if elapsed > 0 else None,
    })
    _write_summary(outdir, summary)
    log.info("corrected %d frames in %d series: %d low, %d high, %d vetoed", summary["frames"], len(series),
             totals.low, totals.high, totals.vetoed)
    return summary


def _check_series(s: Series, cube: RTNCube, force: bool, tolerance: float, origin_keys: Sequence[str]
                  ) -> tuple[tuple[int, int] | None, dict[Path, tuple[str, ...]]]:
    """What can refuse the frames of a series, before anything is written: their origin and the guards."""
    first = s.files[0]
    origin = frame_origin(first.header, first.shape, cube.shape, str(first.path), origin_keys)
    forced = {f.path: check_frame_header(f.header, cube, str(f.path), force, tolerance) for f in s.files}
    return origin, forced


def _check_length(s: Series, settings: EngineSettings) -> None:
    if settings.temporal and s.n_frames < settings.window + 1:
        raise SeriesError(f"series {s.number} ({s.files[0].path.name} .. {s.files[-1].path.name}): window "
                          f"{settings.window} needs a series of at least {settings.window + 1} frames, got "
                          f"{s.n_frames}")


def _write_summary(outdir: Path, summary: dict[str, Any]) -> None:
    """Write ``outdir/summary.json`` through a temporary name: complete or not at all."""
    path = outdir / "summary.json"
    tmp = path.with_name(f".{path.name}.{os.getpid()}.part")
    try:
        tmp.write_text(json.dumps(summary, indent=2))
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _written_since(outdir: Path, s: Series, started: float) -> list[str]:
    """The outputs of ``s``'s files in ``outdir`` written since ``started`` (a ``time.time()``)."""
    paths = (outdir / f.path.name for f in s.files)
    return [str(p) for p in paths if p.exists() and p.stat().st_mtime >= started]


def _summarise(summary: dict[str, Any], results: Sequence[dict[str, Any]]) -> FrameCounts:
    """Enter the finished series' frames, files and corrections in ``summary``; the corrections' total."""
    totals = FrameCounts()
    for r in results:
        totals = _add(totals, r["counts"])
    summary.update({
        "frames": sum(r["frames"] for r in results),
        "series": [{**{k: v for k, v in r.items() if k != "files"}, "counts": asdict(r["counts"])} for r in results],
        "files": [entry for r in results for entry in r["files"]],
        "corrections": asdict(totals),
    })
    return totals


def _run_series(s: Series, cube: RTNCube, origin: tuple[int, int] | None, forced: dict[Path, tuple[str, ...]],
                opts: _Options, outdir: Path, bar: tqdm, bad: list[dict[str, str]]) -> dict[str, Any]:
    corrector = SeriesCorrector(cube, opts.settings, opts.backend, opts.mode, opts.dq, opts.uncertainty)
    provenance = {"cube_file": opts.cube_file, "origin": origin, "series": s.number}
    counts = [FrameCounts() for _ in s.files]
    stacks: dict[int, _StackOutput] = {}

    def write(out: FrameProducts) -> None:
        k, _plane = out.tag
        f = s.files[k]
        counts[k] = _add(counts[k], out.counts)
        if not f.is_stack:
            write_output(outdir / f.path.name, f, out, counts[k], opts.settings, corrector.cube_id, opts.mode,
                         forced[f.path], **provenance)
            return
        if k not in stacks:
            cards = frame_cards(opts.settings, corrector.cube_id, counts[k], out.corrected, opts.mode,
                                "BUNIT" in f.header, forced=forced[f.path], **provenance)
            stacks[k] = _StackOutput(outdir, f, out.data.dtype, apply_cards(f.header.copy(), cards))
        stack = stacks[k]
        if stack.write(out):
            stack.finish(outdir / f.path.name, {"RTNNLO": counts[k].low, "RTNNHI": counts[k].high,
                                                "RTNNVETO": counts[k].vetoed,
                                                "RTNCORR": out.corrected and opts.mode == "correct"})
            del stacks[k]

    pushed = 0
    unread: set[int] = set()  # files passed over (skip_bad): no output
    try:
        for k, f in enumerate(s.files):
            if f.is_stack:
                with FrameSource(f.path) as src:
                    for i in range(src.n_frames):
                        for out in corrector.push(src.read(i), tag=(k, i)):
                            write(out)
                        pushed += 1
                        bar.update(1)
            else:
                try:
                    frame = read_image(f.path, f.hdu_index)
                except FrameError as exc:  # header and size were fine, the data are not
                    if not opts.skip_bad:
                        raise
                    bad.append({"file": str(f.path), "reason": str(exc)})
                    log.debug("skipped bad file: %s", exc)
                    unread.add(k)
                    continue
                for out in corrector.push(frame, tag=(k, 0)):
                    write(out)
                pushed += 1
                bar.update(1)
        for out in corrector.finish():
            write(out)
    finally:
        for stack in stacks.values():
            stack.discard()
    total = FrameCounts()
    for c in counts:
        total = _add(total, c)
    offset_path = None
    if opts.mode == "correct":
        offset_path = write_offset_map(s, corrector, total, opts.settings, opts.mode, provenance,
                                       outdir / CALIB_DIR)
    return {
        "number": s.number, "reason": s.reason, "frames": pushed, "counts": total,
        "backend": corrector.engine.backend.name,
        "first": s.files[0].path.name, "last": s.files[-1].path.name, "origin": origin,
        "bias_offset_map": str(offset_path) if offset_path else None,
        "files": [{"input": str(f.path), "output": str(outdir / f.path.name), "series": s.number,
                   "frames": f.n_frames, "corrections": asdict(c)}
                  for k, (f, c) in enumerate(zip(s.files, counts, strict=True)) if k not in unread],
    }


class _StackOutput:
    """A 3-D stack output written plane by plane: the frames into a hidden temporary file, each product into
    its own; when complete the products are appended to the frames' file as extensions (streamed, plane by
    plane) and the file renamed into place."""

    def __init__(self, outdir: Path, f: FrameFile, dtype: np.dtype, header: fits.Header) -> None:
        self._f = f
        self._tmp = outdir / f".{f.path.name}.{os.getpid()}.part"
        self._sink = FrameSink(self._tmp, f.shape, dtype, f.n_frames, header, stack=True)
        self._products: dict[str, tuple[FrameSink, Path]] = {}

    def write(self, out: FrameProducts) -> bool:
        """Add the next plane and its products; True once the stack is complete."""
        self._sink.write(out.data)
        for name, plane in (("DQ", out.dq), ("UNCERT", out.uncertainty), ("MASK", out.mask)):
            if plane is None:
                continue
            if name not in self._products:
                tmp = self._tmp.with_name(f"{self._tmp.name}.{name}")
                sink = FrameSink(tmp, self._f.shape, np.uint8 if name == "MASK" else plane.dtype, self._f.n_frames,
                                 stack=True)
                self._products[name] = (sink, tmp)
            self._products[name][0].write(plane.view(np.uint8) if name == "MASK" else plane)
        return self._sink.written == self._sink.n_frames

    def finish(self, path: Path, cards: dict[str, Any]) -> None:
        """Close, fill in ``cards``, append the products and rename to ``path``."""
        self._sink.close()
        self._sink.update_cards(cards)
        headers = {"DQ": fits.Header([(k, bit, label[:47]) for k, (bit, label) in DQ_BITS.items()]),
                   "UNCERT": fits.Header([("BUNIT", "adu"), ("UTYPE", "StdDevUncertainty")]),
                   "MASK": fits.Header([("COMMENT", "1: RTN jump found and left in place (masking mode)")])}
        for name, (sink, tmp) in self._products.items():
            sink.close()
            ext = FrameSink(self._tmp, self._f.shape, sink.dtype, self._f.n_frames, headers[name], stack=True,
                            extname=name)
            with FrameSource(tmp) as src:
                for i in range(src.n_frames):
                    ext.write(src.read(i))
            ext.close()
            tmp.unlink()
        os.replace(self._tmp, path)

    def discard(self) -> None:
        """Close and remove the temporary files of an unfinished stack."""
        self._sink.abort()
        for sink, _tmp in self._products.values():
            sink.abort()


def write_offset_map(s: Series, corrector: SeriesCorrector, counts: FrameCounts, settings: EngineSettings,
                     mode: Mode, provenance: dict[str, Any], calib: Path) -> Path:
    """``calib/series_NNN_bias_offset.fits``: the series' bias offset map (adu), beside the frames.

    ``counts`` are the series' corrections, ``provenance`` the keywords of :func:`rtn_header_cards`
    (``cube_file``, ``origin``, ``series``); ``calib`` is created if needed. Returns the file written.
    """
    calib.mkdir(exist_ok=True)
    hdu = fits.PrimaryHDU(corrector.bias_offset_map())
    hdr = hdu.header
    hdr["BUNIT"] = "adu"
    hdr["IMAGETYP"] = ("RTN BIAS OFFSET", "not a light frame")
    hdr["RTNFIRST"] = (s.files[0].path.name[-68:], "first frame of the series")
    hdr["RTNLAST"] = (s.files[-1].path.name[-68:], "last frame of the series")
    hdr["RTNNFRM"] = (s.n_frames, "frames in the series")
    for key, value, comment in rtn_header_cards(settings, corrector.cube_id, counts, True, mode=mode, **provenance):
        hdr[key] = (value, comment)
    hdr["COMMENT"] = "RTN bias offset map O = D_adu (n_lo - n_hi) / n_frames: add it to a plain-mean master bias"
    hdr["COMMENT"] = "before subtracting it in source apertures (docs/formats.md)"
    return write_atomic(fits.HDUList([hdu]), calib / f"series_{s.number:03d}_bias_offset.fits")

