"""The EMVA 1288 (release 4.0, linear model) analysis of temporal and spatial image sets.

Inputs are statistics computed from frames (:func:`temporal_point`, :func:`spatial_stack`), so the same
analysis serves the standard's descriptor (``calibration/emva_reader.py``) and FITS stacks
(``calibration/characterize.py``). Every figure that the data cannot give is ``None`` with its reason in
``not_measured``; implausible results are kept and flagged in ``warnings``. See docs/characterize.md.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np

__all__ = [
    "EmvaResult",
    "SpatialStack",
    "TemporalPoint",
    "analyze",
    "linearity_errors",
    "spatial_stack",
    "temporal_point",
]

#: The photon-transfer and responsivity fits use points up to this fraction of the saturation signal.
PTC_FIT_MAX_FRACTION = 0.70
#: The linearity fit uses points between these fractions of the saturation signal.
LINEARITY_RANGE_FRACTION = (0.05, 0.95)
#: Fewest frames of a spatial (non-uniformity) stack; below it the residual temporal noise dominates.
MIN_SPATIAL_FRAMES = 16
_QUANTIZATION_VAR_ADU2 = 1 / 12


@dataclass(frozen=True)
class TemporalPoint:
    """Statistics of one operating point: a pair of bright images and a pair of dark images.

    Attributes
    ----------
    exposure_s : float
        Exposure time, s.
    photons : float or None
        Mean number of photons per pixel during the exposure (``mu_p``), when known.
    mean_adu, var_adu2 : float
        ``mu_y`` (mean of the two bright images, adu) and ``sigma_y^2`` (half the variance of their
        difference, adu^2).
    dark_mean_adu, dark_var_adu2 : float
        The same for the two dark images, adu and adu^2.
    max_adu : float
        Largest value in the two bright images, adu.
    """

    exposure_s: float
    photons: float | None
    mean_adu: float
    var_adu2: float
    dark_mean_adu: float
    dark_var_adu2: float
    max_adu: float


@dataclass(frozen=True)
class SpatialStack:
    """Mean image of a stack of ``n_frames`` images at one operating point, and its mean temporal variance.

    Attributes
    ----------
    n_frames : int
        Number of images ``L``.
    mean_image_adu : numpy.ndarray, shape (ny, nx), float64
        Per-pixel mean over the stack, adu.
    temporal_var_adu2 : float
        Per-pixel temporal variance (ddof = 1) averaged over the pixels, adu^2.
    exposure_s : float
        Exposure time, s.
    """

    n_frames: int
    mean_image_adu: np.ndarray
    temporal_var_adu2: float
    exposure_s: float


@dataclass
class EmvaResult:
    """What :func:`analyze` measured.

    Attributes
    ----------
    section : dict
        The ``emva1288`` section of report.json: figures with units in their key names (``None`` where
        not measured), ``fit_ranges``, ``not_measured`` and ``warnings``.
    curves : dict
        Per-point arrays for the plots (lists of float): ``signal_adu``, ``variance_adu2``, ``exposure_s``,
        ``photons``, ``snr``, ``linearity_x``, ``linearity_error_pct``, ``dark_mean_adu``,
        ``dark_var_adu2``, ``ptc_in_fit``, ``below_saturation`` and ``linearity_in_fit`` (bool per point),
        and the row / column profiles ``dsnu_row_adu``, ``dsnu_col_adu``,
        ``prnu_row_pct``, ``prnu_col_pct`` when measured.
    maps : dict of str to numpy.ndarray
        ``dsnu_dark_adu`` (mean dark image) and ``prnu_signal_adu`` (mean bright minus mean dark image),
        each ``(ny, nx)`` float64, when measured.
    """

    section: dict
    curves: dict = field(default_factory=dict)
    maps: dict[str, np.ndarray] = field(default_factory=dict)


def _frame(name: str, a: np.ndarray) -> np.ndarray:
    a = np.asarray(a)
    if a.ndim != 2:
        raise ValueError(f"{name} must be a 2D image (ny, nx), got shape {a.shape}")
    return a


def temporal_point(
    exposure_s: float, photons: float | None, bright: Sequence[np.ndarray], dark: Sequence[np.ndarray]
) -> TemporalPoint:
    """Statistics of one operating point from two bright and two dark images (the standard's temporal set).

    ``mu_y = (<A> + <B>) / 2`` and ``sigma_y^2 = var(A - B) / 2`` (ddof = 0), for the bright and the dark pair.

    Parameters
    ----------
    exposure_s : float
        Exposure time, s.
    photons : float or None
        Mean photons per pixel during the exposure, when known.
    bright, dark : sequence of two numpy.ndarray, each shape (ny, nx)
        The bright pair and the dark pair, adu.

    Returns
    -------
    TemporalPoint

    Raises
    ------
    ValueError
        ``bright`` or ``dark`` is not two images of one shape.
    """
    stats = []
    for name, pair in (("bright", bright), ("dark", dark)):
        if len(pair) != 2:
            raise ValueError(f"{name} must be a pair of images, got {len(pair)}")
        a, b = (_frame(name, x).astype(np.float64) for x in pair)
        if a.shape != b.shape:
            raise ValueError(f"{name} images differ in shape: {a.shape} and {b.shape}")
        stats.append((0.5 * (a.mean() + b.mean()), 0.5 * np.var(a - b), max(a.max(), b.max())))
    return TemporalPoint(float(exposure_s), None if photons is None else float(photons), float(stats[0][0]),
                         float(stats[0][1]), float(stats[1][0]), float(stats[1][1]), float(stats[0][2]))


def spatial_stack(frames: Iterable[np.ndarray], exposure_s: float) -> SpatialStack:
    """Mean image and mean temporal variance of a stack, accumulated frame by frame in float64.

    Parameters
    ----------
    frames : iterable of numpy.ndarray, each shape (ny, nx)
        The images, adu (two at least).
    exposure_s : float
        Their exposure time, s.

    Returns
    -------
    SpatialStack

    Raises
    ------
    ValueError
        Fewer than two images, or images of different shapes.
    """
    total = square = None
    n = 0
    for frame in frames:
        f = _frame("frame", frame).astype(np.float64)
        if total is None:
            total, square = f.copy(), f * f
        elif f.shape != total.shape:
            raise ValueError(f"spatial stack images differ in shape: {total.shape} and {f.shape}")
        else:
            total += f
            square += f * f
        n += 1
    if n < 2:
        raise ValueError(f"a spatial stack needs 2 or more images, got {n}")
    mean = total / n
    var = np.maximum(square - n * mean * mean, 0) / (n - 1)
    return SpatialStack(n, mean, float(var.mean()), float(exposure_s))


def _through_origin(x: np.ndarray, y: np.ndarray) -> float:
    return float(np.sum(x * y) / np.sum(x * x))


def linearity_errors(x: np.ndarray, signal_adu: np.ndarray, in_range: np.ndarray) -> tuple[float, float, np.ndarray]:
    """The standard's linearity fit and its relative deviations.

    A line ``a0 + a1 x`` is fitted to the points ``in_range`` minimizing the relative deviations
    ``sum(((y - a0 - a1 x) / y)^2)`` (weights ``1 / y^2``); the linearity error of each point is
    ``100 (y - fit) / fit``.

    Parameters
    ----------
    x : numpy.ndarray, shape (n,)
        Photons per pixel, or exposure time (s) where photon counts are not given.
    signal_adu : numpy.ndarray, shape (n,)
        Dark-subtracted mean signal ``mu_y - mu_y.dark``, adu.
    in_range : numpy.ndarray, shape (n,), bool
        Points inside the fit range (two distinct ``x`` at least).

    Returns
    -------
    a0_adu, a1 : float
        Offset (adu) and slope (adu per unit of ``x``).
    error_pct : numpy.ndarray, shape (n,)
        Linearity error of every point, percent (NaN where the fit is not defined).
    """
    x = np.asarray(x, dtype=float)
    y = np.asarray(signal_adu, dtype=float)
    xs, ys = x[in_range], y[in_range]
    w = 1.0 / ys
    design = np.stack([w, xs * w], axis=1)
    (a0, a1), *_ = np.linalg.lstsq(design, np.ones_like(ys), rcond=None)
    fit = a0 + a1 * x
    with np.errstate(divide="ignore", invalid="ignore"):
        error = 100 * (y - fit) / fit
    return float(a0), float(a1), error


class _Notes:
    def __init__(self) -> None:
        self.warnings: list[str] = []
        self.not_measured: list[dict[str, str]] = []

    def skip(self, what: str, reason: str) -> None:
        self.not_measured.append({"measurement": what, "reason": reason})


def _saturation(points: list[TemporalPoint], max_adu: float | None, notes: _Notes) -> int:
    """Index (into ``points``, sorted by signal) of the saturation point: the peak of the temporal variance."""
    var = np.array([p.var_adu2 - p.dark_var_adu2 for p in points])
    i_sat = int(np.argmax(var))
    if i_sat == len(points) - 1:
        notes.warnings.append(
            "saturation: the temporal variance still rises at the brightest point, so saturation was not "
            "reached; the saturation capacity, SNR max and dynamic range are lower bounds")
    clipped = [p for p in points if max_adu is not None and p.max_adu >= max_adu]
    if clipped:
        notes.warnings.append(
            f"saturation: {len(clipped)} bright point(s) reach the largest value {max_adu:g} adu; the variance "
            f"peak at {points[i_sat].mean_adu:.6g} adu is taken as saturation")
    above = len(points) - 1 - i_sat
    if above:
        flat = int(np.sum(var[i_sat + 1:] < 0.5 * var[i_sat]))
        notes.warnings.append(
            f"saturation: {above} point(s) above the variance peak are left out of every fit ({flat} of them "
            "with less than half the peak variance: clipped)")
    return i_sat


def analyze(
    points: Sequence[TemporalPoint],
    dark_spatial: SpatialStack | None = None,
    bright_spatial: SpatialStack | None = None,
    *,
    max_adu: float | None = None,
) -> EmvaResult:
    """Run the EMVA 1288 linear-model analysis.

    Parameters
    ----------
    points : sequence of TemporalPoint
        The temporal operating points (a bright and a dark pair each), any order.
    dark_spatial, bright_spatial : SpatialStack, optional
        Stacks for DSNU (dark) and PRNU (bright, near 50 % of saturation).
    max_adu : float, optional
        Largest value the camera can give (``2**bits - 1``, BITPIX or DATAMAX), adu; used to warn of
        clipping.

    Returns
    -------
    EmvaResult
    """
    notes = _Notes()
    keys = ("gain_e_per_adu", "temporal_dark_noise_e", "temporal_dark_noise_adu", "dark_current_e_per_s",
            "dark_current_from_variance_e_per_s", "saturation_capacity_e", "saturation_adu", "snr_max",
            "snr_max_db", "dynamic_range_db", "absolute_sensitivity_threshold_e",
            "absolute_sensitivity_threshold_photons", "responsivity_adu_per_photon", "quantum_efficiency_pct",
            "linearity_error_min_pct", "linearity_error_max_pct", "dsnu_e", "dsnu_adu", "prnu_pct")
    sec: dict = dict.fromkeys(keys)
    sec["standard"] = "EMVA 1288 release 4.0, linear model"
    sec["fit_ranges"] = {}
    curves: dict = {}
    pts = sorted(points, key=lambda p: p.mean_adu)
    sec["n_points"] = len(pts)
    if len(pts) < 3:
        for what in ("gain", "saturation", "linearity", "SNR"):
            notes.skip(what, f"needs 3 or more temporal points (bright and dark pairs), got {len(pts)}")
        return _finish(sec, curves, notes, dark_spatial, bright_spatial, None)

    signal = np.array([p.mean_adu - p.dark_mean_adu for p in pts])
    excess = np.array([p.var_adu2 - p.dark_var_adu2 for p in pts])
    exposure = np.array([p.exposure_s for p in pts])
    photons = np.array([np.nan if p.photons is None else p.photons for p in pts])
    has_photons = bool(np.all(np.isfinite(photons)) and np.all(photons > 0))
    curves.update(signal_adu=signal.tolist(), variance_adu2=excess.tolist(), exposure_s=exposure.tolist(),
                  photons=photons.tolist() if has_photons else None,
                  dark_mean_adu=[p.dark_mean_adu for p in pts], dark_var_adu2=[p.dark_var_adu2 for p in pts])

    i_sat = _saturation(pts, max_adu, notes)
    sat_signal = float(signal[i_sat])
    sec["saturation_adu"] = float(pts[i_sat].mean_adu)
    below = np.arange(len(pts)) <= i_sat
    curves["below_saturation"] = below.tolist()

    # Photon transfer: sigma_y^2 - sigma_y.dark^2 = K (mu_y - mu_y.dark), through the origin, up to 70 %.
    ptc = below & (signal > 0) & (signal <= PTC_FIT_MAX_FRACTION * sat_signal)
    sec["fit_ranges"]["ptc_adu"] = [0.0, PTC_FIT_MAX_FRACTION * sat_signal]
    sec["fit_ranges"]["ptc_n_points"] = int(ptc.sum())
    k_adu_per_e = _through_origin(signal[ptc], excess[ptc]) if ptc.sum() >= 2 else float("nan")
    curves["ptc_in_fit"] = ptc.tolist()
    if not ptc.sum() >= 2 or not k_adu_per_e > 0:
        notes.skip("gain", f"needs 2 or more points with signal in (0, 70 %] of saturation and a positive "
                           f"slope, got {int(ptc.sum())} point(s)")
        return _finish(sec, curves, notes, dark_spatial, bright_spatial, None)
    sec["system_gain_k_adu_per_e"] = k_adu_per_e
    sec["gain_e_per_adu"] = gain = 1 / k_adu_per_e
    if ptc.sum() < 5:
        notes.warnings.append(f"gain: only {int(ptc.sum())} points in the photon-transfer fit range (the "
                              "standard asks for 50 or more steps over the whole range)")

    # Temporal dark noise at the shortest exposure, with the quantization noise removed in electrons.
    i_dark = int(np.argmin(exposure))
    dark_var = pts[i_dark].dark_var_adu2
    sec["temporal_dark_noise_adu"] = float(np.sqrt(dark_var))
    if dark_var < 0.24:
        notes.warnings.append(
            f"temporal dark noise: sigma_y.dark^2 = {dark_var:.3g} adu^2 is below 0.24 adu^2, the quantization "
            "floor; the dark noise in electrons is given as the upper limit 0.49 / K")
        sec["temporal_dark_noise_e"] = 0.49 * gain
    else:
        sec["temporal_dark_noise_e"] = float(np.sqrt(dark_var - _QUANTIZATION_VAR_ADU2) * gain)

    # Responsivity and quantum efficiency (photon counts given): mu_y - mu_y.dark = R mu_p, up to 70 %.
    if has_photons:
        resp = _through_origin(photons[ptc], signal[ptc])
        sec["responsivity_adu_per_photon"] = resp
        eta = resp * gain
        sec["quantum_efficiency_pct"] = float(100 * eta)
        if not 0 < eta <= 1:
            notes.warnings.append(f"quantum efficiency {100 * eta:.3g} % is outside (0, 100] %: check the photon "
                                  "counts")
    else:
        for what in ("quantum_efficiency_pct", "responsivity_adu_per_photon",
                     "absolute_sensitivity_threshold_photons"):
            notes.skip(what, "no photon counts given")

    # Saturation capacity, SNR, sensitivity threshold, dynamic range.
    # mu_e.sat = eta mu_p.sat when photon counts are given (the standard's definition), else from the signal
    mu_e_sat = eta * float(photons[i_sat]) if has_photons else sat_signal * gain
    sigma_dark_e2 = dark_var * gain**2
    sec["saturation_capacity_e"] = mu_e_sat
    sec["snr_max"] = float(np.sqrt(mu_e_sat))  # the standard's SNR_max: shot noise at saturation
    sec["snr_max_db"] = float(20 * np.log10(sec["snr_max"]))
    mu_e_min = 0.5 + np.sqrt(0.25 + sigma_dark_e2)
    sec["absolute_sensitivity_threshold_e"] = float(mu_e_min)
    if has_photons:
        sec["absolute_sensitivity_threshold_photons"] = float(mu_e_min / eta)
    sec["dynamic_range_db"] = float(20 * np.log10(mu_e_sat / mu_e_min))
    sigma_y = np.sqrt(np.maximum(np.array([p.var_adu2 for p in pts]), 0))
    with np.errstate(divide="ignore", invalid="ignore"):
        curves["snr"] = (signal / sigma_y).tolist()
    curves["snr_model_electrons"] = np.geomspace(max(mu_e_min / 2, 1e-3), mu_e_sat, 60).tolist()

    # Linearity against photons (or exposure time at constant light), 5 % to 95 % of saturation.
    lo, hi = LINEARITY_RANGE_FRACTION
    x_lin = photons if has_photons else exposure
    lin = below & (signal >= lo * sat_signal) & (signal <= hi * sat_signal)
    sec["fit_ranges"]["linearity_adu"] = [lo * sat_signal, hi * sat_signal]
    sec["fit_ranges"]["linearity_n_points"] = int(lin.sum())
    sec["fit_ranges"]["linearity_x"] = "photons" if has_photons else "exposure_s"
    if len(np.unique(x_lin[lin])) >= 3:
        a0, a1, err = linearity_errors(x_lin, signal, lin)
        sec["linearity_fit"] = {"offset_adu": a0, "slope_adu_per_x": a1}
        sec["linearity_error_min_pct"] = float(np.min(err[lin]))
        sec["linearity_error_max_pct"] = float(np.max(err[lin]))
        curves.update(linearity_x=x_lin.tolist(), linearity_error_pct=err.tolist(), linearity_in_fit=lin.tolist())
    else:
        notes.skip("linearity", f"needs 3 or more distinct {sec['fit_ranges']['linearity_x']} values between 5 % "
                                f"and 95 % of saturation, got {len(np.unique(x_lin[lin]))}")

    _dark_current(pts, gain, sec, notes)
    return _finish(sec, curves, notes, dark_spatial, bright_spatial, gain)


def _dark_current(pts: list[TemporalPoint], gain: float, sec: dict, notes: _Notes) -> None:
    """Dark current from the mean and from the variance of the dark pairs versus exposure time."""
    t = np.array([p.exposure_s for p in pts])
    if len(np.unique(t)) < 2:
        notes.skip("dark_current_e_per_s",
                   f"needs dark pairs at 2 or more exposure times, got {np.unique(t).tolist()} s")
        return
    mean = np.array([p.dark_mean_adu for p in pts])
    var = np.array([p.dark_var_adu2 for p in pts])
    slope_mean = np.polyfit(t, mean, 1)[0]
    slope_var = np.polyfit(t, var, 1)[0]
    sec["dark_current_e_per_s"] = float(slope_mean * gain)
    sec["dark_current_from_variance_e_per_s"] = float(slope_var * gain**2)
    sec["fit_ranges"]["dark_current_exposure_s"] = [float(t.min()), float(t.max())]
    if slope_mean < 0:
        notes.warnings.append(f"dark current from the mean is negative ({slope_mean * gain:.3g} e-/s): the dark "
                              "level drifts or the dark images do not match the exposures")


def _spatial_var(stack: SpatialStack) -> float:
    """Spatial variance of the mean image less the residual temporal variance ``sigma^2 / L``, adu^2."""
    return float(np.var(stack.mean_image_adu, ddof=1) - stack.temporal_var_adu2 / stack.n_frames)


def _spatial_parts(stack: SpatialStack) -> dict[str, float]:
    """Row, column and pixel parts of the spatial variance (adu^2), residual temporal noise removed.

    With ``y_ij = mu + r_i + c_j + p_ij`` over M rows and N columns, the variance of the row means is
    ``s_r^2 + s_p^2 / N``, of the column means ``s_c^2 + s_p^2 / M``, and the total ``s_r^2 + s_c^2 + s_p^2``;
    the temporal noise ``sigma^2 / L`` enters each as a pixel part does.
    """
    image = stack.mean_image_adu
    m, n = image.shape
    temporal = stack.temporal_var_adu2 / stack.n_frames
    total = float(np.var(image, ddof=1)) - temporal
    rows = float(np.var(image.mean(axis=1), ddof=1)) - temporal / n
    cols = float(np.var(image.mean(axis=0), ddof=1)) - temporal / m
    pixel = (total - rows - cols) / (1 - 1 / m - 1 / n) if m > 1 and n > 1 else float("nan")
    return {"total": total, "row": rows - pixel / n, "col": cols - pixel / m, "pixel": pixel}


def _finish(sec: dict, curves: dict, notes: _Notes, dark: SpatialStack | None, bright: SpatialStack | None,
            gain: float | None) -> EmvaResult:
    maps: dict[str, np.ndarray] = {}
    for name, stack in (("dark", dark), ("bright", bright)):
        if stack is not None and stack.n_frames < MIN_SPATIAL_FRAMES:
            notes.warnings.append(f"{name} spatial stack: {stack.n_frames} images, fewer than "
                                  f"{MIN_SPATIAL_FRAMES}: the non-uniformity keeps residual temporal noise")
    if dark is None:
        notes.skip("dsnu_e", "no dark spatial stack (more than 2 dark images at one exposure)")
    else:
        s2_dark = _spatial_var(dark)
        sec["dsnu_adu"] = float(np.sqrt(max(s2_dark, 0)))
        sec["dsnu_n_frames"] = dark.n_frames
        dark_parts = _spatial_parts(dark)
        for part in ("row", "col", "pixel"):
            value = float(np.sqrt(max(dark_parts[part], 0)))
            sec[f"dsnu_{part}_adu"] = value
            sec[f"dsnu_{part}_e"] = value * gain if gain is not None else None
        if gain is not None:
            sec["dsnu_e"] = sec["dsnu_adu"] * gain
        else:
            notes.skip("dsnu_e", "no gain")
        curves["dsnu_row_adu"] = dark.mean_image_adu.mean(axis=1).tolist()
        curves["dsnu_col_adu"] = dark.mean_image_adu.mean(axis=0).tolist()
        maps["dsnu_dark_adu"] = dark.mean_image_adu
    if bright is None or dark is None:
        notes.skip("prnu_pct", "needs a bright and a dark spatial stack (more than 2 images each)")
    else:
        if bright.mean_image_adu.shape != dark.mean_image_adu.shape:
            raise ValueError(f"bright and dark spatial stacks differ in shape: {bright.mean_image_adu.shape} "
                             f"and {dark.mean_image_adu.shape}")
        signal = float(bright.mean_image_adu.mean() - dark.mean_image_adu.mean())
        s2 = _spatial_var(bright) - _spatial_var(dark)
        sec["prnu_pct"] = float(100 * np.sqrt(max(s2, 0)) / signal) if signal > 0 else None
        bright_parts = _spatial_parts(bright)
        for part in ("row", "col", "pixel"):
            diff = bright_parts[part] - dark_parts[part]
            sec[f"prnu_{part}_pct"] = float(100 * np.sqrt(max(diff, 0)) / signal) if signal > 0 else None
        sec["prnu_n_frames"] = bright.n_frames
        sec["prnu_signal_adu"] = signal
        if signal <= 0:
            notes.skip("prnu_pct", "the bright spatial stack is not brighter than the dark one")
        elif sec.get("saturation_adu") and not 0.2 < bright.mean_image_adu.mean() / sec["saturation_adu"] < 0.8:
            notes.warnings.append("bright spatial stack is not near 50 % of saturation as the standard asks")
        curves["prnu_row_pct"] = (100 * (bright.mean_image_adu - dark.mean_image_adu).mean(axis=1) / signal).tolist()
        curves["prnu_col_pct"] = (100 * (bright.mean_image_adu - dark.mean_image_adu).mean(axis=0) / signal).tolist()
        maps["prnu_signal_adu"] = bright.mean_image_adu - dark.mean_image_adu
    sec["not_measured"] = notes.not_measured
    sec["warnings"] = notes.warnings
    return EmvaResult(sec, curves, maps)
