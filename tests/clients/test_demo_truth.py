"""The demo's truth score: RMS of the RTN pixels against the simulated truth, and its bound on frames in flight."""

import threading

import numpy as np
import pytest

from rtnstream.commands.demo import TruthScore
from rtnstream.kernels.simulate import SensorModel


def test_truth_score_matches_the_rms_computed_from_whole_frames():
    sensor = SensorModel.random((40, 50), rtn_fraction=0.2, seed=3)
    frames = list(sensor.frames(5, seed=4))
    truth = TruthScore(sensor)
    idx = sensor.rtn_index
    corrected = []
    for seq, f in enumerate(frames):
        truth.keep(seq, f)
        out = f.data.copy()
        out.ravel()[idx[::2]] = np.rint(f.clean_adu.ravel()[idx[::2]])  # half the RTN pixels "corrected"
        corrected.append(out)
    for seq in (3, 0, 4, 1, 2):  # the sink scores in any order
        truth.score(seq, corrected[seq])
    g = sensor.gain_e_per_adu
    clean = np.stack([f.clean_adu.ravel()[idx] for f in frames])
    raw = np.stack([f.data.ravel()[idx] for f in frames]).astype(np.float64)
    out = np.stack([c.ravel()[idx] for c in corrected]).astype(np.float64)
    before, after = truth.rms_e()
    # float32 offsets (clean - raw, a few adu): relative error about 1e-7
    assert before == pytest.approx(np.sqrt(np.mean((raw - clean) ** 2)) * g, rel=1e-6)
    assert after == pytest.approx(np.sqrt(np.mean((out - clean) ** 2)) * g, rel=1e-6)
    assert after < before and truth.frames == 5
    assert truth.true_jumps == sum(int(np.count_nonzero(f.states)) for f in frames)


def test_wait_in_flight_blocks_until_a_frame_is_scored():
    sensor = SensorModel.random((16, 16), seed=1)
    frames = list(sensor.frames(3, seed=2))
    truth = TruthScore(sensor)
    truth.keep(0, frames[0])
    truth.keep(1, frames[1])
    stop, passed = threading.Event(), threading.Event()

    def camera():
        truth.wait_in_flight(2, stop)
        passed.set()

    t = threading.Thread(target=camera)
    t.start()
    assert not passed.wait(0.3)  # two frames in flight, limit 2: waits
    truth.score(0, frames[0].data)
    assert passed.wait(5.0)  # one scored: goes on
    t.join()
    stop.set()
    truth.wait_in_flight(1, stop)  # stop set: returns at once though one is in flight
