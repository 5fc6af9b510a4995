"""Simulate a CMOS camera's bias, dark and flat frames with known truth, for testing characterization."""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from astropy.io import fits

__all__ = ["CameraModel", "CameraSimulator", "write_camera_series"]


@dataclass(frozen=True)
class CameraModel:
    """Parameters of a simulated CMOS camera.

    Attributes
    ----------
    shape : (int, int)
        Frame shape ``(ny, nx)``, pixels.
    gain_e_per_adu : float
        Median conversion gain, e-/ADU.
    gain_spread_frac : float
        Pixel-to-pixel standard deviation of the conversion gain, as a fraction of it (per-pixel amplifiers).
    read_noise_e : float
        Median read noise of ordinary pixels, electron.
    read_noise_spread_frac : float
        Pixel-to-pixel standard deviation of the read noise, fraction.
    bias_level_adu : float
        Mean bias (offset) level, adu.
    bias_dsnu_adu : float
        Standard deviation of the per-pixel fixed bias pattern, adu.
    bias_jitter_adu : float
        Standard deviation of the frame-to-frame bias level, adu.
    dark_current_e_per_s : float
        Mean dark current of ordinary pixels, e-/pixel/s.
    dark_spread_frac : float
        Pixel-to-pixel standard deviation of the dark current of ordinary pixels, fraction.
    hot_pixel_fraction : float in [0, 1]
        Fraction of hot pixels.
    hot_dark_current_e_per_s : float
        Dark current of hot pixels, e-/pixel/s.
    anomalous_mean_fraction : float in [0, 1]
        Fraction of pixels whose bias level is offset by +-``anomalous_mean_offset_adu``.
    anomalous_mean_offset_adu : float
        Size of that offset, adu.
    noisy_pixel_fraction : float in [0, 1]
        Fraction of pixels whose read noise is ``noisy_read_noise_factor`` times larger.
    noisy_read_noise_factor : float
        Read-noise factor of noisy pixels.
    prnu_frac : float
        Pixel response non-uniformity (quantum-efficiency spread), fraction.
    flux_e_per_s : float
        Flat-field illumination, e-/pixel/s (before PRNU).
    nonlinearity_pct : float
        Compression of the signal at ``nonlinearity_ref_adu``, percent: a linear signal ``L`` (adu) is read
        as ``L (1 - c L)`` with ``c = nonlinearity_pct / 100 / nonlinearity_ref_adu``.
    nonlinearity_ref_adu : float
        Signal at which the compression equals ``nonlinearity_pct``, adu.
    """

    shape: tuple[int, int] = (256, 256)
    gain_e_per_adu: float = 0.25
    gain_spread_frac: float = 0.005
    read_noise_e: float = 1.5
    read_noise_spread_frac: float = 0.05
    bias_level_adu: float = 500.0
    bias_dsnu_adu: float = 2.0
    bias_jitter_adu: float = 0.01
    dark_current_e_per_s: float = 0.005
    dark_spread_frac: float = 0.1
    hot_pixel_fraction: float = 0.001
    hot_dark_current_e_per_s: float = 2.0
    anomalous_mean_fraction: float = 0.001
    anomalous_mean_offset_adu: float = 40.0
    noisy_pixel_fraction: float = 0.01
    noisy_read_noise_factor: float = 4.0
    prnu_frac: float = 0.01
    flux_e_per_s: float = 1250.0
    nonlinearity_pct: float = 0.5
    nonlinearity_ref_adu: float = 40000.0

    def __post_init__(self) -> None:
        if len(self.shape) != 2 or min(self.shape) < 1:
            raise ValueError(f"shape must be (ny, nx) with positive sizes, got {self.shape}")
        for name in ("gain_e_per_adu", "read_noise_e", "nonlinearity_ref_adu", "noisy_read_noise_factor"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        for name in ("hot_pixel_fraction", "anomalous_mean_fraction", "noisy_pixel_fraction"):
            if not 0 <= getattr(self, name) <= 1:
                raise ValueError(f"{name} must be in [0, 1], got {getattr(self, name)}")
        if self.dark_current_e_per_s < 0 or self.flux_e_per_s < 0:
            raise ValueError("dark_current_e_per_s and flux_e_per_s must be >= 0")


def _pick(rng: np.random.Generator, n: int, fraction: float, exclude: np.ndarray) -> np.ndarray:
    """Boolean mask of ``round(fraction n)`` pixels chosen among those not in ``exclude``."""
    free = np.flatnonzero(~exclude)
    count = min(len(free), int(round(fraction * n)))
    mask = np.zeros(n, dtype=bool)
    mask[rng.choice(free, size=count, replace=False)] = True
    return mask


class CameraSimulator:
    """A simulated camera: fixed per-pixel properties drawn once, frames drawn on demand.

    Parameters
    ----------
    model : CameraModel
        The camera.
    seed : int
        Seed of the random generator (pixel properties and frames).

    Notes
    -----
    A pixel collects ``e ~ Poisson((flux q + dark) t)`` electrons (``q`` the PRNU factor), which read as
    ``L = e / g_ij`` adu, compressed to ``L (1 - c L)``, plus its bias level, the frame's bias jitter and
    Gaussian read noise of ``rn_ij / g_ij`` adu; values are rounded and clipped to uint16. Anomalous-mean,
    noisy and hot pixels are disjoint sets.
    """

    def __init__(self, model: CameraModel, seed: int = 0):
        self.model = model
        self._rng = np.random.default_rng(seed)
        rng = self._rng
        m = model
        n = m.shape[0] * m.shape[1]
        taken = np.zeros(n, dtype=bool)
        self.anomalous_mean = _pick(rng, n, m.anomalous_mean_fraction, taken)
        taken |= self.anomalous_mean
        self.noisy = _pick(rng, n, m.noisy_pixel_fraction, taken)
        taken |= self.noisy
        self.hot = _pick(rng, n, m.hot_pixel_fraction, taken)

        self.gain_map = m.gain_e_per_adu * (1 + m.gain_spread_frac * rng.standard_normal(n))
        self.read_noise_map = m.read_noise_e * (1 + m.read_noise_spread_frac * rng.standard_normal(n))
        self.read_noise_map[self.noisy] *= m.noisy_read_noise_factor
        self.bias_map = m.bias_level_adu + m.bias_dsnu_adu * rng.standard_normal(n)
        signs = rng.choice([-1.0, 1.0], size=int(self.anomalous_mean.sum()))
        self.bias_map[self.anomalous_mean] += signs * m.anomalous_mean_offset_adu
        spread = np.clip(1 + m.dark_spread_frac * rng.standard_normal(n), 0, None)
        self.dark_map = m.dark_current_e_per_s * spread
        self.dark_map[self.hot] = m.hot_dark_current_e_per_s
        self.qe_map = 1 + m.prnu_frac * rng.standard_normal(n)
        for name in ("anomalous_mean", "noisy", "hot", "gain_map", "read_noise_map", "bias_map", "dark_map",
                     "qe_map"):
            setattr(self, name, getattr(self, name).reshape(m.shape))
        self._c_per_adu = m.nonlinearity_pct / 100.0 / m.nonlinearity_ref_adu

    def _frames(self, n: int, electrons_per_s: np.ndarray | None, exptime_s: float) -> np.ndarray:
        if n < 1:
            raise ValueError(f"n must be >= 1, got {n}")
        if exptime_s < 0:
            raise ValueError(f"exptime_s must be >= 0, got {exptime_s}")
        m, rng = self.model, self._rng
        out = np.empty((n, *m.shape), dtype=np.uint16)
        rate = self.dark_map if electrons_per_s is None else electrons_per_s + self.dark_map
        sigma_adu = self.read_noise_map / self.gain_map
        for k in range(n):
            linear = rng.poisson(rate * exptime_s) / self.gain_map
            signal = linear * (1 - self._c_per_adu * linear)
            value = self.bias_map + m.bias_jitter_adu * rng.standard_normal() + signal
            value += sigma_adu * rng.standard_normal(m.shape)
            out[k] = np.clip(np.rint(value), 0, np.iinfo(np.uint16).max)
        return out

    def bias(self, n: int) -> np.ndarray:
        """``n`` bias frames, shape ``(n, ny, nx)``, uint16 adu."""
        return self._frames(n, None, 0.0)

    def dark(self, exptime_s: float, n: int) -> np.ndarray:
        """``n`` dark frames of ``exptime_s`` seconds, shape ``(n, ny, nx)``, uint16 adu."""
        return self._frames(n, None, exptime_s)

    def flat(self, exptime_s: float, n: int) -> np.ndarray:
        """``n`` flat frames of ``exptime_s`` seconds, shape ``(n, ny, nx)``, uint16 adu."""
        return self._frames(n, self.model.flux_e_per_s * self.qe_map, exptime_s)

    def expected_flat_signal_adu(self, exptime_s: float) -> float:
        """Expected mean bias-subtracted flat signal over the frame (nonlinearity included), adu."""
        electrons = (self.model.flux_e_per_s * self.qe_map + self.dark_map) * exptime_s
        linear = electrons / self.gain_map
        mean_sq = linear**2 + electrons / self.gain_map**2  # E[L^2] with Poisson variance
        return float(np.mean(linear - self._c_per_adu * mean_sq))

    def truth(self, flat_exptimes_s: Sequence[float] = ()) -> dict:
        """What a characterization should find; JSON-serialisable.

        Parameters
        ----------
        flat_exptimes_s : sequence of float
            Exposure times of a flat series; adds the expected signal (adu) and nonlinearity (%) per
            exposure, from a linear fit to the noise-free signals, computed as the measurement does.

        Returns
        -------
        dict
            Keys with units in their names: ``gain_e_per_adu`` (median of the gain map),
            ``read_noise_median_e``, ``read_noise_rms_e``, ``dark_current_e_per_pix_s`` (mean of ordinary
            pixels), ``dark_current_mean_e_per_pix_s`` (all pixels), fractions of injected pixels, and
            the model parameters under ``model``.
        """
        ordinary = ~self.hot
        out = {
            "model": asdict(self.model),
            "gain_e_per_adu": float(np.median(self.gain_map)),
            "read_noise_median_e": float(np.median(self.read_noise_map)),
            "read_noise_rms_e": float(np.sqrt(np.mean(self.read_noise_map**2))),
            "dark_current_e_per_pix_s": float(np.mean(self.dark_map[ordinary])),
            "dark_current_mean_e_per_pix_s": float(np.mean(self.dark_map)),
            "anomalous_mean_fraction": float(self.anomalous_mean.mean()),
            "noisy_pixel_fraction": float(self.noisy.mean()),
            "hot_pixel_fraction": float(self.hot.mean()),
        }
        if len(flat_exptimes_s) >= 2:
            t = np.asarray(sorted(set(float(x) for x in flat_exptimes_s)))
            signal = np.array([self.expected_flat_signal_adu(x) for x in t])
            slope, intercept = np.polyfit(t, signal, 1)
            fit = slope * t + intercept
            out["linearity"] = {
                "exptime_s": t.tolist(),
                "signal_adu": signal.tolist(),
                "nonlinearity_pct": (100 * (signal - fit) / fit).tolist(),
            }
        return out


def _write(path: Path, data: np.ndarray, exptime_s: float, kind: str) -> None:
    header = fits.Header()
    header["EXPTIME"] = (float(exptime_s), "exposure time, s")
    header["IMAGETYP"] = (kind, "frame type")
    fits.PrimaryHDU(data, header=header).writeto(path, overwrite=True)


def write_camera_series(
    outdir: str | os.PathLike,
    simulator: CameraSimulator,
    *,
    n_bias: int = 100,
    dark_exptimes_s: Sequence[float] = (0.0, 60.0, 150.0, 300.0, 600.0),
    n_dark_per_exptime: int = 2,
    flat_exptimes_s: Sequence[float] = (0.5, 1.0, 2.0, 4.0, 6.0, 8.0),
    n_flat_per_exptime: int = 2,
    pixel_flat_exptime_s: float = 2.0,
    n_flat_pixel: int = 100,
) -> dict:
    """Write bias/, dark/ and flat/ FITS files (one 2D frame each, EXPTIME in s) and truth.json.

    Parameters
    ----------
    outdir : str or path-like
        Output folder (created).
    simulator : CameraSimulator
        The camera.
    n_bias : int
        Number of bias frames.
    dark_exptimes_s, n_dark_per_exptime : sequence of float, int
        Dark series: exposure times (s) and frames per exposure time.
    flat_exptimes_s, n_flat_per_exptime : sequence of float, int
        Flat series for linearity and the photon-transfer slope.
    pixel_flat_exptime_s, n_flat_pixel : float, int
        Extra flats at one exposure for the pixel-level gain and read-noise maps (0 for none); they
        are added to the series' frames at that exposure time.

    Returns
    -------
    dict
        The truth written to ``truth.json`` plus ``files``: lists of written paths per set.
    """
    out = Path(outdir)
    files: dict[str, list[str]] = {"bias": [], "dark": [], "flat": []}
    for kind in files:
        (out / kind).mkdir(parents=True, exist_ok=True)
    for k, frame in enumerate(simulator.bias(n_bias) if n_bias else []):
        path = out / "bias" / f"bias_{k:04d}.fits"
        _write(path, frame, 0.0, "BIAS")
        files["bias"].append(str(path))
    for t in dark_exptimes_s:
        for k, frame in enumerate(simulator.dark(t, n_dark_per_exptime) if n_dark_per_exptime else []):
            path = out / "dark" / f"dark_{t:09.3f}s_{k:03d}.fits"
            _write(path, frame, t, "DARK")
            files["dark"].append(str(path))
    flat_plan = [(t, n_flat_per_exptime, "series") for t in flat_exptimes_s]
    if n_flat_pixel:
        flat_plan.append((pixel_flat_exptime_s, n_flat_pixel, "pixel"))
    for t, n, tag in flat_plan:
        for k, frame in enumerate(simulator.flat(t, n) if n else []):
            path = out / "flat" / f"flat_{tag}_{t:08.3f}s_{k:04d}.fits"
            _write(path, frame, t, "FLAT")
            files["flat"].append(str(path))
    truth = simulator.truth(list(flat_exptimes_s))
    truth["series"] = {
        "n_bias": n_bias,
        "dark_exptimes_s": [float(t) for t in dark_exptimes_s],
        "n_dark_per_exptime": n_dark_per_exptime,
        "flat_exptimes_s": [float(t) for t in flat_exptimes_s],
        "n_flat_per_exptime": n_flat_per_exptime,
        "pixel_flat_exptime_s": float(pixel_flat_exptime_s),
        "n_flat_pixel": n_flat_pixel,
    }
    (out / "truth.json").write_text(json.dumps(truth, indent=2))
    truth["files"] = files
    return truth
