"""SensorModel draws its maps and frames in row blocks: the numbers of whole-frame draws, bounded temporaries.

The reference is the whole-array formula (the simulator before its frames were made in blocks), written out
here from the documented model with one generator per seed, drawing each map and each frame's Poisson
counts, read noise and states as whole arrays.
"""

import tracemalloc

import numpy as np
import pytest

from rtnstream.kernels import simulate
from rtnstream.kernels.simulate import Scene, SensorModel


def reference_sensor(shape, rtn_fraction, seed):
    """``(bias_adu, sigma_e, index, delta_e, frac_lo, frac_c)`` drawn as whole arrays (defaults of random)."""
    rng = np.random.default_rng(seed)
    npix = shape[0] * shape[1]
    bias = 500.0 + rng.normal(0, 3.0, shape)
    sigma = np.clip(1.2 * np.exp(rng.normal(0, 0.15, shape)), 0.5, 5.0)
    n_rtn = int(round(rtn_fraction * npix))
    index = np.sort(rng.choice(npix, n_rtn, replace=False)).astype(np.int64)
    delta = rng.uniform(3.0, 10.0, n_rtn) * sigma.ravel()[index]
    frac_c = rng.uniform(0.80, 0.94, n_rtn)
    split = rng.uniform(0.3, 0.7, n_rtn)
    one_sided = rng.random(n_rtn) < 0.2
    split = np.where(one_sided, rng.choice([0.0, 1.0], n_rtn), split)
    return bias, sigma, index, delta, (1.0 - frac_c) * split, frac_c


def reference_frames(ref, g, scene, n_frames, seed):
    """``[(data uint16, states int8, clean float64)]``: every frame drawn whole, then its states."""
    bias, sigma, index, delta, frac_lo, frac_c = ref
    rng = np.random.default_rng(seed)
    out = []
    for t in range(n_frames):
        if scene.kind == "bias":
            electrons = np.zeros(bias.shape)
        else:
            electrons = rng.poisson(scene.flux_e(t)).astype(np.float64)
        electrons += rng.normal(0.0, 1.0, bias.shape) * sigma
        clean = bias + electrons / g
        u = rng.random(index.size)
        states = np.where(u < frac_lo, -1, np.where(u < frac_lo + frac_c, 0, 1)).astype(np.int8)
        jumped = clean.copy().ravel()
        jumped[index] += states * delta / g
        out.append((np.clip(np.rint(jumped), 0, 65535).astype(np.uint16).reshape(bias.shape), states, clean))
    return out


@pytest.mark.parametrize("block_pixels", [1 << 20, 200, 37])  # one block; many; fewer pixels than a row
@pytest.mark.parametrize("kind", ["bias", "stars", "varying"])
def test_block_frames_equal_whole_frame_draws(monkeypatch, block_pixels, kind):
    shape = (45, 61)
    sensor = SensorModel.random(shape, rtn_fraction=0.1, seed=11)
    monkeypatch.setattr(simulate, "BLOCK_PIXELS", block_pixels)  # maps saved as generator states: any blocks
    ref = reference_sensor(shape, 0.1, 11)
    np.testing.assert_array_equal(sensor.bias_adu, ref[0])
    np.testing.assert_array_equal(sensor.sigma_e, ref[1])
    np.testing.assert_array_equal(sensor.rtn_index, ref[2])
    np.testing.assert_array_equal(sensor.delta_e, ref[3])
    # bright stars near block edges: stamps cut by the blocks
    scene = Scene.make(kind, shape, sky_e=3.0, n_stars=6, star_flux_e=(2e3, 5e4), seed=4)
    expected = reference_frames(ref, sensor.gain_e_per_adu, scene, 4, seed=9)
    for clean in (True, False):
        got = list(sensor.frames(4, scene, seed=9, clean=clean))
        for f, (data, states, clean_adu) in zip(got, expected, strict=True):
            np.testing.assert_array_equal(f.data, data)
            np.testing.assert_array_equal(f.states, states)
            np.testing.assert_array_equal(f.clean_rtn_adu, clean_adu.ravel()[sensor.rtn_index])
            if clean:
                np.testing.assert_array_equal(f.clean_adu, clean_adu)
            else:
                assert f.clean_adu is None


def test_poisson_counts_above_uint16_stay_exact(monkeypatch):
    """Blocks whose counts do not fit the uint16 frame they wait in are kept aside, not wrapped."""
    shape = (20, 30)
    monkeypatch.setattr(simulate, "BLOCK_PIXELS", 90)
    sensor = SensorModel.random(shape, seed=2)
    scene = Scene("flat", shape, sky_e=65500.0)  # about half the counts above 65535
    expected = reference_frames(reference_sensor(shape, 0.05, 2), sensor.gain_e_per_adu, scene, 2, seed=3)
    assert np.random.default_rng(3).poisson(np.full(shape, 65500.0)).max() > 65535  # the first frame's counts
    for f, (data, _, clean) in zip(sensor.frames(2, scene, seed=3), expected, strict=True):
        np.testing.assert_array_equal(f.data, data)
        np.testing.assert_array_equal(f.clean_adu, clean)


def test_frame_temporaries_are_those_of_one_block(monkeypatch):
    """A 1024 x 1024 star frame without its whole clean map allocates its uint16 data, the RTN pixels'
    values and states and a few 16384-pixel float64 blocks: well under one float64 frame (8 MiB), where the
    whole-frame formula needs several (61 MB measured with one block)."""
    shape = (1024, 1024)
    monkeypatch.setattr(simulate, "BLOCK_PIXELS", 1 << 14)
    sensor = SensorModel.random(shape, rtn_fraction=0.05, seed=1)
    scene = Scene.make("stars", shape, sky_e=1.0, seed=1)
    frames = sensor.frames(2, scene, seed=2, clean=False)
    tracemalloc.start()
    try:
        next(frames)
        _, peak_b = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    data_b = shape[0] * shape[1] * 2
    rtn_b = sensor.n_rtn * (8 + 1)  # the RTN pixels' clean values and states (drawn a block at a time too)
    assert peak_b < data_b + rtn_b + 40 * (1 << 14) * 8, peak_b  # 40 block temporaries at most: 5 MiB
