"""Guards: nothing corrected twice, with another camera's cube, or with the wrong part of the cube."""

from __future__ import annotations

import numpy as np
import pytest
from astropy.io import fits
from astropy.nddata import CCDData

from rtnstream import correct_ccddata
from rtnstream.cli import main
from rtnstream.guards import check_frame_header, frame_origin
from rtnstream.kernels.cube import read_cube, write_cube
from rtnstream.kernels.engine import EngineSettings
from rtnstream.kernels.exceptions import FrameError
from rtnstream.kernels.simulate import Scene, SensorModel
from tests._acquisition import CAMERA, with_camera, write_night

pytestmark = pytest.mark.filterwarnings("ignore::astropy.wcs.FITSFixedWarning")

SHAPE = (30, 40)
W = 4


@pytest.fixture(scope="module")
def sensor() -> SensorModel:
    return SensorModel.random(SHAPE, rtn_fraction=0.12, seed=31)


@pytest.fixture(scope="module")
def frames(sensor) -> np.ndarray:
    data, _, _ = sensor.stack(12, Scene.make("stars", SHAPE, sky_e=2.0, n_stars=3, seed=5), seed=6)
    return data


@pytest.fixture(scope="module")
def cube_path(sensor, tmp_path_factory):
    return write_cube(with_camera(sensor.true_cube(), serial="QHY-1234"), tmp_path_factory.mktemp("c") / "cube.fits")


def correct(cube_path, *args) -> int:
    return main(["correct", "--cube", str(cube_path), "--window", str(W), "--backend", "numpy", "--no-progress",
                 *map(str, args)])


def test_the_cube_records_its_camera(cube_path):
    cube = read_cube(cube_path)
    assert cube.camera == {**CAMERA, "serial": "QHY-1234", "detector": "simulated IMX455-like"}
    hdr = fits.getheader(cube_path)
    assert (hdr["CAMERA"], hdr["SERIALNO"], hdr["GAINSET"], hdr["READMODE"], hdr["XBINNING"]) == (
        "QHY600M", "QHY-1234", 56, "High Gain Mode", 1)


def test_double_correction_is_refused(frames, cube_path, tmp_path, capsys):
    write_night(tmp_path / "in", frames, "nina")
    assert correct(cube_path, tmp_path / "in", "-o", tmp_path / "once") == 0
    assert correct(cube_path, tmp_path / "once", "-o", tmp_path / "twice") == 2
    err = capsys.readouterr().err
    assert "LIGHT_M31_1.fits: already corrected (RTNCORR = T" in err
    assert not (tmp_path / "twice").exists()
    assert correct(cube_path, tmp_path / "once", "-o", tmp_path / "twice", "--force") == 0
    assert fits.getheader(tmp_path / "twice" / "LIGHT_M31_3.fits")["RTNFORCE"] == "RTNCORR"


@pytest.mark.parametrize(("key", "value", "cube_key"), [
    ("GAIN", 100, "gain_setting = 56"),
    ("INSTRUME", "ZWO ASI2600MM Pro", "camera = 'QHY600M'"),
    ("READOUTM", "Extended Fullwell", "readout_mode = 'High Gain Mode'"),
    ("XBINNING", 2, "binning_x = 1"),
    ("CCD-TEMP", -5.0, "temperature_c = -10.0 (tolerance 2.0 C)"),
])
def test_another_cameras_cube_is_refused_by_key(frames, cube_path, tmp_path, capsys, key, value, cube_key):
    paths = write_night(tmp_path / "in", frames, "nina")
    for path in paths[5:]:  # the camera changed after the fifth frame (a setting change starts a series)
        with fits.open(path, mode="update") as hdul:
            hdul[0].header[key] = value
    assert correct(cube_path, tmp_path / "in", "-o", tmp_path / "out") == 2
    err = capsys.readouterr().err
    assert f"{paths[5].name}: {key} = {value!r} but the cube was fitted with {cube_key}" in err
    assert not (tmp_path / "out").exists()
    assert correct(cube_path, tmp_path / "in", "-o", tmp_path / "out", "--force") == 0
    assert fits.getheader(tmp_path / "out" / paths[5].name)["RTNFORCE"] == key
    assert "RTNFORCE" not in fits.getheader(tmp_path / "out" / paths[4].name)


def test_temperature_within_tolerance_is_accepted(frames, cube_path, tmp_path):
    cube = read_cube(cube_path)
    header = fits.Header([("CCD-TEMP", -8.1), ("GAIN", 56), ("INSTRUME", "qhy600m ")])
    assert check_frame_header(header, cube, "f.fits") == ()
    with pytest.raises(FrameError, match="CCD-TEMP = -8.1"):
        check_frame_header(header, cube, "f.fits", temperature_tolerance_c=1.0)
    # keys the frame lacks are not compared; nor a fractional GAIN (e-/ADU, the FITS convention, not a setting)
    assert check_frame_header(fits.Header(), cube, "f.fits") == ()
    assert check_frame_header(fits.Header([("GAIN", 0.3067)]), cube, "f.fits") == ()
    with pytest.raises(FrameError, match="GAIN = 100.0"):
        check_frame_header(fits.Header([("GAIN", 100.0)]), cube, "f.fits")


def test_an_roi_frame_is_corrected_as_the_same_pixels_of_a_full_frame(frames, cube_path, tmp_path):
    y0, x0, ny, nx = 7, 11, 14, 20
    write_night(tmp_path / "full", frames, "sharpcap")
    roi = frames[:, y0:y0 + ny, x0:x0 + nx]
    roi_paths = write_night(tmp_path / "roi", roi, "sharpcap", origin=(y0, x0))
    assert correct(cube_path, tmp_path / "full", "-o", tmp_path / "out_full") == 0
    assert correct(cube_path, tmp_path / "roi", "-o", tmp_path / "out_roi") == 0
    changed = 0
    for path in roi_paths:
        full = tmp_path / "out_full" / path.name
        part = tmp_path / "out_roi" / path.name
        np.testing.assert_array_equal(fits.getdata(part), fits.getdata(full)[y0:y0 + ny, x0:x0 + nx])
        np.testing.assert_array_equal(fits.getdata(part, "DQ"), fits.getdata(full, "DQ")[y0:y0 + ny, x0:x0 + nx])
        np.testing.assert_array_equal(fits.getdata(part, "UNCERT"),
                                      fits.getdata(full, "UNCERT")[y0:y0 + ny, x0:x0 + nx])
        hdr = fits.getheader(part)
        assert (hdr["RTNXORG"], hdr["RTNYORG"]) == (x0, y0)
        changed += np.count_nonzero(fits.getdata(part) != fits.getdata(path))
    assert changed > 0
    # the Python API places the subframe the same way
    api = correct_ccddata([CCDData.read(p, unit="adu") for p in roi_paths], cube_path, EngineSettings(window=W))
    for path, ccd in zip(roi_paths, api, strict=True):
        np.testing.assert_array_equal(ccd.data, fits.getdata(tmp_path / "out_roi" / path.name))
        np.testing.assert_array_equal(ccd.flags, fits.getdata(tmp_path / "out_roi" / path.name, "DQ"))


def test_an_roi_frame_without_its_origin_is_refused(frames, cube_path, tmp_path, capsys):
    paths = write_night(tmp_path / "in", frames[:, :10, :12], "nina")
    assert correct(cube_path, tmp_path / "in", "-o", tmp_path / "out") == 2
    err = capsys.readouterr().err
    assert paths[0].name in err and "(10, 12)" in err and "no XORGSUBF/YORGSUBF" in err
    # another pair of keys can be named
    for path in paths:
        with fits.open(path, mode="update") as hdul:
            hdul[0].header["ROIX"], hdul[0].header["ROIY"] = 3, 2
    assert correct(cube_path, tmp_path / "in", "-o", tmp_path / "out", "--origin-keys", "ROIX", "ROIY") == 0
    assert fits.getheader(tmp_path / "out" / paths[0].name)["RTNXORG"] == 3
    with pytest.raises(FrameError, match="reaches outside the sensor"):
        frame_origin(fits.Header([("XORGSUBF", 35), ("YORGSUBF", 0)]), (10, 12), SHAPE, "f.fits")
    with pytest.raises(FrameError, match=r"shape \(40, 40\), the RTN cube has \(30, 40\)"):
        frame_origin(fits.Header(), (40, 40), SHAPE, "f.fits")
