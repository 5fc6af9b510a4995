"""Per-frame decisions (``RTNEngine(track_states=True)``): exact, the same on every backend, no numeric change."""

import numpy as np
import pytest

from rtnstream.kernels.engine import EngineSettings, RTNEngine
from rtnstream.kernels.numpy_backend import STATE_HIGH, STATE_LOW, STATE_NONE, STATE_VETO
from tests.kernels._cuda_host import HostKernels, build_host_library, find_cxx, host_engine, run_engine
from tests.kernels._cuda_host import simulated_series as series_of

CXX = find_cxx()


@pytest.mark.parametrize("reference", ["temporal", "causal", "spatial"])
@pytest.mark.parametrize(("dtype", "scene"), [("uint16", "varying"), ("float32", "stars")])
def test_states_agree_with_the_pixels_changed_and_the_counts(reference, dtype, scene):
    series = series_of(dtype, scene, 500.0, n_frames=15, seed=4, specials=())
    settings = EngineSettings(reference=reference, window=6)
    plain, _ = run_engine(RTNEngine(series.cube, settings), series.frames)
    tracked, _ = run_engine(RTNEngine(series.cube, settings, track_states=True), series.frames)
    index = RTNEngine(series.cube, settings).params.index
    vetoed = 0
    for p, t, frame in zip(plain, tracked, series.frames, strict=True):
        np.testing.assert_array_equal(t.data, p.data)  # tracking changes nothing
        assert p.states is None and t.states.dtype == np.uint8 and t.states.shape == index.shape
        before = frame.reshape(-1)[index].astype(np.float64)
        after = t.data.reshape(-1)[index].astype(np.float64)
        np.testing.assert_array_equal(t.states == STATE_LOW, after > before)
        np.testing.assert_array_equal(t.states == STATE_HIGH, after < before)
        assert set(np.unique(t.states)) <= {STATE_NONE, STATE_LOW, STATE_HIGH, STATE_VETO}
        assert np.count_nonzero(t.states == STATE_VETO) == t.counts.vetoed
        vetoed += t.counts.vetoed
    if reference != "spatial" and scene == "varying":
        assert vetoed > 0


@pytest.mark.skipif(CXX is None, reason="no C++ compiler (g++, c++ or clang++) on PATH")
def test_states_are_the_same_on_the_kernel_backend(tmp_path):
    kernels = HostKernels(build_host_library(CXX, tmp_path))
    series = series_of("uint16", "varying", 500.0, n_frames=15, seed=7, specials=())
    settings = EngineSettings(window=6)
    want, _ = run_engine(RTNEngine(series.cube, settings, track_states=True), series.frames)
    engine = host_engine(kernels, series.cube, settings)
    engine.track_states = True
    got, _ = run_engine(engine, series.frames)
    for w, g in zip(want, got, strict=True):
        np.testing.assert_array_equal(g.data, w.data)
        np.testing.assert_array_equal(g.states, w.states)
