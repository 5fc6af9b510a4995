"""``rtnstream simulate`` refuses bad arguments naming the option, before it writes anything."""

from __future__ import annotations

import pytest

from rtnstream.cli import main


@pytest.mark.parametrize("extra, option", [
    (["--shape", "0", "10"], "--shape"),
    (["--shape", "10", "-2"], "--shape"),
    (["--scene", "stars", "--shape", "15", "40"], "--shape"),  # stars 7.5 px from the border do not fit
    (["--scene", "varying", "--n-stars", "0", "--shape", "40", "8"], "--shape"),
    (["--frames", "0"], "--frames"),
    (["--scene", "stars", "--n-stars", "-3"], "--n-stars"),
    (["--sky-e", "-5"], "--sky-e"),
    (["--sky-e", "nan"], "--sky-e"),
    (["--gain-e-per-adu", "0"], "--gain-e-per-adu"),
    (["--gain-e-per-adu", "inf"], "--gain-e-per-adu"),
    (["--frames-per-file", "-1"], "--frames-per-file"),
    (["--rtn-fraction", "1.5"], "--rtn-fraction"),
    (["--rtn-fraction", "0.5", "--two-trap-fraction", "0.6"], "--two-trap-fraction"),
    (["--seed", "-1"], "--seed"),
])
def test_bad_arguments_are_refused_before_anything_is_written(tmp_path, extra, option):
    out = tmp_path / "sim"
    with pytest.raises(SystemExit, match=f"rtnstream simulate: error: {option} "):
        main(["simulate", "-o", str(out), "--shape", "8", "8", "--frames", "3", *extra])
    assert not out.exists()


def test_good_arguments_still_write_the_files(tmp_path):
    out = tmp_path / "sim"
    assert main(["simulate", "-o", str(out), "--shape", "16", "16", "--frames", "3", "--scene", "stars",
                 "--n-stars", "2", "--sky-e", "0", "--frames-per-file", "2"]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["cube.fits", "stars_00000.fits", "stars_00001.fits",
                                                      "truth.json", "truth.npz"]


def test_frames_carry_their_gain_for_the_fit(tmp_path):
    """The simulated frames say their conversion gain (EGAIN, e-/ADU), which ``rtnstream fit`` reads when no
    --gain is given: the value truth.json records."""
    import json

    from astropy.io import fits

    from rtnstream.calibration.acquisition import header_gain

    out = tmp_path / "sim"
    assert main(["simulate", "-o", str(out), "--shape", "16", "16", "--frames", "4", "--frames-per-file", "2",
                 "--gain-e-per-adu", "0.8125"]) == 0
    truth = json.loads((out / "truth.json").read_text())
    headers = [fits.getheader(out / name) for name in truth["files"]]
    gain = header_gain(headers)
    assert gain.source == "EGAIN" and gain.gain_e_per_adu == truth["gain_e_per_adu"] == 0.8125
    assert all(h["BUNIT"] == "adu" and h["RTNSEED"] == truth["seed"] for h in headers)
