"""Write an RTN fit's report beside its cube: JSON summary and PNG plots (ALGORITHM.md section 6.5)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.colors import ListedColormap  # noqa: E402

from rtnstream.calibration._json import jsonable
from rtnstream.calibration.fit import FitResult  # noqa: E402

__all__ = ["PLOT_FILES", "report_path", "write_report_json", "write_plots"]

#: Plot file names and what they show.
PLOT_FILES = {
    "read_noise_hist.png": "read-noise histogram, measured (with RTN) and predicted after correction",
    "rtn_map.png": "map of non-normal candidates, accepted RTN pixels and two-trap pixels",
    "delta_over_sigma_hist.png": "Delta / sigma of the accepted pixels",
    "lambda_max_hist.png": "lambda_max of the accepted pixels",
    "flux_curve.png": "predicted SNR gain and effective RMS read noise versus flux",
}
_MAX_IMAGE_PX = 1500  # maps wider than this are shown block-reduced


def report_path(cube_path: str | os.PathLike) -> Path:
    """The JSON report's path beside a cube: ``<dir>/<stem>_report.json``."""
    cube_path = Path(cube_path)
    return cube_path.with_name(f"{cube_path.stem}_report.json")


def write_report_json(result: FitResult, path: str | os.PathLike) -> Path:
    """Write ``result.report`` as indented JSON (NaN and infinity as null); returns the path."""
    path = Path(path)
    path.write_text(json.dumps(jsonable(result.report), indent=2, allow_nan=False) + "\n")
    return path


def _reduce_max(image: np.ndarray, limit: int = _MAX_IMAGE_PX) -> np.ndarray:
    """Block maximum so that no side exceeds ``limit`` pixels (rare flags stay visible)."""
    step = max(1, -(-max(image.shape) // limit))
    if step == 1:
        return image
    ny, nx = (-(-n // step) * step for n in image.shape)
    padded = np.zeros((ny, nx), dtype=image.dtype)
    padded[: image.shape[0], : image.shape[1]] = image
    return padded.reshape(ny // step, step, nx // step, step).max(axis=(1, 3))


def _hist(ax, values: np.ndarray, label: str, bins) -> None:
    values = values[np.isfinite(values)]
    if values.size:
        ax.hist(values, bins=bins, histtype="step", label=f"{label} (n={values.size})")


def write_plots(result: FitResult, folder: str | os.PathLike) -> dict[str, Path]:
    """Write the PNG plots of :data:`PLOT_FILES` into ``folder`` (created); returns name -> path."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    rep, maps, cube = result.report, result.maps, result.cube
    accepted = maps["accepted"]
    out: dict[str, Path] = {}

    def save(fig, name: str) -> None:
        fig.tight_layout()
        out[name] = folder / name
        fig.savefig(out[name], dpi=110)
        plt.close(fig)

    rn = maps["read_noise_e"]
    rtn = cube.rtn  # the accepted pixels, in ascending flat index: the order of rn[accepted]
    after = rn.copy()
    after.reshape(-1)[rtn.index] = rtn.sigma_e
    top = float(np.nanpercentile(rn, 99.9)) if np.isfinite(rn).any() else 1.0
    bins = np.linspace(0.0, max(top, 1e-3) * 1.05, 120)
    fig, ax = plt.subplots(figsize=(7, 4.5))
    _hist(ax, rn.ravel(), "measured, with RTN", bins)
    _hist(ax, after.ravel(), "predicted, RTN corrected", bins)
    _hist(ax, rn[accepted], "RTN pixels, measured", bins)
    _hist(ax, rtn.sigma_e, "RTN pixels, sigma", bins)
    r = rep["read_noise_e"]
    ax.set(xlabel="read noise (e-)", ylabel="pixels", yscale="log",
           title=f"RMS {r['rms_before']:.3f} e- -> {r['rms_after_predicted']:.3f} e- (predicted); "
                 f"median {r['median_before']:.3f} -> {r['median_after_predicted']:.3f}")
    ax.legend(fontsize=8)
    save(fig, "read_noise_hist.png")

    category = np.where(accepted, 2, np.where(maps["candidate"], 1, 0)).astype(np.uint8)
    category.reshape(-1)[rtn.index[rtn.two_trap]] = 3
    shown = _reduce_max(category)
    fig, ax = plt.subplots(figsize=(7, 6.5))
    cmap = ListedColormap(["#f2f2f2", "#1f77b4", "#d62728", "#ff7f0e"])
    ax.imshow(shown, cmap=cmap, vmin=0, vmax=3, origin="lower", interpolation="nearest")
    c = rep["counts"]
    ax.set(xlabel="x (px, block-reduced)" if shown.shape != category.shape else "x (px)", ylabel="y",
           title=f"candidates (blue, {c['candidates']}), accepted RTN pixels (red, {c['accepted']}),\n"
                 f"of them with two traps (orange, {c.get('two_trap', 0)})")
    save(fig, "rtn_map.png")

    ratio = rtn.delta_e / rtn.sigma_e
    fig, ax = plt.subplots(figsize=(7, 4.5))
    _hist(ax, ratio, "accepted", 60)
    ax.set(xlabel="Delta / sigma", ylabel="pixels", title="jump size in units of the RTN-free read noise")
    save(fig, "delta_over_sigma_hist.png")

    fig, ax = plt.subplots(figsize=(7, 4.5))
    _hist(ax, rtn.lammax_e, "accepted", 60)
    ax.set(xlabel="lambda_max (e-/pixel/frame)", ylabel="pixels",
           title="largest signal at which positive jumps stay resolvable")
    save(fig, "lambda_max_hist.png")

    curve = rep["flux_curve"]
    flux = np.asarray(curve["flux_e"])[1:]  # the log axis leaves out F = 0 (given in the titles)
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(11, 4.5))
    a1.plot(flux, np.asarray(curve["snr_gain_rtn_median"])[1:], label="RTN pixels (median)")
    a1.plot(flux, np.asarray(curve["snr_gain_sensor"])[1:], label="sensor (RMS read noise)")
    a1.set(xscale="log", xlabel="flux (e-/pixel/frame)", ylabel="SNR ratio corrected / raw",
           title=f"predicted SNR gain (F = 0: {curve['snr_gain_rtn_median'][0]:.2f} for RTN pixels)")
    a1.legend(fontsize=8)
    a2.plot(flux, np.asarray(curve["rms_read_noise_e"])[1:], label="corrected (predicted)")
    a2.axhline(r["rms_before"], color="k", ls="--", label="raw")
    a2.set(xscale="log", xlabel="flux (e-/pixel/frame)", ylabel="RMS read noise (e-)",
           title="effective RMS read noise of the sensor")
    a2.legend(fontsize=8)
    save(fig, "flux_curve.png")
    return out
