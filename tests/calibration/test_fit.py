"""Tests of calibration/fit.py and ``rtnstream fit``: RTN cubes fitted from simulated bias stacks in FITS files.

Ground truth is a :class:`SensorModel` (kernels/simulate.py); stacks are written to real FITS files (3D
cubes and 2D frames mixed) and read back through calibration/stacks.py.
"""

import json
import tracemalloc

import numpy as np
import pytest
from astropy.io import fits

from rtnstream.calibration.fit import (
    MAP_BYTES_PER_PIXEL,
    REJECTION_RULES,
    FitSettings,
    fill_non_finite,
    fit_bias_stack,
    moments_band,
    plan_bands,
    predicted_read_noise,
)
from rtnstream.calibration.fit_report import PLOT_FILES, report_path
from rtnstream.calibration.stacks import FitsStack
from rtnstream.cli import main
from rtnstream.kernels.cube import DQ_ANOMALOUS_MEAN, DQ_ANOMALOUS_STD, DQ_RTN, read_cube
from rtnstream.kernels.lut import get_table
from rtnstream.kernels.simulate import SensorModel

SHAPE = (56, 56)
F32 = 6e-8  # relative rounding of float32, the precision of the cube's MEANBIAS and READNOISE
N_FRAMES = 1000


def write_stack(folder, data: np.ndarray, n_single: int = 10) -> list:
    """Write ``data`` (n, ny, nx) as two 3D cubes then ``n_single`` 2D frames, each frame with a DATE-OBS."""
    n = data.shape[0]
    split = (n - n_single) * 2 // 3
    paths = []
    hdr = fits.Header({"INSTRUME": "simcam", "DATE-OBS": "2025-03-01T20:00:00.000"})
    paths.append(folder / "cube_a.fits")
    fits.PrimaryHDU(data[:split], header=hdr).writeto(paths[-1])
    hdr = fits.Header({"INSTRUME": "simcam", "DATE-OBS": "2025-03-01T20:10:00.000"})
    paths.append(folder / "cube_b.fits")
    fits.PrimaryHDU(data[split : n - n_single], header=hdr).writeto(paths[-1])
    for k in range(n_single):
        hdr = fits.Header({"INSTRUME": "simcam", "DATE-OBS": f"2025-03-01T20:{30 + k:02d}:00.000"})
        paths.append(folder / f"frame_{k:03d}.fits")
        fits.PrimaryHDU(data[n - n_single + k], header=hdr).writeto(paths[-1])
    return paths


@pytest.fixture(scope="module")
def sensor():
    return SensorModel.random(SHAPE, rtn_fraction=0.06, one_sided_fraction=0.3, seed=11)


@pytest.fixture(scope="module")
def stack_data(sensor):
    data, _, _ = sensor.stack(N_FRAMES, seed=12)
    return data


@pytest.fixture(scope="module")
def stack_files(tmp_path_factory, stack_data):
    return write_stack(tmp_path_factory.mktemp("bias"), stack_data)


@pytest.fixture(scope="module")
def result(stack_files, sensor):
    return fit_bias_stack(stack_files, sensor.gain_e_per_adu)


def _truth_masks(sensor):
    sigma = sensor.sigma_e.ravel()[sensor.rtn_index]
    easy = (sensor.delta_e >= 4 * sigma) & (sensor.frac_lo + sensor.frac_hi >= 0.08)
    one_sided = np.minimum(sensor.frac_lo, sensor.frac_hi) == 0
    return sigma, easy, one_sided


def test_finds_rtn_pixels_and_only_them(result, sensor):
    _, easy, _ = _truth_masks(sensor)
    accepted = result.cube.rtn_mask.ravel()
    assert easy.sum() >= 100  # enough pixels for the percentages below to mean something
    found = accepted[sensor.rtn_index]
    assert found[easy].mean() >= 0.90
    is_rtn = np.zeros(accepted.size, bool)
    is_rtn[sensor.rtn_index] = True
    assert is_rtn[accepted].mean() >= 0.95


def test_parameters_match_truth(result, sensor):
    sigma, _, _ = _truth_masks(sensor)
    c = result.cube
    found = c.rtn_mask.ravel()[sensor.rtn_index]
    pix = sensor.rtn_index[found]
    rel_delta = c.delta_e.ravel()[pix] / sensor.delta_e[found] - 1
    rel_sigma = c.sigma_e.ravel()[pix] / sigma[found] - 1
    assert np.median(np.abs(rel_delta)) < 0.03
    assert np.median(np.abs(rel_sigma)) < 0.05
    # no systematic bias either (Sheppard's correction of the 1-adu quantisation included)
    assert abs(np.median(rel_delta)) < 0.01 and abs(np.median(rel_sigma)) < 0.02
    # fractions: standard error about sqrt(b (1 - b) / N) = 0.007 at b = 0.05, N = 1000
    err_lo = c.frac_lo.ravel()[pix] - sensor.frac_lo[found]
    err_hi = c.frac_hi.ravel()[pix] - sensor.frac_hi[found]
    assert np.median(np.abs(np.concatenate([err_lo, err_hi]))) < 0.01
    mu_err = c.mu_adu.ravel()[pix] - sensor.bias_adu.ravel()[pix]
    assert np.median(np.abs(mu_err)) < 0.2  # adu; sigma is about 4 adu, 900 central values


def test_one_sided_rtn_found(result, sensor):
    _, easy, one_sided = _truth_masks(sensor)
    assert (easy & one_sided).sum() >= 20
    found = result.cube.rtn_mask.ravel()[sensor.rtn_index]
    assert found[easy & one_sided].mean() >= 0.90
    c = result.cube
    pix = sensor.rtn_index[easy & one_sided & found]
    missing_side = np.where(sensor.frac_lo[easy & one_sided & found] == 0, c.frac_lo.ravel()[pix],
                            c.frac_hi.ravel()[pix])
    assert np.all(missing_side < 0.03)


def test_cube_planes_and_provenance(result, sensor, stack_data):
    c = result.cube
    g = sensor.gain_e_per_adu
    values = stack_data.astype(np.float64)
    # the cube holds MEANBIAS and READNOISE at float32 precision (cube format 2): a relative 6e-8
    np.testing.assert_allclose(c.meanbias_adu, values.mean(axis=0), rtol=F32, atol=0)
    np.testing.assert_allclose(c.readnoise_e, values.std(axis=0, ddof=1) * g, rtol=F32)
    assert np.array_equal(c.dq == DQ_RTN, c.rtn_mask)
    rtn = c.rtn_mask
    expected = get_table(0.003).lambda_max(c.delta_e[rtn], c.sigma_e[rtn])
    np.testing.assert_array_equal(c.lammax_e[rtn], expected)
    assert np.all(c.delta_e[rtn] >= 3 * c.sigma_e[rtn]) and np.all(c.frac_c[rtn] <= 0.95)
    assert c.meta["n_bias_frames"] == N_FRAMES
    assert c.meta["bias_date_begin"] == "2025-03-01T20:00:00.000"
    assert c.meta["bias_date_end"] == "2025-03-01T20:39:00.000"
    assert c.meta["camera"] == "simcam" and c.meta["alpha"] == 0.003
    assert c.gain_e_per_adu == g


def test_report_counts_are_consistent(result, sensor):
    rep = result.report
    counts = rep["counts"]
    cand = result.candidates
    assert counts["candidates"] == cand["index"].size == int(result.maps["candidate"].sum())
    assert counts["accepted"] == result.cube.n_rtn == int(cand["accepted"].sum())
    assert counts["accepted"] + counts["rejected"] == counts["candidates"]
    for rule in REJECTION_RULES:
        assert counts["rejected_by_rule"][rule] == int(cand[rule].sum())
    rejected = ~cand["accepted"]
    assert np.all(np.logical_or.reduce([cand[r] for r in REJECTION_RULES])[rejected])
    # candidates: non-normal and read noise above the median
    rn = result.maps["read_noise_e"]
    assert np.all(rn[result.maps["candidate"]] > np.median(rn))
    assert np.all(result.maps["a2"][result.maps["candidate"]] > 1.092)
    # read noise after: sigma replaces RN at accepted pixels
    after = np.where(result.cube.rtn_mask, result.cube.sigma_e, rn)
    assert rep["read_noise_e"]["rms_after_predicted"] == pytest.approx(np.sqrt(np.mean(after**2)))
    assert rep["read_noise_e"]["rms_before"] == pytest.approx(np.sqrt(np.mean(rn**2)))
    assert rep["read_noise_e"]["rms_after_predicted"] < rep["read_noise_e"]["rms_before"]
    assert rep["rtn_fraction"] == pytest.approx(result.cube.n_rtn / rn.size)


def test_flux_curve_follows_section_6_5(result):
    curve = result.report["flux_curve"]
    flux = np.asarray(curve["flux_e"])
    rms = np.asarray(curve["rms_read_noise_e"])
    r = result.report["read_noise_e"]
    assert flux[0] == 0 and rms[0] == pytest.approx(r["rms_after_predicted"])
    assert np.all(np.diff(rms) >= -1e-12)  # effective read noise grows with flux ...
    assert rms[-1] == pytest.approx(r["rms_before"])  # ... up to the raw one above every lambda_max
    # one pixel by hand: sigma 1, RN 3, lambda_max 10: halfway at F = 5
    eff = predicted_read_noise(np.array([3.0]), np.array([1.0]), np.array([10.0]), np.array([0.0, 5.0, 20.0]))
    np.testing.assert_allclose(eff[:, 0], [1.0, 2.0, 3.0])


def test_cosmic_rays_and_hot_pixels_are_not_rtn(tmp_path, sensor, stack_data):
    rng = np.random.default_rng(5)
    g = sensor.gain_e_per_adu
    n, ny, nx = stack_data.shape
    flat = stack_data.reshape(n, -1).astype(np.int64)
    normal = np.setdiff1d(np.arange(ny * nx), sensor.rtn_index)
    hot = rng.choice(normal, 40, replace=False)  # dark current 5-300 e- per frame: Poisson, skewed
    flat[:, hot] += np.rint(rng.poisson(rng.uniform(5, 300, hot.size), size=(n, hot.size)) / g).astype(np.int64)
    hits = np.zeros(ny * nx, int)
    for t in range(n):  # about 0.5 cosmic rays a frame, 1-3 pixels each, 50-3000 adu
        for _ in range(rng.poisson(0.5)):
            p = int(rng.integers(ny * nx - nx - 1))
            for q in (p, p + 1, p + nx)[: rng.integers(1, 4)]:
                flat[t, q] += int(rng.uniform(50, 3000))
                hits[q] += 1
    data = np.clip(flat, 0, 65535).astype(np.uint16).reshape(n, ny, nx)
    assert (hits[normal] > 0).sum() > 300
    res = fit_bias_stack(write_stack(tmp_path, data), g)
    accepted = np.flatnonzero(res.cube.rtn_mask.ravel())
    assert not np.isin(accepted, hot).any()
    assert not np.isin(accepted, normal[hits[normal] > 0]).any()
    is_rtn = np.zeros(ny * nx, bool)
    is_rtn[sensor.rtn_index] = True
    assert is_rtn[accepted].mean() >= 0.95
    _, easy, _ = _truth_masks(sensor)
    assert res.cube.rtn_mask.ravel()[sensor.rtn_index][easy].mean() >= 0.90


def test_memory_bounded_and_independent_of_band_size(stack_files, sensor, result):
    stack = FitsStack(stack_files)
    stack_bytes = stack.n_frames * SHAPE[0] * SHAPE[1] * 2
    limit = 2_000_000
    assert stack_bytes > 3 * limit
    plan = plan_bands(stack, N_FRAMES, 400, limit)
    assert plan.moments_rows * SHAPE[1] * N_FRAMES * 2 <= plan.band_bytes <= limit // 2
    assert plan.moments_rows < SHAPE[0] and plan.anderson_rows < SHAPE[0]
    table = get_table(0.003)  # the threshold table is a shared cached object, not part of the fit's memory
    tracemalloc.start()
    try:
        small = fit_bias_stack(stack_files, sensor.gain_e_per_adu, memory_limit_bytes=limit)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    # on top of the limit: the whole-sensor result maps, and lambda_max's table-sized temporaries
    assert peak < limit + MAP_BYTES_PER_PIXEL * SHAPE[0] * SHAPE[1] + 3 * table.q_hi.nbytes
    assert small.report["memory"]["moments_rows"] == plan.moments_rows
    assert_same_cube(small.cube, result.cube)


def assert_same_cube(a, b):
    """The same fit up to float rounding: EM sums over a group of candidates padded to its widest pixel,
    so the order of additions (not the values added) depends on the group."""
    assert np.array_equal(a.rtn_mask, b.rtn_mask) and np.array_equal(a.dq, b.dq)
    np.testing.assert_array_equal(a.meanbias_adu, b.meanbias_adu)
    np.testing.assert_array_equal(a.readnoise_e, b.readnoise_e)
    for name in ("mu_adu", "delta_e", "sigma_e", "frac_c", "frac_lo", "frac_hi", "lammax_e"):
        np.testing.assert_allclose(getattr(a, name), getattr(b, name), rtol=1e-6, atol=1e-9, err_msg=name)


def test_memory_limit_too_small_is_refused(stack_files, sensor):
    with pytest.raises(ValueError, match="memory_limit_bytes=1000 is too small"):
        fit_bias_stack(stack_files, sensor.gain_e_per_adu, memory_limit_bytes=1000)


def test_worker_processes_give_the_same_cube(stack_files, sensor, result):
    par = fit_bias_stack(stack_files, sensor.gain_e_per_adu, workers=2, memory_limit_bytes=8 * 1024**2)
    assert_same_cube(par.cube, result.cube)


def test_frames_option_uses_the_first_frames(stack_files, sensor, stack_data):
    res = fit_bias_stack(stack_files, sensor.gain_e_per_adu, n_frames=600,
                         settings=FitSettings(ad_frames=100))
    assert res.cube.meta["n_bias_frames"] == 600 and res.report["n_frames_anderson"] == 100
    np.testing.assert_allclose(res.cube.meanbias_adu, stack_data[:600].mean(axis=0), rtol=F32, atol=0)
    assert res.cube.meta["bias_date_end"] == "2025-03-01T20:00:00.000"  # only the first cube's frames


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [({"gain_e_per_adu": 0.0}, "gain_e_per_adu must be a finite positive"),
     ({"n_frames": 20}, "at least 50 bias frames"),
     ({"n_frames": 5000}, r"n_frames must be in \[1, 1000\]"),
     ({"workers": 0}, "workers must be >= 1")],
)
def test_bad_arguments_name_the_parameter(stack_files, kwargs, message):
    args = {"gain_e_per_adu": 0.3, **kwargs}
    with pytest.raises(ValueError, match=message):
        fit_bias_stack(stack_files, **args)


# ---- command line ------------------------------------------------------------------------------


def test_cli_end_to_end(tmp_path, stack_files, sensor, result):
    out = tmp_path / "rtn.fits"
    argv = ["fit", *map(str, stack_files), "--gain-e-per-adu", repr(sensor.gain_e_per_adu), "-o", str(out),
            "--memory-limit", "2M", "--no-progress"]
    assert main(argv) == 0
    cube = read_cube(out)
    assert_same_cube(cube, result.cube)
    assert cube.meta["n_bias_frames"] == N_FRAMES
    report = json.loads(report_path(out).read_text())
    assert report_path(out) == tmp_path / "rtn_report.json"
    assert report["counts"]["accepted"] == cube.n_rtn
    assert report["memory"]["limit_bytes"] == 2 * 1024**2
    for name in PLOT_FILES:
        png = tmp_path / "rtn_plots" / name
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name
    # an existing output is not replaced without --overwrite
    assert main(argv) == 2
    assert main([*argv, "--overwrite", "--no-plots", "--frames", "500"]) == 0
    assert read_cube(out).meta["n_bias_frames"] == 500


def test_cli_plots_folder_and_errors(tmp_path, stack_files, capsys):
    out = tmp_path / "c.fits"
    base = ["fit", *map(str, stack_files[:1]), "--gain-e-per-adu", "0.3", "-o", str(out), "--no-progress"]
    assert main([*base, "--frames", "10"]) == 2
    assert "at least 50 bias frames" in capsys.readouterr().err
    assert main(["fit", str(tmp_path / "missing.fits"), "--gain-e-per-adu", "0.3", "-o", str(out)]) == 2
    assert "missing.fits" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main([*base, "--memory-limit", "lots"])
    assert "not a size: 'lots'" in capsys.readouterr().err
    assert main([*base, "--plots", str(tmp_path / "figs"), "--frames", "300"]) == 0
    assert sorted(p.name for p in (tmp_path / "figs").iterdir()) == sorted(PLOT_FILES)


def test_float_frames_of_whole_numbers_fit_like_integer_frames(tmp_path, stack_data, sensor, result):
    # float32 FITS (BITPIX -32) of the same values: moments summed in float64, values not binned
    res = fit_bias_stack(write_stack(tmp_path, stack_data.astype(np.float32)), sensor.gain_e_per_adu)
    assert_same_cube(res.cube, result.cube)


def test_continuous_float_frames_are_binned(tmp_path, sensor):
    # the truth before the ADC: continuous values, binned to std/16 by the fit
    frames = list(sensor.frames(N_FRAMES, seed=12))
    states = np.stack([f.states for f in frames])
    clean = np.stack([f.clean_adu for f in frames])
    flat = clean.reshape(N_FRAMES, -1)
    flat[:, sensor.rtn_index] += states * sensor.delta_e / sensor.gain_e_per_adu
    res = fit_bias_stack(write_stack(tmp_path, flat.reshape(clean.shape)), sensor.gain_e_per_adu)
    found = res.cube.rtn_mask.ravel()[sensor.rtn_index]
    _, easy, _ = _truth_masks(sensor)
    assert found[easy].mean() >= 0.90
    pix = sensor.rtn_index[found]
    sigma = sensor.sigma_e.ravel()[pix]
    assert np.median(np.abs(res.cube.delta_e.ravel()[pix] / sensor.delta_e[found] - 1)) < 0.03
    assert np.median(np.abs(res.cube.sigma_e.ravel()[pix] / sigma - 1)) < 0.05
    assert abs(np.median(res.cube.sigma_e.ravel()[pix] / sigma - 1)) < 0.01  # no bias from the binning


def test_moments_leave_out_non_finite_values():
    rng = np.random.default_rng(5)
    data = rng.normal(1000.0, 3.0, (60, 4, 5))
    data[3, 0, 0] = np.nan
    data[:, 1, 1] = np.nan
    data[:59, 2, 2] = np.inf  # one finite value: a mean, no standard deviation
    data[7, 3, 4] = -np.inf
    mean, std, n_valid, bad = moments_band(data)
    finite = np.isfinite(data)
    for y, x in np.ndindex(4, 5):
        kept = data[:, y, x][finite[:, y, x]]
        if kept.size > 1:
            assert mean[y, x] == pytest.approx(kept.mean(), rel=1e-12)
            assert std[y, x] == pytest.approx(kept.std(ddof=1), rel=1e-9)
    assert np.isnan(mean[1, 1]) and np.isnan(std[1, 1]) and np.isnan(std[2, 2]) and mean[2, 2] == data[59, 2, 2]
    np.testing.assert_array_equal(n_valid, finite.sum(axis=0))
    np.testing.assert_array_equal(bad, (~finite).sum(axis=(1, 2)))


def test_candidate_test_sees_a_hole_as_the_pixel_mean():
    data = np.arange(24.0, dtype=np.float32).reshape(4, 2, 3)
    data[1, 0, 0] = np.nan
    data[:, 1, 1] = np.inf
    filled = fill_non_finite(data)
    assert filled.dtype == np.float32 and np.isnan(data[1, 0, 0])  # the input is left alone
    np.testing.assert_array_equal(filled[:, 0, 0], [0.0, 10.0, 12.0, 18.0])  # mean of 0, 12, 18
    np.testing.assert_array_equal(filled[:, 1, 1], 0.0)  # no finite value at all
    np.testing.assert_array_equal(np.delete(filled.reshape(4, -1), [0, 4], axis=1),
                                  np.delete(data.reshape(4, -1), [0, 4], axis=1))
    assert fill_non_finite(data, inplace=True) is data and np.isfinite(data).all()


# ---- frames as acquisition software writes them ------------------------------------------------------


def write_nina_frames(folder, data: np.ndarray, imagetyp: str = "BIAS", egain: bool = True) -> list:
    """One file per frame with the cards N.I.N.A. writes (GAIN the gain setting, EGAIN e-/ADU, READOUTM)."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for k, frame in enumerate(data):
        hdr = fits.Header([("IMAGETYP", imagetyp, "Type of exposure"), ("EXPTIME", 0.0, "[s] Exposure duration"),
                           ("DATE-OBS", f"2026-03-01T20:{k // 60 % 60:02d}:{k % 60:02d}.000"),
                           ("XBINNING", 1), ("YBINNING", 1), ("GAIN", 56, "Sensor gain"),
                           ("OFFSET", 30, "Sensor gain offset"), ("INSTRUME", "QHY600M"),
                           ("SET-TEMP", -10.0), ("CCD-TEMP", -10.0 + 0.1 * (k % 3 - 1)),
                           ("READOUTM", "High Gain Mode 16bit", "Sensor readout mode")])
        if egain:
            hdr["EGAIN"] = (0.3067, "[e-/ADU] Electrons per A/D unit")
        paths.append(folder / f"BIAS_{k}.fits")  # N.I.N.A.-style: not zero-padded
        fits.PrimaryHDU(frame, header=hdr).writeto(paths[-1])
    return paths


def test_cli_takes_egain_records_the_camera_and_leaves_out_non_finite_values(tmp_path, stack_data, sensor,
                                                                              result, capsys):
    data = stack_data[:300].astype(np.float32)
    rtn = sensor.rtn_index[np.argmax(sensor.delta_e / sensor.sigma_e.ravel()[sensor.rtn_index])]
    ry, rx = divmod(int(rtn), SHAPE[1])
    data[5, ry, rx] = np.nan  # one glitch at an RTN pixel
    data[:, 0, 0] = np.nan  # a dead pixel, NaN in every frame
    data[7, 3, 4] = np.inf
    files = write_nina_frames(tmp_path / "night", data)
    out = tmp_path / "new" / "folder" / "cube.fits"  # created by the command
    assert main(["fit", *map(str, files), "-o", str(out), "--no-progress", "--no-plots"]) == 0
    assert "gain 0.3067 e-/ADU (EGAIN = 0.3067 e-/ADU in all 300 frames)" in capsys.readouterr().out
    report = json.loads(report_path(out).read_text())
    assert report["gain"] == {"e_per_adu": 0.3067, "source": "EGAIN",
                              "detail": "EGAIN = 0.3067 e-/ADU in all 300 frames"}
    assert report["frame_kinds"] == {"bias": 300}
    nf = report["non_finite"]
    assert (nf["values"], nf["pixels"], nf["pixels_not_fitted"], nf["frames"]) == (302, 3, 1, 300)
    assert nf["worst_frames"][0] == {"frame": str(files[5]), "values": 2}
    cam = report["camera"]
    assert (cam["instrument"], cam["readout_mode"], cam["gain_setting"], cam["offset"]) == \
        ("QHY600M", "High Gain Mode 16bit", 56, 30)
    assert (cam["x_binning"], cam["set_temp_c"], cam["ccd_temp_c"]) == (1, -10.0, pytest.approx(-10.0))
    cube = read_cube(out)
    assert (cube.meta["readout_mode"], cube.meta["gain_setting"], cube.meta["camera"]) == \
        ("High Gain Mode 16bit", 56, "QHY600M")
    assert cube.dq[0, 0] == DQ_ANOMALOUS_MEAN | DQ_ANOMALOUS_STD and np.isfinite(cube.meanbias_adu[0, 0])
    # the RTN pixel with one value left out is fitted from its other 299 values
    clean = data[:, ry, rx][np.isfinite(data[:, ry, rx])].astype(np.float64)
    assert cube.rtn_mask[ry, rx]
    assert cube.meanbias_adu[ry, rx] == pytest.approx(clean.mean(), rel=F32)
    assert cube.readnoise_e[ry, rx] == pytest.approx(clean.std(ddof=1) * 0.3067, rel=F32)
    assert cube.delta_e[ry, rx] == pytest.approx(sensor.delta_e[sensor.rtn_index == rtn][0], rel=0.05)


def test_cli_refuses_light_frames_and_a_gain_setting_without_egain(tmp_path, stack_data, capsys):
    lights = write_nina_frames(tmp_path / "lights", stack_data[:60], imagetyp="LIGHT")
    out = tmp_path / "c.fits"
    assert main(["fit", *map(str, lights), "-o", str(out), "--no-progress", "--no-plots"]) == 2
    err = capsys.readouterr().err
    assert f"{lights[0]}: IMAGETYP = 'LIGHT' (light frame)" in err and "--allow-imagetyp light" in err
    assert main(["fit", *map(str, lights), "-o", str(out), "--no-progress", "--no-plots",
                 "--allow-imagetyp", "light"]) == 0
    assert json.loads(report_path(out).read_text())["frame_kinds"] == {"light": 60}
    no_egain = write_nina_frames(tmp_path / "sharpcap", stack_data[:60], imagetyp="Bias Frame", egain=False)
    assert main(["fit", *map(str, no_egain), "-o", str(out), "--overwrite", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "no frame has EGAIN; GAIN in 60 frames is the camera's gain setting" in err
    assert "--gain-e-per-adu" in err
    assert main(["fit", *map(str, no_egain), "-o", str(out), "--overwrite", "--no-progress", "--no-plots",
                 "--gain-e-per-adu", "0.5"]) == 0
    assert "gain 0.5 e-/ADU (given: 0.5 e-/ADU)" in capsys.readouterr().out
