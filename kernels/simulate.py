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

from rtnstream.kernels.cube import DQ_RTN, DQ_TWO_TRAP, RTNCube, RTNPixels, model_mean_and_std
from rtnstream.kernels.lut import ThresholdTable, get_table

__all__ = ["SensorModel", "Scene", "SimulatedFrame", "SecondTraps", "TwoTrapFrame", "two_trap_frames",
           "two_trap_true_cube"]

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

    def flux_e(self, t: int, rows: tuple[int, int] | None = None) -> np.ndarray:
        """Expected electrons per pixel in frame ``t``, float64, shape (ny, nx), or (r1 - r0, nx) for
        ``rows = (r0, r1)`` (the same values as those rows of the whole frame)."""
        r0, r1 = (0, self.shape[0]) if rows is None else rows
        img = np.full((r1 - r0, self.shape[1]), self.sky_e, dtype=np.float64)
        if self.star_y.size == 0:
            return img
        s = self.fwhm_px / 2.3548
        half = int(np.ceil(4 * s))
        yy, xx = np.mgrid[-half : half + 1, -half : half + 1]
        for y0, x0, f in zip(self.star_y, self.star_x, self.star_fluxes(t), strict=True):
            iy, ix = int(round(y0)), int(round(x0))
            lo, hi = max(iy - half, r0), min(iy + half + 1, r1)
            if lo >= hi:
                continue
            stamp = np.exp(-((yy + iy - y0) ** 2 + (xx + ix - x0) ** 2) / (2 * s * s)) / (2 * np.pi * s * s)
            img[lo - r0 : hi - r0, ix - half : ix + half + 1] += f * stamp[lo - iy + half : hi - iy + half]
        return img


@dataclass
class SimulatedFrame:
    """One simulated frame and its truth.

    Attributes
    ----------
    data : numpy.ndarray, shape (ny, nx), uint16, adu
    states : numpy.ndarray, shape (n_rtn,), int8
        True trap state of each RTN pixel: -1 low, 0 central, +1 high.
    clean_adu : numpy.ndarray, shape (ny, nx), float64, adu, or None
        The whole frame without RTN jumps and before rounding (what a perfect correction approaches); None
        when :meth:`SensorModel.frames` was asked for ``clean=False``.
    clean_rtn_adu : numpy.ndarray, shape (n_rtn,), float64, adu, or None
        The frame without RTN jumps and before rounding, at the RTN pixels (:meth:`SensorModel.frames`
        always gives it; None where a frame is made without it).
    """

    data: np.ndarray
    states: np.ndarray
    clean_adu: np.ndarray | None
    clean_rtn_adu: np.ndarray | None = None


#: Pixels per row block of the maps and frames a :class:`SensorModel` draws (bounds their temporaries).
BLOCK_PIXELS = 1 << 18


@dataclass(frozen=True)
class _MapDraws:
    """Where the per-pixel bias and read-noise maps of a :class:`SensorModel` come from.

    The maps are not stored (two float64 maps of a full IMX455 are 980 MB): they are drawn again, row block
    by row block, from the random generator's states saved before their draws, which gives the same
    numbers as drawing each whole map at once (Generator draws are sequential).
    """

    shape: tuple[int, int]
    bias_level_adu: float
    sigma_median_e: float
    bias_state: dict
    sigma_state: dict

    def row_ranges(self) -> list[tuple[int, int]]:
        """``(r0, r1)`` of the consecutive row blocks, about :data:`BLOCK_PIXELS` pixels each."""
        return _row_ranges(self.shape)

    def row_blocks(self) -> Iterator[tuple[int, int, np.ndarray, np.ndarray]]:
        """``(r0, r1, bias_adu, sigma_e)`` of consecutive row blocks, the maps' rows r0:r1, float64."""
        nx = self.shape[1]
        rng_bias, rng_sigma = (_generator(st) for st in (self.bias_state, self.sigma_state))
        for r0, r1 in self.row_ranges():
            bias = self.bias_level_adu + rng_bias.normal(0, 3.0, (r1 - r0, nx))
            sigma = np.clip(self.sigma_median_e * np.exp(rng_sigma.normal(0, 0.15, (r1 - r0, nx))), 0.5, 5.0)
            yield r0, r1, bias, sigma

    def full(self) -> tuple[np.ndarray, np.ndarray]:
        """Both maps whole: ``(bias_adu, sigma_e)``, shape (ny, nx), float64."""
        bias, sigma = np.empty(self.shape), np.empty(self.shape)
        for r0, r1, b, s in self.row_blocks():
            bias[r0:r1], sigma[r0:r1] = b, s
        return bias, sigma

    def at(self, index: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Both maps at the ascending flat indices ``index``: ``(bias_adu, sigma_e)``, shape (n,), float64."""
        bias, sigma = np.empty(index.size), np.empty(index.size)
        nx = self.shape[1]
        for r0, r1, b, s in self.row_blocks():
            lo, hi = np.searchsorted(index, (r0 * nx, r1 * nx))
            local = index[lo:hi] - r0 * nx
            bias[lo:hi], sigma[lo:hi] = b.ravel()[local], s.ravel()[local]
        return bias, sigma


def _row_ranges(shape: tuple[int, int]) -> list[tuple[int, int]]:
    step = max(1, BLOCK_PIXELS // max(shape[1], 1))
    return [(r0, min(r0 + step, shape[0])) for r0 in range(0, shape[0], step)]


def _generator(state: dict) -> np.random.Generator:
    bits = np.random.PCG64()
    bits.state = state
    return np.random.Generator(bits)


@dataclass(eq=False)
class SensorModel:
    """Truth of a simulated sensor.

    The per-pixel maps :attr:`bias_adu` and :attr:`sigma_e` are drawn again from the seed at each use (not
    kept: 980 MB for a full IMX455); :meth:`frames` draws them row block by row block.

    Attributes
    ----------
    shape : (ny, nx)
    gain_e_per_adu : float
    rtn_index : numpy.ndarray, shape (n_rtn,), int64
        Flat indices of the RTN pixels (ascending).
    delta_e, frac_c, frac_lo, frac_hi : numpy.ndarray, shape (n_rtn,), float64
        Jump size (electron) and state probabilities of each RTN pixel.
    """

    shape: tuple[int, int]
    gain_e_per_adu: float
    rtn_index: np.ndarray
    delta_e: np.ndarray
    frac_c: np.ndarray
    frac_lo: np.ndarray
    frac_hi: np.ndarray
    maps: _MapDraws

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
        shape = (int(shape[0]), int(shape[1]))
        rng = np.random.default_rng(seed)
        npix = shape[0] * shape[1]
        states = []
        for _map in ("bias", "sigma"):  # skip each map's draws (bias_adu and sigma_e draw them again)
            states.append(rng.bit_generator.state)
            for r0, r1 in _row_ranges(shape):
                rng.normal(0, 1.0, (r1 - r0, shape[1]))
        maps = _MapDraws(shape, float(bias_level_adu), float(sigma_median_e), *states)
        n_rtn = int(round(rtn_fraction * npix))
        index = np.sort(rng.choice(npix, n_rtn, replace=False)).astype(np.int64)
        delta = rng.uniform(*delta_over_sigma, n_rtn) * maps.at(index)[1]
        frac_c = rng.uniform(0.80, 0.94, n_rtn)
        side = 1.0 - frac_c
        split = rng.uniform(0.3, 0.7, n_rtn)
        one_sided = rng.random(n_rtn) < one_sided_fraction
        split = np.where(one_sided, rng.choice([0.0, 1.0], n_rtn), split)
        return cls(shape=shape, gain_e_per_adu=float(gain_e_per_adu), rtn_index=index, delta_e=delta,
                   frac_c=frac_c, frac_lo=side * split, frac_hi=side * (1 - split), maps=maps)

    @property
    def bias_adu(self) -> np.ndarray:
        """Central bias level of every pixel, adu, shape (ny, nx), float64 (drawn again at each use)."""
        return self.maps.full()[0]

    @property
    def sigma_e(self) -> np.ndarray:
        """RTN-free read noise of every pixel, electron, shape (ny, nx), float64 (drawn again at each use)."""
        return self.maps.full()[1]

    @property
    def n_rtn(self) -> int:
        return int(self.rtn_index.size)

    def frames(self, n_frames: int, scene: Scene | None = None, seed: int = 1, clean: bool = True
               ) -> Iterator[SimulatedFrame]:
        """Draw ``n_frames`` frames of ``scene`` (default: bias) one at a time.

        Electrons = Poisson(flux) + N(0, sigma^2) + state * Delta; adu = bias + electrons / gain, rounded
        and clipped to [0, 65535]. Each frame is made in row blocks of about :data:`BLOCK_PIXELS` pixels
        written straight into its uint16 data: the float64 temporaries are those of one block, whatever
        the frame's size (and the states are drawn BLOCK_PIXELS RTN pixels at a time), and the numbers are
        those of whole-frame draws (Poisson counts of the frame, then its read noise, then the states of its
        RTN pixels).

        Parameters
        ----------
        n_frames : int
        scene : Scene, optional
        seed : int
        clean : bool
            Also give each frame's whole :attr:`SimulatedFrame.clean_adu` (float64, 8 bytes a pixel);
            False gives only its values at the RTN pixels.
        """
        scene = scene or Scene("bias", self.shape)
        rng = np.random.default_rng(seed)
        g = self.gain_e_per_adu
        nx = self.shape[1]
        index = self.rtn_index
        for t in range(n_frames):
            data = np.empty(self.shape, np.uint16)
            blocks = self.maps.row_ranges() if scene.kind != "bias" else []
            wide: dict[int, np.ndarray] = {}  # Poisson counts of the blocks that do not fit in uint16
            for r0, r1 in blocks:  # the frame's Poisson draws come first: counts kept in data meanwhile
                counts = rng.poisson(scene.flux_e(t, (r0, r1)))
                if counts.size and counts.max() > np.iinfo(np.uint16).max:
                    wide[r0] = counts
                else:
                    data[r0:r1] = counts
            clean_adu = np.empty(self.shape) if clean else None
            clean_rtn = np.empty(index.size)
            for r0, r1, bias, sigma in self.maps.row_blocks():
                rows = data[r0:r1]
                if scene.kind == "bias":
                    electrons = np.zeros(rows.shape)
                else:
                    electrons = wide.pop(r0, rows).astype(np.float64)
                electrons += rng.normal(0.0, 1.0, rows.shape) * sigma
                block_clean = bias + electrons / g
                lo, hi = np.searchsorted(index, (r0 * nx, r1 * nx))
                clean_rtn[lo:hi] = block_clean.ravel()[index[lo:hi] - r0 * nx]
                rows[...] = np.clip(np.rint(block_clean), 0, 65535)
                if clean_adu is not None:
                    clean_adu[r0:r1] = block_clean
            states = np.empty(index.size, np.int8)
            flat = data.ravel()
            for i0 in range(0, index.size, BLOCK_PIXELS):  # the states, BLOCK_PIXELS RTN pixels at a time
                part = slice(i0, i0 + BLOCK_PIXELS)
                u, frac_lo = rng.random(states[part].size), self.frac_lo[part]
                states[part] = np.where(u < frac_lo, -1, np.where(u < frac_lo + self.frac_c[part], 0, 1))
                jumped = clean_rtn[part] + states[part] * self.delta_e[part] / g
                flat[index[part]] = np.clip(np.rint(jumped), 0, 65535)
            yield SimulatedFrame(data=data, states=states, clean_rtn_adu=clean_rtn, clean_adu=clean_adu)

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
        meanbias, readnoise = self.maps.full()
        sigma_rtn = readnoise.ravel()[index]
        mu = meanbias.ravel()[index]
        mean_adu, std_e = model_mean_and_std(mu, self.delta_e, sigma_rtn, self.frac_lo, self.frac_hi,
                                             self.gain_e_per_adu)
        meanbias.ravel()[index] = mean_adu
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


@dataclass(eq=False)
class SecondTraps:
    """Truth of the second trap of the two-trap pixels of a :class:`SensorModel` (independent of the first).

    Attributes
    ----------
    rtn_pos : numpy.ndarray, shape (n_two,), int64
        Positions in the sensor's ``rtn_index`` of the two-trap pixels (ascending).
    delta_e, frac_c, frac_lo, frac_hi : numpy.ndarray, shape (n_two,), float64
        Jump size (electron) and state probabilities of each second trap.
    """

    rtn_pos: np.ndarray
    delta_e: np.ndarray
    frac_c: np.ndarray
    frac_lo: np.ndarray
    frac_hi: np.ndarray

    @classmethod
    def random(cls, sensor: SensorModel, two_trap_fraction: float, delta_over_sigma: tuple[float, float] = (4.0, 14.0),
               min_separation_sigma: float = 3.0, one_sided_fraction: float = 0.2, seed: int = 0) -> SecondTraps:
        """Give a second trap to ``two_trap_fraction`` of the sensor's pixels, chosen among its RTN pixels.

        Parameters
        ----------
        sensor : SensorModel
            Must hold at least ``two_trap_fraction`` of its pixels as RTN pixels.
        two_trap_fraction : float in [0, 1]
            Fraction of all pixels that get a second trap.
        delta_over_sigma : (float, float)
            Range of the second jump over sigma; drawn uniformly on the part of it at least
            ``min_separation_sigma`` sigma away from the pixel's first jump.
        min_separation_sigma : float, >= 0
            Least ``|D1 - D2| / sigma``.
        one_sided_fraction : float in [0, 1]
            Fraction of second traps with only one side level.
        seed : int

        Raises
        ------
        ValueError
            A fraction outside [0, 1], more two-trap pixels than RTN pixels, or a ``delta_over_sigma``
            range that leaves no room ``min_separation_sigma`` away from some first jump.
        """
        for name, value in (("two_trap_fraction", two_trap_fraction), ("one_sided_fraction", one_sided_fraction)):
            if not 0 <= value <= 1:
                raise ValueError(f"{name} must be in [0, 1], got {value!r}")
        if min_separation_sigma < 0:
            raise ValueError(f"min_separation_sigma must be >= 0, got {min_separation_sigma!r}")
        lo, hi = (float(v) for v in delta_over_sigma)
        if not 0 < lo < hi:
            raise ValueError(f"delta_over_sigma must be (low, high) with 0 < low < high, got {delta_over_sigma!r}")
        n_two = int(round(two_trap_fraction * sensor.shape[0] * sensor.shape[1]))
        if n_two > sensor.n_rtn:
            raise ValueError(f"two_trap_fraction {two_trap_fraction!r} asks for {n_two} two-trap pixels, but the "
                             f"sensor has {sensor.n_rtn} RTN pixels")
        rng = np.random.default_rng(seed)
        pos = np.sort(rng.choice(sensor.n_rtn, n_two, replace=False)).astype(np.int64)
        sigma = sensor.sigma_e.ravel()[sensor.rtn_index[pos]]
        first = sensor.delta_e[pos] / sigma
        below = np.clip(first - min_separation_sigma, lo, hi) - lo  # room in [lo, first - sep]
        above = hi - np.clip(first + min_separation_sigma, lo, hi)  # room in [first + sep, hi]
        if np.any(below + above <= 0):
            raise ValueError(f"delta_over_sigma {delta_over_sigma!r} leaves no second jump {min_separation_sigma} "
                             f"sigma away from some first jump")
        u = rng.uniform(0.0, 1.0, n_two) * (below + above)
        ratio = np.where(u < below, lo + u, hi - (u - below))
        frac_c = rng.uniform(0.80, 0.94, n_two)
        side = 1.0 - frac_c
        split = rng.uniform(0.3, 0.7, n_two)
        one_sided = rng.random(n_two) < one_sided_fraction
        split = np.where(one_sided, rng.choice([0.0, 1.0], n_two), split)
        return cls(rtn_pos=pos, delta_e=ratio * sigma, frac_c=frac_c, frac_lo=side * split, frac_hi=side * (1 - split))

    @property
    def n_two(self) -> int:
        return int(self.rtn_pos.size)


@dataclass
class TwoTrapFrame(SimulatedFrame):
    """A :class:`SimulatedFrame` of a sensor with two-trap pixels.

    Attributes
    ----------
    states2 : numpy.ndarray, shape (n_two,), int8
        True state of each second trap: -1 low, 0 central, +1 high (``states`` holds the first traps').
    """

    states2: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int8))


def two_trap_frames(sensor: SensorModel, traps: SecondTraps, n_frames: int, scene: Scene | None = None,
                    seed: int = 1) -> Iterator[TwoTrapFrame]:
    """Frames of ``sensor`` whose two-trap pixels also jump by their second trap, with the per-frame truth.

    The first traps, the read noise and the scene are drawn exactly as :meth:`SensorModel.frames` draws
    them (same ``seed``); the second traps' states from their own generator. A two-trap pixel reads
    ``bias + (e + i D1 + j D2) / gain`` (i, j the two traps' states), rounded and clipped to [0, 65535].
    """
    rng = np.random.default_rng([seed, 2])
    g = sensor.gain_e_per_adu
    cum = np.stack([traps.frac_lo, traps.frac_lo + traps.frac_c])
    index2 = sensor.rtn_index[traps.rtn_pos]
    for sim in sensor.frames(n_frames, scene, seed):
        u = rng.random(traps.n_two)
        states2 = np.where(u < cum[0], -1, np.where(u < cum[1], 0, 1)).astype(np.int8)
        jumped = sim.clean_adu.copy().ravel()
        jumped[sensor.rtn_index] += sim.states * sensor.delta_e / g
        jumped[index2] += states2 * traps.delta_e / g
        data = np.clip(np.rint(jumped), 0, 65535).astype(np.uint16).reshape(sensor.shape)
        yield TwoTrapFrame(data=data, states=sim.states, clean_adu=sim.clean_adu, states2=states2)


def two_trap_true_cube(sensor: SensorModel, traps: SecondTraps, alpha: float = 0.003,
                       table: ThresholdTable | None = None) -> RTNCube:
    """:meth:`SensorModel.true_cube` with the two-trap pixels flagged ``DQ_TWO_TRAP`` and both traps filled in.

    Each two-trap pixel's traps are stored in the cube's convention (docs/algorithm.md section 9): trap 1,
    the larger jump, in the RTN columns (``delta_e``, ``frac_*``, ``lammax_e``), trap 2 in the second-trap
    columns (``delta2_e``, ``frac2_*``; ``lammax2_e`` for the smallest positive level ``min(D2, D1 - D2)``);
    the mean bias and read-noise maps of the two-trap pixels include both traps. One-trap pixels are as
    :meth:`SensorModel.true_cube` gives them.
    """
    table = table or get_table(alpha)
    cube = sensor.true_cube(alpha, table)
    pos = traps.rtn_pos
    flat = sensor.rtn_index[pos]
    g = sensor.gain_e_per_adu
    d1, d2 = sensor.delta_e[pos], traps.delta_e
    lo1, hi1 = sensor.frac_lo[pos], sensor.frac_hi[pos]
    lo2, hi2 = traps.frac_lo, traps.frac_hi
    mean_e = d1 * (hi1 - lo1) + d2 * (hi2 - lo2)
    sigma = sensor.sigma_e.ravel()[flat]
    var_e2 = (sigma**2 + d1 * d1 * (lo1 + hi1) - (d1 * (hi1 - lo1)) ** 2
              + d2 * d2 * (lo2 + hi2) - (d2 * (hi2 - lo2)) ** 2)
    cube.meanbias_adu.reshape(-1)[flat] = sensor.bias_adu.ravel()[flat] + mean_e / g
    cube.readnoise_e.reshape(-1)[flat] = np.sqrt(var_e2)
    cube.dq.reshape(-1)[flat] |= DQ_TWO_TRAP
    first = d1 >= d2  # the sensor's trap is trap 1 (the larger jump)
    rtn = cube.rtn
    n = rtn.n
    big = {"delta_e": np.where(first, d1, d2), "frac_lo": np.where(first, lo1, lo2),
           "frac_hi": np.where(first, hi1, hi2)}
    small = {"delta_e": np.where(first, d2, d1), "frac_lo": np.where(first, lo2, lo1),
             "frac_hi": np.where(first, hi2, hi1)}
    second = {name: np.zeros(n) for name in ("delta2_e", "frac2_c", "frac2_lo", "frac2_hi", "lammax2_e")}
    second["delta2_e"][pos] = small["delta_e"]
    second["frac2_lo"][pos] = small["frac_lo"]
    second["frac2_hi"][pos] = small["frac_hi"]
    second["frac2_c"][pos] = 1.0 - small["frac_lo"] - small["frac_hi"]
    second["lammax2_e"][pos] = table.lambda_max(np.minimum(small["delta_e"], big["delta_e"] - small["delta_e"]),
                                                sigma)
    first_trap = {name: getattr(rtn, name).copy() for name in ("delta_e", "frac_c", "frac_lo", "frac_hi", "lammax_e")}
    for name in ("delta_e", "frac_lo", "frac_hi"):
        first_trap[name][pos] = big[name]
    first_trap["frac_c"][pos] = 1.0 - big["frac_lo"] - big["frac_hi"]
    first_trap["lammax_e"][pos] = table.lambda_max(big["delta_e"], sigma)
    cube.rtn = RTNPixels(index=rtn.index, mu_adu=rtn.mu_adu, sigma_e=rtn.sigma_e, **first_trap, **second)
    return cube
