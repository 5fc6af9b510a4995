"""Anderson-Darling normality statistic of every pixel of a band of bias frames (RTN candidates, s. 6.2).

Per pixel, over the frames of the band: values further than ``clip_sigma`` standard deviations from the
pixel mean are replaced by the mean of the other values (at most ``clip_iterations`` times; removes cosmic
rays), a uniform
dither U(-0.5, 0.5) adu is added (so that integer values do not make a normal pixel look non-normal), and
A^2 is computed against a normal with the sample mean and variance (Stephens' case 3), then multiplied by
Stephens' small-sample factor ``1 + 0.75/n + 2.25/n^2``, so that 1.092 is its 1 % critical value.

The dither of pixel (y, x) in frame t depends only on (seed, y, x, t) (:func:`dither`), never on how the
frame was cut into bands or groups, so the statistic of a pixel does not change with the memory limit.
"""

from __future__ import annotations

import numpy as np
from scipy.special import ndtr

__all__ = ["anderson_darling_band", "A2_CRITICAL_1PC", "dither"]

#: 1 % critical value of Stephens' modified A^2 for a normal with estimated mean and variance.
A2_CRITICAL_1PC = 1.092
_GROUP_BYTES = 64 * 1024**2
_BYTES_PER_VALUE = 32  # float64 values, their dither, Phi, and one temporary


def dither(seed: int, y: int, x0: int, x1: int, n_frames: int) -> np.ndarray:
    """The dither U(-0.5, 0.5) adu of pixels ``(y, x0 .. x1-1)`` in frames ``0 .. n_frames-1``.

    Row ``y`` has its own PCG64 stream (seeded with ``(seed, y)``) laid out pixel by pixel, ``n_frames``
    draws each; the stream is advanced to pixel ``x0`` (one 64-bit step per draw), so any column range is
    drawn without drawing the columns before it.

    Returns
    -------
    numpy.ndarray, shape (n_frames, x1 - x0), float64, adu
    """
    bits = np.random.PCG64([int(seed), int(y)])
    bits.advance(int(x0) * int(n_frames))
    return np.random.Generator(bits).random((int(x1) - int(x0), int(n_frames))).T - 0.5


def _group_dither(seed: int, y0: int, n_cols: int, p0: int, p1: int, n_frames: int) -> np.ndarray:
    """Dither of the band's flat pixels ``p0 .. p1-1`` (row-major, band starting at sensor row ``y0``)."""
    pieces = []
    p = p0
    while p < p1:
        r, x = divmod(p, n_cols)
        x_end = min(n_cols, x + p1 - p)
        pieces.append(dither(seed, y0 + r, x, x_end, n_frames))
        p += x_end - x
    return np.concatenate(pieces, axis=1)


def _clip(x: np.ndarray, clip_sigma: float, iterations: int) -> None:
    """Replace, in place, values further than ``clip_sigma`` sd from the pixel mean by the mean of the others.

    ``x`` has shape (n_frames, n_pixels). The replacement is the mean of the values kept (**ours**: the mean
    with the outlier in would itself sit several sd away for a large cosmic ray). Only pixels whose extreme
    values are that far are touched.
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
        far = np.abs(sub - mean) > clip_sigma * sd
        kept_mean = np.where(far, 0.0, sub).sum(axis=0) / (sub.shape[0] - far.sum(axis=0))
        np.copyto(sub, np.broadcast_to(kept_mean, sub.shape), where=far)
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
        Working memory of the computation (pixels are processed in groups that fit, of at most 64 MiB;
        at least one pixel, 32 bytes a frame).

    Returns
    -------
    numpy.ndarray, shape (n_rows, n_cols), float64
        ``A^2 (1 + 0.75/n + 2.25/n^2)``; a pixel is non-normal at the 1 % level above ``A2_CRITICAL_1PC``.
        NaN where the dithered values have zero spread (only for empty input).
    """
    if data.ndim != 3:
        raise ValueError(f"data must have shape (n_frames, n_rows, n_cols), got {data.shape}")
    n, n_rows, n_cols = data.shape
    if n < 8:
        raise ValueError(f"the Anderson-Darling test needs at least 8 frames, got {n}")
    # A^2 = -n - (1/n) sum_i (2i - 1) ln(Phi(z_i) (1 - Phi(z_{n+1-i}))), z sorted ascending
    weight = (2.0 * np.arange(1, n + 1) - 1.0) / n
    factor = 1.0 + 0.75 / n + 2.25 / n**2
    flat = data.reshape(n, n_rows * n_cols)
    # groups of at most _GROUP_BYTES: larger ones only add cache misses
    per_group = max(1, min(int(max_bytes), _GROUP_BYTES) // (_BYTES_PER_VALUE * n))
    out = np.empty(n_rows * n_cols)
    for p0 in range(0, n_rows * n_cols, per_group):
        p1 = min(p0 + per_group, n_rows * n_cols)
        x = flat[:, p0:p1].astype(np.float64)
        _clip(x, clip_sigma, clip_iterations)
        x += _group_dither(seed, y0, n_cols, p0, p1, n)
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
        out[p0:p1] = np.where(sd > 0, (-n - s) * factor, np.nan)
    return out.reshape(n_rows, n_cols)
