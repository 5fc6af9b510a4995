"""The CUDA kernels' per-pixel logic, compiled for the host, against the NumPy engine (bit for bit).

``kernels/rtn_correct.cu`` is built with g++ and ``kernels/cuda_host_shim.h`` (tests/kernels/_cuda_host.py)
and driven by the CuPy backend's own host-side logic (KernelBackend); every output frame, per-frame count and
per-pixel counter must equal RTNEngine(backend='numpy')'s for all three references and the supported dtypes.
"""

from __future__ import annotations

import dataclasses
import re
import subprocess

import numpy as np
import pytest

from rtnstream.kernels import _cuda
from rtnstream.kernels.engine import EngineSettings, RTNEngine
from rtnstream.kernels.exceptions import FrameError
from rtnstream.kernels.numpy_backend import (
    STATE_HIGH,
    STATE_LOW,
    STATE_NONE,
    STATE_OUT_OF_TABLE,
    STATE_VETO,
    NumpyBackend,
)
from tests.kernels._cuda_host import (
    HOST_FLAGS,
    SHIM,
    HostKernelBackend,
    HostKernels,
    assert_same_run,
    build_host_library,
    find_cxx,
    flush_subnormals,
    host_engine,
    run_engine,
    simulated_series,
    subnormal_series,
    threshold_series,
)

CXX = find_cxx()
pytestmark = [
    pytest.mark.skipif(CXX is None, reason="no C++ compiler (g++, c++ or clang++) on PATH"),
    # float series hold infinities: the NumPy engine warns on inf - inf in the window spread (NaN, no veto)
    pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning"),
]

REFERENCES = ("temporal", "causal", "spatial")
# (dtype, scene, bias level in adu): bias levels near a dtype's limits make corrections saturate there.
CASES = [
    ("uint16", "varying", 500.0),
    ("uint16", "bias", 65530.0),
    ("uint16", "stars", 4.0),
    ("uint8", "bias", 250.0),
    ("int16", "bias", 32762.0),
    ("uint32", "flat", 3.0),
    ("int32", "varying", 800.0),
    ("float32", "varying", 500.0),
    ("float64", "stars", 500.0),
]


@pytest.fixture(scope="module")
def kernels(tmp_path_factory) -> HostKernels:
    return HostKernels(build_host_library(CXX, tmp_path_factory.mktemp("cuda_host")))


def _both(kernels, cube, settings, frames):
    expected = run_engine(RTNEngine(cube, settings, backend="numpy"), frames)
    got = run_engine(host_engine(kernels, cube, settings), frames)
    return expected, got


def _totals(run) -> dict[str, int]:
    frames = run[0]
    return {k: sum(getattr(f.counts, k) for f in frames) for k in ("low", "high", "vetoed", "out_of_table")}


@pytest.mark.parametrize(("dtype", "scene", "bias"), CASES)
def test_kernels_match_numpy_engine(kernels, dtype, scene, bias):
    series = simulated_series(dtype, scene, bias, n_frames=17, seed=len(scene) + int(bias) % 7)
    totals = {}
    for reference in REFERENCES:
        settings = EngineSettings(reference=reference, window=6)
        expected, got = _both(kernels, series.cube, settings, series.frames)
        assert_same_run(expected, got, f"{series.label} {reference}")
        totals[reference] = _totals(expected)
    # the series exercise what they are meant to: jumps corrected both ways, vetoes where sources vary,
    # lambda beyond the table under bright stars
    for reference in REFERENCES:
        assert totals[reference]["low"] + totals[reference]["high"] > 0, (series.label, totals)
    assert sum(t["low"] for t in totals.values()) > 0 and sum(t["high"] for t in totals.values()) > 0, totals
    if scene == "varying":
        assert totals["temporal"]["vetoed"] > 0 and totals["causal"]["vetoed"] > 0, totals
    if scene in ("stars", "varying"):
        assert totals["temporal"]["out_of_table"] > 0, totals


def _without_states(run):
    frames, maps = run
    return [dataclasses.replace(f, states=None) for f in frames], maps


@pytest.mark.parametrize(("dtype", "scene", "bias"), CASES)
def test_two_trap_pixels_match(kernels, dtype, scene, bias):
    """A cube whose RTN pixels are a third two-trap pixels (docs/algorithm.md section 9): frames, per-frame
    states and counts, per-pixel and per-level counters and the bias offset map identical, on every
    reference; and the series correct two-trap pixels at trap 2's levels and at combined ones."""
    series = simulated_series(dtype, scene, bias, n_frames=17, seed=len(scene) + int(bias) % 5,
                              two_trap_fraction=0.03)
    assert series.cube.rtn.two_trap.sum() == 32
    per_level = 0
    for reference in REFERENCES:
        settings = EngineSettings(reference=reference, window=6)
        expected = run_engine(RTNEngine(series.cube, settings, backend="numpy", track_states=True), series.frames)
        got = run_engine(host_engine(kernels, series.cube, settings, track_states=True), series.frames)
        assert_same_run(expected, got, f"{series.label} {reference}")
        pipelined = run_engine(host_engine(kernels, series.cube, settings, track_states=False), series.frames)
        assert_same_run(_without_states(expected), pipelined, f"{series.label} {reference} pipelined")
        per_level = per_level + expected[1]["n_level"].sum(axis=0)
    trap2_alone, combined = per_level[[3, 4]].sum(), per_level[[0, 2, 5, 7]].sum()
    assert trap2_alone > 0 and combined > 0 and per_level[[1, 6]].sum() > 0, per_level


@pytest.mark.parametrize("two_trap_fraction", [0.0, 0.03])
@pytest.mark.parametrize("reference", ["temporal", "causal", "spatial"])
def test_nan_pixels_match(kernels, reference, two_trap_fraction):
    """Float frames with NaN pixels: NaN propagates through the references as in NumPy (no correction);
    with two-trap pixels too (a NaN window median's lambda stays NaN under their temporal rule)."""
    series = simulated_series("float32", "flat", 500.0, n_frames=15, seed=4, specials=(np.nan, np.nan),
                              two_trap_fraction=two_trap_fraction)
    settings = EngineSettings(reference=reference, window=6)
    expected, got = _both(kernels, series.cube, settings, series.frames)
    assert_same_run(expected, got, f"{series.label} {reference}")


@pytest.mark.parametrize("two_trap_fraction", [0.0, 0.05])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_nan_and_infinite_windows_match_at_window_10(kernels, dtype, two_trap_fraction):
    """W = 10 (the pruned selection network on the NumPy side, the full sort in the kernel): windows with
    NaN, +inf and -inf pixels, mixed, give the same decisions, counts and corrected frames (one-trap
    cubes, and cubes where half the RTN pixels have two traps)."""
    specials = (np.nan, np.inf, -np.inf, np.nan, np.inf, np.nan, -np.inf, np.nan)
    series = simulated_series(dtype, "flat", 500.0, n_frames=23, seed=6, specials=specials,
                              two_trap_fraction=two_trap_fraction)
    assert np.isnan(series.frames).any() and np.isinf(series.frames).any()
    for reference in ("temporal", "causal"):
        settings = EngineSettings(reference=reference, window=10)
        expected, got = _both(kernels, series.cube, settings, series.frames)
        assert_same_run(expected, got, f"{series.label} {reference} W=10")
        assert _totals(expected)["out_of_table"] > 0  # NaN windows: lambda NaN, left unchanged


@pytest.mark.parametrize(("dtype", "bias", "limit"), [("uint16", 65530.0, 65535), ("uint16", 4.0, 0),
                                                      ("uint8", 250.0, 255), ("int16", 32762.0, 32767),
                                                      ("uint32", 3.0, 0)])
def test_saturated_corrections_match(kernels, dtype, bias, limit):
    """Corrections that cross the dtype's range clip to it on both backends (and some do)."""
    series = simulated_series(dtype, "bias", bias, n_frames=15, seed=11)
    settings = EngineSettings(reference="temporal", window=4)
    expected, got = _both(kernels, series.cube, settings, series.frames)
    assert_same_run(expected, got, series.label)
    clipped = 0
    by_index = {f.index: f for f in expected[0]}
    for t, frame in enumerate(series.frames):
        out = by_index[t].data
        jumps = out.astype(np.int64) - frame.astype(np.int64)
        # a correction that lands on the limit moved by less than its pixel's D_adu
        clipped += int(np.count_nonzero((out == limit) & (jumps != 0)))
    assert clipped > 0


def test_values_at_thresholds_match(kernels, table, make_cube):
    """float64 values exactly at, and one ulp beside, every decision threshold (lambda = 0 and > 0)."""
    for reference, window, lambda_range_e in (("temporal", 6, (0.0, 0.0)), ("temporal", 6, (0.2, 40.0)),
                                              ("causal", 4, (0.2, 40.0)), ("spatial", 4, (0.0, 0.0))):
        series = threshold_series(make_cube, table, window, 3 * (window + 1) + 1, lambda_range_e)
        settings = EngineSettings(reference=reference, window=window)
        expected, got = _both(kernels, series.cube, settings, series.frames)
        assert_same_run(expected, got, f"{series.label} {reference} {lambda_range_e}")
        totals = _totals(expected)
        n_targets = 3 * (series.cube.n_rtn // 10)
        corrected = totals["low"] + totals["high"]
        assert 0 < corrected < n_targets, (reference, totals, n_targets)  # the points straddle the thresholds


def test_short_series_and_window_10(kernels):
    """Default window W=10: a series of 2W+3 frames (sliding edges both ends) and one of W frames."""
    series = simulated_series("uint16", "varying", 500.0, n_frames=23, seed=5)
    for reference in ("temporal", "causal"):
        settings = EngineSettings(reference=reference, window=10)
        for frames in (series.frames, series.frames[:10]):
            expected, got = _both(kernels, series.cube, settings, frames)
            assert_same_run(expected, got, f"W=10 {reference} n={len(frames)}")


def test_float32_subnormals_match(kernels, table, make_cube):
    """float32 subnormals that decide vetoes: the host build keeps them, as NumPy does; and the series is
    one that flushing subnormals to zero (CUDA's FTZ) changes (temporal references)."""
    series = subnormal_series(make_cube, table)
    flushed_frames = flush_subnormals(series.frames)
    assert np.any(flushed_frames != series.frames)
    for reference in REFERENCES:
        settings = EngineSettings(reference=reference, window=6)
        expected, got = _both(kernels, series.cube, settings, series.frames)
        assert_same_run(expected, got, f"{series.label} {reference}")
        if reference != "spatial":
            flushed = run_engine(RTNEngine(series.cube, settings, backend="numpy"), flushed_frames)
            assert sum(f.counts.vetoed for f in flushed[0]) < sum(f.counts.vetoed for f in expected[0])


@pytest.mark.parametrize("dtype", ["uint16", "float32"])
def test_window_fixed_at_compile_time_matches(tmp_path, dtype):
    """The build the CuPy backend runs (-DRTN_WINDOW=W, W in the registers) gives the NumPy engine's output."""
    fixed = HostKernels(build_host_library(CXX, tmp_path, window=10))
    series = simulated_series(dtype, "varying", 500.0, n_frames=23, seed=6, two_trap_fraction=0.02)
    for reference in ("temporal", "causal"):
        expected, got = _both(fixed, series.cube, EngineSettings(reference=reference, window=10), series.frames)
        assert_same_run(expected, got, f"{series.label} RTN_WINDOW=10 {reference}")
        assert sum(f.counts.low + f.counts.high for f in expected[0]) > 0


def _backends(kernels, cube, table, n_slots, spatial_size=5):
    from rtnstream.kernels.pixels import PixelParams

    params = PixelParams.from_cube(cube, table)
    return (NumpyBackend(params, table, 1.5, spatial_size, n_slots),
            HostKernelBackend(kernels, params, table, 1.5, spatial_size, n_slots))


def test_window_slots_in_any_order(kernels, table):
    """Backend level: any W reference slots in any order (the order of the sums) give NumPy's result."""
    series = simulated_series("float64", "varying", 500.0, n_frames=9, seed=7)
    ref, host = _backends(kernels, series.cube, table, n_slots=9)
    rng = np.random.default_rng(0)
    for backend in (ref, host):
        backend.reset(series.frames.dtype)
    for slot, frame in enumerate(series.frames):
        ref.store(slot, frame)
        host.store(slot, frame)
    for slot in range(9):
        window = rng.permutation([s for s in range(9) if s != slot]).tolist()
        exp_data, exp_counts = ref.correct_temporal(series.frames[slot], slot, window)
        got_data, got_counts = host.correct_temporal(series.frames[slot], slot, window)
        assert got_data.tobytes() == exp_data.tobytes()
        assert got_counts == exp_counts
    for name in ("n_lo", "n_hi", "n_veto", "n_frames"):
        np.testing.assert_array_equal(getattr(host.counters, name), getattr(ref.counters, name))


def test_veto_at_its_threshold(kernels, table):
    """k_var within a few ulps of a pixel's spread / sqrt(lambda + RN^2): the veto flips, on both alike."""
    from rtnstream.kernels.pixels import PixelParams

    series = simulated_series("float64", "varying", 500.0, n_frames=7, seed=2, specials=())
    params = PixelParams.from_cube(series.cube, table)
    slot, window = 3, [0, 1, 2, 4, 5, 6]
    vals = series.frames.reshape(7, -1)[window][:, params.index]
    mean = vals[0].copy()
    for v in vals[1:]:
        mean = mean + v
    mean = mean / 6
    acc = (vals[0] - mean) ** 2
    for v in vals[1:]:
        acc = acc + (v - mean) ** 2
    spread_e = np.sqrt(acc / 6) * params.gain_e_per_adu
    lam = np.maximum((np.median(vals, axis=0) - params.mu_adu) * params.gain_e_per_adu, 0.0)
    ratio = spread_e / np.sqrt(lam + params.rn2_e2)
    for k in np.argsort(ratio)[-12:]:  # pixels whose veto threshold lies at a usable k_var
        vetoed = []
        k_vars = [ratio[k]]
        for _ in range(4):  # one ulp apart: a spread one ulp off flips the veto at one of them
            k_vars = [np.nextafter(k_vars[0], 0.0), *k_vars, np.nextafter(k_vars[-1], np.inf)]
        for k_var in k_vars:
            runs = []
            for backend in (NumpyBackend(params, table, k_var, 5, 7), HostKernelBackend(kernels, params, table,
                                                                                       k_var, 5, 7)):
                backend.reset(np.float64)
                for s, frame in enumerate(series.frames):
                    backend.store(s, frame)
                runs.append(backend.correct_temporal(series.frames[slot], slot, window))
                runs.append(backend.counters.n_veto[k])
            assert runs[0][0].tobytes() == runs[2][0].tobytes() and runs[0][1] == runs[2][1]
            assert runs[1] == runs[3]
            vetoed.append(int(runs[1]))
        assert vetoed[0] == 1 and vetoed[-1] == 0, vetoed  # the steps cross the threshold


@pytest.mark.parametrize("size", [3, 7, 9])
def test_spatial_sizes(kernels, table, size):
    series = simulated_series("int32", "stars", 300.0, n_frames=3, seed=size)
    ref, host = _backends(kernels, series.cube, table, n_slots=0, spatial_size=size)
    for backend in (ref, host):
        backend.reset(series.frames.dtype)
    for frame in series.frames:
        exp_data, exp_counts = ref.correct_spatial(frame)
        got_data, got_counts = host.correct_spatial(frame)
        np.testing.assert_array_equal(got_data, exp_data)
        assert got_counts == exp_counts


def test_input_checked_before_any_kernel(kernels, table):
    series = simulated_series("uint16", "bias", 500.0, n_frames=2, seed=1)
    _ref, host = _backends(kernels, series.cube, table, n_slots=5)
    with pytest.raises(RuntimeError, match="reset"):
        host.store(0, series.frames[0])
    for bad in (np.float16, ">u2", np.int64, np.complex64):
        with pytest.raises(ValueError, match="not supported by the CUDA kernels"):
            host.reset(bad)
    host.reset(np.uint16)
    with pytest.raises(FrameError, match="dtype int32"):
        host.store(0, series.frames[0].astype(np.int32))
    with pytest.raises(FrameError, match="shape"):
        host.store(0, series.frames[0][:-1])
    with pytest.raises(ValueError, match="slot must be"):
        host.store(5, series.frames[0])
    for window in ([1, 2, 3], [1, 2, 3, 3], [0, 1, 2, 3], [1, 2, 3, 9]):
        with pytest.raises(ValueError, match="window_slots"):
            host.correct_temporal(series.frames[0], 0, window)
    with pytest.raises(ValueError, match="window"):
        _backends(kernels, series.cube, table, n_slots=_cuda.MAX_VALUES + 2)
    with pytest.raises(ValueError, match="spatial_size"):
        _backends(kernels, series.cube, table, n_slots=0, spatial_size=11)


def test_kernel_arguments_checked(table):
    """KernelSpec.arguments refuses a wrongly typed or non-contiguous array before a launch."""
    values = {name: np.zeros(4, dtype=np.float64) for name, _kind in _cuda.SPATIAL.params}
    values.update(ny=2, nx=2, size=3, n=4, gain=1.0, n_lambda=2, n_sigma=2)
    with pytest.raises(ValueError, match="argument frame has dtype float64"):
        _cuda.SPATIAL.arguments(values, np.uint16)
    with pytest.raises(ValueError, match="argument index has dtype float64"):
        _cuda.SPATIAL.arguments(values, np.float64)
    with pytest.raises(ValueError, match="not supported"):
        _cuda.SPATIAL.kernel_name(np.int64)


def test_source_constants_match_python():
    """#defines of rtn_correct.cu equal the Python constants they mirror."""
    text = (_cuda.SOURCE_DIR / "rtn_correct.cu").read_text()
    defines = {m[1]: int(m[2]) for m in re.finditer(r"#define (RTN_\w+) (\d+)\b", text)}
    assert defines == {
        "RTN_STATE_NONE": STATE_NONE, "RTN_STATE_LOW": STATE_LOW, "RTN_STATE_HIGH": STATE_HIGH,
        "RTN_STATE_VETO": STATE_VETO, "RTN_STATE_OUT_OF_TABLE": STATE_OUT_OF_TABLE,
        "RTN_COUNT_CHANGED": _cuda.COUNT_CHANGED, "RTN_MAX_VALUES": _cuda.MAX_VALUES,
        "RTN_WINDOW": 0,  # the default: W a run-time argument (nvrtc_options(W) fixes it at compile time)
    }
    assert _cuda.N_COUNTS == _cuda.COUNT_CHANGED + 1


def _syntax_errors(tmp_path, text: str) -> str:
    broken = tmp_path / "elsewhere.cu"
    broken.write_text(text)
    proc = subprocess.run([CXX, *HOST_FLAGS[:1], "-fsyntax-only", "-include", str(SHIM), "-x", "c++",
                           str(broken)], capture_output=True, text=True, check=False)
    assert proc.returncode != 0
    return proc.stderr


def test_line_directive_names_the_source(tmp_path):
    """source_text() starts with #line 1 "<file>" and inlines rtn_two_trap.cuh between #line directives
    (NVRTC has no include path): a compiler error points at the real file and line, in either file."""
    text = _cuda.source_text("rtn_correct.cu")
    source = _cuda.SOURCE_DIR / "rtn_correct.cu"
    header = _cuda.SOURCE_DIR / "rtn_two_trap.cuh"
    assert text.startswith(f'#line 1 "{source.as_posix()}"\n')
    assert "#include" not in text and f'#line 1 "{header.as_posix()}"\n' in text
    assert "rtn_two_trap_decide(double s" in text
    n_lines = source.read_text().count("\n") + 1  # the file's lines, then the broken one
    stderr = _syntax_errors(tmp_path, text + "this_is_not_a_type broken_line;\n")
    assert f"rtn_correct.cu:{n_lines}:" in stderr and "warning" not in stderr
    header_lines = header.read_text().splitlines()
    at = next(i + 1 for i, line in enumerate(header_lines) if "const bool outside_centre" in line)
    inside = text.replace("const bool outside_centre", "this_is_not_a_type outside_centre", 1)
    assert f"rtn_two_trap.cuh:{at}:" in _syntax_errors(tmp_path, inside)
    with pytest.raises(ValueError, match="filename must be one of"):
        _cuda.source_text("other.cu")
