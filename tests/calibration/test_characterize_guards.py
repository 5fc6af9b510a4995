"""Input that cannot give a right answer is refused or flagged in the report, not printed as a figure."""

import numpy as np
import pytest
from astropy.io import fits

from rtnstream.calibration.characterize import characterize
from rtnstream.calibration.detector_sim import CameraModel, CameraSimulator


def _write(folder, name, frames, exptime):
    folder.mkdir(exist_ok=True)
    paths = []
    for k, frame in enumerate(frames):
        path = folder / f"{name}_{k:03d}.fits"
        fits.PrimaryHDU(frame, header=fits.Header([("EXPTIME", exptime)])).writeto(path)
        paths.append(str(path))
    return paths


@pytest.fixture(scope="module")
def sim():
    return CameraSimulator(CameraModel(shape=(64, 64)), seed=2)


@pytest.fixture(scope="module")
def sets(sim, tmp_path_factory):
    root = tmp_path_factory.mktemp("guards")
    bias = _write(root / "bias", "b", sim.bias(20), 0.0)
    dark = _write(root / "dark", "d0", sim.dark(0.0, 2), 0.0) + _write(root / "dark", "d1", sim.dark(600.0, 2), 600.0)
    flat = []
    for t in (1.0, 2.0, 4.0):
        flat += _write(root / "flat", f"f{t:g}", sim.flat(t, 2), t)
    flat += _write(root / "flat", "pix", sim.flat(2.0, 12), 2.0)
    return root, bias, dark, flat


def test_two_bias_frames_give_no_pixel_maps(sets):
    _, bias, dark, flat = sets
    report = characterize(bias[:2], dark, flat).report
    skipped = {n["measurement"]: n["reason"] for n in report["not_measured"]}
    assert "bias frames" in skipped["pixel-level gain and read noise"]
    assert "pixel_level" not in report["flat"]


def test_pixel_map_noise_is_stated(sets):
    # 14 flats and 20 biases: each pixel's variance ratio scatters by sqrt(2/13 + 2/19) = 0.51.
    _, bias, dark, flat = sets
    pix = characterize(bias, dark, flat).report["flat"]["pixel_level"]
    assert pix["map_estimate_noise_frac"] == pytest.approx(np.sqrt(2 / 13 + 2 / 19))
    assert pix["map_spread_frac"] > 0.3  # the map's spread is that noise, not the camera's 0.5 % gain spread


def test_flats_at_two_light_levels_are_split(sim, sets):
    # 12 flats at 2 s under the nominal light and 6 more labelled 2 s but lit for 4 s: the pixel-level
    # gain uses the 14 flats of one level (without the guard it mixes the levels: median gain ~0.003).
    root, bias, dark, flat = sets
    brighter = _write(root / "flat", "bright", sim.flat(4.0, 6), 2.0)
    report = characterize(bias, dark, flat + brighter).report
    assert any("2 light levels" in w for w in report["warnings"])
    pix = report["flat"]["pixel_level"]
    assert pix["n_flats"] == 14
    assert pix["gain_median_e_per_adu"] == pytest.approx(sim.model.gain_e_per_adu, rel=0.1)


def test_negative_dark_current_is_flagged(sim, sets):
    root, bias, _, flat = sets
    swapped = _write(root / "dark_swapped", "a", sim.dark(600.0, 2), 0.0) + _write(
        root / "dark_swapped", "b", sim.dark(0.0, 2), 600.0)
    report = characterize(bias, swapped, flat).report
    assert report["dark"]["dark_current_adu_per_pix_s"] < 0
    assert any("dark current is negative" in w for w in report["warnings"])


def test_read_noise_below_quantization_is_flagged(sim, sets):
    # The same bias frame written 20 times: the pair difference is zero, below the 0.29 adu quantization noise.
    root, _, dark, flat = sets
    copies = _write(root / "bias_copies", "c", np.repeat(sim.bias(1), 20, axis=0), 0.0)
    report = characterize(copies, dark, flat).report
    assert any("below the quantization noise" in w for w in report["warnings"])
