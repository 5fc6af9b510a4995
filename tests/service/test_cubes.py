"""Tests of service/cubes.py: the cube store on disk."""

import os
import time

import pytest

from rtnstream.kernels.exceptions import CubeFormatError
from rtnstream.service.cubes import CubeStore


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
