"""The CuPy backend: bit-identical to the NumPy engine on a GPU; a clear error, and no CuPy import, without.

The GPU tests (marker ``gpu``) run only where CuPy imports and a CUDA device is usable; the others always.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

from rtnstream.kernels.cupy_backend import gpu_available
from rtnstream.kernels.engine import EngineSettings, RTNEngine
from rtnstream.kernels.exceptions import BackendUnavailableError
from tests.kernels._cuda_host import (
    assert_one_push_later,
    assert_same_run,
    run_engine,
    simulated_series,
    subnormal_series,
    threshold_series,
)

GPU = gpu_available()
needs_gpu = pytest.mark.skipif(not GPU, reason="no CUDA device usable through CuPy")
REFERENCES = ("temporal", "causal", "spatial")


def _same(cube, settings, frames, label):
    expected = run_engine(RTNEngine(cube, settings, backend="numpy"), frames)
    engine = RTNEngine(cube, settings, backend="cupy")
    assert engine.backend.name == "cupy"
    assert_same_run(expected, run_engine(engine, frames), label)
    return expected


@pytest.mark.gpu
@needs_gpu
@pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")  # inf pixels, NumPy side
@pytest.mark.parametrize(("dtype", "scene", "bias"), [
    ("uint16", "varying", 500.0), ("uint16", "bias", 65530.0), ("uint8", "bias", 250.0),
    ("int16", "stars", 32762.0), ("uint32", "flat", 3.0), ("int32", "varying", 800.0),
    ("float32", "varying", 500.0), ("float64", "stars", 500.0),
])
@pytest.mark.parametrize("reference", REFERENCES)
def test_cupy_engine_matches_numpy(reference, dtype, scene, bias):
    series = simulated_series(dtype, scene, bias, n_frames=17, seed=3)
    _same(series.cube, EngineSettings(reference=reference, window=6), series.frames, series.label)


@pytest.mark.gpu
@needs_gpu
@pytest.mark.parametrize("reference", REFERENCES)
def test_cupy_engine_at_thresholds_and_window_10(table, make_cube, reference):
    window = 10 if reference != "spatial" else 4
    lambda_range_e = (0.2, 40.0) if reference != "spatial" else (0.0, 0.0)
    series = threshold_series(make_cube, table, window, 2 * (window + 1) + 3, lambda_range_e)
    _same(series.cube, EngineSettings(reference=reference, window=window), series.frames, series.label)
    big = simulated_series("uint16", "varying", 500.0, n_frames=31, shape=(96, 128), seed=9)
    expected = _same(big.cube, EngineSettings(reference=reference, window=window), big.frames, big.label)
    assert sum(f.counts.low + f.counts.high for f in expected[0]) > 0


@pytest.mark.gpu
@needs_gpu
@pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")  # inf pixels, NumPy side
@pytest.mark.parametrize(("dtype", "scene", "bias"), [
    ("uint16", "varying", 500.0), ("uint8", "bias", 250.0), ("int16", "stars", 32762.0), ("uint32", "flat", 3.0),
    ("int32", "varying", 800.0), ("float32", "varying", 500.0), ("float64", "stars", 500.0),
])
@pytest.mark.parametrize("reference", REFERENCES)
def test_cupy_two_trap_pixels_match_numpy(reference, dtype, scene, bias):
    """Cubes with two-trap pixels: the same frames, counts, per-level counters and offset maps (pipelined),
    and the same per-frame states (track_states); W = 10 compiled in on a larger sensor."""
    series = simulated_series(dtype, scene, bias, n_frames=17, seed=3, two_trap_fraction=0.03)
    settings = EngineSettings(reference=reference, window=6)
    expected = _same(series.cube, settings, series.frames, series.label)
    assert expected[1]["n_level"].sum() > 0
    assert_same_run(run_engine(RTNEngine(series.cube, settings, backend="numpy", track_states=True), series.frames),
                    run_engine(RTNEngine(series.cube, settings, backend="cupy", track_states=True), series.frames),
                    f"{series.label} states")
    if dtype == "uint16":
        big = simulated_series(dtype, scene, bias, n_frames=31, shape=(96, 128), seed=9, two_trap_fraction=0.01)
        _same(big.cube, EngineSettings(reference=reference, window=10), big.frames, big.label)


@pytest.mark.gpu
@needs_gpu
@pytest.mark.parametrize("reference", REFERENCES)
def test_cupy_keeps_float32_subnormals(table, make_cube, reference):
    """CuPy compiles with -ftz=true; the kernels' explicit conversions keep float32 subnormals, which
    here decide vetoes (test_cuda_host.test_float32_subnormals_match shows that flushing changes them)."""
    series = subnormal_series(make_cube, table)
    _same(series.cube, EngineSettings(reference=reference, window=6), series.frames, series.label)


@pytest.mark.gpu
@needs_gpu
@pytest.mark.parametrize("dtype", ["uint16", "float32"])
def test_cupy_in_place_and_one_push_later(dtype):
    """The pipelined CuPy engine: each frame out one push after the NumPy engine's, the same frames; with
    in_place=True the data is the pushed array."""
    series = simulated_series(dtype, "varying", 500.0, n_frames=19, seed=4)
    settings = EngineSettings(window=6)
    numpy_engine = RTNEngine(series.cube, settings, backend="numpy")
    cupy_engine = RTNEngine(series.cube, settings, backend="cupy", in_place=True)
    assert cupy_engine.backend.pipelined
    expected, got, pushed = [], [], []
    for frame in series.frames:
        expected.append([o.index for o in numpy_engine.push(frame.copy())])
        pushed.append(frame.copy())
        outs = cupy_engine.push(pushed[-1])
        assert all(o.data is pushed[o.index] for o in outs)
        got.append([o.index for o in outs])
    expected.append([o.index for o in numpy_engine.finish()])
    got.append([o.index for o in cupy_engine.finish()])
    assert_one_push_later(expected, got, [True] * len(series.frames))
    assert_same_run(run_engine(RTNEngine(series.cube, settings, backend="numpy"), series.frames),
                    run_engine(RTNEngine(series.cube, settings, backend="cupy", in_place=True),
                               series.frames.copy()), series.label)


@pytest.mark.gpu
@needs_gpu
def test_cupy_backend_reports_its_device():
    series = simulated_series("uint16", "bias", 500.0, n_frames=2)
    engine = RTNEngine(series.cube, EngineSettings(), backend="auto")
    assert engine.backend.name == "cupy"
    assert "cuda:" in engine.backend.device


@pytest.mark.skipif(GPU, reason="a CUDA device is usable here")
def test_cupy_without_gpu_raises_with_install_hint():
    series = simulated_series("uint16", "bias", 500.0, n_frames=2)
    with pytest.raises(BackendUnavailableError, match=r"pip install 'rtnstream\[gpu\]'"):
        RTNEngine(series.cube, EngineSettings(), backend="cupy")
    engine = RTNEngine(series.cube, EngineSettings(), backend="auto")  # falls back
    assert engine.backend.name == "numpy"
    out = engine.push(series.frames[0])
    assert out == [] and engine.frames_in == 1


def test_gpu_available_is_a_bool():
    assert gpu_available() in (True, False)


def test_importing_kernels_does_not_import_cupy():
    """Importing the package, the engine and even the CuPy backend module never attempts ``import cupy``."""
    script = textwrap.dedent("""
        import sys

        attempts = []

        class Recorder:
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] in ("cupy", "cupyx"):
                    attempts.append(name)
                return None

        sys.meta_path.insert(0, Recorder())
        import rtnstream.kernels
        import rtnstream.kernels.engine
        import rtnstream.kernels.cupy_backend
        import rtnstream.kernels._cuda
        print(attempts, [m for m in sys.modules if m.split(".")[0] in ("cupy", "cupyx")])
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    assert proc.stdout.strip() == "[] []", proc.stdout + proc.stderr


def test_recorder_sees_a_cupy_import():
    """The import check above can fail: the same recorder sees gpu_available() try to import CuPy."""
    script = textwrap.dedent("""
        import sys

        attempts = []

        class Recorder:
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] == "cupy":
                    attempts.append(name)
                return None

        sys.meta_path.insert(0, Recorder())
        from rtnstream.kernels.cupy_backend import gpu_available
        gpu_available()
        print("cupy" in attempts or "cupy" in sys.modules)
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    assert proc.stdout.strip() == "True", proc.stdout + proc.stderr
