"""Tests of format 2 of the RTN calibration file (kernels/cube.py): compressed columns + maps, v1 <-> v2, and the
table layout of 2026-12-01."""

from pathlib import Path

import numpy as np
import pytest
from astropy.io import fits

from rtnstream.cli import main
from rtnstream.kernels.cube import CUBE_FORMAT_VERSION, DQ_HOT, RTNCube, read_cube, write_cube
from rtnstream.kernels.engine import SUPPORTED_DTYPES, EngineSettings, RTNEngine
from rtnstream.kernels.exceptions import CubeFormatError
from rtnstream.kernels.simulate import SensorModel

SHAPE = (40, 48)
PLANES = ("mu_adu", "delta_e", "sigma_e", "frac_c", "frac_lo", "frac_hi", "lammax_e", "meanbias_adu",
          "readnoise_e")
FRACTIONS = ("frac_c", "frac_lo", "frac_hi")  # held and stored at float32 precision
COLUMNS = ("INDEX", "MU", "DELTA", "SIGMA", "FRAC_C", "FRAC_LO", "FRAC_HI", "LAMMAX")
# a file written by the format-2 writer of 2026-12-01 (RTNPIX binary table of float64 columns), from the
# `cube` fixture below; its CUBEID header is the id of then (fractions hashed at float64)
TABLE_LAYOUT = Path(__file__).parent / "data" / "cube_v2_table_layout.fits"


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
    columns = [f"RTN_{c}" for c in COLUMNS]
    with fits.open(v2) as hdul:
        assert [h.name for h in hdul] == ["PRIMARY", *columns, "MEANBIAS", "READNOISE", "DQ"]
        assert hdul[0].data is None and hdul[0].header["NRTN"] == cube.n_rtn
        units = {name[4:]: hdul[name].header["BUNIT"] for name in columns}
        assert units == {"INDEX": "", "MU": "adu", "DELTA": "electron", "SIGMA": "electron", "FRAC_C": "",
                         "FRAC_LO": "", "FRAC_HI": "", "LAMMAX": "electron"}
        dtypes = {name[4:]: hdul[name].data.dtype for name in columns}
        assert dtypes == {"INDEX": np.int32, "MU": np.float64, "DELTA": np.float64, "SIGMA": np.float64,
                          "FRAC_C": np.float32, "FRAC_LO": np.float32, "FRAC_HI": np.float32, "LAMMAX": np.float64}
        np.testing.assert_array_equal(hdul["RTN_INDEX"].data, np.flatnonzero(cube.rtn_mask))
        np.testing.assert_array_equal(hdul["RTN_MU"].data, cube.rtn.mu_adu)
        for name in columns:
            assert isinstance(hdul[name], fits.CompImageHDU) and hdul[name].data.shape == (cube.n_rtn,), name
        for name, dtype, unit in (("MEANBIAS", np.float32, "adu"), ("READNOISE", np.float32, "electron"),
                                  ("DQ", np.uint16, "")):
            assert isinstance(hdul[name], fits.CompImageHDU), name
            assert hdul[name].data.dtype == dtype and hdul[name].data.shape == SHAPE
            assert hdul[name].header["BUNIT"] == unit
            assert "RTNDENOM" not in hdul[name].header  # the cube has no NBIAS
        assert hdul["DQ"].header["DQ_HOT"] == DQ_HOT
    with fits.open(v2, disable_image_compression=True) as raw:
        for hdu in raw:
            assert hdu.verify_checksum() == 1 and hdu.verify_datasum() == 1, hdu.name
        assert all(raw[n].header["ZCMPTYPE"] == "GZIP_2" for n in (*columns, "MEANBIAS", "READNOISE", "DQ"))


def _with_n_bias(cube, n_bias, meanbias_adu):
    return RTNCube(shape=cube.shape, rtn=cube.rtn, meanbias_adu=meanbias_adu, readnoise_e=cube.readnoise_e,
                   dq=cube.dq, gain_e_per_adu=cube.gain_e_per_adu, meta={**cube.meta, "n_bias_frames": n_bias})


def test_mean_bias_of_n_frames_is_stored_as_exact_numerators(sensor, cube, tmp_path):
    # a mean over NBIAS = 997 frames of integer values: float32(k / 997); stored as the int32 k and RTNDENOM
    k = np.rint(sensor.bias_adu * 997).astype(np.int64)
    exact = _with_n_bias(cube, 997, (k / 997).astype(np.float32))
    path = write_cube(exact, tmp_path / "nbias.fits")
    with fits.open(path, disable_image_compression=True) as raw:
        assert raw["MEANBIAS"].header["ZBITPIX"] == 32 and raw["MEANBIAS"].header["RTNDENOM"] == 997
    back = read_cube(path)
    assert back.meanbias_adu.dtype == np.float32
    np.testing.assert_array_equal(back.meanbias_adu.view(np.uint32), exact.meanbias_adu.view(np.uint32))
    assert back.cube_id == exact.cube_id == fits.getheader(path)["CUBEID"]
    # one value that is no such quotient (the next float32): the map is stored as float32, still exact
    off = exact.meanbias_adu.copy()
    off[3, 5] = np.nextafter(off[3, 5], np.float32(np.inf))
    path = write_cube(_with_n_bias(cube, 997, off), tmp_path / "off.fits")
    with fits.open(path, disable_image_compression=True) as raw:
        assert raw["MEANBIAS"].header["ZBITPIX"] == -32 and "RTNDENOM" not in raw["MEANBIAS"].header
    np.testing.assert_array_equal(read_cube(path).meanbias_adu, off)


def test_file_of_the_table_layout_still_reads(cube, tmp_path):
    with fits.open(TABLE_LAYOUT) as hdul:
        assert [h.name for h in hdul] == ["PRIMARY", "RTNPIX", "MEANBIAS", "READNOISE", "DQ"]
        assert hdul["RTNPIX"].columns["FRAC_C"].format == "D"
        old_id = hdul[0].header["CUBEID"]
    old = read_cube(TABLE_LAYOUT)
    for attr in ("index", "mu_adu", "delta_e", "sigma_e", "frac_c", "frac_lo", "frac_hi", "lammax_e"):
        np.testing.assert_array_equal(getattr(old.rtn, attr), getattr(cube.rtn, attr), err_msg=attr)
    for attr in ("meanbias_adu", "readnoise_e", "dq"):
        np.testing.assert_array_equal(getattr(old, attr), getattr(cube, attr), err_msg=attr)
    # its id is now the one of what format 2 stores (fractions at float32): the cube's, not its CUBEID header
    assert old.cube_id == cube.cube_id != old_id
    rewritten = read_cube(write_cube(old, tmp_path / "new.fits"))
    assert_same_cube(rewritten, old)
    assert main(["cube", "convert", str(TABLE_LAYOUT), str(tmp_path / "converted.fits")]) == 0
    with fits.open(tmp_path / "converted.fits") as hdul:
        assert "RTNPIX" not in hdul and "RTN_MU" in hdul and hdul[0].header["CUBEID"] == cube.cube_id
    assert_same_cube(read_cube(tmp_path / "converted.fits"), old)


def test_meanbias_readnoise_and_fractions_are_held_at_float32_precision(sensor, cube):
    # the values both formats store; the fit's own uncertainty of a mean bias is orders of magnitude larger
    for attr in ("meanbias_adu", "readnoise_e", *FRACTIONS):
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


def _damaged(v2, tmp_path, edit, raw=True, out="damaged.fits"):
    out = tmp_path / out
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


def _column(name, values):
    """Replace the data of the column image RTN_<name> (edited decompressed: ``raw=False``)."""
    def edit(hdul):
        hdul[f"RTN_{name}"].data = values(hdul[f"RTN_{name}"].data)
    return edit


def _nan_at_3(a):
    return np.where(np.arange(a.size) == 3, np.nan, a)


@pytest.mark.parametrize("edit, message, raw", [
    (_set("PRIMARY", "RTNFMT", 3), "RTNFMT 3 is not a known format", True),
    (_drop("RTN_INDEX"), "missing extension.*RTN_INDEX", True),
    (_drop("RTN_FRAC_HI"), "missing extension.*RTN_FRAC_HI", True),
    (_drop("READNOISE"), "missing extension.*READNOISE", True),
    (_set("MEANBIAS", "ZNAXIS1", 4000), "READNOISE has shape.*MEANBIAS has", True),
    (_set("DQ", "ZBITPIX", -32), "DQ must have ZBITPIX 16", True),
    (_set("RTN_MU", "ZBITPIX", -32), "RTN_MU must have ZBITPIX -64", True),
    (_set("RTN_INDEX", "ZBITPIX", 16), "RTN_INDEX must have ZBITPIX 32 or 64", True),
    (_set("MEANBIAS", "ZBITPIX", 32), "MEANBIAS holds integers .* no positive integer RTNDENOM", True),
    (_set("RTN_SIGMA", "ZNAXIS1", 5), "RTN_SIGMA has 5 rows, RTN_INDEX has", True),
    (_set("RTN_DELTA", "ZNAXIS", 2), "RTN_DELTA must be a 1-D column", True),
    (_set("READNOISE", "ZCMPTYPE", "RICE_1"), "READNOISE must be compressed with GZIP", True),
    (_set("RTN_LAMMAX", "ZCMPTYPE", "RICE_1"), "RTN_LAMMAX must be compressed with GZIP", True),
    (_set("RTN_MU", "BUNIT", "electron"), "RTN_MU has BUNIT 'electron', expected 'adu'", True),
    (_set("MEANBIAS", "BUNIT", "electron"), "MEANBIAS has BUNIT 'electron'", True),
    (_column("INDEX", lambda a: a[::-1]), "RTN_INDEX must be strictly ascending", False),
    (_column("INDEX", lambda a: a + 10**6), "RTN_INDEX must be strictly ascending", False),
    (_column("MU", _nan_at_3), "MU is NaN or infinite in 1 row", False),
    (_column("SIGMA", lambda a: -a), "SIGMA must be > 0", False),
    (_column("FRAC_LO", lambda a: a + 2), r"FRAC_LO must be in \[0, 1\]", False),
])
def test_damaged_version_2_file_is_refused_naming_the_part(files, tmp_path, edit, message, raw):
    path = _damaged(files[1], tmp_path, edit, raw=raw)
    with pytest.raises(CubeFormatError, match=message) as info:
        read_cube(path, name="upload.fits")
    assert str(info.value).startswith("upload.fits:")


@pytest.mark.parametrize("edit, message", [
    (_set("RTNPIX", "TUNIT2", "electron"), "column MU has unit 'electron', expected 'adu'"),
    (_set("RTNPIX", "TFORM2", "J"), "column MU must be a float"),
    (_set("RTNPIX", "NAXIS2", SHAPE[0] * SHAPE[1] + 1), "RTNPIX"),
    (_table_column("INDEX", lambda a: a[::-1]), "RTNPIX INDEX must be strictly ascending"),
    (_table_column("MU", _nan_at_3), "MU is NaN or infinite in 1 row"),
    (_table_column("SIGMA", lambda a: -a), "SIGMA must be > 0"),
])
def test_damaged_file_of_the_table_layout_is_refused_naming_the_part(tmp_path, edit, message):
    path = _damaged(TABLE_LAYOUT, tmp_path, edit)
    with pytest.raises(CubeFormatError, match=message) as info:
        read_cube(path, name="upload.fits")
    assert str(info.value).startswith("upload.fits:")


def test_map_claiming_more_pixels_than_its_bytes_hold_is_refused_before_decompressing(files, tmp_path):
    def edit(hdul):
        for n in ("MEANBIAS", "READNOISE", "DQ"):  # one consistent, absurd shape: 1e10 pixels
            hdul[n].header["ZNAXIS1"] = 100_000
            hdul[n].header["ZNAXIS2"] = 100_000
    path = _damaged(files[1], tmp_path, edit)
    with pytest.raises(CubeFormatError, match=r"MEANBIAS claims a map of shape \(100000, 100000\).*compressed bytes"):
        read_cube(path)


def test_column_claiming_more_rows_than_its_bytes_hold_or_the_sensor_has_is_refused(files, tmp_path):
    def edit(hdul):
        for c in COLUMNS:
            hdul[f"RTN_{c}"].header["ZNAXIS1"] = 10**9
    with pytest.raises(CubeFormatError, match=r"RTN_INDEX claims a column of shape \(1000000000,\)"):
        read_cube(_damaged(files[1], tmp_path, edit))

    def edit(hdul):
        for c in COLUMNS:
            hdul[f"RTN_{c}"].header["ZNAXIS1"] = SHAPE[0] * SHAPE[1] + 1
    with pytest.raises(CubeFormatError, match=f"RTN_INDEX has {SHAPE[0] * SHAPE[1] + 1} rows, more than the"):
        read_cube(_damaged(files[1], tmp_path, edit, out="damaged2.fits"))


def test_truncated_file_is_refused(files, tmp_path):
    whole = files[1].read_bytes()
    (tmp_path / "short.fits").write_bytes(whole[: len(whole) - 2 * 2880])
    with pytest.raises(CubeFormatError, match="short.fits"):
        read_cube(tmp_path / "short.fits")


@pytest.mark.parametrize("path, hdu", [("new", 1), ("table", 1)])
def test_corrupted_version_2_data_fails_the_checksum(files, tmp_path, path, hdu):
    source = files[1] if path == "new" else TABLE_LAYOUT
    whole = bytearray(source.read_bytes())
    with fits.open(source, disable_image_compression=True) as hdul:
        start, name = hdul.fileinfo(hdu)["datLoc"], hdul[hdu].name
    whole[start + 20] ^= 0xFF  # a byte of the RTN pixels' first column (or table)
    (tmp_path / "flipped.fits").write_bytes(bytes(whole))
    with pytest.raises(CubeFormatError, match=f"{name} fails its DATASUM"):
        read_cube(tmp_path / "flipped.fits")
