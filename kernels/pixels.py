"""Per-pixel parameters of the RTN pixels, prepared once per job and shared by every backend.

Everything here is computed on the host with NumPy, so both backends start from the same bits: the flat
indices of the RTN pixels, their model parameters in float64, the integer jump size ``D_adu``, the sigma
coordinates in the threshold table, and (spatial reference) the flat indices of each pixel's neighbours.
The two-trap pixels among them (docs/algorithm.md section 9) also get a :class:`TwoTrapParams` of their
own: trap 1 from the cube's RTN columns, trap 2 from its second-trap columns.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from rtnstream.kernels.cube import RTNCube
from rtnstream.kernels.lut import ThresholdTable
from rtnstream.kernels.two_trap import TwoTrapParams

__all__ = ["PixelParams", "neighbour_indices"]


@dataclass(frozen=True, eq=False)
class PixelParams:
    """Parameters of the n RTN pixels of a sensor (flat C-order indices, ascending).

    Attributes
    ----------
    shape : tuple of int
        (ny, nx) of the sensor.
    index : numpy.ndarray, shape (n,), int64
        Flat indices of the RTN pixels.
    gain_e_per_adu : float
    mu_adu : numpy.ndarray, shape (n,), float64, adu
    delta_e : numpy.ndarray, shape (n,), float64, electron
    delta_adu_int : numpy.ndarray, shape (n,), int64, adu
        ``rint(delta_e / gain)``: the correction applied to integer frames.
    delta_adu_float : numpy.ndarray, shape (n,), float64, adu
        ``delta_e / gain``: the correction applied to float frames.
    rn2_e2 : numpy.ndarray, shape (n,), float64, electron^2
        Square of the total read noise (variability veto).
    sigma_j : numpy.ndarray, shape (n,), int32
    sigma_w : numpy.ndarray, shape (n,), float64
    sigma_ok : numpy.ndarray, shape (n,), bool
        Sigma coordinates in the table (:meth:`ThresholdTable.sigma_coords`).
    meanbias_adu : numpy.ndarray, shape (ny * nx,), float32, adu
        Mean bias of every pixel (spatial reference): the cube's map itself, not a copy.
    two_trap_pos : numpy.ndarray, shape (n_two_trap,), int64
        Positions among the n RTN pixels (ascending) of the two-trap pixels; empty for a cube without.
    two_trap : TwoTrapParams or None
        Their parameters (trap 1: ``delta_e``, ``frac_lo``, ``frac_hi``; trap 2: ``delta2_e``,
        ``frac2_lo``, ``frac2_hi``, each trap's log priors from its fractions); None without two-trap pixels.
    """

    shape: tuple[int, int]
    index: np.ndarray
    gain_e_per_adu: float
    mu_adu: np.ndarray
    delta_e: np.ndarray
    delta_adu_int: np.ndarray
    delta_adu_float: np.ndarray
    rn2_e2: np.ndarray
    sigma_j: np.ndarray
    sigma_w: np.ndarray
    sigma_ok: np.ndarray
    meanbias_adu: np.ndarray
    two_trap_pos: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    two_trap: TwoTrapParams | None = None

    @property
    def n(self) -> int:
        """Number of RTN pixels."""
        return int(self.index.size)

    @property
    def n_two_trap(self) -> int:
        """Number of two-trap pixels among them."""
        return int(self.two_trap_pos.size)

    @classmethod
    def from_cube(cls, cube: RTNCube, table: ThresholdTable) -> PixelParams:
        """Gather the RTN pixels' parameters of ``cube`` and their coordinates in ``table``."""
        rtn = cube.rtn
        index = rtn.index
        g = float(cube.gain_e_per_adu)
        j, w, ok = table.sigma_coords(rtn.sigma_e)
        pos = np.flatnonzero(rtn.two_trap).astype(np.int64)
        two_trap = None
        if pos.size:
            two_trap = TwoTrapParams.from_arrays(
                rtn.mu_adu[pos], rtn.delta_e[pos], rtn.delta2_e[pos], rtn.sigma_e[pos], g, table,
                frac_lo=rtn.frac_lo[pos], frac_hi=rtn.frac_hi[pos], frac2_lo=rtn.frac2_lo[pos],
                frac2_hi=rtn.frac2_hi[pos])
        return cls(
            shape=cube.shape,
            index=index,
            gain_e_per_adu=g,
            mu_adu=rtn.mu_adu,
            delta_e=rtn.delta_e,
            delta_adu_int=np.rint(rtn.delta_e / g).astype(np.int64),
            delta_adu_float=rtn.delta_e / g,
            rn2_e2=cube.readnoise_e.ravel()[index].astype(np.float64) ** 2,
            sigma_j=j,
            sigma_w=w,
            sigma_ok=ok,
            meanbias_adu=np.ascontiguousarray(cube.meanbias_adu).ravel(),
            two_trap_pos=pos,
            two_trap=two_trap,
        )


def neighbour_indices(shape: tuple[int, int], index: np.ndarray, size: int) -> np.ndarray:
    """Flat indices of the ``size x size`` neighbourhood of each pixel, centre excluded, -1 outside.

    Parameters
    ----------
    shape : (ny, nx)
    index : numpy.ndarray, shape (n,), int64
        Flat indices of the centre pixels.
    size : int, odd, >= 3

    Returns
    -------
    numpy.ndarray, shape (n, size*size - 1), int64
        Row-major order over the neighbourhood (dy outer, dx inner), skipping the centre.
    """
    ny, nx = shape
    half = size // 2
    y, x = np.divmod(index, nx)
    offsets = [(dy, dx) for dy in range(-half, half + 1) for dx in range(-half, half + 1) if (dy, dx) != (0, 0)]
    out = np.empty((index.size, len(offsets)), dtype=np.int64)
    for k, (dy, dx) in enumerate(offsets):
        yy, xx = y + dy, x + dx
        inside = (yy >= 0) & (yy < ny) & (xx >= 0) & (xx < nx)
        out[:, k] = np.where(inside, yy * nx + xx, -1)
    return out
