"""Characterization of simulated cameras against their truth, bad input, and the command line."""

import argparse
import json

import numpy as np
import pytest
from astropy.io import fits

from rtnstream.calibration.characterize import DQ_ANOMALOUS_MEAN, DQ_ANOMALOUS_STD, DQ_HOT, characterize
from rtnstream.calibration.detector_sim import CameraModel, CameraSimulator, write_camera_series
from rtnstream.calibration.report import write_report
from rtnstream.commands import characterize as characterize_cmd
from rtnstream.commands import simulate_camera as simulate_cmd
from rtnstream.kernels.exceptions import FrameError


@pytest.fixture(scope="module")
def camera(tmp_path_factory):
    """128 x 128 camera: 100 biases, 5 dark exposure times, a 6-step flat series, 100 extra flats at 2 s."""
    sim = CameraSimulator(CameraModel(shape=(128, 128)), seed=1)
    truth = write_camera_series(tmp_path_factory.mktemp("camera"), sim, n_bias=100, n_flat_pixel=100)
    files = truth["files"]
    result = characterize(files["bias"], files["dark"], files["flat"])
    return sim, truth, result


def test_measures_everything_without_complaint(camera):
    # The series has no darks at the flat exposure times: the EMVA 1288 analysis says it uses the bias
    # frames instead, and nothing else is flagged.
    _, _, result = camera
    assert result.report["not_measured"] == []
    assert len(result.report["warnings"]) == 2
    assert all(w.startswith("EMVA 1288: ") and "bias" in w for w in result.report["warnings"])


def test_conventional_gain_and_read_noise(camera):
    # 10 flat / bias pairs of 16384 pixels: the gain's standard error is ~0.35 %, and the injected 0.5 %
    # nonlinearity (at 40000 adu) biases the gain at the 10000 adu pair signal by ~ +0.4 %: 2 % is ~4 sigma.
    _, truth, result = camera
    conv = result.report["flat"]["conventional"]
    assert conv["gain_e_per_adu"] == pytest.approx(truth["gain_e_per_adu"], rel=0.02)
    assert conv["gain_sem_e_per_adu"] < 0.005 * truth["gain_e_per_adu"]
    # The difference of two biases measures the rms read noise over the region (noisy pixels included).
    assert conv["read_noise_e"] == pytest.approx(truth["read_noise_rms_e"], rel=0.05)


def test_dark_current(camera):
    # Up to 600 s the typical pixel collects 3 e-; the clipped region mean has ~0.01 e- noise per exposure.
    _, truth, result = camera
    dark = result.report["dark"]
    assert dark["dark_current_e_per_pix_s"] == pytest.approx(truth["dark_current_e_per_pix_s"], rel=0.10)
    assert dark["dark_current_mean_e_per_pix_s"] == pytest.approx(truth["dark_current_mean_e_per_pix_s"],
                                                                  rel=0.10)
    assert dark["longest"]["hot_pixel_fraction"] == pytest.approx(truth["hot_pixel_fraction"], abs=2 / 128**2)


def test_nonlinearity_recovered(camera):
    # Truth: the same linear fit applied to the noise-free expected signals. The mean of 2 flats over
    # 16384 pixels has a photon noise of at most 0.03 % of the signal, well inside 0.1 percentage point.
    _, truth, result = camera
    lin = result.report["flat"]["linearity"]
    assert lin["exptime_s"] == truth["linearity"]["exptime_s"]
    np.testing.assert_allclose(lin["nonlinearity_pct"], truth["linearity"]["nonlinearity_pct"], atol=0.1)
    assert lin["max_abs_nonlinearity_pct"] == pytest.approx(
        max(abs(v) for v in truth["linearity"]["nonlinearity_pct"]), abs=0.1)
    assert lin["r_squared"] > 0.9999


def test_pixel_level_maps(camera):
    # 102 flats: each pixel's gain scatters by ~14 %, its median over 16384 pixels by ~0.2 %; the median
    # of a ratio of chi-square variances is biased by ~ +0.7 % and the nonlinearity adds ~ +0.4 %.
    sim, truth, result = camera
    pix = result.report["flat"]["pixel_level"]
    assert pix["n_flats"] == 102
    assert pix["gain_median_e_per_adu"] == pytest.approx(truth["gain_e_per_adu"], rel=0.02)
    assert pix["read_noise_median_e"] == pytest.approx(truth["read_noise_median_e"], rel=0.05)
    assert pix["n_invalid_pixels"] == 0
    gain_map = result.maps["gain_e_per_adu"]
    assert gain_map.shape == sim.model.shape
    assert np.nanmedian(result.maps["read_noise_e"][sim.noisy]) > 3 * truth["read_noise_median_e"]


def test_anomalous_pixels_match_injected(camera):
    # Noisy pixels (4x read noise) have a noisier mean; a few may cross the 5-sigma mean threshold too,
    # so the mean-map count may exceed the injected one by a handful of pixels.
    sim, truth, result = camera
    bias = result.report["bias"]
    n = 128**2
    assert bias["std_map"]["anomalous_fraction"] == pytest.approx(truth["noisy_pixel_fraction"], abs=2 / n)
    assert bias["mean_map"]["anomalous_fraction"] == pytest.approx(truth["anomalous_mean_fraction"],
                                                                   abs=4 / n)
    dq = result.maps["dq"]
    assert dq.dtype == np.uint16
    assert np.all(dq[sim.anomalous_mean] & DQ_ANOMALOUS_MEAN)
    assert np.all(dq[sim.noisy] & DQ_ANOMALOUS_STD)
    assert np.all(dq[sim.hot] & DQ_HOT)
    assert result.maps["anomalous_density"].shape == (7, 7)
    anomalous = np.count_nonzero(dq & (DQ_ANOMALOUS_MEAN | DQ_ANOMALOUS_STD))
    assert result.maps["anomalous_density"].sum() == anomalous


def test_bias_stability(camera):
    # A frame's clipped mean scatters by sqrt(jitter^2 + (6 adu / 128)^2) ~ 0.05 adu around the bias level.
    sim, _, result = camera
    stability = result.report["bias"]["stability"]
    sigma = np.hypot(sim.model.bias_jitter_adu, 6.0 / 128)
    assert stability["clipped_mean_adu"] == pytest.approx(sim.model.bias_level_adu, abs=sigma)
    assert stability["max_abs_deviation_adu"] < 5 * sigma
    assert len(stability["frame_mean_adu"]) == 100


def test_small_bands_give_the_same_result(camera):
    # A 2 MiB budget cuts the 100-frame stacks in 20-row bands (the last one shorter): same maps.
    _, truth, result = camera
    files = truth["files"]
    banded = characterize(files["bias"], files["dark"], files["flat"], max_bytes=2 * 1024**2)
    for key, value in result.maps.items():
        np.testing.assert_array_equal(banded.maps[key], value, err_msg=key)


def test_report_files(camera, tmp_path):
    _, _, result = camera
    written = write_report(result, tmp_path)
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["flat"]["conventional"]["gain_e_per_adu"] == result.report["flat"]["conventional"][
        "gain_e_per_adu"]
    # the paper's 12 figures and the EMVA 1288 photon transfer, linearity, SNR and non-uniformity plots
    assert len(report["files"]["plots"]) == 16
    assert all((tmp_path / name).stat().st_size > 1000 for name in report["files"]["plots"])
    with fits.open(tmp_path / "dq_mask.fits", checksum=True) as hdul:
        assert hdul[0].data.dtype == np.uint16
        assert hdul[0].header["DQ_HOT"] == DQ_HOT
    for name, unit in (("master_bias.fits", "adu"), ("gain_map.fits", "electron/adu"),
                       ("read_noise_map.fits", "electron"), ("bias_std.fits", "adu")):
        assert fits.getheader(tmp_path / name)["BUNIT"] == unit
    assert "report.html" in written


# ----- bad or partial input ---------------------------------------------------------------------------

SMALL = (64, 64)


def _write(path, data, exptime=None):
    header = fits.Header()
    if exptime is not None:
        header["EXPTIME"] = exptime
    fits.PrimaryHDU(data, header=header).writeto(path)
    return str(path)


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    """64 x 64 camera: 20 biases, darks at 0 and 300 s, flats at 1, 2, 4 s (2 each) and 12 at 2 s."""
    d = tmp_path_factory.mktemp("small")
    sim = CameraSimulator(CameraModel(shape=SMALL), seed=2)
    files = {"bias": [_write(d / f"b{k}.fits", f) for k, f in enumerate(sim.bias(20))]}
    files["dark"], files["flat"] = [], []
    for t in (0.0, 300.0):
        files["dark"] += [_write(d / f"d{t:g}_{k}.fits", f, t) for k, f in enumerate(sim.dark(t, 2))]
    for t, n in ((1.0, 2), (2.0, 12), (4.0, 2)):
        files["flat"] += [_write(d / f"f{t:g}_{k}.fits", f, t) for k, f in enumerate(sim.flat(t, n))]
    return sim, d, files


def test_mixed_frame_shapes_are_left_out_with_a_warning(small, caplog):
    sim, d, files = small
    odd = _write(d / "odd_shape.fits", np.zeros((64, 80), np.uint16), 2.0)
    result = characterize(files["bias"], files["dark"], files["flat"] + [odd])
    assert any("odd_shape.fits" in w and "(64, 80)" in w for w in result.report["warnings"])
    assert "odd_shape.fits" in caplog.text
    assert result.report["inputs"]["flat"]["n_frames"] == 16
    assert "conventional" in result.report["flat"] and "linearity" in result.report["flat"]


def test_single_exposure_time_flats(small):
    sim, d, files = small
    flats_2s = [f for f in files["flat"] if "/f2_" in f]
    result = characterize(files["bias"], files["dark"], flats_2s)
    skipped = {n["measurement"]: n["reason"] for n in result.report["not_measured"]}
    assert "3 or more exposure times" in skipped["linearity"]
    assert "photon-transfer slope gain" in skipped
    assert result.report["flat"]["conventional"]["gain_e_per_adu"] > 0
    assert result.report["flat"]["pixel_level"]["n_flats"] == 12
    assert "dark_current_e_per_pix_s" in result.report["dark"]


def test_saturated_flats_are_left_out(small):
    sim, d, files = small
    # 1250 e-/s at 0.25 e-/ADU is 5000 adu/s: 14 s saturates the 16-bit range.
    saturated = [_write(d / f"sat_{k}.fits", f, 14.0) for k, f in enumerate(sim.flat(14.0, 2))]
    result = characterize(files["bias"], files["dark"], files["flat"] + saturated)
    flat = result.report["flat"]
    assert flat["n_saturated_frames"] == 2
    assert any("saturated" in w and "14" in w for w in result.report["warnings"])
    assert flat["linearity"]["exptime_s"] == [1.0, 2.0, 4.0]
    assert 14.0 not in flat["ptc"]["exptime_s"]


def test_missing_exptime_is_reported(small, caplog):
    sim, d, files = small
    no_time = _write(d / "dark_no_exptime.fits", sim.dark(300.0, 1)[0])
    result = characterize(files["bias"], files["dark"] + [no_time], files["flat"], exptime_key="EXPTIME")
    assert any("dark_no_exptime.fits" in w and "'EXPTIME'" in w for w in result.report["warnings"])
    assert "dark_no_exptime.fits" in caplog.text
    assert result.report["inputs"]["dark"]["n_frames"] == 4
    assert "dark_current_e_per_pix_s" in result.report["dark"]


def test_absent_sets_are_reported_and_the_rest_is_made(small, tmp_path):
    _, _, files = small
    result = characterize(bias=files["bias"])
    skipped = {n["measurement"] for n in result.report["not_measured"]}
    assert {"linearity", "dark current", "conventional gain and read noise"} <= skipped
    assert "bias" in result.report
    written = write_report(result, tmp_path)
    assert "fig01_bias_stability.png" in written and "fig09_linearity.png" not in written
    page = (tmp_path / "report.html").read_text()
    assert "Not measured" in page and "no usable flat frames" in page
    no_bias = characterize(flat=files["flat"])
    assert "bias" not in no_bias.report
    assert any(n["reason"] == "needs 2 or more bias frames" for n in no_bias.report["not_measured"])
    write_report(no_bias, tmp_path / "no_bias")
    assert (tmp_path / "no_bias" / "report.html").exists()


def test_corrupt_fits_names_the_file(small, tmp_path):
    _, _, files = small
    corrupt = tmp_path / "broken_flat.fits"
    corrupt.write_bytes(b"definitely not FITS\n" * 300)
    with pytest.raises(FrameError, match="broken_flat.fits"):
        characterize(files["bias"], None, files["flat"] + [str(corrupt)])


def test_command_line_simulate_then_characterize(tmp_path):
    parser = argparse.ArgumentParser()
    simulate_cmd.configure(parser)
    args = parser.parse_args(["-o", str(tmp_path / "cam"), "--shape", "48", "40", "--n-bias", "12",
                              "--n-flat-pixel", "12", "--exptimes", "1", "2", "3", "--gain-e-per-adu", "0.5",
                              "--seed", "5"])
    assert simulate_cmd.run(args) == 0
    truth = json.loads((tmp_path / "cam" / "truth.json").read_text())
    assert truth["model"]["shape"] == [48, 40] and truth["model"]["gain_e_per_adu"] == 0.5

    parser = argparse.ArgumentParser()
    characterize_cmd.configure(parser)
    cam = tmp_path / "cam"
    args = parser.parse_args(["--bias", *map(str, sorted((cam / "bias").glob("*.fits"))),
                              "--dark", *map(str, sorted((cam / "dark").glob("*.fits"))),
                              "--flat", *map(str, sorted((cam / "flat").glob("*.fits"))),
                              "--region", "32", "--no-progress", "-o", str(tmp_path / "report")])
    assert characterize_cmd.run(args) == 0
    report = json.loads((tmp_path / "report" / "report.json").read_text())
    assert report["region_px"] == {"rows": [8, 40], "cols": [4, 36]}
    assert report["flat"]["conventional"]["gain_e_per_adu"] == pytest.approx(0.5, rel=0.15)
