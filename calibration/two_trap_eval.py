"""Two-trap pixels on simulated truth: fit a bias stack, correct a held-out stack, score against the truth.

The figures issue 19 asks for, computed one way for the tests (small sensors) and ``bench/two_trap.py``
(large ones): a sensor with one-trap and two-trap pixels (:class:`~rtnstream.kernels.simulate.SecondTraps`),
a calibration bias stack fitted as ``fit_bias_stack`` does (candidates by the Anderson-Darling pass, the
three-level fit and its rules, then :func:`~rtnstream.calibration.two_trap.fit_two_trap_candidates`), and a
held-out bias stack corrected with the fitted parameters: two-trap pixels by
:func:`~rtnstream.kernels.two_trap.decide_two_trap`, accepted one-trap pixels by the same function with
``D2 = 0`` (which is the section 3 decision), against the spatial or the temporal reference of ALGORITHM.md
section 2 (W = 10, sliding at the ends); with the temporal one the fitted two-trap pixels take the rule of
docs/algorithm.md section 9 ("Temporal reference": :func:`~rtnstream.kernels.two_trap.temporal_lambda_two_trap`
and the centre rule), or phase 1's window median, and optionally the engine's variability veto.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace

import numpy as np

from rtnstream.calibration._anderson import anderson_darling_band
from rtnstream.calibration.fit import FitSettings, acceptance, fit_band
from rtnstream.calibration.two_trap import fit_two_trap_candidates
from rtnstream.kernels.lut import ThresholdTable
from rtnstream.kernels.simulate import SecondTraps, SensorModel, two_trap_frames
from rtnstream.kernels.two_trap import (
    LEVEL_I,
    LEVEL_J,
    TwoTrapParams,
    apply_two_trap,
    decide_two_trap,
    temporal_lambda_two_trap,
)

__all__ = ["TwoTrapTruth", "simulate", "bias_stack", "fit_stack", "temporal_lambda", "window_rows",
           "temporal_lambda_two_trap_series", "spatial_lambda", "correction_figures", "true_offsets_e", "evaluate"]


@dataclass
class TwoTrapTruth:
    """A simulated sensor with one-trap and two-trap pixels."""

    sensor: SensorModel
    traps: SecondTraps

    @property
    def two_trap_flat(self) -> np.ndarray:
        """Flat indices of the two-trap pixels, shape (n_two,), int64."""
        return self.sensor.rtn_index[self.traps.rtn_pos]

    def ordered(self) -> dict[str, np.ndarray]:
        """The two-trap pixels' traps in the fit's convention (trap 1 the larger jump), shape (n_two,) each."""
        s, t = self.sensor, self.traps
        pos = t.rtn_pos
        first = s.delta_e[pos] >= t.delta_e
        pick = {"delta": (s.delta_e[pos], t.delta_e), "lo": (s.frac_lo[pos], t.frac_lo),
                "hi": (s.frac_hi[pos], t.frac_hi)}
        out = {"first_is_sensor": first}
        for key, (a, b) in pick.items():
            out[key + "1"] = np.where(first, a, b)
            out[key + "2"] = np.where(first, b, a)
        return out


def simulate(shape: tuple[int, int], one_trap_fraction: float = 0.05, two_trap_fraction: float = 0.01,
             seed: int = 0) -> TwoTrapTruth:
    """A sensor with ``one_trap_fraction`` one-trap and ``two_trap_fraction`` two-trap pixels.

    Every jump is 4-10 sigma (first traps) or 4-14 sigma (second traps), the two jumps of a pixel at least
    3 sigma apart (issue 19's conditions).
    """
    sensor = SensorModel.random(shape, rtn_fraction=one_trap_fraction + two_trap_fraction,
                                delta_over_sigma=(4.0, 10.0), seed=seed)
    traps = SecondTraps.random(sensor, two_trap_fraction, delta_over_sigma=(4.0, 14.0), min_separation_sigma=3.0,
                               seed=seed + 1)
    return TwoTrapTruth(sensor, traps)


def bias_stack(truth: TwoTrapTruth, n_frames: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Bias frames ``(n, ny, nx)`` uint16 and the true states of the first ``(n, n_rtn)`` and second
    ``(n, n_two)`` traps, int8."""
    sensor = truth.sensor
    data = np.empty((n_frames, *sensor.shape), dtype=np.uint16)
    states = np.empty((n_frames, sensor.n_rtn), dtype=np.int8)
    states2 = np.empty((n_frames, truth.traps.n_two), dtype=np.int8)
    for t, frame in enumerate(two_trap_frames(sensor, truth.traps, n_frames, seed=seed)):
        data[t], states[t], states2[t] = frame.data, frame.states, frame.states2
    return data, states, states2


def fit_stack(data: np.ndarray, gain_e_per_adu: float, table: ThresholdTable, settings: FitSettings | None = None
              ) -> dict[str, np.ndarray]:
    """Fit a bias stack as ``fit_bias_stack`` does, plus the two-trap refit (in memory, one band).

    Returns
    -------
    dict of str to numpy.ndarray
        ``index`` (flat indices of the candidates, int64), ``one`` (the three-level fit dict),
        ``one_accepted`` (bool), and the :func:`fit_two_trap_candidates` fields, per candidate; and
        ``meanbias_adu`` (ny, nx), the mean of the stack, and ``rn_e`` (ny, nx), its standard deviation (ddof = 1) in
        electron (the cube's RN).
    """
    settings = settings or FitSettings()
    n, ny, nx = data.shape
    std = data.std(axis=0, ddof=1)  # as fit_bias_stack (calibration/fit.py: the cube's READNOISE)
    g = float(gain_e_per_adu)
    a2 = anderson_darling_band(data[: min(settings.ad_frames, n)], 0, seed=settings.dither_seed,
                               clip_sigma=settings.clip_sigma, clip_iterations=settings.clip_iterations)
    rn = std * g
    candidate = (a2 > settings.a2_critical) & (rn > np.median(rn))
    one = fit_band(data, candidate, std, settings)
    rules = acceptance(one, g, settings, (float(table.sigma_nodes[0]), float(table.sigma_nodes[-1])))
    index = np.flatnonzero(candidate).astype(np.int64)
    values = data.reshape(n, -1)[:, index].T
    two = fit_two_trap_candidates(values, one, g, table, settings, one_accepted=rules["accepted"])
    return {"index": index, "one": one, "one_accepted": rules["accepted"], "meanbias_adu": data.mean(axis=0),
            "rn_e": rn, **two}


def temporal_lambda(values_adu: np.ndarray, mu_adu: np.ndarray, gain_e_per_adu: float, window: int = 10
                    ) -> np.ndarray:
    """Expected photo-electrons from the temporal median reference (ALGORITHM.md section 2, sliding ends).

    Parameters
    ----------
    values_adu : numpy.ndarray, shape (n_frames, n), adu
        A series of ``n_frames >= window + 1`` frames of ``n`` pixels.
    mu_adu : numpy.ndarray, shape (n,), adu
    gain_e_per_adu : float
    window : int, even, >= 4

    Returns
    -------
    numpy.ndarray, shape (n_frames, n), float64, electron, >= 0
    """
    rows = window_rows(values_adu.shape[0], window)
    vals = np.sort(values_adu[rows].astype(np.float64), axis=1)  # (n_frames, W, n)
    ref = (vals[:, window // 2 - 1] + vals[:, window // 2]) * 0.5
    return np.maximum((ref - mu_adu[None, :]) * gain_e_per_adu, 0.0)


def window_rows(n_frames: int, window: int) -> np.ndarray:
    """Frames of each frame's temporal window (ALGORITHM.md section 2, sliding at the ends).

    Returns
    -------
    numpy.ndarray, shape (n_frames, window), int64
        Row t: frames ``start .. start + window`` without t, ``start = clip(t - window / 2, 0, n_frames - 1 -
        window)``.

    Raises
    ------
    ValueError
        ``window`` odd or below 4, or ``n_frames < window + 1``.
    """
    if window < 4 or window % 2 or n_frames < window + 1:
        raise ValueError(f"window must be even and >= 4 with n_frames >= window + 1, got window={window}, "
                         f"n_frames={n_frames}")
    t = np.arange(n_frames)
    start = np.clip(t - window // 2, 0, n_frames - 1 - window)
    rows = start[:, None] + np.arange(window + 1)[None, :]
    keep = rows != t[:, None]
    return rows[keep].reshape(n_frames, window)


def temporal_lambda_two_trap_series(values_adu: np.ndarray, params: TwoTrapParams, window: int = 10
                                    ) -> tuple[np.ndarray, np.ndarray]:
    """:func:`~rtnstream.kernels.two_trap.temporal_lambda_two_trap` on every frame's window of a series.

    Parameters
    ----------
    values_adu : numpy.ndarray, shape (n_frames, n), adu
        A series of two-trap pixels (``n_frames >= window + 1``).
    params : TwoTrapParams
        Their parameters (n pixels).
    window : int, even, >= 4

    Returns
    -------
    lam_e, spread_e : numpy.ndarray, shape (n_frames, n), float64, electron
    """
    rows = window_rows(values_adu.shape[0], window)
    lam = np.empty(values_adu.shape)
    spread = np.empty(values_adu.shape)
    for t in range(rows.shape[0]):
        lam[t], spread[t] = temporal_lambda_two_trap(values_adu[rows[t]], params)
    return lam, spread


def spatial_lambda(data_adu: np.ndarray, index: np.ndarray, meanbias_adu: np.ndarray, gain_e_per_adu: float,
                   size: int = 5) -> np.ndarray:
    """Expected photo-electrons from the spatial median reference (ALGORITHM.md section 2).

    Parameters
    ----------
    data_adu : numpy.ndarray, shape (n_frames, ny, nx), adu
    index : numpy.ndarray, shape (n,), int64
        Flat indices of the pixels.
    meanbias_adu : numpy.ndarray, shape (ny, nx), adu
        Mean bias map (subtracted from the neighbours).
    gain_e_per_adu : float
    size : int, odd, >= 3
        Neighbourhood size (the centre and pixels outside the frame excluded).

    Returns
    -------
    numpy.ndarray, shape (n_frames, n), float64, electron, >= 0
    """
    from rtnstream.kernels.pixels import neighbour_indices

    n_frames, ny, nx = data_adu.shape
    nb = neighbour_indices((ny, nx), index, size)
    inside = nb >= 0
    safe = np.where(inside, nb, 0)
    flat = data_adu.reshape(n_frames, -1)
    bias = meanbias_adu.ravel()[safe][None]
    ref = np.empty((n_frames, index.size))
    for t0 in range(0, n_frames, 50):  # in blocks of frames: (50, n, size^2 - 1) float64 at a time
        vals = np.where(inside[None], flat[t0 : t0 + 50, safe].astype(np.float64) - bias, np.nan)
        ref[t0 : t0 + 50] = np.nanmedian(vals, axis=2)
    return np.maximum(ref * gain_e_per_adu, 0.0)


def _correct(values: np.ndarray, lam: np.ndarray, params: TwoTrapParams, table: ThresholdTable,
             beat_centre: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Corrected values and level codes, frame by frame, shape (n_frames, n) each."""
    out = np.empty_like(values)
    states = np.empty(values.shape, dtype=np.uint8)
    for t in range(values.shape[0]):
        states[t] = decide_two_trap(values[t].astype(np.float64), lam[t], params, table, beat_centre)
        out[t] = apply_two_trap(values[t], states[t], params)
    return out, states


def _pixel_figures(raw: np.ndarray, corrected: np.ndarray, states: np.ndarray, true_offset_e: np.ndarray,
                   sigma_e: np.ndarray, g: float, d1_adu: np.ndarray, d2_adu: np.ndarray) -> dict[str, float]:
    """:func:`correction_figures` of one pixel population from its level codes (the corrections they make)."""
    changed = (states >= 1) & (states <= 8)
    k = np.maximum(states.astype(np.int64) - 1, 0)
    applied_adu = -(LEVEL_I[k] * d1_adu[None, :] + LEVEL_J[k] * d2_adu[None, :]) * changed
    return correction_figures(raw, corrected, applied_adu, true_offset_e, sigma_e, g, changed)


def correction_figures(raw: np.ndarray, corrected: np.ndarray, applied_adu: np.ndarray, true_offset_e: np.ndarray,
                       sigma_e: np.ndarray, g: float, changed: np.ndarray | None = None) -> dict[str, float]:
    """RMS read noise before and after, and the pixel-frames changed wrongly, of one pixel population.

    Parameters
    ----------
    raw, corrected : numpy.ndarray, shape (n_frames, n), adu
        The pixels' values before and after correction.
    applied_adu : numpy.ndarray, shape (n_frames, n), adu
        The correction made to each pixel-frame (``corrected - raw`` where nothing saturates).
    true_offset_e : numpy.ndarray, shape (n_frames, n), electron
        The true jump of each pixel-frame (:func:`true_offsets_e`).
    sigma_e : numpy.ndarray, shape (n,), electron
        The pixels' true read noise.
    g : float, e-/ADU
    changed : numpy.ndarray of bool, shape (n_frames, n), optional
        The pixel-frames corrected (default: ``applied_adu != 0``).

    Returns
    -------
    dict of str to float
        ``rms_before_e``, ``rms_after_e`` (root mean square over the pixels of each pixel's standard
        deviation over the frames), ``sigma_rms_e``, ``rms_after_over_sigma``, ``changed_fraction``;
        ``harmful_fraction``: pixel-frames corrected although at the central level, or moved further from it
        than they were; ``wrong_level_fraction``: corrected to a level more than sigma from the true one;
        ``jumps_caught_fraction``: jumped pixel-frames corrected to their level.
    """
    if changed is None:
        changed = applied_adu != 0
    true_adu = -true_offset_e / g  # the correction that restores the central level
    err = np.abs(applied_adu - true_adu)
    sigma_adu = sigma_e / g
    wrong_level = changed & (err > sigma_adu[None, :])
    harmful = changed & (err > np.abs(true_adu))
    jumped = true_offset_e != 0
    caught = changed & ~wrong_level & jumped
    rms = np.sqrt(np.mean((corrected.astype(np.float64) * g).var(axis=0)))
    before = np.sqrt(np.mean((raw.astype(np.float64) * g).var(axis=0)))
    sigma_rms = float(np.sqrt(np.mean(sigma_e**2)))
    return {
        "n_pixels": int(raw.shape[1]),
        "sigma_rms_e": sigma_rms,
        "rms_before_e": float(before),
        "rms_after_e": float(rms),
        "rms_after_over_sigma": float(rms / sigma_rms),
        "changed_fraction": float(changed.mean()),
        "wrong_level_fraction": float(wrong_level.mean()),
        "harmful_fraction": float(harmful.mean()),
        "jumps_caught_fraction": float(caught.sum() / max(jumped.sum(), 1)),
    }


def true_offsets_e(truth: TwoTrapTruth, states: np.ndarray, states2: np.ndarray) -> np.ndarray:
    """The true jump of every RTN pixel-frame: the first trap's, plus the second's where there is one.

    Parameters
    ----------
    truth : TwoTrapTruth
    states, states2 : numpy.ndarray, shape (n_frames, n_rtn) and (n_frames, n_two), int8
        The traps' states (:func:`bias_stack`).

    Returns
    -------
    numpy.ndarray, shape (n_frames, n_rtn), float64, electron
        Columns in the order of ``truth.sensor.rtn_index``.
    """
    out = states * truth.sensor.delta_e[None, :]
    out[:, truth.traps.rtn_pos] += states2 * truth.traps.delta_e[None, :]
    return out


def evaluate(truth: TwoTrapTruth, fit: dict[str, np.ndarray], held_out: tuple[np.ndarray, ...],
             table: ThresholdTable, reference: str = "spatial", window: int = 10, two_trap_temporal: str = "levels",
             k_var: float | None = None) -> dict[str, dict]:
    """Score a fit on the truth and on the correction of a held-out stack (:func:`bias_stack`'s output).

    ``reference`` is ``'spatial'`` (5 x 5 neighbours minus the fit's mean bias map ``fit['meanbias_adu']``)
    or ``'temporal'`` (median of ``window`` frames). With the temporal reference, ``two_trap_temporal``
    chooses the fitted two-trap pixels' rule: ``'levels'`` (docs/algorithm.md section 9: lambda from
    :func:`~rtnstream.kernels.two_trap.temporal_lambda_two_trap`, levels that must beat the centre) or
    ``'median'`` (phase 1: the window median's lambda and the plain decision, as one-trap pixels).
    ``k_var`` (temporal only; None: none) applies the engine's variability veto: a pixel-frame whose window
    spread exceeds ``k_var sqrt(lambda + RN^2)`` (``RN`` from ``fit['rn_e']``) is left; the spread of the
    window values (one-trap pixels, and two-trap pixels under ``'median'``) or of the de-jumped values
    (two-trap pixels under ``'levels'``).

    Returns
    -------
    dict
        ``classification``: two-trap pixels found (fraction of the true ones), one-trap pixels taken for
        two-trap, their counts, and the fitted jumps' median relative errors; ``two_trap`` and
        ``one_trap``: :func:`_pixel_figures` of the true two-trap and one-trap pixels after correction
        (two-trap pixels the fit missed are corrected as one-trap pixels when the three-level rules
        accepted them, else left).
    """
    sensor = truth.sensor
    g = sensor.gain_e_per_adu
    data, states1, states2 = held_out
    n_frames = data.shape[0]
    flat_all = sensor.rtn_index
    two_flat = truth.two_trap_flat
    is_two = np.isin(flat_all, two_flat)
    cand = fit["index"]
    pos_in_cand = {int(f): i for i, f in enumerate(cand)}
    found = np.array([fit["two_trap"][pos_in_cand[f]] if f in pos_in_cand else False for f in flat_all])
    one_ok = np.array([fit["one_accepted"][pos_in_cand[f]] if f in pos_in_cand else False for f in flat_all])
    # parameters per true RTN pixel: the two-trap fit, the one-trap fit, or none (left)
    n = flat_all.size
    ci = np.array([pos_in_cand.get(int(f), -1) for f in flat_all])
    one = fit["one"]
    zero = np.zeros(n)

    def take(arr, default=np.nan):
        a = np.asarray(arr, dtype=np.float64)
        return np.where(ci >= 0, a[np.maximum(ci, 0)], default)

    mu = np.where(found, take(fit["mu_adu"]), take(one["mu_adu"]))
    d1 = np.where(found, take(fit["delta_e"]), take(one["delta_adu"]) * g)
    d2 = np.where(found, take(fit["delta2_e"]), zero)
    sig = np.where(found, take(fit["sigma_e"]), take(one["sigma_adu"]) * g)
    flo = np.where(found, take(fit["frac_lo"]), take(one["frac_lo"]))
    fhi = np.where(found, take(fit["frac_hi"]), take(one["frac_hi"]))
    f2lo = np.where(found, take(fit["frac2_lo"]), zero)
    f2hi = np.where(found, take(fit["frac2_hi"]), zero)
    corrected_pixel = found | one_ok
    # pixels left uncorrected get harmless placeholders (their states are reset below)
    safe = np.where(corrected_pixel[:, None], np.stack([mu, d1, d2, sig, flo, fhi, f2lo, f2hi], axis=1),
                    np.array([0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 0.0]))
    params = TwoTrapParams.from_arrays(safe[:, 0], safe[:, 1], safe[:, 2], safe[:, 3], g, table,
                                       frac_lo=safe[:, 4], frac_hi=safe[:, 5], frac2_lo=safe[:, 6],
                                       frac2_hi=safe[:, 7])
    values = data.reshape(n_frames, -1)[:, flat_all]
    if two_trap_temporal not in ("levels", "median"):
        raise ValueError(f"two_trap_temporal must be 'levels' or 'median', got {two_trap_temporal!r}")
    levels = reference == "temporal" and two_trap_temporal == "levels"
    if reference == "temporal":
        lam = temporal_lambda(values, params.mu_adu, g, window)
        if k_var is not None:  # (n_frames, n) electron
            spread = values[window_rows(n_frames, window)].astype(np.float64).std(axis=1) * g
        if levels and found.any():
            sub = replace(params, **{f.name: getattr(params, f.name)[found] for f in fields(params)
                                     if f.name != "gain_e_per_adu"})
            lam_two, spread_two = temporal_lambda_two_trap_series(values[:, found], sub, window)
            lam[:, found] = lam_two
            if k_var is not None:
                spread[:, found] = spread_two
    elif reference == "spatial":
        if k_var is not None:
            raise ValueError("k_var (the variability veto) applies to the temporal reference only")
        lam = spatial_lambda(data, flat_all, fit["meanbias_adu"], g)
    else:
        raise ValueError(f"reference must be 'spatial' or 'temporal', got {reference!r}")
    corrected, states = _correct(values, lam, params, table, beat_centre=levels)
    left = np.broadcast_to(~corrected_pixel[None, :], values.shape)
    if k_var is not None:
        rn_e = fit["rn_e"].ravel()[flat_all]
        left = left | (spread > k_var * np.sqrt(lam + rn_e[None, :] ** 2))
    corrected = np.where(left, values, corrected)
    states[left] = 0

    true_off = true_offsets_e(truth, states1, states2)
    sigma_true = sensor.sigma_e.ravel()[flat_all]

    def figures(mask):
        return _pixel_figures(values[:, mask], corrected[:, mask], states[:, mask], true_off[:, mask],
                              sigma_true[mask], g, params.delta1_adu_int[mask], params.delta2_adu_int[mask])

    order = truth.ordered()
    tpos = np.searchsorted(flat_all, two_flat)
    hit = found[tpos]
    rel = {}
    if hit.any():
        rel = {"delta1_median_rel_error": float(np.median(np.abs(d1[tpos][hit] / order["delta1"][hit] - 1))),
               "delta2_median_rel_error": float(np.median(np.abs(d2[tpos][hit] / order["delta2"][hit] - 1))),
               "sigma_median_rel_error": float(np.median(np.abs(sig[tpos][hit] / sigma_true[tpos][hit] - 1)))}
    classification = {
        "n_two_trap": int(is_two.sum()), "n_one_trap": int((~is_two).sum()),
        "two_trap_found": float(found[is_two].mean()) if is_two.any() else float("nan"),
        "one_trap_taken_for_two": float(found[~is_two].mean()) if (~is_two).any() else float("nan"),
        "normal_taken_for_two": int(fit["two_trap"].sum() - found.sum()), "reference": reference,
        "n_candidates": int(cand.size), "n_refitted": int((~fit["fits_one_trap"]).sum()), **rel,
    }
    return {"classification": classification, "two_trap": figures(is_two), "one_trap": figures(~is_two)}
