"""Tests of calibration/stacks.py: FITS stacks of 2D / 3D files read in bounded row bands."""

import numpy as np
import pytest
from astropy.io import fits

from rtnstream.calibration.stacks import FitsStack, inspect_fits, read_frame
from rtnstream.kernels.exceptions import FrameError

SHAPE = (37, 23)


@pytest.fixture(scope="module")
def mixed(tmp_path_factory):
    """Seven frames in four files: 2D uint16, 3D int32 cube, compressed 3D cube in an extension, 2D float."""
    rng = np.random.default_rng(3)
    frames = rng.integers(0, 60000, size=(7, *SHAPE)).astype(np.float64)
    d = tmp_path_factory.mktemp("stacks")
    paths = [d / "a.fits", d / "b.fits", d / "c.fits", d / "d.fits"]
    fits.PrimaryHDU(frames[0].astype(np.uint16), header=fits.Header({"EXPTIME": 1.0})).writeto(paths[0])
    fits.PrimaryHDU(frames[1:3].astype(np.int32), header=fits.Header({"EXPTIME": 2.0})).writeto(paths[1])
    fits.HDUList([
        fits.PrimaryHDU(header=fits.Header({"EXPTIME": 3.0})),
        fits.CompImageHDU(frames[3:6].astype(np.uint16), header=fits.Header({"GAIN": 0.25})),
    ]).writeto(paths[2])
    fits.PrimaryHDU(frames[6].astype(np.float32)).writeto(paths[3])
    return paths, frames


def test_describes_mixed_files(mixed):
    paths, _ = mixed
    stack = FitsStack(paths)
    assert stack.n_frames == 7
    assert stack.shape == SHAPE
    assert [f.plane for f in stack.frames] == [None, 0, 1, 0, 1, 2, None]
    # EXPTIME of the compressed cube is only in its primary header: the merged header finds it.
    assert stack.header_values("EXPTIME") == [1.0, 2.0, 2.0, 3.0, 3.0, 3.0, None]
    assert stack.headers[3]["GAIN"] == 0.25
    assert stack.dtype == np.result_type(np.uint16, np.int32, np.float32)
    assert inspect_fits(paths[0]).dtype == np.uint16  # BZERO applied: unsigned, not int16


@pytest.mark.parametrize("max_bytes", [1, 7 * SHAPE[1] * 8 * 5, 10**9])
def test_bands_reassemble_the_stack(mixed, max_bytes):
    paths, frames = mixed
    stack = FitsStack(paths)
    rows = stack.band_rows(max_bytes)
    seen = np.full(frames.shape, np.nan)
    # The smallest budget also opens the files once per band instead of keeping them open.
    for y0, y1, data in stack.iter_bands(max_bytes, max_open_files=0 if max_bytes == 1 else 256):
        assert data.dtype == np.float64
        assert data.shape == (7, y1 - y0, SHAPE[1])
        assert y1 - y0 <= rows
        assert data.nbytes <= max(max_bytes, 7 * SHAPE[1] * 8)  # one row at least
        seen[:, y0:y1] = data
    np.testing.assert_array_equal(seen, frames)


def test_bands_of_a_rectangle_and_subset(mixed):
    paths, frames = mixed
    stack = FitsStack(paths).subset([5, 0, 2])
    assert stack.n_frames == 3
    bands = stack.iter_bands(1, rows=(4, 30), cols=(3, 11), dtype=None)
    got = np.concatenate([b.data for b in bands], axis=1)
    np.testing.assert_array_equal(got, frames[[5, 0, 2], 4:30, 3:11])


def test_read_frame(mixed):
    paths, frames = mixed
    stack = FitsStack(paths)
    np.testing.assert_array_equal(stack.read_frame(4, rows=(2, 5)), frames[4, 2:5])
    assert stack.read_frame(0, dtype=None).dtype == np.uint16
    np.testing.assert_array_equal(read_frame(paths[1], 1), frames[2])
    np.testing.assert_array_equal(read_frame(paths[0], cols=(1, 4)), frames[0][:, 1:4])
    with pytest.raises(FrameError, match="plane"):
        read_frame(paths[1])
    with pytest.raises(FrameError, match="2D image"):
        read_frame(paths[0], 1)
    with pytest.raises(ValueError, match="rows"):
        stack.read_frame(0, rows=(5, 2))
    with pytest.raises(IndexError):
        stack.read_frame(7)


def test_mismatched_shape_names_the_file(mixed, tmp_path):
    paths, _ = mixed
    odd = tmp_path / "odd.fits"
    fits.PrimaryHDU(np.zeros((SHAPE[0], SHAPE[1] + 1), np.uint16)).writeto(odd)
    with pytest.raises(FrameError, match=r"odd\.fits.*differs"):
        FitsStack([paths[0], odd])


def test_unreadable_files_name_the_file(tmp_path):
    garbage = tmp_path / "garbage.fits"
    garbage.write_bytes(b"this is not a FITS file\n" * 200)
    with pytest.raises(FrameError, match="garbage.fits"):
        FitsStack([garbage])
    whole = tmp_path / "whole.fits"
    fits.PrimaryHDU(np.ones((100, 100), np.uint16)).writeto(whole)
    truncated = tmp_path / "truncated.fits"
    truncated.write_bytes(whole.read_bytes()[: 2880 + 5000])
    with pytest.raises(FrameError, match=r"truncated\.fits.*truncated"):
        FitsStack([whole, truncated])
    table = tmp_path / "table.fits"
    fits.HDUList([fits.PrimaryHDU(), fits.BinTableHDU.from_columns([fits.Column("a", "E", array=[1.0])])]
                 ).writeto(table)
    with pytest.raises(FrameError, match=r"table\.fits.*no 2D or 3D image"):
        inspect_fits(table)
    with pytest.raises(ValueError, match="files"):
        FitsStack([])
