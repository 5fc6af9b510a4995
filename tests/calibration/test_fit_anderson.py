"""Tests of calibration/_anderson.py: the candidate test's statistic, clipping, dither and false-alarm rate."""

import numpy as np
import pytest
from scipy.stats import anderson

from rtnstream.calibration._anderson import A2_CRITICAL_1PC, anderson_darling_band, dither

N = 400


def normal_band(n_rows: int, n_cols: int, sd_adu: float, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.rint(1000 + rng.normal(0, sd_adu, (N, n_rows, n_cols))).astype(np.uint16)


def test_statistic_matches_scipy_after_clipping_and_dither():
    data = normal_band(3, 7, 4.0, seed=1)
    data[5, 1, 2] += 3000  # a cosmic ray, clipped
    data[9, 2, 6] += 40
    stat = anderson_darling_band(data, y0=11, seed=3)
    for r in range(3):
        for c in range(7):
            x = data[:, r, c].astype(np.float64)
            for _ in range(3):  # the procedure of ALGORITHM.md 6.2, written out
                far = np.abs(x - x.mean()) > 5 * x.std(ddof=1)
                x = np.where(far, x[~far].mean(), x)
            x = x + dither(3, 11 + r, c, c + 1, N)[:, 0]
            ref = anderson(x, dist="norm", method="interpolate").statistic * (1 + 0.75 / N + 2.25 / N**2)
            assert stat[r, c] == pytest.approx(ref, rel=1e-10, abs=1e-12)


def test_dither_is_uniform_and_independent_of_the_cut():
    full = dither(7, 4, 0, 64, N)
    assert full.shape == (N, 64) and -0.5 <= full.min() and full.max() < 0.5
    assert abs(full.mean()) < 0.01 and full.std() == pytest.approx(np.sqrt(1 / 12), rel=0.01)
    np.testing.assert_array_equal(dither(7, 4, 20, 33, N), full[:, 20:33])
    assert not np.array_equal(dither(7, 5, 0, 64, N), full)


def test_result_does_not_depend_on_bands_or_groups():
    data = normal_band(6, 9, 3.0, seed=2)
    whole = anderson_darling_band(data, y0=100)
    tiny = anderson_darling_band(data, y0=100, max_bytes=1)  # one pixel at a time
    halves = np.vstack([anderson_darling_band(data[:, :4], y0=100), anderson_darling_band(data[:, 4:], y0=104)])
    # equal up to the order of float additions (numpy sums a one-pixel group pairwise), which -n - S
    # (S about -n) magnifies to about 1e-11
    np.testing.assert_allclose(tiny, whole, rtol=0, atol=1e-10)
    np.testing.assert_allclose(halves, whole, rtol=0, atol=1e-10)


@pytest.mark.parametrize("sd_adu", [1.2, 4.0])
def test_false_alarm_rate_is_one_percent_on_normal_pixels(sd_adu):
    # integer values of sd 1.2 adu look non-normal to A^2 without the dither (every pixel flagged)
    data = normal_band(100, 200, sd_adu, seed=3)
    raw = data[:, 0, :50].astype(np.float64)
    assert all(anderson(raw[:, c], dist="norm", method="interpolate").statistic > A2_CRITICAL_1PC
               for c in range(50)) or sd_adu > 2
    data[17] += 2000  # a cosmic ray in every pixel: clipped, no effect on the rate
    rate = np.mean(anderson_darling_band(data, y0=0) > A2_CRITICAL_1PC)
    # 20000 pixels: binomial standard deviation of the rate 0.07 %
    assert 0.006 < rate < 0.015


def test_rtn_pixels_are_flagged():
    rng = np.random.default_rng(4)
    u = rng.random((N, 50, 50))
    level = np.where(u < 0.04, -1, np.where(u < 0.08, 1, 0))  # Delta = 4 sigma, sides 0.08
    data = np.rint(1000 + 16.0 * level + rng.normal(0, 4.0, level.shape)).astype(np.uint16)
    assert np.mean(anderson_darling_band(data, y0=0) > A2_CRITICAL_1PC) > 0.99


def test_bad_input_is_refused():
    data = np.full((N, 1, 2), 7, dtype=np.uint16)
    with pytest.raises(ValueError, match="at least 8 frames"):
        anderson_darling_band(data[:5], y0=0)
    with pytest.raises(ValueError, match="shape"):
        anderson_darling_band(data[:, 0], y0=0)
