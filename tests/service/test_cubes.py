"""Tests of service/cubes.py: the cube store on disk."""

import os
import time

import numpy as np
import pytest

from rtnstream.kernels.cube import write_cube
from rtnstream.kernels.exceptions import CubeFormatError
from rtnstream.service.cubes import CubeStore
from tests.kernels._two_trap_cube import with_second_traps


def test_stale_partial_uploads_are_removed_when_the_store_opens(tmp_path):
    old, fresh = tmp_path / "a.fits.part", tmp_path / "b.fits.part"
    old.write_bytes(b"x")
    fresh.write_bytes(b"y")
    an_hour_ago = time.time() - 3700
    os.utime(old, (an_hour_ago, an_hour_ago))
    CubeStore(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b.fits.part"]  # a live upload may own this one


def test_add_file_stores_a_valid_upload_and_removes_an_invalid_one(tmp_path, sim):
    store = CubeStore(tmp_path / "cubes")
    target = store.upload_path()
    target.write_bytes(sim.cube_path.read_bytes())
    assert store.add_file(target, "cube.fits").cube_id == sim.cube.cube_id
    assert not target.exists() and store.exists(sim.cube.cube_id)
    bad = store.upload_path()
    bad.write_bytes(b"SIMPLE  = nonsense")
    with pytest.raises(CubeFormatError, match=r"^their\.fits: not a readable FITS file") as err:
        store.add_file(bad, "their.fits")
    assert str(tmp_path) not in str(err.value)
    assert sorted(p.name for p in store.directory.iterdir()) == [f"{sim.cube.cube_id}.fits",
                                                                 f"{sim.cube.cube_id}.json"]


def test_add_file_stores_a_two_trap_cube_with_its_second_traps(tmp_path, sim):
    cube = with_second_traps(sim.cube)
    assert cube.rtn.two_trap.any() and cube.cube_id != sim.cube.cube_id
    store = CubeStore(tmp_path / "cubes")
    target = store.upload_path()
    write_cube(cube, tmp_path / "two.fits")
    target.write_bytes((tmp_path / "two.fits").read_bytes())
    assert store.add_file(target, "two.fits").cube_id == cube.cube_id
    store.forget(cube.cube_id)
    back = store.load(cube.cube_id)  # read again from the stored file
    for attr in ("delta2_e", "frac2_c", "frac2_lo", "frac2_hi", "lammax2_e"):
        np.testing.assert_array_equal(getattr(back.rtn, attr), getattr(cube.rtn, attr), err_msg=attr)
    np.testing.assert_array_equal(back.dq, cube.dq)
