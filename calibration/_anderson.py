"""Anderson-Darling normality statistic of every pixel of a band of bias frames (RTN candidates, s. 6.2).

Per pixel, over the frames of the band: values further than ``clip_sigma`` standard deviations from the
pixel mean are replaced by the mean (at most ``clip_iterations`` times; removes cosmic rays), a uniform
dither U(-0.5, 0.5) adu is added (so that integer values do not make a normal pixel look non-normal), and
A^2 is computed against a normal with the sample mean and variance (Stephens' case 3), then multiplied by
Stephens' small-sample factor ``1 + 0.75/n + 2.25/n^2``, so that 1.092 is its 1 % critical value.

The dither of pixel (y, x) in frame t depends only on (seed, y, x, t), never on how the frame was cut into
bands, so the statistic of a pixel does not change with the memory limit.
"""

from __future__ import annotations

import numpy as np
from scipy.special import ndtr

__all__ = ["anderson_darling_band", "A2_CRITICAL_1PC", "dither_rows"]

#: 1 % critical value of Stephens' modified A^2 for a normal with estimated mean and variance.
A2_CRITICAL_1PC = 1.092
_GROUP_BYTES = 64 * 1024**2


def dither_rows(seed: int, y0: int, n_rows: int, n_frames: int, n_cols: int) -> np.ndarray:
    """The dither U(-0.5, 0.5) adu of rows ``y0 .. y0 + n_rows - 1``.

    Returns
    -------
    numpy.ndarray, shape (n_frames, n_rows, n_cols), float64, adu
        Row ``y`` is drawn from a generator seeded with ``(seed, y)``.
    """
    out = np.empty((n_frames, n_rows, n_cols))
    for r in range(n_rows):
        out[:, r, :] = np.random.default_rng([int(seed), int(y0 + r)]).random((n_frames, n_cols)) - 0.5
    return out


def _clip(x: np.ndarray, clip_sigma: float, iterations: int) -> None:
    """Replace, in place, values further than ``clip_sigma`` sd from the pixel mean by the mean.

    ``x`` has shape (n_frames, n_pixels); only pixels whose extreme values are that far are touched.
    """
    todo = np.arange(x.shape[1])
    sub = x
    for _ in range(iterations):
        mean = sub.mean(axis=0)
        sd = sub.std(axis=0, ddof=1)
        far_px = (sub.max(axis=0) - mean > clip_sigma * sd) | (mean - sub.min(axis=0) > clip_sigma * sd)
        if not far_px.any():
            return
        todo, sub, mean, sd = todo[far_px], sub[:, far_px], mean[far_px], sd[far_px]
        np.copyto(sub, np.broadcast_to(mean, sub.shape), where=np.abs(sub - mean) > clip_sigma * sd)
        x[:, todo] = sub


def anderson_darling_band(
    data: np.ndarray, y0: int, *, seed: int = 0, clip_sigma: float = 5.0, clip_iterations: int = 3,
    max_bytes: int = 64 * 1024**2,
) -> np.ndarray:
    """Modified Anderson-Darling statistic of every pixel of a band.

    Parameters
    ----------
    data : numpy.ndarray, shape (n_frames, n_rows, n_cols), any real dtype, adu
        The frames' rows ``y0 .. y0 + n_rows - 1`` (n_frames >= 8).
    y0 : int
        Sensor row of the band's first row (seeds the dither).
    seed : int
        Dither seed.
    clip_sigma : float
        Clipping threshold, standard deviations.
    clip_iterations : int
        Most clipping iterations.
    max_bytes : int
        Working memory of the computation (rows are processed in groups that fit, of at most 64 MiB).

    Returns
    -------
    numpy.ndarray, shape (n_rows, n_cols), float64
        ``A^2 (1 + 0.75/n + 2.25/n^2)``; a pixel is non-normal at the 1 % level above ``A2_CRITICAL_1PC``.
        NaN for constant pixels.
    """
    if data.ndim != 3:
        raise ValueError(f"data must have shape (n_frames, n_rows, n_cols), got {data.shape}")
    n, n_rows, n_cols = data.shape
    if n < 8:
        raise ValueError(f"the Anderson-Darling test needs at least 8 frames, got {n}")
    # A^2 = -n - (1/n) sum_i (2i - 1) ln(Phi(z_i) (1 - Phi(z_{n+1-i}))), z sorted ascending
    weight = (2.0 * np.arange(1, n + 1) - 1.0) / n
    factor = 1.0 + 0.75 / n + 2.25 / n**2
    # groups of at most _GROUP_BYTES: larger ones only add cache misses
    rows_per_group = max(1, min(int(max_bytes), _GROUP_BYTES) // (4 * 8 * n * n_cols))
    out = np.empty((n_rows, n_cols))
    for r0 in range(0, n_rows, rows_per_group):
        r1 = min(r0 + rows_per_group, n_rows)
        x = data[:, r0:r1, :].reshape(n, -1).astype(np.float64)
        _clip(x, clip_sigma, clip_iterations)
        x += dither_rows(seed, y0 + r0, r1 - r0, n, n_cols).reshape(n, -1)
        x.sort(axis=0)
        mean = x.mean(axis=0)
        sd = x.std(axis=0, ddof=1)
        with np.errstate(divide="ignore", invalid="ignore"):
            x -= mean
            x /= sd
            phi = ndtr(x)
            np.subtract(1.0, phi[::-1], out=x)
            x *= phi
            s = weight @ np.log(x, out=x)
        out[r0:r1] = np.where(sd > 0, (-n - s) * factor, np.nan).reshape(r1 - r0, n_cols)
    return out
