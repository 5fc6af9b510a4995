"""The direct FITS frame reader gives exactly what the astropy-backed stack reader gives."""

import numpy as np
import pytest
from astropy.io import fits

from rtnstream.calibration._fitsread import FrameReader
from rtnstream.calibration.stacks import FitsStack
from rtnstream.kernels.exceptions import FrameError


@pytest.fixture()
def files(tmp_path):
    rng = np.random.default_rng(0)
    frame = rng.integers(0, 65535, (37, 23), dtype=np.uint16)
    cube = rng.integers(-500, 500, (3, 37, 23)).astype(np.int32)
    paths = [tmp_path / "u16.fits", tmp_path / "cube.fits", tmp_path / "ext.fits", tmp_path / "f32.fits",
             tmp_path / "tiles.fits"]
    header = fits.Header()
    for k in range(40):  # a header longer than one 2880-byte block
        header[f"KEY{k}"] = (k, "padding card")
    fits.PrimaryHDU(frame, header=header).writeto(paths[0])
    fits.PrimaryHDU(cube).writeto(paths[1])
    fits.HDUList([fits.PrimaryHDU(), fits.ImageHDU(np.zeros((2, 2), np.uint8)), fits.ImageHDU(frame)]).writeto(
        paths[2])
    fits.PrimaryHDU(rng.normal(size=(37, 23)).astype(np.float32)).writeto(paths[3])
    fits.HDUList([fits.PrimaryHDU(), fits.CompImageHDU(frame)]).writeto(paths[4])
    return paths


def test_same_values_as_the_stack(files):
    stacks = [FitsStack(files[:2]), FitsStack([files[2]], hdu=2), FitsStack([files[3]]), FitsStack([files[4]])]
    for stack in stacks:
        reader = FrameReader(stack)
        for i in range(stack.n_frames):
            for rows, cols in ((None, None), ((3, 20), (5, 9)), ((36, 37), (0, 23))):
                expected = stack.read_frame(i, rows=rows, cols=cols)
                got = reader.read_frame(i, rows=rows, cols=cols)
                assert got.dtype == np.float64
                np.testing.assert_array_equal(got, expected)


def test_truncated_file_is_named(files, tmp_path):
    stack = FitsStack([files[0]])
    data = files[0].read_bytes()
    files[0].write_bytes(data[:-2880])
    with pytest.raises(FrameError, match="u16.fits"):
        FrameReader(stack).read_frame(0)
