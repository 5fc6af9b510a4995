"""RTNEngine(in_place=True) and pipelined backends: the same frames out, the pushed arrays reused as output.

``in_place=True`` must give bit for bit the frames of the default (new arrays), return the pushed array
itself, change it only at the pixels it reports corrected, and refuse frames it cannot write. A pipelined
backend (the CuPy backend's host-side logic, over the host build of the kernels) returns each frame one
push later than the NumPy engine, in order, with the same content, also across finish and a new series.
"""

from __future__ import annotations

import numpy as np
import pytest

from rtnstream.kernels.engine import EngineSettings, RTNEngine
from rtnstream.kernels.exceptions import FrameError
from tests.kernels._cuda_host import (
    HostKernels,
    assert_one_push_later,
    assert_same_run,
    build_host_library,
    find_cxx,
    host_engine,
    run_engine,
    simulated_series,
)

REFERENCES = ("temporal", "causal", "spatial")
CXX = find_cxx()
needs_cxx = pytest.mark.skipif(CXX is None, reason="no C++ compiler (g++, c++ or clang++) on PATH")


@pytest.fixture(scope="module")
def kernels(tmp_path_factory) -> HostKernels:
    return HostKernels(build_host_library(CXX, tmp_path_factory.mktemp("cuda_host")))


@pytest.mark.parametrize("reference", REFERENCES)
@pytest.mark.parametrize("dtype", ["uint16", "float32"])
def test_in_place_gives_the_same_frames_in_the_pushed_arrays(reference, dtype):
    series = simulated_series(dtype, "varying", 500.0, n_frames=17, seed=2, specials=())
    settings = EngineSettings(reference=reference, window=6)
    expected = run_engine(RTNEngine(series.cube, settings), series.frames)
    engine = RTNEngine(series.cube, settings, in_place=True)
    pushed = [frame.copy() for frame in series.frames]
    engine.start_series()
    outs = [o for frame in pushed for o in engine.push(frame)] + engine.finish()
    assert_same_run(expected, (outs, expected[1]), f"{series.label} {reference} in place")
    rtn = np.zeros(series.frames[0].size, dtype=bool)
    rtn[engine.params.index] = True
    for out in outs:
        assert out.data is pushed[out.index]
        changed = np.flatnonzero(out.data.reshape(-1) != series.frames[out.index].reshape(-1))
        assert rtn[changed].all()  # only RTN pixels move
        assert changed.size == out.counts.low + out.counts.high  # every reported correction moved a pixel
    assert sum(o.counts.low + o.counts.high for o in outs) > 0


def test_default_never_modifies_the_pushed_frames():
    series = simulated_series("uint16", "varying", 500.0, n_frames=15, seed=3)
    pushed = series.frames.copy()
    out, _maps = run_engine(RTNEngine(series.cube, EngineSettings(window=6)), pushed)
    np.testing.assert_array_equal(pushed, series.frames)
    assert all(o.data is not pushed[o.index] for o in out)


def test_in_place_refuses_frames_it_cannot_write():
    series = simulated_series("uint16", "bias", 500.0, n_frames=3, seed=1)
    engine = RTNEngine(series.cube, EngineSettings(window=4), in_place=True)
    frozen = series.frames[0].copy()
    frozen.flags.writeable = False
    with pytest.raises(FrameError, match="writeable and C-contiguous"):
        engine.push(frozen)
    with pytest.raises(FrameError, match="writeable and C-contiguous"):
        engine.push(np.asfortranarray(series.frames[0]))
    assert engine.frames_in == 0
    assert engine.push(series.frames[0].copy()) == [] and engine.frames_in == 1


def test_in_place_short_series_returns_the_pushed_arrays():
    series = simulated_series("uint16", "bias", 500.0, n_frames=4, seed=1)
    engine = RTNEngine(series.cube, EngineSettings(window=6), in_place=True)
    pushed = [f.copy() for f in series.frames]
    for frame in pushed:
        assert engine.push(frame) == []
    outs = engine.finish()
    assert [o.data is p for o, p in zip(outs, pushed, strict=True)] == [True] * 4
    assert not any(o.corrected for o in outs)


@needs_cxx
@pytest.mark.parametrize("reference", REFERENCES)
@pytest.mark.parametrize("in_place", [False, True])
def test_pipelined_backend_returns_each_frame_one_push_later(kernels, reference, in_place):
    series = simulated_series("uint16", "varying", 500.0, n_frames=16, seed=5)
    settings = EngineSettings(reference=reference, window=6)
    numpy_engine = RTNEngine(series.cube, settings)
    engine = host_engine(kernels, series.cube, settings)
    engine.in_place = in_place
    assert engine.backend.pipelined
    correct = [t % 5 != 3 for t in range(len(series.frames))]  # some frames pushed with correct=False
    want, got, numpy_out, frames_out = [], [], [], []
    for t, frame in enumerate(series.frames):
        outs = numpy_engine.push(frame, correct=correct[t])
        want.append([o.index for o in outs])
        numpy_out.extend(outs)
        outs = engine.push(frame.copy(), correct=correct[t])
        got.append([o.index for o in outs])
        frames_out.extend(outs)
    outs = numpy_engine.finish()
    want.append([o.index for o in outs])
    numpy_out.extend(outs)
    tail = engine.finish()
    got.append([o.index for o in tail])
    frames_out.extend(tail)
    assert [i for push in want for i in push] == list(range(len(series.frames)))
    assert_one_push_later(want, got, correct)
    maps = {"n_lo": numpy_engine.pixel_counters()["n_lo"], "bias_offset": numpy_engine.bias_offset_map()}
    got_maps = {"n_lo": engine.pixel_counters()["n_lo"], "bias_offset": engine.bias_offset_map()}
    assert_same_run((numpy_out, maps), (frames_out, got_maps), f"{series.label} {reference} pipelined")
    assert any(not c for c in correct) and any(o.corrected for o in frames_out)


@needs_cxx
def test_pipelined_backend_across_series(kernels):
    """start_series with a frame still in flight drops it; the next series is unaffected."""
    series = simulated_series("uint16", "varying", 500.0, n_frames=12, seed=6)
    settings = EngineSettings(reference="spatial")
    engine = host_engine(kernels, series.cube, settings)
    engine.start_series()
    assert engine.push(series.frames[0]) == []  # in flight
    expected = run_engine(RTNEngine(series.cube, settings), series.frames)
    assert_same_run(expected, run_engine(engine, series.frames), "new series after one in flight")
