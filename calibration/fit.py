"""Fit RTN parameter cubes from bias stacks (ALGORITHM.md section 6): three passes over row bands.

1. **Moments** (all N frames): per-pixel mean (adu) and standard deviation, from exact integer sums
   (float64 sums for float data) of values shifted by the first frame; ``RN = std g`` (electron).
2. **Candidates** (first ``min(400, N)`` frames): clipped, dithered Anderson-Darling statistic
   (:mod:`rtnstream.calibration._anderson`); a candidate has ``A^2 > 1.092`` and ``RN > median(RN)``.
3. **Fit** (all N frames, candidates only): the three-level model fitted to all candidates of a band at
   once by EM on their distinct values, standard errors from the observed information
   (:mod:`rtnstream.calibration._em`), then the acceptance rules and ``lambda_max`` from the threshold table;
   in the same band task (``FitSettings.two_trap``, on by default), the candidates the three-level model
   rejects or fits badly are refitted with two independent traps and kept as two-trap pixels where BIC and
   the rules prefer them (:func:`rtnstream.calibration.two_trap.refit_band`; ALGORITHM.md section 9).

Each pass maps a pure tile function (``moments_band``, ``anderson_darling_band``, ``fit_band``) over row
bands; a band is read by the task that processes it, so the same functions are mapped on a process pool
(``workers``) or on a dask.distributed cluster (``scheduler``, :mod:`rtnstream.calibration.distributed`),
with the same result. Memory: the whole-sensor maps (about ``MAP_BYTES_PER_PIXEL`` bytes a pixel; the cube
holds its RTN pixels sparsely) and the bands and work arrays of the passes, sized from what the maps leave
and split between the workers, stay under ``memory_limit_bytes``.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import datetime
import logging
import multiprocessing
import os
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
from tqdm import tqdm

from rtnstream import __version__
from rtnstream.calibration._anderson import A2_CRITICAL_1PC, anderson_darling_band
from rtnstream.calibration._em import PARAM_NAMES, compress_values, fit_three_level
from rtnstream.calibration.acquisition import GainSource, check_frame_kinds, common_camera_record, header_gain
from rtnstream.calibration.stacks import FitsStack
from rtnstream.kernels.cube import DQ_ANOMALOUS_MEAN, DQ_ANOMALOUS_STD, DQ_RTN, DQ_TWO_TRAP, RTNCube, RTNPixels
from rtnstream.kernels.lut import ThresholdTable, get_table

__all__ = [
    "FitSettings",
    "FitResult",
    "BandPlan",
    "REJECTION_RULES",
    "MAP_BYTES_PER_PIXEL",
    "MIN_FRAMES",
    "plan_bands",
    "moments_band",
    "fit_band",
    "fit_candidates",
    "fill_non_finite",
    "acceptance",
    "predicted_read_noise",
    "fit_bias_stack",
]

log = logging.getLogger(__name__)

#: Fewest bias frames a fit accepts (ALGORITHM.md recommends >= 1000).
MIN_FRAMES = 50
#: Bytes per pixel of the whole-sensor maps kept during a fit, at their peak (the cube's assembly): mean
#: (float32), std (float64), A^2 (float32), masks, the cube's READNOISE and DQ, the predicted read noise and
#: a median's copy of it (34 bytes), and the candidates' fit results (120 bytes a candidate, some 5 % of the
#: pixels; bench/memory_fit.py measures the peak of a full-sensor fit).
MAP_BYTES_PER_PIXEL = 48
#: Acceptance rules, in the order they are checked; a candidate is rejected by every rule it fails.
REJECTION_RULES = (
    "not_converged",  # EM did not converge, or the observed information is singular
    "large_stderr",  # a relative standard error above max_rel_stderr (side fractions < 0.03 exempt)
    "side_above_centre",  # b_lo > a or b_hi > a
    "frac_c_above_max",  # a > 0.95: jumps too rare to be RTN rather than outliers
    "delta_below_min",  # Delta < 3 sigma: not correctable
    "sigma_outside_table",  # sigma outside the threshold table: no lambda_max
)
_FIT_FIELDS = ("mu_adu", "delta_adu", "sigma_adu", "frac_c", "frac_lo", "frac_hi", "converged", "n_iter",
               "n_used")
# the cube's columns of a fitted pixel (trap 1 of a two-trap pixel), and the second trap's (0 at one-trap pixels)
_RTN_COLUMNS = ("mu_adu", "delta_e", "sigma_e", "frac_c", "frac_lo", "frac_hi", "lammax_e")
_SECOND_TRAP_COLUMNS = ("delta2_e", "frac2_c", "frac2_lo", "frac2_hi", "lammax2_e")
_FIT_WORK_BYTES_PER_VALUE = 64  # compress + EM work arrays per candidate value, bytes
_MOMENT_WORK_BYTES_PER_VALUE = 24  # int64 shifted values and their squares
# Largest work group of a tile function: bigger groups only add cache misses (measured, bench/fit.py).
_BAND_BYTES_MAX = 256 * 1024**2
_MOMENT_GROUP_BYTES = 16 * 1024**2
_FIT_GROUP_BYTES = 64 * 1024**2


@dataclass(frozen=True)
class FitSettings:
    """Parameters of an RTN fit (defaults: ALGORITHM.md section 6).

    Attributes
    ----------
    alpha : float in (0, 0.5)
        Significance of the jump test; selects the threshold table used for ``lambda_max``.
    ad_frames : int
        Frames (the first ones) used for the Anderson-Darling candidate test.
    a2_critical : float
        Candidate threshold on the modified A^2 (1.092: 1 % level).
    clip_sigma : float
        Clipping threshold of the candidate test, standard deviations.
    clip_iterations : int
        Most clipping iterations of the candidate test.
    dither_seed : int
        Seed of the candidate test's dither.
    max_rel_stderr : float
        Largest relative standard error of an accepted parameter.
    one_sided_frac : float
        Side fractions below this are exempt from ``max_rel_stderr`` (one-sided RTN).
    max_frac_c : float
        Largest central fraction ``a`` of an accepted pixel.
    min_delta_over_sigma : float
        Smallest ``Delta / sigma`` of an accepted pixel.
    max_iter : int
        Most EM iterations.
    tol : float
        EM convergence tolerance (see :func:`rtnstream.calibration._em.fit_three_level`).
    two_trap : bool
        Refit the candidates the three-level model rejects or fits badly with two traps
        (:func:`rtnstream.calibration.two_trap.refit_band`); False: one-trap pixels only.
    """

    alpha: float = 0.003
    ad_frames: int = 400
    a2_critical: float = A2_CRITICAL_1PC
    clip_sigma: float = 5.0
    clip_iterations: int = 3
    dither_seed: int = 0
    max_rel_stderr: float = 1.0 / 3.0
    one_sided_frac: float = 0.03
    max_frac_c: float = 0.95
    min_delta_over_sigma: float = 3.0
    max_iter: int = 400
    tol: float = 1e-6
    two_trap: bool = True

    def __post_init__(self) -> None:
        if not 0.0 < self.alpha < 0.5:
            raise ValueError(f"alpha must be in (0, 0.5), got {self.alpha!r}")
        if self.ad_frames < 8:
            raise ValueError(f"ad_frames must be >= 8, got {self.ad_frames!r}")
        for name in ("a2_critical", "clip_sigma", "max_rel_stderr", "min_delta_over_sigma", "tol"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)!r}")
        if not 0.0 < self.max_frac_c <= 1.0:
            raise ValueError(f"max_frac_c must be in (0, 1], got {self.max_frac_c!r}")
        if self.max_iter < 1 or self.clip_iterations < 0:
            raise ValueError("max_iter must be >= 1 and clip_iterations >= 0")
        if not isinstance(self.two_trap, bool):
            raise TypeError(f"two_trap must be a bool, got {self.two_trap!r}")


@dataclass(frozen=True)
class BandPlan:
    """Rows per band of each pass and the memory they were sized for.

    Attributes
    ----------
    moments_rows, anderson_rows, fit_rows : int
        Rows per band of passes 1, 2, 3.
    band_bytes : int
        Budget of one band's raw pixels (per worker), bytes.
    work_bytes : int
        Budget of the work arrays of one band (per worker), bytes.
    """

    moments_rows: int
    anderson_rows: int
    fit_rows: int
    band_bytes: int
    work_bytes: int


@dataclass
class FitResult:
    """Everything a fit produced.

    Attributes
    ----------
    cube : RTNCube
        The RTN calibration cube (accepted pixels only carry RTN parameters).
    report : dict
        JSON-ready summary: counts, rejections by rule, read noise before and predicted after, timing.
    maps : dict of str to numpy.ndarray
        ``(ny, nx)`` maps: ``mean_adu``, ``std_adu``, ``read_noise_e``, ``a2`` (modified A^2),
        ``candidate`` and ``accepted`` (bool).
    candidates : dict of str to numpy.ndarray
        One entry per candidate, shape (n_candidates,): ``index`` (flat pixel index), ``mu_adu``,
        ``delta_e``, ``sigma_e``, ``frac_c``, ``frac_lo``, ``frac_hi``, ``lammax_e`` (the cube's values:
        trap 1 of a two-trap pixel), the second trap's ``delta2_e``, ``frac2_c``, ``frac2_lo``, ``frac2_hi``,
        ``lammax2_e`` (0 unless ``two_trap``), ``rel_stderr`` (n_candidates, 6; the three-level fit's),
        ``n_iter`` (three-level), one bool array per rule of :data:`REJECTION_RULES` (the three-level
        rules), ``two_trap`` (bool: a two-trap pixel) and ``accepted`` (bool: in the cube, the three-level
        rules passed or a two-trap pixel).
    """

    cube: RTNCube
    report: dict
    maps: dict[str, np.ndarray] = field(default_factory=dict)
    candidates: dict[str, np.ndarray] = field(default_factory=dict)


# --------------------------------------------------------------------------------------------------
# Tile functions: pure, one row band in, per-pixel results out
# --------------------------------------------------------------------------------------------------


def moments_band(data: np.ndarray, max_bytes: int = 64 * 1024**2
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Per-pixel mean and standard deviation (ddof = 1) of a band, over each pixel's finite values.

    Integer data are summed exactly in int64 after subtracting the first frame (so the sum of squares
    cannot overflow for any realistic stack and the variance suffers no cancellation); float data the
    same way in float64, leaving out non-finite values (NaN, infinity).

    Parameters
    ----------
    data : numpy.ndarray, shape (n_frames, n_rows, n_cols), adu
        n_frames >= 2.
    max_bytes : int
        Working memory; frames are summed in groups that fit.

    Returns
    -------
    mean_adu, std_adu : numpy.ndarray, shape (n_rows, n_cols), float64, adu
        NaN where a pixel has fewer than 2 finite values.
    n_valid : numpy.ndarray, shape (n_rows, n_cols), int64
        Finite values of each pixel (n_frames for integer data).
    bad_per_frame : numpy.ndarray, shape (n_frames,), int64
        Non-finite values in each frame of the band.
    """
    if data.ndim != 3 or data.shape[0] < 2:
        raise ValueError(f"data must have shape (n_frames >= 2, n_rows, n_cols), got {data.shape}")
    n = data.shape[0]
    integer = np.issubdtype(data.dtype, np.integer)
    acc = np.int64 if integer else np.float64
    bad_per_frame = np.zeros(n, dtype=np.int64)
    if not integer:  # frame by frame: no band-sized temporary
        bad_per_frame[:] = [frame.size - np.count_nonzero(np.isfinite(frame)) for frame in data]
    if not bad_per_frame.any():
        ref = data[0].astype(acc)
        n_valid = np.full(ref.shape, n, dtype=np.int64)
    else:
        first = data[0].astype(np.float64)
        ref = np.where(np.isfinite(first), first, 0.0)  # float64 sums: a shift by 0 only costs precision
        n_valid = np.zeros(ref.shape, dtype=np.int64)
    s1 = np.zeros(ref.shape, dtype=acc)
    s2 = np.zeros(ref.shape, dtype=acc)
    budget = min(int(max_bytes), _MOMENT_GROUP_BYTES)
    group = max(1, budget // (_MOMENT_WORK_BYTES_PER_VALUE * max(1, ref.size)))
    start = 1 if not bad_per_frame.any() else 0  # the first frame adds 0 when it is the shift
    for f0 in range(start, n, group):
        d = data[f0 : f0 + group].astype(acc)
        d -= ref
        if bad_per_frame.any():
            finite = np.isfinite(d)
            n_valid += finite.sum(axis=0)
            d[~finite] = 0.0
        s1 += d.sum(axis=0)
        d *= d
        s2 += d.sum(axis=0)
    s1f = s1.astype(np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        mean = np.where(n_valid > 0, ref + s1f / n_valid, np.nan)
        var = np.where(n_valid > 1, (s2.astype(np.float64) - s1f * s1f / n_valid) / (n_valid - 1), np.nan)
    return mean, np.sqrt(np.maximum(var, 0.0)), n_valid, bad_per_frame


def fit_band(
    data: np.ndarray, mask: np.ndarray, std_adu: np.ndarray, settings: FitSettings = FitSettings(),
    max_bytes: int = 64 * 1024**2,
) -> dict[str, np.ndarray]:
    """Fit the three-level model to the masked pixels of a band.

    Parameters
    ----------
    data : numpy.ndarray, shape (n_frames, n_rows, n_cols), adu
    mask : numpy.ndarray, shape (n_rows, n_cols), bool
        Pixels to fit (the candidates).
    std_adu : numpy.ndarray, shape (n_rows, n_cols), float64, adu
        Standard deviation of each pixel (pass 1); sets the bin width of float data that are not whole
        numbers (``min(1, std/16)`` adu; whole numbers are not binned).
    settings : FitSettings
    max_bytes : int
        Working memory; candidates are fitted in groups that fit.

    Returns
    -------
    dict of str to numpy.ndarray, each shape (n_masked,) in row-major order of ``mask``
        ``mu_adu``, ``delta_adu``, ``sigma_adu`` (adu), ``frac_c``, ``frac_lo``, ``frac_hi``,
        ``rel_stderr`` (n_masked, 6; order ``mu, delta, sigma, frac_c, frac_lo, frac_hi``, ``mu``'s
        relative to its absolute level), ``converged`` (bool), ``n_iter``, ``n_used``.
    """
    if mask.shape != data.shape[1:] or std_adu.shape != mask.shape:
        raise ValueError(f"mask {mask.shape} and std_adu {std_adu.shape} must both match the band's "
                         f"{data.shape[1:]}")
    rows, cols = np.nonzero(mask)
    n = data.shape[0]
    integer = np.issubdtype(data.dtype, np.integer)
    group = max(1, min(int(max_bytes), _FIT_GROUP_BYTES) // (_FIT_WORK_BYTES_PER_VALUE * n))
    parts: dict[str, list[np.ndarray]] = {k: [] for k in (*_FIT_FIELDS, "rel_stderr")}
    for p0 in range(0, rows.size, group):
        r, c = rows[p0 : p0 + group], cols[p0 : p0 + group]
        values = data[:, r, c].T
        finite = True if integer else np.isfinite(values)
        # float frames holding whole numbers (a converted integer stack) are integer data: binning them to
        # a finer, incommensurate grid would move every value by up to half a bin
        whole = integer or bool(np.all((values == np.rint(values)) | ~finite))
        if whole:  # width 1 on whole numbers is lossless too, and leaves the non-finite values out
            width = None if np.all(finite) else 1.0
        else:
            width = np.minimum(1.0, std_adu[r, c] / 16.0)
        y, counts, origin, used_width = compress_values(values, width)
        fit = fit_three_level(y, counts, used_width, max_iter=settings.max_iter, tol=settings.tol)
        mu = fit.mu + origin
        rel = fit.relative_stderr()
        with np.errstate(divide="ignore", invalid="ignore"):
            rel[:, 0] = fit.stderr[:, 0] / np.abs(mu)
        got = {"mu_adu": mu, "delta_adu": fit.delta, "sigma_adu": fit.sigma, "frac_c": fit.frac_c,
               "frac_lo": fit.frac_lo, "frac_hi": fit.frac_hi, "converged": fit.converged,
               "n_iter": fit.n_iter, "n_used": fit.n_used, "rel_stderr": np.nan_to_num(rel, nan=np.inf)}
        for k, v in got.items():
            parts[k].append(v)
    if rows.size == 0:
        return _empty_fit()
    return {k: np.concatenate(v) for k, v in parts.items()}


def _empty_fit() -> dict[str, np.ndarray]:
    empty = {k: np.zeros(0) for k in _FIT_FIELDS}
    empty["converged"] = np.zeros(0, dtype=bool)
    empty["rel_stderr"] = np.zeros((0, len(PARAM_NAMES)))
    return empty


def acceptance(fit: dict[str, np.ndarray], gain_e_per_adu: float, settings: FitSettings = FitSettings(),
               sigma_range_e: tuple[float, float] = (0.0, np.inf)) -> dict[str, np.ndarray]:
    """Apply the acceptance rules of ALGORITHM.md section 6.3 to fitted candidates.

    Parameters
    ----------
    fit : dict
        Output of :func:`fit_band` (concatenated over bands), arrays of shape (n,).
    gain_e_per_adu : float
    settings : FitSettings
    sigma_range_e : (float, float), electron
        Sigma range of the threshold table (outside it ``lambda_max`` is undefined).

    Returns
    -------
    dict of str to numpy.ndarray (n,), bool
        One entry per rule of :data:`REJECTION_RULES` (True where the candidate fails it) and
        ``accepted`` (True where it fails none).
    """
    rel = fit["rel_stderr"]
    exempt = np.zeros(rel.shape, dtype=bool)
    exempt[:, 4] = fit["frac_lo"] < settings.one_sided_frac
    exempt[:, 5] = fit["frac_hi"] < settings.one_sided_frac
    sigma_e = fit["sigma_adu"] * gain_e_per_adu
    failed = {
        "not_converged": ~fit["converged"].astype(bool),
        "large_stderr": np.any((rel > settings.max_rel_stderr) & ~exempt, axis=1),
        "side_above_centre": (fit["frac_lo"] > fit["frac_c"]) | (fit["frac_hi"] > fit["frac_c"]),
        "frac_c_above_max": fit["frac_c"] > settings.max_frac_c,
        "delta_below_min": ~(fit["delta_adu"] >= settings.min_delta_over_sigma * fit["sigma_adu"]),
        "sigma_outside_table": ~((sigma_e >= sigma_range_e[0]) & (sigma_e <= sigma_range_e[1])),
    }
    failed["accepted"] = ~np.logical_or.reduce([failed[k] for k in REJECTION_RULES])
    return failed


def predicted_read_noise(
    read_noise_e: np.ndarray, sigma_e: np.ndarray, lammax_e: np.ndarray, flux_e: np.ndarray
) -> np.ndarray:
    """Effective read noise of correctable pixels versus flux (ALGORITHM.md section 6.5).

    Moves linearly from ``sigma`` at zero flux to ``RN`` at ``lambda_max``, ``RN`` beyond.

    Parameters
    ----------
    read_noise_e, sigma_e, lammax_e : numpy.ndarray, shape (n,), electron
        Total read noise, RTN-free read noise and lambda_max of each pixel.
    flux_e : numpy.ndarray, shape (m,), electron per pixel per frame, >= 0

    Returns
    -------
    numpy.ndarray, shape (m, n), electron
    """
    flux = np.asarray(flux_e, dtype=np.float64)[:, None]
    with np.errstate(divide="ignore", invalid="ignore"):
        t = np.where(lammax_e > 0, np.clip(flux / lammax_e, 0.0, 1.0), 1.0)
    return sigma_e + (read_noise_e - sigma_e) * t


# --------------------------------------------------------------------------------------------------
# Driver
# --------------------------------------------------------------------------------------------------


def plan_bands(stack: FitsStack, n_frames: int, ad_frames: int, memory_limit_bytes: int, workers: int = 1
               ) -> BandPlan:
    """Band heights of the three passes so that the fit stays within the memory limit.

    The whole-sensor maps (:data:`MAP_BYTES_PER_PIXEL` a pixel) come first; what is left is shared between
    the workers. Half of a worker's share (at most 256 MiB) holds the band's raw pixels (in the files'
    type), a quarter the work arrays; the rest is margin for the band's results and the reader's buffers.
    The bands, not the maps, depend on the frame count: more frames, fewer rows a band.

    Raises
    ------
    ValueError
        ``memory_limit_bytes`` cannot hold the maps and one row of the stack per worker.
    """
    maps = MAP_BYTES_PER_PIXEL * stack.shape[0] * stack.shape[1]
    if maps >= memory_limit_bytes:
        raise ValueError(f"memory_limit_bytes={memory_limit_bytes} is too small: the whole-sensor maps of a "
                         f"{stack.shape[0]} x {stack.shape[1]} fit take {maps} bytes ({MAP_BYTES_PER_PIXEL} a "
                         "pixel), and the bands come on top")
    share = (int(memory_limit_bytes) - maps) // max(1, workers)
    # bands above 256 MiB only add page faults (bench/fit.py): a larger limit buys nothing
    band_bytes, work_bytes = min(share // 2, _BAND_BYTES_MAX), share // 4
    nx = stack.shape[1]
    itemsize = stack.dtype.itemsize
    one_row = n_frames * nx * itemsize
    if one_row > band_bytes:
        raise ValueError(
            f"memory_limit_bytes={memory_limit_bytes} is too small: one row of {n_frames} frames of width "
            f"{nx} takes {one_row} bytes and must fit in half a worker's share; give at least "
            f"{maps + 2 * one_row * max(1, workers)} bytes"
        )
    ny = stack.shape[0]
    rows_all = min(ny, band_bytes // one_row)
    rows_ad = min(ny, band_bytes // (ad_frames * nx * itemsize))
    return BandPlan(moments_rows=rows_all, anderson_rows=rows_ad, fit_rows=rows_all, band_bytes=band_bytes,
                    work_bytes=work_bytes)


def _read_band(stack: FitsStack, y0: int, y1: int) -> np.ndarray:
    """Rows ``y0 .. y1-1`` of every frame of ``stack`` in the files' type, shape (n, y1 - y0, nx)."""
    one = stack.n_frames * stack.shape[1] * stack.dtype.itemsize * (y1 - y0)
    return next(stack.iter_bands(one, rows=(y0, y1), dtype=None)).data


def _moments_task(stack: FitsStack, y0: int, y1: int, work_bytes: int) -> tuple[np.ndarray, ...]:
    return moments_band(_read_band(stack, y0, y1), work_bytes)


def fill_non_finite(data: np.ndarray, inplace: bool = False) -> np.ndarray:
    """``data`` with each non-finite value replaced by the mean of its pixel's finite values (0 where the
    pixel has none), as the candidate test's clipping replaces outliers; float data only, else unchanged.

    Parameters
    ----------
    data : numpy.ndarray, shape (n_frames, n_rows, n_cols), adu
    inplace : bool
        Replace in ``data`` itself (no band-sized copy) instead of in a copy.

    Returns
    -------
    numpy.ndarray, same shape and dtype (``data`` itself when nothing was replaced or ``inplace``)
    """
    if np.issubdtype(data.dtype, np.integer):
        return data
    holed = np.zeros(data.shape[1:], dtype=bool)
    for frame in data:  # frame by frame: no band-sized temporary
        holed |= ~np.isfinite(frame)
    if not holed.any():
        return data
    values = data[:, holed]  # (n_frames, pixels with a hole): few
    finite = np.isfinite(values)
    n_ok = finite.sum(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = np.where(n_ok > 0, np.where(finite, values, 0.0).sum(axis=0) / n_ok, 0.0)
    out = data if inplace else data.copy()
    out[:, holed] = np.where(finite, values, mean)
    return out


def _anderson_task(stack: FitsStack, y0: int, y1: int, work_bytes: int, settings: FitSettings) -> np.ndarray:
    band = fill_non_finite(_read_band(stack, y0, y1), inplace=True)  # the band is this task's own
    return anderson_darling_band(band, y0, seed=settings.dither_seed,
                                 clip_sigma=settings.clip_sigma, clip_iterations=settings.clip_iterations,
                                 max_bytes=work_bytes)


def fit_candidates(data: np.ndarray, mask: np.ndarray, std_adu: np.ndarray, gain_e_per_adu: float,
                   settings: FitSettings = FitSettings(), max_bytes: int = 64 * 1024**2) -> dict[str, np.ndarray]:
    """Pass 3 on a band: :func:`fit_band`, then (``settings.two_trap``) the two-trap refit of its candidates.

    Parameters
    ----------
    data, mask, std_adu, settings, max_bytes
        As :func:`fit_band`.
    gain_e_per_adu : float
        Conversion gain, e-/ADU (the refit applies the acceptance rules in electron).

    Returns
    -------
    dict of str to numpy.ndarray
        :func:`fit_band`'s fields, with ``settings.two_trap`` those of
        :func:`rtnstream.calibration.two_trap.refit_band`, and the seconds each took: ``fit_s`` and
        ``two_trap_s``, shape (1,), float64.
    """
    t0 = time.perf_counter()
    fit = fit_band(data, mask, std_adu, settings, max_bytes)
    t1 = time.perf_counter()
    fit["fit_s"] = np.array([t1 - t0])
    if settings.two_trap:
        # imported here: the two-trap module builds on this one (FitSettings, acceptance)
        from rtnstream.calibration.two_trap import refit_band

        fit.update(refit_band(data, mask, fit, gain_e_per_adu, settings, max_bytes))
        fit["two_trap_s"] = np.array([time.perf_counter() - t1])
    return fit


def _fit_task(stack: FitsStack, y0: int, y1: int, work_bytes: int, settings: FitSettings, mask: np.ndarray,
              std_adu: np.ndarray, gain_e_per_adu: float) -> dict[str, np.ndarray]:
    return fit_candidates(_read_band(stack, y0, y1), mask, std_adu, gain_e_per_adu, settings, work_bytes)


def _map_bands(
    task: Callable[..., Any], stack: FitsStack | Any, bands: Sequence[tuple[int, int]],
    per_band: Callable[[int, int], tuple], pool: concurrent.futures.Executor | None, workers: int, desc: str,
    progress: bool,
) -> Iterator[tuple[int, int, Any]]:
    """Run ``task(stack, y0, y1, *per_band(y0, y1))`` for every band, in this process or on ``pool``.

    ``stack`` is the FitsStack, or (dask) the future of its copy on the workers.

    At most two tasks per worker are in flight, so results never pile up in memory.
    """
    with tqdm(total=len(bands), desc=desc, unit="band", disable=not progress) as bar:
        if pool is None:
            for y0, y1 in bands:
                yield y0, y1, task(stack, y0, y1, *per_band(y0, y1))
                bar.update()
            return
        pending: dict[concurrent.futures.Future, tuple[int, int]] = {}
        queue = list(bands)[::-1]
        while queue or pending:
            while queue and len(pending) < 2 * workers:
                y0, y1 = queue.pop()
                pending[pool.submit(task, stack, y0, y1, *per_band(y0, y1))] = (y0, y1)
            done, _ = concurrent.futures.wait(pending, return_when=concurrent.futures.FIRST_COMPLETED)
            for fut in done:
                y0, y1 = pending.pop(fut)
                yield y0, y1, fut.result()
                bar.update()


def _executor(workers: int) -> contextlib.AbstractContextManager[concurrent.futures.Executor | None]:
    """A process pool of ``workers`` (spawned: no fork of a threaded parent), or no pool for one worker."""
    if workers <= 1:
        return contextlib.nullcontext(None)
    return concurrent.futures.ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"))


@contextlib.contextmanager
def _pool(workers: int, scheduler: str | None
          ) -> Iterator[tuple[concurrent.futures.Executor | None, int, Callable[[Any], Any]]]:
    """``(executor or None, worker count, share)`` of a process pool or a dask cluster; ``share(stack)`` is
    what tasks get for ``stack`` (the stack itself, or its copy placed once on every dask worker)."""
    if scheduler is None:
        with _executor(workers) as pool:
            yield pool, workers, lambda value: value
        return
    from rtnstream.calibration.distributed import dask_executor

    with dask_executor(scheduler) as dask:
        log.info("fitting on dask: %s, %d workers", scheduler, dask.n_workers)
        yield dask.executor, dask.n_workers, dask.share


def _bands(ny: int, rows: int, workers: int) -> list[tuple[int, int]]:
    """Bands of at most ``rows`` rows; at least ``workers`` of them so every worker has one."""
    rows = max(1, min(rows, -(-ny // max(1, workers))))
    return [(y0, min(y0 + rows, ny)) for y0 in range(0, ny, rows)]


def _header_meta(stack: FitsStack, camera: dict[str, Any]) -> dict[str, Any]:
    """Provenance for the cube: date range of DATE-OBS, and the camera record's identifiers and settings."""
    meta: dict[str, Any] = {}
    dates = []
    for value in stack.header_values("DATE-OBS"):
        if value is None:
            continue
        try:
            dates.append(datetime.datetime.fromisoformat(str(value)))
        except ValueError:
            log.warning("DATE-OBS %r is not an ISO 8601 date; left out of the date range", value)
    if dates:
        meta["bias_date_begin"] = min(dates).isoformat(timespec="milliseconds")
        meta["bias_date_end"] = max(dates).isoformat(timespec="milliseconds")
    for field_name, name in (("instrument", "camera"), ("detector", "detector"), ("readout_mode", "readout_mode"),
                             ("gain_setting", "gain_setting"), ("offset", "offset"), ("ccd_temp_c", "temperature_c")):
        if field_name in camera:
            meta[name] = camera[field_name]
    return meta


def _check_inputs(stack: FitsStack, gain_e_per_adu: float, n_frames: int | None, memory_limit_bytes: int,
                  workers: int) -> int:
    if not (np.isfinite(gain_e_per_adu) and gain_e_per_adu > 0):
        raise ValueError(f"gain_e_per_adu must be a finite positive number (e-/ADU), got {gain_e_per_adu!r}")
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers!r}")
    if memory_limit_bytes < 1:
        raise ValueError(f"memory_limit_bytes must be positive, got {memory_limit_bytes!r}")
    n = stack.n_frames if n_frames is None else int(n_frames)
    if n_frames is not None and not 1 <= n <= stack.n_frames:
        raise ValueError(f"n_frames must be in [1, {stack.n_frames}] (frames in the stack), got {n_frames!r}")
    if n < MIN_FRAMES:
        raise ValueError(f"an RTN fit needs at least {MIN_FRAMES} bias frames (1000 or more recommended), "
                         f"got {n}")
    if not np.issubdtype(stack.dtype, np.number) or np.issubdtype(stack.dtype, np.complexfloating):
        raise ValueError(f"bias frames must hold real numbers, got dtype {stack.dtype}")
    return n


def fit_bias_stack(
    files: Sequence[str | os.PathLike] | FitsStack,
    gain_e_per_adu: float | None = None,
    *,
    n_frames: int | None = None,
    settings: FitSettings = FitSettings(),
    memory_limit_bytes: int = 1024**3,
    workers: int = 1,
    scheduler: str | None = None,
    progress: bool = False,
    allowed_imagetyp: Sequence[str] = ("bias",),
    prescreen: int | None = None,
) -> FitResult:
    """Fit the RTN parameters of every pixel of a bias stack.

    Parameters
    ----------
    files : sequence of path, or FitsStack
        Bias FITS files (2D frames or 3D cubes in any mix), in time order.
    gain_e_per_adu : float, optional
        Conversion gain, e-/ADU. Default: from the headers (``EGAIN``, or ``GAIN`` whose comment gives
        the unit; :func:`rtnstream.calibration.acquisition.header_gain`). ``report["gain"]`` says which.
    n_frames : int, optional
        Use only the first ``n_frames`` frames (default: all).
    settings : FitSettings
    memory_limit_bytes : int
        Memory of the bands and work arrays of all workers together, bytes (see the module docstring).
    workers : int
        Processes; 1 runs everything in this process.
    scheduler : str, optional
        Map the bands on dask.distributed instead: ``'local:N'`` starts a LocalCluster of N worker
        processes, any other value is the address of a running scheduler whose workers read the bias
        files by the same paths. ``workers`` must then be left at 1. The bands are planned as for one
        process, so the cube is the one-process cube bit for bit, and ``memory_limit_bytes`` is each
        worker's.
    progress : bool
        A tqdm progress bar per pass (on stderr).
    allowed_imagetyp : sequence of str
        Frame types (``IMAGETYP`` / ``FRAME``, see :data:`rtnstream.calibration.acquisition.FRAME_KINDS`)
        fitted; frames without the keyword are taken as bias frames and counted.
    prescreen : int, optional
        Find the candidates in the first ``prescreen`` frames, then read only their values from the
        others (:mod:`rtnstream.calibration.prescreen`, one process). ``files`` may also be a compact
        stack (``rtnstream bias-collect``), fitted the same way.

    Returns
    -------
    FitResult

    Raises
    ------
    ValueError
        Bad gain, frame count, worker count or memory limit (the message names the parameter); no gain
        given and none in the headers; a frame of a type not allowed; frames of different camera settings
        (the message names the file and keyword).
    rtnstream.kernels.exceptions.FrameError
        A file cannot be read or its frame shape differs from the others'.

    Notes
    -----
    Non-finite pixel values (NaN, infinity, in float frames) are left out of every pass and counted in
    ``report["non_finite"]``; a pixel with fewer than :data:`MIN_FRAMES` finite values is not fitted and is
    flagged ``DQ_ANOMALOUS_MEAN | DQ_ANOMALOUS_STD`` in the cube (with the sensor's median mean bias and
    read noise when it has fewer than 2).
    """
    from rtnstream.calibration import prescreen as _prescreen

    if _prescreen.applies(files, prescreen):  # the paper's data-volume trick, or a compact stack
        return _prescreen.fit_prescreened(files, gain_e_per_adu, prescreen, n_frames=n_frames, settings=settings,
                                          memory_limit_bytes=memory_limit_bytes, workers=workers,
                                          scheduler=scheduler, progress=progress, allowed_imagetyp=allowed_imagetyp)
    stack = files if isinstance(files, FitsStack) else FitsStack(list(files))
    if n_frames is not None and 1 <= int(n_frames) < stack.n_frames:
        stack = stack.subset(range(int(n_frames)))
    names = _frame_names(stack)
    frame_kinds = check_frame_kinds(stack.headers, names, allowed_imagetyp)
    camera = common_camera_record(stack.headers, names)
    if gain_e_per_adu is None:
        gain = header_gain(stack.headers, names)
    else:
        gain = GainSource(gain_e_per_adu, "option", f"given: {gain_e_per_adu!r} e-/ADU")
    n = _check_inputs(stack, gain.gain_e_per_adu, n_frames, memory_limit_bytes, workers)
    if scheduler is not None and workers != 1:
        raise ValueError(f"workers: give workers or scheduler, not both (workers={workers!r}, "
                         f"scheduler={scheduler!r})")
    log.info("gain %.6g e-/ADU (%s)", gain.gain_e_per_adu, gain.detail)
    if n < 1000:
        log.warning("fitting RTN from %d bias frames; 1000 or more are recommended", n)
    table = get_table(settings.alpha)
    n_ad = min(settings.ad_frames, n)
    ny, nx = stack.shape
    g = float(gain.gain_e_per_adu)
    timing: dict[str, float] = {}

    with _pool(workers, scheduler) as (pool, workers, share):
        # on dask each worker takes bands planned as for one process: the cube is the one-process cube
        # bit for bit (EM's sums depend on which candidates share a band), and the limit is each worker's
        split = 1 if scheduler is not None else workers
        plan = plan_bands(stack, n, n_ad, memory_limit_bytes, split)
        t0 = time.perf_counter()
        # the whole-sensor maps (MAP_BYTES_PER_PIXEL): the mean at the float32 the cube keeps, the standard
        # deviation at float64 (pass 3 takes it), A^2 at float32 (tested at float64, band by band)
        mean = np.empty((ny, nx), dtype=np.float32)
        std = np.empty((ny, nx))
        n_valid = np.empty((ny, nx), dtype=np.int32)
        bad_per_frame = np.zeros(n, dtype=np.int64)
        for y0, y1, (m, s, k, b) in _map_bands(_moments_task, share(stack), _bands(ny, plan.moments_rows, split),
                                               lambda a, b: (plan.work_bytes,), pool, workers,
                                               "pass 1/3 moments", progress):
            mean[y0:y1], std[y0:y1], n_valid[y0:y1] = m, s, k
            bad_per_frame += b
        usable = n_valid >= MIN_FRAMES
        non_finite = _non_finite_report(stack, names, n_valid, bad_per_frame)
        del n_valid
        # median(std g) = median(std) g, and RN > median(RN) is std > median(std): no float64 RN map
        std_median = float(np.nanmedian(std))
        rn_median = std_median * g
        timing["pass1_moments_s"] = time.perf_counter() - t0

        t0 = time.perf_counter()
        ad_stack = stack.subset(range(n_ad))
        a2 = np.empty((ny, nx), dtype=np.float32)
        non_normal = np.empty((ny, nx), dtype=bool)
        for y0, y1, res in _map_bands(_anderson_task, share(ad_stack), _bands(ny, plan.anderson_rows, split),
                                      lambda a, b: (plan.work_bytes, settings), pool, workers,
                                      "pass 2/3 candidates", progress):
            a2[y0:y1], non_normal[y0:y1] = res, res > settings.a2_critical
        candidate = non_normal & (std > std_median) & usable
        timing["pass2_candidates_s"] = time.perf_counter() - t0

        t0 = time.perf_counter()
        fit_bands = [(y0, y1) for y0, y1 in _bands(ny, plan.fit_rows, split) if candidate[y0:y1].any()]
        parts: dict[int, dict[str, np.ndarray]] = {}
        for y0, _y1, res in _map_bands(_fit_task, share(stack), fit_bands,
                                       lambda a, b: (plan.work_bytes, settings, candidate[a:b], std[a:b], g),
                                       pool, workers, "pass 3/3 fit", progress):
            parts[y0] = res
        ordered = [parts.pop(y0) for y0, _ in fit_bands]
        fit = _empty_fit()
        if ordered:  # field by field, each band's part let go as it is joined: no second copy of them all
            for k in list(ordered[0]):
                fit[k] = np.concatenate([p.pop(k) for p in ordered])
        del ordered
        timing["pass3_fit_s"] = time.perf_counter() - t0

    inputs = {"gain": {"e_per_adu": g, "source": gain.source, "detail": gain.detail},
              "frame_kinds": frame_kinds, "camera": camera, "non_finite": non_finite}
    dq_bad = _fill_unusable(mean, std, usable)
    del usable
    return _assemble(stack, g, settings, table, plan, mean, std, a2, non_normal, candidate, rn_median, fit,
                     timing, memory_limit_bytes, workers, inputs, dq_bad)


def _frame_names(stack: FitsStack) -> list[str]:
    """``file`` or ``file[plane]`` of each frame, for messages."""
    return [str(s.path) if s.plane is None else f"{s.path}[{s.plane}]" for s in stack.frames]


def _non_finite_report(stack: FitsStack, names: Sequence[str], n_valid: np.ndarray, bad_per_frame: np.ndarray
                       ) -> dict[str, Any]:
    """Counts of the non-finite values left out (logged when there are any)."""
    n = stack.n_frames
    frames = np.flatnonzero(bad_per_frame)
    worst = frames[np.argsort(-bad_per_frame[frames], kind="stable")][:10]
    out = {"values": int(bad_per_frame.sum()), "pixels": int(np.count_nonzero(n_valid < n)),
           "pixels_not_fitted": int(np.count_nonzero(n_valid < MIN_FRAMES)), "frames": int(frames.size),
           "worst_frames": [{"frame": names[i], "values": int(bad_per_frame[i])} for i in worst]}
    if out["values"]:
        log.warning("left out %d non-finite pixel values (NaN or infinite) in %d frames (most in %s), at %d "
                    "pixels; %d pixels have fewer than %d finite values and are not fitted", out["values"],
                    out["frames"], names[worst[0]], out["pixels"], out["pixels_not_fitted"], MIN_FRAMES)
    return out


def _fill_unusable(mean: np.ndarray, std: np.ndarray, usable: np.ndarray) -> np.ndarray:
    """Put the sensor medians, in place, where a pixel of ``mean`` or ``std`` has no value (fewer than 2
    finite ones); returns the cube DQ flags of the pixels with too few finite values to fit."""
    missing = ~(np.isfinite(mean) & np.isfinite(std))
    if missing.any():
        some = not missing.all()
        mean[missing] = np.nanmedian(mean) if some else 0.0
        std[missing] = np.nanmedian(std) if some else 0.0
    dq_bad = np.zeros(usable.shape, dtype=np.uint16)
    dq_bad[~usable] = DQ_ANOMALOUS_MEAN | DQ_ANOMALOUS_STD
    return dq_bad


def _assemble(stack: FitsStack, g: float, settings: FitSettings, table: ThresholdTable, plan: BandPlan,
              mean: np.ndarray, std: np.ndarray, a2: np.ndarray, non_normal: np.ndarray, candidate: np.ndarray,
              rn_median: float, fit: dict[str, np.ndarray], timing: dict[str, float], memory_limit_bytes: int,
              workers: int, inputs: dict[str, Any], dq_bad: np.ndarray) -> FitResult:
    """Acceptance, lambda_max, the two-trap pixels, the cube, and the report."""
    ny, nx = stack.shape
    index = np.flatnonzero(candidate)  # row-major, the order fit_band returns the candidates in
    rules = acceptance(fit, g, settings, (float(table.sigma_nodes[0]), float(table.sigma_nodes[-1])))
    one_ok = rules["accepted"]
    delta_e = fit["delta_adu"] * g
    sigma_e = fit["sigma_adu"] * g
    lammax = np.full(index.size, np.nan)
    # lambda_max works on (chunk, n_lambda_nodes) arrays (about 4 of them): keep them in the work budget
    chunk = max(1, plan.work_bytes // (4 * 8 * table.lambda_nodes.size))
    lammax[one_ok] = table.lambda_max(delta_e[one_ok], sigma_e[one_ok], chunk=chunk)
    # the cube's columns of every candidate: the three-level fit, the two-trap refit where it was kept
    two = fit.get("two_trap", np.zeros(index.size, dtype=bool))
    ok = one_ok | two
    cols = {"mu_adu": fit["mu_adu"], "delta_e": delta_e, "sigma_e": sigma_e, "frac_c": fit["frac_c"],
            "frac_lo": fit["frac_lo"], "frac_hi": fit["frac_hi"], "lammax_e": lammax,
            **{k: np.zeros(index.size) for k in _SECOND_TRAP_COLUMNS}}
    if two.any():
        for k in (*_RTN_COLUMNS, *_SECOND_TRAP_COLUMNS):
            cols[k] = cols[k].copy()
            cols[k][two] = fit[f"two_{k}"]

    read_noise = _scaled_float32(std, g, plan.work_bytes)  # the cube's READNOISE (float32, as it keeps it)
    accepted = np.zeros(ny * nx, dtype=bool)
    accepted[index[ok]] = True
    accepted = accepted.reshape(ny, nx)
    dq = dq_bad
    dq.reshape(-1)[index[ok]] |= DQ_RTN
    dq.reshape(-1)[index[two]] |= DQ_TWO_TRAP
    meta = {"n_bias_frames": stack.n_frames, "alpha": settings.alpha, "software_version": __version__,
            **_header_meta(stack, inputs["camera"])}
    # the cube holds the accepted pixels sparsely (index is ascending, so index[ok] is too)
    # (without two-trap pixels the second trap's columns are left to RTNPixels: zeros no page of which is touched)
    rtn = RTNPixels(index=index[ok], **{k: cols[k][ok] for k in (*_RTN_COLUMNS,
                                                                 *(_SECOND_TRAP_COLUMNS if two.any() else ()))})
    cube = RTNCube(shape=(ny, nx), rtn=rtn, meanbias_adu=mean, readnoise_e=read_noise, dq=dq, gain_e_per_adu=g,
                   meta=meta)
    flux = np.concatenate([[0.0], np.geomspace(0.1, max(1.0, table.lambda_top_e), 48)])
    rn_acc = std.reshape(-1)[rtn.index] * g
    # a two-trap pixel is corrected up to the lambda_max of its smallest level (LAMMAX2 <= LAMMAX)
    sig_acc, lm_acc = rtn.sigma_e, np.where(rtn.two_trap, rtn.lammax2_e, rtn.lammax_e)
    n_fin, sum_sq = _finite_sum_sq(std, plan.work_bytes)
    sum_sq *= g * g
    rest_sq = sum_sq - np.sum(rn_acc**2)  # every accepted pixel is finite
    rms_before = float(np.sqrt(sum_sq / n_fin)) if n_fin else float("nan")
    n_fin = max(1, n_fin)
    # one flux at a time: (flux, accepted pixel) arrays would take 49 x 8 bytes an RTN pixel (1.2 GB for a
    # full IMX455 with 5 % RTN pixels)
    eff_sq_sum = np.empty(flux.size)
    snr_rtn_median = np.ones(flux.size)
    for k in range(flux.size):
        eff = predicted_read_noise(rn_acc, sig_acc, lm_acc, flux[k : k + 1])[0]  # (n_accepted,)
        eff_sq_sum[k] = np.sum(eff**2)
        if rn_acc.size:
            with np.errstate(invalid="ignore"):
                snr_rtn_median[k] = np.median(np.sqrt(flux[k] + rn_acc**2) / np.sqrt(flux[k] + eff**2))
    rms_eff = np.sqrt((rest_sq + eff_sq_sum) / n_fin)
    after = read_noise.copy()  # the predicted read noise after correction (float32, as READNOISE)
    after.reshape(-1)[rtn.index] = rtn.sigma_e
    n_pix = ny * nx
    counts = {
        "pixels": n_pix,
        "non_normal": int(non_normal.sum()),
        "candidates": int(candidate.sum()),
        "accepted": int(accepted.sum()),
        "rejected": int(candidate.sum() - accepted.sum()),
        "rejected_by_rule": {k: int(rules[k].sum()) for k in REJECTION_RULES},
        "one_sided": int(np.sum(ok & ((cols["frac_lo"] < settings.one_sided_frac)
                                      | (cols["frac_hi"] < settings.one_sided_frac)))),
        "two_trap": int(two.sum()),
    }
    two_trap_report = _two_trap_report(fit, settings, int(two.sum()), int(np.sum(two & ~one_ok)), timing)
    report = {
        "software_version": __version__,
        "n_frames": stack.n_frames,
        "n_frames_anderson": min(settings.ad_frames, stack.n_frames),
        "shape_px": [ny, nx],
        "gain_e_per_adu": g,
        "gain": inputs["gain"],
        "frame_kinds": inputs["frame_kinds"],
        "camera": inputs["camera"],
        "non_finite": inputs["non_finite"],
        "settings": asdict(settings),
        "counts": counts,
        "rtn_fraction": counts["accepted"] / n_pix,
        "read_noise_e": {
            "median_before": rn_median,
            "rms_before": rms_before,
            "median_after_predicted": float(np.nanmedian(after)),
            "rms_after_predicted": _rms(after, plan.work_bytes),
            "candidate_threshold_median": rn_median,
        },
        "accepted_median": {
            "delta_e": _median(cols["delta_e"][ok]), "sigma_e": _median(cols["sigma_e"][ok]),
            "delta_over_sigma": _median(cols["delta_e"][ok] / cols["sigma_e"][ok]),
            "frac_c": _median(cols["frac_c"][ok]), "lambda_max_e": _median(cols["lammax_e"][ok]),
            "em_iterations": _median(fit["n_iter"][ok]),
        },
        "two_trap": two_trap_report,
        "flux_curve": {
            "flux_e": flux.tolist(),
            "rms_read_noise_e": rms_eff.tolist(),
            "snr_gain_sensor": (np.sqrt(flux + rms_before**2) / np.sqrt(flux + rms_eff**2)).tolist(),
            "snr_gain_rtn_median": snr_rtn_median.tolist(),
        },
        "memory": {"limit_bytes": int(memory_limit_bytes), "workers": workers, **asdict(plan)},
        "timing_s": timing,
        "meta": {k: v for k, v in cube.meta.items()},
        "cube_id": cube.cube_id,
    }
    maps = {"mean_adu": mean, "std_adu": std, "read_noise_e": read_noise, "a2": a2, "candidate": candidate,
            "accepted": accepted}
    cands = {"index": index, **cols, "rel_stderr": fit["rel_stderr"], "n_iter": fit["n_iter"],
             **{k: rules[k] for k in REJECTION_RULES}, "two_trap": two, "accepted": ok}
    log.info("RTN fit: %d candidates, %d accepted (%.2f %% of pixels, %d with two traps); RMS read noise %.3f "
             "e- -> %.3f e-", counts["candidates"], counts["accepted"], 100 * report["rtn_fraction"],
             counts["two_trap"], rms_before, report["read_noise_e"]["rms_after_predicted"])
    return FitResult(cube=cube, report=report, maps=maps, candidates=cands)


def _two_trap_report(fit: dict[str, np.ndarray], settings: FitSettings, n_two: int, n_rescued: int,
                     timing: dict[str, float]) -> dict[str, Any]:
    """The report's ``two_trap`` entry; adds the band tasks' seconds of both fits to ``timing``.

    ``timing["pass3_two_trap_s"]`` and ``pass3_three_level_s`` are summed over the band tasks (all
    workers); ``time_share_of_pass3`` is the refit's share of the two.
    """
    from rtnstream.calibration.two_trap import TWO_TRAP_RULES  # the two-trap module builds on this one

    one_s = float(np.sum(fit.get("fit_s", 0.0)))
    two_s = float(np.sum(fit.get("two_trap_s", 0.0)))
    timing["pass3_three_level_s"] = one_s
    timing["pass3_two_trap_s"] = two_s
    counts = np.asarray(fit.get("rule_counts", np.zeros((0, len(TWO_TRAP_RULES)))), dtype=np.int64)
    return {
        "enabled": settings.two_trap,
        "refitted": int(np.sum(fit.get("refitted", 0))),
        "pixels": n_two,
        "rejected_by_three_level_rules": n_rescued,
        "time_share_of_pass3": two_s / (one_s + two_s) if one_s + two_s > 0 else 0.0,
        "failed_by_rule": {rule: int(counts[:, k].sum()) for k, rule in enumerate(TWO_TRAP_RULES)},
    }


def _row_chunks(shape: tuple[int, ...], work_bytes: int) -> Iterator[slice]:
    """Row slices of a (ny, nx) map of at most ``work_bytes`` of float64 temporaries (at least one row)."""
    rows = max(1, work_bytes // (16 * shape[1]))
    return (slice(y0, y0 + rows) for y0 in range(0, shape[0], rows))


def _scaled_float32(values: np.ndarray, factor: float, work_bytes: int) -> np.ndarray:
    """``(values * factor).astype(float32)`` computed a few rows at a time (no full float64 temporary)."""
    out = np.empty(values.shape, dtype=np.float32)
    for rows in _row_chunks(values.shape, work_bytes):
        out[rows] = values[rows] * factor
    return out


def _finite_sum_sq(values: np.ndarray, work_bytes: int) -> tuple[int, float]:
    """Count and float64 sum of squares of the finite entries of a (ny, nx) map, a few rows at a time."""
    count, total = 0, 0.0
    for rows in _row_chunks(values.shape, work_bytes):
        part = values[rows].astype(np.float64)
        finite = np.isfinite(part)
        count += int(finite.sum())
        total += float(np.sum(part[finite] ** 2))
    return count, total


def _rms(values: np.ndarray, work_bytes: int) -> float:
    """Root mean square of the finite entries of a (ny, nx) map (NaN when there are none)."""
    count, total = _finite_sum_sq(values, work_bytes)
    return float(np.sqrt(total / count)) if count else float("nan")


def _median(values: np.ndarray) -> float | None:
    return float(np.median(values)) if values.size else None
