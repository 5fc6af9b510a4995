"""Tests of kernels/lut.py: the threshold table against direct inversion of F, its domain, storage, cache."""

import os
import threading

import numpy as np
import pytest
from scipy import stats

from rtnstream.kernels.lut import (
    TABLE_FORMAT_VERSION,
    ThresholdTable,
    build_table,
    clear_table_cache,
    get_table,
    poisson_normal_cdf,
    poisson_normal_quantile,
    table_cache_path,
)

ALPHA = 0.003


@pytest.fixture(scope="module")
def random_points():
    """Random (lambda, sigma) points over the whole domain, with their exact quantiles by bisection.

    Three batches: lambda uniform on [0, 100] with sigma log-uniform on [0.2, 20]; lambda = u^2 on [0, 1]
    (dense near 0, where q_hi moves fastest); lambda in [0, 0.05] at small sigma [0.2, 0.6]. Each batch
    is inverted separately so that the bisection's Poisson sum stays short for the small-lambda ones.
    """
    rng = np.random.default_rng(20240611)
    log_sigma = (np.log(0.2), np.log(20.0))
    batches = [
        (rng.uniform(0, 100, 1200), np.exp(rng.uniform(*log_sigma, 1200))),
        (rng.uniform(0, 1, 1200) ** 2, np.exp(rng.uniform(*log_sigma, 1200))),
        (rng.uniform(0, 0.05, 800), np.exp(rng.uniform(np.log(0.2), np.log(0.6), 800))),
    ]
    lam = np.concatenate([b[0] for b in batches])
    sigma = np.concatenate([b[1] for b in batches])
    ref_lo = np.concatenate([poisson_normal_quantile(ALPHA / 2, *b) for b in batches])
    ref_hi = np.concatenate([poisson_normal_quantile(1 - ALPHA / 2, *b) for b in batches])
    return lam, sigma, ref_lo, ref_hi


def test_table_matches_direct_inversion_everywhere(table, random_points):
    lam, sigma, ref_lo, ref_hi = random_points
    q_lo, q_hi = table.quantiles(lam, sigma)
    # ALGORITHM.md section 3: 0.01 e- for sigma >= 0.5 e-, 0.05 e- below.
    tol = np.where(sigma >= 0.5, 0.01, 0.05)
    err_lo, err_hi = np.abs(q_lo - ref_lo), np.abs(q_hi - ref_hi)
    assert np.all(err_lo < tol), f"worst q_lo error {err_lo.max():.4g} e- at lambda={lam[err_lo.argmax()]:.4g}"
    assert np.all(err_hi < tol), f"worst q_hi error {err_hi.max():.4g} e- at lambda={lam[err_hi.argmax()]:.4g}"
    # the comparison is not vacuous: small sigma near lambda = 0 was sampled
    assert np.count_nonzero((sigma < 0.3) & (lam < 0.01)) > 50


def test_quantiles_at_lambda_zero_are_the_normal_ones(table):
    sigma = table.sigma_nodes[::7]
    q_lo, q_hi = table.quantiles(np.zeros_like(sigma), sigma)
    z = stats.norm.ppf(1 - ALPHA / 2)
    np.testing.assert_allclose(q_hi, z * sigma, rtol=1e-8)
    np.testing.assert_allclose(q_lo, -z * sigma, rtol=1e-8)


def test_table_is_exact_at_its_nodes(table):
    rng = np.random.default_rng(5)
    n_lam, n_sig = table.q_lo.shape
    i = rng.integers(0, n_lam, 300)
    j = rng.integers(0, n_sig, 300)
    lam, sig = table.lambda_nodes[i], table.sigma_nodes[j]
    q_lo, q_hi = table.quantiles(lam, sig)
    # interpolation returns the stored node values bit for bit
    np.testing.assert_array_equal(q_lo, table.q_lo[i, j])
    np.testing.assert_array_equal(q_hi, table.q_hi[i, j])
    # and the stored values are the inversion of F: nodes inverted directly to 1e-8 e-; nodes filled by the
    # cubic spline (sigma >= 1.5 e-, between every 8th lambda node) to 1e-4 e- (build_table's claim)
    direct = (sig < 1.5) | (i % 8 == 0) | (i == n_lam - 1)
    for p, stored in ((ALPHA / 2, table.q_lo[i, j]), (1 - ALPHA / 2, table.q_hi[i, j])):
        err = np.abs(poisson_normal_quantile(p, lam, sig) - stored)
        assert err[direct].max() < 1e-8
        assert err[~direct].max() < 1e-4
        assert direct.sum() > 50 and (~direct).sum() > 50


def test_quantiles_are_right_skewed(table):
    lam = table.lambda_nodes[:, None]
    above = table.q_hi - lam
    below = lam - table.q_lo
    positive = table.lambda_nodes > 0
    assert np.all(above[positive] > below[positive])
    # at lambda = 0 the distribution is the symmetric normal
    np.testing.assert_allclose(above[0], below[0], rtol=1e-9)


@pytest.mark.parametrize(
    ("lam", "sigma"),
    [(100.001, 1.0), (150.0, 1.0), (-0.01, 1.0), (5.0, 0.199), (5.0, 20.01), (5.0, 0.0), (np.nan, 1.0),
     (5.0, np.nan), (np.inf, 1.0)],
)
def test_out_of_domain_is_nan_never_extrapolated(table, lam, sigma):
    with np.errstate(invalid="ignore"):  # lambda = inf: the masked interpolation computes inf - inf
        q_lo, q_hi = table.quantiles(lam, sigma)
    assert np.isnan(q_lo) and np.isnan(q_hi)


def test_domain_edges_are_inside(table):
    lam = np.array([0.0, 100.0, 100.0, 0.0])
    sigma = np.array([0.2, 0.2, 20.0, 20.0])
    q_lo, q_hi = table.quantiles(lam, sigma)
    assert np.all(np.isfinite(q_lo)) and np.all(np.isfinite(q_hi))
    np.testing.assert_array_equal(q_hi, table.q_hi[[0, -1, -1, 0], [0, 0, -1, -1]])


def test_lookup_flags_lambda_above_the_top(table):
    j, w, valid = table.sigma_coords(np.array([1.0, 1.0, 1.0, 0.1, 30.0]))
    lam = np.array([99.99, 100.0, 100.0 + 1e-9, 1.0, 1.0])
    _, _, in_table = table.lookup(lam, j, w)
    np.testing.assert_array_equal(in_table, [True, True, False, True, True])
    np.testing.assert_array_equal(valid, [True, True, True, False, False])


def test_save_load_round_trip_is_bit_exact(table, tmp_path):
    path = tmp_path / "t.npz"
    table.save(path)
    back = ThresholdTable.load(path)
    assert back.alpha == table.alpha
    for name in ("lambda_nodes", "sigma_nodes", "q_lo", "q_hi"):
        np.testing.assert_array_equal(getattr(back, name), getattr(table, name))
        assert getattr(back, name).dtype == np.float64
    assert back.table_id == table.table_id


def _arrays(table: ThresholdTable, **changes):
    out = dict(format_version=np.int64(TABLE_FORMAT_VERSION), alpha=np.float64(table.alpha),
               lambda_nodes=table.lambda_nodes, sigma_nodes=table.sigma_nodes, q_lo=table.q_lo, q_hi=table.q_hi)
    out.update(changes)
    return out


def test_load_refuses_pickled_content(table, tmp_path):
    path = tmp_path / "pickled.npz"
    np.savez(path, **_arrays(table, alpha=np.array([{"alpha": 0.003}], dtype=object)))
    with pytest.raises(ValueError, match="pickle"):
        ThresholdTable.load(path)


def test_load_refuses_other_format_version(table, tmp_path):
    path = tmp_path / "v2.npz"
    np.savez(path, **_arrays(table, format_version=np.int64(TABLE_FORMAT_VERSION + 1)))
    with pytest.raises(ValueError, match="format version"):
        ThresholdTable.load(path)


@pytest.mark.parametrize("damage", ["truncated", "garbage", "missing_array"])
def test_load_of_a_damaged_file_raises_value_error_naming_it(table, tmp_path, damage):
    path = tmp_path / f"{damage}.npz"
    if damage == "missing_array":
        arrays = _arrays(table)
        del arrays["q_hi"]
        np.savez(path, **arrays)
    else:
        table.save(path)
        data = path.read_bytes()
        path.write_bytes(data[: len(data) // 2] if damage == "truncated" else b"\x00garbage" * 100)
    with pytest.raises(ValueError, match=damage):
        ThresholdTable.load(path)


def test_table_rejects_inconsistent_arrays(table):
    with pytest.raises(ValueError, match="q_lo"):
        ThresholdTable(ALPHA, table.lambda_nodes, table.sigma_nodes, table.q_lo[:-1], table.q_hi)
    with pytest.raises(ValueError, match="non-finite"):
        ThresholdTable(ALPHA, table.lambda_nodes, table.sigma_nodes, table.q_lo, table.q_hi * np.nan)
    with pytest.raises(ValueError, match="sigma_nodes"):
        ThresholdTable(ALPHA, table.lambda_nodes, table.sigma_nodes[::-1], table.q_lo, table.q_hi)


@pytest.mark.parametrize("alpha", [0.0, 0.5, -0.1, np.nan])
def test_bad_alpha_is_refused(alpha):
    with pytest.raises(ValueError, match="alpha"):
        build_table(alpha, np.array([0.0, 1.0]), np.array([1.0, 2.0]))
    with pytest.raises(ValueError, match="alpha"):
        get_table(alpha)


@pytest.fixture
def tmp_cache(tmp_path, monkeypatch):
    """An empty RTNSTREAM_CACHE; get_table's memory cache cleared before and after."""
    cache = tmp_path / "cache"
    monkeypatch.setenv("RTNSTREAM_CACHE", str(cache))
    clear_table_cache()
    yield cache
    clear_table_cache()


def _cache_file(cache, alpha=ALPHA):
    path = table_cache_path(alpha)
    assert path.parent == cache
    return path


def test_get_table_reads_the_disk_cache(tmp_cache):
    # A table with a small grid of its own under the default name: get_table must return exactly it,
    # which proves it read the file rather than building the default grid.
    marker = build_table(ALPHA, np.linspace(0, 100, 5), np.array([0.5, 1.0, 2.0]))
    tmp_cache.mkdir()
    marker.save(_cache_file(tmp_cache))
    got = get_table(ALPHA)
    assert got.table_id == marker.table_id
    assert get_table(ALPHA) is got  # then from memory


def test_get_table_rebuilds_a_corrupt_cache_file(tmp_cache, table):
    tmp_cache.mkdir()
    path = _cache_file(tmp_cache)
    table.save(path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 3])  # truncated by a crash mid-write
    rebuilt = get_table(ALPHA)  # builds (~6 s): the default grid, the same numbers as the session table
    np.testing.assert_array_equal(rebuilt.lambda_nodes, table.lambda_nodes)
    np.testing.assert_allclose(rebuilt.q_hi, table.q_hi, rtol=0, atol=1e-9)
    # the file was replaced by a readable one holding the rebuilt table, and no temporary is left
    assert ThresholdTable.load(path).table_id == rebuilt.table_id
    assert sorted(os.listdir(tmp_cache)) == [path.name]
    # a fresh process (memory cache cleared) now reads it instead of building again
    mtime = path.stat().st_mtime_ns
    clear_table_cache()
    assert get_table(ALPHA).table_id == rebuilt.table_id
    assert path.stat().st_mtime_ns == mtime


def test_alpha_per_job_cache_key_is_the_exact_alpha(tmp_cache):
    # Issue 10 (alpha per job): 0.4999999 and 0.49999999 both print as 0.5 with 6 digits, and shared one
    # cache file: asking for one overwrote the other's table. Each must keep its own file and table.
    close = (0.4999999, 0.49999999)
    tmp_cache.mkdir()
    markers = {}
    for alpha in close:  # small grids of their own: get_table must return exactly these, built by nobody
        markers[alpha] = build_table(alpha, np.linspace(0, 100, 5), np.array([0.5, 1.0, 2.0]))
        markers[alpha].save(_cache_file(tmp_cache, alpha))
    assert _cache_file(tmp_cache, close[0]) != _cache_file(tmp_cache, close[1])
    for alpha in close:
        got = get_table(alpha)
        assert got.alpha == alpha and got.table_id == markers[alpha].table_id
    assert _cache_file(tmp_cache, 0.003).name == "threshold-table-v1-alpha0.003.npz"  # existing caches stay valid
    for alpha in close:
        assert ThresholdTable.load(_cache_file(tmp_cache, alpha)).table_id == markers[alpha].table_id


def test_concurrent_requests_for_a_new_alpha_share_one_build(tmp_cache, table):
    # Two jobs asking at once for an alpha not yet built: one build, both get that very table; and the
    # numbers are the default grid's (same builder as the session's 0.003 table, bit for bit on its grid).
    alpha = 0.01
    results = []
    threads = [threading.Thread(target=lambda: results.append(get_table(alpha))) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(300)
    assert len(results) == 2 and results[0] is results[1]
    assert results[0].alpha == alpha
    np.testing.assert_array_equal(results[0].lambda_nodes, table.lambda_nodes)
    assert sorted(os.listdir(tmp_cache)) == [table_cache_path(alpha).name]


# ---- lambda_max ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def lambda_max_points(table):
    rng = np.random.default_rng(11)
    n = 3000
    delta = rng.uniform(0.3, 60.0, n)
    sigma = np.exp(rng.uniform(np.log(0.2), np.log(20.0), n))
    return delta, sigma, table.lambda_max(delta, sigma)


def test_lambda_max_is_the_root_of_q_hi_minus_lambda_equals_delta(table, lambda_max_points):
    delta, sigma, lm = lambda_max_points
    inside = (lm > 0) & (lm < table.lambda_top_e)
    assert inside.sum() > 500
    _, q_hi = table.quantiles(lm[inside], sigma[inside])
    np.testing.assert_allclose(q_hi - lm[inside], delta[inside], rtol=0, atol=1e-9)


def test_lambda_max_is_the_first_root(table, lambda_max_points):
    # below lambda_max positive jumps are resolvable: q_hi - lambda < delta on a dense grid of [0, lambda_max)
    delta, sigma, lm = lambda_max_points
    inside = np.flatnonzero((lm > 0) & (lm < table.lambda_top_e))[:400]
    frac = np.linspace(0.0, 1.0, 200, endpoint=False)
    lam = lm[inside, None] * frac
    _, q_hi = table.quantiles(lam, np.broadcast_to(sigma[inside, None], lam.shape))
    assert np.all(q_hi - lam < delta[inside, None])


def test_lambda_max_limits(table, lambda_max_points):
    delta, sigma, lm = lambda_max_points
    z = stats.norm.ppf(1 - ALPHA / 2)
    # a jump smaller than the central peak's upper quantile at lambda = 0 is never resolvable
    tiny = delta <= z * sigma
    assert tiny.sum() > 100 and np.all(lm[tiny] == 0.0)
    # huge jumps stay resolvable over the whole table
    huge = table.lambda_max(np.full(4, 1000.0), np.array([0.2, 1.0, 5.0, 20.0]))
    np.testing.assert_array_equal(huge, table.lambda_top_e)
    # NaN in, or sigma off the table: NaN out
    out = table.lambda_max(np.array([np.nan, 5.0, 5.0, 5.0]), np.array([1.0, np.nan, 0.1, 25.0]))
    assert np.all(np.isnan(out))
    with pytest.raises(ValueError, match="delta_e"):
        table.lambda_max(np.ones(3), np.ones(4))


def test_lambda_max_grows_with_delta(table):
    delta = np.linspace(4.0, 40.0, 50)
    lm = table.lambda_max(delta, np.full(50, 1.2))
    assert np.all(np.diff(lm) >= 0) and lm[0] < lm[-1]


# ---- the reference functions ---------------------------------------------------------------------


def test_poisson_normal_cdf_matches_scipy_sum():
    y = np.array([-3.0, 0.0, 0.7, 2.5, 12.0, 48.0, 60.0])
    lam = np.array([0.0, 0.3, 1.0, 2.0, 10.0, 50.0, 50.0])
    sigma = np.array([1.0, 0.25, 0.5, 1.2, 3.0, 0.8, 7.0])
    n = np.arange(400)[:, None]
    expected = np.sum(stats.poisson.pmf(n, lam) * stats.norm.cdf(y, loc=n, scale=sigma), axis=0)
    np.testing.assert_allclose(poisson_normal_cdf(y, lam, sigma), expected, rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize(("lam", "sigma"), [(0.5, 0.3), (4.0, 1.2), (30.0, 2.0)])
def test_poisson_normal_cdf_matches_monte_carlo(lam, sigma):
    rng = np.random.default_rng(7)
    n = 400_000
    sample = rng.poisson(lam, n) + rng.normal(0.0, sigma, n)
    y = lam + np.array([-3.0, -1.0, 0.0, 0.5, 1.0, 3.0]) * np.sqrt(lam + sigma**2)
    empirical = np.array([np.mean(sample <= v) for v in y])
    se = np.sqrt(empirical * (1 - empirical) / n)
    assert np.all(np.abs(poisson_normal_cdf(y, lam, sigma) - empirical) < 5 * se + 1e-6)


def test_quantile_inverts_the_cdf():
    p = np.array([0.0015, 0.5, 0.9985])
    q = poisson_normal_quantile(p, 3.0, 0.7)
    np.testing.assert_allclose(poisson_normal_cdf(q, 3.0, 0.7), p, rtol=1e-9)
