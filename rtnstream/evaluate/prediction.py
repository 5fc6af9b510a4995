"""What correction and masking should do to each star's SNR, from the calibration cube alone.

The noise a corrected RTN pixel keeps follows from the engine's own decision rule (ALGORITHM.md sections 2-3)
applied to the pixel model of section 1 with the cube's parameters: :func:`corrected_variance` gives, for a
pixel at a mean signal ``lambda``, the variance and mean shift of its corrected values, with the jumps the
windows miss, the central values they wrongly move, the scatter of the temporal reference (the median of W
frames) and the variability veto. Section 6.5's line (RN falling linearly to sigma at no signal,
:func:`rtnstream.calibration.fit.predicted_read_noise`) is a cruder summary of the same rule: it ignores the
reference and the veto, which cost noise at no signal, and calls a pixel half uncorrected at half its
``lambda_max`` where the windows still catch most of its jumps; against the engine it is up to 2x
pessimistic in the corrected excess variance at 1-6 e- (docs/evaluate.md, bench/evaluate.py).

:func:`predict_gains` applies the per-pixel variances to each star's aperture, with the signal every pixel sees
in the series (the median frame), and gives the SNR ratios corrected / raw, masked / raw and no-RTN / raw (the
ideal). :func:`monte_carlo` is the RTN paper's Monte Carlo (its Fig. 6): a Gaussian PSF at a random
sub-pixel position on pixels that have RTN with a given probability, their parameters drawn from the cube's
RTN pixels, an aperture of radius FWHM; SNR ratios against flux.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
from scipy.special import gammaln, ndtr, xlogy

from rtnstream.evaluate.photometry import ANNULUS_FWHM
from rtnstream.kernels.cube import RTNCube
from rtnstream.kernels.engine import EngineSettings
from rtnstream.kernels.lut import ThresholdTable, get_table

__all__ = ["PixelNoise", "corrected_variance", "predict_gains", "monte_carlo"]

#: draws of the temporal reference window per pixel (their mean; the prediction is deterministic by its seed)
REFERENCE_DRAWS = 32
#: RTN pixels per block of :func:`corrected_variance` (bounds its temporaries to some 100 MB)
_BLOCK = 256
_INV_SQRT_2PI = 1.0 / np.sqrt(2.0 * np.pi)


@dataclass
class PixelNoise:
    """Read noise and RTN model of every pixel of a frame as the cube gives it.

    Attributes
    ----------
    rn_e : numpy.ndarray, shape (ny, nx), electron
        Total read noise (READNOISE).
    sigma_e : numpy.ndarray, shape (ny, nx), electron
        RTN-free read noise: SIGMA at RTN pixels, READNOISE elsewhere.
    delta_e : numpy.ndarray, shape (ny, nx), electron
        Jump size at RTN pixels, 0 elsewhere.
    frac_lo, frac_hi : numpy.ndarray, shape (ny, nx)
        Fractions of frames in the low and high state at RTN pixels, 0 elsewhere.
    rtn : numpy.ndarray, shape (ny, nx), bool
        RTN pixels of the cube (the pixels the engine corrects and masking leaves out).
    """

    rn_e: np.ndarray
    sigma_e: np.ndarray
    delta_e: np.ndarray
    frac_lo: np.ndarray
    frac_hi: np.ndarray
    rtn: np.ndarray

    @classmethod
    def from_cube(cls, cube: RTNCube) -> PixelNoise:
        rtn = np.asarray(cube.rtn_mask, bool)
        rn = np.asarray(cube.readnoise_e, np.float64)
        sigma = np.where(rtn & np.isfinite(cube.sigma_e), cube.sigma_e, rn)

        def rtn_only(a: np.ndarray) -> np.ndarray:
            return np.where(rtn & np.isfinite(a), a, 0.0)

        return cls(rn, sigma, rtn_only(cube.delta_e), rtn_only(cube.frac_lo), rtn_only(cube.frac_hi), rtn)


def corrected_variance(lam_e: np.ndarray, rn_e: np.ndarray, sigma_e: np.ndarray, delta_e: np.ndarray,
                       frac_lo: np.ndarray, frac_hi: np.ndarray, settings: EngineSettings | None = None,
                       n_draws: int = REFERENCE_DRAWS, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Variance and mean shift of an RTN pixel's corrected values at mean signal ``lam_e``.

    The pixel model of ALGORITHM.md section 1 (signal ``s = n + e + j Delta``, ``n`` Poisson(lambda), ``e``
    N(0, sigma^2), state ``j`` = -1, 0, +1 with ``frac_lo``, ``1 - frac_lo - frac_hi``, ``frac_hi``) through the
    decision of section 3 at the threshold table of ``settings.alpha``. The expected signal the decision uses
    is the temporal reference (section 2): ``n_draws`` windows of W frames of the same pixel are drawn
    (seeded), each gives ``lambda_ref = max(0, median)`` and the variability veto (window spread above
    ``k_var sqrt(lambda_ref + RN^2)``: the pixel left unchanged); for each window the moments of the corrected
    value follow in closed form (a Gaussian's truncated moments over the low and high windows, summed over
    the Poisson terms). The spatial reference is taken as knowing ``lambda`` exactly (no draws, no veto).
    Pixels whose ``lambda`` lies beyond the table are not corrected (variance ``lambda + RN^2``).

    Parameters
    ----------
    lam_e : numpy.ndarray, shape (n,), electron/pixel/frame, >= 0
        Mean signal of each pixel.
    rn_e : numpy.ndarray, shape (n,), electron
        Total read noise of each pixel (the variance of its raw values is ``lam_e + rn_e^2``).
    sigma_e, delta_e : numpy.ndarray, shape (n,), electron
    frac_lo, frac_hi : numpy.ndarray, shape (n,)
    settings : EngineSettings, optional
        The engine's reference, window, alpha and k_var (default: the defaults).
    n_draws : int
        Reference windows drawn per pixel.
    seed : int

    Returns
    -------
    variance_e2 : numpy.ndarray, shape (n,), electron^2
        Variance of the corrected values: ``lam_e + rn_e^2`` plus the change the correction makes to the
        model's variance.
    shift_e : numpy.ndarray, shape (n,), electron
        Mean of corrected less mean of raw values (what the bias offset map removes).
    """
    settings = settings or EngineSettings()
    lam, rn, sigma, delta, flo, fhi = (np.asarray(a, np.float64).reshape(-1)
                                       for a in (lam_e, rn_e, sigma_e, delta_e, frac_lo, frac_hi))
    if not all(a.size == lam.size for a in (rn, sigma, delta, flo, fhi)):
        raise ValueError("lam_e, rn_e, sigma_e, delta_e, frac_lo and frac_hi must have the same size")
    if np.any(~np.isfinite(lam) | (lam < 0)):
        raise ValueError("lam_e must be finite and >= 0")
    table = get_table(settings.alpha)
    var = lam + rn**2
    shift = np.zeros(lam.size)
    todo = np.flatnonzero((lam <= table.lambda_top_e) & (delta > 0))
    todo = todo[np.argsort(lam[todo], kind="stable")]  # blocks of similar lambda share their Poisson terms
    rng = np.random.default_rng(seed)
    for a in range(0, todo.size, _BLOCK):
        k = todo[a : a + _BLOCK]
        if settings.temporal:
            lam_ref, veto = _reference_draws(lam[k], rn[k], sigma[k], delta[k], flo[k], fhi[k], settings,
                                             max(int(n_draws), 1), rng)
        else:
            lam_ref, veto = lam[k][None, :], np.zeros((1, k.size), bool)
        d1, d2 = _correction_moments(lam[k], lam_ref, veto, sigma[k], delta[k], flo[k], fhi[k], table)
        mean_raw = lam[k] + delta[k] * (fhi[k] - flo[k])
        var[k] += d2 - 2.0 * mean_raw * d1 - d1**2
        shift[k] = d1
    return var, shift


def _reference_draws(lam, rn, sigma, delta, flo, fhi, settings: EngineSettings, n_draws: int,
                     rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """(n_draws, k) expected signal the temporal reference gives, and whether the veto fires."""
    shape = (n_draws, settings.window, lam.size)
    u = rng.random(shape)
    state = np.where(u < flo, -1.0, np.where(u < flo + fhi, 1.0, 0.0))
    values = rng.poisson(lam, shape) + sigma * rng.standard_normal(shape) + state * delta
    lam_ref = np.maximum(np.median(values, axis=1), 0.0)
    veto = values.std(axis=1) > settings.k_var * np.sqrt(lam_ref + rn**2)
    return lam_ref, veto


def _correction_moments(lam, lam_ref, veto, sigma, delta, flo, fhi, table: ThresholdTable
                        ) -> tuple[np.ndarray, np.ndarray]:
    """Mean over the reference draws of the change the correction makes to E[s] and E[s^2], shape (k,) each."""
    q_lo, q_hi = table.quantiles(lam_ref, np.broadcast_to(sigma, lam_ref.shape))
    usable = np.isfinite(q_lo) & np.isfinite(q_hi) & ~veto
    q_lo, q_hi = np.nan_to_num(q_lo), np.nan_to_num(q_hi)
    windows = (  # (lower edge, upper edge, sign of the correction): section 3, strict inequalities
        (q_lo - delta, np.minimum(q_lo, q_hi - delta), 1.0, usable & (lam_ref - q_lo < delta)),
        (np.maximum(q_hi, q_lo + delta), q_hi + delta, -1.0, usable & (q_hi - lam_ref < delta)),
    )
    d1 = np.zeros(lam_ref.shape)
    d2 = np.zeros(lam_ref.shape)
    active = np.flatnonzero((windows[0][3] | windows[1][3]).any(axis=0))  # pixels some window can move
    if active.size == 0:
        return d1.mean(axis=0), d2.mean(axis=0)
    lam, sigma, delta, flo, fhi = (a[active] for a in (lam, sigma, delta, flo, fhi))
    windows = tuple((lo[:, active], hi[:, active], sign, ok[:, active]) for lo, hi, sign, ok in windows)
    top, low = lam.max(), lam.min()
    n = np.arange(max(0, int(low - 8 * np.sqrt(low) - 8)), int(np.ceil(top + 8 * np.sqrt(top) + 8)) + 1)
    pn = np.exp(xlogy(n, lam[:, None]) - lam[:, None] - gammaln(n + 1.0))  # Poisson terms, (k, n_terms)
    s = sigma[None, :, None]
    dd = delta[None, :, None]
    for j, p_j in ((-1.0, flo), (0.0, 1.0 - flo - fhi), (1.0, fhi)):
        m = n[None, None, :] + j * dd  # (1, k, n_terms): the Gaussian's centre
        w = (p_j[:, None] * pn)[None]
        for lo_edge, hi_edge, sign, ok in windows:
            za = (lo_edge[:, :, None] - m) / s
            zb = (hi_edge[:, :, None] - m) / s
            inside = ok[:, :, None] & (zb > za)
            prob = np.where(inside, ndtr(zb) - ndtr(za), 0.0)
            first = np.where(inside, m * prob + s * _INV_SQRT_2PI * (np.exp(-0.5 * za * za)
                                                                      - np.exp(-0.5 * zb * zb)), 0.0)
            d1[:, active] += sign * delta * (w * prob).sum(axis=2)
            d2[:, active] += (w * (sign * 2.0 * dd * first + dd**2 * prob)).sum(axis=2)
    return d1.mean(axis=0), d2.mean(axis=0)


def predict_gains(apertures, signal_e: np.ndarray, noise: PixelNoise, settings: EngineSettings | None = None
                  ) -> dict[str, np.ndarray]:
    """Predicted SNR of each star's raw, corrected, masked and RTN-free photometry.

    Noise of an aperture sum: ``sum w^2 v_p`` over the aperture's exact-overlap weights ``w``, plus the
    background median's error ``A^2 (pi / 2) v / n`` (``A`` the aperture area, ``v`` the median pixel variance
    in the annulus, ``n`` its pixels). Raw: ``v_p = lambda + RN_p^2``; corrected: RTN pixels'
    :func:`corrected_variance` at their ``lambda``; no-RTN: ``lambda + sigma^2``; masked: raw, RTN pixels left
    out of aperture and annulus. Signal: the aperture sum of the star's light (``lambda`` less the annulus
    median).

    Parameters
    ----------
    apertures : rtnstream.evaluate.photometry.Apertures
        The stars; its excluded pixels must be ``noise.rtn``.
    signal_e : numpy.ndarray, shape (ny, nx), electron/pixel/frame
        Mean signal of each pixel (stars and sky, bias removed), e.g. the series' median frame.
    noise : PixelNoise
    settings : EngineSettings, optional
        The settings the frames are corrected with (default: the defaults).

    Returns
    -------
    dict of numpy.ndarray, shape (n_stars,)
        ``snr_raw``, ``snr_corrected``, ``snr_masked``, ``snr_ideal`` (per frame) and ``gain_corrected``,
        ``gain_masked``, ``gain_ideal`` (SNR ratios to raw).
    """
    if np.shape(signal_e) != apertures.shape:
        raise ValueError(f"signal_e must have shape {apertures.shape}, got {np.shape(signal_e)}")
    # only the pixels of apertures and annuli
    lam = np.maximum(apertures.gather(signal_e), 0.0)
    rn, sigma = apertures.gather(noise.rn_e), apertures.gather(noise.sigma_e)
    raw = lam + rn**2
    corrected = raw.copy()
    rtn = np.flatnonzero(apertures.gather(noise.rtn) > 0)
    corrected[rtn] = corrected_variance(lam[rtn], rn[rtn], sigma[rtn], *(apertures.gather(a)[rtn] for a in (
        noise.delta_e, noise.frac_lo, noise.frac_hi)), settings=settings)[0]
    pix_var = {"raw": raw, "corrected": corrected, "ideal": lam + sigma**2}
    out: dict[str, np.ndarray] = {}
    for name, var in pix_var.items():
        out[f"snr_{name}"] = _snr(apertures, lam, var, False)
    out["snr_masked"] = _snr(apertures, lam, pix_var["raw"], True)
    for name in ("corrected", "masked", "ideal"):
        with np.errstate(divide="ignore", invalid="ignore"):
            out[f"gain_{name}"] = out[f"snr_{name}"] / out["snr_raw"]
    return out


def _snr(apertures, lam: np.ndarray, var: np.ndarray, masked: bool) -> np.ndarray:
    """SNR of each star from gathered signal and variance (n_pixels,)."""
    w = apertures.weights_masked if masked else apertures.weights
    area = apertures.area_masked_px if masked else apertures.area_px
    n_ann = apertures.annulus_size_masked if masked else apertures.annulus_size
    signal = apertures.fluxes_of(lam, masked=masked)
    ap_var = w.multiply(w) @ var
    bkg_var = area**2 * (np.pi / 2) * apertures.background_of(var, masked) / np.maximum(n_ann, 1)
    with np.errstate(divide="ignore", invalid="ignore"):
        return signal / np.sqrt(ap_var + bkg_var)


#: RTN pixels of the cube whose corrected variance the Monte Carlo tabulates (drawn at random, seeded)
POPULATION_PIXELS = 256
#: Largest PSF FWHM of the Monte Carlo, pixel: its stamps grow as FWHM^2 per trial (50 px: a few MB each;
#: 1e4 px would need some 150 GiB); a wider PSF is outside what the Monte Carlo is for.
MAX_FWHM_PX = 50.0
#: signal nodes of that table, electron/pixel/frame (quadratic spacing up to the threshold table's top)
_MC_LAMBDA_NODES = 48


def _population(cube: RTNCube, settings: EngineSettings | None, rng: np.random.Generator):
    """A sample of the cube's RTN pixels (rn, sigma, their corrected excess variance over a signal grid) and
    the read noise of its other pixels."""
    noise = PixelNoise.from_cube(cube)
    rtn = noise.rtn
    if not rtn.any():
        raise ValueError("the cube has no RTN pixels: nothing to predict")
    clean = noise.rn_e[~rtn]
    clean = clean[np.isfinite(clean)] if clean.size else noise.sigma_e[rtn]
    pick = rng.choice(int(rtn.sum()), min(POPULATION_PIXELS, int(rtn.sum())), replace=False)
    rn, sigma, delta, flo, fhi = (a[rtn][pick] for a in (noise.rn_e, noise.sigma_e, noise.delta_e, noise.frac_lo,
                                                          noise.frac_hi))
    top = get_table((settings or EngineSettings()).alpha).lambda_top_e
    nodes = top * np.linspace(0.0, 1.0, _MC_LAMBDA_NODES) ** 2
    lam = np.repeat(nodes, rn.size)
    var, _ = corrected_variance(lam, *(np.tile(a, nodes.size) for a in (rn, sigma, delta, flo, fhi)),
                                settings=settings)
    excess = (var - lam - np.tile(rn, nodes.size) ** 2).reshape(nodes.size, rn.size)  # (nodes, pixels)
    return rn, sigma, nodes, excess, clean


def monte_carlo(cube: RTNCube, fwhm_px: float, flux_e: Sequence[float] | np.ndarray,
                rtn_fraction: float | None = None, sky_e: float = 0.0, n_trials: int = 2000, seed: int = 0,
                psf_sampling: Literal["integrated", "centre"] = "integrated", background_error: bool = True,
                settings: EngineSettings | None = None) -> dict[str, np.ndarray | float]:
    """The RTN paper's Monte Carlo of correction against masking against the no-RTN ideal (its Fig. 6).

    Each trial puts a Gaussian PSF at a random sub-pixel position; every pixel has RTN with probability
    ``rtn_fraction``, its parameters drawn from (a sample of :data:`POPULATION_PIXELS` of) the cube's RTN
    pixels, the read noise of the others from the cube's other pixels. Aperture: radius FWHM, exact overlap
    (photutils); noise per pixel ``lambda + RN^2`` raw, :func:`corrected_variance` corrected (interpolated in
    ``lambda`` on a grid of the sample), ``lambda`` the star's light plus ``sky_e``; plus, as in
    :func:`predict_gains`, the error of the median background of an annulus from 2 to 3 FWHM,
    ``A^2 (pi / 2) v / n`` (``A`` the aperture's area, ``v`` the sky plus the median read noise squared of the
    cube's other pixels, ``n`` the annulus' pixels, less the RTN pixels for masking), unless
    ``background_error`` is False (the paper's model).

    Parameters
    ----------
    cube : RTNCube
    fwhm_px : float
        PSF FWHM, pixel, in (0, :data:`MAX_FWHM_PX`].
    flux_e : sequence of float, shape (m,)
        Total source flux per frame, electron (> 0).
    rtn_fraction : float in [0, 1], optional
        Probability that a pixel has RTN; default: the cube's fraction.
    sky_e : float
        Sky, electron/pixel/frame.
    n_trials : int
    seed : int
    psf_sampling : {'integrated', 'centre'}
        The PSF integrated over each pixel (real optics), or its value at the pixel centre times the pixel area
        (how :class:`rtnstream.kernels.simulate.Scene` draws stars).
    background_error : bool
        Include the background median's error (what ``evaluate`` measures) or not (the paper's Monte Carlo).
    settings : EngineSettings, optional
        The correction's settings (default: the defaults).

    Returns
    -------
    dict
        ``flux_e`` (m,), ``fwhm_px``, ``rtn_fraction``, ``sky_e``, ``n_trials``, ``psf_sampling``, and for each
        of ``corrected``, ``masked``, ``ideal``: ``gain_<name>_median``, ``gain_<name>_q25``,
        ``gain_<name>_q75``, ``gain_<name>_mean`` (m,) (SNR ratio to raw), plus ``masked_worse_fraction`` (m,)
        (trials where masking lowers the SNR).
    """
    from photutils.aperture import CircularAperture

    if not np.isfinite(fwhm_px) or fwhm_px <= 0:
        raise ValueError(f"fwhm_px must be a positive number, got {fwhm_px!r}")
    if fwhm_px > MAX_FWHM_PX:
        raise ValueError(f"fwhm_px (--fwhm) must be at most {MAX_FWHM_PX:g} px for the Monte Carlo, got {fwhm_px:.6g}")
    flux = np.asarray(flux_e, dtype=np.float64).reshape(-1)
    if flux.size == 0 or not np.all(np.isfinite(flux) & (flux > 0)):
        raise ValueError("flux_e must be positive numbers")
    if not np.isfinite(sky_e) or sky_e < 0:
        raise ValueError(f"sky_e must be >= 0, got {sky_e!r}")
    if int(n_trials) < 1:
        raise ValueError(f"n_trials must be >= 1, got {n_trials!r}")
    if psf_sampling not in ("integrated", "centre"):
        raise ValueError(f"psf_sampling must be 'integrated' or 'centre', got {psf_sampling!r}")
    n_trials = int(n_trials)
    frac = float(np.mean(cube.rtn_mask)) if rtn_fraction is None else float(rtn_fraction)
    if not 0 <= frac <= 1:
        raise ValueError(f"rtn_fraction must be in [0, 1], got {rtn_fraction!r}")
    rng = np.random.default_rng(seed)
    rn_pop, sigma_pop, nodes, excess_pop, clean_pop = _population(cube, settings, rng)
    half = int(np.ceil(fwhm_px)) + 2
    size = 2 * half + 1
    s = fwhm_px / (2 * np.sqrt(2 * np.log(2)))
    centre = half + rng.random((n_trials, 2))  # (x, y) in the stamp
    if psf_sampling == "integrated":
        edges = np.arange(size + 1) - 0.5
        cdf_x = ndtr((edges[None, :] - centre[:, 0:1]) / s)
        cdf_y = ndtr((edges[None, :] - centre[:, 1:2]) / s)
        psf = (np.diff(cdf_y, axis=1)[:, :, None] * np.diff(cdf_x, axis=1)[:, None, :]).reshape(n_trials, -1)
    else:
        grid = np.arange(size)
        gx = np.exp(-0.5 * ((grid[None, :] - centre[:, 0:1]) / s) ** 2)
        gy = np.exp(-0.5 * ((grid[None, :] - centre[:, 1:2]) / s) ** 2)
        psf = (gy[:, :, None] * gx[:, None, :]).reshape(n_trials, -1) / (2 * np.pi * s * s)
    weights = np.stack([m.to_image((size, size)).reshape(-1)
                        for m in CircularAperture(centre, r=fwhm_px).to_mask(method="exact")])
    npix = size * size
    rtn = rng.random((n_trials, npix)) < frac
    pick = rng.integers(0, rn_pop.size, (n_trials, npix))
    rn = np.where(rtn, rn_pop[pick], clean_pop[rng.integers(0, clean_pop.size, (n_trials, npix))])
    sigma = np.where(rtn, sigma_pop[pick], rn)
    w2 = weights**2
    w_masked = weights * ~rtn
    bkg = np.zeros(n_trials)
    bkg_masked = np.zeros(n_trials)
    if background_error:
        inner, outer = ANNULUS_FWHM
        n_ann = np.pi * (outer**2 - inner**2) * fwhm_px**2
        v = sky_e + float(np.median(clean_pop**2))
        bkg = weights.sum(axis=1) ** 2 * (np.pi / 2) * v / n_ann
        bkg_masked = w_masked.sum(axis=1) ** 2 * (np.pi / 2) * v / max(n_ann * (1 - frac), 1.0)
    out: dict[str, np.ndarray | float] = {"flux_e": flux, "fwhm_px": float(fwhm_px), "rtn_fraction": frac,
                                          "sky_e": float(sky_e), "n_trials": n_trials, "psf_sampling": psf_sampling}
    gains: dict[str, list[np.ndarray]] = {"corrected": [], "masked": [], "ideal": []}
    rtn_at = np.flatnonzero(rtn.reshape(-1))
    pick_rtn = pick.reshape(-1)[rtn_at]
    for f in flux:
        lam = f * psf + sky_e
        raw_var = lam + rn**2
        cor_var = raw_var.copy().reshape(-1)
        lam_rtn = lam.reshape(-1)[rtn_at]
        # excess variance of each RTN pixel's population member, interpolated in lambda (none beyond the table)
        i = np.clip(np.searchsorted(nodes, lam_rtn, side="right") - 1, 0, nodes.size - 2)
        t = np.clip((lam_rtn - nodes[i]) / (nodes[i + 1] - nodes[i]), 0.0, 1.0)
        excess = excess_pop[i, pick_rtn] * (1 - t) + excess_pop[i + 1, pick_rtn] * t
        cor_var[rtn_at] += np.where(lam_rtn <= nodes[-1], excess, 0.0)
        cor_var = cor_var.reshape(n_trials, npix)
        signal = f * (weights * psf).sum(axis=1)
        snr_raw = signal / np.sqrt((w2 * raw_var).sum(axis=1) + bkg)
        gains["corrected"].append(signal / np.sqrt((w2 * cor_var).sum(axis=1) + bkg) / snr_raw)
        gains["ideal"].append(signal / np.sqrt((w2 * (lam + sigma**2)).sum(axis=1) + bkg) / snr_raw)
        masked_signal = f * (w_masked * psf).sum(axis=1)
        masked_noise = np.sqrt((w_masked**2 * raw_var).sum(axis=1) + bkg_masked)
        # every aperture pixel masked: no signal left (SNR 0)
        gains["masked"].append(np.divide(masked_signal, masked_noise, out=np.zeros(n_trials), where=masked_noise > 0)
                               / snr_raw)
    for name, rows in gains.items():
        g = np.stack(rows)  # (m, n_trials)
        out[f"gain_{name}_median"] = np.median(g, axis=1)
        out[f"gain_{name}_q25"] = np.percentile(g, 25, axis=1)
        out[f"gain_{name}_q75"] = np.percentile(g, 75, axis=1)
        out[f"gain_{name}_mean"] = g.mean(axis=1)
    out["masked_worse_fraction"] = (np.stack(gains["masked"]) < 1 - 1e-12).mean(axis=1)
    return out
