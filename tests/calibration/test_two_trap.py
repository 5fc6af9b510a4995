"""Two-trap fit (calibration/two_trap.py): EM on simulated truth, one-vs-two selection, the issue's figures."""

from __future__ import annotations

import numpy as np
import pytest

from rtnstream.calibration import two_trap_eval
from rtnstream.calibration._em import compress_values
from rtnstream.calibration.fit import FitSettings, fit_band
from rtnstream.calibration.two_trap import TWO_TRAP_RULES, fit_two_trap, fit_two_trap_candidates
from rtnstream.kernels.cube import DQ_RTN, DQ_TWO_TRAP
from rtnstream.kernels.lut import get_table


@pytest.fixture(scope="module")
def table():
    return get_table(0.003)


def _mixture(rng, n_pix, n_frames, mu, d1, d2, s, p1, p2):
    """Values (n_pix, n_frames), float rounded to integers: levels mu + i d1 + j d2, states drawn independently."""
    i = np.array([rng.choice([-1, 0, 1], n_frames, p=p1[k]) for k in range(n_pix)])
    j = np.array([rng.choice([-1, 0, 1], n_frames, p=p2[k]) for k in range(n_pix)])
    x = mu[:, None] + i * d1[:, None] + j * d2[:, None] + rng.normal(0, 1, (n_pix, n_frames)) * s[:, None]
    return np.rint(x).astype(np.int64)


def test_em_recovers_the_simulated_parameters():
    """Jumps 4-12 sigma at least 3 sigma apart, sigma 3-5 adu, 2000 frames: the fit finds them and its
    standard errors are honest (|error| / stderr < 4 for 97 % of the pixels, parameter by parameter)."""
    rng = np.random.default_rng(11)
    n = 120
    s = rng.uniform(3.0, 5.0, n)
    d2 = rng.uniform(4.0, 7.0, n) * s
    d1 = d2 + rng.uniform(3.0, 5.0, n) * s
    p1 = np.stack([rng.uniform(0.03, 0.12, n), np.zeros(n), rng.uniform(0.03, 0.12, n)], axis=1)
    p2 = np.stack([rng.uniform(0.03, 0.12, n), np.zeros(n), rng.uniform(0.03, 0.12, n)], axis=1)
    p1[:, 1] = 1 - p1[:, 0] - p1[:, 2]
    p2[:, 1] = 1 - p2[:, 0] - p2[:, 2]
    mu = rng.uniform(400, 600, n)
    values = _mixture(rng, n, 2000, mu, d1, d2, s, p1, p2)
    y, counts, origin, width = compress_values(values)
    fit = fit_two_trap(y, counts, width)
    assert fit.converged.all()
    truth = {"mu": mu - origin, "delta1": d1, "delta2": d2, "sigma": np.sqrt(s**2), "frac1_lo": p1[:, 0],
             "frac1_hi": p1[:, 2], "frac2_lo": p2[:, 0], "frac2_hi": p2[:, 2]}
    names = ("mu", "delta1", "delta2", "sigma", "frac1_c", "frac1_lo", "frac1_hi", "frac2_c", "frac2_lo", "frac2_hi")
    for col, name in enumerate(names):
        if name not in truth:
            continue
        z = (getattr(fit, name) - truth[name]) / fit.stderr[:, col]
        assert np.mean(np.abs(z) < 4) >= 0.97, name
    np.testing.assert_allclose(fit.delta1 / d1, 1, atol=0.05)
    np.testing.assert_allclose(fit.delta2 / d2, 1, atol=0.08)


def test_must_show_figures(table):
    """Issue 19 on a 100 x 100 sensor (5 % one-trap, 1 % two-trap pixels, jumps >= 4 sigma, >= 3 sigma apart),
    1000 calibration frames, 300 held-out frames corrected against the spatial reference.

    Bars: >= 85 % of two-trap pixels found, < 5 % of one-trap pixels taken for two-trap; the two-trap
    pixels' RMS read noise after correction within 20 % of their sigma and < 0.3 % of their pixel-frames
    changed for the worse (corrected although at the central level, or away from their true level); the
    one-trap pixels' RMS within 20 % of sigma too (bench/two_trap.py prints the full figures). The same
    against the temporal reference, with and without the engine's variability veto."""
    truth = two_trap_eval.simulate((100, 100), 0.05, 0.01, seed=1)
    data, _, _ = two_trap_eval.bias_stack(truth, 1000, seed=2)
    held = two_trap_eval.bias_stack(truth, 300, seed=3)
    fit = two_trap_eval.fit_stack(data, truth.sensor.gain_e_per_adu, table)
    res = two_trap_eval.evaluate(truth, fit, held, table, reference="spatial")
    c, two, one = res["classification"], res["two_trap"], res["one_trap"]
    assert c["n_two_trap"] == 100 and c["n_one_trap"] == 500
    assert c["two_trap_found"] >= 0.85
    assert c["one_trap_taken_for_two"] < 0.05
    assert c["normal_taken_for_two"] == 0
    assert two["rms_before_e"] > 3 * two["sigma_rms_e"]  # the pixels were noisy
    assert two["rms_after_over_sigma"] <= 1.2
    assert two["harmful_fraction"] < 0.003
    assert one["rms_after_over_sigma"] <= 1.2
    assert c["delta1_median_rel_error"] < 0.03 and c["delta2_median_rel_error"] < 0.05

    # The temporal reference (W = 10) with the two-trap rule of docs/algorithm.md section 9: the same bars,
    # the harmful fraction under 0.25 % (the 0.3 % with margin; 300 x 100 pixel-frames, so the
    # expected 0.12-0.14 % is 36-42 events and 0.25 % is 75, over 5 Poisson deviations away; phase 1's
    # window median gave 0.32-0.37 %); one-trap pixels exactly as with phase 1's rule (theirs is the paper's).
    temporal = two_trap_eval.evaluate(truth, fit, held, table, reference="temporal")
    phase1 = two_trap_eval.evaluate(truth, fit, held, table, reference="temporal", two_trap_temporal="median")
    two_t = temporal["two_trap"]
    assert two_t["rms_after_over_sigma"] <= 1.2
    assert two_t["harmful_fraction"] < 0.0025
    assert two_t["rms_after_over_sigma"] < phase1["two_trap"]["rms_after_over_sigma"]
    assert temporal["one_trap"] == phase1["one_trap"]
    # the engine's variability veto on the de-jumped spread keeps the bar (on the raw spread: 1.4 sigma)
    vetoed = two_trap_eval.evaluate(truth, fit, held, table, reference="temporal", k_var=1.5)["two_trap"]
    assert vetoed["rms_after_over_sigma"] <= 1.2 and vetoed["harmful_fraction"] < 0.0025


def test_one_trap_pixels_stay_one_trap(table):
    """A sensor without second traps: no candidate becomes two-trap, and the three-level fit is untouched."""
    truth = two_trap_eval.simulate((60, 60), 0.06, 0.0, seed=8)
    data, _, _ = two_trap_eval.bias_stack(truth, 800, seed=9)
    fit = two_trap_eval.fit_stack(data, truth.sensor.gain_e_per_adu, table)
    assert fit["index"].size > 150
    assert fit["two_trap"].sum() <= 0.05 * fit["index"].size
    flagged = fit["dq"] & DQ_TWO_TRAP != 0
    assert np.array_equal(flagged, fit["two_trap"])
    assert np.array_equal(fit["dq"] & DQ_RTN != 0, fit["one_accepted"] | fit["two_trap"])
    # the three-level columns for the others are what fit_band gives (fit_stack's "one")
    mask = np.zeros(data.shape[1:], dtype=bool)
    mask.reshape(-1)[fit["index"]] = True
    again = fit_band(data, mask, data.std(axis=0), FitSettings())
    for key in ("mu_adu", "delta_adu", "sigma_adu", "frac_lo", "frac_hi"):
        np.testing.assert_array_equal(again[key], fit["one"][key])


def test_rules_reject_a_one_trap_refit(table):
    """A one-trap pixel forced through the refit (one_accepted False) is rejected by some rule, with the
    rule arrays consistent with the verdict."""
    rng = np.random.default_rng(2)
    n = 40
    s = np.full(n, 4.0)
    values = _mixture(rng, n, 1000, np.full(n, 500.0), 6 * s, np.zeros(n), s, np.tile([0.08, 0.84, 0.08], (n, 1)),
                      np.tile([0.0, 1.0, 0.0], (n, 1)))
    mask = np.ones((1, n), dtype=bool)
    one = fit_band(values.T.reshape(1000, 1, n), mask, values.std(axis=1).reshape(1, n))
    res = fit_two_trap_candidates(values, one, 0.3, table)
    assert not res["two_trap"].any()
    failed = np.logical_or.reduce([res[r] for r in TWO_TRAP_RULES])
    assert failed.all()
    assert not res["fits_one_trap"].any()  # refitted: the three-level rules were not said to accept them
    assert np.all(res["dq"] == 0)


def test_bad_input_names_the_parameter(table):
    values = np.zeros((3, 100), dtype=np.uint16)
    one = {k: np.zeros(3) for k in ("mu_adu", "delta_adu", "sigma_adu", "frac_lo", "frac_hi")}
    with pytest.raises(ValueError, match="values"):
        fit_two_trap_candidates(values[0], one, 0.3, table)
    with pytest.raises(ValueError, match="sigma_adu"):
        fit_two_trap_candidates(values, {**one, "sigma_adu": np.zeros(2)}, 0.3, table)
    with pytest.raises(ValueError, match="frac_hi"):
        fit_two_trap_candidates(values, {k: v for k, v in one.items() if k != "frac_hi"}, 0.3, table)
    with pytest.raises(ValueError, match="gain_e_per_adu"):
        fit_two_trap_candidates(values, one, -1.0, table)
    with pytest.raises(ValueError, match="one_accepted"):
        fit_two_trap_candidates(values, one, 0.3, table, one_accepted=np.ones(2, dtype=bool))
    with pytest.raises(ValueError, match="max_iter"):
        fit_two_trap(np.zeros((1, 3)), np.ones((1, 3)), max_iter=0)
