"""The live pipeline over real ZeroMQ sockets on loopback: exactness, flushing, bad input, overload."""

import json
import threading

import numpy as np
import pytest
import zmq

from rtnstream.clients.stream import FrameReceiver, FrameSender
from rtnstream.kernels.engine import EngineSettings
from rtnstream.kernels.simulate import Scene, SensorModel
from rtnstream.service.pipeline import EndpointError, Pipeline, PipelineConfig
from rtnstream.service.protocol import PROTO
from tests.service._support import N_FRAMES, SHAPE, counters_add_up, loopback, offline, receive_series, wait_for


@pytest.fixture(scope="module")
def context():
    ctx = zmq.Context()
    yield ctx
    ctx.term()


def start_pipeline(context, cube, results=None, **kw):
    config = PipelineConfig(ingest=loopback(), publish=loopback(), push=loopback(), backend="numpy", **kw)
    p = Pipeline("test", cube, config, context, on_series_end=results.append if results is not None else None)
    p.start()
    return p


@pytest.mark.parametrize("reference", ["temporal", "causal", "spatial"])
def test_output_is_bit_identical_to_the_offline_engine(context, sim, reference):
    settings = EngineSettings(reference=reference, window=6)
    results = []
    p = start_pipeline(context, sim.cube, results, engine=settings)
    with FrameReceiver(p.endpoints["push"], "pull", context=context) as rx, \
            FrameSender(p.endpoints["ingest"], "cam", context=context) as tx:
        tx.start_series("s1", meta={"OBJECT": "M31"})
        for f in sim.frames:
            tx.send_frame(f, exptime=0.5)
        tx.end_series()
        got = receive_series(rx)
    assert p.stop()
    want = offline(sim.cube, sim.frames, settings)
    assert [m.header.seq for m in got] == list(range(N_FRAMES))
    for m, w in zip(got, want, strict=True):
        np.testing.assert_array_equal(m.data, w.data)
        rtn = m.header.rtn
        assert (rtn.low, rtn.high, rtn.vetoed, rtn.out_of_table) == (w.counts.low, w.counts.high,
                                                                     w.counts.vetoed, w.counts.out_of_table)
        assert rtn.corrected and rtn.reference == reference and rtn.cube == sim.cube.cube_id
        assert m.header.exptime == 0.5 and m.header.camera == "cam"
    assert sum(m.header.rtn.low + m.header.rtn.high for m in got) > 0  # the test would be empty otherwise
    c = p.status()["counters"]
    assert c["frames_in"] == c["frames_out"] == N_FRAMES and counters_add_up(c)
    assert c["corrections_low"] == sum(w.counts.low for w in want)
    assert c["series_started"] == c["series_finished"] == 1
    # the series' bias offset map is the engine's at the end of the series
    engine_settings_offset = _offline_offset(sim.cube, sim.frames, settings)
    assert [r.series for r in results] == ["s1"] and results[0].frames == N_FRAMES
    np.testing.assert_array_equal(results[0].bias_offset_adu, engine_settings_offset)


def _offline_offset(cube, frames, settings):
    from rtnstream.kernels.engine import RTNEngine

    e = RTNEngine(cube, settings, backend="numpy")
    e.start_series()
    for f in frames:
        e.push(f)
    e.finish()
    return e.bias_offset_map()


def test_stop_flushes_every_frame_of_an_open_series(context, sim):
    settings = EngineSettings(reference="temporal", window=10)
    p = start_pipeline(context, sim.cube, engine=settings)
    with FrameReceiver(p.endpoints["push"], "pull", context=context) as rx, \
            FrameSender(p.endpoints["ingest"], "cam", context=context) as tx:
        tx.start_series("open")
        for f in sim.frames:
            tx.send_frame(f)
        wait_for(lambda: p.status()["counters"]["frames_in"] == N_FRAMES, what="all frames received")
        stopped = []  # no 'end' was sent: stop must flush the W/2 frames the engine holds, and wait for
        stopper = threading.Thread(target=lambda: stopped.append(p.stop()))  # their acknowledgement
        stopper.start()
        got = receive_series(rx)
        stopper.join(30)
    assert stopped == [True]
    want = offline(sim.cube, sim.frames, settings)
    assert len(got) == N_FRAMES
    for m, w in zip(got, want, strict=True):
        np.testing.assert_array_equal(m.data, w.data)


def test_series_shorter_than_the_window_comes_out_unchanged(context, sim):
    p = start_pipeline(context, sim.cube, engine=EngineSettings(window=10))
    with FrameReceiver(p.endpoints["push"], "pull", context=context) as rx, \
            FrameSender(p.endpoints["ingest"], "cam", context=context) as tx:
        tx.start_series("short")
        for f in sim.frames[:5]:
            tx.send_frame(f)
        tx.end_series()
        got = receive_series(rx)
    p.stop()
    assert len(got) == 5
    for m, f in zip(got, sim.frames[:5], strict=True):
        np.testing.assert_array_equal(m.data, f)
        assert m.header.rtn.corrected is False


def _raw(kind="frame", **changes):
    d = {"proto": PROTO, "kind": kind, "camera": "cam", "series": "s", "seq": 0, "shape": list(SHAPE),
         "dtype": "<u2"}
    d.update(changes)
    return json.dumps(d).encode()


def test_bad_input_is_rejected_by_reason_and_never_stops_the_job(context, sim):
    settings = EngineSettings(reference="causal", window=4)
    p = start_pipeline(context, sim.cube, engine=settings)
    good = sim.frames[:12]
    wrong_shape = np.zeros((SHAPE[1], SHAPE[0]), np.uint16)
    bad = {  # reason -> message parts, sent before good frame k
        "no_series": [_raw(seq=0), good[0].tobytes()],  # before any start
        "json": [b"{oops", good[0].tobytes()],
        "proto": [_raw(proto="rtnstream/0", seq=1), good[1].tobytes()],
        "bytes": [_raw(seq=2), good[2].tobytes()[:-1]],
        "shape": [_raw(seq=3, shape=[SHAPE[1], SHAPE[0]]), wrong_shape.tobytes()],
        "dtype": [_raw(seq=4, dtype="<f4"), good[4].astype("<f4").tobytes()],
        "parts": [_raw(seq=5)],
        "header": [_raw(seq=None), good[5].tobytes()],
    }
    with FrameReceiver(p.endpoints["push"], "pull", context=context) as rx, \
            FrameSender(p.endpoints["ingest"], "cam", context=context) as tx:
        tx.send_parts(bad.pop("no_series"))
        tx.start_series("s")
        for frame in good:
            if bad:
                reason = next(iter(bad))
                tx.send_parts(bad.pop(reason))
            tx.send_frame(frame)
        tx.send_parts([_raw(kind="end", series="other")])  # end of a series that is not open
        tx.end_series()
        got = receive_series(rx)
    p.stop()
    c = p.status()["counters"]
    assert c["rejected"] == {"no_series": 2, "json": 1, "proto": 1, "bytes": 1, "shape": 1, "dtype": 1,
                             "parts": 1, "header": 1}
    assert c["frames_out"] == len(good) and counters_add_up(c)
    want = offline(sim.cube, good, settings)  # the good frames alone, as if nothing else had come
    for m, w in zip(got, want, strict=True):
        np.testing.assert_array_equal(m.data, w.data)
        assert m.header.rtn.corrected


def test_sequence_gaps_are_counted(context, sim):
    p = start_pipeline(context, sim.cube, engine=EngineSettings(reference="spatial"))
    with FrameReceiver(p.endpoints["push"], "pull", context=context) as rx, \
            FrameSender(p.endpoints["ingest"], "cam", context=context) as tx:
        tx.start_series("gappy")
        for seq in (0, 1, 4, 5, 9):  # 2, 3, 6, 7, 8 missing
            tx.send_frame(sim.frames[seq], seq=seq)
        tx.end_series()
        got = receive_series(rx)
    p.stop()
    assert [m.header.seq for m in got] == [0, 1, 4, 5, 9]
    assert p.status()["counters"]["seq_gaps"] == 5


@pytest.fixture(scope="module")
def big():
    """Frames large enough that the engine is far slower than ingest (overload tests)."""
    model = SensorModel.random((256, 256), rtn_fraction=0.1, seed=2)
    frames, _, _ = model.stack(150, Scene.make("flat", (256, 256), sky_e=1.0), seed=4)
    return model.true_cube(), frames


def _burst(context, cube, frames, overload):
    settings = EngineSettings(reference="temporal", window=4)
    p = start_pipeline(context, cube, engine=settings, overload=overload, queue_frames=2)
    with FrameReceiver(p.endpoints["push"], "pull", context=context, rcvhwm=0) as rx, \
            FrameSender(p.endpoints["ingest"], "cam", sndhwm=0, context=context) as tx:
        tx.start_series("burst")
        for f in frames:
            tx.send_frame(f)
        tx.end_series()
        got = receive_series(rx, timeout_s=60)
    assert p.stop()
    return settings, p.status()["counters"], got


def test_overload_block_is_lossless(context, big):
    cube, frames = big
    settings, c, got = _burst(context, cube, frames, "block")
    assert c["dropped"] == 0 and c["passthrough"] == 0
    assert c["frames_in"] == c["frames_out"] == len(frames) and counters_add_up(c)
    for m, w in zip(got, offline(cube, frames, settings), strict=True):
        np.testing.assert_array_equal(m.data, w.data)


def test_overload_drop_drops_and_counts(context, big):
    cube, frames = big
    settings, c, got = _burst(context, cube, frames, "drop")
    seqs = [m.header.seq for m in got]
    assert c["dropped"] > 0, "the burst should have overrun a 2-frame queue"
    assert c["frames_in"] == len(frames) and counters_add_up(c)
    assert len(seqs) == c["frames_out"] == len(frames) - c["dropped"]
    kept = frames[seqs]  # what reached the engine, in order: corrected exactly as that series offline
    for m, w in zip(got, offline(cube, kept, settings), strict=True):
        np.testing.assert_array_equal(m.data, w.data)


def test_passthrough_never_overtakes_and_corrects_the_rest_as_the_whole_series(context, big):
    """Issue 10, defect 11: passed-through frames overtook up to 33 corrected ones. Now they stay in the
    engine's series uncorrected: output order is arrival order, and every corrected frame is bit-identical
    to the offline correction of the whole series (its temporal window is the same)."""
    cube, frames = big
    settings, c, got = _burst(context, cube, frames, "passthrough")
    passed = [m for m in got if m.header.rtn.overload == "passthrough"]
    assert c["passthrough"] == len(passed) > 0, "the burst should have overrun a 2-frame queue"
    assert c["dropped"] == 0 and c["frames_out"] == c["frames_in"] == len(frames) and counters_add_up(c)
    assert [m.header.seq for m in got] == list(range(len(frames)))  # in order: nothing overtaken
    want = offline(cube, frames, settings)
    for m in got:
        if m.header.rtn.overload == "passthrough":
            assert m.header.rtn.corrected is False and m.header.rtn.low == m.header.rtn.high == 0
            np.testing.assert_array_equal(m.data, frames[m.header.seq])
        else:
            np.testing.assert_array_equal(m.data, want[m.header.seq].data)


def test_an_endpoint_in_use_is_refused_and_nothing_stays_bound(context, sim):
    p = start_pipeline(context, sim.cube)
    busy = p.endpoints["publish"]
    free_ingest = loopback()
    with pytest.raises(EndpointError, match="publish endpoint") as err:
        Pipeline("second", sim.cube, PipelineConfig(ingest=free_ingest, publish=busy, backend="numpy"), context)
    assert err.value.field == "publish"
    p.stop()
    # the failed pipeline released its ingest: a new one can bind it
    again = Pipeline("third", sim.cube, PipelineConfig(ingest=free_ingest, publish=loopback(), backend="numpy"),
                     context)
    again.start()
    assert again.stop()
