"""rtnstream.evaluate.prediction: the cube's per-star prediction and the Monte Carlo, against closed forms and
the RTN paper's conclusions (its Fig. 6)."""

import numpy as np
import pytest

from rtnstream.evaluate.photometry import Apertures
from rtnstream.evaluate.prediction import PixelNoise, monte_carlo, predict_gains
from rtnstream.kernels.simulate import SensorModel


@pytest.fixture(scope="module")
def cube():
    return SensorModel.random((96, 96), rtn_fraction=0.05, seed=7).true_cube()


def _uniform_cube(rn_e: float, sigma_e: float, lammax_e: float, shape=(40, 40)):
    """Every pixel an RTN pixel with the same read noise, sigma and lambda_max."""
    sensor = SensorModel.random(shape, rtn_fraction=1.0, seed=1)
    c = sensor.true_cube()
    c.readnoise_e = np.full(shape, rn_e)
    c.sigma_e = np.full(shape, sigma_e)
    c.lammax_e = np.full(shape, lammax_e)
    return c


def test_monte_carlo_matches_the_closed_form_in_the_read_noise_limit():
    # every pixel RTN with RN = 3, sigma = 1.2: at vanishing flux the corrected pixels have sigma, so the SNR
    # ratio is RN / sigma exactly, the ideal the same, and masking every pixel leaves no signal
    c = _uniform_cube(3.0, 1.2, 50.0)
    r = monte_carlo(c, 2.6, [1e-6], rtn_fraction=1.0, n_trials=50)
    assert r["gain_corrected_median"][0] == pytest.approx(3.0 / 1.2, rel=1e-6)
    assert r["gain_ideal_median"][0] == pytest.approx(3.0 / 1.2, rel=1e-6)
    assert r["gain_masked_median"][0] == 0.0
    # at lambda_max and beyond the corrected pixel is back at RN: the flux puts the peak pixel far above 50 e-
    bright = monte_carlo(c, 2.6, [1e6], rtn_fraction=1.0, n_trials=50)
    assert bright["gain_corrected_median"][0] < 1.0 + 1e-3


def test_no_rtn_pixels_no_change(cube):
    r = monte_carlo(cube, 2.6, [10.0, 1000.0], rtn_fraction=0.0, n_trials=100)
    for name in ("corrected", "masked", "ideal"):
        np.testing.assert_allclose(r[f"gain_{name}_median"], 1.0, rtol=1e-12)
    noise = PixelNoise.from_cube(cube)
    ap = Apertures(np.array([[30.2, 40.7], [60.5, 20.1]]), 2.6, cube.shape, excluded=np.zeros(cube.shape, bool))
    clean = PixelNoise(noise.rn_e, noise.rn_e, np.zeros(cube.shape), np.zeros(cube.shape, bool))
    yy, xx = np.mgrid[: cube.shape[0], : cube.shape[1]]
    stars = sum(100 * np.exp(-((xx - x) ** 2 + (yy - y) ** 2) / 2.4) for x, y in ap.positions_xy)
    g = predict_gains(ap, 2.0 + stars, clean)
    np.testing.assert_allclose(g["gain_corrected"], 1.0)
    np.testing.assert_allclose(g["gain_masked"], 1.0)


def test_monte_carlo_reproduces_the_papers_conclusions(cube):
    # 100 e- is read-noise limited for a 6 px FWHM (about 1 e- per pixel) but not in an undersampled core
    faint, bright = 100.0, 30000.0
    under = monte_carlo(cube, 2.6, [faint, bright], n_trials=3000, seed=1)
    well = monte_carlo(cube, 6.0, [faint, bright], n_trials=3000, seed=1)
    # correction never worse than masking on average, and never better than no RTN at all
    for r in (under, well):
        assert np.all(r["gain_corrected_mean"] >= r["gain_masked_mean"])
        assert np.all(r["gain_ideal_mean"] >= r["gain_corrected_mean"] - 1e-12)
    # undersampled: masking throws away a large share of the light of a star on an RTN pixel
    assert under["gain_masked_mean"][0] - 1 < 0.5 * (under["gain_corrected_mean"][0] - 1)
    # well sampled and read-noise limited: masking comes close to correction
    assert well["gain_masked_mean"][0] - 1 > 0.7 * (well["gain_corrected_mean"][0] - 1) > 0
    # bright: masking lowers the SNR on average, correction does not
    for r in (under, well):
        assert r["gain_masked_mean"][1] < 1.0 <= r["gain_corrected_mean"][1] + 1e-12
    assert 0 < under["masked_worse_fraction"][1] <= 1


def test_bad_input_names_the_parameter(cube):
    with pytest.raises(ValueError, match="fwhm_px"):
        monte_carlo(cube, 0.0, [10.0])
    with pytest.raises(ValueError, match="flux_e"):
        monte_carlo(cube, 2.6, [-1.0])
    with pytest.raises(ValueError, match="rtn_fraction"):
        monte_carlo(cube, 2.6, [10.0], rtn_fraction=1.5)
    with pytest.raises(ValueError, match="sky_e"):
        monte_carlo(cube, 2.6, [10.0], sky_e=-1.0)
