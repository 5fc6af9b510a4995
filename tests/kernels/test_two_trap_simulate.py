"""Two-trap pixels in the simulator (kernels/simulate.py) and in ``rtnstream simulate --two-trap-fraction``."""

from __future__ import annotations

import numpy as np
import pytest

from rtnstream.cli import main
from rtnstream.kernels.cube import DQ_RTN, DQ_TWO_TRAP, read_cube
from rtnstream.kernels.simulate import SecondTraps, SensorModel, two_trap_frames, two_trap_true_cube


@pytest.fixture(scope="module")
def sensor() -> SensorModel:
    return SensorModel.random((50, 60), rtn_fraction=0.08, delta_over_sigma=(4.0, 10.0), seed=2)


def test_second_traps_respect_their_ranges(sensor):
    traps = SecondTraps.random(sensor, 0.02, seed=3)
    assert traps.n_two == 60
    assert np.all(np.diff(traps.rtn_pos) > 0) and traps.rtn_pos.max() < sensor.n_rtn
    sigma = sensor.sigma_e.ravel()[sensor.rtn_index[traps.rtn_pos]]
    ratio = traps.delta_e / sigma
    assert np.all((ratio >= 4.0) & (ratio <= 14.0))
    assert np.all(np.abs(traps.delta_e - sensor.delta_e[traps.rtn_pos]) >= 3.0 * sigma * (1 - 1e-12))
    np.testing.assert_allclose(traps.frac_c + traps.frac_lo + traps.frac_hi, 1.0)


def test_frames_carry_both_traps_and_keep_the_first(sensor):
    """Same seed: read noise and first traps exactly as SensorModel.frames; two-trap pixels read
    rint(clean + (i D1 + j D2) / g); the second traps' state frequencies match their fractions."""
    traps = SecondTraps.random(sensor, 0.02, seed=3)
    g = sensor.gain_e_per_adu
    states2 = []
    for plain, two in zip(sensor.frames(400, seed=7), two_trap_frames(sensor, traps, 400, seed=7), strict=True):
        np.testing.assert_array_equal(two.states, plain.states)
        np.testing.assert_array_equal(two.clean_adu, plain.clean_adu)
        jumped = two.clean_adu.ravel().copy()
        jumped[sensor.rtn_index] += two.states * sensor.delta_e / g
        jumped[sensor.rtn_index[traps.rtn_pos]] += two.states2 * traps.delta_e / g
        np.testing.assert_array_equal(two.data.ravel(), np.clip(np.rint(jumped), 0, 65535).astype(np.uint16))
        others = np.setdiff1d(np.arange(two.data.size), sensor.rtn_index[traps.rtn_pos])
        np.testing.assert_array_equal(two.data.ravel()[others], plain.data.ravel()[others])
        states2.append(two.states2)
    s2 = np.array(states2)
    n = s2.shape[0] * s2.shape[1]
    for value, frac in ((-1, traps.frac_lo), (1, traps.frac_hi)):
        expected = frac.sum() * s2.shape[0]
        assert abs((s2 == value).sum() - expected) < 5 * np.sqrt(expected * (1 - expected / n)) + 1


def test_true_cube_flags_two_trap_pixels(sensor):
    """DQ_TWO_TRAP on the two-trap pixels; their mean bias and read noise include both traps (checked
    against a long simulated stack)."""
    traps = SecondTraps.random(sensor, 0.02, seed=3)
    cube = two_trap_true_cube(sensor, traps)
    flat = sensor.rtn_index[traps.rtn_pos]
    dq = cube.dq.ravel()
    assert np.all(dq[flat] == DQ_RTN | DQ_TWO_TRAP)
    assert np.count_nonzero(dq & DQ_TWO_TRAP) == traps.n_two
    stack = np.stack([f.data.ravel()[flat] for f in two_trap_frames(sensor, traps, 3000, seed=4)]).astype(float)
    g = sensor.gain_e_per_adu
    rn = cube.readnoise_e.ravel()[flat]
    # sampling error of the mean: rn / g / sqrt(3000); rounding adds < 0.3 adu of std
    assert np.all(np.abs(stack.mean(axis=0) - cube.meanbias_adu.ravel()[flat]) < 5 * rn / g / np.sqrt(3000) + 0.05)
    np.testing.assert_allclose(stack.std(axis=0) * g, rn, rtol=0.08)


def test_bad_second_trap_arguments(sensor):
    with pytest.raises(ValueError, match="two_trap_fraction"):
        SecondTraps.random(sensor, 1.5)
    with pytest.raises(ValueError, match="RTN pixels"):
        SecondTraps.random(sensor, 0.5)
    with pytest.raises(ValueError, match="delta_over_sigma"):
        SecondTraps.random(sensor, 0.01, delta_over_sigma=(5.0, 4.0))
    with pytest.raises(ValueError, match="leaves no second jump"):
        SecondTraps.random(sensor, 0.01, delta_over_sigma=(6.0, 7.0), min_separation_sigma=3.0)


def test_simulate_command_writes_the_second_traps(tmp_path):
    out = tmp_path / "sim"
    assert main(["simulate", "-o", str(out), "--shape", "30", "40", "--frames", "50", "--rtn-fraction", "0.05",
                 "--two-trap-fraction", "0.01", "--seed", "3"]) == 0
    truth = np.load(out / "truth.npz")
    n_two = 12
    assert truth["states2"].shape == (50, n_two)
    assert set(np.unique(truth["states2"])) <= {-1, 0, 1}
    assert truth["two_trap_index"].shape == (n_two,)
    assert np.all(np.isin(truth["two_trap_index"], truth["rtn_index"]))
    assert truth["rtn_index"].size == 72  # 5 % one-trap + 1 % two-trap pixels
    cube = read_cube(out / "cube.fits")
    assert np.count_nonzero(cube.dq & DQ_TWO_TRAP) == n_two
    assert np.all(cube.dq.ravel()[truth["two_trap_index"]] & DQ_TWO_TRAP)
    with pytest.raises(SystemExit, match="--two-trap-fraction"):
        main(["simulate", "-o", str(out), "--two-trap-fraction", "0.99"])
