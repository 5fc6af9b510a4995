"""Tests of calibration/acquisition.py on headers written to real FITS files the way acquisition software
writes them (N.I.N.A., SharpCap, MaxIm DL, Ekos)."""

import numpy as np
import pytest
from astropy.io import fits

from rtnstream.calibration.acquisition import (
    camera_record,
    check_frame_kinds,
    common_camera_record,
    frame_kind,
    header_gain,
)

# Cards as N.I.N.A. 3.x writes them for a QHY600M bias (values and comments as N.I.N.A. prints them).
NINA = [
    ("IMAGETYP", "BIAS", "Type of exposure"),
    ("EXPOSURE", 0.0, "[s] Exposure duration"),
    ("EXPTIME", 0.0, "[s] Exposure duration"),
    ("DATE-OBS", "2026-03-01T20:00:00.123", "Time of observation (UTC)"),
    ("XBINNING", 1, "X axis binning factor"),
    ("YBINNING", 1, "Y axis binning factor"),
    ("GAIN", 56, "Sensor gain"),
    ("OFFSET", 30, "Sensor gain offset"),
    ("EGAIN", 0.3067, "[e-/ADU] Electrons per A/D unit"),
    ("XPIXSZ", 3.76, "[um] Pixel X axis size"),
    ("INSTRUME", "QHY600M", "Imaging instrument name"),
    ("SET-TEMP", -10.0, "[degC] CCD temperature setpoint"),
    ("CCD-TEMP", -9.8, "[degC] CCD temperature"),
    ("READOUTM", "High Gain Mode 16bit", "Sensor readout mode"),
    ("CAMERAID", "QHY600M-a1b2c3", "Imaging instrument identifier"),
]


def write_header(path, cards, data=None):
    """Write a small 2-D frame with ``cards`` in its primary header; returns the header as read back."""
    fits.PrimaryHDU(np.zeros((4, 5), np.uint16) if data is None else data,
                    header=fits.Header(cards)).writeto(path)
    return fits.getheader(path)


@pytest.mark.parametrize(("value", "kind"), [
    ("BIAS", "bias"), ("Bias Frame", "bias"), ("Bias", "bias"), ("zero", "bias"), ("bias_frame", "bias"),
    ("DARK", "dark"), ("Dark Frame", "dark"), ("Flat Field", "flat"), ("FLAT", "flat"),
    ("DARKFLAT", "darkflat"), ("Light Frame", "light"), ("LIGHT", "light"), ("Light", "light"),
    ("Tricolour", "tricolour"),
])
def test_frame_kind_reads_the_usual_spellings(tmp_path, value, kind):
    assert frame_kind(write_header(tmp_path / "f.fits", [("IMAGETYP", value)])) == kind
    # Ekos also writes FRAME; a file with only FRAME is read the same way
    assert frame_kind(write_header(tmp_path / "g.fits", [("FRAME", value)])) == kind


def test_check_frame_kinds_refuses_light_frames_by_file(tmp_path):
    headers = [write_header(tmp_path / f"b{i}.fits", [("IMAGETYP", "Bias Frame")]) for i in range(2)]
    headers.append(write_header(tmp_path / "none.fits", []))
    assert check_frame_kinds(headers) == {"bias": 2, "unknown": 1}
    headers.append(write_header(tmp_path / "star.fits", [("IMAGETYP", "Light Frame")]))
    names = ["b0.fits", "b1.fits", "none.fits", "star.fits"]
    with pytest.raises(ValueError, match=r"star.fits: IMAGETYP = 'Light Frame' \(light frame\).*--allow-imagetyp"):
        check_frame_kinds(headers, names)
    assert check_frame_kinds(headers, names, allowed=("bias", "light"))["light"] == 1
    assert check_frame_kinds(headers, names, allowed=("BIAS", "Light Frame"))["light"] == 1


def test_nina_header_gives_egain_and_the_gain_setting(tmp_path):
    header = write_header(tmp_path / "nina.fits", NINA)
    gain = header_gain([header, header])
    assert (gain.gain_e_per_adu, gain.source) == (0.3067, "EGAIN")
    assert "EGAIN = 0.3067 e-/ADU in all 2 frames" == gain.detail
    record = camera_record(header)
    assert record["gain_setting"] == 56 and record["offset"] == 30
    assert record["readout_mode"] == "High Gain Mode 16bit" and record["instrument"] == "QHY600M"
    assert (record["x_binning"], record["y_binning"]) == (1, 1)
    assert (record["ccd_temp_c"], record["set_temp_c"]) == (-9.8, -10.0)
    assert record["serial"] == "QHY600M-a1b2c3" and record["egain_e_per_adu"] == 0.3067
    assert record["keywords"]["readout_mode"] == "READOUTM" and record["keywords"]["gain_setting"] == "GAIN"


def test_gain_setting_alone_is_no_conversion_gain(tmp_path):
    # SharpCap and the ASCOM / INDI drivers write only the gain setting under GAIN
    header = write_header(tmp_path / "sharpcap.fits", [("GAIN", 100, "")])
    with pytest.raises(ValueError, match=r"GAIN in 1 frames is the camera's gain setting.*--gain-e-per-adu"):
        header_gain([header])
    with pytest.raises(ValueError, match="no frame has GAIN"):
        header_gain([write_header(tmp_path / "bare.fits", [])])


def test_gain_with_its_unit_in_the_comment(tmp_path):
    e_per_adu = write_header(tmp_path / "a.fits", [("GAIN", 1.25, "[e-/ADU] conversion gain")])
    got = header_gain([e_per_adu])
    assert (got.gain_e_per_adu, got.source) == (1.25, "GAIN")
    assert "gain_setting" not in camera_record(e_per_adu)  # a conversion gain is not a setting
    adu_per_e = write_header(tmp_path / "b.fits", [("GAIN", 3.26, "conversion gain in ADU/e-")])
    got = header_gain([adu_per_e])
    assert got.gain_e_per_adu == pytest.approx(1 / 3.26) and "ADU/e-" in got.detail


def test_gains_that_disagree_or_are_missing_somewhere_are_refused(tmp_path):
    a = write_header(tmp_path / "a.fits", [("EGAIN", 0.3067)])
    b = write_header(tmp_path / "b.fits", [("EGAIN", 0.8)])
    with pytest.raises(ValueError, match=r"b.fits: EGAIN = 0.8, a.fits has 0.3067"):
        header_gain([a, b], ["a.fits", "b.fits"])
    with pytest.raises(ValueError, match="EGAIN is in 1 of 2 frames"):
        header_gain([a, write_header(tmp_path / "c.fits", [])])
    with pytest.raises(ValueError, match="not a finite positive"):
        header_gain([write_header(tmp_path / "d.fits", [("EGAIN", -1.0)])])


def test_common_camera_record_takes_the_median_temperature_and_refuses_mixed_settings(tmp_path):
    headers = []
    for i, temp in enumerate([-9.8, -10.1, -10.0]):
        cards = [c if c[0] != "CCD-TEMP" else ("CCD-TEMP", temp) for c in NINA]
        headers.append(write_header(tmp_path / f"f{i}.fits", cards))
    record = common_camera_record(headers)
    assert record["ccd_temp_c"] == -10.0 and record["ccd_temp_range_c"] == [-10.1, -9.8]
    assert record["readout_mode"] == "High Gain Mode 16bit"
    cards = [c if c[0] != "READOUTM" else ("READOUTM", "Extend Fullwell 2CMS") for c in NINA]
    headers.append(write_header(tmp_path / "other.fits", cards))
    with pytest.raises(ValueError, match=r"other.fits: READOUTM = 'Extend Fullwell 2CMS' differs from "
                                         r"'High Gain Mode 16bit' of f0.fits"):
        common_camera_record(headers, [f"f{i}.fits" for i in range(3)] + ["other.fits"])
