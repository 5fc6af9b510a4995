"""``rtnstream evaluate`` end to end on FITS files: the report's contents, the --corrected and --sources paths,
agreement with the in-memory evaluation, --predict, and clear errors."""

import json

import numpy as np
import pytest
from astropy.io import fits

from rtnstream.cli import main
from rtnstream.evaluate import evaluate_arrays
from rtnstream.evaluate.report import PANELS
from rtnstream.starfield import StarField

REQUIRED = ("flux_e", "n_rtn_in_aperture", "snr_raw", "snr_corrected", "snr_masked", "flux_bias_pct_without_offset",
            "flux_bias_pct_with_offset")
PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def field():
    return StarField.make((128, 128), fwhm_px=2.6, flux_range_e=(30, 3000), sky_e=0.5, rtn_fraction=0.05, seed=3)


@pytest.fixture(scope="module")
def sim(field, tmp_path_factory):
    return field.write(tmp_path_factory.mktemp("sim"), 60, seed=4)


@pytest.fixture(scope="module")
def evaluated(sim, tmp_path_factory):
    out = tmp_path_factory.mktemp("eval")
    rc = main(["evaluate", "--cube", str(sim["cube"]), str(sim["frames"]), "-o", str(out), "--fwhm", "2.6",
               "--sources", str(sim["catalog"]), "--comparison", "5", "--star-plots", "2", "--no-progress"])
    assert rc == 0
    return out, json.loads((out / "report.json").read_text())


def test_report_holds_the_stars_summary_and_plots(evaluated, field):
    out, report = evaluated
    assert len(report["stars"]) == field.n_stars
    for star in report["stars"]:
        assert all(key in star for key in REQUIRED)
    assert sum(s["comparison"] for s in report["stars"]) == 5
    assert report["n_frames"] == 60 and report["fwhm_px"] == 2.6
    assert report["summary"]["with_rtn"]["n_stars"] == sum(s["n_rtn_in_aperture"] > 0 for s in report["stars"])
    assert sum(b["n_stars"] for b in report["summary"]["flux_bins"]) == field.n_stars
    page = (out / "report.html").read_text()
    for name in PANELS:
        assert f'src="{name}"' in page
        assert (out / name).read_bytes()[:8] == PNG
    assert (out / "stars" / "star_0001.png").read_bytes()[:8] == PNG
    assert not (out / "stars" / "star_0003.png").exists()
    # the corrected frames and their bias offset map, as `rtnstream correct` writes them
    assert (out / "corrected" / "stars.fits").is_file()
    assert (out / "corrected" / "calib" / "series_001_bias_offset.fits").is_file()


def test_files_give_what_the_arrays_give(evaluated, field, sim):
    _, report = evaluated
    raw = fits.getdata(sim["frames"])
    ev = evaluate_arrays(raw, field.cube(), fwhm_px=2.6, positions_xy=field.positions_xy, n_comparison=5,
                         progress=False)
    for a, b in zip(report["stars"], ev.stars, strict=True):
        for key in REQUIRED:
            assert a[key] == pytest.approx(b[key], rel=1e-12, abs=1e-12), key


def test_already_corrected_frames_give_the_same_report(evaluated, sim, tmp_path):
    out, report = evaluated
    rc = main(["evaluate", "--cube", str(sim["cube"]), str(sim["frames"]), "--corrected",
               str(out / "corrected" / "stars.fits"), "-o", str(tmp_path), "--fwhm", "2.6", "--sources",
               str(sim["catalog"]), "--comparison", "5", "--star-plots", "0", "--no-progress"])
    assert rc == 0
    again = json.loads((tmp_path / "report.json").read_text())
    assert again["bias_offset_map"].endswith("series_001_bias_offset.fits")
    assert [s["snr_corrected"] for s in again["stars"]] == [s["snr_corrected"] for s in report["stars"]]
    assert not (tmp_path / "corrected").exists()


def test_sources_found_and_fwhm_fitted_without_catalog(sim, field, tmp_path):
    rc = main(["evaluate", "--cube", str(sim["cube"]), str(sim["frames"]), "-o", str(tmp_path), "--star-plots",
               "0", "--no-progress"])
    assert rc == 0
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["fwhm_px"] == pytest.approx(2.6, rel=0.1)
    found = np.array([[s["x"], s["y"]] for s in report["stars"]])
    dist = np.hypot(*(found[:, None, :] - field.positions_xy[None, :, :]).transpose(2, 0, 1)).min(axis=0)
    # stars of 30 e- and more on a 60-frame median: all but the faintest few found, within 0.5 px
    assert (dist < 0.5).sum() >= field.n_stars - 4


def test_predict_writes_the_monte_carlo(sim, tmp_path, capsys):
    rc = main(["evaluate", "--predict", "--cube", str(sim["cube"]), "--fwhm", "2.6", "6", "--flux-range", "10",
               "1e4", "--trials", "200", "-o", str(tmp_path)])
    assert rc == 0
    runs = json.loads((tmp_path / "predict.json").read_text())["runs"]
    assert [r["fwhm_px"] for r in runs] == [2.6, 6.0]
    assert len(runs[0]["flux_e"]) == len(runs[0]["gain_corrected_median"]) == 13
    assert (tmp_path / "predict.png").read_bytes()[:8] == PNG
    assert "masked worse" in capsys.readouterr().out


def test_clear_errors(sim, evaluated, tmp_path, capsys):
    with pytest.raises(SystemExit, match="--fwhm"):
        main(["evaluate", "--predict", "--cube", str(sim["cube"])])
    with pytest.raises(SystemExit, match="FRAMES"):
        main(["evaluate", "--cube", str(sim["cube"]), "-o", str(tmp_path)])
    short = tmp_path / "short.fits"
    fits.PrimaryHDU(fits.getdata(sim["frames"])[:30]).writeto(short)
    out, _ = evaluated
    rc = main(["evaluate", "--cube", str(sim["cube"]), str(short), "--corrected", str(out / "corrected" / "stars.fits"),
               "-o", str(tmp_path / "e"), "--fwhm", "2.6", "--no-progress"])
    assert rc == 2
    assert "--corrected has 60 frames, FRAMES 30" in capsys.readouterr().err
    lone = tmp_path / "lone"
    lone.mkdir()
    (lone / "c.fits").write_bytes((out / "corrected" / "stars.fits").read_bytes())
    rc = main(["evaluate", "--cube", str(sim["cube"]), str(sim["frames"]), "--corrected", str(lone / "c.fits"),
               "-o", str(tmp_path / "f"), "--fwhm", "2.6", "--no-progress"])
    assert rc == 2
    assert "--offset-map" in capsys.readouterr().err


@pytest.mark.parametrize("fwhm", ["1e6", "500", "21.5"])
def test_a_fwhm_wider_than_the_frame_allows_is_refused_naming_the_bound(sim, tmp_path, fwhm):
    # the 128 x 128 frames hold a background annulus (6 FWHM across) up to FWHM 21.33 px
    with pytest.raises(SystemExit, match=r"--fwhm\) must be at most 21.33 px .*128x128"):
        main(["evaluate", "--cube", str(sim["cube"]), str(sim["frames"]), "-o", str(tmp_path), "--fwhm", fwhm,
              "--no-progress", "--backend", "numpy"])


@pytest.mark.parametrize("fwhm", ["1e4", "50.5"])
def test_predict_refuses_a_fwhm_above_its_maximum(sim, tmp_path, fwhm):
    with pytest.raises(SystemExit, match=r"--fwhm\) must be at most 50 px"):
        main(["evaluate", "--predict", "--cube", str(sim["cube"]), "--fwhm", "2.6", fwhm, "--trials", "10"])
