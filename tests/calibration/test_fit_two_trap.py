"""Two-trap pixels in ``rtnstream fit`` (calibration/fit.py, calibration/two_trap.py): a bias stack written by
``rtnstream simulate --two-trap-fraction`` fitted through the CLI, against the simulator's truth.

The stack: 100 x 100 pixels, 1000 frames, 5 % one-trap and 1 % two-trap pixels (first jumps 3-10 sigma,
second jumps 4-14 sigma at least 3 sigma from the first: the simulator's defaults).
"""

import json

import numpy as np
import pytest
from astropy.io import fits

from rtnstream.calibration.fit import FitSettings, fit_band, fit_bias_stack, fit_candidates
from rtnstream.calibration.fit_report import report_path
from rtnstream.calibration.two_trap import refit_band
from rtnstream.cli import main
from rtnstream.kernels.cube import DQ_RTN, DQ_TWO_TRAP, read_cube
from rtnstream.kernels.lut import get_table
from tests.calibration._two_trap_e2e import fit_cube

SECOND = ("delta2_e", "frac2_c", "frac2_lo", "frac2_hi", "lammax2_e")
FIRST = ("mu_adu", "delta_e", "sigma_e", "frac_c", "frac_lo", "frac_hi", "lammax_e")


@pytest.fixture(scope="module")
def sim(tmp_path_factory):
    out = tmp_path_factory.mktemp("sim")
    assert main(["simulate", "-o", str(out), "--shape", "100", "100", "--frames", "1000", "--rtn-fraction", "0.05",
                 "--two-trap-fraction", "0.01", "--seed", "5"]) == 0
    return out, dict(np.load(out / "truth.npz"))


def _fit(sim, name, *options):
    out, truth = sim
    return fit_cube(out / "bias.fits", out / name, "--gain-e-per-adu", repr(float(truth["gain_e_per_adu"])), *options)


@pytest.fixture(scope="module")
def two_file(sim):
    return _fit(sim, "two.fits")


@pytest.fixture(scope="module")
def one_file(sim):
    return _fit(sim, "one.fits", "--no-two-trap")


@pytest.fixture(scope="module")
def truth(sim):
    """The two-trap pixels' flat indices and traps in the fit's convention (trap 1 the larger jump)."""
    t = sim[1]
    index = t["two_trap_index"]
    d_first = t["delta_e"][np.searchsorted(t["rtn_index"], index)]
    d_second = t["two_trap_delta2_e"]
    return {"index": index, "delta1_e": np.maximum(d_first, d_second), "delta2_e": np.minimum(d_first, d_second),
            "sigma_e": t["sigma_e"].ravel()[index], "one_trap": np.setdiff1d(t["rtn_index"], index),
            "rtn_index": t["rtn_index"]}


def test_fit_finds_the_two_trap_pixels(two_file, truth):
    cube = read_cube(two_file)
    two = cube.rtn.index[cube.rtn.two_trap]
    assert truth["index"].size == 100 and truth["one_trap"].size == 500
    found = np.isin(truth["index"], two)
    assert found.mean() >= 0.85
    assert np.isin(truth["one_trap"], two).mean() < 0.05
    assert np.all(np.isin(two, truth["rtn_index"]))  # no RTN-free pixel taken for two traps
    dq = cube.dq.reshape(-1)
    assert np.all(dq[two] == DQ_RTN | DQ_TWO_TRAP)
    # the fitted jumps. D2 is located by the second trap's side levels: at least 6 % of the 1000 frames
    # (the simulator's side fractions), so its standard error is about sigma / sqrt(60) = 0.13 sigma or
    # less; 1 sigma at every pixel is more than 7 standard errors, and the median within 5 % (phase 1's bar)
    pos = np.searchsorted(cube.rtn.index, truth["index"][found])
    err2 = cube.rtn.delta2_e[pos] - truth["delta2_e"][found]
    assert np.all(np.abs(err2) < truth["sigma_e"][found])
    assert np.median(np.abs(err2) / truth["delta2_e"][found]) < 0.05
    assert np.median(np.abs(cube.rtn.delta_e[pos] / truth["delta1_e"][found] - 1)) < 0.03
    # LAMMAX2: the threshold table's lambda_max of the smallest positive level, at trap 1's sigma
    r = cube.rtn
    t = r.two_trap
    np.testing.assert_allclose(r.lammax2_e[t], get_table(0.003).lambda_max(
        np.minimum(r.delta2_e, r.delta_e - r.delta2_e)[t], r.sigma_e[t]), rtol=1e-12)
    assert np.all(r.lammax2_e[t] <= r.lammax_e[t])
    for attr in SECOND:  # one-trap pixels: zeros
        assert not np.any(getattr(r, attr)[~t]), attr


def test_written_cube_is_the_fit_bit_for_bit(sim, two_file):
    """The file read back holds the fit's cube (fitted again here in memory) value for value, and its id."""
    out, t = sim
    result = fit_bias_stack([out / "bias.fits"], float(t["gain_e_per_adu"]))
    cube, back = result.cube, read_cube(two_file)
    assert back.rtn.two_trap.any()
    np.testing.assert_array_equal(back.rtn.index, cube.rtn.index)
    for attr in (*FIRST, *SECOND):
        np.testing.assert_array_equal(getattr(back.rtn, attr), getattr(cube.rtn, attr), err_msg=attr)
    for attr in ("meanbias_adu", "readnoise_e", "dq"):
        np.testing.assert_array_equal(getattr(back, attr), getattr(cube, attr), err_msg=attr)
    assert back.cube_id == cube.cube_id == fits.getheader(two_file)["CUBEID"]
    assert json.loads(report_path(two_file).read_text())["cube_id"] == cube.cube_id


def test_no_two_trap_gives_the_one_trap_fit(two_file, one_file):
    """Without the refit: no second trap anywhere, no second-trap column in the file; the refit changes only
    the pixels it makes two-trap (the others' parameters, the mean bias and read noise maps are equal)."""
    one, two = read_cube(one_file), read_cube(two_file)
    assert not one.rtn.two_trap.any() and not np.any(one.dq & DQ_TWO_TRAP)
    columns = {f"RTN_{c}" for c in ("DELTA2", "FRAC2_C", "FRAC2_LO", "FRAC2_HI", "LAMMAX2")}
    with fits.open(one_file) as a, fits.open(two_file) as b:
        assert not columns & {h.name for h in a} and columns <= {h.name for h in b}
    np.testing.assert_array_equal(one.meanbias_adu, two.meanbias_adu)
    np.testing.assert_array_equal(one.readnoise_e, two.readnoise_e)
    kept = two.rtn.index[~two.rtn.two_trap]  # one-trap pixels of the two-trap fit: in the one-trap fit as they were
    assert np.all(np.isin(kept, one.rtn.index))
    a, b = np.searchsorted(one.rtn.index, kept), np.flatnonzero(~two.rtn.two_trap)
    for attr in FIRST:
        np.testing.assert_array_equal(getattr(one.rtn, attr)[a], getattr(two.rtn, attr)[b], err_msg=attr)
    # the one-trap fit has the two-trap fit's RTN pixels, less those only the refit accepted
    rest = np.setdiff1d(one.rtn.index, kept)
    assert np.all(np.isin(rest, two.rtn.index[two.rtn.two_trap]))
    rep_two = json.loads(report_path(two_file).read_text())
    rescued = rep_two["two_trap"]["rejected_by_three_level_rules"]
    assert two.n_rtn - one.n_rtn == rescued


def test_report_gives_the_two_trap_pixels_and_the_refits_time(two_file, one_file):
    rep = json.loads(report_path(two_file).read_text())
    n_two = int(read_cube(two_file).rtn.two_trap.sum())
    assert rep["counts"]["two_trap"] == rep["two_trap"]["pixels"] == n_two
    assert rep["settings"]["two_trap"] is True and rep["two_trap"]["enabled"] is True
    assert n_two <= rep["two_trap"]["refitted"] <= rep["counts"]["candidates"]
    timing = rep["timing_s"]
    share = rep["two_trap"]["time_share_of_pass3"]
    assert timing["pass3_two_trap_s"] > 0 and 0 < share < 1
    assert share == pytest.approx(
        timing["pass3_two_trap_s"] / (timing["pass3_two_trap_s"] + timing["pass3_three_level_s"]))
    failed = rep["two_trap"]["failed_by_rule"]
    assert failed["fits_one_trap"] == rep["counts"]["candidates"] - rep["two_trap"]["refitted"]
    off = json.loads(report_path(one_file).read_text())
    assert off["counts"]["two_trap"] == 0 and off["two_trap"]["enabled"] is False
    assert off["timing_s"]["pass3_two_trap_s"] == 0 and off["two_trap"]["refitted"] == 0


def test_fit_prints_the_two_trap_pixels(sim, tmp_path, capsys):
    out, t = sim
    capsys.readouterr()
    assert main(["fit", str(out / "bias.fits"), "-o", str(tmp_path / "c.fits"), "--gain-e-per-adu",
                 repr(float(t["gain_e_per_adu"])), "--no-plots", "--no-progress"]) == 0
    n_two = int(read_cube(tmp_path / "c.fits").rtn.two_trap.sum())
    assert f"{n_two} with two traps (the refit took" in capsys.readouterr().out


def test_two_trap_setting_must_be_a_bool():
    with pytest.raises(TypeError, match="two_trap"):
        FitSettings(two_trap="no")


def test_prescreened_fit_finds_the_same_two_trap_pixels(sim, two_file, tmp_path):
    """``--prescreen`` (the compact path: candidates from the first 400 frames, as the full fit's candidate
    test uses) refits the same candidates: the same RTN pixels with the same traps, value for value."""
    cube = _fit(sim, "pre.fits", "--prescreen", "400")
    pre, full = read_cube(cube), read_cube(two_file)
    assert pre.rtn.two_trap.sum() == full.rtn.two_trap.sum() > 0
    np.testing.assert_array_equal(pre.rtn.index, full.rtn.index)
    for attr in (*FIRST, *SECOND):
        np.testing.assert_array_equal(getattr(pre.rtn, attr), getattr(full.rtn, attr), err_msg=attr)
    np.testing.assert_array_equal(pre.dq.reshape(-1)[pre.rtn.index], full.dq.reshape(-1)[full.rtn.index])


def test_refit_in_small_groups_gives_the_same_result(sim):
    """The refit's memory bound (groups of candidates) does not change its result: groups of one pixel
    give the default groups' two-trap pixels and counts, and their parameters to the rounding of sums over
    a group's padded value arrays (as the three-level EM's, whose sums depend on which candidates share a
    band: fit.py)."""
    out, t = sim
    data = fits.getdata(out / "bias.fits")[:, :30]  # (1000, 30, 100): a band of 30 rows
    mask = np.zeros(data.shape[1:], dtype=bool)
    mask.reshape(-1)[t["rtn_index"][t["rtn_index"] < mask.size]] = True
    std = data.std(axis=0, ddof=1)
    g = float(t["gain_e_per_adu"])
    one = fit_band(data, mask, std)
    big = refit_band(data, mask, one, g)
    small = refit_band(data, mask, one, g, max_bytes=1)
    assert big["two_trap"].sum() > 5 and big.keys() == small.keys()
    for key in big:
        np.testing.assert_allclose(small[key], big[key], rtol=1e-12, atol=0, err_msg=key)
    for key in ("two_trap", "refitted", "rule_counts"):
        np.testing.assert_array_equal(small[key], big[key], err_msg=key)
    both = fit_candidates(data, mask, std, g)
    np.testing.assert_array_equal(both["two_trap"], big["two_trap"])
    assert "two_trap" not in fit_candidates(data, mask, std, g, FitSettings(two_trap=False))
