"""Hand-worked cases of the jump decision and correction (ALGORITHM.md section 3), kernels/numpy_backend.py.

Most cubes here have mu = 0 adu and g = 1 e-/ADU, so that a pixel value x (adu) is its signal s (electron)
bit for bit, and the decision boundaries can be hit exactly. Reference numbers at sigma = 1 e-,
alpha = 0.003 (from the threshold table): lambda = 0: q_lo = -2.968, q_hi = 2.968; lambda = 5: q_lo = -1.132,
q_hi = 13.307; lambda = 10: q_lo = 1.414, q_hi = 20.971.
"""

import numpy as np
import pytest

from rtnstream.kernels.engine import EngineSettings, RTNEngine
from rtnstream.kernels.numpy_backend import (
    STATE_HIGH,
    STATE_LOW,
    STATE_NONE,
    STATE_OUT_OF_TABLE,
    FrameCounts,
    apply_corrections,
    decide,
)
from rtnstream.kernels.pixels import PixelParams

D = 8.0  # electron, the jump of every pixel unless told


@pytest.fixture(scope="module")
def decider(table, make_cube):
    """``run(x_adu, lam_e, **cube parameters) -> states`` with one RTN pixel per value (1 x n cube)."""

    def run(x_adu, lam_e, mu_adu=0.0, delta_e=D, sigma_e=1.0, gain_e_per_adu=1.0):
        x = np.atleast_1d(np.asarray(x_adu, dtype=np.float64))
        lam = np.broadcast_to(np.asarray(lam_e, dtype=np.float64), x.shape).copy()
        full = np.ones((1, x.size))
        cube = make_cube(mu_adu * full, delta_e * full, sigma_e * full, gain_e_per_adu=gain_e_per_adu)
        params = PixelParams.from_cube(cube, table)
        x_in, lam_in = x.copy(), lam.copy()
        state = decide(x, lam, params, table)
        np.testing.assert_array_equal(x, x_in)  # inputs never modified
        np.testing.assert_array_equal(lam, lam_in)
        return state

    return run


def test_reference_numbers(table):
    q_lo, q_hi = table.quantiles([0.0, 5.0, 10.0], 1.0)
    np.testing.assert_allclose(q_lo, [-2.968, -1.132, 1.414], atol=1e-3)
    np.testing.assert_allclose(q_hi, [2.968, 13.307, 20.971], atol=1e-3)


def test_each_branch_at_lambda_zero(decider):
    # low window (q_lo - D, min(q_lo, q_hi - D)) = (-10.97, -5.03); high window (5.03, 10.97)
    x = [-8.0, 8.0, 0.0, -4.0, 4.0, -12.0, 12.0, -5.5, 5.5, -10.5, 10.5]
    expected = [STATE_LOW, STATE_HIGH, STATE_NONE, STATE_NONE, STATE_NONE, STATE_NONE, STATE_NONE,
                STATE_LOW, STATE_HIGH, STATE_LOW, STATE_HIGH]
    np.testing.assert_array_equal(decider(x, 0.0), expected)


def test_signal_is_relative_to_mu_and_in_electrons(decider):
    # mu = 500 adu, g = 0.5 e-/ADU: x = 484 adu is s = -8 e- (low), x = 516 is +8 e- (high), 500 central
    state = decider([484.0, 516.0, 500.0, 508.0], 0.0, mu_adu=500.0, gain_e_per_adu=0.5)
    np.testing.assert_array_equal(state, [STATE_LOW, STATE_HIGH, STATE_NONE, STATE_NONE])


@pytest.mark.parametrize(("lam", "sigma"), [(0.0, 1.0), (3.0, 1.2), (0.4, 0.3), (40.0, 2.5), (7.0, 15.0)])
def test_every_inequality_is_strict(decider, table, lam, sigma):
    q_lo, q_hi = (float(q) for q in table.quantiles(lam, sigma))
    d = max(lam - q_lo, q_hi - lam) + 4.0 * sigma  # both sides resolvable, windows non-empty
    bounds = {
        "low_outer": (q_lo - d, np.inf, STATE_LOW),
        "low_inner": (min(q_lo, q_hi - d), -np.inf, STATE_LOW),
        "high_inner": (max(q_hi, q_lo + d), np.inf, STATE_HIGH),
        "high_outer": (q_hi + d, -np.inf, STATE_HIGH),
    }
    for name, (edge, inward, state_inside) in bounds.items():
        inside = np.nextafter(edge, inward)
        got = decider([edge, inside], lam, delta_e=d, sigma_e=sigma)
        np.testing.assert_array_equal(got, [STATE_NONE, state_inside], err_msg=name)


def test_resolvability_of_negative_jumps_is_strict(decider, table):
    lam = 5.0
    q_lo, _ = (float(q) for q in table.quantiles(lam, 1.0))
    d_edge = lam - q_lo  # 6.13 e-: lambda - q_lo < D fails by equality
    for d, expected in ((d_edge, STATE_NONE), (np.nextafter(d_edge, np.inf), STATE_LOW)):
        x = q_lo - d / 2  # inside the low window (q_lo - D, q_lo)
        assert decider(x, lam, delta_e=d)[0] == expected


def test_resolvability_of_positive_jumps_is_strict(decider, table):
    lam = 5.0
    _, q_hi = (float(q) for q in table.quantiles(lam, 1.0))
    d_edge = q_hi - lam  # 8.31 e-
    for d, expected in ((d_edge, STATE_NONE), (np.nextafter(d_edge, np.inf), STATE_HIGH)):
        x = q_hi + d / 2  # inside the high window (q_hi, q_hi + D)
        assert decider(x, lam, delta_e=d)[0] == expected


def test_negative_jumps_stay_resolvable_beyond_lambda_max(decider, table):
    # D = 8, sigma = 1: lambda_max = 4.53 e-. At lambda = 5, q_hi - lambda = 8.31 >= D (no high correction)
    # while lambda - q_lo = 6.13 < D (low still corrected): the right skew.
    lam_max = float(table.lambda_max(np.array([D]), np.array([1.0]))[0])
    assert 4.5 < lam_max < 4.55
    np.testing.assert_array_equal(decider([-3.0, 15.0], 5.0), [STATE_LOW, STATE_NONE])
    # around lambda_max the high correction switches off
    x_high = 13.5  # in the high window at both lambdas below
    np.testing.assert_array_equal(decider([x_high, x_high], [lam_max - 1e-6, lam_max + 1e-6]),
                                  [STATE_HIGH, STATE_NONE])


def test_unresolvable_negative_jump(decider):
    # lambda = 10, sigma = 1: lambda - q_lo = 8.59 >= D = 8; s = q_lo - 4 sits in the low window
    np.testing.assert_array_equal(decider([1.414 - 4.0, 1.414 - 6.0], 10.0), [STATE_NONE, STATE_NONE])
    # with D = 9 it is resolvable again
    np.testing.assert_array_equal(decider([1.414 - 4.0], 10.0, delta_e=9.0), [STATE_LOW])


def test_out_of_table(decider):
    # lambda above the table's top (100 e-): counted out of table whatever the signal
    state = decider([-8.0 + 100.0, 100.0, -8.0 + 100.0], [100.0 + 1e-9, 150.0, 100.0], delta_e=40.0,
                    sigma_e=1.0)
    np.testing.assert_array_equal(state, [STATE_OUT_OF_TABLE, STATE_OUT_OF_TABLE, STATE_NONE])
    # lambda = 100 is on the table: a clear negative jump of 40 e- there is corrected
    assert decider([100.0 - 40.0], 100.0, delta_e=40.0)[0] == STATE_LOW
    # sigma outside [0.2, 20] e-: never corrected, counted
    for sigma in (0.15, 25.0):
        assert decider([-8.0 * sigma], 0.0, delta_e=8.0 * sigma, sigma_e=sigma)[0] == STATE_OUT_OF_TABLE
    for sigma in (0.2, 20.0):
        assert decider([-8.0 * sigma], 0.0, delta_e=8.0 * sigma, sigma_e=sigma)[0] == STATE_LOW


def test_frame_counts_from_states():
    state = np.array([0, 1, 1, 2, 3, 4, 4, 4, 0], dtype=np.uint8)
    assert FrameCounts.from_states(state) == FrameCounts(low=2, high=1, vetoed=1, out_of_table=3)


# ---- corrections: sizes, saturation, dtypes -----------------------------------------------------

INTEGER_DTYPES = [np.uint8, np.uint16, np.int16, np.uint32, np.int32]


@pytest.mark.parametrize("dtype", INTEGER_DTYPES)
def test_integer_corrections_saturate_never_wrap(table, make_cube, dtype):
    info = np.iinfo(dtype)
    mid = (int(info.min) + int(info.max)) // 2
    # pixel values and their central levels: low jumps near the top, high jumps near the bottom, and two
    # ordinary ones in the middle of the range
    x = np.array([[info.max - 3, info.min + 3, mid, mid, info.max]], dtype=dtype)
    mu = np.array([[info.max - 3 + D, info.min + 3 - D, mid + D, mid - D, info.max + D]])
    cube = make_cube(mu, D, 1.0)
    params = PixelParams.from_cube(cube, table)
    x_flat = x.ravel().copy()
    state = decide(x_flat.astype(np.float64), np.zeros(5), params, table)
    np.testing.assert_array_equal(state, [STATE_LOW, STATE_HIGH, STATE_LOW, STATE_HIGH, STATE_LOW])
    frame = x.copy()
    out = apply_corrections(frame, x_flat, state, params)
    assert out.dtype == dtype and out is not frame
    expected = [info.max, info.min, mid + 8, mid - 8, info.max]
    np.testing.assert_array_equal(out.ravel().astype(np.int64), expected)
    np.testing.assert_array_equal(frame, x)  # input untouched


@pytest.mark.parametrize("dtype", [np.uint16, np.int16])
def test_engine_saturates_at_the_dtype_limits(make_cube, dtype):
    # Spatial reference on a 3 x 3 frame whose mean bias is the frame itself: every neighbour reads 0 e-,
    # so lambda = 0. Pixel (0, 0) sits 8 adu below a central level above the dtype's top (a negative jump),
    # pixel (1, 1) 8 adu above a central level below its bottom (a positive jump). (A temporal reference
    # cannot reach the bottom: a central level below the range is clipped in every frame of the window.)
    info = np.iinfo(dtype)
    frame = np.full((3, 3), 100, dtype=dtype)
    frame[0, 0], frame[1, 1] = info.max - 2, info.min + 2
    mu = frame.astype(np.float64)
    mu[0, 0], mu[1, 1] = info.max - 2 + D, info.min + 2 - D
    cube = make_cube(mu, D, 1.0, meanbias_adu=frame.astype(np.float64))
    engine = RTNEngine(cube, EngineSettings(reference="spatial", spatial_size=3))
    copy = frame.copy()
    (out,) = engine.push(frame)
    expected = copy.copy()
    expected[0, 0], expected[1, 1] = info.max, info.min
    assert out.data.dtype == dtype
    np.testing.assert_array_equal(out.data, expected)
    assert out.counts == FrameCounts(low=1, high=1)
    np.testing.assert_array_equal(frame, copy)


def test_integer_correction_is_rint_of_delta_over_gain(table, make_cube):
    g = 0.3
    d = 8.0  # 26.67 adu -> 27
    cube = make_cube(np.zeros((1, 2)), d, 1.0, gain_e_per_adu=g)
    params = PixelParams.from_cube(cube, table)
    np.testing.assert_array_equal(params.delta_adu_int, [27, 27])
    x = np.array([[1000 - 27, 1000 + 27]], dtype=np.int32)
    mu_cube = make_cube(np.array([[1000.0, 1000.0]]), d, 1.0, gain_e_per_adu=g)
    params = PixelParams.from_cube(mu_cube, table)
    state = decide(x.ravel().astype(np.float64), np.zeros(2), params, table)
    np.testing.assert_array_equal(state, [STATE_LOW, STATE_HIGH])
    out = apply_corrections(x, x.ravel(), state, params)
    np.testing.assert_array_equal(out, [[1000, 1000]])


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_float_frames_are_corrected_by_delta_over_gain(table, make_cube, dtype):
    g = 0.3
    cube = make_cube(np.array([[0.0, 0.0, 0.0]]), D, 1.0, gain_e_per_adu=g)
    params = PixelParams.from_cube(cube, table)
    d_adu = D / g  # 26.666... adu, not rounded
    x = np.array([[-d_adu, d_adu, 0.25]], dtype=dtype)
    x_flat = x.ravel().copy()
    state = decide(x_flat.astype(np.float64), np.zeros(3), params, table)
    np.testing.assert_array_equal(state, [STATE_LOW, STATE_HIGH, STATE_NONE])
    out = apply_corrections(x, x_flat, state, params)
    assert out.dtype == dtype
    expected = np.array([np.float64(x_flat[0]) + d_adu, np.float64(x_flat[1]) - d_adu, x_flat[2]]).astype(dtype)
    np.testing.assert_array_equal(out.ravel(), expected)
    if dtype == np.float64:
        assert out[0, 0] == -d_adu + d_adu and out[0, 1] == d_adu - d_adu


# ---- the variability veto (temporal references) --------------------------------------------------


def _run_series(cube, frames, **settings):
    engine = RTNEngine(cube, EngineSettings(**settings))
    out = [o for f in frames for o in engine.push(f)] + engine.finish()
    return engine, out


def test_variability_veto_hand_worked(make_cube):
    # W = 4. Frame 2's window is frames 0, 1, 3, 4 with values [0, 0, 10, 10] adu = e- (g = 1):
    # median 5 -> lambda = 5 e-; spread (std, ddof 0) = 5 e-. Pixel A has RN = 2 e-: 1.5 sqrt(5 + 4) = 4.5 < 5
    # -> vetoed. Pixel B has RN = 3 e-: 1.5 sqrt(5 + 9) = 5.61 > 5 -> decided: s = -3 e- lies in the low
    # window (q_lo - D, q_lo) = (-9.13, -1.13) at lambda = 5 and is corrected to -3 + 8 = 5.
    cube = make_cube(np.zeros((1, 2)), D, 1.0, readnoise_e=np.array([[2.0, 3.0]]))
    values = [0.0, 0.0, -3.0, 10.0, 10.0]
    frames = [np.full((1, 2), v) for v in values]
    engine, out = _run_series(cube, frames, window=4)
    assert out[2].counts.vetoed >= 1
    np.testing.assert_array_equal(out[2].data, [[-3.0, 5.0]])
    assert out[2].counts == FrameCounts(low=1, vetoed=1)
    assert engine.pixel_counters()["n_veto"][0, 0] >= 1
    # with k_var = 2 the threshold of pixel A is 2 * 3 = 6 > 5: both are corrected
    _, out = _run_series(cube, frames, window=4, k_var=2.0)
    np.testing.assert_array_equal(out[2].data, [[5.0, 5.0]])
    assert out[2].counts == FrameCounts(low=2)


def test_out_of_table_is_counted_by_the_engine(make_cube):
    # pixel 0 ordinary, pixel 1 sigma below the table, pixel 2 above it; bright frames: lambda = 200 e-
    cube = make_cube(np.zeros((1, 3)), np.array([[8.0, 2.0, 200.0]]), np.array([[1.0, 0.1, 25.0]]),
                     readnoise_e=40.0)
    dark = [np.array([[0.0, 0.0, 0.0]])] * 3 + [np.array([[-8.0, -2.0, -200.0]])] + [np.zeros((1, 3))] * 3
    _, out = _run_series(cube, dark, window=4)
    assert out[3].counts == FrameCounts(low=1, out_of_table=2)
    np.testing.assert_array_equal(out[3].data, [[0.0, -2.0, -200.0]])
    bright = [np.full((1, 3), 200.0) for _ in range(7)]
    bright[3] = np.array([[192.0, 200.0, 200.0]])
    _, out = _run_series(cube, bright, window=4)
    assert all(o.counts == FrameCounts(out_of_table=3) for o in out)
    np.testing.assert_array_equal(out[3].data, bright[3])
