"""Simulated star fields of constant sources on an RTN sensor, with their photometric truth.

A :class:`StarField` is a :class:`~rtnstream.kernels.simulate.SensorModel` (the RTN pixels and their truth)
looking at a :class:`~rtnstream.kernels.simulate.Scene` of constant stars laid out on a jittered grid, far
enough apart that each star's aperture (radius FWHM) and background annulus (out to 3 FWHM) hold no light of
another star (light taken to end at 2 FWHM). The frames and the true trap states are drawn by the sensor model
itself; this module only chooses the field and says what the photometry of each star should give. ``rtnstream
evaluate`` is tested and benchmarked on these fields (the RTN paper's regimes: undersampled FWHM about 2.6 px
and well sampled about 6 px, faint and bright stars, 1-10 % RTN pixels).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from rtnstream.kernels.cube import RTNCube, write_cube
from rtnstream.kernels.simulate import Scene, SensorModel, SimulatedFrame

__all__ = ["StarField", "ANNULUS_OUTER_FWHM", "LIGHT_REACH_FWHM", "JITTER_PX"]

#: outer radius of the background annulus in FWHM (rtnstream.evaluate uses 2-3 FWHM); stars are spaced so that
#: no star's light reaches another star's annulus
ANNULUS_OUTER_FWHM = 3.0
#: a star's light is taken to end 2 FWHM from its centre (the Gaussian is 2^-16 of its peak there)
LIGHT_REACH_FWHM = 2.0
#: each star is moved by up to this much from its grid point in x and y (random sub-pixel phases)
JITTER_PX = 1.0


def _check_positive(name: str, value: float) -> float:
    if not np.isfinite(value) or value <= 0:
        raise ValueError(f"{name} must be a positive number, got {value!r}")
    return float(value)


@dataclass(eq=False)
class StarField:
    """A sensor with RTN pixels looking at constant stars.

    Attributes
    ----------
    sensor : SensorModel
        The truth of the sensor (kernels/simulate.py).
    scene : Scene
        Constant stars (``kind='stars'``, no variability) on a sky.
    """

    sensor: SensorModel
    scene: Scene

    @classmethod
    def make(cls, shape: tuple[int, int] = (128, 128), fwhm_px: float = 2.6,
             flux_range_e: tuple[float, float] = (200.0, 20000.0), sky_e: float = 1.0,
             rtn_fraction: float = 0.05, spacing_px: float | None = None, seed: int = 0) -> StarField:
        """A field of stars on a jittered grid over an IMX455-like sensor.

        Parameters
        ----------
        shape : (ny, nx)
            Frame shape, pixel.
        fwhm_px : float
            Gaussian PSF full width at half maximum, pixel.
        flux_range_e : (float, float)
            Total flux of the stars, electron per frame: log-uniform between the two, in random order.
        sky_e : float
            Sky level, electron/pixel/frame (>= 0).
        rtn_fraction : float in [0, 1]
            Fraction of RTN pixels of the sensor.
        spacing_px : float, optional
            Grid step between stars, pixel; default ``(3 + 2) FWHM + 2``: after the jitter of up to 1 px in x
            and y, no star's light (out to 2 FWHM) reaches a neighbour's annulus (out to 3 FWHM).
        seed : int
            Seed of the sensor and of the layout.

        Raises
        ------
        ValueError
            A non-positive FWHM, flux or spacing, a negative sky, or a field too small for one star.
        """
        fwhm_px = _check_positive("fwhm_px", fwhm_px)
        lo, hi = (_check_positive("flux_range_e", float(f)) for f in flux_range_e)
        if hi < lo:
            raise ValueError(f"flux_range_e must be (low, high) with low <= high, got {flux_range_e!r}")
        if not np.isfinite(sky_e) or sky_e < 0:
            raise ValueError(f"sky_e must be >= 0, got {sky_e!r}")
        step = _check_positive("spacing_px", spacing_px) if spacing_px is not None else (
            (ANNULUS_OUTER_FWHM + LIGHT_REACH_FWHM) * fwhm_px + 2 * JITTER_PX)
        ny, nx = (int(s) for s in shape)
        margin = ANNULUS_OUTER_FWHM * fwhm_px + JITTER_PX
        ys = np.arange(margin, ny - margin, step)
        xs = np.arange(margin, nx - margin, step)
        if ys.size == 0 or xs.size == 0:
            raise ValueError(f"shape {shape} is too small for one star of FWHM {fwhm_px} px "
                             f"(needs at least {2 * margin:.0f} px a side)")
        rng = np.random.default_rng(seed + 1)
        gy, gx = (g.ravel() for g in np.meshgrid(ys, xs, indexing="ij"))
        n = gy.size
        jitter = JITTER_PX
        star_y = gy + rng.uniform(-jitter, jitter, n)
        star_x = gx + rng.uniform(-jitter, jitter, n)
        flux = np.exp(rng.permutation(np.linspace(np.log(lo), np.log(hi), n)))
        sensor = SensorModel.random((ny, nx), rtn_fraction=rtn_fraction, seed=seed)
        scene = Scene("stars", (ny, nx), sky_e=float(sky_e), star_y=star_y, star_x=star_x, star_flux_e=flux,
                      fwhm_px=fwhm_px)
        return cls(sensor, scene)

    @property
    def positions_xy(self) -> np.ndarray:
        """(n_stars, 2) float64, pixel: (x, y) of every star, the order photutils takes."""
        return np.column_stack([self.scene.star_x, self.scene.star_y])

    @property
    def n_stars(self) -> int:
        return int(self.scene.star_x.size)

    def star_image_e(self) -> np.ndarray:
        """(ny, nx) float64, electron/pixel/frame: the expected star light without the sky (the truth that
        aperture photometry of each star measures)."""
        return self.scene.flux_e(0) - self.scene.sky_e

    def cube(self) -> RTNCube:
        """The sensor's calibration cube as a perfect fit would give it."""
        return self.sensor.true_cube()

    def frames(self, n_frames: int, seed: int = 1) -> Iterator[SimulatedFrame]:
        """Draw ``n_frames`` frames (uint16 adu) with their true trap states and RTN-free version."""
        if n_frames < 1:
            raise ValueError(f"n_frames must be >= 1, got {n_frames!r}")
        return self.sensor.frames(n_frames, self.scene, seed=seed)

    def stack(self, n_frames: int, seed: int = 1) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """All frames at once: ``(data (n, ny, nx) uint16 adu, states (n, n_rtn) int8, clean (n, ny, nx) adu)``."""
        if n_frames < 1:
            raise ValueError(f"n_frames must be >= 1, got {n_frames!r}")
        return self.sensor.stack(n_frames, self.scene, seed=seed)

    def write(self, outdir: str | os.PathLike, n_frames: int, seed: int = 1) -> dict[str, Path]:
        """Write the frames as one FITS stack, the true cube and the star catalog (ECSV) into ``outdir``.

        Returns
        -------
        dict
            ``{'frames': stack path, 'cube': cube path, 'catalog': catalog path}``.
        """
        from astropy.io import fits
        from astropy.table import Table

        out = Path(outdir)
        out.mkdir(parents=True, exist_ok=True)
        data, _, _ = self.stack(n_frames, seed)
        header = fits.Header()
        header["GAIN"] = (self.sensor.gain_e_per_adu, "[e-/adu] conversion gain")
        header["INSTRUME"] = ("simulated", "rtnstream.starfield")
        paths = {"frames": out / "stars.fits", "cube": out / "cube.fits", "catalog": out / "catalog.ecsv"}
        fits.PrimaryHDU(data, header).writeto(paths["frames"], overwrite=True)
        write_cube(self.cube(), paths["cube"], overwrite=True)
        Table({"x": self.scene.star_x, "y": self.scene.star_y, "flux_e": self.scene.star_flux_e}).write(
            paths["catalog"], overwrite=True)
        return paths
