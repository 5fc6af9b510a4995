"""Simulated CMOS sensor with known RTN pixels: bias and illuminated frames with their ground truth.

A :class:`SensorModel` holds the truth (per-pixel bias, RTN-free read noise, the RTN pixels' jump sizes and
state probabilities); :meth:`SensorModel.frames` draws frames of a :class:`Scene` (bias, flat sky, star
field, varying sources) and yields, with each frame, the true trap state of every RTN pixel
(-1 low, 0 central, +1 high). :meth:`SensorModel.true_cube` is the RTN calibration file a perfect fit
would give. Tests, the demo, the camera simulator and the benchmarks all draw from here.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Literal

import numpy as np

from rtnstream.kernels.cube import DQ_RTN, RTNCube, RTNPixels, model_mean_and_std
from rtnstream.kernels.lut import ThresholdTable, get_table

__all__ = ["SensorModel", "Scene", "SimulatedFrame"]

SceneKind = Literal["bias", "flat", "stars", "varying"]


@dataclass
class Scene:
    """Expected photo-electrons per pixel and frame.

    Attributes
    ----------
    kind : {'bias', 'flat', 'stars', 'varying'}
    shape : (ny, nx)
    sky_e : float
        Sky level, electron/pixel/frame (0 for bias).
    star_y, star_x : numpy.ndarray, shape (n_stars,), pixel
    star_flux_e : numpy.ndarray, shape (n_stars,), electron per frame (total)
    fwhm_px : float
        Gaussian PSF full width at half maximum, pixel.
    variability : float
        Relative amplitude of the sinusoidal variation of each star ('varying' scenes).
    period_frames : numpy.ndarray, shape (n_stars,)
        Period of each star's variation, frames.
    """

    kind: SceneKind
    shape: tuple[int, int]
    sky_e: float = 0.0
    star_y: np.ndarray = field(default_factory=lambda: np.zeros(0))
    star_x: np.ndarray = field(default_factory=lambda: np.zeros(0))
    star_flux_e: np.ndarray = field(default_factory=lambda: np.zeros(0))
    fwhm_px: float = 2.5
    variability: float = 0.0
    period_frames: np.ndarray = field(default_factory=lambda: np.zeros(0))

    @classmethod
    def make(cls, kind: SceneKind, shape: tuple[int, int], sky_e: float = 20.0, n_stars: int = 20,
             star_flux_e: tuple[float, float] = (500.0, 20000.0), fwhm_px: float = 2.5,
             variability: float = 0.5, seed: int = 0) -> Scene:
        """A random scene of ``kind`` (stars kept 3 FWHM away from the border)."""
        if kind not in ("bias", "flat", "stars", "varying"):
            raise ValueError(f"scene kind must be 'bias', 'flat', 'stars' or 'varying', got {kind!r}")
        if kind == "bias":
            return cls("bias", shape)
        if kind == "flat":
            return cls("flat", shape, sky_e=float(sky_e))
        rng = np.random.default_rng(seed)
        margin = 3 * fwhm_px
        ny, nx = shape
        return cls(
            kind, shape, sky_e=float(sky_e),
            star_y=rng.uniform(margin, ny - 1 - margin, n_stars),
            star_x=rng.uniform(margin, nx - 1 - margin, n_stars),
            star_flux_e=np.exp(rng.uniform(np.log(star_flux_e[0]), np.log(star_flux_e[1]), n_stars)),
            fwhm_px=fwhm_px,
            variability=variability if kind == "varying" else 0.0,
            period_frames=rng.uniform(8, 40, n_stars),
        )

    def star_fluxes(self, t: int) -> np.ndarray:
        """Total flux of each star in frame ``t`` (electron)."""
        if self.variability:
            return self.star_flux_e * (1 + self.variability * np.sin(2 * np.pi * t / self.period_frames))
        return self.star_flux_e

    def flux_e(self, t: int) -> np.ndarray:
        """Expected electrons per pixel in frame ``t``, shape (ny, nx), float64."""
        img = np.full(self.shape, self.sky_e, dtype=np.float64)
        if self.star_y.size == 0:
            return img
        s = self.fwhm_px / 2.3548
        half = int(np.ceil(4 * s))
        yy, xx = np.mgrid[-half : half + 1, -half : half + 1]
        for y0, x0, f in zip(self.star_y, self.star_x, self.star_fluxes(t), strict=True):
            iy, ix = int(round(y0)), int(round(x0))
            stamp = np.exp(-((yy + iy - y0) ** 2 + (xx + ix - x0) ** 2) / (2 * s * s)) / (2 * np.pi * s * s)
            img[iy - half : iy + half + 1, ix - half : ix + half + 1] += f * stamp
        return img


@dataclass
class SimulatedFrame:
    """One simulated frame and its truth.

    Attributes
    ----------
    data : numpy.ndarray, shape (ny, nx), uint16, adu
    states : numpy.ndarray, shape (n_rtn,), int8
        True trap state of each RTN pixel: -1 low, 0 central, +1 high.
    clean_adu : numpy.ndarray, shape (ny, nx), float64, adu
        The frame without RTN jumps and before rounding (what a perfect correction approaches).
    """

    data: np.ndarray
    states: np.ndarray
    clean_adu: np.ndarray


@dataclass(eq=False)
class SensorModel:
    """Truth of a simulated sensor.

    Attributes
    ----------
    shape : (ny, nx)
    gain_e_per_adu : float
    bias_adu : numpy.ndarray, shape (ny, nx), float64
        Central bias level of every pixel.
    sigma_e : numpy.ndarray, shape (ny, nx), float64
        RTN-free read noise of every pixel.
    rtn_index : numpy.ndarray, shape (n_rtn,), int64
        Flat indices of the RTN pixels (ascending).
    delta_e, frac_c, frac_lo, frac_hi : numpy.ndarray, shape (n_rtn,), float64
        Jump size (electron) and state probabilities of each RTN pixel.
    """

    shape: tuple[int, int]
    gain_e_per_adu: float
    bias_adu: np.ndarray
    sigma_e: np.ndarray
    rtn_index: np.ndarray
    delta_e: np.ndarray
    frac_c: np.ndarray
    frac_lo: np.ndarray
    frac_hi: np.ndarray

    @classmethod
    def random(cls, shape: tuple[int, int] = (128, 128), rtn_fraction: float = 0.05,
               gain_e_per_adu: float = 1 / 3.26, bias_level_adu: float = 500.0,
               sigma_median_e: float = 1.2, delta_over_sigma: tuple[float, float] = (3.0, 10.0),
               one_sided_fraction: float = 0.2, seed: int = 0) -> SensorModel:
        """An IMX455-like sensor in high-gain mode (ALGORITHM.md section 1 typical values).

        Parameters
        ----------
        shape : (ny, nx)
        rtn_fraction : float in [0, 1]
            Fraction of pixels with one trap.
        gain_e_per_adu : float
            Default 1/3.26 (QHY600M high-gain mode).
        bias_level_adu : float
            Mean bias; each pixel's offset scatters by 3 adu around it.
        sigma_median_e : float
            Median RTN-free read noise (log-normal, 15 % scatter).
        delta_over_sigma : (float, float)
            Range of Delta / sigma (uniform).
        one_sided_fraction : float in [0, 1]
            Fraction of RTN pixels with only one side level.
        seed : int
        """
        if not 0 <= rtn_fraction <= 1:
            raise ValueError(f"rtn_fraction must be in [0, 1], got {rtn_fraction!r}")
        rng = np.random.default_rng(seed)
        npix = shape[0] * shape[1]
        bias = bias_level_adu + rng.normal(0, 3.0, shape)
        sigma = np.clip(sigma_median_e * np.exp(rng.normal(0, 0.15, shape)), 0.5, 5.0)
        n_rtn = int(round(rtn_fraction * npix))
        index = np.sort(rng.choice(npix, n_rtn, replace=False)).astype(np.int64)
        delta = rng.uniform(*delta_over_sigma, n_rtn) * sigma.ravel()[index]
        frac_c = rng.uniform(0.80, 0.94, n_rtn)
        side = 1.0 - frac_c
        split = rng.uniform(0.3, 0.7, n_rtn)
        one_sided = rng.random(n_rtn) < one_sided_fraction
        split = np.where(one_sided, rng.choice([0.0, 1.0], n_rtn), split)
        return cls(shape=shape, gain_e_per_adu=float(gain_e_per_adu), bias_adu=bias, sigma_e=sigma,
                   rtn_index=index, delta_e=delta, frac_c=frac_c, frac_lo=side * split,
                   frac_hi=side * (1 - split))

    @property
    def n_rtn(self) -> int:
        return int(self.rtn_index.size)

    def frames(self, n_frames: int, scene: Scene | None = None, seed: int = 1) -> Iterator[SimulatedFrame]:
        """Draw ``n_frames`` frames of ``scene`` (default: bias) one at a time.

        Electrons = Poisson(flux) + N(0, sigma^2) + state * Delta; adu = bias + electrons / gain, rounded
        and clipped to [0, 65535].
        """
        scene = scene or Scene("bias", self.shape)
        rng = np.random.default_rng(seed)
        g = self.gain_e_per_adu
        cum = np.stack([self.frac_lo, self.frac_lo + self.frac_c])
        for t in range(n_frames):
            flux = scene.flux_e(t)
            electrons = rng.poisson(flux).astype(np.float64) if scene.kind != "bias" else np.zeros(self.shape)
            electrons += rng.normal(0.0, 1.0, self.shape) * self.sigma_e
            clean = self.bias_adu + electrons / g
            u = rng.random(self.n_rtn)
            states = np.where(u < cum[0], -1, np.where(u < cum[1], 0, 1)).astype(np.int8)
            jumped = clean.copy().ravel()
            jumped[self.rtn_index] += states * self.delta_e / g
            data = np.clip(np.rint(jumped), 0, 65535).astype(np.uint16).reshape(self.shape)
            yield SimulatedFrame(data=data, states=states, clean_adu=clean)

    def stack(self, n_frames: int, scene: Scene | None = None, seed: int = 1
              ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """All frames at once: ``(data (n, ny, nx) uint16, states (n, n_rtn) int8, clean (n, ny, nx) float64)``."""
        frames = list(self.frames(n_frames, scene, seed))
        return (np.stack([f.data for f in frames]), np.stack([f.states for f in frames]),
                np.stack([f.clean_adu for f in frames]))

    def true_cube(self, alpha: float = 0.003, table: ThresholdTable | None = None) -> RTNCube:
        """The RTN calibration file of this sensor as a perfect fit would give it."""
        table = table or get_table(alpha)
        index = self.rtn_index
        sigma_rtn = self.sigma_e.ravel()[index]
        mu = self.bias_adu.ravel()[index]
        mean_adu, std_e = model_mean_and_std(mu, self.delta_e, sigma_rtn, self.frac_lo, self.frac_hi,
                                             self.gain_e_per_adu)
        meanbias = self.bias_adu.copy()
        meanbias.ravel()[index] = mean_adu
        readnoise = self.sigma_e.copy()
        readnoise.ravel()[index] = std_e
        dq = np.zeros(self.shape, np.uint16)
        dq.ravel()[index] = DQ_RTN
        rtn = RTNPixels(index=index, mu_adu=mu, delta_e=self.delta_e, sigma_e=sigma_rtn, frac_c=self.frac_c,
                        frac_lo=self.frac_lo, frac_hi=self.frac_hi,
                        lammax_e=table.lambda_max(self.delta_e, sigma_rtn))
        return RTNCube(
            shape=self.shape, rtn=rtn, meanbias_adu=meanbias, readnoise_e=readnoise, dq=dq,
            gain_e_per_adu=self.gain_e_per_adu,
            meta={"camera": "simulated", "detector": "simulated IMX455-like", "alpha": alpha},
        )
