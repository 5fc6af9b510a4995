"""The window median's selection network (numpy_backend.median_pair_network) against np.sort."""

from __future__ import annotations

import numpy as np
import pytest

from rtnstream.kernels.numpy_backend import _median_pair, median_pair_network


@pytest.mark.parametrize("w", range(2, 25))
@pytest.mark.parametrize("dtype", ["uint8", "uint16", "int32", "float32", "float64"])
def test_median_pair_is_the_sorted_middle(w, dtype):
    """Rows W/2-1 and W/2 equal np.sort's for numbers (ties and infinities included); NaN wherever the
    window holds a NaN (np.minimum / np.maximum return it, as the CUDA kernel's full sort does)."""
    rng = np.random.default_rng(w)
    vals = rng.integers(0, 4, (w, 4000)).astype(dtype)  # few distinct values: many ties
    nan = np.zeros(vals.shape[1], dtype=bool)
    if vals.dtype.kind == "f":
        for special, p in ((np.inf, 0.03), (-np.inf, 0.03), (np.nan, 0.01)):
            vals[rng.random(vals.shape) < p] = special
        nan = np.isnan(vals).any(axis=0)
        assert 0 < nan.sum() < nan.size
    lower, upper = _median_pair(vals, median_pair_network(w))
    ordered = np.sort(vals, axis=0)
    np.testing.assert_array_equal(lower[~nan], ordered[w // 2 - 1][~nan])
    np.testing.assert_array_equal(upper[~nan], ordered[w // 2][~nan])
    assert np.isnan(lower[nan]).all() and np.isnan(upper[nan]).all()


@pytest.mark.parametrize("w", [4, 6, 10, 16])
def test_every_single_value_reaches_the_pair(w):
    """One NaN at any position of the window makes both rows NaN (no input is pruned away)."""
    network = median_pair_network(w)
    for pos in range(w):
        vals = np.arange(w, dtype=np.float64)[:, None].copy()
        vals[pos] = np.nan
        lower, upper = _median_pair(vals, network)
        assert np.isnan(lower).all() and np.isnan(upper).all(), pos


def test_network_is_pruned():
    """W = 10: 29 comparators, 50 one-sided min/max passes (the full odd-even transposition sort: 90)."""
    network = median_pair_network(10)
    assert len(network) == 29
    assert sum(a + b for _i, _j, a, b in network) == 50
    assert all(0 <= i < j < 10 for i, j, _a, _b in network)


def test_window_too_small():
    with pytest.raises(ValueError, match="window w"):
        median_pair_network(1)
