"""Characterize a CMOS camera from bias, dark and flat stacks (the Mini-SiTian evaluation method).

See ALGORITHM.md section 8 and docs/characterize.md. Every measurement that cannot be made from the
given frames is listed with its reason in the report (``not_measured``) and logged; the others are made.
"""

from __future__ import annotations

import logging
import os
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field, replace

import numpy as np
from tqdm import tqdm

from rtnstream import __version__
from rtnstream.calibration import emva1288
from rtnstream.calibration._fitsread import FrameReader
from rtnstream.calibration._ptc import clipped_stats, fit_line, pair_gain, pixel_gain_maps
from rtnstream.calibration.stacks import DEFAULT_MAX_BYTES, FitsStack, inspect_fits

# DQ bits shared with the RTN calibration file (bits 1 and 2 are the RTN fitter's), re-exported here.
from rtnstream.kernels.cube import DQ_ANOMALOUS_MEAN, DQ_ANOMALOUS_STD, DQ_HOT

__all__ = [
    "DQ_ANOMALOUS_MEAN",
    "DQ_ANOMALOUS_STD",
    "DQ_HOT",
    "CharacterizationResult",
    "characterize",
    "characterize_emva",
]

log = logging.getLogger(__name__)


_SIGMA_ANOMALOUS = 5.0
_DENSITY_CELL_PX = 20
_SATURATED_FRACTION = 1e-3  # a flat with more than this fraction of region pixels at saturation is left out
_LEVEL_GAP_FRACTION = 0.01  # flats at one exposure whose mean signals differ by more are at different light levels
_QUANTIZATION_NOISE_ADU = float(np.sqrt(1 / 12))


@dataclass
class CharacterizationResult:
    """What :func:`characterize` measured.

    Attributes
    ----------
    report : dict
        JSON-ready figures, units in the key names; ``not_measured`` lists what could not be measured
        and why, ``warnings`` the problems found in the input.
    maps : dict of str to numpy.ndarray
        Per-pixel maps, each ``(ny, nx)`` unless said otherwise, present when measured:
        ``master_bias_adu``, ``bias_std_adu`` (float32), ``dq`` (uint16 bits ``DQ_*``),
        ``anomalous_density`` (int32 counts per 20 x 20 px cell, shape ``(ceil(ny/20), ceil(nx/20))``),
        ``gain_e_per_adu``, ``read_noise_e`` (float32, NaN where invalid), ``dark_signal_adu`` (float32,
        bias-subtracted mean of the longest darks).
    """

    report: dict
    maps: dict[str, np.ndarray] = field(default_factory=dict)


class _Notes:
    """Warnings and skipped measurements, logged and kept for the report."""

    def __init__(self) -> None:
        self.warnings: list[str] = []
        self.not_measured: list[dict[str, str]] = []

    def warn(self, message: str) -> None:
        log.warning("%s", message)
        self.warnings.append(message)

    def skip(self, measurement: str, reason: str) -> None:
        log.warning("%s not measured: %s", measurement, reason)
        self.not_measured.append({"measurement": measurement, "reason": reason})


def _names(paths: Sequence[os.PathLike | str], limit: int = 5) -> str:
    names = [os.fspath(p) for p in paths]
    more = f" and {len(names) - limit} more" if len(names) > limit else ""
    return ", ".join(names[:limit]) + more


def _open_sets(
    sets: dict[str, Sequence[str | os.PathLike]], notes: _Notes
) -> tuple[dict[str, FitsStack], tuple[int, int] | None]:
    """Inspect every file, keep those of the most common frame shape, build one stack per set."""
    infos = {name: [inspect_fits(p) for p in paths] for name, paths in sets.items() if paths}
    shapes: Counter[tuple[int, int]] = Counter()
    for items in infos.values():
        for info in items:
            shapes[info.shape] += info.n_frames
    if not shapes:
        return {}, None
    shape = shapes.most_common(1)[0][0]
    stacks = {}
    for name, items in infos.items():
        odd = [info for info in items if info.shape != shape]
        if odd:
            notes.warn(
                f"{name}: {len(odd)} file(s) whose frame shape differs from the common shape {shape} are "
                f"left out: " + "; ".join(f"{info.path} {info.shape}" for info in odd[:5])
                + (f" and {len(odd) - 5} more" if len(odd) > 5 else "")
            )
        kept = [info for info in items if info.shape == shape]
        if kept:
            stacks[name] = FitsStack(kept)
        else:
            notes.warn(f"{name}: no frame of the common shape {shape}; the {name} set is not used")
    return stacks, shape


def _exptimes(stack: FitsStack, name: str, key: str, notes: _Notes) -> tuple[FitsStack | None, np.ndarray]:
    """Exposure times (s) from header keyword ``key``; frames without a valid one are left out."""
    values = []
    for value in stack.header_values(key):
        try:
            t = float(value)  # type: ignore[arg-type]
        except (TypeError, ValueError):
            t = float("nan")
        values.append(t if np.isfinite(t) and t >= 0 else float("nan"))
    times = np.asarray(values)
    bad = np.flatnonzero(np.isnan(times))
    if len(bad):
        paths = sorted({stack.frames[i].path for i in bad})
        notes.warn(
            f"{name}: {len(bad)} frame(s) without a valid exposure time in header keyword {key!r} are left "
            f"out: {_names(paths)}"
        )
    good = np.flatnonzero(~np.isnan(times))
    if not len(good):
        return None, np.empty(0)
    return stack.subset(good), times[good]


def _central(shape: tuple[int, int], region_px: int) -> tuple[tuple[int, int], tuple[int, int]]:
    """Half-open row and column ranges of the central ``region_px`` square (the whole axis if smaller)."""
    out = []
    for n in shape:
        size = min(n, region_px)
        start = (n - size) // 2
        out.append((start, start + size))
    return out[0], out[1]


def _by_exptime(times: np.ndarray) -> dict[float, list[int]]:
    groups: dict[float, list[int]] = {}
    for i, t in enumerate(times):
        groups.setdefault(float(t), []).append(i)
    return dict(sorted(groups.items()))


def _mean_var_maps(
    stack: FitsStack, max_bytes: int, progress: bool, desc: str
) -> tuple[np.ndarray, np.ndarray]:
    """Per-pixel mean (adu) and variance (adu^2, ddof=1) over a stack, band by band in float64."""
    mean = np.empty(stack.shape, dtype=np.float64)
    var = np.empty(stack.shape, dtype=np.float64)
    reader = FrameReader(stack)
    step = stack.band_rows(max_bytes)
    for y0 in tqdm(range(0, stack.shape[0], step), desc=desc, disable=not progress, unit="band"):
        y1 = min(y0 + step, stack.shape[0])
        data = np.empty((stack.n_frames, y1 - y0, stack.shape[1]))
        for i in range(stack.n_frames):
            data[i] = reader.read_frame(i, rows=(y0, y1))
        mean[y0:y1] = data.mean(axis=0)
        var[y0:y1] = data.var(axis=0, ddof=1) if stack.n_frames > 1 else np.nan
    return mean, var


def _density(mask: np.ndarray, cell_px: int) -> np.ndarray:
    """Counts of true pixels per ``cell_px`` x ``cell_px`` cell, shape ``(ceil(ny/cell), ceil(nx/cell))``."""
    ny, nx = mask.shape
    ncy, ncx = -(-ny // cell_px), -(-nx // cell_px)
    y, x = np.nonzero(mask)
    counts = np.bincount((y // cell_px) * ncx + x // cell_px, minlength=ncy * ncx)
    return counts.reshape(ncy, ncx).astype(np.int32)


def _measure_bias(
    bias: FitsStack, rows: tuple[int, int], cols: tuple[int, int], max_bytes: int, progress: bool,
    maps: dict[str, np.ndarray],
) -> dict:
    mean, var = _mean_var_maps(bias, max_bytes, progress, "bias stack")
    std = np.sqrt(var)
    frame_means = np.array([
        clipped_stats(frame)[0]
        for frame in FrameReader(bias).iter_frames(rows=rows, cols=cols, progress=progress,
                                                   desc="bias stability")
    ])
    overall, _, _ = clipped_stats(frame_means)
    m_mean, m_median, m_sigma = clipped_stats(mean)
    s_mean, s_median, s_sigma = clipped_stats(std)
    low = mean < m_mean - _SIGMA_ANOMALOUS * m_sigma
    high = mean > m_mean + _SIGMA_ANOMALOUS * m_sigma
    noisy = std > s_mean + _SIGMA_ANOMALOUS * s_sigma
    dq = np.zeros(bias.shape, dtype=np.uint16)
    dq[low | high] |= DQ_ANOMALOUS_MEAN
    dq[noisy] |= DQ_ANOMALOUS_STD
    maps["master_bias_adu"] = mean.astype(np.float32)
    maps["bias_std_adu"] = std.astype(np.float32)
    maps["dq"] = dq
    maps["anomalous_density"] = _density(low | high | noisy, _DENSITY_CELL_PX)
    n_pix = mean.size
    return {
        "stability": {
            "frame_mean_adu": frame_means.tolist(),
            "clipped_mean_adu": overall,
            "max_abs_deviation_adu": float(np.max(np.abs(frame_means - overall))),
        },
        "mean_map": {
            "clipped_mean_adu": m_mean,
            "median_adu": m_median,
            "clipped_sigma_adu": m_sigma,
            "low_threshold_adu": m_mean - _SIGMA_ANOMALOUS * m_sigma,
            "high_threshold_adu": m_mean + _SIGMA_ANOMALOUS * m_sigma,
            "low_fraction": float(low.sum() / n_pix),
            "high_fraction": float(high.sum() / n_pix),
            "anomalous_fraction": float((low | high).sum() / n_pix),
        },
        "std_map": {
            "clipped_mean_adu": s_mean,
            "median_adu": s_median,
            "clipped_sigma_adu": s_sigma,
            "high_threshold_adu": s_mean + _SIGMA_ANOMALOUS * s_sigma,
            "anomalous_fraction": float(noisy.sum() / n_pix),
        },
        "anomalous_any_fraction": float((low | high | noisy).sum() / n_pix),
        "density_cell_px": _DENSITY_CELL_PX,
        "density_max_per_cell": int(maps["anomalous_density"].max()),
    }


def _saturation_level(flat: FitsStack, saturation_adu: float | None) -> float | None:
    if saturation_adu is not None:
        return float(saturation_adu)
    header_value = flat.headers[0].get("SATURATE")
    if header_value is not None:
        return float(header_value)
    if np.issubdtype(flat.dtype, np.integer):
        return float(np.iinfo(flat.dtype).max)
    return None


def split_levels(indices: Sequence[int], signal_adu: np.ndarray) -> list[list[int]]:
    """Split flats of one exposure time into groups of one light level.

    Parameters
    ----------
    indices : sequence of int
        Frame indices of one exposure time.
    signal_adu : numpy.ndarray, shape (n_frames,)
        Mean bias-subtracted signal of every frame, adu.

    Returns
    -------
    list of list of int
        Groups, brightest last; consecutive levels more than 1 % (plus 1 adu) apart start a new group.
    """
    order = sorted(indices, key=lambda i: signal_adu[i])
    groups = [[order[0]]] if order else []
    for i in order[1:]:
        last = signal_adu[groups[-1][-1]]
        if signal_adu[i] - last > _LEVEL_GAP_FRACTION * abs(last) + 1.0:
            groups.append([i])
        else:
            groups[-1].append(i)
    return [sorted(g) for g in groups]


def _largest_level(idx: list[int], signal: np.ndarray, t: float, notes: _Notes) -> list[int]:
    """The flats of the most populated light level at one exposure time; warns when there are several."""
    levels = split_levels(idx, signal)
    if len(levels) == 1:
        return idx
    keep = max(levels, key=len)
    notes.warn(f"flat: the {len(idx)} flats at {t:g} s are at {len(levels)} light levels (mean signals "
               f"{', '.join(f'{signal[g].mean():.6g}' for g in levels)} adu); only the {len(keep)} at "
               f"{signal[keep].mean():.6g} adu are used for the methods that group flats by exposure time")
    return keep


def _measure_flats(
    flat: FitsStack, times: np.ndarray, bias: FitsStack, bias_var: np.ndarray, master_bias: np.ndarray,
    rows: tuple[int, int], cols: tuple[int, int], opts: dict, notes: _Notes, maps: dict[str, np.ndarray],
) -> tuple[dict, float | None]:
    """Linearity, photon transfer and pixel-level maps; returns the report section and the gain (e-/ADU)."""
    out: dict = {}
    level = _saturation_level(flat, opts["saturation_adu"])
    bias_region = master_bias[rows[0]:rows[1], cols[0]:cols[1]].astype(np.float64)
    signal = np.empty(flat.n_frames)
    saturated = np.zeros(flat.n_frames, dtype=bool)
    for i, frame in enumerate(FrameReader(flat).iter_frames(rows=rows, cols=cols, progress=opts["progress"],
                                               desc="flat regions")):
        signal[i] = float(np.mean(frame - bias_region))
        if level is not None:
            saturated[i] = np.mean(frame >= level) > _SATURATED_FRACTION
    groups = _by_exptime(times)
    if saturated.any():
        hit = sorted({float(times[i]) for i in np.flatnonzero(saturated)})
        notes.warn(
            f"flat: {int(saturated.sum())} saturated frame(s) (more than {100 * _SATURATED_FRACTION:g} % of "
            f"the central region at or above {level:g} adu) at exposure time(s) {hit} s are left out: "
            f"{_names(sorted({flat.frames[i].path for i in np.flatnonzero(saturated)}))}"
        )
    usable = {t: [i for i in idx if not saturated[i]] for t, idx in groups.items()}
    usable = {t: _largest_level(idx, signal, t, notes) for t, idx in usable.items() if idx}
    out["saturation_level_adu"] = level
    out["n_saturated_frames"] = int(saturated.sum())
    out["exptime_frames"] = {f"{t:g}": len(idx) for t, idx in groups.items()}

    # Linearity: mean bias-subtracted signal of the central region versus exposure time.
    t_lin = np.array(list(usable))
    if len(t_lin) >= 3:
        s_lin = np.array([signal[idx].mean() for idx in usable.values()])
        line = fit_line(t_lin, s_lin)
        fitted = line(t_lin)
        nonlin = 100 * (s_lin - fitted) / fitted
        out["linearity"] = {
            "exptime_s": t_lin.tolist(),
            "signal_adu": s_lin.tolist(),
            "slope_adu_per_s": line.slope,
            "intercept_adu": line.intercept,
            "r_squared": line.r_squared,
            "nonlinearity_pct": nonlin.tolist(),
            "max_abs_nonlinearity_pct": float(np.max(np.abs(nonlin))),
        }
    else:
        notes.skip("linearity",
                   f"needs unsaturated flats at 3 or more exposure times, got {t_lin.tolist()} s")

    # Photon transfer over exposures: one flat pair per exposure time with two or more flats.
    n_bias_pairs = bias.n_frames // 2
    b0, b1 = (FrameReader(bias).read_frame(k, rows=rows, cols=cols) for k in (0, 1))
    ptc_points = []
    for t, idx in usable.items():
        if len(idx) >= 2:
            f0, f1 = (FrameReader(flat).read_frame(k, rows=rows, cols=cols) for k in idx[:2])
            _, _, mean_adu, var_adu2 = pair_gain(f0, f1, b0, b1)
            ptc_points.append((t, mean_adu, var_adu2))
    if ptc_points:
        out["ptc"] = {
            "exptime_s": [p[0] for p in ptc_points],
            "signal_adu": [p[1] for p in ptc_points],
            "variance_adu2": [p[2] for p in ptc_points],
        }
    if len(ptc_points) >= 3:
        line = fit_line(np.array([p[1] for p in ptc_points]), np.array([p[2] for p in ptc_points]))
        out["ptc"]["slope_per_adu"] = line.slope
        out["ptc"]["intercept_adu2"] = line.intercept
        out["ptc"]["r_squared"] = line.r_squared
        out["ptc"]["gain_from_slope_e_per_adu"] = 1 / line.slope if line.slope > 0 else None
    else:
        notes.skip("photon-transfer slope gain",
                   f"needs flat pairs at 3 or more exposure times, got {len(ptc_points)}")

    # Conventional gain and read noise at the exposure time with the most flats.
    pairs = {t: idx for t, idx in usable.items() if len(idx) >= 2}
    gain = None
    if not pairs:
        notes.skip("conventional gain and read noise", "needs two unsaturated flats at one exposure time")
    else:
        most = max(len(idx) for idx in pairs.values())
        tied = [t for t, idx in pairs.items() if len(idx) == most]
        t_conv = tied[len(tied) // 2]
        idx = pairs[t_conv]
        n_pairs = max(1, min(len(idx) // 2, n_bias_pairs, opts["max_pairs"]))
        results = []
        for k in range(n_pairs):
            f0, f1 = (FrameReader(flat).read_frame(i, rows=rows, cols=cols) for i in idx[2 * k:2 * k + 2])
            bb0, bb1 = (FrameReader(bias).read_frame(i, rows=rows, cols=cols) for i in (2 * k, 2 * k + 1))
            results.append(pair_gain(f0, f1, bb0, bb1))
        gains = np.array([r[0] for r in results])
        rn_adu = np.array([r[1] for r in results])
        if not np.all(np.isfinite(gains)):
            notes.skip("conventional gain and read noise",
                       f"flat-pair variance does not exceed bias-pair variance at {t_conv:g} s")
        else:
            gain = float(gains.mean())
            if rn_adu.mean() < _QUANTIZATION_NOISE_ADU:
                notes.warn(f"conventional read noise {rn_adu.mean():.3g} adu is below the quantization noise "
                           f"{_QUANTIZATION_NOISE_ADU:.3g} adu: the bias frames are not independent reads")
            out["conventional"] = {
                "exptime_s": t_conv,
                "n_pairs": n_pairs,
                "signal_adu": float(np.mean([r[2] for r in results])),
                "gain_e_per_adu": gain,
                "gain_sem_e_per_adu": float(gains.std(ddof=1) / np.sqrt(n_pairs)) if n_pairs > 1 else None,
                "read_noise_adu": float(rn_adu.mean()),
                "read_noise_e": float(gain * rn_adu.mean()),
            }

    # Pixel-level gain and read noise from many flats at one exposure time.
    best_t, best_idx = max(usable.items(), key=lambda item: len(item[1]), default=(None, []))
    if len(best_idx) < opts["min_pixel_flats"]:
        notes.skip("pixel-level gain and read noise",
                   f"needs {opts['min_pixel_flats']} or more unsaturated flats at one exposure time, "
                   f"the most is {len(best_idx)}")
    elif bias.n_frames < opts["min_pixel_flats"]:
        notes.skip("pixel-level gain and read noise",
                   f"needs {opts['min_pixel_flats']} or more bias frames for the per-pixel bias variance, got "
                   f"{bias.n_frames} (a {bias.n_frames}-frame variance is mostly its own noise)")
    else:
        mean_f, var_f = _mean_var_maps(flat.subset(best_idx), opts["max_bytes"], opts["progress"],
                                       f"flats at {best_t:g} s")
        gmap, rmap, invalid = pixel_gain_maps(mean_f, var_f, master_bias.astype(np.float64), bias_var)
        maps["gain_e_per_adu"] = gmap
        maps["read_noise_e"] = rmap
        # A variance of n frames scatters by sqrt(2 / (n - 1)); the gain map inherits it from var F and var B.
        n_f, n_b = len(best_idx), bias.n_frames
        estimate_noise = float(np.sqrt(2 / (n_f - 1) + 2 / (n_b - 1)))
        out["pixel_level"] = {
            "exptime_s": best_t,
            "n_flats": len(best_idx),
            "n_bias": bias.n_frames,
            "gain_median_e_per_adu": float(np.nanmedian(gmap)) if not invalid.all() else None,
            "read_noise_median_e": float(np.nanmedian(rmap)) if not invalid.all() else None,
            "n_invalid_pixels": int(invalid.sum()),
            "invalid_fraction": float(invalid.mean()),
            "map_estimate_noise_frac": estimate_noise,
            "map_spread_frac": (float(np.nanstd(gmap) / np.nanmedian(gmap)) if not invalid.all() else None),
        }
        if invalid.any():
            notes.warn(f"pixel-level gain: {int(invalid.sum())} pixel(s) with var F <= var B have no gain "
                       f"(NaN in the maps)")
    return out, gain


def _measure_darks(
    dark: FitsStack, times: np.ndarray, master_bias: np.ndarray, bias_std: np.ndarray, gain: float | None,
    rows: tuple[int, int], cols: tuple[int, int], opts: dict, notes: _Notes, maps: dict[str, np.ndarray],
) -> dict:
    bias_region = master_bias[rows[0]:rows[1], cols[0]:cols[1]].astype(np.float64)
    clipped = np.empty(dark.n_frames)
    plain = np.empty(dark.n_frames)
    for i, frame in enumerate(FrameReader(dark).iter_frames(rows=rows, cols=cols, progress=opts["progress"],
                                               desc="dark regions")):
        diff = frame - bias_region
        clipped[i] = clipped_stats(diff)[0]
        plain[i] = float(diff.mean())
    groups = _by_exptime(times)
    t = np.array(list(groups))
    s_clip = np.array([clipped[idx].mean() for idx in groups.values()])
    s_plain = np.array([plain[idx].mean() for idx in groups.values()])
    out: dict = {"exptime_s": t.tolist(), "signal_adu": s_clip.tolist(), "signal_mean_adu": s_plain.tolist(),
                 "gain_used_e_per_adu": gain}
    if gain is not None:
        out["signal_e_per_pix"] = (s_clip * gain).tolist()
    if len(t) >= 2:
        line = fit_line(t, s_clip)
        line_plain = fit_line(t, s_plain)
        out["dark_current_adu_per_pix_s"] = line.slope
        if line.slope < 0:
            notes.warn(f"dark current is negative ({line.slope:.3g} adu/pixel/s): the darks do not match the bias "
                       "or the exposure times are wrong")
        out["intercept_adu"] = line.intercept
        out["r_squared"] = line.r_squared
        if gain is not None:
            out["dark_current_e_per_pix_s"] = line.slope * gain
            out["dark_current_mean_e_per_pix_s"] = line_plain.slope * gain
        else:
            notes.skip("dark current in electrons", "no gain: give flats or --gain-e-per-adu")
    else:
        notes.skip("dark current", f"needs darks at 2 or more exposure times, got {t.tolist()} s")

    t_long = float(t[-1])
    idx = groups[t_long]
    mean_d, _ = _mean_var_maps(dark.subset(idx), opts["max_bytes"], opts["progress"],
                               f"darks at {t_long:g} s")
    signal_map = mean_d - master_bias
    maps["dark_signal_adu"] = signal_map.astype(np.float32)
    d_mean, d_median, d_sigma = clipped_stats(signal_map)
    hot = (signal_map > d_mean + _SIGMA_ANOMALOUS * d_sigma) & (
        signal_map > _SIGMA_ANOMALOUS * bias_std / np.sqrt(len(idx))
    )
    if t_long > 0:
        maps["dq"][hot] |= DQ_HOT
    out["longest"] = {
        "exptime_s": t_long,
        "n_frames": len(idx),
        "clipped_mean_adu": d_mean,
        "median_adu": d_median,
        "clipped_sigma_adu": d_sigma,
        "mean_adu": float(signal_map.mean()),
        "hot_threshold_adu": d_mean + _SIGMA_ANOMALOUS * d_sigma,
        "hot_pixel_fraction": float(hot.mean()) if t_long > 0 else None,
    }
    return out


def _max_adu(flat: FitsStack, saturation_adu: float | None) -> float | None:
    """Largest value the flats can reach: ``--saturation-adu``, else DATAMAX or SATURATE, else the integer maximum."""
    if saturation_adu is not None:
        return float(saturation_adu)
    for key in ("DATAMAX", "SATURATE"):
        if flat.headers[0].get(key) is not None:
            return float(flat.headers[0][key])
    return float(np.iinfo(flat.dtype).max) if np.issubdtype(flat.dtype, np.integer) else None


def _measure_emva(
    flat: FitsStack, flat_times: np.ndarray, dark: FitsStack | None, dark_times: np.ndarray | None,
    bias: FitsStack, opts: dict, notes: _Notes,
) -> emva1288.EmvaResult:
    """The EMVA 1288 analysis of FITS stacks: one temporal point per exposure time and light level."""
    progress = opts["progress"]
    flats, biases = FrameReader(flat), FrameReader(bias)
    darks = FrameReader(dark) if dark is not None else None
    frame_means = np.array([f.mean() for f in flats.iter_frames(progress=progress, desc="EMVA flat levels")])
    dark_groups = _by_exptime(dark_times) if dark is not None else {}
    points, from_bias = [], 0
    groups = [(t, level) for t, idx in _by_exptime(flat_times).items() for level in split_levels(idx, frame_means)]
    photons_key = opts["photons_key"]
    for t, idx in groups:
        if len(idx) < 2:
            continue
        pair = [flats.read_frame(i) for i in idx[:2]]
        if len(dark_groups.get(t, [])) >= 2:
            dark_pair = [darks.read_frame(i) for i in dark_groups[t][:2]]
        else:
            dark_pair, from_bias = [biases.read_frame(0), biases.read_frame(1)], from_bias + 1
        photons = flat.headers[idx[0]].get(photons_key) if photons_key else None
        points.append(emva1288.temporal_point(t, None if photons is None else float(photons), pair, dark_pair))
    if from_bias:
        notes.warn(f"EMVA 1288: {from_bias} temporal point(s) have no two darks at their exposure time; the first "
                   "two bias frames stand in (dark current is then not separated from the signal)")
    if len({p.photons is None for p in points}) > 1:
        notes.warn(f"EMVA 1288: header keyword {photons_key!r} is on some flats only; photon counts are not used")
        points = [replace(p, photons=None) for p in points]
    # Spatial stacks: the largest flat group, and the darks at its exposure time (else the bias stack).
    bright = dark_stack = None
    big_t, big = max(groups, key=lambda g: len(g[1]), default=(None, []))
    if len(big) > 2:
        frames = FrameReader(flat.subset(big)).iter_frames(progress=progress, desc="EMVA bright stack")
        bright = emva1288.spatial_stack(frames, big_t)
        if len(dark_groups.get(big_t, [])) > 2:
            frames = FrameReader(dark.subset(dark_groups[big_t])).iter_frames(progress=progress,
                                                                             desc="EMVA dark stack")
            dark_stack = emva1288.spatial_stack(frames, big_t)
        elif bias.n_frames > 2:
            dark_stack = emva1288.spatial_stack(biases.iter_frames(progress=progress, desc="EMVA dark stack"), 0.0)
            if big_t > 0:
                notes.warn(f"EMVA 1288: no darks at {big_t:g} s; the DSNU comes from the bias stack and leaves "
                           "out the dark-current non-uniformity")
    return emva1288.analyze(points, dark_stack, bright, max_adu=_max_adu(flat, opts["saturation_adu"]))


def _stack_summary(stack: FitsStack, times: np.ndarray | None = None) -> dict:
    summary = {"n_files": len(stack.files), "n_frames": stack.n_frames, "dtype": str(stack.dtype)}
    if times is not None:
        summary["exptime_frames"] = {f"{t:g}": len(idx) for t, idx in _by_exptime(times).items()}
    return summary


def characterize(
    bias: Sequence[str | os.PathLike] | None = None,
    dark: Sequence[str | os.PathLike] | None = None,
    flat: Sequence[str | os.PathLike] | None = None,
    *,
    exptime_key: str = "EXPTIME",
    region_px: int = 2000,
    max_bytes: int = DEFAULT_MAX_BYTES,
    gain_e_per_adu: float | None = None,
    saturation_adu: float | None = None,
    photons_key: str | None = "PHOTONS",
    min_pixel_flats: int = 10,
    max_pairs: int = 10,
    progress: bool = False,
) -> CharacterizationResult:
    """Measure bias stability, anomalous pixels, dark current, linearity, gain and read noise.

    Parameters
    ----------
    bias, dark, flat : sequence of str or path-like, optional
        FITS files of each set (2D frames or 3D cubes); any set may be missing or empty.
    exptime_key : str
        Header keyword of the exposure time, s.
    region_px : int
        Side of the central square used for frame means and photon transfer, pixels (the whole axis
        where the frame is smaller).
    max_bytes : int
        Memory budget of one row band of a stack, bytes.
    gain_e_per_adu : float, optional
        Gain used to express dark current in electrons when no conventional gain can be measured, e-/ADU.
    saturation_adu : float, optional
        Saturation level of the flats, adu (default: header ``SATURATE``, else the largest value of an
        integer pixel type; none for float data).
    photons_key : str, optional
        Header keyword of the flats' mean photon count per pixel, for the EMVA 1288 quantum efficiency
        and linearity against photons (``None``: not read).
    min_pixel_flats : int
        Fewest flats at one exposure time (and bias frames) for the pixel-level gain and read-noise maps.
    max_pairs : int
        Most flat / bias pairs averaged for the conventional gain.
    progress : bool
        Show tqdm progress bars on stderr.

    Returns
    -------
    CharacterizationResult

    Raises
    ------
    FrameError
        A file cannot be read as FITS (the message names it).
    ValueError
        ``region_px``, ``max_bytes``, ``min_pixel_flats`` or ``max_pairs`` is not positive.
    """
    for name, value in (("region_px", region_px), ("max_bytes", max_bytes),
                        ("min_pixel_flats", min_pixel_flats), ("max_pairs", max_pairs)):
        if value < 1:
            raise ValueError(f"{name} must be >= 1, got {value}")
    if gain_e_per_adu is not None and not gain_e_per_adu > 0:
        raise ValueError(f"gain_e_per_adu must be positive, got {gain_e_per_adu}")
    notes = _Notes()
    opts = {"max_bytes": max_bytes, "progress": progress, "saturation_adu": saturation_adu,
            "min_pixel_flats": min_pixel_flats, "max_pairs": max_pairs, "photons_key": photons_key}
    maps: dict[str, np.ndarray] = {}
    stacks, shape = _open_sets({"bias": bias or [], "dark": dark or [], "flat": flat or []}, notes)
    report: dict = {"software": f"rtnstream {__version__}", "exptime_key": exptime_key,
                    "frame_shape_px": list(shape) if shape else None, "inputs": {}}
    for name in ("bias", "dark", "flat"):
        if name not in stacks:
            notes.warn(f"no usable {name} frames given")

    b = stacks.get("bias")
    if b is not None:
        report["inputs"]["bias"] = _stack_summary(b)
    times = {}
    for name in ("dark", "flat"):
        if name in stacks:
            stacks[name], times[name] = _exptimes(stacks[name], name, exptime_key, notes)
            if stacks[name] is not None:
                report["inputs"][name] = _stack_summary(stacks[name], times[name])

    rows, cols = _central(shape, region_px) if shape else ((0, 0), (0, 0))
    report["region_px"] = {"rows": list(rows), "cols": list(cols)}
    if b is None or b.n_frames < 2:
        reason = "needs 2 or more bias frames"
        for what in ("bias stability and maps", "dark current", "linearity",
                     "conventional gain and read noise", "pixel-level gain and read noise"):
            notes.skip(what, reason)
        return _finish(report, maps, notes)

    report["bias"] = _measure_bias(b, rows, cols, max_bytes, progress, maps)
    master_bias = maps["master_bias_adu"]
    bias_std = maps["bias_std_adu"].astype(np.float64)
    gain = None
    gain_source = None
    f = stacks.get("flat")
    if f is not None:
        report["flat"], gain = _measure_flats(f, times["flat"], b, bias_std**2, master_bias, rows, cols, opts,
                                              notes, maps)
        gain_source = "conventional" if gain is not None else None
    else:
        for what in ("linearity", "conventional gain and read noise", "pixel-level gain and read noise"):
            notes.skip(what, "no usable flat frames")
    if f is not None:
        d = stacks.get("dark")
        emva = _measure_emva(f, times["flat"], d, times.get("dark") if d is not None else None, b, opts, notes)
        report["emva1288"] = emva.section
        report["emva1288_curves"] = emva.curves
        maps.update({f"emva_{k}": v.astype(np.float32) for k, v in emva.maps.items()})
    if gain is None and gain_e_per_adu is not None:
        gain, gain_source = float(gain_e_per_adu), "given"
    report["gain_used_e_per_adu"] = gain
    report["gain_source"] = gain_source
    d = stacks.get("dark")
    if d is not None:
        report["dark"] = _measure_darks(d, times["dark"], master_bias, bias_std, gain, rows, cols, opts,
                                        notes, maps)
    else:
        notes.skip("dark current", "no usable dark frames")
    return _finish(report, maps, notes)


def characterize_emva(descriptor: str | os.PathLike, *, progress: bool = False) -> CharacterizationResult:
    """Run the EMVA 1288 analysis on a data set described by the standard's ``EMVA1288_Data.txt``.

    Parameters
    ----------
    descriptor : str or path-like
        The descriptor file; its images (PNG or TIFF) are read relative to its folder.
    progress : bool
        Show a tqdm progress bar on stderr.

    Returns
    -------
    CharacterizationResult
        ``report["emva1288"]`` holds the figures; the EMVA warnings and skipped figures are also in the
        report's ``warnings`` and ``not_measured``; maps ``emva_dsnu_dark_adu`` and ``emva_prnu_signal_adu``.

    Raises
    ------
    FileNotFoundError, ValueError, ImportError
        From :func:`rtnstream.calibration.emva_reader.load_emva` (the message names the file).
    """
    from rtnstream.calibration.emva_reader import load_emva

    data = load_emva(descriptor, progress=progress)
    desc = data.descriptor
    emva = emva1288.analyze(data.points, data.dark_spatial, data.bright_spatial, max_adu=data.max_adu)
    notes = _Notes()
    for message in data.warnings + emva.section["warnings"]:
        notes.warn(f"EMVA 1288: {message}")
    for item in emva.section["not_measured"]:
        notes.skip(f"EMVA 1288 {item['measurement']}", item["reason"])
    report = {
        "software": f"rtnstream {__version__}",
        "exptime_key": None,
        "frame_shape_px": [desc.height, desc.width],
        "region_px": {"rows": [0, desc.height], "cols": [0, desc.width]},
        "inputs": {"emva": {"descriptor": str(desc.path), "version": desc.version, "bits": desc.bits,
                            "n_temporal_points": len(data.points),
                            "n_dark_spatial": data.dark_spatial.n_frames if data.dark_spatial else 0,
                            "n_bright_spatial": data.bright_spatial.n_frames if data.bright_spatial else 0}},
        "emva1288": emva.section,
        "emva1288_curves": emva.curves,
    }
    maps = {f"emva_{k}": v.astype(np.float32) for k, v in emva.maps.items()}
    return _finish(report, maps, notes)


def _finish(report: dict, maps: dict[str, np.ndarray], notes: _Notes) -> CharacterizationResult:
    if "dq" in maps:
        dq = maps["dq"]
        report["dq_bits"] = {"ANOMALOUS_MEAN": DQ_ANOMALOUS_MEAN, "ANOMALOUS_STD": DQ_ANOMALOUS_STD,
                             "HOT": DQ_HOT}
        report["dq_counts"] = {name: int(np.count_nonzero(dq & bit))
                               for name, bit in report["dq_bits"].items()}
    report["not_measured"] = notes.not_measured
    report["warnings"] = notes.warnings
    return CharacterizationResult(report, maps)
