"""Tests of calibration/_em.py: the batched three-level fit against an independent optimiser and Monte Carlo."""

import numpy as np
import pytest
from scipy.optimize import minimize
from scipy.stats import norm

from rtnstream.calibration._em import compress_values, fit_three_level

# one pixel's truth, adu: D = 5 sigma, two-sided
MU, D, S, B_LO, B_HI = 500.0, 20.0, 4.0, 0.06, 0.04
N_VALUES = 1000


def draw(n_pixels: int, seed: int, b_lo: float = B_LO, b_hi: float = B_HI) -> np.ndarray:
    """Integer values (n_pixels, N_VALUES) of the three-level model, rounded like an ADC."""
    rng = np.random.default_rng(seed)
    u = rng.random((n_pixels, N_VALUES))
    level = np.where(u < b_lo, -1, np.where(u < b_lo + b_hi, 1, 0))
    return np.rint(MU + level * D + rng.normal(0, S, level.shape)).astype(np.int64)


@pytest.fixture(scope="module")
def replicas():
    values = draw(400, seed=1)
    y, counts, origin, width = compress_values(values)
    return values, fit_three_level(y, counts, width), origin


def test_compression_is_lossless():
    values = draw(50, seed=2)
    y, counts, origin, width = compress_values(values)
    assert np.all(width == 1) and y.shape[1] < N_VALUES / 5
    for row in range(values.shape[0]):
        back = np.repeat(y[row] + origin[row], counts[row].astype(int))
        np.testing.assert_array_equal(back, np.sort(values[row]))


def test_non_finite_values_get_no_count():
    values = draw(20, seed=4).astype(np.float64)
    holed = values.copy()
    holed[:, ::7] = np.nan
    holed[3, 1] = np.inf
    holed[4, 2] = -np.inf
    y, counts, origin, width = compress_values(holed, 1.0)
    kept = np.isfinite(holed)
    assert np.all(counts.sum(axis=1) == kept.sum(axis=1)) and np.all(width == 1)
    for row in range(values.shape[0]):
        back = np.repeat(y[row] + origin[row], counts[row].astype(int))
        np.testing.assert_array_equal(back, np.sort(values[row][kept[row]]))
    # fitting the finite values with holes gives the fit of the finite values alone
    fit_holed = fit_three_level(y, counts, width)
    y2, counts2, origin2, _ = compress_values(values[5:6, kept[5]].astype(np.int64))
    alone = fit_three_level(y2, counts2)
    assert fit_holed.mu[5] + origin[5] == pytest.approx(alone.mu[0] + origin2[0], abs=1e-9)
    assert fit_holed.delta[5] == pytest.approx(alone.delta[0], abs=1e-9)
    with pytest.raises(ValueError, match="without any finite value"):
        compress_values(np.full((1, 5), np.nan), 1.0)


def test_float_values_are_binned_to_the_width():
    values = np.random.default_rng(3).normal(0, 4, (5, 300))
    y, counts, origin, width = compress_values(values, 0.25)
    assert np.all(counts.sum(axis=1) == 300)
    back = np.repeat(y[0] + origin[0], counts[0].astype(int))
    assert np.max(np.abs(back - np.sort(values[0]))) <= 0.125 + 1e-12


def _negloglik(theta, x):
    mu, d, s, b_lo, b_hi = theta
    if s <= 0 or b_lo < 0 or b_hi < 0 or b_lo + b_hi >= 1:
        return np.inf
    p = ((1 - b_lo - b_hi) * norm.pdf(x, mu, s) + b_lo * norm.pdf(x, mu - d, s) + b_hi * norm.pdf(x, mu + d, s))
    return -np.sum(np.log(p))


def test_maximum_agrees_with_a_direct_optimiser(replicas):
    values, fit, origin = replicas
    for i in range(4):
        x = values[i].astype(np.float64)
        start = [MU + 1, D * 0.9, S * 1.1, 0.05, 0.05]
        ref = minimize(_negloglik, start, args=(x,), method="Nelder-Mead",
                       options={"xatol": 1e-7, "fatol": 1e-9, "maxiter": 20000, "maxfev": 40000})
        assert ref.success
        mu, d, s, b_lo, b_hi = ref.x
        assert fit.mu[i] + origin[i] == pytest.approx(mu, abs=1e-3)
        assert fit.delta[i] == pytest.approx(d, abs=1e-3)
        # the fit reports sigma with the 1-adu rounding variance removed (Sheppard's correction)
        assert np.sqrt(fit.sigma[i] ** 2 + 1 / 12) == pytest.approx(s, abs=1e-3)
        assert fit.frac_lo[i] == pytest.approx(b_lo, abs=1e-4)
        assert fit.frac_hi[i] == pytest.approx(b_hi, abs=1e-4)
        assert -_negloglik([fit.mu[i] + origin[i], fit.delta[i], np.sqrt(fit.sigma[i] ** 2 + 1 / 12),
                            fit.frac_lo[i], fit.frac_hi[i]], x) == pytest.approx(-ref.fun, abs=1e-5)


def test_estimates_are_unbiased_and_standard_errors_match_the_scatter(replicas):
    _, fit, origin = replicas
    assert fit.converged.all()
    estimates = {"mu": fit.mu + origin, "delta": fit.delta, "sigma": fit.sigma, "frac_lo": fit.frac_lo,
                 "frac_hi": fit.frac_hi}
    truth = {"mu": MU, "delta": D, "sigma": S, "frac_lo": B_LO, "frac_hi": B_HI}
    column = {"mu": 0, "delta": 1, "sigma": 2, "frac_lo": 4, "frac_hi": 5}
    for name, est in estimates.items():
        se = np.median(fit.stderr[:, column[name]])
        scatter = np.std(est, ddof=1)
        # 400 replicas: the scatter is known to about 4 %, the mean to 0.05 standard errors
        assert scatter == pytest.approx(se, rel=0.15), name
        assert abs(np.mean(est) - truth[name]) < 4 * scatter / np.sqrt(est.size), name


def test_outliers_are_left_out():
    values = draw(20, seed=4)
    outliers = np.array([3000, 400, -250]) + values[:, :3]  # cosmic rays and a glitch, far from every level
    clean = fit_three_level(*compress_values(values)[:2])
    y, counts, origin, _ = compress_values(np.hstack([values, outliers]))
    hit = fit_three_level(y, counts)
    assert np.all(hit.n_used == N_VALUES)
    # the same values enter the likelihood: the same maximum (EM starts elsewhere, so it stops within its
    # tolerance of it, far below a thousandth of a standard error)
    assert np.all(np.abs(hit.mu + origin - clean.mu - compress_values(values)[2]) < 1e-3 * hit.stderr[:, 0])
    for col, name in ((1, "delta"), (2, "sigma"), (4, "frac_lo"), (5, "frac_hi")):
        assert np.all(np.abs(getattr(hit, name) - getattr(clean, name)) < 1e-3 * hit.stderr[:, col]), name


def test_one_sided_pixel_has_an_empty_side():
    values = draw(30, seed=5, b_lo=0.0, b_hi=0.08)
    fit = fit_three_level(*compress_values(values)[:2])
    assert np.all(fit.frac_lo < 0.01)
    assert np.median(fit.frac_hi) == pytest.approx(0.08, abs=0.01)
    assert np.median(fit.delta) == pytest.approx(D, rel=0.02)


def test_normal_pixel_is_not_a_confident_rtn_fit():
    values = np.rint(MU + np.random.default_rng(6).normal(0, S, (30, N_VALUES))).astype(np.int64)
    fit = fit_three_level(*compress_values(values)[:2])
    # EM finds no side levels (a > 0.95), or levels too close to be jumps (Delta < 3 sigma), or their
    # parameters are not determined: every acceptance rule of ALGORITHM.md 6.3 that can apply, rejects
    side = fit.frac_lo + fit.frac_hi
    undetermined = fit.relative_stderr()[:, 1:].max(axis=1) > 1 / 3
    assert np.all((side < 0.05) | undetermined | ~fit.converged | (fit.delta < 3 * fit.sigma))
    assert undetermined.mean() > 0.5


def test_bad_shapes_are_refused():
    with pytest.raises(ValueError, match="shape"):
        compress_values(np.zeros(10))
    with pytest.raises(ValueError, match="y .* and counts"):
        fit_three_level(np.zeros((2, 3)), np.zeros((2, 4)))
