"""The paper's data-volume trick (its section V.1): screen the first frames, keep only candidates' values.

``fit_bias_stack(..., prescreen=N)`` (``rtnstream fit --prescreen N``) and a compact bias stack
(:mod:`rtnstream.calibration.compact`, written by ``rtnstream bias-collect``) fit the same way:

1. **Screen** (:func:`screen_stack`, the first N frames, every pixel): the fit's passes 1 and 2 on those
   frames: per-pixel mean and standard deviation, the modified A^2 of the first ``min(ad_frames, N)``
   frames, and the candidates ``A^2 > a2_critical``, ``std > median(std)``, at least ``MIN_FRAMES``
   finite values.
2. **Keep** (:func:`collect_stack`): the candidates' values in every frame (the first N included), into a
   compact stack; nothing else is read from the frames after the first N.
3. **Fit** (:func:`fit_compact`): the candidates' mean and standard deviation from all frames (the same
   integer sums as the full fit), the three-level fit of each candidate on all frames and the two-trap
   refit (``fit_candidates``), then acceptance, ``lambda_max`` and the cube as in the full fit. Pixels that
   are not candidates keep the screen's mean bias and read noise (N frames instead of all).

With ``N >= ad_frames`` the Anderson-Darling statistic is the full fit's bit for bit (it uses the first
``ad_frames`` frames in both); the candidates differ from the full fit's only through the read-noise
rule, whose median and per-pixel standard deviation come from N frames instead of all (docs/fit.md,
"Prescreen", measures how many RTN pixels that moves).
"""

from __future__ import annotations

import logging
import os
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from rtnstream.calibration._anderson import anderson_darling_band
from rtnstream.calibration.acquisition import GainSource, check_frame_kinds, common_camera_record, header_gain
from rtnstream.calibration.compact import SCREEN_SETTINGS, CompactStack, CompactStackWriter, Screen, is_compact_stack
from rtnstream.calibration.fit import (
    _BAND_BYTES_MAX,
    MIN_FRAMES,
    BandPlan,
    FitResult,
    FitSettings,
    _assemble,
    _empty_fit,
    _fill_unusable,
    _frame_names,
    _non_finite_report,
    fill_non_finite,
    fit_candidates,
    moments_band,
)
from rtnstream.calibration.stacks import FitsStack
from rtnstream.kernels.lut import get_table

__all__ = ["PAGE_BYTES", "BiasCollector", "applies", "screen_stack", "collect_stack", "fit_compact", "fit_prescreened",
           "read_volume"]

log = logging.getLogger(__name__)

_DEFAULTS = FitSettings()
#: Disk page size assumed in the read-volume figures, bytes.
PAGE_BYTES = 4096


def applies(files: Any, prescreen: int | None) -> bool:
    """Whether a fit of ``files`` goes through this module: ``prescreen`` given, or a compact stack."""
    if prescreen is not None or isinstance(files, CompactStack):
        return True
    # a sequence of one compact stack's path (an iterator is left unconsumed for the full fit)
    return isinstance(files, Sequence) and not isinstance(files, str) and len(files) == 1 \
        and is_compact_stack(files[0])


def _screen_settings(settings: FitSettings) -> dict[str, Any]:
    return {name: getattr(settings, name) for name in SCREEN_SETTINGS}


def _band_bytes(memory_limit_bytes: int) -> tuple[int, int]:
    """Band and work budgets, bytes: half and a quarter of the limit (bands at most 256 MiB), as the fit."""
    return min(int(memory_limit_bytes) // 2, _BAND_BYTES_MAX), int(memory_limit_bytes) // 4


def screen_stack(stack: FitsStack, settings: FitSettings = _DEFAULTS, memory_limit_bytes: int = 1024**3,
                 progress: bool = False) -> Screen:
    """Screen every frame of ``stack`` (the first frames of a run) for candidate RTN pixels.

    Parameters
    ----------
    stack : FitsStack
        The frames to screen, ``n >= MIN_FRAMES``.
    settings : FitSettings
        Only the :data:`~rtnstream.calibration.compact.SCREEN_SETTINGS` fields matter.
    memory_limit_bytes : int
        Memory of a band and its work arrays, bytes.
    progress : bool
        A tqdm bar (on stderr).

    Returns
    -------
    Screen

    Raises
    ------
    ValueError
        Fewer than ``MIN_FRAMES`` frames, or a memory limit that cannot hold one row of them.
    """
    n = stack.n_frames
    if n < MIN_FRAMES:
        raise ValueError(f"prescreen: the screen needs at least {MIN_FRAMES} frames, got {n}")
    ny, nx = stack.shape
    band_bytes, work_bytes = _band_bytes(memory_limit_bytes)
    one_row = n * nx * stack.dtype.itemsize
    if one_row > band_bytes:
        raise ValueError(f"memory_limit_bytes={memory_limit_bytes} is too small for the screen: give at least "
                         f"{2 * one_row} bytes")
    n_ad = min(settings.ad_frames, n)
    mean, std = np.empty((ny, nx)), np.empty((ny, nx))
    a2 = np.empty((ny, nx), dtype=np.float32)  # as the fit keeps it; tested at float64, band by band
    non_normal = np.empty((ny, nx), dtype=bool)
    n_valid = np.empty((ny, nx), dtype=np.int64)
    bad = np.zeros(n, dtype=np.int64)
    for band in stack.iter_bands(band_bytes, dtype=None, progress=progress, desc=f"screen {n} frames"):
        y0, y1 = band.y0, band.y1
        mean[y0:y1], std[y0:y1], n_valid[y0:y1], b = moments_band(band.data, work_bytes)
        bad += b
        ad = fill_non_finite(band.data[:n_ad], inplace=True)  # the band is ours: no copy
        res = anderson_darling_band(ad, y0, seed=settings.dither_seed, clip_sigma=settings.clip_sigma,
                                    clip_iterations=settings.clip_iterations, max_bytes=work_bytes)
        a2[y0:y1], non_normal[y0:y1] = res, res > settings.a2_critical
    candidate = non_normal & (std > np.nanmedian(std)) & (n_valid >= MIN_FRAMES)
    return Screen(mean_adu=mean, std_adu=std, a2=a2, n_valid=n_valid, bad_per_frame=bad,
                  index=np.flatnonzero(candidate).astype(np.int64), settings=_screen_settings(settings))


class BiasCollector:
    """Build a compact stack while a bias run arrives: stacks (files) added in time order.

    The first ``prescreen`` frames are held as their files (on disk, not in memory); once that many have
    arrived they are screened (:func:`screen_stack`) and from then on only the candidates' values of each
    frame are kept (:class:`~rtnstream.calibration.compact.CompactStackWriter`).

    Parameters
    ----------
    output : path-like
        The compact stack to write.
    prescreen : int
        Frames screened, ``>= MIN_FRAMES``.
    settings, memory_limit_bytes, progress
        As :func:`screen_stack`.
    overwrite : bool
        Replace an existing ``output``.
    """

    def __init__(self, output: str | os.PathLike, prescreen: int, settings: FitSettings = _DEFAULTS,
                 memory_limit_bytes: int = 1024**3, progress: bool = False, overwrite: bool = False):
        if int(prescreen) < MIN_FRAMES:
            raise ValueError(f"prescreen must be at least {MIN_FRAMES} frames, got {prescreen!r}")
        self.output = Path(output)
        if self.output.exists() and not overwrite:
            raise FileExistsError(f"{self.output} exists; give --overwrite to replace it")
        self.prescreen = int(prescreen)
        self._settings, self._memory, self._progress, self._overwrite = settings, memory_limit_bytes, progress, \
            overwrite
        self._waiting: list[FitsStack] = []
        self.writer: CompactStackWriter | None = None

    @property
    def n_frames(self) -> int:
        """Frames added so far."""
        return (self.writer.n_frames if self.writer is not None
                else sum(stack.n_frames for stack in self._waiting))

    def check(self, stack: FitsStack) -> None:
        """Raise ``ValueError`` (naming no file: the caller knows which) when ``stack`` does not fit the run."""
        first = self.writer.screen.shape if self.writer is not None else (
            self._waiting[0].shape if self._waiting else None)
        if first is not None and stack.shape != first:
            raise ValueError(f"frame shape {stack.shape} differs from the run's {first}")
        dtype = self.writer.dtype if self.writer is not None else (
            self._waiting[0].dtype if self._waiting else None)
        if dtype is not None and stack.dtype != dtype:
            raise ValueError(f"pixel type {stack.dtype} differs from the run's {dtype}")

    def add(self, stack: FitsStack) -> None:
        """Add the next frames of the run (a file's frames, or any stack), in time order.

        On an exception the collector is as before the call: the frames of ``stack`` that were read are
        forgotten, the frames kept before stay kept (the spool is never discarded here).

        Raises
        ------
        ValueError
            ``stack`` does not fit the run (:meth:`check`).
        """
        self.check(stack)
        if self.writer is not None:
            self._keep(stack)
            return
        self._waiting.append(stack)
        if self.n_frames < self.prescreen:
            return
        run = self._waiting[0] if len(self._waiting) == 1 else FitsStack([i for s in self._waiting for i in s.files])
        try:
            screen = screen_stack(run.subset(range(self.prescreen)), self._settings, self._memory, self._progress)
            log.info("prescreen: %d candidates (%.2f %% of pixels) in the first %d frames", screen.index.size,
                     100 * screen.index.size / max(1, screen.mean_adu.size), self.prescreen)
            self.writer = CompactStackWriter(self.output, screen, run.dtype, overwrite=self._overwrite)
            self._keep(run)
        except BaseException:
            self.discard()
            self._waiting.pop()
            raise
        self._waiting = []

    def _keep(self, stack: FitsStack) -> None:
        assert self.writer is not None
        names = _frame_names(stack)
        before = self.writer.n_frames
        try:
            for i, values in enumerate(stack.iter_values(self.writer.screen.index, progress=self._progress,
                                                         desc="keep candidates")):
                self.writer.add_values(values, stack.headers[i], names[i])
        except BaseException:
            self.writer.rollback(before)
            raise

    def discard(self) -> None:
        """Stop: remove the spool (``<output>.part``); nothing is written."""
        if self.writer is not None:
            self.writer.discard()
            self.writer = None

    def close(self) -> CompactStack:
        """Write the compact stack and return it read back.

        Raises
        ------
        ValueError
            Fewer frames arrived than the screen needs.
        """
        if self.writer is None:
            raise ValueError(f"prescreen: {self.n_frames} frames arrived, fewer than the {self.prescreen} to screen")
        return CompactStack(self.writer.close())


def collect_stack(stack: FitsStack, prescreen: int, output: str | os.PathLike, settings: FitSettings = _DEFAULTS,
                  memory_limit_bytes: int = 1024**3, progress: bool = False, overwrite: bool = False
                  ) -> CompactStack:
    """Screen the first ``prescreen`` frames of ``stack``, then keep every frame's candidate values.

    Parameters
    ----------
    stack : FitsStack
        The whole run, ``n_frames > prescreen``.
    prescreen : int
        Frames screened, ``MIN_FRAMES <= prescreen < n_frames``.
    output : path-like
        The compact stack to write.
    settings, memory_limit_bytes, progress, overwrite
        As :class:`BiasCollector`.

    Returns
    -------
    CompactStack
        The stack written.
    """
    _check_prescreen(prescreen, stack.n_frames)
    collector = BiasCollector(output, prescreen, settings, memory_limit_bytes, progress, overwrite)
    try:
        collector.add(stack)
    except BaseException:
        collector.discard()
        raise
    return collector.close()


def _check_prescreen(prescreen: int, n_frames: int) -> None:
    if not MIN_FRAMES <= int(prescreen) < n_frames:
        raise ValueError(f"prescreen must be in [{MIN_FRAMES}, {n_frames}) (fewer than the {n_frames} frames "
                         f"fitted), got {prescreen!r}")


def read_volume(n_frames: int, prescreen: int, shape: tuple[int, int], n_candidates: int, itemsize: int,
                ad_frames: int = 400, index: np.ndarray | None = None) -> dict[str, int]:
    """Bytes of pixel data read by a full fit and by a prescreened one (headers left out).

    The full fit reads every frame twice (moments, fit) and the first ``ad_frames`` once more; the
    prescreened fit reads the first ``prescreen`` frames once, then the candidates' values of every frame.
    ``values_pages`` counts the ``PAGE_BYTES`` disk pages those values lie in (from ``index``), what an
    uncompressed FITS file really costs to read them.

    Returns
    -------
    dict of str to int, bytes
        ``full_fit``, ``screen``, ``values``, ``values_pages`` (when ``index`` is given), ``prescreen_fit``
        (screen + values) and ``compact_stack`` (values of all frames plus the screen's maps).
    """
    pixels = shape[0] * shape[1]
    out = {"full_fit": (2 * n_frames + min(ad_frames, n_frames)) * pixels * itemsize,
           "screen": prescreen * pixels * itemsize,
           "values": n_frames * n_candidates * itemsize}
    if index is not None:
        out["values_pages"] = n_frames * int(np.unique(np.asarray(index) * itemsize // PAGE_BYTES).size) * PAGE_BYTES
    out["prescreen_fit"] = out["screen"] + out["values"]
    out["compact_stack"] = out["values"] + 32 * pixels + 8 * n_candidates
    return out


@dataclass(frozen=True)
class _Frames:
    """What the cube's assembly reads of a stack: shape, frame count, headers."""

    shape: tuple[int, int]
    n_frames: int
    headers: Sequence[Any]

    def header_values(self, key: str) -> list[object | None]:
        return [h.get(key) for h in self.headers]


def fit_compact(
    compact: CompactStack, gain_e_per_adu: float | None = None, *, n_frames: int | None = None,
    settings: FitSettings = _DEFAULTS, memory_limit_bytes: int = 1024**3, progress: bool = False,
    allowed_imagetyp: Sequence[str] = ("bias",),
) -> FitResult:
    """Fit the RTN parameters of a compact stack's candidates (step 3 of the module docstring).

    Parameters
    ----------
    compact : CompactStack
    gain_e_per_adu : float, optional
        Conversion gain, e-/ADU; default from the frames' headers.
    n_frames : int, optional
        Use only the first ``n_frames`` frames (at least the screened ones).
    settings : FitSettings
        Its :data:`~rtnstream.calibration.compact.SCREEN_SETTINGS` must be the screen's.
    memory_limit_bytes, progress, allowed_imagetyp
        As :func:`rtnstream.calibration.fit.fit_bias_stack`.

    Returns
    -------
    FitResult
        ``report["prescreen"]`` adds the screened frames, the candidates and the bytes read.

    Raises
    ------
    ValueError
        Bad gain, frame count or memory limit, settings that differ from the screen's, or frames of a type
        not allowed (the message names the parameter).
    """
    screen = compact.screen
    n = compact.n_frames if n_frames is None else int(n_frames)
    if not screen.n_frames <= n <= compact.n_frames:
        raise ValueError(f"n_frames must be in [{screen.n_frames}, {compact.n_frames}] (the screened frames .. "
                         f"the frames kept), got {n_frames!r}")
    if memory_limit_bytes < 1:
        raise ValueError(f"memory_limit_bytes must be positive, got {memory_limit_bytes!r}")
    wanted = _screen_settings(settings)
    if wanted != screen.settings:
        diff = {k: (screen.settings[k], wanted[k]) for k in wanted if wanted[k] != screen.settings[k]}
        raise ValueError(f"settings: the candidates were screened with other settings (screen, fit): {diff}")
    frames = _Frames(compact.shape, n, compact.headers[:n])
    names = compact.names[:n]
    frame_kinds = check_frame_kinds(frames.headers, names, allowed_imagetyp)
    camera = common_camera_record(frames.headers, names)
    gain = (header_gain(frames.headers, names) if gain_e_per_adu is None
            else GainSource(gain_e_per_adu, "option", f"given: {gain_e_per_adu!r} e-/ADU"))
    g = float(gain.gain_e_per_adu)
    if not (np.isfinite(g) and g > 0):
        raise ValueError(f"gain_e_per_adu must be a finite positive number (e-/ADU), got {gain_e_per_adu!r}")
    if n < 1000:
        log.warning("fitting RTN from %d bias frames; 1000 or more are recommended", n)
    index, k = screen.index, screen.index.size
    band_bytes, work_bytes = _band_bytes(memory_limit_bytes)
    group = max(1, band_bytes // (n * compact.dtype.itemsize))
    mean, std = screen.mean_adu.copy(), screen.std_adu.copy()
    n_valid = screen.n_valid + (n - screen.n_frames)  # frames after the screen: not read, counted finite
    bad_per_frame = np.zeros(n, dtype=np.int64)
    bad_per_frame[: screen.n_frames] = screen.bad_per_frame
    parts: list[dict[str, np.ndarray]] = []
    t0 = time.perf_counter()
    for c0 in tqdm(range(0, k, group), desc="fit candidates", unit="group", disable=not progress):
        c1 = min(c0 + group, k)
        values = compact.values(c0, c1, n)[:, None, :]  # (n, 1, candidates)
        m, s, v, b = moments_band(values, work_bytes)
        mean.flat[index[c0:c1]], std.flat[index[c0:c1]], n_valid.flat[index[c0:c1]] = m[0], s[0], v[0]
        bad_per_frame[screen.n_frames:] += b[screen.n_frames:]
        parts.append(fit_candidates(values, np.ones((1, c1 - c0), dtype=bool), s, g, settings, work_bytes))
    fit = {key: np.concatenate([p[key] for p in parts]) for key in parts[0]} if parts else _empty_fit()
    timing = {"pass3_fit_s": time.perf_counter() - t0}
    candidate = np.zeros(screen.mean_adu.size, dtype=bool)
    candidate[index] = True
    candidate = candidate.reshape(screen.shape)
    usable = n_valid >= MIN_FRAMES
    inputs = {"gain": {"e_per_adu": g, "source": gain.source, "detail": gain.detail}, "frame_kinds": frame_kinds,
              "camera": camera, "non_finite": _non_finite_report(frames, names, n_valid, bad_per_frame)}
    dq_bad = _fill_unusable(mean, std, usable)
    plan = BandPlan(moments_rows=0, anderson_rows=0, fit_rows=0, band_bytes=band_bytes, work_bytes=work_bytes)
    rn_median = float(np.nanmedian(screen.std_adu * g))
    result = _assemble(frames, g, settings, get_table(settings.alpha), plan, mean, std, screen.a2,
                       screen.a2 > settings.a2_critical, candidate, rn_median, fit, timing, memory_limit_bytes,
                       1, inputs, dq_bad)
    result.report["n_frames_anderson"] = min(settings.ad_frames, screen.n_frames)
    result.report["prescreen"] = {
        "frames": screen.n_frames, "candidates": int(k), "compact_stack": str(compact.path),
        "compact_stack_bytes": compact.nbytes(),
        "bytes": read_volume(n, screen.n_frames, screen.shape, k, compact.dtype.itemsize, settings.ad_frames,
                             index),
    }
    return result


def fit_prescreened(
    files: Sequence[str | os.PathLike] | FitsStack | CompactStack, gain_e_per_adu: float | None = None,
    prescreen: int | None = None, *, n_frames: int | None = None, settings: FitSettings = _DEFAULTS,
    memory_limit_bytes: int = 1024**3, workers: int = 1, scheduler: str | None = None, progress: bool = False,
    allowed_imagetyp: Sequence[str] = ("bias",),
) -> FitResult:
    """``fit_bias_stack`` with a prescreen or on a compact stack (the module docstring's three steps).

    A stack of FITS files is screened on its first ``prescreen`` frames and its candidates' values are
    kept in a temporary compact stack (under ``TMPDIR``, removed at the end), which is then fitted: the
    cube is the one ``rtnstream bias-collect --screen prescreen`` then ``rtnstream fit`` give.

    Parameters
    ----------
    files : sequence of path, FitsStack or CompactStack
        Bias FITS files, or a compact stack (a path to one, or read).
    prescreen : int, optional
        Frames screened; required for FITS files, must be left out (or equal the screen's) for a compact
        stack.
    workers, scheduler
        Must be 1 and None: a prescreened fit runs in one process.
    gain_e_per_adu, n_frames, settings, memory_limit_bytes, progress, allowed_imagetyp
        As :func:`rtnstream.calibration.fit.fit_bias_stack`.

    Returns
    -------
    FitResult
    """
    if workers != 1 or scheduler is not None:
        raise ValueError(f"prescreen: a prescreened or compact-stack fit runs in one process; give no workers "
                         f"or scheduler (workers={workers!r}, scheduler={scheduler!r})")
    if not isinstance(files, CompactStack | FitsStack):
        paths = list(files)
        files = CompactStack(paths[0]) if len(paths) == 1 and is_compact_stack(paths[0]) else FitsStack(paths)
    common = {"n_frames": n_frames, "settings": settings, "memory_limit_bytes": memory_limit_bytes,
              "progress": progress, "allowed_imagetyp": allowed_imagetyp}
    if isinstance(files, CompactStack):
        if prescreen is not None and int(prescreen) != files.screen.n_frames:
            raise ValueError(f"prescreen: the compact stack {files.path} was screened on "
                             f"{files.screen.n_frames} frames, not {prescreen}")
        return fit_compact(files, gain_e_per_adu, **common)
    stack = files
    if n_frames is not None:
        if not 1 <= int(n_frames) <= stack.n_frames:
            raise ValueError(f"n_frames must be in [1, {stack.n_frames}] (frames in the stack), got {n_frames!r}")
        stack = stack.subset(range(int(n_frames)))
    _check_prescreen(prescreen, stack.n_frames)
    with tempfile.TemporaryDirectory(prefix="rtnstream-prescreen-") as tmp:
        t0 = time.perf_counter()
        compact = collect_stack(stack, int(prescreen), Path(tmp) / "compact.fits", settings, memory_limit_bytes,
                                progress)
        collect_s = time.perf_counter() - t0
        result = fit_compact(compact, gain_e_per_adu, **common)
    result.report["prescreen"]["compact_stack"] = None  # temporary, removed
    result.report["timing_s"] = {"prescreen_collect_s": collect_s, **result.report["timing_s"]}
    return result
