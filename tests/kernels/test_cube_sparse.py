"""Tests of the sparse RTNCube (issue 15): the RTN pixels as 1-D arrays, dense planes only on request, the
identity (cube_id) unchanged, the memory it holds, and its subframe part."""

import hashlib

import numpy as np
import pytest
from astropy.io import fits

from rtnstream.guards import cube_part
from rtnstream.kernels.cube import RTNCube, RTNPixels, read_cube, write_cube
from rtnstream.kernels.exceptions import CubeFormatError
from rtnstream.kernels.pixels import PixelParams
from rtnstream.kernels.simulate import SensorModel

RTN_ATTRS = ("mu_adu", "delta_e", "sigma_e", "frac_c", "frac_lo", "frac_hi", "lammax_e")

# cube_id of these simulated cubes since the fractions are held at float32, the precision format 2 stores
# (issue 15 follow-up; before, with float64 fractions, from main at e7ba72c: 52153cf5a8ee5031 and
# c4bc3e2082c700c3): the identity of a cube must not change with how it is held
IDS_BEFORE = [
    ({"shape": (64, 80), "seed": 3}, "f4fc6fafde89ac03"),
    ({"shape": (33, 47), "rtn_fraction": 0.2, "seed": 11}, "efe1da7276f5b621"),
]


def _sha_by_definition(cube: RTNCube, dense: dict[str, np.ndarray]) -> str:
    """cube_id as its docstring defines it, from dense planes (NaN outside the RTN pixels)."""
    h = hashlib.sha256()
    h.update(np.float64(cube.gain_e_per_adu).tobytes())
    h.update(np.asarray(cube.shape, dtype=np.int64).tobytes())
    index = np.flatnonzero(np.isfinite(dense["mu_adu"]))
    h.update(index.astype(np.int64).tobytes())
    for attr in RTN_ATTRS:
        h.update(dense[attr].reshape(-1)[index].astype(np.float64).tobytes())
    for attr in ("meanbias_adu", "readnoise_e"):
        h.update(dense[attr].astype(np.float64).tobytes())
    h.update(dense["dq"].astype(np.uint16).tobytes())
    return h.hexdigest()[:16]


@pytest.mark.parametrize(("kwargs", "expected"), IDS_BEFORE)
def test_cube_id_is_the_one_the_dense_cube_had(kwargs, expected, table):
    cube = SensorModel.random(**kwargs).true_cube(table=table)
    assert cube.cube_id == expected
    dense = {attr: cube.plane(attr) for attr in RTN_ATTRS}
    dense.update(meanbias_adu=cube.meanbias_adu, readnoise_e=cube.readnoise_e, dq=cube.dq)
    assert _sha_by_definition(cube, dense) == expected


def test_cube_id_survives_v1_and_v2_round_trips_and_from_planes(tmp_path, table):
    cube = SensorModel.random((40, 52), seed=5).true_cube(table=table)
    v1 = read_cube(write_cube(cube, tmp_path / "v1.fits", version=1))
    v2 = read_cube(write_cube(v1, tmp_path / "v2.fits", version=2))
    again = RTNCube.from_planes(**{a: getattr(v2, a) for a in RTN_ATTRS}, meanbias_adu=v2.meanbias_adu,
                                readnoise_e=v2.readnoise_e, dq=v2.dq, gain_e_per_adu=v2.gain_e_per_adu)
    assert cube.cube_id == v1.cube_id == v2.cube_id == again.cube_id
    for attr in ("index", *RTN_ATTRS):
        np.testing.assert_array_equal(getattr(v2.rtn, attr), getattr(cube.rtn, attr), err_msg=attr)


def test_rtn_pixels_are_held_sparsely_and_dense_planes_built_on_request(table):
    sensor = SensorModel.random((200, 300), rtn_fraction=0.05, seed=2)
    cube = sensor.true_cube(table=table)
    n = sensor.n_rtn
    np.testing.assert_array_equal(cube.rtn.index, sensor.rtn_index)
    for attr in RTN_ATTRS:
        values = getattr(cube.rtn, attr)
        assert values.shape == (n,) and values.dtype == np.float64, attr
        plane = getattr(cube, attr)  # the dense accessor: NaN outside the RTN pixels
        assert plane.shape == cube.shape and plane.dtype == np.float64
        np.testing.assert_array_equal(plane.reshape(-1)[sensor.rtn_index], values)
        assert np.isnan(np.delete(plane.reshape(-1), sensor.rtn_index)).all()
    np.testing.assert_array_equal(cube.rtn.delta_e, sensor.delta_e)
    assert cube.meanbias_adu.dtype == cube.readnoise_e.dtype == np.float32 and cube.dq.dtype == np.uint16
    # what the cube holds: 10 bytes a pixel of maps plus 104 bytes an RTN pixel (index and 12 float64
    # parameters, the second trap's included), no float64 plane of the sensor
    held = sum(a.nbytes for a in (cube.meanbias_adu, cube.readnoise_e, cube.dq, *vars(cube.rtn).values()))
    assert held == 10 * cube.shape[0] * cube.shape[1] + 104 * n
    with pytest.raises(ValueError, match="attr must be one of"):
        cube.plane("meanbias_adu")


def test_pixel_params_read_the_sparse_arrays_without_copies(table):
    cube = SensorModel.random((50, 60), seed=4).true_cube(table=table)
    params = PixelParams.from_cube(cube, table)
    assert np.shares_memory(params.mu_adu, cube.rtn.mu_adu) and np.shares_memory(params.index, cube.rtn.index)
    assert np.shares_memory(params.meanbias_adu, cube.meanbias_adu)
    # the variability veto's RN^2 in float64 from the float32 map, exactly as from a float64 plane
    np.testing.assert_array_equal(params.rn2_e2,
                                  cube.readnoise_e.astype(np.float64).reshape(-1)[cube.rtn.index] ** 2)
    np.testing.assert_array_equal(params.delta_adu_int, np.rint(cube.rtn.delta_e / cube.gain_e_per_adu))


def test_subframe_part_matches_the_dense_planes_cut(table):
    cube = SensorModel.random((60, 70), rtn_fraction=0.1, seed=7).true_cube(table=table)
    origin, shape = (13, 21), (25, 30)
    part = cube_part(cube, origin, shape)
    cut = (slice(13, 38), slice(21, 51))
    assert part.shape == shape
    for attr in RTN_ATTRS:
        np.testing.assert_array_equal(getattr(part, attr), getattr(cube, attr)[cut], err_msg=attr)
    for attr in ("meanbias_adu", "readnoise_e", "dq"):
        np.testing.assert_array_equal(getattr(part, attr), getattr(cube, attr)[cut], err_msg=attr)
    assert 0 < part.n_rtn < cube.n_rtn


@pytest.mark.parametrize(("index", "message"), [
    ([3, 2, 5], "strictly ascending"),
    ([0, 1, 10_000], "strictly ascending"),
    ([[0, 1, 2]], "1-D integer array"),
])
def test_bad_rtn_index_is_refused(index, message):
    n = np.size(index)
    ones = np.ones(n)
    with pytest.raises(CubeFormatError, match=message):
        RTNCube(shape=(10, 10), rtn=RTNPixels(np.asarray(index), ones * 500, ones * 5, ones, ones * 0.9,
                                              ones * 0.05, ones * 0.05, ones * 10),
                meanbias_adu=np.full((10, 10), 500.0), readnoise_e=np.ones((10, 10)),
                dq=np.zeros((10, 10), np.uint16), gain_e_per_adu=0.3)


def test_rtn_arrays_of_another_length_are_refused_by_name():
    with pytest.raises(CubeFormatError, match="DELTA has"):
        RTNPixels(np.arange(3), np.ones(3), np.ones(2), np.ones(3), np.ones(3), np.ones(3), np.ones(3),
                  np.ones(3))


@pytest.mark.parametrize("ny", [40, 7])
def test_version_2_maps_are_tiled_by_16_rows(tmp_path, table, ny):
    cube = SensorModel.random((ny, 30), seed=1).true_cube(table=table)
    path = write_cube(cube, tmp_path / "cube.fits")
    with fits.open(path, disable_image_compression=True) as hdul:
        for name in ("MEANBIAS", "READNOISE", "DQ"):
            assert (hdul[name].header["ZTILE1"], hdul[name].header["ZTILE2"]) == (30, min(16, ny)), name
    assert read_cube(path).cube_id == cube.cube_id
