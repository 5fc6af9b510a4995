"""The threaded gather and scatter of the RTN pixels equal plain NumPy indexing (chunks, any pool)."""

from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from rtnstream.kernels.numpy_backend import GATHER_CHUNK, gather, scatter


@pytest.mark.parametrize("threads", [None, 1, 3])
@pytest.mark.parametrize("dtype", ["uint16", "float32", "int32"])
def test_gather_and_scatter_match_numpy(threads, dtype):
    rng = np.random.default_rng(1)
    flat = rng.integers(0, 60000, 4 * GATHER_CHUNK + 123).astype(dtype)
    index = np.sort(rng.choice(flat.size, 3 * GATHER_CHUNK + 7, replace=False)).astype(np.int64)  # > 1 chunk
    pool = ThreadPoolExecutor(threads) if threads else None
    try:
        out = np.empty(index.size, dtype=dtype)
        gather(flat, index, out, pool)
        np.testing.assert_array_equal(out, flat[index])
        values = rng.integers(0, 60000, index.size).astype(dtype)
        expected = flat.copy()
        expected[index] = values
        scatter(flat, index, values, pool)
        np.testing.assert_array_equal(flat, expected)
    finally:
        if pool:
            pool.shutdown()
