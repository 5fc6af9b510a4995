"""Corrected frames as products: the input's layout, DQ and UNCERT per frame, masking mode, CCDData, ccdproc."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
from astropy import units as u
from astropy.io import fits
from astropy.nddata import CCDData, StdDevUncertainty

import rtnstream
from rtnstream.cli import main
from rtnstream.fitsio import write_atomic
from rtnstream.kernels.cube import DQ_TWO_TRAP, write_cube
from rtnstream.kernels.engine import EngineSettings, RTNEngine
from rtnstream.kernels.simulate import Scene, SensorModel
from rtnstream.products import (
    DQ_BITS,
    DQF_ANOMALOUS,
    DQF_HIGH,
    DQF_LOW,
    DQF_NOT_CORRECTABLE,
    DQF_RTN,
    DQF_TWO_TRAP,
    DQF_VETOED,
)
from tests._acquisition import STYLES, with_camera, write_night
from tests.kernels._two_trap_cube import with_second_traps

pytestmark = pytest.mark.filterwarnings("ignore::astropy.wcs.FITSFixedWarning")  # DATE-OBS -> MJD-OBS note

SHAPE = (36, 44)
N = 20
W = 6


@pytest.fixture(scope="module")
def sensor() -> SensorModel:
    return SensorModel.random(SHAPE, rtn_fraction=0.1, seed=21)


@pytest.fixture(scope="module")
def cube(sensor):
    # one RTN pixel with two traps (DQ_TWO_TRAP) and one plain pixel flagged by the fit: their bits must reach
    # the frames
    cube = with_camera(with_second_traps(sensor.true_cube(), every=sensor.n_rtn))
    assert cube.dq.reshape(-1)[sensor.rtn_index[0]] & DQ_TWO_TRAP
    cube.dq[0, 1] |= 4  # anomalous mean
    return cube


@pytest.fixture(scope="module")
def cube_path(cube, tmp_path_factory):
    return write_cube(cube, tmp_path_factory.mktemp("cube") / "qhy600m_g56.fits")


@pytest.fixture(scope="module")
def frames(sensor) -> np.ndarray:
    data, _states, _clean = sensor.stack(N, Scene.make("stars", SHAPE, sky_e=3.0, n_stars=4, seed=3), seed=9)
    return data


def engine_run(cube, frames):
    engine = RTNEngine(cube, EngineSettings(window=W), track_states=True)
    engine.start_series()
    out = [o for f in frames for o in engine.push(f)] + engine.finish()
    return out, engine


def correct(args, tmp_path, cube_path, folder, *extra) -> Path:
    out = tmp_path / "out"
    rc = main(["correct", "--cube", str(cube_path), str(folder), "-o", str(out), "--window", str(W),
               "--backend", "numpy", "--no-progress", *extra])
    assert rc == 0, args
    return out


@pytest.mark.parametrize("style", STYLES)
def test_layout_header_and_time_are_kept(style, cube, cube_path, frames, tmp_path):
    paths = write_night(tmp_path / "in", frames, style)
    out = correct(style, tmp_path, cube_path, tmp_path / "in")
    want, _ = engine_run(cube, frames)
    for path, w in zip(paths, want, strict=True):
        with fits.open(path) as src, fits.open(out / path.name) as dst:
            assert [h.name for h in dst] == [h.name for h in src] + ["DQ", "UNCERT"]
            assert [type(h) for h in dst[: len(src)]] == [type(h) for h in src]
            k = 1 if style in ("ekos", "sci") else 0
            if style == "ekos":
                assert dst[k].compression_type == src[k].compression_type == "RICE_1"
                assert dst[k].tile_shape == src[k].tile_shape
                assert dst.fileinfo(k)["datSpan"] <= src.fileinfo(k)["datSpan"] + 2880  # about the input's bytes
            assert isinstance(dst["DQ"], fits.CompImageHDU)
            np.testing.assert_array_equal(dst[k].data, w.data)
            assert dst[k].data.dtype == src[k].data.dtype
            for card in src[k].header.cards:
                if card.keyword in ("HISTORY", "CHECKSUM", "DATASUM") or card.keyword.startswith("Z"):
                    continue
                assert dst[k].header[card.keyword] == card.value, card.keyword
            assert list(src[k].header["HISTORY"]) == list(dst[k].header["HISTORY"])[: len(src[k].header["HISTORY"])]
            assert str(dst[k].header["HISTORY"][-1]).endswith(f"RTN jumps corrected, cube {cube.cube_id}")
            hdr = dst[k].header
            assert hdr["DATE-OBS"] == src[k].header["DATE-OBS"]
            assert hdr["BUNIT"] == "adu" and hdr["RTNCORR"] is True and hdr["RTNMODE"] == "correct"
            assert hdr["RTNCUBE"] == cube.cube_id and hdr["RTNCUBEF"] == cube_path.name
            assert hdr["RTNVERS"] == rtnstream.__version__ and hdr["RTNWIN"] == W and hdr["RTNSER"] == 1
            assert (hdr["RTNNLO"], hdr["RTNNHI"], hdr["RTNNVETO"]) == (w.counts.low, w.counts.high, w.counts.vetoed)


def test_dq_bits_agree_with_the_pixels_that_changed(cube, cube_path, frames, tmp_path):
    paths = write_night(tmp_path / "in", frames, "nina")
    out = correct("dq", tmp_path, cube_path, tmp_path / "in")
    want, engine = engine_run(cube, frames)
    rtn = cube.rtn_mask
    n_low = n_high = 0
    for path, w in zip(paths, want, strict=True):
        raw = fits.getdata(path).astype(np.int64)
        got = fits.getdata(out / path.name).astype(np.int64)
        dq = fits.getdata(out / path.name, "DQ")
        assert dq.dtype.kind == "u" and dq.shape == SHAPE
        np.testing.assert_array_equal((dq & DQF_LOW) != 0, got > raw)
        np.testing.assert_array_equal((dq & DQF_HIGH) != 0, got < raw)
        np.testing.assert_array_equal((dq & DQF_RTN) != 0, rtn)
        assert not np.any(dq[~rtn] & (DQF_LOW | DQF_HIGH | DQF_VETOED))
        assert np.count_nonzero(dq & DQF_VETOED) == w.counts.vetoed
        assert not np.any((dq & DQF_VETOED) & (got != raw))  # a vetoed pixel is left alone
        assert np.count_nonzero(dq & DQF_LOW) == w.counts.low and np.count_nonzero(dq & DQF_HIGH) == w.counts.high
        assert dq.reshape(-1)[engine.params.index[0]] & DQF_TWO_TRAP
        assert dq[0, 1] & DQF_ANOMALOUS
        n_low += w.counts.low
        n_high += w.counts.high
        hdr = fits.getheader(out / path.name, "DQ")
        assert all(hdr[key] == bit for key, (bit, _) in DQ_BITS.items())
    assert n_low > 0 and n_high > 0


def test_dq_jumps_are_the_true_trap_states(sensor, cube, cube_path, tmp_path):
    """On simulated truth: a pixel flagged low (high) was in the low (high) trap state in that frame."""
    frames, states, _clean = sensor.stack(N, Scene.make("flat", SHAPE, sky_e=1.0), seed=17)
    paths = write_night(tmp_path / "in", frames, "nina")
    out = correct("truth", tmp_path, cube_path, tmp_path / "in")
    flagged = {"low": [0, 0], "high": [0, 0]}
    for path, truth in zip(paths, states, strict=True):
        dq = fits.getdata(out / path.name, "DQ").reshape(-1)[sensor.rtn_index]
        for name, bit, state in (("low", DQF_LOW, -1), ("high", DQF_HIGH, 1)):
            sel = (dq & bit) != 0
            flagged[name][0] += np.count_nonzero(sel & (truth == state))
            flagged[name][1] += np.count_nonzero(sel)
    for name, (right, total) in flagged.items():
        assert total > 20 and right >= 0.9 * total, (name, right, total)


def test_uncertainty_follows_the_read_noise_model(cube, cube_path, frames, tmp_path):
    paths = write_night(tmp_path / "in", frames, "nina")
    out = correct("uncert", tmp_path, cube_path, tmp_path / "in")
    g = cube.gain_e_per_adu
    rtn = cube.rtn_mask
    for path in paths[::7]:
        ccd = CCDData.read(out / path.name)  # no arguments: unit, uncertainty from the file
        assert ccd.unit == u.adu
        assert isinstance(ccd.uncertainty, StdDevUncertainty)
        dq = fits.getdata(out / path.name, "DQ")
        level = np.where(rtn, cube.mu_adu, cube.meanbias_adu)
        signal = np.maximum((ccd.data.astype(np.float64) - level) * g, 0)
        # plain pixels: total read noise and shot noise
        want_plain = np.sqrt(cube.readnoise_e**2 + signal) / g
        np.testing.assert_allclose(ccd.uncertainty.array[~rtn], want_plain[~rtn], rtol=2e-5)
        # corrected RTN pixels (not vetoed): sigma at no signal, rising to RN at lambda_max (a two-trap
        # pixel's: that of its smallest level, LAMMAX2)
        lammax = cube.lammax_e.reshape(-1)
        lammax[cube.rtn.index] = np.where(cube.rtn.two_trap, cube.rtn.lammax2_e, cube.rtn.lammax_e)
        lammax = lammax.reshape(SHAPE)
        assert np.count_nonzero(lammax[rtn] != cube.lammax_e[rtn]) == 1  # the two-trap pixel
        frac = np.minimum(np.divide(signal, lammax, out=np.ones(SHAPE), where=rtn & (lammax > 0)), 1)
        rn_eff = cube.sigma_e + (cube.readnoise_e - cube.sigma_e) * frac
        sel = rtn & ((dq & DQF_VETOED) == 0)
        np.testing.assert_allclose(ccd.uncertainty.array[sel], (np.sqrt(rn_eff**2 + signal) / g)[sel], rtol=2e-5)
        vetoed = (dq & DQF_VETOED) != 0
        np.testing.assert_allclose(ccd.uncertainty.array[vetoed], want_plain[vetoed], rtol=2e-5)
        # positive jumps are unresolvable where the signal reaches lambda_max
        np.testing.assert_array_equal((dq & DQF_NOT_CORRECTABLE) != 0, rtn & (signal >= lammax))


def test_ccdproc_combines_outputs_and_the_offset_map_is_not_a_frame(cube, cube_path, frames, tmp_path):
    ccdproc = pytest.importorskip("ccdproc")
    paths = write_night(tmp_path / "in", frames, "maxim")
    out = correct("ccdproc", tmp_path, cube_path, tmp_path / "in")
    collection = ccdproc.ImageFileCollection(out)
    assert sorted(collection.files) == sorted(p.name for p in paths)
    assert sorted(p.name for p in out.glob("*.fit*")) == sorted(p.name for p in paths)
    combined = ccdproc.combine([str(out / p.name) for p in paths], method="average")
    assert combined.unit == u.adu
    corrected = np.stack([fits.getdata(out / p.name) for p in paths]).astype(np.float64)
    np.testing.assert_allclose(combined.data, corrected.mean(axis=0))
    offset_files = sorted((out / "calib").iterdir())
    assert [p.name for p in offset_files] == ["series_001_bias_offset.fits"]
    _, engine = engine_run(cube, frames)
    np.testing.assert_array_equal(fits.getdata(offset_files[0]), engine.bias_offset_map())
    assert fits.getheader(offset_files[0])["IMAGETYP"] == "RTN BIAS OFFSET"


def test_masking_mode_flags_without_changing_pixels(cube, cube_path, frames, tmp_path):
    paths = write_night(tmp_path / "in", frames, "nina")
    out = correct("mask", tmp_path, cube_path, tmp_path / "in", "--mode", "mask")
    want, _ = engine_run(cube, frames)
    for path, w in zip(paths, want, strict=True):
        ccd = CCDData.read(out / path.name)
        np.testing.assert_array_equal(ccd.data, fits.getdata(path))
        jumps = w.data != fits.getdata(path)  # what correction mode would have changed
        np.testing.assert_array_equal(ccd.mask, jumps)
        dq = fits.getdata(out / path.name, "DQ")
        np.testing.assert_array_equal((dq & (DQF_LOW | DQF_HIGH)) != 0, jumps)
        hdr = fits.getheader(out / path.name)
        assert hdr["RTNCORR"] is False and hdr["RTNMODE"] == "mask"
    assert not (out / "calib").exists()
    summary = json.loads((out / "summary.json").read_text())
    assert summary["mode"] == "mask"


def test_options_turn_dq_and_uncert_off(cube_path, frames, tmp_path):
    paths = write_night(tmp_path / "in", frames, "sharpcap")
    out = correct("off", tmp_path, cube_path, tmp_path / "in", "--no-dq", "--no-uncert")
    with fits.open(out / paths[3].name) as hdul:
        assert [h.name for h in hdul] == ["PRIMARY"]


def test_correct_ccddata_takes_and_returns_ccddata(cube, cube_path, frames, tmp_path):
    paths = write_night(tmp_path / "in", frames, "nina")
    out = correct("api", tmp_path, cube_path, tmp_path / "in")
    inputs = [CCDData.read(p, unit="adu") for p in paths]
    before = [c.data.copy() for c in inputs]
    got = rtnstream.correct_ccddata(inputs, cube, EngineSettings(window=W))
    for c, b in zip(inputs, before, strict=True):
        np.testing.assert_array_equal(c.data, b)  # inputs untouched
        assert "RTNCORR" not in c.meta
    for path, ccd in zip(paths, got, strict=True):
        written = CCDData.read(out / path.name)
        np.testing.assert_array_equal(ccd.data, written.data)
        np.testing.assert_array_equal(ccd.uncertainty.array, written.uncertainty.array)
        np.testing.assert_array_equal(ccd.flags, fits.getdata(out / path.name, "DQ"))
        assert ccd.unit == u.adu and ccd.meta["RTNCORR"] is True and ccd.meta["OBJECT"] == "M31"
    masked = rtnstream.correct_ccddata(inputs, str(cube_path), EngineSettings(window=W), mode="mask")
    for c, m in zip(inputs, masked, strict=True):
        np.testing.assert_array_equal(m.data, c.data)
        assert m.mask.dtype == bool and m.meta["RTNMODE"] == "mask"
    with pytest.raises(TypeError, match=r"frames\[0\] must be a CCDData"):
        rtnstream.correct_ccddata([inputs[0].data], cube)


def test_a_failed_write_leaves_no_file(tmp_path):
    """The output appears under its name only once complete: a write that fails leaves nothing."""
    good = fits.PrimaryHDU(np.zeros((4, 4), np.uint16))
    good.header["RTNCORR"] = True
    bad = fits.ImageHDU(np.zeros((4, 4)))
    bad.header.append(fits.Card.fromstring("BAD KEY = 'not a FITS keyword'"))
    with pytest.raises(fits.verify.VerifyError):
        write_atomic(fits.HDUList([good, bad]), tmp_path / "frame.fits")
    assert list(tmp_path.iterdir()) == []


def test_docs_photometry_example_runs(cube, cube_path, frames, tmp_path):
    """The worked example of docs/formats.md ("Applying the bias offset map in aperture photometry") runs."""
    pytest.importorskip("photutils")
    text = (Path(__file__).parents[1] / "docs" / "formats.md").read_text()
    section = text.split("## Applying the bias offset map in aperture photometry", 1)[1]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    write_night(tmp_path / "night", frames, "nina")
    # a plain-mean master bias of the same sensor, as the example assumes
    bias, _, _ = SensorModel.random(SHAPE, rtn_fraction=0.1, seed=21).stack(40, Scene.make("bias", SHAPE), seed=4)
    fits.PrimaryHDU(bias.mean(axis=0)).writeto(tmp_path / "master_bias.fits")
    correct("docs", tmp_path, cube_path, tmp_path / "night")
    namespace = {"__name__": "docs_example"}
    import os

    cwd = os.getcwd()
    os.chdir(tmp_path)
    try:
        exec(compile(code, "docs/formats.md", "exec"), namespace)
    finally:
        os.chdir(cwd)
    assert np.all(np.isfinite(namespace["flux"]))


def test_the_offset_map_wants_a_plain_mean_master_bias(tmp_path):
    """The docs' caveat on simulated truth: master + O matches corrected frames with a mean master, not a median."""
    shape = (24, 24)
    sensor = SensorModel.random(shape, rtn_fraction=0.3, seed=41)
    cube = sensor.true_cube()
    bias = Scene.make("bias", shape)
    frames, _, _ = sensor.stack(1000, bias, seed=1)  # the series that is corrected
    masters, _, _ = sensor.stack(2000, bias, seed=2)  # other bias frames for the master bias
    out, engine = engine_run(cube, frames)
    corrected_mean = np.stack([o.data for o in out]).astype(np.float64).mean(axis=0)
    offset = engine.bias_offset_map()
    rtn = cube.rtn_mask
    err_mean = np.abs(corrected_mean - (masters.mean(axis=0) + offset))[rtn]
    err_median = np.abs(corrected_mean - (np.median(masters, axis=0) + offset))[rtn]
    p95_mean, p95_median = np.percentile(err_mean, 95), np.percentile(err_median, 95)
    assert p95_mean < 0.5 * p95_median, (p95_mean, p95_median)
    # with the series' own frames the mean master plus the offset is the corrected mean, exactly
    np.testing.assert_allclose(corrected_mean[rtn], (frames.astype(np.float64).mean(axis=0) + offset)[rtn],
                               atol=1e-9)


@pytest.mark.parametrize("mode", ["correct", "mask"])
def test_a_stack_carries_the_same_products_as_single_frames(cube, cube_path, frames, tmp_path, mode):
    (tmp_path / "stack").mkdir()
    stack_path = tmp_path / "stack" / "night.fits"
    fits.PrimaryHDU(frames, header=fits.Header([("OBJECT", "M31"), ("EXPTIME", 2.0)])).writeto(stack_path)
    paths = write_night(tmp_path / "in", frames, "nina")
    out_single = correct("single", tmp_path, cube_path, tmp_path / "in", "--mode", mode)
    out_stack = tmp_path / "out_stack"
    assert main(["correct", "--cube", str(cube_path), str(stack_path), "-o", str(out_stack), "--window", str(W),
                 "--backend", "numpy", "--no-progress", "--mode", mode]) == 0
    with fits.open(out_stack / "night.fits") as hdul:
        names = ["PRIMARY", "DQ", "UNCERT"] + (["MASK"] if mode == "mask" else [])
        assert [h.name for h in hdul] == names
        for k, path in enumerate(paths):
            with fits.open(out_single / path.name) as single:
                for name in names:
                    np.testing.assert_array_equal(hdul[name].data[k], single[name].data, err_msg=f"{name} {k}")
        assert hdul["DQ"].header["DQ_LOW"] == DQF_LOW and hdul["UNCERT"].header["BUNIT"] == "adu"
        assert hdul[0].header["RTNCORR"] is (mode == "correct")
    want = ["night.fits", "summary.json"] + (["calib"] if mode == "correct" else [])
    assert sorted(p.name for p in out_stack.iterdir()) == sorted(want)  # no temporary file left


def test_checksums_of_the_input_are_renewed(cube_path, frames, tmp_path):
    """An input written with CHECKSUM/DATASUM gets valid ones in the output (its data changed)."""
    (tmp_path / "in").mkdir()
    paths = []
    for k, frame in enumerate(frames):
        h = fits.Header([("DATE-OBS", f"2026-11-30T21:00:{k:02d}"), ("OBJECT", "M31")])
        paths.append(tmp_path / "in" / f"f{k}.fits")
        fits.HDUList([fits.PrimaryHDU(), fits.ImageHDU(frame, header=h, name="SCI")]).writeto(paths[-1],
                                                                                              checksum=True)
    out = correct("checksum", tmp_path, cube_path, tmp_path / "in")
    changed = 0
    for path in paths:
        with fits.open(out / path.name, checksum=True) as hdul:
            assert hdul["SCI"].verify_checksum() == 1 and hdul["SCI"].verify_datasum() == 1
            assert all(h.verify_checksum() != 0 and h.verify_datasum() != 0 for h in hdul)  # none stale
            changed += np.count_nonzero(hdul["SCI"].data != fits.getdata(path, "SCI"))
    assert changed > 0
