"""Simulate a CMOS camera's bias, dark and flat frames with known truth, for testing characterization."""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from astropy.io import fits

__all__ = ["CameraModel", "CameraSimulator", "write_camera_series", "write_emva_series"]


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
    bias_row_adu, bias_col_adu : float
        Standard deviations of fixed per-row and per-column bias offsets, adu (row / column DSNU).
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
    bits : int
        Output range: values are clipped to ``[0, 2**bits - 1]`` adu (saturation), stored as uint16.
    quantum_efficiency : float in (0, 1]
        Photons to electrons: the photon count of a flat is ``flux_e_per_s t / quantum_efficiency``.
    """

    shape: tuple[int, int] = (256, 256)
    gain_e_per_adu: float = 0.25
    gain_spread_frac: float = 0.005
    read_noise_e: float = 1.5
    read_noise_spread_frac: float = 0.05
    bias_level_adu: float = 500.0
    bias_dsnu_adu: float = 2.0
    bias_jitter_adu: float = 0.01
    bias_row_adu: float = 0.0
    bias_col_adu: float = 0.0
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
    bits: int = 16
    quantum_efficiency: float = 0.6

    def __post_init__(self) -> None:
        if len(self.shape) != 2 or min(self.shape) < 1:
            raise ValueError(f"shape must be (ny, nx) with positive sizes, got {self.shape}")
        for name in ("gain_e_per_adu", "read_noise_e", "nonlinearity_ref_adu", "noisy_read_noise_factor"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        for name in ("hot_pixel_fraction", "anomalous_mean_fraction", "noisy_pixel_fraction"):
            if not 0 <= getattr(self, name) <= 1:
                raise ValueError(f"{name} must be in [0, 1], got {getattr(self, name)}")
        if not 1 <= self.bits <= 16:
            raise ValueError(f"bits must be in [1, 16], got {self.bits}")
        if not 0 < self.quantum_efficiency <= 1:
            raise ValueError(f"quantum_efficiency must be in (0, 1], got {self.quantum_efficiency}")
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
    Gaussian read noise of ``rn_ij / g_ij`` adu; values are rounded and clipped to ``[0, 2**bits - 1]``. Anomalous-mean,
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
        # drawn only when asked for, so the other pixel properties of a seed stay as they were
        self.row_offsets = m.bias_row_adu * rng.standard_normal(m.shape[0]) if m.bias_row_adu else np.zeros(
            m.shape[0])
        self.col_offsets = m.bias_col_adu * rng.standard_normal(m.shape[1]) if m.bias_col_adu else np.zeros(
            m.shape[1])
        self.bias_map = self.bias_map + self.row_offsets[:, None] + self.col_offsets[None, :]
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
            out[k] = np.clip(np.rint(value), 0, 2**m.bits - 1)
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


def _emva_truth(sim: CameraSimulator, exposures_s: np.ndarray, spatial_exposure_s: float,
                dark_exposure_s: float) -> dict:
    """Expected EMVA 1288 figures of a simulated camera (noise-free, from its pixel maps)."""
    m = sim.model
    q, g = sim.qe_map, sim.gain_map
    flux = m.flux_e_per_s * q
    # The photon-transfer slope averages variance over mean across the pixels: K = <e / g^2> / <e / g>.
    gain = float(np.mean(flux / g) / np.mean(flux / g**2))
    t0 = float(np.min(exposures_s))
    dark_var_adu2 = np.mean((sim.read_noise_map**2 + sim.dark_map * t0) / g**2)
    dark_mean_map = sim.bias_map + sim.dark_map * dark_exposure_s / g
    signal_map = flux * spatial_exposure_s / g
    eta = m.quantum_efficiency * float(np.mean(q / g)) * gain
    return {
        "gain_e_per_adu": gain,
        "temporal_dark_noise_e": float(np.sqrt(dark_var_adu2) * gain),
        "dark_current_e_per_s": float(np.mean(sim.dark_map / g) * gain),
        "dsnu_e": float(np.std(dark_mean_map) * gain),
        "dsnu_row_e": float(np.std(sim.row_offsets, ddof=1) * gain),
        "dsnu_col_e": float(np.std(sim.col_offsets, ddof=1) * gain),
        "prnu_pct": float(100 * np.std(signal_map) / np.mean(signal_map)),
        "quantum_efficiency_pct": 100 * eta,
        "clip_level_adu": float(2**m.bits - 1),
        "saturation_capacity_upper_e": float((2**m.bits - 1 - np.mean(sim.bias_map)) * gain),
        "signal_adu": [sim.expected_flat_signal_adu(t) - float(np.mean(sim.dark_map / g)) * t
                       for t in exposures_s],
        "photons": [m.flux_e_per_s * t / m.quantum_efficiency for t in exposures_s],
        "exposure_s": [float(t) for t in exposures_s],
    }


def write_emva_series(
    outdir: str | os.PathLike,
    simulator: CameraSimulator,
    exposures_s: Sequence[float],
    *,
    n_spatial: int = 16,
    spatial_exposure_s: float | None = None,
    image_format: str = "png",
    fits_stacks: bool = True,
) -> dict:
    """Write an EMVA 1288 data set: ``EMVA1288_Data.txt`` with its images, and the same frames as FITS.

    Every exposure gets a bright and a dark pair (the standard's temporal sets); one exposure gets
    ``n_spatial`` bright and dark images (the spatial sets). The descriptor uses CRLF line ends and
    Windows paths (``images\\b_0001.png``), exposure times in ns and photon counts per pixel; images of
    8 bits or fewer are stored as 8-bit, others as 16-bit. With
    ``fits_stacks`` the same frames are written under ``fits/`` as ``dark/``, ``flat/`` (``EXPTIME`` s,
    ``PHOTONS``, ``DATAMAX``) and ``bias/`` (the darks of the shortest exposure).

    Parameters
    ----------
    outdir : str or path-like
        Output folder (created).
    simulator : CameraSimulator
        The camera (its ``flux_e_per_s`` lights the bright images).
    exposures_s : sequence of float
        Exposure times of the temporal sets, s (three or more).
    n_spatial : int
        Images of each spatial set (0 for none).
    spatial_exposure_s : float, optional
        Exposure of the spatial sets, s (default: the exposure nearest half of the clip level).
    image_format : {'png', 'tif'}
        Image file type.
    fits_stacks : bool
        Also write the FITS stacks.

    Returns
    -------
    dict
        ``descriptor`` (path), ``fits`` (lists of paths per set, when written) and ``truth`` (also written
        to ``truth.json``): the expected figures of :func:`_emva_truth`.

    Raises
    ------
    ValueError
        Fewer than three exposures, or an unknown ``image_format``.
    """
    if len(exposures_s) < 3:
        raise ValueError(f"exposures_s needs three or more exposure times, got {len(exposures_s)}")
    if image_format not in ("png", "tif"):
        raise ValueError(f"image_format must be 'png' or 'tif', got {image_format!r}")
    import imageio.v3 as iio
    import tifffile

    out = Path(outdir)
    (out / "images").mkdir(parents=True, exist_ok=True)
    m = simulator.model
    times = np.asarray(sorted(float(t) for t in exposures_s))
    if spatial_exposure_s is None:
        half = 0.5 * (2**m.bits - 1 - m.bias_level_adu)
        spatial_exposure_s = float(times[np.argmin([abs(simulator.expected_flat_signal_adu(t) - half)
                                                    for t in times])])
    fits_sets: dict[str, list[str]] = {"bias": [], "dark": [], "flat": []}
    if fits_stacks:
        for kind in fits_sets:
            (out / "fits" / kind).mkdir(parents=True, exist_ok=True)
    lines = ["# EMVA 1288 data set written by rtnstream.calibration.detector_sim", "v 4.0",
             f"n {m.bits} {m.shape[1]} {m.shape[0]}"]
    k = 0

    def save(frames: np.ndarray, tag: str, t: float, photons: float | None) -> list[str]:
        nonlocal k
        names = []
        for frame in frames:
            k += 1
            name = f"{tag}_{k:04d}.{image_format}"
            image = frame.astype(np.uint8) if m.bits <= 8 else frame
            if image_format == "png":
                iio.imwrite(out / "images" / name, image)
            else:
                tifffile.imwrite(out / "images" / name, image)
            names.append(f"i images\\{name}")
            if fits_stacks:
                kind = "dark" if photons is None else "flat"
                path = out / "fits" / kind / f"{kind}_{k:04d}.fits"
                header = fits.Header()
                header["EXPTIME"] = (t, "exposure time, s")
                header["DATAMAX"] = (2**m.bits - 1, "largest valid value, adu")
                if photons is not None:
                    header["PHOTONS"] = (photons, "mean photons per pixel")
                fits.PrimaryHDU(frame, header=header).writeto(path, overwrite=True)
                fits_sets[kind].append(str(path))
                if photons is None and t == times[0]:
                    fits_sets["bias"].append(str(path))
        return names

    for t in times:
        photons = m.flux_e_per_s * t / m.quantum_efficiency
        lines.append(f"b {t * 1e9:.0f} {photons:.6g}")
        lines += save(simulator.flat(t, 2), "b", t, photons)
        lines.append(f"d {t * 1e9:.0f}")
        lines += save(simulator.dark(t, 2), "d", t, None)
    if n_spatial:
        photons = m.flux_e_per_s * spatial_exposure_s / m.quantum_efficiency
        lines.append(f"b {spatial_exposure_s * 1e9:.0f} {photons:.6g}")
        lines += save(simulator.flat(spatial_exposure_s, n_spatial), "bs", spatial_exposure_s, photons)
        lines.append(f"d {spatial_exposure_s * 1e9:.0f}")
        lines += save(simulator.dark(spatial_exposure_s, n_spatial), "ds", spatial_exposure_s, None)
    descriptor = out / "EMVA1288_Data.txt"
    descriptor.write_bytes(("\r\n".join(lines) + "\r\n").encode())
    truth = _emva_truth(simulator, times, spatial_exposure_s, spatial_exposure_s)
    truth["spatial_exposure_s"] = spatial_exposure_s
    (out / "truth.json").write_text(json.dumps(truth, indent=2))
    return {"descriptor": str(descriptor), "fits": fits_sets if fits_stacks else None, "truth": truth}
