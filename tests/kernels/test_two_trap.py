"""The two-trap decision (kernels/two_trap.py): one-trap limit, rules by hand, truth, saturation, bookkeeping."""

from __future__ import annotations

import numpy as np
import pytest

from rtnstream.kernels.numpy_backend import STATE_HIGH, STATE_LOW, STATE_OUT_OF_TABLE, apply_corrections, decide
from rtnstream.kernels.pixels import PixelParams
from rtnstream.kernels.simulate import SecondTraps, SensorModel, two_trap_frames
from rtnstream.kernels.two_trap import (
    LEVEL_I,
    LEVEL_J,
    TT_NONE,
    TT_OUT_OF_TABLE,
    TwoTrapParams,
    apply_two_trap,
    correction_adu,
    decide_two_trap,
    level_counts,
    level_offsets_e,
    log_by_roots,
    temporal_lambda_two_trap,
    two_trap_offset_map,
)


def _one_trap_params(mu, delta, sigma, g, table) -> PixelParams:
    n = mu.size
    j, w, ok = table.sigma_coords(sigma)
    return PixelParams(shape=(1, n), index=np.arange(n, dtype=np.int64), gain_e_per_adu=g, mu_adu=mu,
                       delta_e=delta, delta_adu_int=np.rint(delta / g).astype(np.int64), delta_adu_float=delta / g,
                       rn2_e2=4 * sigma**2, sigma_j=j, sigma_w=w, sigma_ok=ok, meanbias_adu=mu.copy())


@pytest.mark.parametrize("dtype", [np.uint16, np.float64])
def test_zero_second_jump_is_the_one_trap_decision(table, dtype):
    """With D2 = 0 the two-trap rules reduce to ALGORITHM.md section 3: same pixels, same corrected values,
    with or without the temporal reference's centre rule."""
    rng = np.random.default_rng(5)
    n, g = 20000, 0.5
    sigma = rng.uniform(0.3, 5.0, n)
    delta = rng.uniform(0.5, 10.0, n) * sigma
    mu = rng.uniform(500, 600, n)
    lam = np.where(rng.random(n) < 0.3, 0.0, rng.uniform(0, 120, n))  # some beyond the table's top
    x = mu + (lam + rng.normal(0, 1, n) * sigma + rng.integers(-1, 2, n) * delta) / g
    x = np.rint(x) if np.issubdtype(dtype, np.integer) else x
    one = _one_trap_params(mu, delta, sigma, g, table)
    two = TwoTrapParams.from_arrays(mu, delta, np.zeros(n), sigma, g, table)
    s1 = decide(x, lam, one, table)
    s2 = decide_two_trap(x, lam, two, table)
    assert np.array_equal(decide_two_trap(x, lam, two, table, beat_centre=True), s2)  # no centre rule at D2 = 0
    off = correction_adu(s2, two, integer=True)
    assert np.array_equal(s1 == STATE_OUT_OF_TABLE, s2 == TT_OUT_OF_TABLE)
    assert np.array_equal(s1 == STATE_LOW, off > 0)
    assert np.array_equal(s1 == STATE_HIGH, off < 0)
    assert (s1 == STATE_LOW).sum() > 1000 and (s1 == STATE_HIGH).sum() > 1000  # both sides exercised
    native = x.astype(dtype)
    frame = native.reshape(1, n)
    expected = apply_corrections(frame, native, s1, one).ravel()
    got = apply_two_trap(native, s2, two)
    assert got.dtype == native.dtype
    assert np.array_equal(got.view(np.uint8), expected.view(np.uint8))


def test_rules_by_hand(table):
    """Lambda = 0, sigma = 1 e-, D1 = 14 e-, D2 = 4 e- (levels 0, +-4, +-10, +-14, +-18): each level's centre
    is corrected by its own offset; the centre's range and a gap between ranges are left; in an overlap
    of two levels' ranges the more probable level wins."""
    g, sigma = 1.0, 1.0
    q_lo, q_hi = (float(v) for v in table.quantiles(0.0, sigma))
    assert -3.0 < q_lo < -2.9 and 2.9 < q_hi < 3.0
    offs = level_offsets_e(np.array([14.0]), np.array([4.0]))[0]

    def run(x):
        n = len(x)
        params = TwoTrapParams.from_arrays(np.zeros(n), np.full(n, 14.0), np.full(n, 4.0), np.full(n, sigma), g,
                                           table)
        return decide_two_trap(np.asarray(x, dtype=np.float64), np.zeros(n), params, table), params

    state, params = run(offs)
    assert np.array_equal(state, np.arange(1, 9))  # every level's centre found, in level order
    assert np.array_equal(correction_adu(state, params, integer=True), -offs.astype(np.int64))
    k = {float(v): i + 1 for i, v in enumerate(offs)}
    # 2: in the centre's range (and +4's): unchanged; 7: between +4's range (< 6.97) and +10's (> 7.03);
    # 12: as far from +10 = (1, -1) (prior 0.05 * 0.05) as from +14 = (1, 0) (prior 0.05 * 0.9): +14 wins;
    # 11.1: much nearer +10 (z = 1.1 against 2.9): +10 wins; -3.5: in -4's range only
    state, _ = run([0.0, 2.0, 7.0, 12.0, 11.1, -3.5])
    assert list(state) == [TT_NONE, TT_NONE, TT_NONE, k[14.0], k[10.0], k[-4.0]]


def test_centre_rule_by_hand(table):
    """Lambda = 0, sigma = 1 e-, D1 = 14 e-, D2 = 4 e-, trap 2 rare (side fractions 0.005: P(0, 1) = 0.0045,
    P(0, 0) = 0.891). At s = 3.05 e- (in +4's range, just outside the centre's) the centre is the more
    probable, log 0.891 - 3.05^2 / 2 = -4.77 against log 0.0045 - 0.95^2 / 2 = -5.86: beat_centre leaves it,
    the plain rule corrects it; at s = 5 (centre -12.6, level -5.9) and at s = 14 both correct."""
    n = 3
    params = TwoTrapParams.from_arrays(np.zeros(n), np.full(n, 14.0), np.full(n, 4.0), np.ones(n), 1.0, table,
                                       frac2_lo=0.005, frac2_hi=0.005)
    x = np.array([3.05, 5.0, 14.0])
    plain = decide_two_trap(x, np.zeros(n), params, table)
    strict = decide_two_trap(x, np.zeros(n), params, table, beat_centre=True)
    up4, up14 = 4 + 1, 6 + 1  # level indices of (0, 1) and (1, 0)
    assert list(plain) == [up4, up4, up14]
    assert list(strict) == [TT_NONE, up4, up14]


def test_log_by_roots_is_the_logarithm():
    x = np.geomspace(1e-3, 1e5, 2001)
    np.testing.assert_allclose(log_by_roots(x), np.log(x), rtol=0, atol=1e-8)
    assert log_by_roots(np.array([1.0]))[0] == 0.0


def _two_trap_windows(rng, table, lam_e, n=4000, w=10, g=0.5):
    """Windows (w, n) adu of two-trap pixels (jumps 4-8 and 7-14 sigma, side fractions 0.05-0.1 each, so a
    trap is off its centre in 10-20 % of frames) at ``lam_e`` photo-electrons, and their parameters."""
    sigma = rng.uniform(1.0, 2.0, n)
    d2 = rng.uniform(4.0, 8.0, n) * sigma
    d1 = d2 + rng.uniform(3.0, 6.0, n) * sigma
    fr = rng.uniform(0.05, 0.1, (4, n))
    params = TwoTrapParams.from_arrays(np.full(n, 1000.0), d1, d2, sigma, g, table, frac_lo=fr[0], frac_hi=fr[1],
                                       frac2_lo=fr[2], frac2_hi=fr[3])

    def states(lo, hi):
        u = rng.random((w, n))
        return np.where(u < lo, -1, np.where(u < 1 - hi, 0, 1))

    e = (rng.poisson(lam_e, (w, n)) + rng.normal(0, 1, (w, n)) * sigma + states(fr[0], fr[1]) * d1
         + states(fr[2], fr[3]) * d2)
    return 1000.0 + e / g, params


def test_temporal_lambda_median_at_a_side_level(table):
    """Six of ten bias values at +D2 (lambda 0): the window median says 4.85 e-, the level hypotheses 0;
    the de-jumped spread is that of the values' noise."""
    params = TwoTrapParams.from_arrays(np.array([100.0]), np.array([12.0]), np.array([5.0]), np.ones(1), 1.0, table,
                                       frac2_lo=0.05, frac2_hi=0.1)
    v = np.array([100.0, 105.0, 100.5, 105.3, 99.6, 104.8, 105.1, 100.2, 105.2, 104.9])[:, None]
    lam, spread = temporal_lambda_two_trap(v, params)
    assert np.median(v) - 100.0 == pytest.approx(4.85)
    assert lam[0] == 0.0
    dejumped = np.where(v > 102.5, v - 5.0, v)
    assert spread[0] == pytest.approx(dejumped.std(), rel=1e-12)


@pytest.mark.parametrize("lam_e", [0.0, 10.0, 30.0])
def test_temporal_lambda_on_simulated_windows(table, lam_e):
    """4000 simulated windows of W = 10. Bias (lambda 0): the window median is off by more than sigma in
    4 % of windows (its median sits at a side level, or between two), the level hypotheses in under half as
    many. At 10 and 30 e- (flat fields) the estimate is as good as the median: its mean within 0.2 e- of
    the truth and no further than the median's (which is 0.07-0.18 e- low over seeds: Poisson skew and the
    side states; the standard error is 0.04 e-), as many windows off by sigma within 2 %. The de-jumped
    spread is the spread of values without jumps: its median over sqrt(sigma^2 + lambda) lies in [0.8, 1.0]
    (ddof = 0 of 10 normals: 0.92), where the raw window's is above 1.3."""
    rng = np.random.default_rng(int(lam_e) + 7)
    x, params = _two_trap_windows(rng, table, lam_e)
    lam, spread = temporal_lambda_two_trap(x, params)
    median = np.maximum((np.median(x, axis=0) - params.mu_adu) * params.gain_e_per_adu, 0.0)
    sigma = params.sigma_e
    off_ours = np.mean(np.abs(lam - lam_e) > sigma)
    off_median = np.mean(np.abs(median - lam_e) > sigma)
    if lam_e == 0:
        assert off_median > 0.03 and off_ours < 0.5 * off_median
    else:
        bias, bias_median = abs(lam.mean() - lam_e), abs(median.mean() - lam_e)
        assert bias < 0.2 and bias < bias_median + 0.05
        assert off_ours < off_median + 0.02
    scale = np.sqrt(sigma**2 + lam_e)
    assert 0.8 < np.median(spread / scale) < 1.0
    assert np.median(x.std(axis=0) * params.gain_e_per_adu / scale) > 1.3


def test_unresolvable_level_is_left(table):
    """A level closer to the centre than the central range's half width is never corrected."""
    sigma, lam = 1.0, 20.0
    q_lo, q_hi = (float(v) for v in table.quantiles(lam, sigma))
    d2 = 0.9 * (q_hi - lam)  # positive level +D2 unresolvable; -D2 resolvable only if lam - q_lo < d2
    # D1 = 200 e-: trap 1's levels and the combinations lie far from +-D2
    params = TwoTrapParams.from_arrays(np.zeros(2), np.full(2, 200.0), np.full(2, d2), np.full(2, sigma), 1.0, table)
    x = np.array([q_hi + d2 - 1e-6, q_lo - d2 + 1e-6])  # inside +D2's and -D2's ranges, outside the centre's
    state = decide_two_trap(x, np.full(2, lam), params, table)
    assert state[0] == TT_NONE
    assert state[1] == (3 + 1 if lam - q_lo < d2 else TT_NONE)  # level index 3 is (0, -1)


def test_decisions_on_a_simulated_two_trap_bias_series(table):
    """At lambda = 0 with the true parameters (jumps >= 4 sigma, >= 3 sigma apart): > 93 % of the jumps
    are corrected to their true level; < 0.3 % of pixel-frames are changed for the worse (corrected away
    from their true level by more than they were off); < 1.5 % to a level other than the true one, most of
    them to a level within 3-4 sigma of it (the Bayes limit of two Gaussians 3 sigma apart: 6.7 %)."""
    sensor = SensorModel.random((40, 40), rtn_fraction=0.1, delta_over_sigma=(4.0, 10.0), seed=3)
    traps = SecondTraps.random(sensor, 0.05, seed=4)
    pos = traps.rtn_pos
    flat = sensor.rtn_index[pos]
    g = sensor.gain_e_per_adu
    d_a, d_b = sensor.delta_e[pos], traps.delta_e
    first = d_a >= d_b
    lo_a, hi_a, lo_b, hi_b = sensor.frac_lo[pos], sensor.frac_hi[pos], traps.frac_lo, traps.frac_hi
    params = TwoTrapParams.from_arrays(
        sensor.bias_adu.ravel()[flat], np.maximum(d_a, d_b), np.minimum(d_a, d_b), sensor.sigma_e.ravel()[flat], g,
        table, frac_lo=np.where(first, lo_a, lo_b), frac_hi=np.where(first, hi_a, hi_b),
        frac2_lo=np.where(first, lo_b, lo_a), frac2_hi=np.where(first, hi_b, hi_a))
    harmful = wrong = caught = jumps = total = 0
    for frame in two_trap_frames(sensor, traps, 300, seed=5):
        x = frame.data.ravel()[flat]
        state = decide_two_trap(x.astype(np.float64), np.zeros(flat.size), params, table)
        s1, s2 = frame.states[pos], frame.states2
        i_true, j_true = np.where(first, s1, s2), np.where(first, s2, s1)
        true_e = i_true * params.delta1_e + j_true * params.delta2_e
        changed = (state >= 1) & (state <= 8)
        k = np.maximum(state.astype(int) - 1, 0)
        applied_e = (LEVEL_I[k] * params.delta1_e + LEVEL_J[k] * params.delta2_e) * changed
        right = changed & (LEVEL_I[k] == i_true) & (LEVEL_J[k] == j_true)
        harmful += int((changed & (np.abs(applied_e - true_e) > np.abs(true_e))).sum())
        wrong += int((changed & ~right).sum())
        caught += int(right.sum())
        jumps += int(((i_true != 0) | (j_true != 0)).sum())
        total += flat.size
    assert harmful / total < 0.003
    assert wrong / total < 0.015
    assert caught / jumps > 0.93


def test_integer_corrections_saturate(table):
    """uint16 near 0 and 65535, int16 near its limits: clipped to the dtype's range, never wrapped."""
    params = TwoTrapParams.from_arrays(np.zeros(4), np.full(4, 300.0), np.full(4, 100.0), np.ones(4), 1.0, table)
    state = np.array([1, 8, 1, 8], dtype=np.uint8)  # (-1, -1): add 400; (1, 1): subtract 400
    u16 = apply_two_trap(np.array([65500, 10, 65000, 500], np.uint16), state, params)
    assert list(u16) == [65535, 0, 65400, 100]
    i16 = apply_two_trap(np.array([32500, -32500, 0, 0], np.int16), state, params)
    assert list(i16) == [32767, -32768, 400, -400]


def test_offset_map_is_the_mean_correction(table):
    """O = sum_k n_k c_k / n_frames equals the per-pixel mean of the corrections made, and on a bias
    series with every jump caught it is the central level minus the mixture mean."""
    rng = np.random.default_rng(9)
    n, frames = 50, 400
    params = TwoTrapParams.from_arrays(np.zeros(n), rng.uniform(8, 12, n), rng.uniform(3, 5, n), np.ones(n), 1.0,
                                       table)
    counts = np.zeros((n, 8), dtype=np.int64)
    made = np.zeros(n)
    i_state = rng.choice([-1, 0, 1], (frames, n), p=[0.05, 0.85, 0.1])
    j_state = rng.choice([-1, 0, 1], (frames, n), p=[0.1, 0.8, 0.1])
    for t in range(frames):  # a perfect decision: the true level's code
        k = np.array([np.flatnonzero((LEVEL_I == i) & (LEVEL_J == j))[0] + 1 if (i or j) else 0
                      for i, j in zip(i_state[t], j_state[t], strict=True)], dtype=np.uint8)
        counts += level_counts(k)
        made += correction_adu(k, params, integer=True)
    offset = two_trap_offset_map(counts, np.full(n, frames), params)
    np.testing.assert_allclose(offset, made / frames, rtol=0, atol=1e-12)
    raw_mean = (i_state * params.delta1_adu_int + j_state * params.delta2_adu_int).mean(axis=0)
    np.testing.assert_allclose(raw_mean + offset, 0.0, atol=1e-12)


def test_bad_input_names_the_parameter(table):
    ok = np.ones(3)
    with pytest.raises(ValueError, match="delta2_e"):
        TwoTrapParams.from_arrays(ok, ok, -ok, ok, 1.0, table)
    with pytest.raises(ValueError, match="sigma_e"):
        TwoTrapParams.from_arrays(ok, ok, ok, np.ones(2), 1.0, table)
    with pytest.raises(ValueError, match="gain_e_per_adu"):
        TwoTrapParams.from_arrays(ok, ok, ok, ok, 0.0, table)
    params = TwoTrapParams.from_arrays(ok, ok, ok, ok, 1.0, table)
    with pytest.raises(ValueError, match="lam_e"):
        decide_two_trap(ok, np.ones(2), params, table)
    with pytest.raises(ValueError, match="counts"):
        two_trap_offset_map(np.zeros((3, 7)), np.ones(3), params)
    with pytest.raises(ValueError, match="window_adu"):
        temporal_lambda_two_trap(np.ones((10, 2)), params)
    with pytest.raises(ValueError, match="window_adu"):
        temporal_lambda_two_trap(np.ones((1, 3)), params)


def _temporal_lambda_one_pixel(v, mu, g, d1, d2, sigma, log_prior, log_prior_centre):
    """rtn_two_trap.cuh's ``rtn_two_trap_temporal_lambda`` for one pixel, one float64 operation at a time
    (NumPy scalars: IEEE division by 0): every hypothesis, every level, strict > in order."""
    f = np.float64
    offs = [f(0.0)] + [f(i) * f(d1) + f(j) * f(d2) for i, j in zip(LEVEL_I, LEVEL_J, strict=True)]
    lps = [f(log_prior_centre)] + [f(p) for p in log_prior]
    ordered = np.sort(v)
    w = len(v)
    m = ((ordered[(w - 1) // 2] + ordered[w // 2]) * f(0.5) - f(mu)) * f(g)
    s2 = f(sigma) * f(sigma)

    def best_level(r, lam, var):
        res = r - lam
        best, off = f(lps[0]) - f(0.5) * (((res - offs[0]) * (res - offs[0])) / var), offs[0]
        for o, lp in zip(offs[1:], lps[1:], strict=True):
            sc = lp - f(0.5) * (((res - o) * (res - o)) / var)
            if sc > best:
                best, off = sc, o
        return best, off

    def log_roots(x):
        r = x
        for _ in range(6):
            r = np.sqrt(r)
        y = (r - f(1.0)) / (r + f(1.0))
        y2 = y * y
        return f(128.0) * (y * (f(1.0) + y2 * (f(1.0 / 3.0) + y2 * (f(1.0 / 5.0) + y2 * f(1.0 / 7.0)))))

    rs = [(f(x) - f(mu)) * f(g) for x in v]
    lam = top = None
    for h in range(9):
        shifted = m - offs[h]
        lam_h = shifted if shifted > 0.0 else f(0.0)
        var = s2 + lam_h
        total = best_level(rs[0], lam_h, var)[0]
        for r in rs[1:]:
            total = total + best_level(r, lam_h, var)[0]
        score = total - f(0.5 * w) * log_roots(var)
        if h == 0 or score > top:
            lam, top = lam_h, score
    u = [r - best_level(r, lam, s2 + lam)[1] for r in rs]
    mean = u[0]
    for x in u[1:]:
        mean = mean + x
    mean = mean / f(w)
    acc = (u[0] - mean) * (u[0] - mean)
    for x in u[1:]:
        acc = acc + (x - mean) * (x - mean)
    return lam, np.sqrt(acc / f(w))


def test_temporal_lambda_is_the_per_pixel_rule_on_edge_windows(table):
    """Bit for bit the per-pixel rule (every hypothesis and level scored, strict > in order), whatever the
    chunk size, on windows where skipping hypotheses is delicate: a median far below every level (all nine
    lambdas 0: only the centre is scored), D2 = 0 and D1 = D2 (equal lambdas), absent side states (-inf
    priors), sigma 0 with every value at mu (the centre's score 0 / 0 = NaN: nothing beats it) or at a
    level (that level's score is NaN: it never wins), and windows holding NaN or +-inf; plus ordinary
    simulated windows."""
    rng = np.random.default_rng(23)
    n, w, g = 160, 10, 0.5
    sigma = rng.uniform(0.5, 3.0, n)
    d2 = rng.uniform(3.0, 8.0, n) * sigma
    d1 = d2 + rng.uniform(2.0, 8.0, n) * sigma
    d2[:16] = 0.0
    d1[16:32] = d2[16:32]
    fr = rng.uniform(0.02, 0.2, (4, n))
    fr[:, 32:48] = 0.0
    fr[0, 48:64] = 0.0
    sigma[64:80] = 0.0
    mu = rng.uniform(500.0, 600.0, n)
    mu[72:80] = np.rint(mu[72:80])
    d1[72:80] = np.rint(d1[72:80])
    params = TwoTrapParams.from_arrays(mu, d1, d2, sigma, g, table, frac_lo=fr[0], frac_hi=fr[1], frac2_lo=fr[2],
                                       frac2_hi=fr[3])
    states = rng.choice([-1, 0, 1], (2, w, n), p=[0.15, 0.7, 0.15])
    e = rng.poisson(rng.uniform(0.0, 30.0, n), (w, n)) + rng.normal(0, 1, (w, n)) * sigma + states[0] * d1 \
        + states[1] * d2
    v = np.rint(mu + e / g)
    v[:, 64:72] = mu[64:72]  # sigma 0, no noise: NaN centre scores
    v[:, 72:80] = (mu - d1 / g)[72:80]  # sigma 0, every value exactly at -D1: that level's score is NaN
    v[:, 80:88] = (mu - 3 * (d1 + d2) / g)[80:88]  # the median below every level
    v[3, 88:96] = np.nan
    v[5, 96:100] = np.inf
    v[2, 100:104] = -np.inf
    v[:, 104:108] = (mu + d1 / g)[104:108]  # every value at a level
    with np.errstate(all="ignore"):
        expected = np.array([_temporal_lambda_one_pixel(v[:, k], mu[k], g, d1[k], d2[k], sigma[k],
                                                        params.log_prior[k], params.log_prior_centre[k])
                             for k in range(n)])
        for chunk in (1, 37, 1 << 14):
            lam, spread = temporal_lambda_two_trap(v, params, chunk_values=chunk)
            assert np.array_equal(lam.view(np.uint64), expected[:, 0].view(np.uint64)), chunk
            assert np.array_equal(spread, expected[:, 1], equal_nan=True), chunk
    assert np.all(lam[80:88] == 0.0) and np.all(lam[64:72] == 0.0)
    assert np.mean(lam > 0) > 0.3  # hypotheses other than the centre's won too
    with pytest.raises(ValueError, match="chunk_values"):
        temporal_lambda_two_trap(v, params, chunk_values=0)
