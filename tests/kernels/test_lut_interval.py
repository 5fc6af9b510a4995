"""The fast lambda-interval search of the threshold table equals a plain binary search, exactly."""

import numpy as np

from rtnstream.kernels.lut import get_table


def test_lambda_interval_matches_searchsorted():
    table = get_table(0.003)
    nodes = table.lambda_nodes
    rng = np.random.default_rng(0)
    lam = np.concatenate([
        nodes, np.nextafter(nodes, np.inf), np.nextafter(nodes, -np.inf),  # on and beside every node
        rng.uniform(0, 120, 50_000), rng.uniform(0, 1, 50_000) ** 4,  # the whole range, dense near 0
        [0.0, 5e-324, table.lambda_top_e, 1e300],
    ])
    lam = np.maximum(lam, 0.0)
    expected = np.clip(np.searchsorted(nodes, lam, side="right") - 1, 0, nodes.size - 2)
    np.testing.assert_array_equal(table.lambda_interval(lam), expected)
