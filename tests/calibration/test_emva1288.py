"""EMVA 1288 analysis of simulated cameras with known truth, from descriptors with PNG/TIFF images and FITS stacks."""

import argparse
import json

import numpy as np
import pytest

from rtnstream.calibration.characterize import characterize, characterize_emva
from rtnstream.calibration.detector_sim import CameraModel, CameraSimulator, write_emva_series
from rtnstream.calibration.emva1288 import linearity_errors
from rtnstream.calibration.emva_reader import parse_descriptor, read_image
from rtnstream.calibration.report import write_report
from rtnstream.commands import characterize as characterize_cmd

# A 12-bit camera, 128 x 128: gain 4 e-/ADU, 6 e- read noise, 2 adu pixel bias pattern with 1 adu row and
# 0.5 adu column offsets, 20 e-/s dark current, 1 % PRNU; the flux saturates the 4095 adu range near 1 s.
# 50 exposures from 10 ms to 1.2 s put 28 points in the photon-transfer fit range and 9 past saturation.
_EMVA_CAMERA = dict(shape=(128, 128), gain_e_per_adu=4.0, read_noise_e=6.0, bias_level_adu=100.0,
                    bias_dsnu_adu=2.0, bias_row_adu=1.0, bias_col_adu=0.5, bias_jitter_adu=0.0,
                    dark_current_e_per_s=20.0, hot_pixel_fraction=0.0,
                    anomalous_mean_fraction=0.0, noisy_pixel_fraction=0.0, flux_e_per_s=16000.0,
                    nonlinearity_ref_adu=4000.0, bits=12)
_EXPOSURES_S = np.round(np.linspace(0.01, 1.2, 50), 6)
_FIGURES = ("gain_e_per_adu", "temporal_dark_noise_e", "temporal_dark_noise_adu", "dark_current_e_per_s",
            "saturation_capacity_e", "snr_max", "dynamic_range_db", "absolute_sensitivity_threshold_e",
            "linearity_error_min_pct", "linearity_error_max_pct", "dsnu_e", "prnu_pct", "quantum_efficiency_pct")


def _fits_result(written):
    files = written["fits"]
    return characterize(files["bias"], files["dark"], files["flat"])


@pytest.fixture(scope="module")
def linear_camera(tmp_path_factory):
    """The linear 12-bit camera as an EMVA descriptor with 16-bit PNG images, and as FITS stacks."""
    sim = CameraSimulator(CameraModel(**_EMVA_CAMERA, nonlinearity_pct=0.0), seed=3)
    written = write_emva_series(tmp_path_factory.mktemp("emva_linear"), sim, _EXPOSURES_S, n_spatial=16)
    return written, {"png": characterize_emva(written["descriptor"]), "fits": _fits_result(written)}


@pytest.fixture(scope="module")
def nonlinear_camera(tmp_path_factory):
    """The same camera with a 1 % compression at 4000 adu, as a descriptor with TIFF images."""
    sim = CameraSimulator(CameraModel(**_EMVA_CAMERA, nonlinearity_pct=1.0), seed=4)
    written = write_emva_series(tmp_path_factory.mktemp("emva_nonlinear"), sim, _EXPOSURES_S, n_spatial=16,
                                image_format="tif")
    return written, characterize_emva(written["descriptor"])


@pytest.mark.parametrize("source", ["png", "fits"])
def test_figures_within_tolerance_of_truth(linear_camera, source):
    # Each photon-transfer point's variance comes from 16384 pixel differences (2.2 % scatter per point on
    # the variance): over 28 points the through-origin slope is good to ~0.25 %, so 1 % is ~4 sigma.
    # The dark variance of one 16384-pixel pair scatters by 1.1 %, its square root by 0.55 %: 3 % is 5 sigma.
    # DSNU / PRNU: the spatial variances over 16384 pixels scatter by 1.1 % and the residual temporal
    # variance / 16 is removed, so 10 % is far outside the noise; a broken correction misses it.
    written, results = linear_camera
    truth, emva = written["truth"], results[source].report["emva1288"]
    assert set(_FIGURES) <= set(emva)
    assert emva["gain_e_per_adu"] == pytest.approx(truth["gain_e_per_adu"], rel=0.01)
    assert emva["temporal_dark_noise_e"] == pytest.approx(truth["temporal_dark_noise_e"], rel=0.03)
    assert emva["dark_current_e_per_s"] == pytest.approx(truth["dark_current_e_per_s"], rel=0.03)
    assert emva["dark_current_from_variance_e_per_s"] == pytest.approx(truth["dark_current_e_per_s"], rel=0.10)
    assert emva["dsnu_e"] == pytest.approx(truth["dsnu_e"], rel=0.10)
    assert emva["prnu_pct"] == pytest.approx(truth["prnu_pct"], rel=0.10)
    # Row and column offsets: the pixel part leaks s_p^2 / 128 = 0.03 adu^2 into the line means, and
    # that expected leak is removed; what stays is well inside 10 % of 1 and 0.5 adu.
    assert emva["dsnu_row_e"] == pytest.approx(truth["dsnu_row_e"], rel=0.10)
    assert emva["dsnu_col_e"] == pytest.approx(truth["dsnu_col_e"], rel=0.10)
    assert emva["dsnu_pixel_e"] < emva["dsnu_e"]
    assert emva["prnu_row_pct"] < 0.3 * emva["prnu_pct"]  # the PRNU of this camera has no row structure
    assert emva["quantum_efficiency_pct"] == pytest.approx(truth["quantum_efficiency_pct"], rel=0.01)
    # A linear camera: every linearity error within 0.2 points of zero (the point means scatter by ~0.02 %).
    assert abs(emva["linearity_error_min_pct"]) < 0.2 and abs(emva["linearity_error_max_pct"]) < 0.2
    # Saturation is the variance peak, just below the 4095 adu clip: within 10 % under the clip capacity.
    assert 0.9 * truth["saturation_capacity_upper_e"] < emva["saturation_capacity_e"] < truth[
        "saturation_capacity_upper_e"]
    assert emva["saturation_adu"] < truth["clip_level_adu"]
    # The derived figures follow from the measured ones by the standard's formulas.
    assert emva["snr_max"] == pytest.approx(np.sqrt(emva["saturation_capacity_e"]), rel=0.01)
    threshold = 0.5 + np.sqrt(0.25 + (emva["temporal_dark_noise_adu"] * emva["gain_e_per_adu"]) ** 2)
    assert emva["absolute_sensitivity_threshold_e"] == pytest.approx(threshold)
    assert emva["dynamic_range_db"] == pytest.approx(
        20 * np.log10(emva["saturation_capacity_e"] / emva["absolute_sensitivity_threshold_e"]))
    assert emva["fit_ranges"]["ptc_n_points"] >= 25
    assert emva["fit_ranges"]["ptc_adu"][1] == pytest.approx(0.7 * (emva["saturation_adu"] - 100), rel=0.01)
    assert emva["fit_ranges"]["linearity_x"] == "photons"
    assert any("4095" in w for w in emva["warnings"]), "clipped points must be reported"


def test_descriptor_and_fits_agree(linear_camera):
    # The same frames: the temporal figures are identical; DSNU/PRNU use 16 (descriptor) or 18 (FITS:
    # the temporal pair joins the stack at that exposure) images, and photon counts are rounded to 6
    # digits in the descriptor.
    _, results = linear_camera
    png, fts = results["png"].report["emva1288"], results["fits"].report["emva1288"]
    for key in ("gain_e_per_adu", "temporal_dark_noise_e", "dark_current_e_per_s", "saturation_adu"):
        assert fts[key] == pytest.approx(png[key], rel=1e-9), key
    for key in ("dsnu_e", "prnu_pct", "quantum_efficiency_pct", "saturation_capacity_e"):
        assert fts[key] == pytest.approx(png[key], rel=0.01), key


def test_nonlinearity_within_0_2_points_of_truth(nonlinear_camera):
    # Truth: the standard's weighted fit applied to the noise-free expected signals over the measured fit
    # range; each measured point mean is good to ~0.02 % of the signal.
    written, result = nonlinear_camera
    truth, emva = written["truth"], result.report["emva1288"]
    x, y = np.asarray(truth["photons"]), np.asarray(truth["signal_adu"])
    lo, hi = emva["fit_ranges"]["linearity_adu"]
    in_range = (y >= lo) & (y <= hi)
    _, _, error = linearity_errors(x, y, in_range)
    assert emva["linearity_error_min_pct"] == pytest.approx(error[in_range].min(), abs=0.2)
    assert emva["linearity_error_max_pct"] == pytest.approx(error[in_range].max(), abs=0.2)
    assert emva["linearity_error_min_pct"] < -0.2  # the compression is seen, not lost in the noise
    assert emva["dsnu_e"] == pytest.approx(truth["dsnu_e"], rel=0.10)
    assert emva["prnu_pct"] == pytest.approx(truth["prnu_pct"], rel=0.10)


def test_eight_bit_camera_saturates_at_255(tmp_path):
    # 64 x 64, 8 bits, 40 e-/ADU: the clip at 255 adu is found from the variance peak. 4096 pixels per
    # point and ~25 points in the fit range put the gain within ~0.5 % (1 sigma); 3 % is 6 sigma.
    model = CameraModel(**{**_EMVA_CAMERA, "shape": (64, 64), "gain_e_per_adu": 40.0, "read_noise_e": 30.0,
                           "bias_level_adu": 10.0, "bias_dsnu_adu": 0.5, "bits": 8}, nonlinearity_pct=0.0)
    sim = CameraSimulator(model, seed=5)
    written = write_emva_series(tmp_path, sim, np.round(np.linspace(0.01, 0.8, 40), 6), n_spatial=16,
                                fits_stacks=False)
    assert read_image(tmp_path / "images" / "b_0001.png").dtype == np.uint8
    emva = characterize_emva(written["descriptor"]).report["emva1288"]
    assert emva["gain_e_per_adu"] == pytest.approx(written["truth"]["gain_e_per_adu"], rel=0.03)
    assert emva["saturation_adu"] < 255
    assert any("255" in w for w in emva["warnings"])


def test_descriptor_crlf_windows_paths_and_errors(tmp_path):
    (tmp_path / "imgs").mkdir()
    text = ("# comment\r\nv 4.0\r\nn 12 4 3\r\nb 1000000 12,5\r\ni imgs\\a.png\r\ni imgs\\b.png\r\n"
            "d 1000000\r\ni imgs/c.png\r\ni imgs/d.png\r\nd 2000000\r\ni imgs\\c.png\r\ni imgs\\d.png\r\n"
            "i imgs\\e.png\r\n")
    (tmp_path / "EMVA1288_Data.txt").write_bytes(text.encode())
    desc = parse_descriptor(tmp_path / "EMVA1288_Data.txt")
    assert (desc.bits, desc.width, desc.height, desc.version) == (12, 4, 3, "4.0")
    assert desc.bright[0].exposure_s == pytest.approx(1e-3)
    assert desc.bright[0].photons == 12.5
    assert desc.bright[0].paths == (tmp_path / "imgs" / "a.png", tmp_path / "imgs" / "b.png")
    assert [len(s.paths) for s in desc.dark] == [2, 3]
    bad = tmp_path / "bad.txt"
    bad.write_text("n 12 4 3\nb 1000 x\ni a.png\ni b.png\n")
    with pytest.raises(ValueError, match=r"bad.txt:2: photon count 'x'"):
        parse_descriptor(bad)
    bad.write_text("n 12 4 3\nd 1000\ni a.png\n")
    with pytest.raises(ValueError, match="two or more 'i PATH'"):
        parse_descriptor(bad)
    with pytest.raises(FileNotFoundError, match="a.png"):
        read_image(tmp_path / "a.png")


def test_command_line_emva_writes_report_and_plots(linear_camera, tmp_path):
    written, _ = linear_camera
    parser = argparse.ArgumentParser()
    characterize_cmd.configure(parser)
    args = parser.parse_args(["--emva", written["descriptor"], "-o", str(tmp_path), "--no-progress"])
    assert characterize_cmd.run(args) == 0
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["emva1288"]["gain_e_per_adu"] == pytest.approx(written["truth"]["gain_e_per_adu"], rel=0.01)
    assert {"fig13_emva_photon_transfer.png", "fig14_emva_linearity.png", "fig15_emva_snr.png",
            "fig16_emva_nonuniformity.png"} <= set(report["files"]["plots"])
    assert all((tmp_path / name).stat().st_size > 1000 for name in report["files"]["plots"])
    assert "EMVA 1288: gain_e_per_adu" in (tmp_path / "report.html").read_text()


def test_report_of_fits_stacks_has_emva_plots(linear_camera, tmp_path):
    _, results = linear_camera
    write_report(results["fits"], tmp_path)
    report = json.loads((tmp_path / "report.json").read_text())
    assert "fig13_emva_photon_transfer.png" in report["files"]["plots"]
    assert report["emva1288"]["quantum_efficiency_pct"] is not None
