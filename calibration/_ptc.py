"""Photon-transfer formulas and small statistics used by the detector characterization."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = [
    "LinearFit",
    "clipped_stats",
    "fit_line",
    "pair_gain",
    "pixel_gain_maps",
]


@dataclass(frozen=True)
class LinearFit:
    """Least-squares line ``y = slope x + intercept`` with its coefficient of determination ``r_squared``."""

    slope: float
    intercept: float
    r_squared: float

    def __call__(self, x: np.ndarray) -> np.ndarray:
        return self.slope * np.asarray(x, dtype=float) + self.intercept


def fit_line(x: np.ndarray, y: np.ndarray) -> LinearFit:
    """Fit a straight line to ``(x, y)`` (two distinct ``x`` at least); ``r_squared`` NaN for constant y."""
    x = np.asarray(x, dtype=float)
    y = np.asarray(y, dtype=float)
    if x.shape != y.shape or len(np.unique(x)) < 2:
        raise ValueError(f"fit_line needs x and y of one shape with two distinct x, got {x.shape}, {y.shape}")
    slope, intercept = np.polyfit(x, y, 1)
    residual = y - (slope * x + intercept)
    total = np.sum((y - y.mean()) ** 2)
    r2 = 1 - np.sum(residual**2) / total if total > 0 else float("nan")
    return LinearFit(float(slope), float(intercept), float(r2))


_HISTOGRAM_MAX_BINS = 1 << 20  # integer-valued data spanning fewer values are clipped on their histogram


def _median(x: np.ndarray) -> float:
    """Exact median of a 1D array by one partition (``np.median`` partitions twice and copies)."""
    n = x.size
    k = n // 2
    part = np.partition(x, k)
    return float(part[k]) if n % 2 else 0.5 * (float(part[:k].max()) + float(part[k]))


def _clip_histogram(values: np.ndarray, sigma: float, maxiters: int) -> tuple[float, float, float]:
    """:func:`clipped_stats` of integer-valued data from their histogram (one pass over the pixels)."""
    low = int(values.min())
    counts = np.bincount((values - low).astype(np.int64)).astype(np.float64)
    levels = np.arange(counts.size, dtype=np.float64)
    lo, hi = 0, counts.size  # kept bins [lo, hi)
    for _ in range(maxiters + 1):
        c, v = counts[lo:hi], levels[lo:hi]
        n = c.sum()
        mean = float(np.dot(c, v) / n)
        std = float(np.sqrt(np.dot(c, (v - mean) ** 2) / n))
        cum = np.cumsum(c)
        k = int(n) // 2
        upper = v[np.searchsorted(cum, k + 1)]  # the (k+1)-th smallest value (0-based k)
        median = float(upper) if int(n) % 2 else 0.5 * (float(v[np.searchsorted(cum, k)]) + float(upper))
        if _ == maxiters:
            break
        # the same bounds as astropy's sigma_clip: values strictly outside median +- sigma std are clipped
        new_lo = max(lo, int(np.ceil(median - sigma * std)))
        new_hi = min(hi, int(np.floor(median + sigma * std)) + 1)
        if (new_lo, new_hi) == (lo, hi) or counts[new_lo:new_hi].sum() == n:
            break
        lo, hi = new_lo, new_hi
    return mean + low, median + low, std


def clipped_stats(values: np.ndarray, sigma: float = 3.0, maxiters: int = 5) -> tuple[float, float, float]:
    """Sigma-clipped ``(mean, median, std)`` of the finite values.

    The same clipping as astropy's ``sigma_clipped_stats`` (centre the median, scale the population
    standard deviation, values strictly beyond ``sigma`` of it dropped, until nothing changes or
    ``maxiters`` rounds), computed faster: integer-valued data (raw frames) on their histogram, other data
    with one partition per median.

    Parameters
    ----------
    values : numpy.ndarray, any shape
        Data, adu (NaN and inf are ignored).
    sigma : float
        Clipping threshold in standard deviations.
    maxiters : int
        Most clipping rounds.

    Returns
    -------
    mean, median, std : float
        Of the values kept, adu (std with ddof = 0).
    """
    data = np.asarray(values).ravel()
    if np.issubdtype(data.dtype, np.integer):
        integer = data.size > 0
    else:
        data = data.astype(np.float64, copy=False)
        data = data[np.isfinite(data)]
        integer = data.size > 0 and bool(np.all(data == np.floor(data)))
    if data.size == 0:
        return float("nan"), float("nan"), float("nan")
    if integer and float(data.max()) - float(data.min()) < _HISTOGRAM_MAX_BINS:
        return _clip_histogram(data, sigma, maxiters)
    x = data.astype(np.float64, copy=False)
    for _ in range(maxiters):
        median = _median(x)
        std = float(x.std())
        keep = (x >= median - sigma * std) & (x <= median + sigma * std)
        if keep.all():
            break
        x = x[keep]
    return float(x.mean()), _median(x), float(x.std())


def pair_gain(
    flat1: np.ndarray, flat2: np.ndarray, bias1: np.ndarray, bias2: np.ndarray
) -> tuple[float, float, float, float]:
    """Conventional photon-transfer gain from two flats and two biases of one region.

    ``g = ((<F1>-<B1>) + (<F2>-<B2>)) / (var(F1-F2) - var(B1-B2))``.

    Parameters
    ----------
    flat1, flat2, bias1, bias2 : numpy.ndarray, shape (ny, nx)
        The same region of two flats at one exposure and of two bias frames, adu.

    Returns
    -------
    gain_e_per_adu : float
        NaN when the flat-pair variance does not exceed the bias-pair variance.
    read_noise_adu : float
        ``sd(B1 - B2) / sqrt(2)``, adu.
    signal_adu : float
        Mean bias-subtracted signal of the two flats, adu.
    signal_variance_adu2 : float
        ``(var(F1-F2) - var(B1-B2)) / 2``: photon variance of one flat, adu^2.
    """
    f1, f2, b1, b2 = (np.asarray(a, dtype=np.float64) for a in (flat1, flat2, bias1, bias2))
    signal_sum = (f1.mean() - b1.mean()) + (f2.mean() - b2.mean())
    var_bias = np.var(b1 - b2, ddof=1)
    var_diff = np.var(f1 - f2, ddof=1) - var_bias
    gain = signal_sum / var_diff if var_diff > 0 else float("nan")
    return float(gain), float(np.sqrt(var_bias / 2)), float(signal_sum / 2), float(var_diff / 2)


def pixel_gain_maps(
    mean_flat_adu: np.ndarray, var_flat_adu2: np.ndarray, mean_bias_adu: np.ndarray, var_bias_adu2: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-pixel gain and read noise: ``g = (<F>-<B>) / (var F - var B)``, ``r = g sd B``.

    Parameters
    ----------
    mean_flat_adu, var_flat_adu2 : numpy.ndarray, shape (ny, nx)
        Per-pixel mean (adu) and variance (adu^2) over many flats at one exposure.
    mean_bias_adu, var_bias_adu2 : numpy.ndarray, shape (ny, nx)
        Per-pixel mean (adu) and variance (adu^2) over the bias stack.

    Returns
    -------
    gain_e_per_adu : numpy.ndarray, shape (ny, nx), float32
        NaN where invalid.
    read_noise_e : numpy.ndarray, shape (ny, nx), float32
        NaN where invalid.
    invalid : numpy.ndarray, shape (ny, nx), bool
        Pixels where ``var F <= var B`` (or the signal is not positive): no gain can be measured.
    """
    signal = mean_flat_adu - mean_bias_adu
    excess = var_flat_adu2 - var_bias_adu2
    invalid = (excess <= 0) | (signal <= 0) | ~np.isfinite(excess)
    with np.errstate(divide="ignore", invalid="ignore"):
        gain = np.where(invalid, np.nan, signal / np.where(invalid, 1.0, excess))
    read_noise = gain * np.sqrt(var_bias_adu2)
    return gain.astype(np.float32), read_noise.astype(np.float32), invalid
