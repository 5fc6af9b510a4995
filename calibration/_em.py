"""Batched maximum-likelihood fit of the three-level RTN model to many pixels at once (EM, observed info).

The model of ALGORITHM.md section 1, in the units of the data (adu):

    p(x) = a N(x; mu, s^2) + b_lo N(x; mu - D, s^2) + b_hi N(x; mu + D, s^2),   a = 1 - b_lo - b_hi

Each pixel's values are first compressed to their distinct (binned) values and counts
(:func:`compress_values`): a bias pixel of N = 1000 frames takes a few tens of distinct integers, so every
EM iteration touches ``(n_pixels, n_distinct)`` numbers instead of ``(n_pixels, N)``. The EM M-step of
this constrained mixture (one sigma, means ``mu + e D`` with ``e`` in {0, -1, +1}) is exact: a 2 x 2
weighted least-squares solve for ``(mu, D)``, then ``s^2`` in closed form. Values further than
``OUTLIER_SIGMA`` from every level (cosmic rays, readout glitches) are left out of the likelihood.
Standard errors come from the observed information: the Hessian of the log-likelihood at the optimum, by
central differences of the analytic score, inverted per pixel.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["MixtureFit", "compress_values", "fit_three_level", "PARAM_NAMES", "OUTLIER_SIGMA"]

#: Order of the parameters in :attr:`MixtureFit.stderr`.
PARAM_NAMES = ("mu", "delta", "sigma", "frac_c", "frac_lo", "frac_hi")
#: Values further than this many sigma from every level are outliers, left out of the fit.
OUTLIER_SIGMA = 6.0
_E = np.array([0.0, -1.0, 1.0])  # level offsets in units of D: central, low, high
_LOG_SQRT_2PI = 0.5 * np.log(2.0 * np.pi)


@dataclass
class MixtureFit:
    """Fitted three-level model of ``n`` pixels (units of the data, usually adu).

    Attributes
    ----------
    mu, delta, sigma : numpy.ndarray, shape (n,), float64
        Central level, jump size (>= 0) and Gaussian width; ``sigma`` has the quantisation variance
        ``bin_width**2 / 12`` removed (Sheppard's correction).
    frac_c, frac_lo, frac_hi : numpy.ndarray, shape (n,), float64 in [0, 1]
        Level probabilities, summing to 1.
    stderr : numpy.ndarray, shape (n, 6), float64
        Standard errors in the order of :data:`PARAM_NAMES`; ``inf`` where the observed information is
        singular or not positive definite.
    converged : numpy.ndarray, shape (n,), bool
        EM reached the tolerance within ``max_iter`` and the result is finite.
    n_iter : numpy.ndarray, shape (n,), int32
        EM iterations made.
    n_used : numpy.ndarray, shape (n,), int64
        Values used (outliers left out).
    log_likelihood : numpy.ndarray, shape (n,), float64
        Log-likelihood of the binned values at the optimum (densities times bin width).
    """

    mu: np.ndarray
    delta: np.ndarray
    sigma: np.ndarray
    frac_c: np.ndarray
    frac_lo: np.ndarray
    frac_hi: np.ndarray
    stderr: np.ndarray
    converged: np.ndarray
    n_iter: np.ndarray
    n_used: np.ndarray
    log_likelihood: np.ndarray

    def relative_stderr(self) -> np.ndarray:
        """Standard errors over absolute values, shape (n, 6), order :data:`PARAM_NAMES` (inf at 0)."""
        values = np.stack([self.mu, self.delta, self.sigma, self.frac_c, self.frac_lo, self.frac_hi], axis=1)
        with np.errstate(divide="ignore", invalid="ignore"):
            rel = self.stderr / np.abs(values)
        return np.where(np.isnan(rel), np.inf, rel)


def compress_values(
    values: np.ndarray, bin_width: np.ndarray | float | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Distinct values and their counts, per pixel, relative to each pixel's median.

    Parameters
    ----------
    values : numpy.ndarray, shape (n, n_frames), integer or float, adu
        The values of ``n`` pixels (one row each). Non-finite float values (NaN, infinity) are left out:
        they get no count (every row needs at least one finite value).
    bin_width : float or numpy.ndarray of shape (n,), optional
        Bin width (adu) to which float values are rounded; ``None`` for integer-valued data (no binning:
        the compression is then lossless; non-finite values are then not allowed: give 1.0 instead).

    Returns
    -------
    y : numpy.ndarray, shape (n, n_distinct), float64, adu
        Distinct values minus ``origin``, ascending; rows padded with their last value.
    counts : numpy.ndarray, shape (n, n_distinct), float64
        How often each value occurs (0 in the padding).
    origin : numpy.ndarray, shape (n,), float64, adu
        Median of each row's finite values, subtracted from ``y`` to keep the EM sums well conditioned.
    width : numpy.ndarray, shape (n,), float64, adu
        Bin width used per pixel (1 for integer data).
    """
    values = np.asarray(values)
    if values.ndim != 2 or values.shape[1] < 1:
        raise ValueError(f"values must have shape (n_pixels, n_frames), got {values.shape}")
    n, m = values.shape
    valid = None
    if bin_width is None:
        width = np.ones(n)
        q = np.sort(values.astype(np.int64, copy=False), axis=1)
        origin = q[:, (m - 1) // 2].astype(np.float64)
        q = q - q[:, (m - 1) // 2][:, None]
    else:
        width = np.broadcast_to(np.asarray(bin_width, dtype=np.float64), (n,)).copy()
        if not np.all(width > 0):
            raise ValueError("bin_width must be positive")
        v = values.astype(np.float64, copy=False)
        finite = np.isfinite(v)
        if finite.all():
            v = np.sort(v, axis=1)
            origin = v[:, (m - 1) // 2].copy()
            q = np.rint((v - origin[:, None]) / width[:, None]).astype(np.int64)
        else:
            n_ok = finite.sum(axis=1)
            if not np.all(n_ok > 0):
                raise ValueError("values: a row without any finite value")
            v = np.sort(np.where(finite, v, np.inf), axis=1)  # the non-finite values last
            rows = np.arange(n)
            origin = v[rows, (n_ok - 1) // 2].copy()
            valid = np.arange(m)[None, :] < n_ok[:, None]
            last = v[rows, n_ok - 1][:, None]
            q = np.rint((np.where(valid, v, last) - origin[:, None]) / width[:, None]).astype(np.int64)
    new = np.ones((n, m), dtype=bool)
    new[:, 1:] = q[:, 1:] != q[:, :-1]
    group = np.cumsum(new, axis=1) - 1  # index of the distinct value within its row
    n_distinct = int(group[:, -1].max()) + 1
    flat = (np.arange(n)[:, None] * n_distinct + group).ravel()
    weights = None if valid is None else valid.ravel().astype(np.float64)  # non-finite values: no count
    counts = np.bincount(flat, weights, minlength=n * n_distinct).reshape(n, n_distinct).astype(np.float64)
    y = np.empty((n, n_distinct), dtype=np.float64)
    rows, cols = np.nonzero(new)
    y[rows, group[rows, cols]] = q[rows, cols]
    last = group[:, -1]
    pad = np.arange(n_distinct)[None, :] > last[:, None]
    y = np.where(pad, q[:, -1:].astype(np.float64), y) * width[:, None]
    return y, counts, origin, width


def _initial_guess(y: np.ndarray, counts: np.ndarray) -> tuple[np.ndarray, ...]:
    """Robust start: mu at the median, s from the central quartiles, D and the fractions from the tails."""
    cum = np.cumsum(counts, axis=1)
    total = cum[:, -1]

    def quantile(p: float) -> np.ndarray:
        k = np.argmax(cum >= p * total[:, None], axis=1)
        return y[np.arange(y.shape[0]), k]

    mu = quantile(0.5)
    # The central level holds >= 50 % of the values, so the quartiles of the central half lie inside it;
    # q(0.5 +- 0.25 a) would be exact for a pure normal of weight a; use the 30-70 % range (0.524 sd).
    s = np.maximum((quantile(0.7) - quantile(0.3)) / 1.049, 0.3)
    dist = y - mu[:, None]
    # D: weighted median distance of the values beyond 3 s (a median, so cosmic rays do not pull it)
    far_counts = counts * (np.abs(dist) > 3.0 * s[:, None])
    order = np.argsort(np.abs(dist), axis=1)
    rows = np.arange(y.shape[0])[:, None]
    cum_far = np.cumsum(far_counts[rows, order], axis=1)
    n_far = cum_far[:, -1]
    k = np.argmax(cum_far >= 0.5 * n_far[:, None], axis=1)
    delta = np.where(n_far > 0, np.abs(dist[rows[:, 0], order[rows[:, 0], k]]), 4.0 * s)
    half = np.maximum(0.5 * delta, 2.0 * s)[:, None]
    b_lo = np.clip((counts * (dist < -half)).sum(axis=1) / total, 0.02, 0.3)
    b_hi = np.clip((counts * (dist > half)).sum(axis=1) / total, 0.02, 0.3)
    return mu, delta, s, b_lo, b_hi


def _responsibilities(y, mu, delta, s, log_pi):
    """Per-bin level responsibilities (3, n, k) and log density (n, k) of the mixture."""
    d0 = y - mu[:, None]
    inv_s = 1.0 / s[:, None]
    logs = []
    for j, e in enumerate(_E):
        z = (d0 - e * delta[:, None]) * inv_s
        logs.append(log_pi[:, j : j + 1] - 0.5 * z * z)
    top = np.maximum(np.maximum(logs[0], logs[1]), logs[2])
    w = [np.exp(lj - top) for lj in logs]
    tot = w[0] + w[1] + w[2]
    r = np.stack([wj / tot for wj in w])
    log_p = top + np.log(tot) - np.log(s)[:, None] - _LOG_SQRT_2PI
    return r, log_p


def _outlier_mask(y, counts, mu, delta, s):
    d0 = np.abs(y - mu[:, None])
    nearest = np.minimum(d0, np.abs(d0 - np.abs(delta)[:, None]))  # distance to the nearest level
    return np.where(nearest <= OUTLIER_SIGMA * s[:, None], counts, 0.0)


def _em(y, counts, max_iter: int, tol: float):
    n = y.shape[0]
    mu, delta, s, b_lo, b_hi = _initial_guess(y, counts)
    pi = np.stack([1.0 - b_lo - b_hi, b_lo, b_hi], axis=1)
    w = _outlier_mask(y, counts, mu, delta, s)
    n_iter = np.zeros(n, dtype=np.int32)
    converged = np.zeros(n, dtype=bool)
    active = np.arange(n)
    for it in range(1, max_iter + 1):
        ya, wa = y[active], w[active]
        mu_a, d_a, s_a, pi_a = mu[active], delta[active], s[active], pi[active]
        with np.errstate(divide="ignore"):
            r, _ = _responsibilities(ya, mu_a, d_a, s_a, np.log(pi_a))
        wr = r * wa  # (3, n, k)
        nj = wr.sum(axis=2).T  # (n, 3)
        sj = (wr * ya).sum(axis=2).T
        ntot = nj.sum(axis=1)
        big_e = nj[:, 2] - nj[:, 1]
        e2 = nj[:, 1] + nj[:, 2]
        rhs1 = sj.sum(axis=1)
        rhs2 = sj[:, 2] - sj[:, 1]
        det = ntot * e2 - big_e * big_e
        ok = det > 1e-9 * ntot * ntot
        safe = np.where(ok, det, 1.0)
        new_mu = np.where(ok, (e2 * rhs1 - big_e * rhs2) / safe, (rhs1 - big_e * d_a) / ntot)
        new_d = np.where(ok, (ntot * rhs2 - big_e * rhs1) / safe, d_a)
        q = np.zeros_like(ntot)
        for j, e in enumerate(_E):
            dev = ya - (new_mu + e * new_d)[:, None]
            q += (wr[j] * dev * dev).sum(axis=1)
        new_s = np.sqrt(np.maximum(q / ntot, 1e-12))
        new_pi = nj / ntot[:, None]
        step = np.maximum.reduce([
            np.abs(new_mu - mu_a) / new_s, np.abs(new_d - d_a) / new_s, np.abs(new_s - s_a) / new_s,
            np.abs(new_pi - pi_a).max(axis=1),
        ])
        mu[active], delta[active], s[active], pi[active] = new_mu, new_d, new_s, new_pi
        n_iter[active] = it
        if it % 10 == 0:  # the levels moved: re-select the values they explain (cosmic rays stay out)
            w[active] = _outlier_mask(ya, counts[active], new_mu, new_d, new_s)
        done = step < tol
        converged[active[done]] = True
        active = active[~done]
        if active.size == 0:
            break
    return mu, delta, s, pi, w, converged, n_iter


def _score(y, w, theta):
    """Gradient of the log-likelihood in (mu, D, s, b_lo, b_hi), shape (n, 5), and the log-likelihood."""
    mu, delta, s, b_lo, b_hi = theta.T
    pi = np.stack([1.0 - b_lo - b_hi, b_lo, b_hi], axis=1)
    d0 = y - mu[:, None]
    inv_s = 1.0 / s[:, None]
    phi, dev = [], []
    for e in _E:
        z = (d0 - e * delta[:, None]) * inv_s
        phi.append(np.exp(-0.5 * z * z) * inv_s)
        dev.append(z)
    p = pi[:, 0:1] * phi[0] + pi[:, 1:2] * phi[1] + pi[:, 2:3] * phi[2]
    p = np.maximum(p, 1e-300)
    wp = w / p
    g = np.empty((y.shape[0], 5))
    g_mu = g_d = g_s = 0.0
    for j, e in enumerate(_E):
        t = pi[:, j : j + 1] * phi[j] * wp
        g_mu = g_mu + t * dev[j]
        g_d = g_d + t * (e * dev[j])
        g_s = g_s + t * (dev[j] * dev[j] - 1.0)
    g[:, 0] = g_mu.sum(axis=1) / s
    g[:, 1] = g_d.sum(axis=1) / s
    g[:, 2] = g_s.sum(axis=1) / s
    g[:, 3] = ((phi[1] - phi[0]) * wp).sum(axis=1)
    g[:, 4] = ((phi[2] - phi[0]) * wp).sum(axis=1)
    loglik = (w * (np.log(p) - _LOG_SQRT_2PI)).sum(axis=1)
    return g, loglik


def observed_covariance(score, y: np.ndarray, w: np.ndarray, theta: np.ndarray, steps: np.ndarray) -> np.ndarray:
    """Inverse observed information (n, p, p) by central differences of ``score``; NaN where singular.

    ``score(y, w, theta)`` returns the score (n, p) first; ``steps`` (n, p) are the differencing steps.
    """
    n, p = theta.shape
    hess = np.empty((n, p, p))
    for i in range(p):
        up, down = theta.copy(), theta.copy()
        up[:, i] += steps[:, i]
        down[:, i] -= steps[:, i]
        hess[:, :, i] = (score(y, w, up)[0] - score(y, w, down)[0]) / (2.0 * steps[:, i : i + 1])
    info = -0.5 * (hess + hess.transpose(0, 2, 1))
    cov = np.full((n, p, p), np.nan)
    finite = np.all(np.isfinite(info), axis=(1, 2))
    if np.any(finite):
        eig = np.full(n, -np.inf)
        eig[finite] = np.linalg.eigvalsh(info[finite])[:, 0]
        good = finite & (eig > 1e-12 * np.abs(info).max(axis=(1, 2)))
        if np.any(good):
            cov[good] = np.linalg.inv(info[good])
    return cov


def _covariance(y, w, theta):
    """Inverse observed information (n, 5, 5) of the three-level model."""
    n = theta.shape[0]
    s = theta[:, 2]
    steps = np.stack([1e-4 * s, 1e-4 * s, 1e-4 * s, np.full(n, 1e-5), np.full(n, 1e-5)], axis=1)
    return observed_covariance(_score, y, w, theta, steps)


def fit_three_level(
    y: np.ndarray, counts: np.ndarray, width: np.ndarray | None = None, *, max_iter: int = 400,
    tol: float = 1e-5,
) -> MixtureFit:
    """Fit the three-level model to every row of ``(y, counts)`` at once.

    Parameters
    ----------
    y, counts : numpy.ndarray, shape (n, k), float64
        Distinct values (adu, relative to any per-row origin) and their counts, from
        :func:`compress_values`.
    width : numpy.ndarray, shape (n,), float64, optional
        Bin width per row (adu); default 1 (integer data). Used for Sheppard's correction of ``sigma``.
    max_iter : int
        Most EM iterations per pixel.
    tol : float
        Convergence: every parameter moved by less than ``tol`` in one iteration (``mu``, ``D``, ``s``
        in units of ``s``; fractions absolute).

    Returns
    -------
    MixtureFit
        ``mu`` relative to the same origin as ``y``.
    """
    y = np.asarray(y, dtype=np.float64)
    counts = np.asarray(counts, dtype=np.float64)
    if y.shape != counts.shape or y.ndim != 2:
        raise ValueError(f"y {y.shape} and counts {counts.shape} must be equal 2-D shapes")
    n = y.shape[0]
    width = np.ones(n) if width is None else np.asarray(width, dtype=np.float64)
    mu, delta, s, pi, w, converged, n_iter = _em(y, counts, max_iter, tol)
    # one sign convention: D >= 0 (swap the side levels where EM ended with D < 0)
    neg = delta < 0
    delta = np.abs(delta)
    pi[neg] = pi[neg][:, [0, 2, 1]]
    theta = np.stack([mu, delta, s, pi[:, 1], pi[:, 2]], axis=1)
    cov = _covariance(y, w, theta)
    _, loglik = _score(y, w, theta)
    var = np.stack([cov[:, i, i] for i in range(5)], axis=1)
    var_c = cov[:, 3, 3] + cov[:, 4, 4] + 2.0 * cov[:, 3, 4]
    stderr = np.sqrt(np.stack([var[:, 0], var[:, 1], var[:, 2], var_c, var[:, 3], var[:, 4]], axis=1))
    stderr = np.where(np.isfinite(stderr), stderr, np.inf)
    sigma = np.sqrt(np.maximum(s * s - width * width / 12.0, 0.25 * s * s))
    finite = np.isfinite(theta).all(axis=1) & (s > 0)
    return MixtureFit(
        mu=mu, delta=delta, sigma=sigma, frac_c=pi[:, 0], frac_lo=pi[:, 1], frac_hi=pi[:, 2], stderr=stderr,
        converged=converged & finite, n_iter=n_iter, n_used=w.sum(axis=1).astype(np.int64),
        log_likelihood=loglik + w.sum(axis=1) * np.log(width),
    )
