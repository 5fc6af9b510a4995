"""What correction and masking should do to each star's SNR, from the calibration cube alone.

The effective read noise of a correctable RTN pixel moves linearly from its RTN-free ``sigma`` at no signal to
its total ``RN`` at ``lambda_max`` (ALGORITHM.md section 6.5, :func:`rtnstream.calibration.fit.predicted_read_noise`).
:func:`predict_gains` applies it pixel by pixel to each star's aperture, with the signal every pixel sees in
the series (the median frame), and gives the SNR ratios corrected / raw, masked / raw and no-RTN / raw (the
ideal). :func:`monte_carlo` is the RTN paper's Monte Carlo (its Fig. 6): a Gaussian PSF at a random
sub-pixel position on pixels that have RTN with a given probability, their parameters drawn from the cube's
RTN pixels, an aperture of radius FWHM; SNR ratios against flux.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy.special import ndtr

from rtnstream.calibration.fit import predicted_read_noise
from rtnstream.kernels.cube import RTNCube

__all__ = ["PixelNoise", "predict_gains", "monte_carlo"]


def _effective_read_noise(rn_e: np.ndarray, sigma_e: np.ndarray, lammax_e: np.ndarray, signal_e: np.ndarray
                          ) -> np.ndarray:
    """Element by element :func:`predicted_read_noise` (each pixel at its own signal), any common shape; RN where
    ``lammax_e`` is 0 (pixels that are not corrected)."""
    shape = np.shape(signal_e)
    flat = [np.asarray(a, np.float64).reshape(-1) for a in (rn_e, sigma_e, lammax_e, signal_e)]
    # flux of shape (1, n) broadcasts against the n pixels one to one: result (1, 1, n)
    return predicted_read_noise(flat[0], flat[1], flat[2], flat[3][None, :])[0, 0].reshape(shape)


@dataclass
class PixelNoise:
    """Read noise of every pixel of a frame as the cube gives it.

    Attributes
    ----------
    rn_e : numpy.ndarray, shape (ny, nx), electron
        Total read noise (READNOISE).
    sigma_e : numpy.ndarray, shape (ny, nx), electron
        RTN-free read noise: SIGMA at RTN pixels, READNOISE elsewhere.
    lammax_e : numpy.ndarray, shape (ny, nx), electron
        LAMMAX at correctable RTN pixels, 0 elsewhere (their read noise stays RN).
    rtn : numpy.ndarray, shape (ny, nx), bool
        RTN pixels of the cube (the pixels masking leaves out).
    """

    rn_e: np.ndarray
    sigma_e: np.ndarray
    lammax_e: np.ndarray
    rtn: np.ndarray

    @classmethod
    def from_cube(cls, cube: RTNCube) -> PixelNoise:
        rtn = np.asarray(cube.rtn_mask, bool)
        rn = np.asarray(cube.readnoise_e, np.float64)
        sigma = np.where(rtn & np.isfinite(cube.sigma_e), cube.sigma_e, rn)
        lammax = np.where(rtn & np.isfinite(cube.lammax_e), cube.lammax_e, 0.0)
        return cls(rn, sigma, np.maximum(lammax, 0.0), rtn)


def predict_gains(apertures, signal_e: np.ndarray, noise: PixelNoise) -> dict[str, np.ndarray]:
    """Predicted SNR of each star's raw, corrected, masked and RTN-free photometry.

    Noise of an aperture sum: ``sum w^2 (lambda + RN_p^2)`` over the aperture's exact-overlap weights ``w``,
    plus the background median's error ``A^2 (pi / 2) v / n`` (``A`` the aperture area, ``v`` the median
    pixel variance in the annulus, ``n`` its pixels). Signal: the aperture sum of the star's light
    (``lambda`` less the annulus median). Corrected: ``RN_p`` of RTN pixels replaced by their effective read
    noise at ``lambda`` (section 6.5); no-RTN: by ``sigma``; masked: RTN pixels left out of aperture and annulus.

    Parameters
    ----------
    apertures : rtnstream.evaluate.photometry.Apertures
        The stars; its excluded pixels must be ``noise.rtn``.
    signal_e : numpy.ndarray, shape (ny, nx), electron/pixel/frame
        Mean signal of each pixel (stars and sky, bias removed), e.g. the series' median frame.
    noise : PixelNoise

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
    rn, sigma, lammax = (apertures.gather(a) for a in (noise.rn_e, noise.sigma_e, noise.lammax_e))
    rn_eff = _effective_read_noise(rn, sigma, lammax, lam)
    pix_var = {"raw": lam + rn**2, "corrected": lam + rn_eff**2, "ideal": lam + sigma**2}
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


def _population(cube: RTNCube) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    noise = PixelNoise.from_cube(cube)
    rtn = noise.rtn
    if not rtn.any():
        raise ValueError("the cube has no RTN pixels: nothing to predict")
    clean = noise.rn_e[~rtn]
    clean = clean[np.isfinite(clean)] if clean.size else noise.sigma_e[rtn]
    return noise.rn_e[rtn], noise.sigma_e[rtn], noise.lammax_e[rtn], clean


def monte_carlo(cube: RTNCube, fwhm_px: float, flux_e: Sequence[float] | np.ndarray,
                rtn_fraction: float | None = None, sky_e: float = 0.0, n_trials: int = 2000, seed: int = 0
                ) -> dict[str, np.ndarray | float]:
    """The RTN paper's Monte Carlo of correction against masking against the no-RTN ideal (its Fig. 6).

    Each trial puts a Gaussian PSF (integrated over pixels) at a random sub-pixel position; every pixel has
    RTN with probability ``rtn_fraction``, its (RN, sigma, lambda_max) drawn from the cube's RTN pixels, the
    read noise of the others from the cube's other pixels. Aperture: radius FWHM, exact overlap (photutils);
    noise per pixel ``lambda + RN^2`` with ``lambda`` the star's light plus ``sky_e`` (no background-estimate
    error: the paper's model).

    Parameters
    ----------
    cube : RTNCube
    fwhm_px : float
        PSF FWHM, pixel.
    flux_e : sequence of float, shape (m,)
        Total source flux per frame, electron (> 0).
    rtn_fraction : float in [0, 1], optional
        Probability that a pixel has RTN; default: the cube's fraction.
    sky_e : float
        Sky, electron/pixel/frame.
    n_trials : int
    seed : int

    Returns
    -------
    dict
        ``flux_e`` (m,), ``fwhm_px``, ``rtn_fraction``, ``sky_e``, ``n_trials``, and for each of
        ``corrected``, ``masked``, ``ideal``: ``gain_<name>_median``, ``gain_<name>_q25``, ``gain_<name>_q75``,
        ``gain_<name>_mean`` (m,) (SNR ratio to raw), plus ``masked_worse_fraction`` (m,) (trials where
        masking lowers the SNR).
    """
    from photutils.aperture import CircularAperture

    if not np.isfinite(fwhm_px) or fwhm_px <= 0:
        raise ValueError(f"fwhm_px must be a positive number, got {fwhm_px!r}")
    flux = np.asarray(flux_e, dtype=np.float64).reshape(-1)
    if flux.size == 0 or not np.all(np.isfinite(flux) & (flux > 0)):
        raise ValueError("flux_e must be positive numbers")
    if not np.isfinite(sky_e) or sky_e < 0:
        raise ValueError(f"sky_e must be >= 0, got {sky_e!r}")
    if int(n_trials) < 1:
        raise ValueError(f"n_trials must be >= 1, got {n_trials!r}")
    n_trials = int(n_trials)
    frac = float(np.mean(cube.rtn_mask)) if rtn_fraction is None else float(rtn_fraction)
    if not 0 <= frac <= 1:
        raise ValueError(f"rtn_fraction must be in [0, 1], got {rtn_fraction!r}")
    rn_pop, sigma_pop, lammax_pop, clean_pop = _population(cube)
    rng = np.random.default_rng(seed)
    half = int(np.ceil(fwhm_px)) + 2
    size = 2 * half + 1
    s = fwhm_px / (2 * np.sqrt(2 * np.log(2)))
    centre = half + rng.random((n_trials, 2))  # (x, y) in the stamp
    edges = np.arange(size + 1) - 0.5
    cdf_x = ndtr((edges[None, :] - centre[:, 0:1]) / s)
    cdf_y = ndtr((edges[None, :] - centre[:, 1:2]) / s)
    psf = (np.diff(cdf_y, axis=1)[:, :, None] * np.diff(cdf_x, axis=1)[:, None, :]).reshape(n_trials, -1)
    weights = np.stack([m.to_image((size, size)).reshape(-1)
                        for m in CircularAperture(centre, r=fwhm_px).to_mask(method="exact")])
    npix = size * size
    rtn = rng.random((n_trials, npix)) < frac
    pick = rng.integers(0, rn_pop.size, (n_trials, npix))
    rn = np.where(rtn, rn_pop[pick], clean_pop[rng.integers(0, clean_pop.size, (n_trials, npix))])
    sigma = np.where(rtn, sigma_pop[pick], rn)
    lammax = np.where(rtn, lammax_pop[pick], 0.0)
    w2 = weights**2
    w_masked = weights * ~rtn
    out: dict[str, np.ndarray | float] = {"flux_e": flux, "fwhm_px": float(fwhm_px), "rtn_fraction": frac,
                                          "sky_e": float(sky_e), "n_trials": n_trials}
    gains: dict[str, list[np.ndarray]] = {"corrected": [], "masked": [], "ideal": []}
    for f in flux:
        lam = f * psf + sky_e
        rn_eff = _effective_read_noise(rn, sigma, lammax, lam)
        signal = f * (weights * psf).sum(axis=1)
        snr_raw = signal / np.sqrt((w2 * (lam + rn**2)).sum(axis=1))
        gains["corrected"].append(signal / np.sqrt((w2 * (lam + rn_eff**2)).sum(axis=1)) / snr_raw)
        gains["ideal"].append(signal / np.sqrt((w2 * (lam + sigma**2)).sum(axis=1)) / snr_raw)
        masked_signal = f * (w_masked * psf).sum(axis=1)
        masked_noise = np.sqrt((w_masked**2 * (lam + rn**2)).sum(axis=1))
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
