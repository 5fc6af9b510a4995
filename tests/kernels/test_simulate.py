"""Tests of kernels/simulate.py: the simulated sensor's statistics and scenes match what they claim."""

import numpy as np
import pytest

from rtnstream.kernels.cube import DQ_RTN, model_mean_and_std
from rtnstream.kernels.simulate import Scene, SensorModel

SHAPE = (64, 64)
N = 300


@pytest.fixture(scope="module")
def sensor():
    return SensorModel.random(SHAPE, rtn_fraction=0.2, seed=5)


@pytest.fixture(scope="module")
def bias(sensor):
    return sensor.stack(N, seed=6)


def test_random_sensor_parameters(sensor):
    npix = SHAPE[0] * SHAPE[1]
    assert sensor.n_rtn == round(0.2 * npix)
    assert np.all(np.diff(sensor.rtn_index) > 0) and 0 <= sensor.rtn_index[0] and sensor.rtn_index[-1] < npix
    sigma = sensor.sigma_e.ravel()[sensor.rtn_index]
    ratio = sensor.delta_e / sigma
    assert ratio.min() >= 3.0 and ratio.max() <= 10.0
    assert np.all((sensor.sigma_e >= 0.5) & (sensor.sigma_e <= 5.0))
    assert np.median(sensor.sigma_e) == pytest.approx(1.2, rel=0.02)
    np.testing.assert_allclose(sensor.frac_c + sensor.frac_lo + sensor.frac_hi, 1.0, rtol=0, atol=1e-12)
    assert np.all((sensor.frac_c >= 0.8) & (sensor.frac_c <= 0.94))
    one_sided = (sensor.frac_lo == 0) | (sensor.frac_hi == 0)
    # default one_sided_fraction 0.2: binomial over the RTN pixels
    assert abs(one_sided.mean() - 0.2) < 4 * np.sqrt(0.2 * 0.8 / sensor.n_rtn)
    assert (sensor.frac_lo == 0).any() and (sensor.frac_hi == 0).any()


def test_state_frequencies_match_the_fractions(sensor, bias):
    _, states, _ = bias
    counts = np.stack([np.sum(states == s, axis=0) for s in (-1, 0, 1)])  # (3, n_rtn)
    probs = np.stack([sensor.frac_lo, sensor.frac_c, sensor.frac_hi])
    assert set(np.unique(states)) == {-1, 0, 1}
    # one-sided pixels never visit their missing side
    assert np.all(counts[0][sensor.frac_lo == 0] == 0)
    assert np.all(counts[2][sensor.frac_hi == 0] == 0)
    # Pearson chi-square pooled over pixels: sum of (O - E)^2 / E has mean = dof and variance = 2 dof
    expected = N * probs
    used = expected > 0
    chi2 = np.sum(np.where(used, (counts - expected) ** 2 / np.where(used, expected, 1.0), 0.0))
    dof = int(np.sum(used.sum(axis=0) - 1))
    assert abs(chi2 - dof) < 4 * np.sqrt(2 * dof)


def test_jumps_have_the_right_size(sensor, bias):
    data, states, clean = bias
    g = sensor.gain_e_per_adu
    flat_data = data.reshape(N, -1).astype(np.float64)
    flat_clean = clean.reshape(N, -1)
    jumped = flat_clean.copy()
    jumped[:, sensor.rtn_index] += states * sensor.delta_e / g
    # data = rint(clean + state Delta / g), nothing else: within half an ADU everywhere (no clipping here)
    assert flat_data.min() > 0 and flat_data.max() < 65535
    assert np.max(np.abs(flat_data - jumped)) <= 0.5 + 1e-9
    # and the jump really is there: RTN pixels in the low / high state sit Delta below / above
    resid = (flat_data[:, sensor.rtn_index] - flat_clean[:, sensor.rtn_index]) * g
    low, high = states == -1, states == 1
    tol = 0.5 * g + 1e-9
    assert np.all(np.abs(resid[low] + np.broadcast_to(sensor.delta_e, resid.shape)[low]) <= tol)
    assert np.all(np.abs(resid[high] - np.broadcast_to(sensor.delta_e, resid.shape)[high]) <= tol)
    assert np.all(np.abs(resid[states == 0]) <= tol)


def test_rtn_free_read_noise_is_sigma(sensor, bias):
    _, _, clean = bias
    z = (clean - sensor.bias_adu) * sensor.gain_e_per_adu / sensor.sigma_e
    # 1.2 million standard normal values: mean and std to about 0.001
    assert abs(z.mean()) < 0.005
    assert z.std() == pytest.approx(1.0, abs=0.005)


def test_mean_bias_of_rtn_pixels_is_the_mixture_mean(sensor, bias, table):
    data, _, _ = bias
    cube = sensor.true_cube(table=table)
    idx = np.unravel_index(sensor.rtn_index, SHAPE)
    x = data[:, idx[0], idx[1]].astype(np.float64)
    z = (x.mean(axis=0) - cube.meanbias_adu[idx]) / (x.std(axis=0, ddof=1) / np.sqrt(N))
    assert abs(z.mean()) < 0.2 and z.std() < 1.2  # ~820 pixels: the mean of z is N(0, 0.035)
    # and their total noise is the model's
    rn = x.std(axis=0, ddof=1) * sensor.gain_e_per_adu
    assert np.median(rn / cube.readnoise_e[idx]) == pytest.approx(1.0, abs=0.03)


def test_true_cube(sensor, table):
    cube = sensor.true_cube(table=table)
    mask = np.zeros(SHAPE[0] * SHAPE[1], bool)
    mask[sensor.rtn_index] = True
    mask = mask.reshape(SHAPE)
    np.testing.assert_array_equal(cube.rtn_mask, mask)
    np.testing.assert_array_equal(cube.dq, np.where(mask, DQ_RTN, 0))
    np.testing.assert_array_equal(cube.mu_adu[mask], sensor.bias_adu[mask])
    np.testing.assert_array_equal(cube.delta_e[mask], sensor.delta_e)
    np.testing.assert_array_equal(cube.sigma_e[mask], sensor.sigma_e[mask])
    np.testing.assert_array_equal(cube.frac_lo[mask], sensor.frac_lo.astype(np.float32))  # held at float32
    np.testing.assert_array_equal(cube.frac_hi[mask], sensor.frac_hi.astype(np.float32))
    np.testing.assert_array_equal(cube.lammax_e[mask], table.lambda_max(sensor.delta_e, sensor.sigma_e[mask]))
    mean, std = model_mean_and_std(sensor.bias_adu[mask], sensor.delta_e, sensor.sigma_e[mask],
                                   sensor.frac_lo, sensor.frac_hi, sensor.gain_e_per_adu)
    # RTNCube holds the two full-sensor maps at float32 precision (the precision cube format 2 stores)
    f32 = lambda a: a.astype(np.float32).astype(np.float64)  # noqa: E731
    np.testing.assert_array_equal(cube.meanbias_adu[mask], f32(mean))
    np.testing.assert_array_equal(cube.readnoise_e[mask], f32(std))
    np.testing.assert_array_equal(cube.meanbias_adu[~mask], f32(sensor.bias_adu[~mask]))
    np.testing.assert_array_equal(cube.readnoise_e[~mask], f32(sensor.sigma_e[~mask]))
    assert cube.gain_e_per_adu == sensor.gain_e_per_adu
    for attr in ("mu_adu", "delta_e", "sigma_e", "frac_c", "lammax_e"):
        assert np.all(np.isnan(getattr(cube, attr)[~mask])), attr


def test_frames_are_reproducible(sensor):
    a = next(sensor.frames(1, seed=3))
    b = next(sensor.frames(1, seed=3))
    c = next(sensor.frames(1, seed=4))
    np.testing.assert_array_equal(a.data, b.data)
    np.testing.assert_array_equal(a.states, b.states)
    assert np.any(a.data != c.data)
    again = SensorModel.random(SHAPE, rtn_fraction=0.2, seed=5)
    np.testing.assert_array_equal(again.bias_adu, sensor.bias_adu)
    np.testing.assert_array_equal(again.delta_e, sensor.delta_e)


@pytest.mark.parametrize("level", [2.0, 65533.0])
def test_frames_clip_to_the_uint16_range(level):
    sensor = SensorModel.random((16, 16), bias_level_adu=level, seed=1)
    data, _, clean = sensor.stack(5, seed=2)
    assert data.dtype == np.uint16
    expected = np.clip(np.rint(clean), 0, 65535)
    rtn = np.zeros(16 * 16, bool)
    rtn[sensor.rtn_index] = True
    non_rtn = ~rtn.reshape(16, 16)
    np.testing.assert_array_equal(data[:, non_rtn], expected[:, non_rtn])
    clipped = (clean < -0.5) if level < 100 else (clean > 65535.5)
    assert clipped.any()  # the clip really happened


# ---- scenes --------------------------------------------------------------------------------------


def test_bias_and_flat_scenes():
    bias = Scene.make("bias", SHAPE)
    assert bias.sky_e == 0 and np.all(bias.flux_e(0) == 0)
    flat = Scene.make("flat", SHAPE, sky_e=35.0)
    np.testing.assert_array_equal(flat.flux_e(7), np.full(SHAPE, 35.0))


def test_flat_frames_have_poisson_signal(sensor):
    sky = 40.0
    _, _, clean = sensor.stack(60, Scene.make("flat", SHAPE, sky_e=sky), seed=9)
    e = (clean - sensor.bias_adu) * sensor.gain_e_per_adu
    assert e.mean() == pytest.approx(sky, abs=0.05)  # 246 000 values of std 6.4: SE 0.013
    # variance = Poisson (sky) + read noise (sigma^2), per pixel, pooled
    excess = np.mean(e.var(axis=0, ddof=1) - sensor.sigma_e**2)
    assert excess == pytest.approx(sky, rel=0.03)


def test_star_scene_flux_and_positions():
    scene = Scene.make("stars", (80, 100), sky_e=10.0, n_stars=15, star_flux_e=(500.0, 20000.0), seed=2)
    margin = 3 * scene.fwhm_px
    assert scene.star_y.size == 15
    assert np.all((scene.star_y >= margin) & (scene.star_y <= 80 - 1 - margin))
    assert np.all((scene.star_x >= margin) & (scene.star_x <= 100 - 1 - margin))
    assert np.all((scene.star_flux_e >= 500.0) & (scene.star_flux_e <= 20000.0))
    img = scene.flux_e(0)
    # every star's flux lands on the sensor (PSF stamp cut at 4 sigma: at most 0.03 % lost)
    total = np.sum(img - 10.0)
    assert total == pytest.approx(scene.star_flux_e.sum(), rel=3e-4)
    assert total <= scene.star_flux_e.sum()
    np.testing.assert_array_equal(scene.flux_e(5), img)  # a 'stars' scene does not vary


def test_one_star_centroid_and_width():
    scene = Scene("stars", (41, 41), sky_e=0.0, star_y=np.array([20.3]), star_x=np.array([19.6]),
                  star_flux_e=np.array([1000.0]), fwhm_px=3.0)
    img = scene.flux_e(0)
    yy, xx = np.mgrid[:41, :41]
    f = img.sum()
    cy, cx = (img * yy).sum() / f, (img * xx).sum() / f
    assert cy == pytest.approx(20.3, abs=1e-3) and cx == pytest.approx(19.6, abs=1e-3)
    var_x = (img * (xx - cx) ** 2).sum() / f
    assert np.sqrt(var_x) * 2.3548 == pytest.approx(3.0, rel=0.01)  # FWHM = 2.3548 sigma of a Gaussian


def test_varying_scene_follows_its_sinusoid():
    scene = Scene.make("varying", SHAPE, n_stars=4, variability=0.3, seed=1)
    for t in (0, 3, 17):
        expected = scene.star_flux_e * (1 + 0.3 * np.sin(2 * np.pi * t / scene.period_frames))
        np.testing.assert_allclose(scene.star_fluxes(t), expected, rtol=1e-15)
        total = np.sum(scene.flux_e(t) - scene.sky_e)
        assert total == pytest.approx(expected.sum(), rel=3e-4)
    assert np.all((scene.period_frames >= 8) & (scene.period_frames <= 40))
    assert not np.allclose(scene.flux_e(0), scene.flux_e(5))


def test_invalid_arguments_name_the_parameter():
    with pytest.raises(ValueError, match="scene kind"):
        Scene.make("galaxy", SHAPE)
    with pytest.raises(ValueError, match="rtn_fraction"):
        SensorModel.random(SHAPE, rtn_fraction=1.5)
