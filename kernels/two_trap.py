"""Jump decision and correction of two-trap pixels (NumPy): the specification ``rtn_two_trap.cuh`` repeats.

A two-trap pixel's signal ``s = (x - mu) g`` (electron) sits at one of the levels ``L = i D1 + j D2``
(i, j in {-1, 0, 1}); with no jump (``L = 0``) it follows the Poisson-normal distribution of ALGORITHM.md
section 3, with quantiles ``q_lo``, ``q_hi`` at the pixel's ``lambda`` and ``sigma``. The decision
generalises section 3 (docs/algorithm.md, "Two-trap pixels", ours). Level k is a *candidate* when

- ``s`` lies in level k's (1 - alpha) range: ``q_lo + L_k < s < q_hi + L_k``;
- ``s`` lies outside the central range (``s < q_lo`` or ``s > q_hi``), at the same significance;
- level k is resolvable from the centre: ``lambda - q_lo < -L_k`` for ``L_k < 0``,
  ``q_hi - lambda < L_k`` for ``L_k > 0`` (a level at 0 never is).

Two traps' levels may lie as close as 3 sigma, so a signal is often in two candidates' ranges; it is then
corrected by the most probable candidate: the largest ``log(P1(i) P2(j)) - z^2 / 2`` with
``z = ((s - lambda) - L_k) / sqrt(sigma^2 + lambda)`` (each trap's fitted state fractions; the normal
approximation of the Poisson-normal spread), the first candidate in level order on ties. With ``D2 = 0``
the candidates are exactly section 3's (levels of trap 2 alone sit at 0; the others at +-D1), so the
corrections are those of :func:`rtnstream.kernels.numpy_backend.decide`. Every quantity is the same float64
operation sequence as in the CUDA header (products by i, j in {-1, 0, 1} are exact, the log priors are
computed once on the host, no other transcendental function), so integer output is bit-identical across
backends.

Temporal reference (ours, docs/algorithm.md section 9, "Temporal reference"). The median of a window of W
frames of a two-trap pixel is pulled off the central level by its frequent side states, so
:func:`temporal_lambda_two_trap` replaces ``max(0, (median - mu) g)``: among the hypotheses "the median sits
at level h" (h = centre or one of the eight levels, ``lambda_h = max(0, (median - mu) g - L_h)``) it takes
the one under which the window values are most likely (each value at its most probable level, a normal of
variance ``sigma^2 + lambda_h``), and it returns the standard deviation of the window values moved to the
centre by those levels for the variability veto. With ``beat_centre`` (the temporal rule)
:func:`decide_two_trap` also requires a two-trap level to score above the centre hypothesis itself,
``log P1(0) P2(0) - z0^2 / 2``; pixels with ``D2 = 0`` keep section 3's decision.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from rtnstream.kernels.lut import ThresholdTable

__all__ = [
    "LEVEL_I",
    "LEVEL_J",
    "N_LEVELS",
    "TT_NONE",
    "TT_OUT_OF_TABLE",
    "TwoTrapParams",
    "level_offsets_e",
    "decide_two_trap",
    "log_by_roots",
    "temporal_lambda_two_trap",
    "correction_adu",
    "apply_two_trap",
    "level_counts",
    "two_trap_offset_map",
]

#: Trap-1 and trap-2 states of the eight jump levels (level code k + 1 for index k).
LEVEL_I = np.array([-1, -1, -1, 0, 0, 1, 1, 1], dtype=np.int8)
LEVEL_J = np.array([-1, 0, 1, -1, 1, -1, 0, 1], dtype=np.int8)
N_LEVELS = 8
TT_NONE = 0  # left unchanged: no significant jump, ambiguous, or not resolvable
TT_OUT_OF_TABLE = 9  # lambda or sigma outside the threshold table: left unchanged


def _check_1d(name: str, value, n: int | None = None) -> np.ndarray:
    arr = np.asarray(value, dtype=np.float64)
    if arr.ndim != 1 or (n is not None and arr.size != n):
        want = "a 1-D array" if n is None else f"shape ({n},)"
        raise ValueError(f"{name} must have {want}, got shape {arr.shape}")
    return arr


@dataclass(frozen=True, eq=False)
class TwoTrapParams:
    """Parameters of n two-trap pixels, prepared once per job (host, NumPy) and shared by every backend.

    Attributes
    ----------
    gain_e_per_adu : float
    mu_adu : numpy.ndarray, shape (n,), float64, adu
        Central level.
    delta1_e, delta2_e : numpy.ndarray, shape (n,), float64, electron, >= 0
        The two traps' jumps.
    delta1_adu_int, delta2_adu_int : numpy.ndarray, shape (n,), int64, adu
        ``rint(delta_e / gain)``: integer frames are corrected by ``i D1_adu + j D2_adu``.
    delta1_adu_float, delta2_adu_float : numpy.ndarray, shape (n,), float64, adu
        ``delta_e / gain``: float frames.
    sigma_e : numpy.ndarray, shape (n,), float64, electron
        RTN-free read noise.
    log_prior : numpy.ndarray, shape (n, 8), float64
        ``log(P1(i) P2(j))`` of each level (``-inf`` where a state never occurs).
    sigma_j, sigma_w, sigma_ok : numpy.ndarray, shape (n,)
        Sigma coordinates in the threshold table (:meth:`ThresholdTable.sigma_coords`).
    log_prior_centre : numpy.ndarray, shape (n,), float64
        ``log(P1(0) P2(0))``, the central level's (``-inf`` where it never occurs).
    """

    gain_e_per_adu: float
    mu_adu: np.ndarray
    delta1_e: np.ndarray
    delta2_e: np.ndarray
    delta1_adu_int: np.ndarray
    delta2_adu_int: np.ndarray
    delta1_adu_float: np.ndarray
    delta2_adu_float: np.ndarray
    sigma_e: np.ndarray
    log_prior: np.ndarray
    sigma_j: np.ndarray
    sigma_w: np.ndarray
    sigma_ok: np.ndarray
    log_prior_centre: np.ndarray

    @property
    def n(self) -> int:
        """Number of two-trap pixels."""
        return int(self.mu_adu.size)

    @classmethod
    def from_arrays(cls, mu_adu, delta1_e, delta2_e, sigma_e, gain_e_per_adu: float, table: ThresholdTable,
                    frac_lo=0.05, frac_hi=0.05, frac2_lo=0.05, frac2_hi=0.05) -> TwoTrapParams:
        """Prepare the parameters of n pixels.

        Parameters
        ----------
        mu_adu, delta1_e, delta2_e, sigma_e : array_like, shape (n,)
            Central level (adu), jumps (electron, finite, >= 0) and RTN-free read noise (electron).
        gain_e_per_adu : float, > 0
        table : ThresholdTable
        frac_lo, frac_hi, frac2_lo, frac2_hi : array_like, shape (n,) or scalar, in [0, 1]
            Side-state fractions of trap 1 (jump ``delta1_e``) and trap 2; each trap's two sum to <= 1.

        Raises
        ------
        ValueError
            A shape that is not (n,), a negative or non-finite jump, a gain that is not positive, or a
            fraction outside [0, 1].
        """
        mu = _check_1d("mu_adu", mu_adu)
        n = mu.size
        d1 = _check_1d("delta1_e", delta1_e, n)
        d2 = _check_1d("delta2_e", delta2_e, n)
        sigma = _check_1d("sigma_e", sigma_e, n)
        for name, d in (("delta1_e", d1), ("delta2_e", d2)):
            if not np.all(np.isfinite(d) & (d >= 0)):
                raise ValueError(f"{name} must be finite and >= 0 (electron)")
        g = float(gain_e_per_adu)
        if not (np.isfinite(g) and g > 0):
            raise ValueError(f"gain_e_per_adu must be positive, got {gain_e_per_adu!r}")
        fracs = {}
        for name, value in (("frac_lo", frac_lo), ("frac_hi", frac_hi), ("frac2_lo", frac2_lo),
                            ("frac2_hi", frac2_hi)):
            f = np.broadcast_to(np.asarray(value, dtype=np.float64), (n,)) if np.ndim(value) == 0 else \
                _check_1d(name, value, n)
            if not np.all((f >= 0) & (f <= 1)):
                raise ValueError(f"{name} must lie in [0, 1]")
            fracs[name] = f
        p1 = np.stack([fracs["frac_lo"], 1.0 - fracs["frac_lo"] - fracs["frac_hi"], fracs["frac_hi"]], axis=1)
        p2 = np.stack([fracs["frac2_lo"], 1.0 - fracs["frac2_lo"] - fracs["frac2_hi"], fracs["frac2_hi"]], axis=1)
        if np.any(p1[:, 1] < -1e-12) or np.any(p2[:, 1] < -1e-12):
            raise ValueError("frac_lo + frac_hi and frac2_lo + frac2_hi must each be <= 1")
        with np.errstate(divide="ignore"):
            log_prior = np.log(np.maximum(p1[:, LEVEL_I + 1], 0.0) * np.maximum(p2[:, LEVEL_J + 1], 0.0))
            log_prior_centre = np.log(np.maximum(p1[:, 1], 0.0) * np.maximum(p2[:, 1], 0.0))
        j, w, ok = table.sigma_coords(sigma)
        return cls(gain_e_per_adu=g, mu_adu=mu.copy(), delta1_e=d1.copy(), delta2_e=d2.copy(),
                   delta1_adu_int=np.rint(d1 / g).astype(np.int64), delta2_adu_int=np.rint(d2 / g).astype(np.int64),
                   delta1_adu_float=d1 / g, delta2_adu_float=d2 / g, sigma_e=sigma.copy(), log_prior=log_prior,
                   sigma_j=j, sigma_w=w, sigma_ok=ok, log_prior_centre=log_prior_centre)


def level_offsets_e(delta1_e: np.ndarray, delta2_e: np.ndarray) -> np.ndarray:
    """Offsets ``i D1 + j D2`` of the eight jump levels from the central level.

    Parameters
    ----------
    delta1_e, delta2_e : numpy.ndarray, shape (n,), float64, electron

    Returns
    -------
    numpy.ndarray, shape (n, 8), float64, electron
        In the order of :data:`LEVEL_I`, :data:`LEVEL_J`.
    """
    return LEVEL_I * delta1_e[:, None] + LEVEL_J * delta2_e[:, None]


def decide_two_trap(x_adu: np.ndarray, lam_e: np.ndarray, params: TwoTrapParams, table: ThresholdTable,
                    beat_centre: bool = False) -> np.ndarray:
    """Level of every two-trap pixel's signal (module docstring: the rules).

    Parameters
    ----------
    x_adu : numpy.ndarray, shape (n,), float64, adu
        Pixel values in this frame.
    lam_e : numpy.ndarray, shape (n,), float64, electron, >= 0
        Expected photo-electrons from the reference.
    params : TwoTrapParams
    table : ThresholdTable
    beat_centre : bool
        The temporal reference's rule: a level of a pixel with ``D2 > 0`` is a candidate only when its score
        is above the centre's, ``log P1(0) P2(0) - z0^2 / 2`` with ``z0 = (s - lambda) / sqrt(sigma^2 +
        lambda)`` (pixels with ``D2 = 0`` are decided as without it).

    Returns
    -------
    numpy.ndarray, shape (n,), uint8
        ``TT_NONE``, ``k + 1`` for level index k (correct by its offset), or ``TT_OUT_OF_TABLE``.

    Raises
    ------
    ValueError
        ``x_adu`` or ``lam_e`` not of shape (n,).
    """
    x = _check_1d("x_adu", x_adu, params.n)
    lam = _check_1d("lam_e", lam_e, params.n)
    s = (x - params.mu_adu) * params.gain_e_per_adu
    q_lo, q_hi, in_table = table.lookup(lam, params.sigma_j, params.sigma_w)
    offs = level_offsets_e(params.delta1_e, params.delta2_e)
    lo = q_lo[:, None] + offs
    hi = q_hi[:, None] + offs
    sc = s[:, None]
    candidate = (lo < sc) & (sc < hi) & ((s < q_lo) | (s > q_hi))[:, None]
    candidate &= np.where(offs < 0, (lam[:, None] - q_lo[:, None]) < -offs,
                          np.where(offs > 0, (q_hi[:, None] - lam[:, None]) < offs, False))
    width = np.sqrt(params.sigma_e * params.sigma_e + lam)
    signal = s - lam
    z = (signal[:, None] - offs) / width[:, None]
    score = params.log_prior - 0.5 * (z * z)
    if beat_centre:
        z0 = signal / width
        centre = params.log_prior_centre - 0.5 * (z0 * z0)
        candidate &= (score > centre[:, None]) | (params.delta2_e == 0.0)[:, None]
    best = np.max(np.where(candidate, score, -np.inf), axis=1)
    chosen = candidate & (score == best[:, None])  # the first of these, in level order
    state = np.where(candidate.any(axis=1), np.argmax(chosen, axis=1) + 1, TT_NONE).astype(np.uint8)
    state[~(in_table & params.sigma_ok)] = TT_OUT_OF_TABLE
    return state


def log_by_roots(x: np.ndarray) -> np.ndarray:
    """Natural logarithm by square roots and a rational series: what the CUDA header can compute bit for bit.

    ``r = x^(1/64)`` by six square roots, ``y = (r - 1) / (r + 1)``, ``ln x = 128 (y + y^3/3 + y^5/5 + y^7/7)``
    (Horner form). Within 1e-8 of ``numpy.log`` for x in [1e-3, 1e5] (there ``|y| < 0.09``: the first
    omitted term, ``128 y^9 / 9``, stays below 1e-8).

    Parameters
    ----------
    x : numpy.ndarray, float64, > 0

    Returns
    -------
    numpy.ndarray, float64, same shape
    """
    r = np.array(x, dtype=np.float64, ndmin=1)  # a copy: worked on in place
    for _ in range(6):
        np.sqrt(r, out=r)
    y = r - 1.0
    np.divide(y, np.add(r, 1.0, out=r), out=y)
    y2 = np.multiply(y, y, out=r)
    acc = y2 * (1.0 / 7.0)  # Horner form, innermost first
    for c in (1.0 / 5.0, 1.0 / 3.0):
        acc += c
        acc *= y2
    acc += 1.0
    acc *= y
    acc *= 128.0
    return acc.reshape(np.shape(x))


def _best_levels(r_e: np.ndarray, pix: np.ndarray | None, lam_e: np.ndarray, var_e2: np.ndarray, offs9: np.ndarray,
                 lp9: np.ndarray, chunk_values: int, with_offsets: bool = False, floor: np.ndarray | None = None
                 ) -> tuple[np.ndarray, np.ndarray | None]:
    """Each window value's most probable level (centre first, strict > in level order) in m columns.

    Column c is pixel ``pix[c]`` (all n pixels in order where ``pix`` is None) under ``lam_e[c]``,
    ``var_e2[c]`` (m,). ``r_e`` (W, n): ``(v - mu) g``; ``offs9``, ``lp9`` (9, n): the centre's (offset 0)
    and the eight levels' offsets (electron) and log priors. A value's level score is
    ``lp_k - 0.5 (((r - lambda) - L_k)^2 / var)``. Returns each column's sum of its best scores over the
    window, in window order, (m,), and with ``with_offsets`` the best levels' offsets (W, m), else None.
    With ``floor`` (m,), at least the largest log prior of the eight levels, only the centre is scored and
    the sums are of ``max(centre score, floor)``: at least the sums of the best scores, rounding being
    monotonic (NaN where the centre's score is). Columns go in chunks of about ``chunk_values`` values.

    The running maximum is ``numpy.fmax``, the strict-> chain's value (a NaN score never wins) except where
    the centre's score is NaN, which nothing beats: the centre is put back there.
    """
    w = r_e.shape[0]
    m = r_e.shape[1] if pix is None else pix.size
    cols = max(1, min(chunk_values // w, m))
    res, best, score = (np.empty(w * cols) for _ in range(3))
    better = np.empty(w * cols, dtype=bool)
    level = np.empty((2, w * cols), dtype=np.uint8)
    total = np.empty(m)
    offsets = np.empty((w, m)) if with_offsets else None
    for a in range(0, m, cols):
        b = min(a + cols, m)
        c = slice(a, b) if pix is None else pix[a:b]
        k = b - a
        res_c, best_c, score_c, better_c = (x[:w * k].reshape(w, k) for x in (res, best, score, better))
        var = var_e2[a:b]
        offs, lps = (x[:, c] if pix is None else np.take(x, c, axis=1) for x in (offs9, lp9))  # (9, k), C order
        if pix is None:
            np.subtract(r_e[:, c], lam_e[a:b], out=res_c)
        else:
            np.take(r_e, c, axis=1, out=res_c, mode="clip")  # valid indices: "clip" writes out directly
            np.subtract(res_c, lam_e[a:b], out=res_c)
        np.multiply(res_c, res_c, out=best_c)  # the centre: res - 0 is res
        np.divide(best_c, var, out=best_c)
        np.multiply(best_c, 0.5, out=best_c)
        np.subtract(lps[0], best_c, out=best_c)
        if floor is not None:
            np.maximum(best_c, floor[a:b], out=best_c)
        else:
            nan_centre = np.isnan(best_c)
            centre = best_c[nan_centre] if nan_centre.any() else None
            if with_offsets:
                index, step = (x[:w * k].reshape(w, k) for x in level)
                index.fill(0)
            for lv in range(1, N_LEVELS + 1):
                np.subtract(res_c, offs[lv], out=score_c)
                np.multiply(score_c, score_c, out=score_c)
                np.divide(score_c, var, out=score_c)
                np.multiply(score_c, 0.5, out=score_c)
                np.subtract(lps[lv], score_c, out=score_c)
                if with_offsets:  # levels rise: the last one better than all before it is the index
                    np.greater(score_c, best_c, out=better_c)
                    np.multiply(better_c.view(np.uint8), lv, out=step)
                    np.maximum(index, step, out=index)
                np.fmax(best_c, score_c, out=best_c)
            if centre is not None:  # the other levels' scores are then -inf or NaN: the index stays 0
                best_c[nan_centre] = centre
            if with_offsets:
                flat = index.astype(np.intp)  # into offs9's level-major values
                flat *= offs9.shape[1]
                flat += np.arange(a, b) if pix is None else c
                np.take(offs9.ravel(), flat, out=offsets[:, a:b], mode="clip")
        tot = total[a:b]
        np.copyto(tot, best_c[0])
        for t in range(1, w):
            tot += best_c[t]
    return total, offsets


def temporal_lambda_two_trap(window_adu: np.ndarray, params: TwoTrapParams, chunk_values: int = 1 << 16
                             ) -> tuple[np.ndarray, np.ndarray]:
    """Expected photo-electrons of two-trap pixels from a temporal window, and the window's de-jumped spread.

    The window median ``m = (median - mu) g`` may sit at any of the nine levels ``L_h`` (the centre
    ``L_0 = 0`` first, then the eight levels in :data:`LEVEL_I` order). For each hypothesis h,
    ``lambda_h = max(0, m - L_h)`` and ``var_h = sigma^2 + lambda_h``; every window value ``r = (v - mu) g``
    gets its most probable level, the largest ``log P_k - ((r - lambda_h) - L_k)^2 / (2 var_h)``, and the
    hypothesis scores the sum of those over the window minus ``(W / 2) ln var_h`` (:func:`log_by_roots`).
    The largest score wins (the first in order on ties); its ``lambda_h`` is returned, with the standard
    deviation (ddof = 0) of the window values moved to the centre by their levels under it,
    ``u = (v - mu) g - L_k``, for the variability veto (``spread > k_var sqrt(lambda + RN^2)``; the raw
    window's spread counts the trap's own jumps as variability). Sums run in window order.

    Hypotheses that cannot win are not scored in full: one whose ``lambda_h`` equals an earlier one's (its
    score, a function of ``lambda_h`` alone, is the same; every level at or above the median gives 0), and
    one whose upper bound is not above the centre hypothesis's score. The bounds take each value's score
    at most its level's log prior, then at most the larger of its centre score and the largest other log
    prior (rounding is monotonic). Results are those of scoring all nine, bit for bit, whatever
    ``chunk_values``.

    Parameters
    ----------
    window_adu : numpy.ndarray, shape (W, n), adu, finite
        The reference window's values (W >= 2 frames, the frame being corrected excluded).
    params : TwoTrapParams
    chunk_values : int, >= 1
        Window values scored at once: larger chunks take fewer NumPy calls, smaller ones less memory
        (a few float64 arrays of this size); the results do not depend on it.

    Returns
    -------
    lam_e : numpy.ndarray, shape (n,), float64, electron, >= 0
    spread_e : numpy.ndarray, shape (n,), float64, electron

    Raises
    ------
    ValueError
        ``window_adu`` not of shape (W, n) with W >= 2, or ``chunk_values`` < 1.
    """
    v = np.asarray(window_adu, dtype=np.float64)
    if v.ndim != 2 or v.shape[1] != params.n or v.shape[0] < 2:
        raise ValueError(f"window_adu must have shape (W, {params.n}) with W >= 2, got {v.shape}")
    if chunk_values < 1:
        raise ValueError(f"chunk_values must be >= 1, got {chunk_values!r}")
    w, n = v.shape
    ordered = np.sort(v, axis=0)
    median = (ordered[(w - 1) // 2] + ordered[w // 2]) * 0.5
    g = params.gain_e_per_adu
    m = (median - params.mu_adu) * g
    r = (v - params.mu_adu) * g
    offs9, lp9 = np.empty((N_LEVELS + 1, n)), np.empty((N_LEVELS + 1, n))  # C order: rows are levels
    offs9[0] = 0.0
    offs9[1:] = level_offsets_e(params.delta1_e, params.delta2_e).T
    lp9[0] = params.log_prior_centre
    lp9[1:] = params.log_prior.T
    s2 = params.sigma_e * params.sigma_e
    lam9 = m - offs9
    lam9 = np.where(lam9 > 0.0, lam9, 0.0)  # never NaN, never -0.0: == is bitwise equality
    var0 = s2 + lam9[0]
    scores = np.full((N_LEVELS + 1, n), -np.inf)  # a hypothesis not scored cannot win: -inf never does
    total0, off = _best_levels(r, None, lam9[0], var0, offs9, lp9, chunk_values, with_offsets=True)
    scores[0] = total0 - (0.5 * w) * log_by_roots(var0)
    fresh = np.empty((N_LEVELS, n), dtype=bool)
    for h in range(1, N_LEVELS + 1):
        np.any(lam9[h] == lam9[:h], axis=0, out=fresh[h - 1])
    hyp, pix = np.nonzero(~fresh)  # (hypothesis - 1, pixel) pairs of new lambdas
    hyp += 1
    lam_p = lam9[hyp, pix]
    var_p = s2[pix] + lam_p
    log_term = (0.5 * w) * log_by_roots(var_p)
    top = lp9.max(axis=0)
    bound = top.copy()  # each value's best score at its largest, summed as the scores are
    for _ in range(1, w):
        bound += top
    keep = np.flatnonzero(bound[pix] - log_term > scores[0, pix])
    hyp, pix, lam_p, var_p, log_term = hyp[keep], pix[keep], lam_p[keep], var_p[keep], log_term[keep]
    bound, _ = _best_levels(r, pix, lam_p, var_p, offs9, lp9, chunk_values, floor=lp9[1:].max(axis=0)[pix])
    keep = np.flatnonzero(bound - log_term > scores[0, pix])
    hyp, pix, lam_p, var_p, log_term = hyp[keep], pix[keep], lam_p[keep], var_p[keep], log_term[keep]
    total, offsets = _best_levels(r, pix, lam_p, var_p, offs9, lp9, chunk_values, with_offsets=True)
    scores[hyp, pix] = total - log_term
    column = np.zeros((N_LEVELS + 1, n), dtype=np.intp)
    column[hyp, pix] = np.arange(pix.size)  # where each scored pair's offsets are
    won, top = np.zeros(n, dtype=np.intp), scores[0]
    for h in range(1, N_LEVELS + 1):
        win = scores[h] > top
        won[win] = h
        top = np.where(win, scores[h], top)
    moved = np.flatnonzero(won)  # a scored hypothesis beat the centre's: its levels
    off[:, moved] = offsets[:, column[won[moved], moved]]
    lam = lam9[won, np.arange(n)]
    u = r - off
    mean = u[0].copy()
    for t in range(1, w):
        mean += u[t]
    mean /= w
    d = u - mean
    acc = d[0] * d[0]
    for t in range(1, w):
        acc += d[t] * d[t]
    acc /= w
    return lam, np.sqrt(acc)


def _level_states(state: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pixels with a correction, and their trap states i, j (int64)."""
    changed = np.flatnonzero((state >= 1) & (state <= N_LEVELS))
    k = state[changed].astype(np.int64) - 1
    return changed, LEVEL_I[k].astype(np.int64), LEVEL_J[k].astype(np.int64)


def correction_adu(state: np.ndarray, params: TwoTrapParams, integer: bool) -> np.ndarray:
    """Amount added to each pixel: ``-(i D1_adu + j D2_adu)`` of its level, 0 where unchanged.

    Parameters
    ----------
    state : numpy.ndarray, shape (n,), uint8
        From :func:`decide_two_trap`.
    params : TwoTrapParams
    integer : bool
        Integer frames (``delta*_adu_int``, int64 result) or float frames (``delta*_adu_float``, float64).

    Returns
    -------
    numpy.ndarray, shape (n,), int64 or float64, adu
    """
    changed, i, j = _level_states(state)
    if integer:
        out = np.zeros(params.n, dtype=np.int64)
        out[changed] = -(i * params.delta1_adu_int[changed] + j * params.delta2_adu_int[changed])
    else:
        out = np.zeros(params.n, dtype=np.float64)
        out[changed] = -(i * params.delta1_adu_float[changed] + j * params.delta2_adu_float[changed])
    return out


def apply_two_trap(x_native: np.ndarray, state: np.ndarray, params: TwoTrapParams) -> np.ndarray:
    """Corrected values of the two-trap pixels: ``x - (i D1_adu + j D2_adu)``, saturating on integers.

    Parameters
    ----------
    x_native : numpy.ndarray, shape (n,), frame dtype (integer or float)
        The pixels' values (not modified).
    state : numpy.ndarray, shape (n,), uint8
    params : TwoTrapParams

    Returns
    -------
    numpy.ndarray, shape (n,), frame dtype
        Integer frames: the int64 difference clipped to the dtype's range (never wrapping); float frames:
        ``(double)x - (i D1_adu + j D2_adu)`` in float64, cast back.
    """
    out = np.array(x_native, copy=True)
    changed, i, j = _level_states(state)
    if changed.size == 0:
        return out
    if np.issubdtype(out.dtype, np.integer):
        info = np.iinfo(out.dtype)
        offset = i * params.delta1_adu_int[changed] + j * params.delta2_adu_int[changed]
        new = np.clip(out[changed].astype(np.int64) - offset, info.min, info.max)
    else:
        offset = i * params.delta1_adu_float[changed] + j * params.delta2_adu_float[changed]
        new = out[changed].astype(np.float64) - offset
    out[changed] = new.astype(out.dtype)
    return out


def level_counts(state: np.ndarray) -> np.ndarray:
    """One frame's corrections per level: shape (n, 8), int64 (add them up over a series)."""
    state = np.asarray(state)
    return (state[:, None] == np.arange(1, N_LEVELS + 1)[None, :]).astype(np.int64)


def two_trap_offset_map(counts: np.ndarray, n_frames: np.ndarray, params: TwoTrapParams, integer: bool = True
                        ) -> np.ndarray:
    """Bias offset of each two-trap pixel (ALGORITHM.md section 5 over the combined levels).

    ``O = -sum_k n_k (i_k D1_adu + j_k D2_adu) / n_frames``: the mean of the corrections made, which on a
    bias series with every jump caught turns the mixture-mean bias into the central level ``mu``.

    Parameters
    ----------
    counts : numpy.ndarray, shape (n, 8), int64
        Corrections made per level over the series (sum of :func:`level_counts`).
    n_frames : numpy.ndarray, shape (n,), int64
        Frames seen per pixel.
    params : TwoTrapParams
    integer : bool
        Offsets of integer frames (``delta*_adu_int``) or of float frames.

    Returns
    -------
    numpy.ndarray, shape (n,), float64, adu
        0 where no frame was seen.

    Raises
    ------
    ValueError
        ``counts`` not of shape (n, 8) or ``n_frames`` not of shape (n,).
    """
    counts = np.asarray(counts)
    if counts.shape != (params.n, N_LEVELS):
        raise ValueError(f"counts must have shape ({params.n}, {N_LEVELS}), got {counts.shape}")
    n_frames = np.asarray(n_frames)
    if n_frames.shape != (params.n,):
        raise ValueError(f"n_frames must have shape ({params.n},), got {n_frames.shape}")
    d1 = params.delta1_adu_int if integer else params.delta1_adu_float
    d2 = params.delta2_adu_int if integer else params.delta2_adu_float
    per_level = -(LEVEL_I * d1[:, None].astype(np.float64) + LEVEL_J * d2[:, None].astype(np.float64))
    total = (counts * per_level).sum(axis=1)
    return np.where(n_frames > 0, total / np.maximum(n_frames, 1), 0.0)
