"""The lambda-interval search: one step from the bucket guide on the default grid, the correcting loop on a
grid whose buckets hold several nodes; both equal a plain binary search, exactly, for every double."""

import numpy as np
import pytest

from rtnstream.kernels.lut import ThresholdTable, get_table


def binary_search(nodes: np.ndarray, lam: np.ndarray) -> np.ndarray:
    return np.clip(np.searchsorted(nodes, lam, side="right") - 1, 0, nodes.size - 2)


def probes(nodes: np.ndarray, seed: int) -> np.ndarray:
    """Every node and its neighbouring doubles, random bit patterns of doubles in [0, 2 top] (all scales,
    down to subnormals), uniform values, and the far ends (largest double, infinity)."""
    rng = np.random.default_rng(seed)
    top = nodes[-1]
    bits = rng.integers(0, np.float64(2 * top).view(np.int64), 200_000).view(np.float64)
    return np.concatenate([nodes, np.nextafter(nodes, np.inf), np.maximum(np.nextafter(nodes, -np.inf), 0.0),
                           bits, rng.uniform(0, 1.2 * top, 100_000), [0.0, 5e-324, np.finfo(float).max, np.inf]])


def test_default_grid_takes_one_exact_step():
    table = get_table(0.003)
    first, step, exact = table._guide
    assert exact  # no bucket holds two nodes: the one-step path is the one in use
    lam = probes(table.lambda_nodes, seed=1)
    np.testing.assert_array_equal(table.lambda_interval(lam), binary_search(table.lambda_nodes, lam))
    # NaN (a NaN frame value): the last interval, as the binary search's clamp gives
    assert table.lambda_interval(np.array([np.nan]))[0] == table.lambda_nodes.size - 2


@pytest.mark.parametrize("nodes", [
    np.array([0.0, 1e-7, 2e-7, 3e-7, 0.5, 0.5 + 1e-9, 1.0, 7.0, 100.0]),  # clusters inside one bucket
    np.concatenate([np.linspace(0.0, 1.0, 50_001), [30.0, 100.0]]),  # a fine grid: many nodes a bucket
])
def test_grids_with_crowded_buckets_fall_back_to_the_correcting_search(nodes):
    sigma = np.array([0.2, 1.0, 20.0])
    q = np.zeros((nodes.size, sigma.size))
    table = ThresholdTable(alpha=0.003, lambda_nodes=nodes, sigma_nodes=sigma, q_lo=q, q_hi=q + 1.0)
    assert not table._guide[2]
    lam = probes(nodes, seed=2)
    np.testing.assert_array_equal(table.lambda_interval(lam), binary_search(nodes, lam))
