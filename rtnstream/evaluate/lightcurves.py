"""Light curves of raw, corrected and masked frames, their SNR per star, and the summary by flux.

:func:`measure` runs the photometry of every frame of a series in its variants (``raw``; ``corrected`` with the
bias offset map in the source apertures; ``corrected_no_offset``; ``masked``: raw frames with the RTN pixels
left out), one frame at a time. :func:`differential` divides every variant by the mean normalised raw light
curve of the N brightest stars (the RTN paper's comparison stars). :func:`star_table` gives, per star, what
``report.json`` lists; :func:`summary_by_flux` the medians by flux bin.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
from tqdm import tqdm

from rtnstream.kernels.cube import RTNCube

__all__ = ["VARIANTS", "LightCurves", "measure", "differential", "snr", "star_table", "summary_by_flux"]

#: the photometry variants, in report order
VARIANTS = ("raw", "corrected", "corrected_no_offset", "masked")


@dataclass
class LightCurves:
    """Background-subtracted aperture fluxes of every star in every frame.

    Attributes
    ----------
    flux_e : dict of str to numpy.ndarray, shape (n_frames, n_stars), electron
        One entry per name of :data:`VARIANTS`.
    """

    flux_e: dict[str, np.ndarray]

    @property
    def n_frames(self) -> int:
        return int(self.flux_e["raw"].shape[0])


def measure(pairs: Iterable[tuple[np.ndarray, np.ndarray]], apertures, cube: RTNCube, offset_adu: np.ndarray,
            n_frames: int | None = None, progress: bool | None = None) -> LightCurves:
    """Photometry of each (raw, corrected) frame pair, in electron.

    Frames become electrons as ``(x - MEANBIAS) g`` (the cube's plain-mean bias, the RTN pixels' mixture
    mean: ALGORITHM.md section 5). In the ``corrected`` variant the source apertures see
    ``(x - MEANBIAS - O) g`` and the annuli ``(x - MEANBIAS) g`` (their median removes residual jumps).

    Parameters
    ----------
    pairs : iterable of (numpy.ndarray, numpy.ndarray), each shape (ny, nx), adu
        Raw and corrected frame, in time order.
    apertures : rtnstream.evaluate.photometry.Apertures
        With the cube's RTN pixels excluded (masked variant).
    cube : RTNCube
        The calibration of these frames' pixels (a subframe's part of the sensor's cube).
    offset_adu : numpy.ndarray, shape (ny, nx), adu
        The series' bias offset map.
    n_frames : int, optional
        Length of ``pairs`` for the progress bar.
    progress : bool, optional
        Show a progress bar (default: when standard error is a terminal).
    """
    g = float(cube.gain_e_per_adu)
    if np.shape(offset_adu) != apertures.shape:
        raise ValueError(f"offset_adu must have shape {apertures.shape}, got {np.shape(offset_adu)}")
    bias = apertures.gather(cube.meanbias_adu, "cube.meanbias_adu")
    offset_e = apertures.gather(offset_adu, "offset_adu") * g
    rows: dict[str, list[np.ndarray]] = {name: [] for name in VARIANTS}
    for raw, corrected in tqdm(pairs, total=n_frames, unit="frame", desc="photometry",
                               disable=(not progress) if progress is not None else None):
        # only the pixels of apertures and annuli are read and converted: memory and time scale with the stars
        raw_e = (apertures.gather(raw, "raw frame") - bias) * g
        corr_e = (apertures.gather(corrected, "corrected frame") - bias) * g
        rows["raw"].append(apertures.fluxes_of(raw_e))
        rows["corrected"].append(apertures.fluxes_of(corr_e - offset_e, corr_e))
        rows["corrected_no_offset"].append(apertures.fluxes_of(corr_e))
        rows["masked"].append(apertures.fluxes_of(raw_e, masked=True))
    if not rows["raw"]:
        raise ValueError("no frames to measure")
    return LightCurves({name: np.stack(r) for name, r in rows.items()})


def differential(curves: LightCurves, n_comparison: int) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Divide every variant by the mean normalised raw light curve of the ``n_comparison`` brightest stars.

    Returns
    -------
    curves : dict of str to numpy.ndarray, shape (n_frames, n_stars)
        The differential light curves (unchanged with ``n_comparison = 0``).
    comparison : numpy.ndarray, shape (n_comparison,), int
        Indices of the comparison stars.
    """
    raw = curves.flux_e["raw"]
    n = int(n_comparison)
    if n < 0:
        raise ValueError(f"n_comparison must be >= 0, got {n_comparison!r}")
    if n == 0:
        return dict(curves.flux_e), np.zeros(0, dtype=np.int64)
    mean = raw.mean(axis=0)
    comparison = np.argsort(-mean)[: min(n, raw.shape[1])]
    factor = (raw[:, comparison] / mean[comparison]).mean(axis=1)
    return {name: f / factor[:, None] for name, f in curves.flux_e.items()}, comparison


def snr(flux: np.ndarray) -> np.ndarray:
    """Mean over standard deviation (ddof 1) of each column of ``flux`` (n_frames, n_stars); NaN if undefined."""
    with np.errstate(divide="ignore", invalid="ignore"):
        return flux.mean(axis=0) / flux.std(axis=0, ddof=1)


def _pct(ratio: np.ndarray) -> np.ndarray:
    return 100.0 * (ratio - 1.0)


def star_table(curves: LightCurves, apertures, predicted: dict[str, np.ndarray], n_comparison: int,
               count_rate_e: np.ndarray) -> list[dict]:
    """Per star: position, flux, RTN pixels, measured and predicted SNR gains, flux bias (``report.json``).

    Parameters
    ----------
    curves : LightCurves
    apertures : Apertures
    predicted : dict
        :func:`rtnstream.evaluate.prediction.predict_gains` for these stars.
    n_comparison : int
        Comparison stars of the differential light curves.
    count_rate_e : numpy.ndarray, shape (n_stars,), electron/pixel/frame
        Mean signal per aperture pixel (star and sky).

    Returns
    -------
    list of dict
        Keys: ``id``, ``x``, ``y``, ``flux_e`` (mean raw flux, electron/frame), ``count_rate_e_per_pix``,
        ``n_rtn_in_aperture``, ``snr_raw``, ``snr_corrected``, ``snr_masked``, ``improvement_corrected_pct``,
        ``improvement_masked_pct``, ``predicted_improvement_corrected_pct``, ``predicted_improvement_masked_pct``,
        ``predicted_improvement_ideal_pct``, ``predicted_snr_raw``, ``predicted_snr_corrected`` (per frame, from
        the cube's noise model), ``flux_bias_pct_without_offset``, ``flux_bias_pct_with_offset``
        (mean corrected flux against mean raw flux, percent), ``masked_flux_pct`` (mean masked flux against
        raw, percent), ``comparison``.
    """
    diff, comparison = differential(curves, n_comparison)
    s = {name: snr(diff[name]) for name in ("raw", "corrected", "masked")}
    mean = {name: f.mean(axis=0) for name, f in curves.flux_e.items()}
    with np.errstate(divide="ignore", invalid="ignore"):
        bias_without = 100.0 * (mean["corrected_no_offset"] / mean["raw"] - 1.0)
        bias_with = 100.0 * (mean["corrected"] / mean["raw"] - 1.0)
        masked_flux = 100.0 * (mean["masked"] / mean["raw"])
        gain_c = s["corrected"] / s["raw"]
        gain_m = s["masked"] / s["raw"]
    is_comp = np.zeros(apertures.n_stars, bool)
    is_comp[comparison] = True

    def num(v: float) -> float | None:
        return float(v) if np.isfinite(v) else None

    rows = []
    for k in range(apertures.n_stars):
        rows.append({
            "id": k + 1,
            "x": round(float(apertures.positions_xy[k, 0]), 3),
            "y": round(float(apertures.positions_xy[k, 1]), 3),
            "flux_e": num(mean["raw"][k]),
            "count_rate_e_per_pix": num(count_rate_e[k]),
            "n_rtn_in_aperture": int(apertures.n_excluded[k]),
            "snr_raw": num(s["raw"][k]),
            "snr_corrected": num(s["corrected"][k]),
            "snr_masked": num(s["masked"][k]),
            "improvement_corrected_pct": num(_pct(gain_c[k])),
            "improvement_masked_pct": num(_pct(gain_m[k])),
            "predicted_improvement_corrected_pct": num(_pct(predicted["gain_corrected"][k])),
            "predicted_improvement_masked_pct": num(_pct(predicted["gain_masked"][k])),
            "predicted_improvement_ideal_pct": num(_pct(predicted["gain_ideal"][k])),
            "predicted_snr_raw": num(predicted["snr_raw"][k]),
            "predicted_snr_corrected": num(predicted["snr_corrected"][k]),
            "flux_bias_pct_without_offset": num(bias_without[k]),
            "flux_bias_pct_with_offset": num(bias_with[k]),
            "masked_flux_pct": num(masked_flux[k]),
            "comparison": bool(is_comp[k]),
        })
    return rows


#: the per-star keys summarised by flux bin
SUMMARY_KEYS = ("snr_raw", "snr_corrected", "snr_masked", "improvement_corrected_pct", "improvement_masked_pct",
                "predicted_improvement_corrected_pct", "predicted_improvement_masked_pct",
                "flux_bias_pct_without_offset", "flux_bias_pct_with_offset", "n_rtn_in_aperture")


def _median(rows: Sequence[dict], key: str) -> float | None:
    values = np.array([r[key] for r in rows if r[key] is not None], dtype=np.float64)
    return float(np.median(values)) if values.size else None


def summary_by_flux(stars: Sequence[dict], n_bins: int = 5) -> dict:
    """Medians of :data:`SUMMARY_KEYS` over all stars, over stars with RTN pixels in the aperture, and in
    ``n_bins`` log-spaced bins of ``flux_e``.

    Returns
    -------
    dict
        ``all``, ``with_rtn`` (each ``{'n_stars': int, key: median, ...}``) and ``flux_bins``: a list of
        ``{'flux_e_min', 'flux_e_max', 'n_stars', 'n_with_rtn', key: median, ...}``, medians over the
        bin's stars with RTN pixels in the aperture (the others are not changed by correction) and the bias keys
        likewise.
    """
    if n_bins < 1:
        raise ValueError(f"n_bins must be >= 1, got {n_bins!r}")

    def block(rows: Sequence[dict]) -> dict:
        return {"n_stars": len(rows), **{key: _median(rows, key) for key in SUMMARY_KEYS}}

    good = [r for r in stars if r["flux_e"] is not None and r["flux_e"] > 0]
    out: dict = {"all": block(stars), "with_rtn": block([r for r in stars if r["n_rtn_in_aperture"] > 0]),
                 "flux_bins": []}
    if not good:
        return out
    flux = np.array([r["flux_e"] for r in good])
    edges = np.geomspace(flux.min(), flux.max(), n_bins + 1) if flux.max() > flux.min() else np.array(
        [flux.min(), flux.max()])
    for lo, hi in zip(edges[:-1], edges[1:], strict=True):
        last = hi == edges[-1]
        rows = [r for r in good if lo <= r["flux_e"] and (r["flux_e"] <= hi if last else r["flux_e"] < hi)]
        rtn_rows = [r for r in rows if r["n_rtn_in_aperture"] > 0]
        out["flux_bins"].append({**block(rtn_rows), "flux_e_min": float(lo), "flux_e_max": float(hi),
                                 "n_stars": len(rows), "n_with_rtn": len(rtn_rows)})
    return out
