"""Two-trap RTN pixels: batched EM of the two-independent-trap model, and one-vs-two selection by BIC.

A pixel whose source follower holds two independent traps reads, in a bias frame, one of nine levels
``mu + i D1 + j D2`` (i, j in {-1, 0, 1}), each broadened by one RTN-free read noise ``s`` (adu):

    p(x) = sum_{i,j} P1(i) P2(j) N(x; mu + i D1 + j D2, s^2),
    P1 = (b1_lo, a1, b1_hi), a1 = 1 - b1_lo - b1_hi;   P2 = (b2_lo, a2, b2_hi), a2 = 1 - b2_lo - b2_hi

(docs/algorithm.md, "Two-trap pixels", ours). As in :mod:`rtnstream.calibration._em`, each pixel's values
are compressed to distinct values and counts, and the EM M-step is exact: a 3 x 3 weighted least-squares
solve for ``(mu, D1, D2)``, ``s^2`` in closed form, and each trap's fractions from the marginals of the
nine responsibilities (independence makes the expected complete log-likelihood separate). Values further
than ``OUTLIER_SIGMA`` from every level are left out. Standard errors come from the observed information
(central differences of the analytic score). Convention: ``D1 >= D2 >= 0`` (trap 1 has the larger jump).

:func:`fit_two_trap_candidates` is what the calibration calls: it refits the candidates with two traps,
compares both models' log-likelihoods on the same values by BIC, applies the acceptance rules of
ALGORITHM.md section 6 to each trap, and returns the second trap's parameters as arrays ready to become
cube columns (``delta2_e``, ``frac2_c``, ``frac2_lo``, ``frac2_hi``, ``lammax2_e``) with the
``DQ_TWO_TRAP`` flags.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.special import ndtr

from rtnstream.calibration._em import OUTLIER_SIGMA, compress_values, observed_covariance
from rtnstream.calibration.fit import _RTN_COLUMNS, _SECOND_TRAP_COLUMNS, FitSettings, acceptance
from rtnstream.kernels.cube import DQ_RTN, DQ_TWO_TRAP
from rtnstream.kernels.lut import ThresholdTable, get_table

__all__ = [
    "TWO_TRAP_PARAM_NAMES",
    "TWO_TRAP_RULES",
    "TwoTrapFit",
    "fit_two_trap",
    "log_likelihood",
    "fit_two_trap_candidates",
    "refit_band",
    "CUBE_FIELDS",
]

#: Order of the parameters in :attr:`TwoTrapFit.stderr`.
TWO_TRAP_PARAM_NAMES = ("mu", "delta1", "delta2", "sigma", "frac1_c", "frac1_lo", "frac1_hi", "frac2_c",
                        "frac2_lo", "frac2_hi")
#: Rules a two-trap fit must pass (True in the result where it fails), in the order they are checked.
TWO_TRAP_RULES = (
    "fits_one_trap",  # the three-level fit was accepted and explains the values: not refitted
    "not_converged",  # EM did not converge, or the observed information is singular
    "large_stderr",  # a relative standard error above max_rel_stderr (side fractions < 0.03 exempt)
    "side_above_centre",  # a trap's side fraction above its central fraction
    "frac_c_above_max",  # a trap's central fraction above max_frac_c: its jumps too rare to be RTN
    "delta_below_min",  # D2 < min_delta_over_sigma sigma: the smaller jump is not correctable
    "jumps_too_close",  # D1 - D2 < MIN_SEPARATION_SIGMA sigma: the two traps' levels are not resolvable
    "sigma_outside_table",  # sigma outside the threshold table: no lambda_max
    "bic_prefers_one",  # BIC(two traps) >= BIC(one trap)
)
#: Least ``(D1 - D2) / sigma`` of a two-trap pixel (ours: levels 2 sigma apart are still told apart by the
#: decision's prior-weighted choice; 3 sigma would reject pixels simulated at 3 sigma by fit noise alone).
MIN_SEPARATION_SIGMA = 2.0
#: Free parameters of the two models (BIC).
N_PARAMS_ONE, N_PARAMS_TWO = 5, 8
# the nine components: trap-1 state i and trap-2 state j, component index 3 (i + 1) + (j + 1)
_I = np.repeat([-1.0, 0.0, 1.0], 3)
_J = np.tile([-1.0, 0.0, 1.0], 3)
_LOG_SQRT_2PI = 0.5 * np.log(2.0 * np.pi)
_RIDGE = 1e-9  # keeps a jump at its value in the M-step while no value is assigned to its levels
# EM stops (not converged) on a pixel whose fit is becoming one trap: after this many iterations, a trap's
# side fractions below _DEGENERATE_SIDES in all (central fraction > 0.98 > max_frac_c), or D2 or D1 - D2
# below _DEGENERATE_GAP s (< min_delta_over_sigma); the rules would reject such a fit anyway.
_DEGENERATE_AFTER, _DEGENERATE_SIDES, _DEGENERATE_GAP = 30, 0.02, 1.5
#: Pixels refitted at once (memory: about 10 arrays of 9 x REFIT_GROUP x n_distinct float64).
REFIT_GROUP = 2048
#: Screen of accepted three-level fits: refit with two traps above this Kolmogorov-Smirnov distance (ours).
KS_SCREEN = 1.0


@dataclass
class TwoTrapFit:
    """Fitted two-trap model of ``n`` pixels (units of the data, usually adu).

    Attributes
    ----------
    mu, delta1, delta2, sigma : numpy.ndarray, shape (n,), float64
        Central level, jumps (``delta1 >= delta2 >= 0``) and Gaussian width with the quantisation
        variance ``width**2 / 12`` removed (Sheppard's correction).
    s : numpy.ndarray, shape (n,), float64
        Gaussian width as fitted (quantisation included): the width of the likelihood.
    frac1_c, frac1_lo, frac1_hi, frac2_c, frac2_lo, frac2_hi : numpy.ndarray, shape (n,), float64
        Each trap's state probabilities (each trap's three sum to 1).
    stderr : numpy.ndarray, shape (n, 10), float64
        Standard errors in the order of :data:`TWO_TRAP_PARAM_NAMES`; ``inf`` where the observed
        information is singular or not positive definite.
    converged : numpy.ndarray, shape (n,), bool
    n_iter : numpy.ndarray, shape (n,), int32
    weights : numpy.ndarray, shape (n, k), float64
        Counts of the values the fit used (outliers at 0).
    log_likelihood : numpy.ndarray, shape (n,), float64
        Log-likelihood of the used values at the optimum (densities times bin width).
    """

    mu: np.ndarray
    delta1: np.ndarray
    delta2: np.ndarray
    sigma: np.ndarray
    s: np.ndarray
    frac1_c: np.ndarray
    frac1_lo: np.ndarray
    frac1_hi: np.ndarray
    frac2_c: np.ndarray
    frac2_lo: np.ndarray
    frac2_hi: np.ndarray
    stderr: np.ndarray
    converged: np.ndarray
    n_iter: np.ndarray
    weights: np.ndarray
    log_likelihood: np.ndarray

    def theta(self) -> np.ndarray:
        """The free parameters ``(mu, D1, D2, s, b1_lo, b1_hi, b2_lo, b2_hi)``, shape (n, 8)."""
        return np.stack([self.mu, self.delta1, self.delta2, self.s, self.frac1_lo, self.frac1_hi,
                         self.frac2_lo, self.frac2_hi], axis=1)

    def relative_stderr(self) -> np.ndarray:
        """Standard errors over absolute values, shape (n, 10), order :data:`TWO_TRAP_PARAM_NAMES`."""
        values = np.stack([self.mu, self.delta1, self.delta2, self.sigma, self.frac1_c, self.frac1_lo,
                           self.frac1_hi, self.frac2_c, self.frac2_lo, self.frac2_hi], axis=1)
        with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
            rel = self.stderr / np.abs(values)
        return np.where(np.isnan(rel), np.inf, rel)


def _weighted_quantile(d: np.ndarray, w: np.ndarray, p: float) -> np.ndarray:
    """Per row, the smallest ``d`` whose cumulative weight reaches ``p`` of the row's weight."""
    order = np.argsort(d, axis=1)
    rows = np.arange(d.shape[0])[:, None]
    cum = np.cumsum(w[rows, order], axis=1)
    k = np.argmax(cum >= p * cum[:, -1:], axis=1)
    return d[rows[:, 0], order[rows[:, 0], k]]


def _central_peak(y: np.ndarray, counts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mode and width of the central peak: the most frequent value and the half width at half maximum.

    Quantiles, as the three-level EM starts from, are pulled by two traps' side levels (up to 40 % of the
    values, possibly all on one side); the peak is not. ``s`` = HWHM / 1.1774, at least 0.3 (adu).
    """
    n, k = y.shape
    rows = np.arange(n)
    top = np.argmax(counts, axis=1)
    below = counts < 0.5 * counts[rows, top][:, None]
    col = np.arange(k)[None, :]
    right = np.where(below & (col > top[:, None]), col, k - 1).min(axis=1)
    left = np.where(below & (col < top[:, None]), col, 0).max(axis=1)
    step = np.maximum(np.diff(y, axis=1).min(axis=1, initial=np.inf, where=np.diff(y, axis=1) > 0), 0.0)
    step = np.where(np.isfinite(step), step, 0.0)
    hwhm = 0.5 * (y[rows, right] - y[rows, left] - step)  # the half-maximum crossings lie between bins
    s = np.maximum(hwhm / 1.1774, 0.3)
    near = np.abs(y - y[rows, top][:, None]) <= 1.5 * s[:, None]
    w = counts * near
    mu = (w * y).sum(axis=1) / np.maximum(w.sum(axis=1), 1e-300)
    return mu, s


def _initial_guess(y: np.ndarray, counts: np.ndarray) -> tuple[np.ndarray, ...]:
    """Start: mu and s from the central peak; the two jumps by 2-means of the far values' distances."""
    mu, s = _central_peak(y, counts)
    dist = y - mu[:, None]
    d = np.abs(dist)
    far = counts * (d > 3.0 * s[:, None])
    has_far = far.sum(axis=1) > 0
    c_hi = np.where(has_far, _weighted_quantile(d, far, 0.8), 6.0 * s)
    c_lo = np.where(has_far, _weighted_quantile(d, far, 0.2), 4.0 * s)
    for _ in range(10):  # Lloyd iterations on |x - mu|, weighted by the counts
        upper = np.abs(d - c_hi[:, None]) < np.abs(d - c_lo[:, None])
        w_hi, w_lo = far * upper, far * ~upper
        n_hi, n_lo = w_hi.sum(axis=1), w_lo.sum(axis=1)
        c_hi = np.where(n_hi > 0, (w_hi * d).sum(axis=1) / np.maximum(n_hi, 1e-300), c_hi)
        c_lo = np.where(n_lo > 0, (w_lo * d).sum(axis=1) / np.maximum(n_lo, 1e-300), c_lo)
    upper = np.abs(d - c_hi[:, None]) < np.abs(d - c_lo[:, None])
    total = counts.sum(axis=1)

    def side(mask: np.ndarray) -> np.ndarray:
        return np.clip((far * mask).sum(axis=1) / total, 0.01, 0.3)

    b1_lo, b1_hi = side(upper & (dist < 0)), side(upper & (dist > 0))
    b2_lo, b2_hi = side(~upper & (dist < 0)), side(~upper & (dist > 0))
    return mu, np.maximum(c_hi, c_lo), np.minimum(c_hi, c_lo), s, b1_lo, b1_hi, b2_lo, b2_hi


def _components(y, theta):
    """Per-component (9, n, k) densities (1/adu) and standardised deviations, and the weights (9, n, 1)."""
    mu, d1, d2, s, b1_lo, b1_hi, b2_lo, b2_hi = theta.T
    p1 = np.stack([b1_lo, 1.0 - b1_lo - b1_hi, b1_hi])
    p2 = np.stack([b2_lo, 1.0 - b2_lo - b2_hi, b2_hi])
    pk = (p1[:, None, :] * p2[None, :, :]).reshape(9, -1)[:, :, None]
    centre = mu[None, :] + _I[:, None] * d1[None, :] + _J[:, None] * d2[None, :]
    z = (y[None, :, :] - centre[:, :, None]) / s[None, :, None]
    phi = np.exp(-0.5 * z * z) / s[None, :, None]
    return phi, z, pk


def _outlier_mask(y, counts, theta):
    """Counts of the values within OUTLIER_SIGMA of some level (the others at 0)."""
    mu, d1, d2, s = theta[:, 0], theta[:, 1], theta[:, 2], theta[:, 3]
    centre = mu[None, :] + _I[:, None] * d1[None, :] + _J[:, None] * d2[None, :]
    nearest = np.abs(y[None, :, :] - centre[:, :, None]).min(axis=0)
    return np.where(nearest <= OUTLIER_SIGMA * s[:, None], counts, 0.0)


def _em(y, counts, max_iter: int, tol: float):
    n = y.shape[0]
    theta = np.stack(_initial_guess(y, counts), axis=1)
    w = _outlier_mask(y, counts, theta)
    n_iter = np.zeros(n, dtype=np.int32)
    converged = np.zeros(n, dtype=bool)
    active = np.arange(n)
    basis = np.stack([np.ones(9), _I, _J], axis=1)  # (9, 3): the level of component k is basis[k] @ (mu, D1, D2)
    outer = basis[:, :, None] * basis[:, None, :]  # (9, 3, 3)
    for it in range(1, max_iter + 1):
        ya, wa, th = y[active], w[active], theta[active]
        phi, _z, pk = _components(ya, th)
        joint = pk * phi
        r = joint / np.maximum(joint.sum(axis=0), 1e-300)
        wr = r * wa  # (9, n, k)
        nk = wr.sum(axis=2)  # (9, n)
        sk = (wr * ya).sum(axis=2)
        ntot = nk.sum(axis=0)
        a = np.einsum("kn,kij->nij", nk, outer)
        b = np.einsum("kn,ki->ni", sk, basis)
        ridge = _RIDGE * ntot
        a[:, 1, 1] += ridge
        a[:, 2, 2] += ridge
        b[:, 1] += ridge * th[:, 1]
        b[:, 2] += ridge * th[:, 2]
        sol = np.linalg.solve(a, b[:, :, None])[:, :, 0]
        centre = sol @ basis.T  # (n, 9)
        dev = ya[None, :, :] - centre.T[:, :, None]
        s_new = np.sqrt(np.maximum((wr * dev * dev).sum(axis=(0, 2)) / ntot, 1e-12))
        m = nk.reshape(3, 3, -1)
        p1 = m.sum(axis=1) / ntot  # (3, n): trap 1's marginal (lo, c, hi)
        p2 = m.sum(axis=0) / ntot
        new = np.stack([sol[:, 0], sol[:, 1], sol[:, 2], s_new, p1[0], p1[2], p2[0], p2[2]], axis=1)
        step = np.maximum(np.abs(new[:, :4] - th[:, :4]).max(axis=1) / s_new,
                          np.abs(new[:, 4:] - th[:, 4:]).max(axis=1))
        theta[active] = new
        n_iter[active] = it
        if it % 10 == 0:  # the levels moved: re-select the values they explain
            w[active] = _outlier_mask(ya, counts[active], new)
        done = step < tol
        converged[active[done]] = True
        if it >= _DEGENERATE_AFTER:  # heading for one trap (rejected by the rules anyway): stop early
            d1, d2, s_a = new[:, 1], new[:, 2], new[:, 3]
            sides = np.minimum(new[:, 4] + new[:, 5], new[:, 6] + new[:, 7])
            gap = np.minimum(np.abs(d2), np.abs(np.abs(d1) - np.abs(d2)))
            done |= (sides < _DEGENERATE_SIDES) | (gap < _DEGENERATE_GAP * s_a)
        active = active[~done]
        if active.size == 0:
            break
    return theta, w, converged, n_iter


def _score(y, w, theta):
    """Gradient of the log-likelihood in the free parameters, shape (n, 8), and the log-likelihood (n,)."""
    phi, z, pk = _components(y, theta)
    p = np.maximum((pk * phi).sum(axis=0), 1e-300)
    wp = w / p
    t = pk * phi * wp  # (9, n, k)
    s = theta[:, 3]
    g = np.empty((y.shape[0], 8))
    g[:, 0] = (t * z).sum(axis=(0, 2)) / s
    g[:, 1] = (t * (_I[:, None, None] * z)).sum(axis=(0, 2)) / s
    g[:, 2] = (t * (_J[:, None, None] * z)).sum(axis=(0, 2)) / s
    g[:, 3] = (t * (z * z - 1.0)).sum(axis=(0, 2)) / s
    b1_lo, b1_hi, b2_lo, b2_hi = theta[:, 4:].T
    p1 = np.stack([b1_lo, 1.0 - b1_lo - b1_hi, b1_hi])  # (3, n)
    p2 = np.stack([b2_lo, 1.0 - b2_lo - b2_hi, b2_hi])
    f = (phi * wp).reshape(3, 3, *phi.shape[1:])  # f[i, j] = phi_ij w / p
    m1 = (p2[None, :, :, None] * f).sum(axis=(1, 3))  # (3, n): d loglik / d P1(i)
    m2 = (p1[:, None, :, None] * f).sum(axis=(0, 3))
    g[:, 4], g[:, 5] = m1[0] - m1[1], m1[2] - m1[1]
    g[:, 6], g[:, 7] = m2[0] - m2[1], m2[2] - m2[1]
    return g, (w * (np.log(p) - _LOG_SQRT_2PI)).sum(axis=1)


def log_likelihood(y: np.ndarray, w: np.ndarray, theta: np.ndarray) -> np.ndarray:
    """Log-likelihood of the binned values ``(y, w)`` under the two-trap model ``theta``.

    Parameters
    ----------
    y, w : numpy.ndarray, shape (n, k), float64
        Distinct values (adu, any per-row origin) and the counts to use.
    theta : numpy.ndarray, shape (n, 8), float64
        ``(mu, D1, D2, s, b1_lo, b1_hi, b2_lo, b2_hi)`` (adu); the three-level model is
        ``(mu, D, 0, s, b_lo, b_hi, 0, 0)``.

    Returns
    -------
    numpy.ndarray, shape (n,), float64
        Sum of ``w log(p(y))`` (densities per adu; add ``w.sum() log(width)`` for probabilities).
    """
    return _score(y, w, theta)[1]


def _covariance(y, w, theta):
    """Inverse observed information (n, 8, 8) of the two-trap model."""
    n = theta.shape[0]
    s = theta[:, 3]
    steps = np.concatenate([np.repeat(1e-4 * s[:, None], 4, axis=1), np.full((n, 4), 1e-5)], axis=1)
    return observed_covariance(_score, y, w, theta, steps)


def fit_two_trap(
    y: np.ndarray, counts: np.ndarray, width: np.ndarray | None = None, *, max_iter: int = 600,
    tol: float = 1e-5,
) -> TwoTrapFit:
    """Fit the two-trap model to every row of ``(y, counts)`` at once.

    Parameters
    ----------
    y, counts : numpy.ndarray, shape (n, k), float64
        Distinct values (adu, relative to any per-row origin) and their counts, from
        :func:`~rtnstream.calibration._em.compress_values`.
    width : numpy.ndarray, shape (n,), float64, optional
        Bin width per row (adu); default 1 (integer data). Used for Sheppard's correction of ``sigma``.
    max_iter : int
        Most EM iterations per pixel.
    tol : float
        Convergence: every parameter moved by less than ``tol`` in one iteration (``mu``, the jumps and
        ``s`` in units of ``s``; fractions absolute).

    Returns
    -------
    TwoTrapFit
        ``mu`` relative to the same origin as ``y``.

    Raises
    ------
    ValueError
        ``y`` and ``counts`` are not equal 2-D shapes, or ``max_iter`` < 1.
    """
    y = np.asarray(y, dtype=np.float64)
    counts = np.asarray(counts, dtype=np.float64)
    if y.shape != counts.shape or y.ndim != 2:
        raise ValueError(f"y {y.shape} and counts {counts.shape} must be equal 2-D shapes")
    if max_iter < 1:
        raise ValueError(f"max_iter must be >= 1, got {max_iter!r}")
    n = y.shape[0]
    width = np.ones(n) if width is None else np.broadcast_to(np.asarray(width, dtype=np.float64), (n,))
    theta, w, converged, n_iter = _em(y, counts, max_iter, tol)
    # one convention: each jump >= 0 (swap a trap's sides where EM ended negative), then D1 >= D2
    for d, lo, hi in ((1, 4, 5), (2, 6, 7)):
        neg = theta[:, d] < 0
        theta[neg, d] = -theta[neg, d]
        theta[np.ix_(neg, [lo, hi])] = theta[np.ix_(neg, [hi, lo])]
    swap = theta[:, 2] > theta[:, 1]
    theta[np.ix_(swap, [1, 2, 4, 5, 6, 7])] = theta[np.ix_(swap, [2, 1, 6, 7, 4, 5])]
    cov = _covariance(y, w, theta)
    _, loglik = _score(y, w, theta)

    def var_c(lo: int, hi: int) -> np.ndarray:
        return cov[:, lo, lo] + cov[:, hi, hi] + 2.0 * cov[:, lo, hi]

    diag = [cov[:, i, i] for i in range(8)]
    stderr = np.sqrt(np.stack([diag[0], diag[1], diag[2], diag[3], var_c(4, 5), diag[4], diag[5],
                               var_c(6, 7), diag[6], diag[7]], axis=1))
    stderr = np.where(np.isfinite(stderr), stderr, np.inf)
    s = theta[:, 3]
    sigma = np.sqrt(np.maximum(s * s - width * width / 12.0, 0.25 * s * s))
    finite = np.isfinite(theta).all(axis=1) & (s > 0)
    b1_lo, b1_hi, b2_lo, b2_hi = theta[:, 4:].T
    return TwoTrapFit(
        mu=theta[:, 0], delta1=theta[:, 1], delta2=theta[:, 2], sigma=sigma, s=s,
        frac1_c=1.0 - b1_lo - b1_hi, frac1_lo=b1_lo, frac1_hi=b1_hi,
        frac2_c=1.0 - b2_lo - b2_hi, frac2_lo=b2_lo, frac2_hi=b2_hi, stderr=stderr,
        converged=converged & finite, n_iter=n_iter, weights=w,
        log_likelihood=loglik + w.sum(axis=1) * np.log(width),
    )


def _bin_width(values: np.ndarray) -> np.ndarray | float | None:
    """The binning of ``fit_band``: none for whole numbers (1 adu if some are not finite), else min(1, sd/16)."""
    if np.issubdtype(values.dtype, np.integer):
        return None
    finite = np.isfinite(values)
    if np.all((values == np.rint(values)) | ~finite):
        return None if np.all(finite) else 1.0
    return np.minimum(1.0, np.nanstd(values.astype(np.float64), axis=1) / 16.0)


def _check_one_trap(one: dict[str, np.ndarray], n: int) -> None:
    for name in ("mu_adu", "delta_adu", "sigma_adu", "frac_lo", "frac_hi"):
        if name not in one:
            raise ValueError(f"one: the three-level fit lacks {name!r} (give fit_band's output)")
        if np.shape(one[name]) != (n,):
            raise ValueError(f"one[{name!r}] has shape {np.shape(one[name])}, expected ({n},) (one per pixel)")


def fits_badly(y: np.ndarray, counts: np.ndarray, width: np.ndarray, theta_one: np.ndarray) -> np.ndarray:
    """Whether the three-level fit leaves the values' distribution unexplained (the screen for a refit).

    A three-level fit of a two-trap pixel absorbs the second trap into a wider sigma, so its rules often
    accept it; the empirical CDF then departs from the model's. The screen is the Kolmogorov-Smirnov
    distance ``sqrt(n) max |F_obs - F_model|`` at the bin edges, above :data:`KS_SCREEN` (ours: on
    simulated stacks one-trap pixels stay below about 0.85 at their 99th percentile, two-trap pixels with
    jumps >= 4 sigma lie above 1.4; a one-trap pixel that passes the screen costs only a refit).

    Parameters
    ----------
    y, counts : numpy.ndarray, shape (n, k), float64
        Distinct values (adu) and counts.
    width : numpy.ndarray, shape (n,), float64
        Bin width (adu).
    theta_one : numpy.ndarray, shape (n, 8), float64
        The three-level fit as ``(mu, D, 0, s, b_lo, b_hi, 0, 0)`` (adu, same origin as ``y``).

    Returns
    -------
    numpy.ndarray, shape (n,), bool
    """
    mu, d, s, b_lo, b_hi = theta_one[:, 0], theta_one[:, 1], theta_one[:, 3], theta_one[:, 4], theta_one[:, 5]
    edge = y + 0.5 * width[:, None]
    model = np.zeros_like(y)
    for frac, level in ((1.0 - b_lo - b_hi, mu), (b_lo, mu - d), (b_hi, mu + d)):
        model += frac[:, None] * ndtr((edge - level[:, None]) / s[:, None])
    n = counts.sum(axis=1)
    observed = np.cumsum(counts, axis=1) / n[:, None]
    return np.abs(observed - model).max(axis=1) * np.sqrt(n) > KS_SCREEN


def fit_two_trap_candidates(
    values: np.ndarray, one: dict[str, np.ndarray], gain_e_per_adu: float, table: ThresholdTable,
    settings: FitSettings | None = None, one_accepted: np.ndarray | None = None,
) -> dict[str, np.ndarray]:
    """Refit candidates with two traps and choose, per pixel, one or two traps (ALGORITHM.md s. 6, ours).

    A candidate becomes a two-trap pixel when its two-trap fit fails none of :data:`TWO_TRAP_RULES`:
    each trap passes the acceptance rules of section 6.3 (converged, relative standard errors <= 1/3 with
    side fractions below 0.03 exempt, side fractions <= the central one, central fraction <= 0.95), both
    jumps and their difference are at least ``min_delta_over_sigma`` sigma, and the Bayesian information
    criterion ``-2 log L + k ln n`` (k = 5 and 8 free parameters) is lower with two traps, both
    log-likelihoods taken on the same values (those within ``OUTLIER_SIGMA`` of a level of either model).

    Parameters
    ----------
    values : numpy.ndarray, shape (n, n_frames), integer or float, adu
        The candidates' bias values, one row per pixel (the values ``fit_band`` fitted).
    one : dict of str to numpy.ndarray, each shape (n,)
        The candidates' three-level fit, as :func:`~rtnstream.calibration.fit.fit_band` returns it
        (``mu_adu``, ``delta_adu``, ``sigma_adu``, ``frac_lo``, ``frac_hi``; adu).
    gain_e_per_adu : float
        Conversion gain, e-/ADU.
    table : ThresholdTable
        The threshold table (sigma range, ``lambda_max``).
    settings : FitSettings, optional
        Acceptance thresholds and EM controls, shared with the three-level fit (default: FitSettings()).
    one_accepted : numpy.ndarray, shape (n,), bool, optional
        Which candidates the three-level rules accepted; sets ``DQ_RTN`` in ``dq`` (default: none).

    Returns
    -------
    dict of str to numpy.ndarray
        Shape (n,) unless noted:

        - ``two_trap`` (bool): the pixel is a two-trap pixel (its parameters below replace the
          three-level ones);
        - one bool array per rule of :data:`TWO_TRAP_RULES` (True where the two-trap fit fails it);
        - ``bic_one``, ``bic_two`` (float64);
        - the two-trap fit in cube units: ``mu_adu``; ``delta_e``, ``sigma_e`` (electron);
          ``frac_c``, ``frac_lo``, ``frac_hi`` (trap 1, the larger jump); ``lammax_e`` (electron,
          trap 1's jump); and the second trap's columns ``delta2_e``, ``frac2_c``, ``frac2_lo``,
          ``frac2_hi``, ``lammax2_e`` (electron: lambda_max of the smallest positive level
          ``min(D2, D1 - D2)``, above which some positive jump of the pixel is no longer resolvable);
        - ``rel_stderr`` (n, 10; order :data:`TWO_TRAP_PARAM_NAMES`), ``n_iter`` (int32);
        - ``dq`` (uint16): ``DQ_RTN | DQ_TWO_TRAP`` for two-trap pixels, ``DQ_RTN`` for the others
          that ``one_accepted`` marks, 0 otherwise.

    Raises
    ------
    ValueError
        ``values`` not 2-D, ``one`` lacking a field or of another length, ``gain_e_per_adu`` not
        positive, or ``one_accepted`` of another shape.
    """
    values = np.asarray(values)
    if values.ndim != 2:
        raise ValueError(f"values must have shape (n_pixels, n_frames), got {values.shape}")
    n = values.shape[0]
    _check_one_trap(one, n)
    if not (np.isfinite(gain_e_per_adu) and gain_e_per_adu > 0):
        raise ValueError(f"gain_e_per_adu must be positive, got {gain_e_per_adu!r}")
    if one_accepted is None:
        one_accepted = np.zeros(n, dtype=bool)
    one_accepted = np.asarray(one_accepted, dtype=bool)
    if one_accepted.shape != (n,):
        raise ValueError(f"one_accepted has shape {one_accepted.shape}, expected ({n},)")
    settings = settings or FitSettings()
    g = float(gain_e_per_adu)
    if n == 0:
        return _empty_result(0)
    bin_width = _bin_width(values)
    y, counts, origin, width = compress_values(values, bin_width)
    s_one = np.sqrt(np.asarray(one["sigma_adu"], np.float64) ** 2 + width**2 / 12.0)
    zeros = np.zeros(n)
    theta_one = np.stack([np.asarray(one["mu_adu"], np.float64) - origin, np.asarray(one["delta_adu"]),
                          zeros, s_one, np.asarray(one["frac_lo"]), np.asarray(one["frac_hi"]), zeros, zeros],
                         axis=1)
    screened = ~one_accepted | fits_badly(y, counts, width, theta_one)
    sel = np.flatnonzero(screened)
    out = _empty_result(n)
    out["fits_one_trap"][:] = ~screened
    for p0 in range(0, sel.size, REFIT_GROUP):  # groups bound the (9, group, k) EM temporaries
        rows = sel[p0 : p0 + REFIT_GROUP]
        part = _refit(y[rows], counts[rows], origin[rows], width[rows], theta_one[rows], g, table, settings)
        for key, value in part.items():
            out[key][rows] = value
    two_trap = out["two_trap"]
    out["dq"][:] = np.where(two_trap, DQ_RTN | DQ_TWO_TRAP, np.where(one_accepted, DQ_RTN, 0))
    return out


def _refit(y, counts, origin, width, theta_one, g: float, table: ThresholdTable, settings: FitSettings
           ) -> dict[str, np.ndarray]:
    """Two-trap fit, BIC and rules of the screened pixels (the fields of :func:`fit_two_trap_candidates`)."""
    n = y.shape[0]
    two = fit_two_trap(y, counts, width, max_iter=max(settings.max_iter, 600), tol=settings.tol)
    # both models' log-likelihoods on the same values: those within OUTLIER_SIGMA of a level of either
    theta_two = two.theta()
    common = np.maximum(_outlier_mask(y, counts, theta_one), _outlier_mask(y, counts, theta_two))
    log_n = np.log(np.maximum(common.sum(axis=1), 1.0))
    bic_one = -2.0 * log_likelihood(y, common, theta_one) + N_PARAMS_ONE * log_n
    bic_two = -2.0 * log_likelihood(y, common, theta_two) + N_PARAMS_TWO * log_n

    rel = two.relative_stderr()
    mu_adu = two.mu + origin
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        rel[:, 0] = two.stderr[:, 0] / np.abs(mu_adu)
    rel = np.nan_to_num(rel, nan=np.inf)
    exempt = np.zeros(rel.shape, dtype=bool)
    for col, frac in ((5, two.frac1_lo), (6, two.frac1_hi), (8, two.frac2_lo), (9, two.frac2_hi)):
        exempt[:, col] = frac < settings.one_sided_frac
    sigma_e = two.sigma * g
    k = settings.min_delta_over_sigma
    failed = {
        "not_converged": ~two.converged,
        "large_stderr": np.any((rel > settings.max_rel_stderr) & ~exempt, axis=1),
        "side_above_centre": ((two.frac1_lo > two.frac1_c) | (two.frac1_hi > two.frac1_c)
                              | (two.frac2_lo > two.frac2_c) | (two.frac2_hi > two.frac2_c)),
        "frac_c_above_max": (two.frac1_c > settings.max_frac_c) | (two.frac2_c > settings.max_frac_c),
        "delta_below_min": ~(two.delta2 >= k * two.sigma),
        "jumps_too_close": ~(two.delta1 - two.delta2 >= MIN_SEPARATION_SIGMA * two.sigma),
        "sigma_outside_table": ~((sigma_e >= table.sigma_nodes[0]) & (sigma_e <= table.sigma_nodes[-1])),
        "bic_prefers_one": ~(bic_two < bic_one),
    }
    two_trap = ~np.logical_or.reduce([failed[r] for r in TWO_TRAP_RULES if r != "fits_one_trap"])
    delta1_e, delta2_e = two.delta1 * g, two.delta2 * g
    lammax = np.full(n, np.nan)
    lammax2 = np.full(n, np.nan)
    if np.any(two_trap):
        sig = sigma_e[two_trap]
        lammax[two_trap] = table.lambda_max(delta1_e[two_trap], sig)
        smallest = np.minimum(delta2_e, delta1_e - delta2_e)[two_trap]
        lammax2[two_trap] = table.lambda_max(smallest, sig)
    return {
        "two_trap": two_trap, **failed, "bic_one": bic_one, "bic_two": bic_two,
        "mu_adu": mu_adu, "delta_e": delta1_e, "sigma_e": sigma_e, "frac_c": two.frac1_c,
        "frac_lo": two.frac1_lo, "frac_hi": two.frac1_hi, "lammax_e": lammax,
        "delta2_e": delta2_e, "frac2_c": two.frac2_c, "frac2_lo": two.frac2_lo, "frac2_hi": two.frac2_hi,
        "lammax2_e": lammax2, "rel_stderr": rel, "n_iter": two.n_iter,
    }


_FLOAT_FIELDS = ("bic_one", "bic_two", "mu_adu", "delta_e", "sigma_e", "frac_c", "frac_lo", "frac_hi", "lammax_e",
                 "delta2_e", "frac2_c", "frac2_lo", "frac2_hi", "lammax2_e")


def _empty_result(n: int) -> dict[str, np.ndarray]:
    """Result of :func:`fit_two_trap_candidates` for ``n`` pixels none of which was refitted."""
    out: dict[str, np.ndarray] = {k: np.zeros(n, dtype=bool) for k in ("two_trap", *TWO_TRAP_RULES)}
    for k in _FLOAT_FIELDS:
        out[k] = np.full(n, np.nan)
    out["rel_stderr"] = np.full((n, len(TWO_TRAP_PARAM_NAMES)), np.inf)
    out["n_iter"] = np.zeros(n, dtype=np.int32)
    out["dq"] = np.zeros(n, dtype=np.uint16)
    return out


#: The fields of a two-trap pixel that :func:`refit_band` returns (as ``two_<field>``): the cube's columns.
CUBE_FIELDS = (*_RTN_COLUMNS, *_SECOND_TRAP_COLUMNS)
# EM work arrays of the refit per candidate value: about 10 arrays of the 9 components, float64
_REFIT_WORK_BYTES_PER_VALUE = 10 * 9 * 8
_REFIT_GROUP_BYTES = 64 * 1024**2


def refit_band(data: np.ndarray, mask: np.ndarray, one: dict[str, np.ndarray], gain_e_per_adu: float,
               settings: FitSettings | None = None, max_bytes: int = 64 * 1024**2) -> dict[str, np.ndarray]:
    """The two-trap refit of a band's candidates after their three-level fit (what ``fit_bias_stack`` runs).

    The candidates the three-level rules accept and whose values it explains (:func:`fits_badly`) are kept;
    the others are refitted by :func:`fit_two_trap_candidates`, in groups that keep the EM's work arrays
    within ``max_bytes``.

    Parameters
    ----------
    data : numpy.ndarray, shape (n_frames, n_rows, n_cols), adu
        The band, as :func:`~rtnstream.calibration.fit.fit_band` fitted it.
    mask : numpy.ndarray, shape (n_rows, n_cols), bool
        The candidates.
    one : dict of str to numpy.ndarray, each shape (n_masked,)
        :func:`~rtnstream.calibration.fit.fit_band`'s output for this band and mask.
    gain_e_per_adu : float
        Conversion gain, e-/ADU.
    settings : FitSettings, optional
        Acceptance thresholds and EM controls (``alpha`` selects the threshold table; default
        FitSettings()).
    max_bytes : int
        Working memory of the refit.

    Returns
    -------
    dict of str to numpy.ndarray
        ``two_trap``: shape (n_masked,), bool, in the row-major order of ``mask``; ``two_<field>`` for each
        field of :data:`CUBE_FIELDS`: shape (n_two,), the two-trap pixels' cube columns in the same order
        (units of :func:`fit_two_trap_candidates`); ``refitted``: shape (1,), int64, candidates refitted;
        ``rule_counts``: shape (1, len(TWO_TRAP_RULES)), int64, candidates failing each rule (for
        ``fits_one_trap``: not refitted).
    """
    settings = settings or FitSettings()
    table = get_table(settings.alpha)
    g = float(gain_e_per_adu)
    sigma_range = (float(table.sigma_nodes[0]), float(table.sigma_nodes[-1]))
    accepted = acceptance(one, g, settings, sigma_range)["accepted"]
    rows, cols = np.nonzero(mask)
    if accepted.shape != rows.shape:
        raise ValueError(f"one: {accepted.size} three-level fits for the {rows.size} pixels of mask")
    group = max(1, min(int(max_bytes), _REFIT_GROUP_BYTES) // (_REFIT_WORK_BYTES_PER_VALUE * data.shape[0]))
    parts: dict[str, list[np.ndarray]] = {k: [] for k in ("two_trap", *(f"two_{f}" for f in CUBE_FIELDS))}
    refitted, rule_counts = 0, np.zeros(len(TWO_TRAP_RULES), dtype=np.int64)
    keys = ("mu_adu", "delta_adu", "sigma_adu", "frac_lo", "frac_hi")
    for p0 in range(0, rows.size, group):
        sl = slice(p0, p0 + group)
        values = data[:, rows[sl], cols[sl]].T
        res = fit_two_trap_candidates(values, {k: one[k][sl] for k in keys}, g, table, settings,
                                      one_accepted=accepted[sl])
        two = res["two_trap"]
        parts["two_trap"].append(two)
        for f in CUBE_FIELDS:
            parts[f"two_{f}"].append(res[f][two])
        screened = ~res["fits_one_trap"]
        refitted += int(screened.sum())
        rule_counts += [int(np.count_nonzero(res[r])) for r in TWO_TRAP_RULES]
    out = {k: (np.concatenate(v) if v else np.zeros(0, dtype=bool if k == "two_trap" else np.float64))
           for k, v in parts.items()}
    out["refitted"] = np.array([refitted], dtype=np.int64)
    out["rule_counts"] = rule_counts[None, :]
    return out
