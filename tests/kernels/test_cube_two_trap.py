"""Two-trap pixels in the RTN calibration file (kernels/cube.py, docs/formats.md): format 2's second-trap
columns, the cube id, the checks on read and in memory, format 1's refusal, ``cube info``."""

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
from astropy.io import fits

from rtnstream.cli import main
from rtnstream.guards import cube_part
from rtnstream.kernels.cube import DQ_TWO_TRAP, RTNCube, RTNPixels, read_cube, write_cube
from rtnstream.kernels.exceptions import CubeFormatError
from rtnstream.kernels.simulate import SensorModel
from tests.kernels._two_trap_cube import with_second_traps
from tests.kernels.test_cube_v2 import _column, _damaged, _drop, _set

SHAPE = (40, 48)
FIRST = ("mu_adu", "delta_e", "sigma_e", "frac_c", "frac_lo", "frac_hi", "lammax_e")
SECOND = ("delta2_e", "frac2_c", "frac2_lo", "frac2_hi", "lammax2_e")
SECOND_COLUMNS = ("DELTA2", "FRAC2_C", "FRAC2_LO", "FRAC2_HI", "LAMMAX2")
# a one-trap cube written by the format-2 writer before the second-trap columns existed (kernels/cube.py of
# commit b0fadaa: SensorModel.random((24, 32), rtn_fraction=0.1, seed=7).true_cube(), camera "one-trap-ref")
ONE_TRAP_FILE = Path(__file__).parent / "data" / "cube_v2_one_trap.fits"


@pytest.fixture(scope="module")
def one_trap(table):
    c = SensorModel.random(SHAPE, rtn_fraction=0.1, seed=31).true_cube(table=table)
    c.meta["camera"] = "two-trap-test"
    return c


@pytest.fixture(scope="module")
def cube(one_trap):
    return with_second_traps(one_trap)


@pytest.fixture(scope="module")
def v2(cube, tmp_path_factory):
    return write_cube(cube, tmp_path_factory.mktemp("two") / "two.fits")


def test_two_trap_cube_reads_back_bit_for_bit(cube, v2):
    assert cube.rtn.two_trap.sum() == -(-cube.n_rtn // 5)  # every fifth RTN pixel
    back = read_cube(v2)
    np.testing.assert_array_equal(back.rtn.index, cube.rtn.index)
    for attr in (*FIRST, *SECOND):
        np.testing.assert_array_equal(getattr(back.rtn, attr), getattr(cube.rtn, attr), err_msg=attr)
    np.testing.assert_array_equal(back.dq, cube.dq)
    assert back.cube_id == cube.cube_id == fits.getheader(v2)["CUBEID"]


def test_second_trap_columns_follow_the_first_traps(cube, v2):
    with fits.open(v2) as hdul:
        names = [h.name for h in hdul]
        assert names[names.index("RTN_LAMMAX") + 1 : names.index("MEANBIAS")] == [f"RTN_{c}" for c in SECOND_COLUMNS]
        assert hdul[0].header["N2TRAP"] == int(cube.rtn.two_trap.sum())
        for column, attr, dtype, unit in zip(SECOND_COLUMNS, SECOND, (np.float64, *[np.float32] * 3, np.float64),
                                             ("electron", "", "", "", "electron"), strict=True):
            hdu = hdul[f"RTN_{column}"]
            assert isinstance(hdu, fits.CompImageHDU) and hdu.data.shape == (cube.n_rtn,), column
            assert hdu.data.dtype == dtype and hdu.header["BUNIT"] == unit, column
            np.testing.assert_array_equal(hdu.data, getattr(cube.rtn, attr), err_msg=column)


def _hash(cube, attrs):
    """cube_id as docs/formats.md defines it, over the RTN columns ``attrs``."""
    h = hashlib.sha256()
    h.update(np.float64(cube.gain_e_per_adu).tobytes())
    h.update(np.asarray(cube.shape, dtype=np.int64).tobytes())
    h.update(cube.rtn.index.astype(np.int64).tobytes())
    for attr in attrs:
        h.update(np.asarray(getattr(cube.rtn, attr), dtype=np.float64).tobytes())
    h.update(cube.meanbias_adu.astype(np.float64).tobytes())
    h.update(cube.readnoise_e.astype(np.float64).tobytes())
    h.update(cube.dq.astype(np.uint16).tobytes())
    return h.hexdigest()[:16]


def test_cube_id_holds_the_second_trap_only_when_some_pixel_has_one(one_trap, cube):
    assert one_trap.cube_id == _hash(one_trap, FIRST)  # one-trap cubes: the id they had before
    assert cube.cube_id == _hash(cube, (*FIRST, *SECOND))
    r = cube.rtn
    moved = RTNPixels(r.index, *(getattr(r, a) for a in FIRST), delta2_e=r.delta2_e * np.where(r.two_trap, 1.01, 1),
                      frac2_c=r.frac2_c, frac2_lo=r.frac2_lo, frac2_hi=r.frac2_hi, lammax2_e=r.lammax2_e)
    other = RTNCube(cube.shape, moved, cube.meanbias_adu, cube.readnoise_e, cube.dq, cube.gain_e_per_adu)
    assert other.cube_id != cube.cube_id


def _cards(hdu):
    """The header cards but the checksums (their values and comments hold the time of writing)."""
    return [(c.keyword, c.value, c.comment) for c in hdu.header.cards if c.keyword not in ("CHECKSUM", "DATASUM")]


def test_one_trap_cube_keeps_its_file_and_id(tmp_path):
    """A cube without two-trap pixels is written as before the second-trap columns existed: the same
    extensions, every header card of the compressed HDUs (but the checksums, which change with the time of
    writing, as the gzip headers in the compressed data do) and every decompressed value, bit for bit."""
    old = read_cube(ONE_TRAP_FILE)
    assert not old.rtn.two_trap.any() and old.n_rtn > 0
    assert old.cube_id == fits.getheader(ONE_TRAP_FILE)["CUBEID"]
    again = write_cube(old, tmp_path / "again.fits")
    for raw in (True, False):
        with fits.open(ONE_TRAP_FILE, disable_image_compression=raw) as a, \
                fits.open(again, disable_image_compression=raw) as b:
            assert [h.name for h in a] == [h.name for h in b]
            for ha, hb in zip(a, b, strict=True):
                assert _cards(ha) == _cards(hb), ha.name
                if not raw and ha.data is not None:
                    assert ha.data.dtype == hb.data.dtype and ha.data.tobytes() == hb.data.tobytes(), ha.name


def test_version_1_refuses_a_two_trap_cube(cube, one_trap, v2, tmp_path, capsys):
    with pytest.raises(ValueError, match="version 1 has no planes for a second trap.*two-trap pixels"):
        write_cube(cube, tmp_path / "v1.fits", version=1)
    assert not (tmp_path / "v1.fits").exists()
    with pytest.raises(SystemExit, match="--format 1: version 1 has no planes for a second trap"):
        main(["cube", "convert", str(v2), str(tmp_path / "v1.fits"), "--format", "1"])
    write_cube(one_trap, tmp_path / "one.fits", version=1)  # one trap: format 1 still holds it


def _replaced(cube, dq=None, **arrays):
    r = cube.rtn
    fields = {a: getattr(r, a) for a in (*FIRST, *SECOND)}
    for attr, edit in arrays.items():
        fields[attr] = edit(fields[attr].copy(), r.two_trap)
    return RTNCube(cube.shape, RTNPixels(r.index, **fields), cube.meanbias_adu, cube.readnoise_e,
                   cube.dq if dq is None else dq(cube.dq.copy(), r.index, r.two_trap), cube.gain_e_per_adu)


def _at_first_two(value):
    def edit(a, two):
        a[np.flatnonzero(two)[0]] = value
        return a
    return edit


def _at_first_one(value):
    def edit(a, two):
        a[np.flatnonzero(~two)[0]] = value
        return a
    return edit


def _flag(set_it, where):
    def edit(dq, index, two):
        flat = dq.reshape(-1)
        k = index[np.flatnonzero(two if where == "two" else ~two)[0]] if where != "normal" else \
            np.setdiff1d(np.arange(flat.size), index)[0]
        flat[k] = flat[k] | DQ_TWO_TRAP if set_it else flat[k] & ~np.uint16(DQ_TWO_TRAP)
        return dq
    return edit


@pytest.mark.parametrize("change, message", [
    ({"delta2_e": _at_first_two(np.nan)}, "DELTA2 is NaN or infinite at 1 RTN pixels"),
    ({"lammax2_e": _at_first_two(np.inf)}, "LAMMAX2 is NaN or infinite"),
    ({"delta2_e": _at_first_two(1e3)}, r"DELTA2 must be in \[0, DELTA\]"),
    ({"delta2_e": _at_first_one(-0.5)}, r"DELTA2 must be in \[0, DELTA\]"),
    ({"frac2_lo": _at_first_two(1.5)}, r"FRAC2_LO must be in \[0, 1\] at two-trap pixels"),
    ({"frac2_c": _at_first_two(0.5)}, r"FRAC2_C \+ FRAC2_LO \+ FRAC2_HI differs from 1"),
    ({"frac_c": lambda a, two: a + 1e-4 * two}, r"FRAC_C \+ FRAC_LO \+ FRAC_HI differs from 1 by more than float32 "
                                                  "rounding"),
    ({"frac2_hi": _at_first_one(0.1)}, r"FRAC2_HI must be 0 at one-trap pixels"),
    ({"lammax2_e": _at_first_two(-1.0)}, r"LAMMAX2 must be in \[0, 1e\+09\] electron at two-trap pixels"),
    ({"dq": _flag(False, "two")}, "DQ must have the two-trap bit .* exactly at the RTN pixels with DELTA2 > 0; 1 "),
    ({"dq": _flag(True, "one")}, "DQ must have the two-trap bit"),
    ({"dq": _flag(True, "normal")}, "DQ must have the two-trap bit"),
])
def test_invalid_second_trap_in_memory_is_refused_naming_the_column(cube, change, message):
    with pytest.raises(CubeFormatError, match=f"^cube: {message}"):
        _replaced(cube, **change)


def test_two_trap_flag_without_a_second_trap_is_refused_in_a_format_1_file(one_trap, tmp_path):
    path = write_cube(one_trap, tmp_path / "v1.fits", version=1)
    with fits.open(path) as hdul:
        dq = hdul["DQ"].data.copy()
        dq.reshape(-1)[one_trap.rtn.index[0]] |= DQ_TWO_TRAP
        hdul["DQ"].data = dq
        hdul.writeto(tmp_path / "flagged.fits", checksum=True)
    with pytest.raises(CubeFormatError, match="^flagged.fits: DQ must have the two-trap bit"):
        read_cube(tmp_path / "flagged.fits", name="flagged.fits")


def _first_two_trap_row(values_of):
    """Edit of the decompressed column: ``values_of(a, row)`` at the first two-trap row (every fifth row)."""
    def values(a):
        a = a.copy()
        a[0] = values_of(a, 0)
        return a
    return values


def _dq_cleared(hdul):
    dq = hdul["DQ"].data.copy()
    dq.reshape(-1)[hdul["RTN_INDEX"].data[0]] &= ~np.uint16(DQ_TWO_TRAP)
    hdul["DQ"].data = dq


@pytest.mark.parametrize("edit, message, raw", [
    (_drop("RTN_FRAC2_HI"), "missing extension.*RTN_FRAC2_HI", True),
    (_set("RTN_DELTA2", "ZNAXIS1", 5), "RTN_DELTA2 has 5 rows, RTN_INDEX has", True),
    (_set("RTN_FRAC2_C", "ZBITPIX", -64), "RTN_FRAC2_C must have ZBITPIX -32", True),
    (_set("RTN_LAMMAX2", "BUNIT", "adu"), "RTN_LAMMAX2 has BUNIT 'adu', expected 'electron'", True),
    (_column("DELTA2", _first_two_trap_row(lambda a, k: np.nan)), "DELTA2 is NaN or infinite at 1 RTN", False),
    (_column("DELTA2", _first_two_trap_row(lambda a, k: 1e4)), r"DELTA2 must be in \[0, DELTA\]", False),
    (_column("FRAC2_LO", _first_two_trap_row(lambda a, k: a[k] + 0.01)), r"FRAC2_C \+ FRAC2_LO \+ FRAC2_HI "
                                                                          "differs from 1", False),
    (_dq_cleared, "DQ must have the two-trap bit", False),
])
def test_damaged_second_trap_columns_are_refused_naming_the_part(cube, v2, tmp_path, edit, message, raw):
    assert cube.rtn.two_trap[0]  # the row the edits change is a two-trap pixel's
    path = _damaged(v2, tmp_path, edit, raw=raw)
    with pytest.raises(CubeFormatError, match=message) as info:
        read_cube(path, name="upload.fits")
    assert str(info.value).startswith("upload.fits:")


def test_cube_info_counts_the_two_trap_pixels(cube, one_trap, v2, tmp_path, capsys):
    assert main(["cube", "info", str(v2)]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["n_two_trap"] == int(cube.rtn.two_trap.sum()) > 0 and info["id"] == cube.cube_id
    assert main(["cube", "info", str(write_cube(one_trap, tmp_path / "one.fits"))]) == 0
    assert json.loads(capsys.readouterr().out)["n_two_trap"] == 0


def test_subframe_part_keeps_the_second_traps(cube):
    part = cube_part(cube, (8, 10), (20, 30))
    y, x = np.divmod(cube.rtn.index, SHAPE[1])
    inside = (y >= 8) & (y < 28) & (x >= 10) & (x < 40)
    assert part.rtn.two_trap.sum() == (inside & cube.rtn.two_trap).sum() > 0
    for attr in SECOND:
        np.testing.assert_array_equal(getattr(part.rtn, attr), getattr(cube.rtn, attr)[inside], err_msg=attr)
