"""Tests of format 2 of the RTN calibration file (kernels/cube.py): table + compressed maps, and v1 <-> v2."""

import numpy as np
import pytest
from astropy.io import fits

from rtnstream.cli import main
from rtnstream.kernels.cube import CUBE_FORMAT_VERSION, DQ_HOT, read_cube, write_cube
from rtnstream.kernels.engine import SUPPORTED_DTYPES, EngineSettings, RTNEngine
from rtnstream.kernels.exceptions import CubeFormatError
from rtnstream.kernels.simulate import SensorModel

SHAPE = (40, 48)
PLANES = ("mu_adu", "delta_e", "sigma_e", "frac_c", "frac_lo", "frac_hi", "lammax_e", "meanbias_adu",
          "readnoise_e")


@pytest.fixture(scope="module")
def sensor():
    # bias near 100 adu: every supported dtype, uint8 included, holds the frames unclipped
    return SensorModel.random(SHAPE, rtn_fraction=0.1, bias_level_adu=100.0, seed=21)


@pytest.fixture(scope="module")
def cube(sensor, table):
    c = sensor.true_cube(table=table)
    c.dq[0, :4] |= DQ_HOT
    c.meta["camera"] = "v2-test"
    return c


@pytest.fixture(scope="module")
def files(cube, tmp_path_factory):
    d = tmp_path_factory.mktemp("v2")
    return write_cube(cube, d / "v1.fits", version=1), write_cube(cube, d / "v2.fits")


def assert_same_cube(a, b):
    for attr in PLANES:
        np.testing.assert_array_equal(getattr(a, attr), getattr(b, attr), err_msg=attr)
    np.testing.assert_array_equal(a.dq, b.dq)
    assert a.gain_e_per_adu == b.gain_e_per_adu and a.meta == b.meta and a.cube_id == b.cube_id


def test_version_2_is_the_default_and_reads_back_bit_for_bit(cube, files):
    assert CUBE_FORMAT_VERSION == 2
    v1, v2 = files
    assert fits.getheader(v2)["RTNFMT"] == 2 and fits.getheader(v1)["RTNFMT"] == 1
    back1, back2 = read_cube(v1), read_cube(v2)
    for attr in PLANES:
        np.testing.assert_array_equal(getattr(back2, attr), getattr(cube, attr), err_msg=attr)
    assert back2.cube_id == cube.cube_id == fits.getheader(v2)["CUBEID"]
    assert_same_cube(back1, back2)


def test_version_2_layout(cube, files):
    _v1, v2 = files
    with fits.open(v2) as hdul:
        assert [h.name for h in hdul] == ["PRIMARY", "RTNPIX", "MEANBIAS", "READNOISE", "DQ"]
        assert hdul[0].data is None and hdul[0].header["NRTN"] == cube.n_rtn
        t = hdul["RTNPIX"]
        assert isinstance(t, fits.BinTableHDU) and len(t.data) == cube.n_rtn
        units = {c.name: c.unit for c in t.columns}
        assert units == {"INDEX": None, "MU": "adu", "DELTA": "electron", "SIGMA": "electron", "FRAC_C": None,
                         "FRAC_LO": None, "FRAC_HI": None, "LAMMAX": "electron"}
        np.testing.assert_array_equal(t.data["INDEX"], np.flatnonzero(cube.rtn_mask))
        assert t.columns["INDEX"].format == "J" and t.columns["MU"].format == "D"
        for name, dtype, unit in (("MEANBIAS", np.float32, "adu"), ("READNOISE", np.float32, "electron"),
                                  ("DQ", np.uint16, "")):
            assert isinstance(hdul[name], fits.CompImageHDU), name
            assert hdul[name].data.dtype == dtype and hdul[name].data.shape == SHAPE
            assert hdul[name].header["BUNIT"] == unit
        assert hdul["DQ"].header["DQ_HOT"] == DQ_HOT
    with fits.open(v2, disable_image_compression=True) as raw:
        for hdu in raw:
            assert hdu.verify_checksum() == 1 and hdu.verify_datasum() == 1, hdu.name
        assert all(raw[n].header["ZCMPTYPE"] == "GZIP_2" for n in ("MEANBIAS", "READNOISE", "DQ"))


def test_meanbias_and_readnoise_are_held_at_float32_precision(sensor, cube):
    # the values both formats store; the fit's own uncertainty of a mean bias is orders of magnitude larger
    for attr in ("meanbias_adu", "readnoise_e"):
        plane = getattr(cube, attr)
        np.testing.assert_array_equal(plane, plane.astype(np.float32).astype(np.float64))
    raw = np.where(cube.rtn_mask, cube.meanbias_adu, sensor.bias_adu)
    assert np.max(np.abs(cube.meanbias_adu - raw)[~cube.rtn_mask]) < 1e-4


def _correct(cube, frames, settings):
    engine = RTNEngine(cube, settings, backend="numpy", track_states=True)
    out = [o for f in frames for o in engine.push(f)] + engine.finish()
    return out, engine


@pytest.mark.parametrize("reference", ["temporal", "causal", "spatial"])
@pytest.mark.parametrize("dtype", [str(d) for d in SUPPORTED_DTYPES])
def test_correction_through_v1_and_v2_gives_identical_frames(sensor, files, table, dtype, reference):
    data, _, _ = sensor.stack(24, seed=5)
    frames = [f.astype(dtype) for f in data]
    settings = EngineSettings(reference=reference, window=10)
    out1, eng1 = _correct(read_cube(files[0]), frames, settings)
    out2, eng2 = _correct(read_cube(files[1]), frames, settings)
    assert len(out1) == len(out2) == len(frames)
    for a, b in zip(out1, out2, strict=True):
        assert a.data.dtype == b.data.dtype == np.dtype(dtype)
        np.testing.assert_array_equal(a.data, b.data)
        np.testing.assert_array_equal(a.states, b.states)
        assert a.counts == b.counts
    assert sum(o.counts.low + o.counts.high for o in out1) > 0  # the frames were corrected, not passed through
    np.testing.assert_array_equal(eng1.bias_offset_map(), eng2.bias_offset_map())


def test_cube_convert_command_both_ways(files, tmp_path, capsys):
    v1, v2 = files
    assert main(["cube", "convert", str(v2), str(tmp_path / "back1.fits"), "--format", "1"]) == 0
    assert main(["cube", "convert", str(tmp_path / "back1.fits"), str(tmp_path / "back2.fits")]) == 0
    assert fits.getheader(tmp_path / "back1.fits")["RTNFMT"] == 1
    assert fits.getheader(tmp_path / "back2.fits")["RTNFMT"] == 2
    assert_same_cube(read_cube(tmp_path / "back2.fits"), read_cube(v1))
    assert "format 2" in capsys.readouterr().out
    with pytest.raises(SystemExit, match="exists"):
        main(["cube", "convert", str(v1), str(tmp_path / "back2.fits")])
    assert main(["cube", "convert", str(v1), str(tmp_path / "back2.fits"), "--overwrite"]) == 0


def _damaged(v2, tmp_path, edit, raw=True):
    out = tmp_path / "damaged.fits"
    with fits.open(v2, disable_image_compression=raw) as hdul:
        edit(hdul)
        for hdu in hdul:  # files without checksums are read: the damage itself must be found
            hdu.header.remove("CHECKSUM", ignore_missing=True)
            hdu.header.remove("DATASUM", ignore_missing=True)
        hdul.writeto(out, output_verify="silentfix", checksum=False)
    return out


def _set(name, key, value):
    def edit(hdul):
        hdul[name].header[key] = value
    return edit


def _drop(name):
    def edit(hdul):
        del hdul[name]
    return edit


def _table_column(name, values):
    def edit(hdul):
        hdul["RTNPIX"].data[name] = values(hdul["RTNPIX"].data[name])
    return edit


@pytest.mark.parametrize("edit, message", [
    (_set("PRIMARY", "RTNFMT", 3), "RTNFMT 3 is not a known format"),
    (_drop("RTNPIX"), "missing extension.*RTNPIX"),
    (_drop("READNOISE"), "missing extension.*READNOISE"),
    (_set("MEANBIAS", "ZNAXIS1", 4000), "READNOISE has shape.*MEANBIAS has"),
    (_set("DQ", "ZBITPIX", -32), "DQ must have ZBITPIX 16"),
    (_set("READNOISE", "ZCMPTYPE", "RICE_1"), "READNOISE must be compressed with GZIP"),
    (_set("RTNPIX", "TUNIT2", "electron"), "column MU has unit 'electron', expected 'adu'"),
    (_set("MEANBIAS", "BUNIT", "electron"), "MEANBIAS has BUNIT 'electron'"),
    (_table_column("INDEX", lambda a: a[::-1]), "INDEX must be strictly ascending"),
    (_table_column("INDEX", lambda a: a + 10**6), "INDEX must be strictly ascending"),
    (_table_column("MU", lambda a: np.where(np.arange(a.size) == 3, np.nan, a)), "MU is NaN or infinite in 1 row"),
    (_table_column("SIGMA", lambda a: -a), "SIGMA must be > 0"),
])
def test_damaged_version_2_file_is_refused_naming_the_part(files, tmp_path, edit, message):
    path = _damaged(files[1], tmp_path, edit)
    with pytest.raises(CubeFormatError, match=message) as info:
        read_cube(path, name="upload.fits")
    assert str(info.value).startswith("upload.fits:")


@pytest.mark.parametrize("name", ["MEANBIAS", "READNOISE", "DQ"])
def test_map_claiming_more_pixels_than_its_bytes_hold_is_refused_before_decompressing(files, tmp_path, name):
    def edit(hdul):
        for n in ("MEANBIAS", "READNOISE", "DQ"):  # one consistent, absurd shape: 1e10 pixels
            hdul[n].header["ZNAXIS1"] = 100_000
            hdul[n].header["ZNAXIS2"] = 100_000
    path = _damaged(files[1], tmp_path, edit)
    with pytest.raises(CubeFormatError, match=r"MEANBIAS claims a map of shape \(100000, 100000\).*compressed bytes"):
        read_cube(path)


def test_table_with_more_rows_than_pixels_and_truncated_file_are_refused(files, tmp_path):
    path = _damaged(files[1], tmp_path, _set("RTNPIX", "NAXIS2", SHAPE[0] * SHAPE[1] + 1))
    with pytest.raises(CubeFormatError, match="RTNPIX"):
        read_cube(path)
    whole = files[1].read_bytes()
    (tmp_path / "short.fits").write_bytes(whole[: len(whole) - 2 * 2880])
    with pytest.raises(CubeFormatError, match="short.fits"):
        read_cube(tmp_path / "short.fits")


def test_corrupted_version_2_data_fails_the_checksum(files, tmp_path):
    whole = bytearray(files[1].read_bytes())
    with fits.open(files[1], disable_image_compression=True) as hdul:
        start = hdul.fileinfo(1)["datLoc"]
    whole[start + 20] ^= 0xFF  # a byte of the RTN table
    (tmp_path / "flipped.fits").write_bytes(bytes(whole))
    with pytest.raises(CubeFormatError, match="RTNPIX fails its DATASUM"):
        read_cube(tmp_path / "flipped.fits")
