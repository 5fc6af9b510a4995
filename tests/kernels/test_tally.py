"""Per-pixel decision counters of the NumPy backend: uint8 tallies folded into int64 totals every 255
frames give exactly the counts of a plain recount of the decisions, across folds, blocks and threads."""

import numpy as np

from rtnstream.kernels.engine import EngineSettings, RTNEngine
from rtnstream.kernels.numpy_backend import (
    STATE_HIGH,
    STATE_LOW,
    STATE_VETO,
    NumpyBackend,
    _Tally,
)
from rtnstream.kernels.simulate import SensorModel


def test_tally_equals_a_recount_of_the_states_across_folds():
    blocks = [slice(0, 5), slice(5, 17), slice(17, 20)]  # uneven, as the last block of a backend is
    tally = _Tally(blocks)
    rng = np.random.default_rng(0)
    # mostly one code, so counts reach 255 and beyond (where a uint8 would wrap) between folds
    states = rng.choice(np.arange(5, dtype=np.uint8), size=(700, 20), p=[0.02, 0.9, 0.04, 0.02, 0.02])
    skipped = np.zeros((700, 20), dtype=bool)
    skipped[::7, 17:] = True  # block 2 misses every 7th frame: its pixels count fewer frames
    for t in range(700):
        for b, sl in enumerate(blocks):
            if not skipped[t, sl.start]:
                tally.add(b, states[t, sl])
        if t + 1 in (1, 254, 255, 256, 509, 510, 511, 700):
            c = tally.counters()
            counted = ~skipped[: t + 1]
            for got, code in ((c.n_lo, STATE_LOW), (c.n_hi, STATE_HIGH), (c.n_veto, STATE_VETO)):
                assert got.dtype == np.int64 and got.shape == (20,)
                np.testing.assert_array_equal(got, np.sum((states[: t + 1] == code) & counted, axis=0))
            np.testing.assert_array_equal(c.n_frames, counted.sum(axis=0))
    assert c.n_lo.max() > 600  # well past a uint8's range


def test_backend_counters_match_the_frame_counts_over_a_long_series(table):
    # 300 frames (one fold of the tallies and then some) on a small sensor; per pixel, the counters of a
    # backend split into blocks of 7 pixels over 3 threads equal those of one block on one thread, and in
    # total the per-frame counts (from each frame's decisions, not from the counters)
    sensor = SensorModel.random((24, 24), rtn_fraction=0.2, seed=3)
    frames = [f.data for f in sensor.frames(300, seed=5)]
    settings = EngineSettings(window=6)
    engines = []
    for threads, block in ((1, 1 << 15), (3, 7)):
        engine = RTNEngine(sensor.true_cube(table=table), settings, table=table)
        b = engine.backend
        engine.backend = NumpyBackend(engine.params, table, settings.k_var, settings.spatial_size, b.n_slots,
                                      threads=threads, block=block)
        engines.append(engine)
    outs = []
    for engine in engines:
        out = [o for f in frames for o in engine.push(f.copy())]
        outs.append(out + engine.finish())
    whole, split = (e.backend.counters for e in engines)
    for name in ("n_lo", "n_hi", "n_veto", "n_frames"):
        np.testing.assert_array_equal(getattr(split, name), getattr(whole, name))
    counts = [o.counts for o in outs[0]]
    assert len(counts) == 300 and all(o.corrected for o in outs[0])
    assert whole.n_lo.sum() == sum(c.low for c in counts) > 0
    assert whole.n_hi.sum() == sum(c.high for c in counts) > 0
    assert whole.n_veto.sum() == sum(c.vetoed for c in counts) > 0
    np.testing.assert_array_equal(whole.n_frames, 300)
