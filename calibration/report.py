"""Write a characterization as report.json, FITS maps, PNG plots (the paper's figures) and report.html."""

from __future__ import annotations

import html
import json
import os
from collections.abc import Callable
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from astropy.io import fits  # noqa: E402
from matplotlib.colors import LogNorm  # noqa: E402

from rtnstream import __version__  # noqa: E402
from rtnstream.calibration._json import jsonable  # noqa: E402
from rtnstream.calibration.characterize import (  # noqa: E402
    DQ_ANOMALOUS_MEAN,
    DQ_ANOMALOUS_STD,
    DQ_HOT,
    CharacterizationResult,
)

__all__ = ["write_report", "FITS_MAPS"]

#: Map name in ``CharacterizationResult.maps`` -> (file name, BUNIT, description).
FITS_MAPS: dict[str, tuple[str, str, str]] = {
    "master_bias_adu": ("master_bias.fits", "adu", "mean of the bias stack"),
    "bias_std_adu": ("bias_std.fits", "adu", "standard deviation of the bias stack"),
    "gain_e_per_adu": ("gain_map.fits", "electron/adu", "pixel-level gain (NaN: var F <= var B)"),
    "read_noise_e": ("read_noise_map.fits", "electron", "pixel-level read noise g sd(B)"),
    "dq": ("dq_mask.fits", "", "anomalous-pixel DQ bits"),
    "anomalous_density": ("anomalous_density.fits", "count", "anomalous pixels per 20x20 px cell"),
    "dark_signal_adu": ("dark_signal.fits", "adu", "bias-subtracted mean of the longest darks"),
}

_MAX_IMAGE_PX = 1500  # images wider than this are shown subsampled


def _write_fits(path: Path, name: str, data: np.ndarray, bunit: str, what: str, report: dict) -> None:
    header = fits.Header()
    if bunit:
        header["BUNIT"] = (bunit, "unit of the pixel values")
    header["CONTENT"] = (name, what[:60])
    header["ORIGIN"] = (f"rtnstream {__version__}", "software")
    if name == "dq":
        header["DQ_AMEAN"] = (DQ_ANOMALOUS_MEAN, "DQ bit: mean outside +-5 sigma of the mean map")
        header["DQ_ASTD"] = (DQ_ANOMALOUS_STD, "DQ bit: std above +5 sigma of the std map")
        header["DQ_HOT"] = (DQ_HOT, "DQ bit: hot pixel")
        header["COMMENT"] = "DQ bits 1 (RTN) and 2 (two-trap) are set by the RTN fitter"
    if name == "anomalous_density":
        header["CELLPX"] = (report["bias"]["density_cell_px"], "cell side, pixels")
    fits.PrimaryHDU(data, header=header).writeto(path, overwrite=True, checksum=True)


def _display(image: np.ndarray) -> np.ndarray:
    step = max(1, -(-max(image.shape) // _MAX_IMAGE_PX))
    return image[::step, ::step]


def _finite(values: np.ndarray) -> np.ndarray:
    values = np.asarray(values, dtype=float).ravel()
    return values[np.isfinite(values)]


def _hist_pair(axes: np.ndarray, values: np.ndarray, xlabel: str, lines: list[tuple[float, str, str]],
               value_range: tuple[float, float] | None = None, bins: int = 200) -> None:
    """Same histogram twice: linear counts on top, logarithmic below, with labelled vertical lines."""
    for ax, log in zip(axes, (False, True), strict=True):
        ax.hist(values, bins=bins, range=value_range, histtype="stepfilled", color="tab:blue", alpha=0.7,
                log=log)
        for x, color, label in lines:
            ax.axvline(x, color=color, linestyle="--", linewidth=1, label=label)
        ax.set_ylabel("pixels (log)" if log else "pixels")
    axes[0].legend(fontsize=8)
    axes[-1].set_xlabel(xlabel)


def _robust_range(values: np.ndarray, lo: float = 0.05, hi: float = 99.95) -> tuple[float, float]:
    a, b = np.percentile(values, [lo, hi])
    return (float(a), float(b)) if b > a else (float(a) - 0.5, float(a) + 0.5)


def _fig_bias_stability(r: dict, m: dict) -> plt.Figure:
    s = r["bias"]["stability"]
    fig, ax = plt.subplots(figsize=(7, 3.5))
    ax.plot(s["frame_mean_adu"], "o", color="tab:blue", markersize=3)
    ax.axhline(s["clipped_mean_adu"], color="red", linestyle=":", label="3-sigma clipped mean")
    ax.set_xlabel("bias frame")
    ax.set_ylabel("clipped mean of central region (adu)")
    ax.set_title(f"Bias stability: mean {s['clipped_mean_adu']:.3f} adu, "
                 f"max deviation {s['max_abs_deviation_adu']:.3f} adu")
    ax.legend()
    return fig


def _fig_image(image: np.ndarray, title: str, label: str, log: bool = False) -> plt.Figure:
    fig, ax = plt.subplots(figsize=(6, 5))
    shown = _display(image)
    finite = _finite(shown)
    if log:
        norm = LogNorm(vmin=1, vmax=max(2, float(finite.max()) if finite.size else 2))
        im = ax.imshow(np.where(shown > 0, shown, np.nan), origin="lower", norm=norm, cmap="viridis")
    else:
        lo, hi = np.percentile(finite, [1, 99]) if finite.size else (0, 1)
        im = ax.imshow(shown, origin="lower", vmin=lo, vmax=hi, cmap="viridis")
    fig.colorbar(im, ax=ax, label=label)
    step = max(1, -(-max(image.shape) // _MAX_IMAGE_PX))
    ax.set_xlabel("x (pixel)" if step == 1 else f"x (pixel / {step})")
    ax.set_ylabel("y (pixel)" if step == 1 else f"y (pixel / {step})")
    ax.set_title(title)
    return fig


def _fig_master_bias(r: dict, m: dict) -> plt.Figure:
    return _fig_image(m["master_bias_adu"], "Master bias (mean of the bias stack)", "adu")


def _fig_mean_hist(r: dict, m: dict) -> plt.Figure:
    s = r["bias"]["mean_map"]
    fig, axes = plt.subplots(2, 1, figsize=(7, 6), sharex=True)
    values = _finite(m["master_bias_adu"])
    _hist_pair(axes, values, "per-pixel mean of bias (adu)", [
        (s["clipped_mean_adu"], "green", f"mean {s['clipped_mean_adu']:.2f}"),
        (s["low_threshold_adu"], "red", f"-5 sigma: {100 * s['low_fraction']:.3f} % below"),
        (s["high_threshold_adu"], "red", f"+5 sigma: {100 * s['high_fraction']:.3f} % above"),
    ], (float(values.min()), float(values.max())))
    axes[0].set_title("Distribution of per-pixel bias mean")
    return fig


def _fig_std_hist(r: dict, m: dict) -> plt.Figure:
    s = r["bias"]["std_map"]
    fig, axes = plt.subplots(2, 1, figsize=(7, 6), sharex=True)
    values = _finite(m["bias_std_adu"])
    _hist_pair(axes, values, "per-pixel standard deviation of bias (adu)", [
        (s["clipped_mean_adu"], "green", f"mean {s['clipped_mean_adu']:.2f}"),
        (s["high_threshold_adu"], "red", f"+5 sigma: {100 * s['anomalous_fraction']:.3f} % above"),
    ], (float(values.min()), float(values.max())))
    axes[0].set_title("Distribution of per-pixel bias standard deviation")
    return fig


def _fig_density(r: dict, m: dict) -> plt.Figure:
    cell = r["bias"]["density_cell_px"]
    fig = _fig_image(m["anomalous_density"].astype(float), f"Anomalous pixels per {cell} x {cell} px cell",
                     "anomalous pixels per cell", log=True)
    fig.axes[0].set_xlabel(f"x (cell of {cell} px)")
    fig.axes[0].set_ylabel(f"y (cell of {cell} px)")
    return fig


def _fig_mean_std(r: dict, m: dict) -> plt.Figure:
    mean = m["master_bias_adu"].ravel()
    std = m["bias_std_adu"].ravel()
    ok = np.isfinite(mean) & np.isfinite(std)
    fig, ax = plt.subplots(figsize=(6.5, 5))
    _, _, _, im = ax.hist2d(mean[ok], std[ok], bins=200, norm=LogNorm(), cmap="viridis")
    fig.colorbar(im, ax=ax, label="pixels")
    ax.set_xlabel("per-pixel mean of bias (adu)")
    ax.set_ylabel("per-pixel standard deviation of bias (adu)")
    ax.set_title("Mean versus standard deviation per pixel")
    return fig


def _fig_dark_current(r: dict, m: dict) -> plt.Figure:
    d = r["dark"]
    electrons = "signal_e_per_pix" in d
    t = np.asarray(d["exptime_s"])
    y = np.asarray(d["signal_e_per_pix"] if electrons else d["signal_adu"])
    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    ax.plot(t, y, "o", color="tab:orange", label="clipped mean of bias-subtracted darks")
    if "dark_current_adu_per_pix_s" in d:
        scale = d["gain_used_e_per_adu"] if electrons else 1.0
        slope = d["dark_current_adu_per_pix_s"] * scale
        ax.plot(t, slope * t + d["intercept_adu"] * scale, "-", color="gray",
                label=f"fit: {slope:.4g} {'e-' if electrons else 'adu'}/pixel/s")
    ax.set_xlabel("exposure time (s)")
    ax.set_ylabel("dark signal (e- / pixel)" if electrons else "dark signal (adu / pixel)")
    ax.set_title("Dark current versus exposure time")
    ax.legend()
    return fig


def _fig_dark_hist(r: dict, m: dict) -> plt.Figure:
    d = r["dark"]["longest"]
    values = _finite(m["dark_signal_adu"])
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.hist(values, bins=300, range=(float(values.min()), float(values.max())), log=True, color="tab:blue",
            histtype="stepfilled")
    ax.axvline(d["mean_adu"], color="red", linestyle="--", label=f"mean {d['mean_adu']:.3g} adu")
    ax.set_xlabel(f"bias-subtracted dark signal at {d['exptime_s']:g} s (adu)")
    ax.set_ylabel("pixels (log)")
    ax.set_title(f"Dark signal of the longest darks ({d['n_frames']} frame(s) averaged)")
    ax.legend()
    return fig


def _fig_linearity(r: dict, m: dict) -> plt.Figure:
    lin = r["flat"]["linearity"]
    t = np.asarray(lin["exptime_s"])
    s = np.asarray(lin["signal_adu"])
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4.5))
    ax1.plot(t, s / 1e4, "o", label="central-region mean")
    ax1.plot(t, (lin["slope_adu_per_s"] * t + lin["intercept_adu"]) / 1e4, "-", color="gray",
             label=f"linear fit, R^2 = {lin['r_squared']:.6f}")
    ax1.set_xlabel("exposure time (s)")
    ax1.set_ylabel("signal (10^4 adu)")
    ax1.legend()
    ax2.plot(s / 1e4, lin["nonlinearity_pct"], "o-")
    ax2.axhline(0, color="gray", linewidth=0.8)
    ax2.set_xlabel("signal (10^4 adu)")
    ax2.set_ylabel("nonlinearity (%)")
    fig.suptitle("Linearity")
    return fig


def _fig_pixel_gain(r: dict, m: dict) -> plt.Figure:
    p = r["flat"]["pixel_level"]
    fig, axes = plt.subplots(2, 2, figsize=(11, 6.5), sharex="col")
    for col, (key, label, median) in enumerate((
        ("gain_e_per_adu", "gain (e-/ADU)", p["gain_median_e_per_adu"]),
        ("read_noise_e", "read noise (e-)", p["read_noise_median_e"]),
    )):
        values = _finite(m[key])
        lines = [(median, "blue", f"median {median:.4g}")] if median is not None else []
        if values.size:
            _hist_pair(axes[:, col], values, label, lines, _robust_range(values))
    axes[0, 0].set_title(f"Pixel-level gain ({p['n_flats']} flats at {p['exptime_s']:g} s)")
    axes[0, 1].set_title("Pixel-level read noise")
    return fig


def _fig_ptc(r: dict, m: dict) -> plt.Figure:
    ptc = r["flat"]["ptc"]
    x = np.asarray(ptc["signal_adu"])
    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    ax.plot(x, ptc["variance_adu2"], "o", label="flat pairs (bias-pair variance removed)")
    if ptc.get("gain_from_slope_e_per_adu"):
        ax.plot(x, ptc["slope_per_adu"] * x + ptc["intercept_adu2"], "-", color="gray",
                label=f"slope fit: g = {ptc['gain_from_slope_e_per_adu']:.4g} e-/ADU")
    ax.set_xlabel("mean signal (adu)")
    ax.set_ylabel("photon variance (adu^2)")
    ax.set_title("Photon transfer")
    ax.legend()
    return fig


def _fig_pixel_maps(r: dict, m: dict) -> plt.Figure:
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.5))
    for ax, key, label in zip(axes, ("gain_e_per_adu", "read_noise_e"), ("gain (e-/ADU)", "read noise (e-)"),
                              strict=True):
        shown = _display(m[key])
        finite = _finite(shown)
        lo, hi = np.percentile(finite, [1, 99]) if finite.size else (0, 1)
        im = ax.imshow(shown, origin="lower", vmin=lo, vmax=hi, cmap="viridis")
        fig.colorbar(im, ax=ax, label=label)
        ax.set_title(f"Pixel-level {label}")
    return fig


def _fig_emva_ptc(r: dict, m: dict) -> plt.Figure:
    e, c = r["emva1288"], r["emva1288_curves"]
    x, y = np.asarray(c["signal_adu"]), np.asarray(c["variance_adu2"])
    fit = np.asarray(c.get("ptc_in_fit", [False] * len(x)), dtype=bool)
    fig, ax = plt.subplots(figsize=(7, 4.8))
    ax.plot(x[~fit], y[~fit], "o", mfc="none", color="gray", label="outside the fit range")
    ax.plot(x[fit], y[fit], "o", color="C0", label="in the fit range")
    if e.get("system_gain_k_adu_per_e"):
        xs = np.linspace(0, x.max(), 50)
        ax.plot(xs, e["system_gain_k_adu_per_e"] * xs, "-", color="C1",
                label=f"fit through 0: 1/K = {e['gain_e_per_adu']:.4g} e-/ADU")
    lo, hi = e["fit_ranges"].get("ptc_adu", (None, None))
    if hi is not None:
        ax.axvspan(lo, hi, color="C0", alpha=0.08, label="fit range (0 to 70 % of saturation)")
        ax.axvline(hi / 0.7, color="C3", linestyle="--", label="saturation (variance peak)")
    ax.set_xlabel("mu_y - mu_y.dark (adu)")
    ax.set_ylabel("sigma_y^2 - sigma_y.dark^2 (adu^2)")
    ax.set_title("EMVA 1288 photon transfer")
    ax.legend(fontsize=8)
    return fig


def _fig_emva_linearity(r: dict, m: dict) -> plt.Figure:
    e, c = r["emva1288"], r["emva1288_curves"]
    x, y = np.asarray(c["linearity_x"]), np.asarray(c["signal_adu"])
    err = np.asarray(c["linearity_error_pct"])
    fit = np.asarray(c["linearity_in_fit"], dtype=bool)
    label = "photons per pixel" if e["fit_ranges"]["linearity_x"] == "photons" else "exposure time (s)"
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4.5))
    ax1.plot(x[~fit], y[~fit], "o", mfc="none", color="gray", label="outside the fit range")
    ax1.plot(x[fit], y[fit], "o", color="C0", label="in the fit range (5 % to 95 % of saturation)")
    lf = e["linearity_fit"]
    ax1.plot(x, lf["offset_adu"] + lf["slope_adu_per_x"] * x, "-", color="C1", label="weighted fit")
    ax1.set_xlabel(label)
    ax1.set_ylabel("mu_y - mu_y.dark (adu)")
    ax1.legend(fontsize=8)
    ax2.plot(y[fit], err[fit], "o-", color="C0")
    ax2.axhline(0, color="gray", linewidth=0.8)
    ax2.set_xlabel("mu_y - mu_y.dark (adu)")
    ax2.set_ylabel("linearity error (%)")
    ax2.set_title(f"LE min {e['linearity_error_min_pct']:.3g} %, max {e['linearity_error_max_pct']:.3g} %")
    fig.suptitle("EMVA 1288 linearity")
    return fig


def _fig_emva_snr(r: dict, m: dict) -> plt.Figure:
    e, c = r["emva1288"], r["emva1288_curves"]
    gain = e["gain_e_per_adu"]
    electrons = np.asarray(c["signal_adu"]) * gain
    snr = np.asarray(c["snr"])
    ok = (electrons > 0) & np.isfinite(snr) & (snr > 0) & np.asarray(c["below_saturation"], dtype=bool)
    fig, ax = plt.subplots(figsize=(7, 4.8))
    ax.loglog(electrons[ok], snr[ok], "o", label="measured (up to saturation)")
    model = np.asarray(c["snr_model_electrons"])
    dark_e2 = (e["temporal_dark_noise_adu"] * gain) ** 2
    ax.loglog(model, model / np.sqrt(dark_e2 + model), "-", label="linear model")
    ax.loglog(model, np.sqrt(model), ":", color="gray", label="ideal (shot noise only)")
    ax.axvline(e["saturation_capacity_e"], color="C3", linestyle="--", label="saturation capacity")
    ax.axvline(e["absolute_sensitivity_threshold_e"], color="C2", linestyle="--",
               label="absolute sensitivity threshold")
    ax.set_xlabel("signal (e-)")
    ax.set_ylabel("SNR")
    ax.set_title(f"EMVA 1288 SNR (SNR max {e['snr_max']:.4g}, DR {e['dynamic_range_db']:.3g} dB)")
    ax.legend(fontsize=8)
    return fig


def _fig_emva_nonuniformity(r: dict, m: dict) -> plt.Figure:
    e, c = r["emva1288"], r["emva1288_curves"]
    fig, axes = plt.subplots(2, 2, figsize=(11, 7))
    dark = m["emva_dsnu_dark_adu"]
    axes[0, 0].plot(c["dsnu_row_adu"], label="row means")
    axes[0, 0].plot(c["dsnu_col_adu"], label="column means")
    axes[0, 0].set_title(f"DSNU profiles (DSNU {_fmt(e.get('dsnu_e'))} e-)")
    axes[0, 0].set_xlabel("row / column")
    axes[0, 0].set_ylabel("mean dark (adu)")
    axes[0, 0].legend(fontsize=8)
    axes[1, 0].hist(_finite(dark).ravel(), bins=100, log=True)
    axes[1, 0].set_xlabel("mean dark (adu)")
    axes[1, 0].set_ylabel("pixels")
    if "emva_prnu_signal_adu" in m:
        axes[0, 1].plot(c["prnu_row_pct"], label="row means")
        axes[0, 1].plot(c["prnu_col_pct"], label="column means")
        axes[0, 1].set_title(f"PRNU profiles (PRNU {_fmt(e.get('prnu_pct'))} %)")
        axes[0, 1].set_xlabel("row / column")
        axes[0, 1].set_ylabel("signal / mean signal (%)")
        axes[0, 1].legend(fontsize=8)
        signal = m["emva_prnu_signal_adu"]
        axes[1, 1].hist(_finite(100 * signal / np.mean(signal)).ravel(), bins=100, log=True)
        axes[1, 1].set_xlabel("signal / mean signal (%)")
    fig.suptitle("EMVA 1288 spatial non-uniformity")
    return fig


# file stem -> (title, needed report path, needed maps, builder)
_PLOTS: list[tuple[str, str, tuple[str, ...], tuple[str, ...], Callable[[dict, dict], plt.Figure]]] = [
    ("fig01_bias_stability", "Bias stability (paper figure 1)", ("bias",), (), _fig_bias_stability),
    ("fig02_master_bias", "Master bias (figure 2)", ("bias",), ("master_bias_adu",), _fig_master_bias),
    ("fig03_bias_mean_hist", "Per-pixel bias mean (figure 3)", ("bias",), ("master_bias_adu",),
     _fig_mean_hist),
    ("fig04_bias_std_hist", "Per-pixel bias standard deviation (figure 4)", ("bias",), ("bias_std_adu",),
     _fig_std_hist),
    ("fig05_anomalous_density", "Anomalous-pixel density (figure 5)", ("bias",), ("anomalous_density",),
     _fig_density),
    ("fig06_mean_vs_std", "Mean versus standard deviation (figure 6)", ("bias",),
     ("master_bias_adu", "bias_std_adu"), _fig_mean_std),
    ("fig07_dark_current", "Dark current (figure 7)", ("dark",), (), _fig_dark_current),
    ("fig08_dark_histogram", "Dark signal histogram (figure 8)", ("dark",), ("dark_signal_adu",),
     _fig_dark_hist),
    ("fig09_linearity", "Linearity (figure 9)", ("flat", "linearity"), (), _fig_linearity),
    ("fig10_pixel_gain_read_noise", "Pixel-level gain and read noise (figure 10)", ("flat", "pixel_level"),
     ("gain_e_per_adu", "read_noise_e"), _fig_pixel_gain),
    ("fig11_photon_transfer", "Photon transfer curve", ("flat", "ptc"), (), _fig_ptc),
    ("fig12_pixel_maps", "Pixel-level gain and read-noise maps", ("flat", "pixel_level"),
     ("gain_e_per_adu", "read_noise_e"), _fig_pixel_maps),
    ("fig13_emva_photon_transfer", "EMVA 1288 photon transfer (fit range and saturation marked)",
     ("emva1288_curves", "signal_adu"), (), _fig_emva_ptc),
    ("fig14_emva_linearity", "EMVA 1288 linearity (fit range marked)", ("emva1288_curves", "linearity_error_pct"),
     (), _fig_emva_linearity),
    ("fig15_emva_snr", "EMVA 1288 SNR curve", ("emva1288_curves", "snr"), (), _fig_emva_snr),
    ("fig16_emva_nonuniformity", "EMVA 1288 DSNU and PRNU profiles and histograms",
     ("emva1288_curves", "dsnu_row_adu"), ("emva_dsnu_dark_adu",), _fig_emva_nonuniformity),
]


def _has(report: dict, path: tuple[str, ...]) -> bool:
    node: object = report
    for key in path:
        if not isinstance(node, dict) or key not in node:
            return False
        node = node[key]
    return True


def _fmt(value: object) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float):
        return f"{value:.6g}"
    return html.escape(str(value))


_SUMMARY_ROWS = [
    ("Bias: clipped mean of frame means", ("bias", "stability", "clipped_mean_adu"), "adu"),
    ("Bias: largest deviation of a frame mean", ("bias", "stability", "max_abs_deviation_adu"), "adu"),
    ("Pixels with anomalous mean (beyond +-5 sigma)", ("bias", "mean_map", "anomalous_fraction"), "fraction"),
    ("Pixels with anomalous std (above +5 sigma)", ("bias", "std_map", "anomalous_fraction"), "fraction"),
    ("Median per-pixel bias std", ("bias", "std_map", "median_adu"), "adu"),
    ("Dark current (clipped, typical pixel)", ("dark", "dark_current_e_per_pix_s"), "e-/pixel/s"),
    ("Dark current (mean of all pixels)", ("dark", "dark_current_mean_e_per_pix_s"), "e-/pixel/s"),
    ("Dark current", ("dark", "dark_current_adu_per_pix_s"), "adu/pixel/s"),
    ("Hot-pixel fraction", ("dark", "longest", "hot_pixel_fraction"), "fraction"),
    ("Linearity R^2", ("flat", "linearity", "r_squared"), ""),
    ("Largest |nonlinearity|", ("flat", "linearity", "max_abs_nonlinearity_pct"), "%"),
    ("Conventional gain", ("flat", "conventional", "gain_e_per_adu"), "e-/ADU"),
    ("Conventional gain standard error", ("flat", "conventional", "gain_sem_e_per_adu"), "e-/ADU"),
    ("Conventional read noise", ("flat", "conventional", "read_noise_e"), "e-"),
    ("Gain from photon-transfer slope", ("flat", "ptc", "gain_from_slope_e_per_adu"), "e-/ADU"),
    ("Pixel-level gain, median", ("flat", "pixel_level", "gain_median_e_per_adu"), "e-/ADU"),
    ("Pixel-level read noise, median", ("flat", "pixel_level", "read_noise_median_e"), "e-"),
    ("Pixels with var F <= var B (no gain)", ("flat", "pixel_level", "n_invalid_pixels"), "pixels"),
] + [(f"EMVA 1288: {key}", ("emva1288", key), unit) for key, unit in (
    ("gain_e_per_adu", "e-/ADU"), ("temporal_dark_noise_e", "e-"), ("temporal_dark_noise_adu", "adu"),
    ("dark_current_e_per_s", "e-/pixel/s"), ("saturation_capacity_e", "e-"), ("snr_max", ""),
    ("dynamic_range_db", "dB"), ("absolute_sensitivity_threshold_e", "e-"), ("quantum_efficiency_pct", "%"),
    ("linearity_error_min_pct", "%"), ("linearity_error_max_pct", "%"), ("dsnu_e", "e-"), ("prnu_pct", "%"))]


def _lookup(report: dict, path: tuple[str, ...]) -> object:
    node: object = report
    for key in path:
        node = node[key]  # type: ignore[index]
    return node


def _html(report: dict, plots: list[tuple[str, str]], fits_files: list[tuple[str, str]]) -> str:
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8"><title>Camera characterization</title>',
        "<style>body{font-family:sans-serif;max-width:1100px;margin:auto;padding:1em}"
        "table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:3px 8px;text-align:left}"
        "img{max-width:100%;display:block;margin:0.5em 0 1.5em}.warn{color:#a40}</style></head><body>",
        "<h1>Camera characterization</h1>",
        f"<p>{html.escape(report.get('software', ''))}; frame shape (ny, nx) "
        f"{_fmt(report.get('frame_shape_px'))}; central region rows {_fmt(report['region_px']['rows'])}, "
        f"columns {_fmt(report['region_px']['cols'])}; exposure time from "
        f"{html.escape(report.get('exptime_key') or 'the EMVA 1288 descriptor')}.</p>",
        "<h2>Inputs</h2><table><tr><th>set</th><th>files</th><th>frames</th>"
        "<th>frames per exposure time (s)</th></tr>",
    ]
    for name in ("bias", "dark", "flat") if not report["inputs"].get("emva") else ():
        info = report["inputs"].get(name)
        if info:
            parts.append(f"<tr><td>{name}</td><td>{info['n_files']}</td><td>{info['n_frames']}</td>"
                         f"<td>{_fmt(info.get('exptime_frames', ''))}</td></tr>")
        else:
            parts.append(f"<tr><td>{name}</td><td colspan=3>none usable</td></tr>")
    if report["inputs"].get("emva"):
        info = report["inputs"]["emva"]
        parts.append(f"<tr><td>EMVA 1288 descriptor</td><td colspan=3>{html.escape(info['descriptor'])}: "
                     f"{info['n_temporal_points']} temporal points, {info['bits']}-bit</td></tr>")
    parts.append("</table>")
    if report["not_measured"]:
        parts.append('<h2 class="warn">Not measured</h2><ul>')
        parts += [f"<li><b>{html.escape(n['measurement'])}</b>: {html.escape(n['reason'])}</li>"
                  for n in report["not_measured"]]
        parts.append("</ul>")
    if report["warnings"]:
        parts.append('<h2 class="warn">Warnings about the input</h2><ul>')
        parts += [f"<li>{html.escape(w)}</li>" for w in report["warnings"]]
        parts.append("</ul>")
    parts.append("<h2>Results</h2><table><tr><th>quantity</th><th>value</th><th>unit</th></tr>")
    for label, path, unit in _SUMMARY_ROWS:
        if _has(report, path):
            parts.append(f"<tr><td>{html.escape(label)}</td><td>{_fmt(_lookup(report, path))}</td>"
                         f"<td>{html.escape(unit)}</td></tr>")
    parts.append("</table><p>Thresholds of anomalous pixels use 3-sigma-clipped mean and sigma of each map. "
                 "Every figure, with units, is in <a href=\"report.json\">report.json</a>.</p>")
    if plots:
        parts.append("<h2>Plots</h2>")
        for name, title in plots:
            parts.append(f"<h3>{html.escape(title)}</h3>")
            parts.append(f'<img src="{html.escape(name)}" alt="{html.escape(title)}">')
    if fits_files:
        parts.append("<h2>FITS maps</h2><ul>")
        parts += [f'<li><a href="{html.escape(n)}">{html.escape(n)}</a>: {html.escape(w)}</li>'
                  for n, w in fits_files]
        parts.append("</ul>")
    parts.append("</body></html>")
    return "\n".join(parts)


def write_report(result: CharacterizationResult, outdir: str | os.PathLike) -> dict[str, Path]:
    """Write report.json, report.html, the PNG plots and the FITS maps of a characterization.

    Parameters
    ----------
    result : CharacterizationResult
        From :func:`rtnstream.calibration.characterize.characterize`.
    outdir : str or path-like
        Output folder, created if needed; files of the same names are overwritten.

    Returns
    -------
    dict of str to pathlib.Path
        Every written file by name (``report.json``, ``report.html``, ``fig*.png``, ``*.fits``).
    """
    out = Path(outdir)
    out.mkdir(parents=True, exist_ok=True)
    report = dict(result.report)
    maps = result.maps
    written: dict[str, Path] = {}
    fits_files = []
    for key, (name, bunit, what) in FITS_MAPS.items():
        if key in maps:
            _write_fits(out / name, key, maps[key], bunit, what, report)
            written[name] = out / name
            fits_files.append((name, f"{what} ({bunit or 'bit flags'})"))
    plots = []
    for stem, title, needs, needs_maps, build in _PLOTS:
        if _has(report, needs) and all(k in maps for k in needs_maps):
            fig = build(report, maps)
            name = f"{stem}.png"
            fig.tight_layout()
            fig.savefig(out / name, dpi=100)
            plt.close(fig)
            written[name] = out / name
            plots.append((name, title))
    report["files"] = {"plots": [p[0] for p in plots], "fits": [f[0] for f in fits_files]}
    (out / "report.json").write_text(json.dumps(jsonable(report), indent=2, allow_nan=False))
    written["report.json"] = out / "report.json"
    (out / "report.html").write_text(_html(report, plots, fits_files), encoding="utf-8")
    written["report.html"] = out / "report.html"
    return written
