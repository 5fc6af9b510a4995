"""CubeStore.forget: a cube leaves the memory cache (the demo drops it once its job holds the engine)."""

import numpy as np

from rtnstream.service.cubes import CubeStore


def test_forget_drops_the_cached_cube_and_keeps_the_file(tmp_path, sim):
    store = CubeStore(tmp_path / "cubes")
    target = store.upload_path()
    target.write_bytes(sim.cube_path.read_bytes())
    cube_id = store.add_file(target, "cube.fits").cube_id
    cached = store.load(cube_id)
    assert store.load(cube_id) is cached
    store.forget(cube_id)
    store.forget("0123456789abcdef")  # not cached: nothing to do
    again = store.load(cube_id)  # read from its file again
    assert again is not cached and again.cube_id == cube_id
    np.testing.assert_array_equal(again.meanbias_adu, cached.meanbias_adu)
