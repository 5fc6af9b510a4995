"""Tests of kernels/engine.py: the correction engine on simulated ground truth, its series bookkeeping, errors.

Figures measured on the fixtures below (96 x 96 sensor, 461 RTN pixels, 100 bias frames, seed 4), printed
by ``pytest tests/kernels/test_engine.py -s``: see the ``report`` lines.
"""

import numpy as np
import pytest

from rtnstream.kernels.engine import (
    SUPPORTED_DTYPES,
    CorrectedFrame,
    EngineSettings,
    RTNEngine,
    window_start,
)
from rtnstream.kernels.exceptions import BackendUnavailableError, FrameError, SeriesError
from rtnstream.kernels.numpy_backend import FrameCounts, NumpyBackend
from rtnstream.kernels.simulate import Scene, SensorModel

SHAPE = (96, 96)
N_BIAS = 100
REFERENCES = ("temporal", "causal", "spatial")


def run_series(engine: RTNEngine, frames, tags=None) -> list[CorrectedFrame]:
    """Push every frame (with its tag) and finish; the frames in the order they came out."""
    engine.start_series()
    tags = range(len(frames)) if tags is None else tags
    out = [o for f, tag in zip(frames, tags, strict=True) for o in engine.push(f, tag=tag)]
    return out + engine.finish()


@pytest.fixture(scope="module")
def sensor():
    return SensorModel.random(SHAPE, rtn_fraction=0.05, seed=4)


@pytest.fixture(scope="module")
def cube(sensor, table):
    return sensor.true_cube(table=table)


@pytest.fixture(scope="module")
def bias(sensor):
    """(data (N, ny, nx) uint16, states (N, n_rtn) int8, clean (N, ny, nx) float64 adu)."""
    return sensor.stack(N_BIAS, seed=14)


@pytest.fixture(scope="module")
def bias_runs(cube, bias, table):
    """Each reference run once on the bias series: {reference: (engine, corrected (N, ny, nx))}."""
    data = bias[0]
    runs = {}
    for ref in REFERENCES:
        engine = RTNEngine(cube, EngineSettings(reference=ref), table=table)
        out = run_series(engine, list(data))
        runs[ref] = (engine, np.stack([o.data for o in out]))
    return runs


def rtn_values(sensor, frames):
    """(N, n_rtn) values of the RTN pixels of a (N, ny, nx) stack."""
    return frames.reshape(frames.shape[0], -1)[:, sensor.rtn_index]


def decisions(sensor, data, corrected):
    """Sign of each RTN pixel-frame's change: +1 raised (low state corrected), -1 lowered, 0 unchanged."""
    change = rtn_values(sensor, corrected).astype(np.int64) - rtn_values(sensor, data).astype(np.int64)
    return np.sign(change)


# ---- accuracy on ground truth --------------------------------------------------------------------


@pytest.mark.parametrize("ref", REFERENCES)
def test_jumps_are_corrected_with_few_mistakes(sensor, bias, bias_runs, ref):
    data, states, _ = bias
    _, corrected = bias_runs[ref]
    sign = decisions(sensor, data, corrected)
    wanted = -states  # a low state (-1) needs raising (+1)
    sigma = sensor.sigma_e.ravel()[sensor.rtn_index]
    large = (sensor.delta_e >= 4 * sigma)[None, :]
    jumps = (states != 0) & large
    recall = np.mean(sign[jumps] == wanted[jumps])
    wrong = np.mean((sign != 0) & (sign != wanted))
    print(f"report {ref}: {recall:.1%} of {jumps.sum()} jumps with Delta >= 4 sigma corrected; "
          f"{wrong:.3%} of {sign.size} RTN pixel-frames changed wrongly")
    assert jumps.sum() > 3000
    assert recall >= 0.90
    assert wrong < 0.003
    # every change is by exactly D_adu
    d_adu = np.rint(sensor.delta_e / sensor.gain_e_per_adu).astype(np.int64)
    change = rtn_values(sensor, corrected).astype(np.int64) - rtn_values(sensor, data).astype(np.int64)
    np.testing.assert_array_equal(np.abs(change), np.where(sign != 0, d_adu, 0))


# Floor: a perfect correction leaves each pixel's RTN-free noise plus ADU rounding,
# sqrt(sigma^2 + g^2/12) (g/sqrt(12) = 0.089 e- here). What remains above it is the jumps that were missed
# (13 % of all jumps in the temporal modes: small Delta, and the noise of the window median pushing lambda
# above 0 at zero flux; the spatial median has 24 values and misses fewer). Measured ratios: temporal 1.15,
# causal 1.15, spatial 1.02, against 2.6 before correction.
RN_RATIO_MAX = {"temporal": 1.20, "causal": 1.20, "spatial": 1.06}


@pytest.mark.parametrize("ref", REFERENCES)
def test_read_noise_of_rtn_pixels_drops_to_their_sigma(sensor, bias, bias_runs, ref):
    data, _, clean = bias
    _, corrected = bias_runs[ref]
    g = sensor.gain_e_per_adu
    sigma = sensor.sigma_e.ravel()[sensor.rtn_index]
    floor = np.sqrt(np.mean(sigma**2) + g**2 / 12)
    rn_raw = np.sqrt(np.mean(rtn_values(sensor, data).astype(np.float64).var(axis=0))) * g
    rn_corr = np.sqrt(np.mean(rtn_values(sensor, corrected).astype(np.float64).var(axis=0))) * g
    # and the distance to the RTN-free truth
    dist_raw = np.sqrt(np.mean((rtn_values(sensor, data) - rtn_values(sensor, clean)) ** 2)) * g
    dist_corr = np.sqrt(np.mean((rtn_values(sensor, corrected) - rtn_values(sensor, clean)) ** 2)) * g
    print(f"report {ref}: RMS read noise of RTN pixels {rn_raw:.3f} -> {rn_corr:.3f} e- (floor {floor:.3f}); "
          f"RMS distance to the RTN-free frame {dist_raw:.3f} -> {dist_corr:.3f} e-")
    assert rn_raw > 2.5 * floor
    assert floor * 0.98 < rn_corr < floor * RN_RATIO_MAX[ref]
    assert dist_corr < 0.35 * dist_raw


@pytest.mark.parametrize("ref", REFERENCES)
def test_non_rtn_pixels_are_never_changed(cube, bias, bias_runs, ref):
    data, _, _ = bias
    _, corrected = bias_runs[ref]
    assert corrected.dtype == data.dtype
    np.testing.assert_array_equal(corrected[:, ~cube.rtn_mask], data[:, ~cube.rtn_mask])


@pytest.mark.parametrize("ref", ("temporal", "causal"))
def test_series_edges_are_corrected_like_the_middle(sensor, bias, bias_runs, ref):
    data, states, _ = bias
    _, corrected = bias_runs[ref]
    w = EngineSettings().window
    sign = decisions(sensor, data, corrected)
    caught = sign == -states
    jumps = states != 0
    first = slice(0, w // 2) if ref == "temporal" else slice(0, w)
    last = slice(N_BIAS - w // 2, N_BIAS)
    middle = slice(w, N_BIAS - w)
    rate = {name: np.mean(caught[s][jumps[s]]) for name, s in (("first", first), ("last", last),
                                                              ("middle", middle))}
    print(f"report {ref}: share of jumps corrected, first / middle / last frames: "
          f"{rate['first']:.3f} / {rate['middle']:.3f} / {rate['last']:.3f}")
    assert abs(rate["first"] - rate["middle"]) < 0.05
    assert abs(rate["last"] - rate["middle"]) < 0.05


@pytest.mark.parametrize("ref", REFERENCES)
def test_bias_offset_map_on_bias_frames(sensor, cube, bias, bias_runs, ref):
    _, states, _ = bias
    engine, _ = bias_runs[ref]
    offset = engine.bias_offset_map()
    assert offset.shape == SHAPE and offset.dtype == np.float64
    assert np.all(offset[~cube.rtn_mask] == 0.0)
    o = offset.ravel()[sensor.rtn_index]
    d_adu = np.rint(sensor.delta_e / sensor.gain_e_per_adu)
    large = sensor.delta_e >= 4 * sensor.sigma_e.ravel()[sensor.rtn_index]
    # against this series' true states (no sampling noise): only missed or false corrections differ
    o_series = d_adu * (np.sum(states == -1, axis=0) - np.sum(states == 1, axis=0)) / N_BIAS
    rms_series = np.sqrt(np.mean(o_series[large] ** 2))
    assert np.sqrt(np.mean((o - o_series)[large] ** 2)) < 0.2 * rms_series
    # against the population value D_adu (b_lo - b_hi), in units of its binomial standard error
    b_lo, b_hi = sensor.frac_lo, sensor.frac_hi
    se = d_adu * np.sqrt((b_lo + b_hi - (b_lo - b_hi) ** 2) / N_BIAS)
    z = ((o - d_adu * (b_lo - b_hi)) / se)[large]
    assert abs(z.mean()) < 0.3 and 0.8 < z.std() < 1.25
    # it turns the mixture-mean bias into the central level mu
    meanbias = cube.meanbias_adu.ravel()[sensor.rtn_index]
    mu = cube.mu_adu.ravel()[sensor.rtn_index]
    before = np.sqrt(np.mean((meanbias - mu)[large] ** 2))
    after = np.sqrt(np.mean((meanbias + o - mu)[large] ** 2))
    assert after < 0.65 * before


def test_bias_offset_map_counts_the_corrections_made(sensor, bias, bias_runs):
    data, _, _ = bias
    engine, corrected = bias_runs["temporal"]
    sign = decisions(sensor, data, corrected)
    counters = engine.pixel_counters()
    idx = np.unravel_index(sensor.rtn_index, SHAPE)
    np.testing.assert_array_equal(counters["n_lo"][idx], np.sum(sign == 1, axis=0))
    np.testing.assert_array_equal(counters["n_hi"][idx], np.sum(sign == -1, axis=0))
    np.testing.assert_array_equal(counters["n_frames"][idx], N_BIAS)
    d_adu = np.rint(sensor.delta_e / sensor.gain_e_per_adu)
    expected = d_adu * (np.sum(sign == 1, axis=0) - np.sum(sign == -1, axis=0)) / N_BIAS
    np.testing.assert_allclose(engine.bias_offset_map()[idx], expected, rtol=1e-15)


def test_bias_offset_map_of_float_frames_uses_delta_over_gain(cube, bias, table, sensor):
    engine = RTNEngine(cube, EngineSettings(), table=table)
    assert np.all(engine.bias_offset_map() == 0.0)  # before any frame
    data = bias[0][:30].astype(np.float32)
    corrected = np.stack([o.data for o in run_series(engine, list(data))])
    change = rtn_values(sensor, corrected).astype(np.float64) - rtn_values(sensor, data)
    d_adu = sensor.delta_e / sensor.gain_e_per_adu
    n_lo = np.sum(change > 0, axis=0)
    n_hi = np.sum(change < 0, axis=0)
    np.testing.assert_allclose(engine.bias_offset_map().ravel()[sensor.rtn_index],
                               d_adu * (n_lo - n_hi) / 30, rtol=1e-12)
    # each changed value is x -+ Delta/g, computed in float64 and stored as float32
    x = rtn_values(sensor, data).astype(np.float64)
    expected = (x + np.sign(change) * d_adu).astype(np.float32)
    np.testing.assert_array_equal(rtn_values(sensor, corrected), expected)


@pytest.fixture(scope="module")
def star_field(table):
    """Stars on a faint sky (3 e-): positive jumps often unresolvable, negative ones caught, so the
    corrections shift RTN pixels' means inside apertures (radius 3.5 px around each star)."""
    sensor = SensorModel.random(SHAPE, rtn_fraction=0.05, seed=3)
    scene = Scene.make("stars", SHAPE, sky_e=3.0, n_stars=25, star_flux_e=(100.0, 3000.0), seed=3)
    data, _, clean = sensor.stack(80, scene, seed=13)
    yy, xx = np.mgrid[: SHAPE[0], : SHAPE[1]]
    apertures = np.zeros(SHAPE, bool)
    for y, x in zip(scene.star_y, scene.star_x, strict=True):
        apertures |= (yy - y) ** 2 + (xx - x) ** 2 <= 3.5**2
    return sensor, sensor.true_cube(table=table), data, clean, apertures


@pytest.mark.parametrize("ref", REFERENCES)
def test_offset_map_keeps_aperture_photometry_unbiased(star_field, table, ref):
    sensor, cube, data, clean, ap = star_field
    n = data.shape[0]
    engine = RTNEngine(cube, EngineSettings(reference=ref), table=table)
    corrected = np.stack([o.data for o in run_series(engine, list(data))]).astype(np.float64)
    offset = engine.bias_offset_map()
    truth = (clean - sensor.bias_adu)[:, ap].sum(axis=1)  # electrons / g without RTN, per frame
    with_offset = (corrected - cube.meanbias_adu - offset)[:, ap].sum(axis=1) - truth
    without = (corrected - cube.meanbias_adu)[:, ap].sum(axis=1) - truth
    se = with_offset.std(ddof=1) / np.sqrt(n)
    print(f"report {ref}: aperture flux error with offset {with_offset.mean():+.1f} +- {se:.1f} adu, "
          f"without {without.mean():+.1f} +- {se:.1f} adu ({cube.rtn_mask[ap].sum()} RTN pixels in apertures)")
    assert abs(with_offset.mean()) < 3 * se
    # not applying the offset biases the fluxes by the offset summed over the apertures, measurably here
    assert without.mean() == pytest.approx(with_offset.mean() + offset[ap].sum(), abs=1e-6)
    assert abs(without.mean()) > 3 * se


# ---- the oracle: an independent, direct computation of every frame -------------------------------


def oracle_temporal(cube, table, frames, window, reference, k_var=1.5):
    """Corrected frames by ALGORITHM.md sections 2-3 written out directly (per frame, whole window)."""
    n = frames.shape[0]
    mask = cube.rtn_mask
    mu, g = cube.mu_adu[mask], cube.gain_e_per_adu
    delta, sigma = cube.delta_e[mask], cube.sigma_e[mask]
    d_adu = np.rint(delta / g)
    rn2 = cube.readnoise_e[mask] ** 2
    info = np.iinfo(frames.dtype)
    out = frames.copy()
    for t in range(n):
        back = window if reference == "causal" else window // 2
        start = min(max(t - back, 0), n - 1 - window)
        others = [k for k in range(start, start + window + 1) if k != t]
        vals = frames[others][:, mask].astype(np.float64)
        lam = np.maximum((np.median(vals, axis=0) - mu) * g, 0.0)
        veto = vals.std(axis=0) * g > k_var * np.sqrt(lam + rn2)
        q_lo, q_hi = table.quantiles(lam, sigma)
        s = (frames[t][mask].astype(np.float64) - mu) * g
        with np.errstate(invalid="ignore"):  # NaN quantiles (off the table) compare False: no correction
            low = (q_lo - delta < s) & (s < np.minimum(q_lo, q_hi - delta)) & (lam - q_lo < delta) & ~veto
            high = (np.maximum(q_hi, q_lo + delta) < s) & (s < q_hi + delta) & (q_hi - lam < delta) & ~veto
        new = frames[t][mask].astype(np.int64) + np.where(low, d_adu, 0) - np.where(high, d_adu, 0)
        out[t][mask] = np.clip(new, info.min, info.max)
    return out


def oracle_spatial(cube, table, frame, size):
    """Spatial reference by explicit loops over each RTN pixel's neighbourhood."""
    ny, nx = frame.shape
    g = cube.gain_e_per_adu
    out = frame.copy()
    h = size // 2
    for y, x in np.argwhere(cube.rtn_mask):
        nb = [frame[yy, xx] - cube.meanbias_adu[yy, xx]
              for yy in range(max(0, y - h), min(ny, y + h + 1))
              for xx in range(max(0, x - h), min(nx, x + h + 1)) if (yy, xx) != (y, x)]
        lam = max(float(np.median(nb)) * g, 0.0)
        q_lo, q_hi = (float(q) for q in table.quantiles(lam, cube.sigma_e[y, x]))
        s = (float(frame[y, x]) - cube.mu_adu[y, x]) * g
        d = cube.delta_e[y, x]
        d_adu = int(np.rint(d / g))
        if q_lo - d < s < min(q_lo, q_hi - d) and lam - q_lo < d:
            out[y, x] = frame[y, x] + d_adu
        elif max(q_hi, q_lo + d) < s < q_hi + d and q_hi - lam < d:
            out[y, x] = frame[y, x] - d_adu
    return out


@pytest.fixture(scope="module")
def small():
    """A 40 x 40 sensor (10 % RTN, so border pixels have RTN too) and 37 bias frames with a little sky."""
    sensor = SensorModel.random((40, 40), rtn_fraction=0.1, seed=9)
    data, _, _ = sensor.stack(37, Scene.make("flat", (40, 40), sky_e=0.5), seed=19)
    return sensor, data


@pytest.mark.parametrize("reference", ("temporal", "causal"))
@pytest.mark.parametrize("window", (4, 10))
def test_engine_matches_a_direct_computation(small, table, reference, window):
    sensor, data = small
    cube = sensor.true_cube(table=table)
    engine = RTNEngine(cube, EngineSettings(reference=reference, window=window), table=table)
    got = np.stack([o.data for o in run_series(engine, list(data))])
    expected = oracle_temporal(cube, table, data, window, reference)
    changed = int(np.count_nonzero(got != data))
    assert changed > 50  # the comparison covers many corrections
    np.testing.assert_array_equal(got, expected)


@pytest.mark.parametrize("size", (3, 5))
def test_spatial_reference_matches_a_direct_computation(small, table, size):
    sensor, data = small
    cube = sensor.true_cube(table=table)
    assert cube.rtn_mask[0].any() and cube.rtn_mask[:, -1].any()  # border pixels are covered
    engine = RTNEngine(cube, EngineSettings(reference="spatial", spatial_size=size), table=table)
    got = [o.data for o in run_series(engine, list(data[:6]))]
    for frame, out in zip(data[:6], got, strict=True):
        np.testing.assert_array_equal(out, oracle_spatial(cube, table, frame, size))


@pytest.mark.parametrize("ref", REFERENCES)
def test_result_does_not_depend_on_blocks_or_threads(small, table, ref):
    # the NumPy backend splits the RTN pixels into blocks spread over threads: any split gives the same bits
    sensor, data = small
    cube = sensor.true_cube(table=table)
    settings = EngineSettings(reference=ref, window=6)
    whole = RTNEngine(cube, settings, table=table)
    split = RTNEngine(cube, settings, table=table)
    b = whole.backend
    split.backend = NumpyBackend(split.params, table, settings.k_var, settings.spatial_size, b.n_slots,
                                 threads=3, block=17)
    frames = list(data[:15])
    for a, c in zip(run_series(whole, frames), run_series(split, frames), strict=True):
        np.testing.assert_array_equal(a.data, c.data)
        assert a.counts == c.counts
    for name, counts in whole.pixel_counters().items():
        np.testing.assert_array_equal(split.pixel_counters()[name], counts)


# ---- series bookkeeping --------------------------------------------------------------------------


@pytest.mark.parametrize("ref", REFERENCES)
def test_every_frame_comes_out_once_in_order_with_its_tag(small, table, ref):
    sensor, data = small
    cube = sensor.true_cube(table=table)
    engine = RTNEngine(cube, EngineSettings(reference=ref, window=6), table=table)
    frames = list(data)
    copies = [f.copy() for f in frames]
    tags = [f"frame-{k}" for k in range(len(frames))]
    out = run_series(engine, frames, tags)
    assert [o.index for o in out] == list(range(len(frames)))
    assert [o.tag for o in out] == tags
    for o, f, c in zip(out, frames, copies, strict=True):
        assert o.corrected and o.data is not f
        np.testing.assert_array_equal(o.data[~cube.rtn_mask], c[~cube.rtn_mask])  # its own frame
        np.testing.assert_array_equal(f, c)  # inputs never modified
    assert engine.finish() == []


@pytest.mark.parametrize("ref", REFERENCES)
def test_frames_pushed_uncorrected_keep_their_place_and_serve_their_neighbours(small, table, ref):
    """``push(correct=False)`` (the service's passthrough): the frame comes out unchanged, in order, without
    counts; every other frame is exactly what correcting the whole series gives."""
    sensor, data = small
    cube = sensor.true_cube(table=table)
    settings = EngineSettings(reference=ref, window=6)
    whole = run_series(RTNEngine(cube, settings, table=table), list(data), None)
    engine = RTNEngine(cube, settings, table=table)
    engine.start_series()
    skip = set(range(2, len(data), 3))
    out = [o for k, f in enumerate(data) for o in engine.push(f, tag=k, correct=k not in skip)] + engine.finish()
    assert [o.index for o in out] == [o.tag for o in out] == list(range(len(data)))
    for o, w in zip(out, whole, strict=True):
        if o.index in skip:
            assert not o.corrected and o.counts == FrameCounts()
            np.testing.assert_array_equal(o.data, data[o.index])
        else:
            assert o.corrected and o.counts == w.counts
            np.testing.assert_array_equal(o.data, w.data)
    assert engine.pixel_counters()["n_frames"].max() == len(data) - len(skip)  # bias offsets: corrected only


@pytest.mark.parametrize(("ref", "window"), [("temporal", 4), ("temporal", 10), ("causal", 6), ("spatial", 4)])
def test_output_latency(small, table, ref, window):
    sensor, data = small
    engine = RTNEngine(sensor.true_cube(table=table), EngineSettings(reference=ref, window=window), table=table)
    engine.start_series()
    emitted = 0
    for k, frame in enumerate(data[:25]):
        emitted += len(engine.push(frame))
        if ref == "spatial":
            expected = k + 1
        elif k < window:
            expected = 0
        elif ref == "temporal":
            expected = k - window // 2 + 1  # frame t leaves when frame t + W/2 arrives
        else:
            expected = k + 1  # causal: at once after the first W
        assert emitted == expected, f"after frame {k}"
    assert emitted + len(engine.finish()) == 25


@pytest.mark.parametrize("ref", ("temporal", "causal"))
def test_short_series_comes_out_unchanged(small, table, ref):
    sensor, data = small
    engine = RTNEngine(sensor.true_cube(table=table), EngineSettings(reference=ref, window=6), table=table)
    engine.start_series()
    frames = list(data[:6])
    assert all(engine.push(f, tag=k) == [] for k, f in enumerate(frames))
    out = engine.finish()
    assert [o.index for o in out] == list(range(6)) and [o.tag for o in out] == list(range(6))
    for o, f in zip(out, frames, strict=True):
        assert o.corrected is False and o.counts == FrameCounts() and o.data is not f
        np.testing.assert_array_equal(o.data, f)
    # one frame more is enough
    out = run_series(engine, list(data[:7]))
    assert len(out) == 7 and all(o.corrected for o in out)
    with pytest.raises(SeriesError, match="at least 7 frames, got 6"):
        engine.check_series_length(6)
    engine.check_series_length(7)
    RTNEngine(sensor.true_cube(table=table), EngineSettings(reference="spatial"), table=table
              ).check_series_length(1)


def test_a_new_series_starts_afresh(small, table):
    sensor, data = small
    engine = RTNEngine(sensor.true_cube(table=table), EngineSettings(window=4), table=table)
    first = [o.data for o in run_series(engine, list(data[:12]))]
    engine.push(data[20])  # an unfinished series, discarded by start_series
    second = [o.data for o in run_series(engine, list(data[:12]))]
    for a, b in zip(first, second, strict=True):
        np.testing.assert_array_equal(a, b)
    assert np.all(engine.pixel_counters()["n_frames"][engine.params.index // 40, engine.params.index % 40] == 12)


@pytest.mark.parametrize("window", (4, 6, 10))
def test_window_start_formula(window):
    for n in range(window + 1, window + 30):
        for t in range(n):
            # ALGORITHM.md section 2: start = clamp(t - W/2, 0, N-1-W); causal: t - W, slid the same way
            centred = min(max(t - window // 2, 0), n - 1 - window)
            causal = min(max(t - window, 0), n - 1 - window)
            assert window_start(t, n, window, "temporal") == centred
            assert window_start(t, n, window, "causal") == causal
            for start in (centred, causal):
                assert 0 <= start <= t <= start + window <= n - 1
            if window // 2 <= t <= n - 1 - window // 2:
                assert centred == t - window // 2  # centred away from the edges
            if t >= window:
                assert causal == t - window  # only past frames
            # while the series is open, only the lower clamp applies
            assert window_start(t, None, window, "temporal") == max(t - window // 2, 0)


# ---- errors --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def engine(small, table):
    sensor, _ = small
    cube = sensor.true_cube(table=table)
    engine = RTNEngine(cube, EngineSettings(window=4), table=table)
    engine.cube_mask = cube.rtn_mask
    return engine


@pytest.mark.parametrize(
    ("frame", "message"),
    [
        (np.zeros((40, 41), np.uint16), r"shape \(40, 41\), the RTN cube has \(40, 40\)"),
        (np.zeros((40, 40, 1), np.uint16), "shape"),
        (np.zeros((40, 40), np.complex64), "unsupported dtype complex64"),
        (np.zeros((40, 40), bool), "unsupported dtype bool"),
        (np.zeros((40, 40), np.int64), "unsupported dtype int64"),
        (np.zeros((40, 40), np.float16), "unsupported dtype float16"),
        ([[0] * 40] * 40, "must be a numpy array, got list"),
    ],
)
def test_bad_frames_are_refused(engine, frame, message):
    engine.start_series()
    with pytest.raises(FrameError, match=message):
        engine.push(frame)
    assert engine.frames_in == 0


def test_dtype_change_mid_series_is_refused_and_the_series_goes_on(engine, small):
    _, data = small
    engine.start_series()
    out = engine.push(data[0])
    with pytest.raises(FrameError, match="dtype float32, this series started with uint16"):
        engine.push(data[1].astype(np.float32))
    for frame in data[1:8]:
        out += engine.push(frame)
    assert engine.frames_in == 8
    out += engine.finish()
    assert [o.index for o in out] == list(range(8))
    np.testing.assert_array_equal(out[1].data[~engine.cube_mask], data[1][~engine.cube_mask])


def test_big_endian_frames_are_accepted(small, table):
    sensor, data = small
    cube = sensor.true_cube(table=table)
    native = run_series(RTNEngine(cube, EngineSettings(window=4), table=table), list(data[:8]))
    swapped = run_series(RTNEngine(cube, EngineSettings(window=4), table=table),
                         [f.astype(">u2") for f in data[:8]])
    for a, b in zip(native, swapped, strict=True):
        np.testing.assert_array_equal(a.data, b.data)


@pytest.mark.parametrize("ref", REFERENCES)
def test_frame_memory_layout_does_not_matter(small, table, ref):
    # Fortran-ordered frames and strided views carry the same pixels as C-ordered ones
    sensor, data = small
    cube = sensor.true_cube(table=table)
    settings = EngineSettings(reference=ref, window=4)
    frames = list(data[:8])
    wide = np.zeros((8, 40, 80), dtype=data.dtype)
    wide[:, :, ::2] = data[:8]
    layouts = [[np.asfortranarray(f) for f in frames], [w[:, ::2] for w in wide]]
    expected = run_series(RTNEngine(cube, settings, table=table), frames)
    for layout in layouts:
        got = run_series(RTNEngine(cube, settings, table=table), layout)
        for a, b in zip(expected, got, strict=True):
            np.testing.assert_array_equal(a.data, b.data)
    assert sum(o.counts.low + o.counts.high for o in expected) > 0


def test_every_supported_dtype_runs(small, table):
    sensor, data = small
    cube = sensor.true_cube(table=table)
    for dtype in SUPPORTED_DTYPES:
        frames = [np.clip(f, 0, np.iinfo(np.uint8).max if dtype == np.uint8 else 65535).astype(dtype)
                  for f in data[:8]]
        out = run_series(RTNEngine(cube, EngineSettings(window=4), table=table), frames)
        assert [o.data.dtype for o in out] == [dtype] * 8


@pytest.mark.parametrize(
    ("settings", "name"),
    [
        ({"window": 5}, "window"),
        ({"window": 2}, "window"),
        ({"window": 0}, "window"),
        ({"window": 10.0}, "window"),
        ({"window": "10"}, "window"),
        ({"spatial_size": 4}, "spatial_size"),
        ({"spatial_size": 1}, "spatial_size"),
        ({"alpha": 0.0}, "alpha"),
        ({"alpha": 0.5}, "alpha"),
        ({"alpha": float("nan")}, "alpha"),
        ({"k_var": 0.0}, "k_var"),
        ({"k_var": float("inf")}, "k_var"),
        ({"reference": "median"}, "reference"),
    ],
)
def test_invalid_settings_name_the_parameter(settings, name):
    with pytest.raises(ValueError, match=name):
        EngineSettings(**settings)


def test_table_and_backend_must_fit(cube, table):
    with pytest.raises(ValueError, match="alpha"):
        RTNEngine(cube, EngineSettings(alpha=0.01), table=table)
    with pytest.raises(ValueError, match="backend"):
        RTNEngine(cube, EngineSettings(), backend="opencl", table=table)


def test_cupy_backend_without_cupy_says_so(cube, table):
    try:
        import cupy  # noqa: F401
    except ImportError:
        pass
    else:
        pytest.skip("CuPy is importable here")
    with pytest.raises(BackendUnavailableError):
        RTNEngine(cube, EngineSettings(), backend="cupy", table=table)
    assert RTNEngine(cube, EngineSettings(), backend="auto", table=table).backend.name == "numpy"
