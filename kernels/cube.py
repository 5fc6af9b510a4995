"""RTN calibration file ("cube"): the per-pixel RTN parameters, their FITS format, and the paper import.

Format (docs/formats.md), both versions with a primary HDU of header only (format version ``RTNFMT``,
detector identifiers, GAIN in e-/ADU, provenance) and CHECKSUM/DATASUM on every HDU:

- version 2 (written by default): the RTN pixels as one 1-D tile-compressed image a column (RTN_INDEX: flat
  C-order index; RTN_MU adu, RTN_DELTA electron, RTN_SIGMA electron, RTN_LAMMAX electron: float64;
  RTN_FRAC_C, RTN_FRAC_LO, RTN_FRAC_HI: float32), and the maps that have a value at every pixel
  tile-compressed: MEANBIAS (adu, float32, or its exact int32 numerators over NBIAS), READNOISE (electron,
  float32), DQ (uint16 bit flags), all lossless (GZIP_2); in a cube with two-trap pixels (only), the second
  trap's columns too (RTN_DELTA2, RTN_LAMMAX2: float64; RTN_FRAC2_C, RTN_FRAC2_LO, RTN_FRAC2_HI: float32);
  files of the earlier table layout (the columns as one binary table ``RTNPIX``) still read;
- version 1 (still read, and written on request for cubes without two-trap pixels): image extensions MU,
  DELTA, SIGMA, FRAC_C, FRAC_LO, FRAC_HI, LAMMAX, each (ny, nx) float64 with NaN where a pixel has no RTN,
  MEANBIAS, READNOISE and DQ.

:class:`RTNCube` holds MEANBIAS, READNOISE and the fractions at float32 precision (no corrected frame
depends on the fractions), the precision format 2 stores, so a cube converted either way holds the same
values, has the same id and corrects every frame identically. In memory the RTN pixels are
held sparsely (:class:`RTNPixels`, format 2's table); the dense planes of format 1 are built on request.
"""

from __future__ import annotations

import hashlib
import os
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from rtnstream.kernels.exceptions import CubeFormatError

if TYPE_CHECKING:  # astropy is imported by the FITS functions only: the engine's import path needs NumPy alone
    from astropy.io import fits

__all__ = [
    "DQ_RTN",
    "DQ_TWO_TRAP",
    "DQ_ANOMALOUS_MEAN",
    "DQ_ANOMALOUS_STD",
    "DQ_HOT",
    "CUBE_FORMAT_VERSION",
    "CUBE_FORMATS",
    "RTNCube",
    "RTNPixels",
    "read_cube",
    "write_cube",
    "import_paper",
    "model_mean_and_std",
]

CUBE_FORMAT_VERSION = 2
CUBE_FORMATS = (1, 2)

DQ_RTN = 1
DQ_TWO_TRAP = 2
DQ_ANOMALOUS_MEAN = 4
DQ_ANOMALOUS_STD = 8
DQ_HOT = 16

# DQ header keyword (8 characters at most, distinct) -> (bit, meaning)
_DQ_KEYS = {
    "DQ_RTN": (DQ_RTN, "RTN (corrected pixel)"),
    "DQ_2TRAP": (DQ_TWO_TRAP, "two-trap"),
    "DQ_AMEAN": (DQ_ANOMALOUS_MEAN, "anomalous mean"),
    "DQ_ASTD": (DQ_ANOMALOUS_STD, "anomalous std"),
    "DQ_HOT": (DQ_HOT, "hot pixel"),
}

# extension name -> (attribute, BUNIT, required for RTN pixels only)
_PLANES: dict[str, tuple[str, str, bool]] = {
    "MU": ("mu_adu", "adu", True),
    "DELTA": ("delta_e", "electron", True),
    "SIGMA": ("sigma_e", "electron", True),
    "FRAC_C": ("frac_c", "", True),
    "FRAC_LO": ("frac_lo", "", True),
    "FRAC_HI": ("frac_hi", "", True),
    "LAMMAX": ("lammax_e", "electron", True),
    "MEANBIAS": ("meanbias_adu", "adu", False),
    "READNOISE": ("readnoise_e", "electron", False),
}
# planes held (and stored by format 2) at float32 precision: the maps every pixel has
_FLOAT32_ATTRS = ("meanbias_adu", "readnoise_e")
# the RTN parameters (held for the RTN pixels only), and every attribute's extension name (for messages)
_RTN_ATTRS = tuple(attr for attr, _unit, rtn_only in _PLANES.values() if rtn_only)
# the second trap of two-trap pixels (format 2 only; docs/algorithm.md section 9), all 0 for one-trap pixels
_TWO_TRAP_ATTRS = ("delta2_e", "frac2_c", "frac2_lo", "frac2_hi", "lammax2_e")
_NAMES = {**{attr: name for name, (attr, _unit, _rtn) in _PLANES.items()}, "dq": "DQ",
          "delta2_e": "DELTA2", "frac2_c": "FRAC2_C", "frac2_lo": "FRAC2_LO", "frac2_hi": "FRAC2_HI",
          "lammax2_e": "LAMMAX2"}
_HASH_CHUNK = 1 << 22  # pixels hashed at a time (a 32 MiB float64 temporary)
_UNIT_ALIASES = {"adu": {"adu"}, "electron": {"electron", "electrons", "e-"}, "": {""}}

# format 2: the RTN pixels' columns (column -> (FITS table format, attribute, unit)). Written as one 1-D
# tile-compressed image a column (extension ``RTN_<column>``, after the INDEX one ``RTN_INDEX``); the files of
# 2026-12-01 hold them as one binary table ``RTNPIX`` (still read). MU, DELTA, SIGMA and LAMMAX are float64:
# they enter the engine's decisions and the products' flags. The fractions are stored as float32: nothing
# that makes a corrected frame or its flags reads them (kernels/pixels.py, products.py); RTNPixels holds
# them at that precision (_FLOAT32_COLUMNS), so a cube and its file hold the same values.
_TABLE = "RTNPIX"
_TABLE_COLUMNS: dict[str, tuple[str, str, str]] = {
    "MU": ("D", "mu_adu", "adu"),
    "DELTA": ("D", "delta_e", "electron"),
    "SIGMA": ("D", "sigma_e", "electron"),
    "FRAC_C": ("E", "frac_c", ""),
    "FRAC_LO": ("E", "frac_lo", ""),
    "FRAC_HI": ("E", "frac_hi", ""),
    "LAMMAX": ("D", "lammax_e", "electron"),
}
# format 2's second-trap columns (docs/algorithm.md section 9), written (after RTN_LAMMAX) only by a cube that has
# a two-trap pixel: a cube without one keeps the files (and the id) it had before them
_TWO_TRAP_COLUMNS: dict[str, tuple[str, str, str]] = {
    "DELTA2": ("D", "delta2_e", "electron"),
    "FRAC2_C": ("E", "frac2_c", ""),
    "FRAC2_LO": ("E", "frac2_lo", ""),
    "FRAC2_HI": ("E", "frac2_hi", ""),
    "LAMMAX2": ("D", "lammax2_e", "electron"),
}
_FLOAT32_COLUMNS = tuple(attr for fmt, attr, _unit in (*_TABLE_COLUMNS.values(), *_TWO_TRAP_COLUMNS.values())
                         if fmt == "E")
# each trap's three fractions of a two-trap pixel sum to 1 within this: three float32 roundings (2^-25 each at
# most, for values <= 1) and margin
_TWO_TRAP_FRAC_SUM_TOL = 1e-6
_COLUMN_PREFIX = "RTN_"
_COLUMN_ZBITPIX = {"D": -64, "E": -32}
_COLUMN_TILE = 1 << 16  # rows a tile of a column image
# format 2's maps: lossless tile compression (byte-shuffled deflate, tiles of _TILE_ROWS full rows: 16 rows
# compress a full IMX455's float32 maps 5 % smaller than one row, bench/cube_size.py), and the dtype
# (ZBITPIX) each must have. A float map (or column) whose every value is float(k / RTNDENOM) for integers k
# (a mean over RTNDENOM bias frames, NBIAS) may be stored as the int32 numerators k (ZBITPIX 32) with the
# header keyword RTNDENOM: the writer stores it so only when that gives back every value bit for bit.
_COMPRESSION = "GZIP_2"
_TILE_ROWS = 16
_COMPRESSIONS = ("GZIP_1", "GZIP_2")
_MAPS = {"MEANBIAS": -32, "READNOISE": -32, "DQ": 16}
_DENOM_KEY = "RTNDENOM"
# deflate never expands data by more than 1032:1 (RFC 1951 block limits): a compressed map that claims more
# pixels than that of the bytes it holds is refused before it is decompressed
_MAX_DEFLATE_RATIO = 1032

# header keyword -> meta key (strings / numbers passed through)
_META_KEYS = {
    "CAMERA": "camera",
    "DETECTOR": "detector",
    "READMODE": "readout_mode",
    "GAINSET": "gain_setting",
    "OFFSET": "offset",
    "CCD-TEMP": "temperature_c",
    "NBIAS": "n_bias_frames",
    "DATE-BEG": "bias_date_begin",
    "DATE-END": "bias_date_end",
    "RTNALPHA": "alpha",
    "SWVERSN": "software_version",
    "MBIASSRC": "meanbias_source",
    "RNSRC": "readnoise_source",
    "SERIALNO": "serial",
    "XBINNING": "binning_x",
    "YBINNING": "binning_y",
}
# meta keys that identify the camera and setting the cube was fitted on (checked against every frame)
CAMERA_META = ("camera", "detector", "serial", "gain_setting", "offset", "readout_mode", "binning_x", "binning_y",
               "temperature_c")


@dataclass(eq=False)
class RTNPixels:
    """Parameters of the n RTN pixels of a sensor, one entry a pixel, in ascending flat (C-order) index.

    Attributes
    ----------
    index : numpy.ndarray, shape (n,), int64
        Flat indices ``y * nx + x`` of the RTN pixels, strictly ascending.
    mu_adu : numpy.ndarray, shape (n,), float64, adu
        Central bias level.
    delta_e, sigma_e : numpy.ndarray, shape (n,), float64, electron
        Jump size and RTN-free read noise.
    frac_c, frac_lo, frac_hi : numpy.ndarray, shape (n,), float64 in [0, 1]
        Fractions of frames in the central, low and high state, held at float32 precision (rounded once,
        here: the precision format 2 stores; a relative 6e-8, and no corrected frame depends on them).
    lammax_e : numpy.ndarray, shape (n,), float64, electron
        Largest expected signal at which positive jumps are resolvable.
    delta2_e : numpy.ndarray, shape (n,), float64, electron, >= 0
        Second trap's jump (docs/algorithm.md section 9; trap 1, the larger jump, is ``delta_e``).
    frac2_c, frac2_lo, frac2_hi : numpy.ndarray, shape (n,), float64 in [0, 1]
        Second trap's state fractions, at float32 precision like the first's.
    lammax2_e : numpy.ndarray, shape (n,), float64, electron
        Largest expected signal at which the smallest positive level ``min(D2, D1 - D2)`` of a two-trap
        pixel is resolvable.

    The five second-trap arrays are 0 at a pixel with one trap (``delta2_e == 0``); None (the default):
    every pixel has one trap.
    """

    index: np.ndarray
    mu_adu: np.ndarray
    delta_e: np.ndarray
    sigma_e: np.ndarray
    frac_c: np.ndarray
    frac_lo: np.ndarray
    frac_hi: np.ndarray
    lammax_e: np.ndarray
    delta2_e: np.ndarray | None = None
    frac2_c: np.ndarray | None = None
    frac2_lo: np.ndarray | None = None
    frac2_hi: np.ndarray | None = None
    lammax2_e: np.ndarray | None = None

    def __post_init__(self) -> None:
        index = np.asarray(self.index)
        if index.ndim != 1 or (index.size and not np.issubdtype(index.dtype, np.integer)):
            raise CubeFormatError(f"cube: the RTN pixels' index must be a 1-D integer array, got {index.dtype} "
                                  f"of shape {index.shape}")
        self.index = index.astype(np.int64, copy=False)
        for attr in _RTN_ATTRS:
            values = np.asarray(getattr(self, attr), dtype=np.float64)
            if attr in _FLOAT32_COLUMNS:
                values = values.astype(np.float32).astype(np.float64)
            if values.shape != self.index.shape:
                raise CubeFormatError(f"cube: {_NAMES[attr]} has {values.shape} values for the "
                                      f"{self.index.size} RTN pixels")
            setattr(self, attr, values)
        for attr in _TWO_TRAP_ATTRS:
            value = getattr(self, attr)
            if value is None:  # zeros from calloc: no memory is touched for a cube of one-trap pixels
                setattr(self, attr, np.zeros(self.index.shape))
                continue
            values = np.asarray(value, dtype=np.float64)
            if attr in _FLOAT32_COLUMNS:
                values = values.astype(np.float32).astype(np.float64)
            if values.shape != self.index.shape:
                raise CubeFormatError(f"cube: {_NAMES[attr]} has {values.shape} values for the "
                                      f"{self.index.size} RTN pixels")
            setattr(self, attr, values)

    @property
    def n(self) -> int:
        """Number of RTN pixels."""
        return int(self.index.size)

    @property
    def two_trap(self) -> np.ndarray:
        """shape (n,), bool: the pixels with a second trap (``delta2_e > 0``)."""
        return self.delta2_e > 0


class _DensePlane:
    """Read-only attribute ``cube.<name>``: the (ny, nx) float64 plane of an RTN parameter, built on access."""

    def __set_name__(self, owner: type, name: str) -> None:
        self.attr = name

    def __get__(self, cube: RTNCube | None, owner: type | None = None) -> Any:
        return self if cube is None else cube.plane(self.attr)


@dataclass(eq=False)
class RTNCube:
    """Per-pixel RTN parameters of one sensor at one camera setting.

    The RTN pixels (a few % of a sensor) are held sparsely (:class:`RTNPixels`); only the maps every pixel
    has a value in are (ny, nx) arrays. A full IMX455 (61 Mpx, 5 % RTN) takes about 0.8 GB.

    Attributes
    ----------
    shape : tuple of int
        (ny, nx) of the sensor.
    rtn : RTNPixels
        The RTN pixels (those the engine corrects) and their parameters.
    meanbias_adu : numpy.ndarray, shape (ny, nx), float32, adu
        Mean bias of every pixel (mixture mean for RTN pixels); float32 is the precision of format 2 (a
        relative 6e-8, some 3e-5 adu at 500 adu, far below the fit's own uncertainty).
    readnoise_e : numpy.ndarray, shape (ny, nx), float32, electron
        Total read noise of every pixel (RTN included).
    dq : numpy.ndarray, shape (ny, nx), uint16
        Bit flags ``DQ_RTN``, ``DQ_TWO_TRAP``, ``DQ_ANOMALOUS_MEAN``, ``DQ_ANOMALOUS_STD``, ``DQ_HOT``.
    gain_e_per_adu : float
        Conversion gain (FITS ``GAIN`` convention).
    meta : dict
        Detector identifiers and provenance (see ``_META_KEYS``).
    mu_adu, delta_e, sigma_e, frac_c, frac_lo, frac_hi, lammax_e : numpy.ndarray, shape (ny, nx), float64
        Read-only: the dense plane of the RTN parameter, NaN where a pixel has no RTN, built on every access
        (:meth:`plane`; 8 bytes a pixel, for small sensors and tests: code that runs on full sensors reads
        ``rtn``).
    """

    shape: tuple[int, int]
    rtn: RTNPixels
    meanbias_adu: np.ndarray
    readnoise_e: np.ndarray
    dq: np.ndarray
    gain_e_per_adu: float
    meta: dict[str, Any] = field(default_factory=dict)

    mu_adu = _DensePlane()
    delta_e = _DensePlane()
    sigma_e = _DensePlane()
    frac_c = _DensePlane()
    frac_lo = _DensePlane()
    frac_hi = _DensePlane()
    lammax_e = _DensePlane()

    def __post_init__(self) -> None:
        shape = tuple(int(n) for n in self.shape)
        if len(shape) != 2 or min(shape) < 1:
            raise CubeFormatError(f"cube: MU must be a 2-D (ny, nx) plane, got shape {shape}")
        self.shape = shape  # type: ignore[assignment]
        for attr in _FLOAT32_ATTRS:
            values = np.asarray(getattr(self, attr))
            setattr(self, attr, values if np.issubdtype(values.dtype, np.floating) else values.astype(np.float64))
        self.dq = np.asarray(self.dq, dtype=np.uint16)
        _validate(self, source="cube")
        for attr in _FLOAT32_ATTRS:  # validated first: a value beyond float32 is refused by its range, by name
            setattr(self, attr, getattr(self, attr).astype(np.float32, copy=False))

    @classmethod
    def from_planes(cls, *, mu_adu: np.ndarray, delta_e: np.ndarray, sigma_e: np.ndarray, frac_c: np.ndarray,
                    frac_lo: np.ndarray, frac_hi: np.ndarray, lammax_e: np.ndarray, meanbias_adu: np.ndarray,
                    readnoise_e: np.ndarray, dq: np.ndarray, gain_e_per_adu: float,
                    meta: dict[str, Any] | None = None) -> RTNCube:
        """A cube from dense (ny, nx) planes (format 1, the paper's import): RTN pixels where MU is finite.

        Parameters
        ----------
        mu_adu, delta_e, sigma_e, frac_c, frac_lo, frac_hi, lammax_e : array_like, shape (ny, nx)
            The RTN parameters (units as :class:`RTNPixels`), NaN (unused) where a pixel has no RTN.
        meanbias_adu, readnoise_e, dq : array_like, shape (ny, nx)
        gain_e_per_adu : float
        meta : dict, optional

        Raises
        ------
        CubeFormatError
            A plane of another shape than MU, NaN where an RTN pixel needs a value, values out of range.
        """
        planes = {"mu_adu": mu_adu, "delta_e": delta_e, "sigma_e": sigma_e, "frac_c": frac_c,
                  "frac_lo": frac_lo, "frac_hi": frac_hi, "lammax_e": lammax_e, "meanbias_adu": meanbias_adu,
                  "readnoise_e": readnoise_e, "dq": dq}
        mu = np.asarray(mu_adu, dtype=np.float64)
        if mu.ndim != 2:
            raise CubeFormatError(f"cube: MU must be a 2-D (ny, nx) plane, got shape {mu.shape}")
        for attr, plane in planes.items():
            if np.shape(plane) != mu.shape:
                raise CubeFormatError(f"cube: {_NAMES[attr]} has shape {np.shape(plane)}, MU has {mu.shape}")
        index = np.flatnonzero(np.isfinite(mu))
        rtn = RTNPixels(index, **{attr: np.asarray(planes[attr], dtype=np.float64).reshape(-1)[index]
                                  for attr in _RTN_ATTRS})
        return cls(shape=mu.shape, rtn=rtn, meanbias_adu=meanbias_adu, readnoise_e=readnoise_e, dq=dq,
                   gain_e_per_adu=gain_e_per_adu, meta=dict(meta or {}))

    def plane(self, attr: str) -> np.ndarray:
        """The dense (ny, nx) float64 plane of the RTN parameter ``attr`` (e.g. ``'delta_e'``), NaN elsewhere.

        Raises
        ------
        ValueError
            ``attr`` is not an RTN parameter.
        """
        if attr not in _RTN_ATTRS:
            raise ValueError(f"attr must be one of {', '.join(_RTN_ATTRS)}, got {attr!r}")
        out = np.full(self.shape[0] * self.shape[1], np.nan)
        out[self.rtn.index] = getattr(self.rtn, attr)
        return out.reshape(self.shape)

    @property
    def camera(self) -> dict[str, Any]:
        """The camera and setting the cube was fitted on: the :data:`CAMERA_META` entries of ``meta`` present."""
        return {k: self.meta[k] for k in CAMERA_META if self.meta.get(k) is not None}

    @property
    def rtn_mask(self) -> np.ndarray:
        """(ny, nx) bool: pixels whose RTN the engine corrects (built on access)."""
        mask = np.zeros(self.shape[0] * self.shape[1], dtype=bool)
        mask[self.rtn.index] = True
        return mask.reshape(self.shape)

    @property
    def n_rtn(self) -> int:
        """Number of RTN pixels."""
        return self.rtn.n

    @property
    def cube_id(self) -> str:
        """Content hash (16 hex digits) of the gain and what a file stores: the cube's identity everywhere.

        SHA-256 over the gain (float64), the shape (int64), the flat indices of the RTN pixels (int64), the
        RTN parameters there (float64, in the order MU, DELTA, SIGMA, FRAC_C, FRAC_LO, FRAC_HI, LAMMAX; the
        fractions hold float32 values, :class:`RTNPixels`), in a cube with a two-trap pixel only the second
        trap's columns next (DELTA2, FRAC2_C, FRAC2_LO, FRAC2_HI, LAMMAX2, float64: a cube without one has
        the id it had before them), then MEANBIAS and READNOISE as float64 planes,
        and DQ (uint16): the values at non-RTN pixels of the dense RTN planes (NaN, unused) are not part of
        it. A cube and the file it is written to (either version) hold the same values and have the same id.
        """
        h = hashlib.sha256()
        h.update(np.float64(self.gain_e_per_adu).tobytes())
        h.update(np.asarray(self.shape, dtype=np.int64).tobytes())
        h.update(self.rtn.index.astype(np.int64, copy=False).tobytes())
        two_trap = self.rtn.two_trap.any()
        for attr in (*_RTN_ATTRS, *(_TWO_TRAP_ATTRS if two_trap else ())):
            h.update(np.ascontiguousarray(getattr(self.rtn, attr), dtype=np.float64).tobytes())
        for attr in _FLOAT32_ATTRS:  # hashed as float64 (the definition), a few Mpx at a time
            flat = getattr(self, attr).reshape(-1)
            for start in range(0, flat.size, _HASH_CHUNK):
                h.update(flat[start:start + _HASH_CHUNK].astype(np.float64).tobytes())
        h.update(np.ascontiguousarray(self.dq).tobytes())
        return h.hexdigest()[:16]


# Values a real sensor can have, in the plane's unit (docs/formats.md): outside them a cube is refused, so
# that no absurd value (GAIN 1e308, SIGMA 1e-300) reaches the engine's arithmetic.
GAIN_RANGE_E_PER_ADU = (1e-4, 1e4)
_RANGES: dict[str, tuple[float, float, str]] = {
    "MU": (-1e10, 1e10, "adu"),  # beyond every 32-bit frame value
    "DELTA": (1e-6, 1e6, "electron"),
    "SIGMA": (1e-6, 1e6, "electron"),
    "LAMMAX": (0.0, 1e9, "electron"),
    "MEANBIAS": (-1e10, 1e10, "adu"),
    "READNOISE": (0.0, 1e6, "electron"),
}


def _validate(cube: RTNCube, source: str) -> None:
    g = cube.gain_e_per_adu
    lo, hi = GAIN_RANGE_E_PER_ADU
    if isinstance(g, bool) or not (isinstance(g, int | float | np.floating) and np.isfinite(g) and g > 0):
        raise CubeFormatError(f"{source}: GAIN must be a finite positive number in e-/ADU, got {g!r}")
    if not lo <= g <= hi:
        raise CubeFormatError(f"{source}: GAIN must be in [{lo:g}, {hi:g}] e-/ADU, got {g!r}")
    shape = cube.shape
    for attr in ("meanbias_adu", "readnoise_e", "dq"):
        plane = getattr(cube, attr)
        if plane.shape != shape:
            raise CubeFormatError(f"{source}: {_NAMES[attr]} has shape {plane.shape}, the cube has {shape}")
    index = cube.rtn.index
    if index.size and (index[0] < 0 or index[-1] >= shape[0] * shape[1] or np.any(np.diff(index) <= 0)):
        raise CubeFormatError(f"{source}: the RTN pixels' index must be strictly ascending flat pixel indices "
                              f"in [0, {shape[0] * shape[1]})")
    values = {name: (getattr(cube.rtn, attr) if rtn_only else getattr(cube, attr))
              for name, (attr, _unit, rtn_only) in _PLANES.items()}
    for name, (_attr, _unit, rtn_only) in _PLANES.items():
        bad = values[name].size - int(np.count_nonzero(np.isfinite(values[name])))
        if bad:
            scope = "RTN pixels (finite MU)" if rtn_only else "pixels"
            raise CubeFormatError(f"{source}: {name} is NaN or infinite at {bad} {scope}; a value is required")
    checks = (
        ("DELTA", "> 0", lambda a: a > 0),
        ("SIGMA", "> 0", lambda a: a > 0),
        ("LAMMAX", ">= 0", lambda a: a >= 0),
        ("FRAC_C", "in [0, 1]", lambda a: (a >= 0) & (a <= 1)),
        ("FRAC_LO", "in [0, 1]", lambda a: (a >= 0) & (a <= 1)),
        ("FRAC_HI", "in [0, 1]", lambda a: (a >= 0) & (a <= 1)),
    )
    for name, rule, ok in checks:
        bad = int(np.count_nonzero(~ok(values[name])))
        if bad:
            raise CubeFormatError(f"{source}: {name} must be {rule} at RTN pixels; {bad} pixels are not")
    total = values["FRAC_C"] + values["FRAC_LO"] + values["FRAC_HI"]
    bad = int(np.count_nonzero(np.abs(total - 1.0) > 1e-3))
    if bad:
        raise CubeFormatError(f"{source}: FRAC_C + FRAC_LO + FRAC_HI differs from 1 at {bad} RTN pixels")
    bad = int(np.count_nonzero(cube.readnoise_e < 0))
    if bad:
        raise CubeFormatError(f"{source}: READNOISE is negative at {bad} pixels")
    _validate_second_trap(cube, source)
    for name, (lo, hi, unit) in _RANGES.items():
        rtn_only = _PLANES[name][2]
        out = values[name][(values[name] < lo) | (values[name] > hi)]
        if out.size:
            scope = "RTN pixels" if rtn_only else "pixels"
            raise CubeFormatError(f"{source}: {name} must be in [{lo:g}, {hi:g}] {unit}; {out.size} {scope} are "
                                  f"not (e.g. {out[0]:g})")


def _validate_second_trap(cube: RTNCube, source: str) -> None:
    """The second trap's columns (docs/formats.md): finite; ``0 <= DELTA2 <= DELTA``; at a two-trap pixel
    (``DELTA2 > 0``) fractions in [0, 1], each trap's three summing to 1 within float32 rounding, LAMMAX2 in
    the LAMMAX range; at a one-trap pixel all five 0; the DQ two-trap bit exactly at the two-trap pixels."""
    rtn = cube.rtn
    for attr in _TWO_TRAP_ATTRS:
        bad = rtn.n - int(np.count_nonzero(np.isfinite(getattr(rtn, attr))))
        if bad:
            raise CubeFormatError(f"{source}: {_NAMES[attr]} is NaN or infinite at {bad} RTN pixels")
    bad = int(np.count_nonzero(~((rtn.delta2_e >= 0) & (rtn.delta2_e <= rtn.delta_e))))
    if bad:
        raise CubeFormatError(f"{source}: DELTA2 must be in [0, DELTA] at RTN pixels (trap 1 has the larger "
                              f"jump); {bad} pixels are not")
    two = rtn.two_trap
    lo, hi, unit = _RANGES["LAMMAX"]
    checks = (*((attr, "in [0, 1]", lambda a: (a >= 0) & (a <= 1)) for attr in ("frac2_c", "frac2_lo", "frac2_hi")),
              ("lammax2_e", f"in [{lo:g}, {hi:g}] {unit}", lambda a: (a >= lo) & (a <= hi)))
    for attr, rule, ok in checks:
        bad = int(np.count_nonzero(~ok(getattr(rtn, attr)[two])))
        if bad:
            raise CubeFormatError(f"{source}: {_NAMES[attr]} must be {rule} at two-trap pixels; {bad} pixels "
                                  "are not")
        bad = int(np.count_nonzero(getattr(rtn, attr)[~two]))
        if bad:
            raise CubeFormatError(f"{source}: {_NAMES[attr]} must be 0 at one-trap pixels (DELTA2 = 0); {bad} "
                                  "pixels are not")
    for names, attrs in ((("FRAC_C", "FRAC_LO", "FRAC_HI"), ("frac_c", "frac_lo", "frac_hi")),
                         (("FRAC2_C", "FRAC2_LO", "FRAC2_HI"), ("frac2_c", "frac2_lo", "frac2_hi"))):
        total = sum(getattr(rtn, attr)[two] for attr in attrs)
        bad = int(np.count_nonzero(np.abs(total - 1.0) > _TWO_TRAP_FRAC_SUM_TOL))
        if bad:
            raise CubeFormatError(f"{source}: {' + '.join(names)} differs from 1 by more than float32 rounding "
                                  f"({_TWO_TRAP_FRAC_SUM_TOL:g}) at {bad} two-trap pixels")
    flat = cube.dq.reshape(-1)
    flagged = np.concatenate([start + np.flatnonzero(flat[start:start + _HASH_CHUNK] & DQ_TWO_TRAP)
                              for start in range(0, flat.size, _HASH_CHUNK)])
    expected = rtn.index[two]
    if not np.array_equal(flagged, expected):
        differ = np.setxor1d(flagged, expected).size
        raise CubeFormatError(f"{source}: DQ must have the two-trap bit (DQ_2TRAP = {DQ_TWO_TRAP}) exactly at the "
                              f"RTN pixels with DELTA2 > 0; {differ} pixels differ")


def write_cube(cube: RTNCube, path: str | os.PathLike, overwrite: bool = False,
               version: int = CUBE_FORMAT_VERSION) -> Path:
    """Write ``cube`` as a multi-extension FITS file with CHECKSUM/DATASUM.

    Parameters
    ----------
    cube : RTNCube
    path : path
        The file to write.
    overwrite : bool
        Replace an existing file.
    version : {1, 2}
        Format version (docs/formats.md): 2, the default, stores the RTN pixels as a table and the
        full-sensor maps tile-compressed; 1 stores one image plane per parameter.

    Returns
    -------
    pathlib.Path
        The file written.

    Raises
    ------
    ValueError
        ``version`` is not a known format version, or is 1 for a cube with two-trap pixels (format 1 has
        no planes for a second trap).
    FileExistsError
        ``path`` exists and ``overwrite`` is False.
    OSError
        The file cannot be written (e.g. a full disk); a file that was at ``path`` is left as it was.
    """
    from astropy.io import fits

    from rtnstream import __version__
    from rtnstream.fitsio import write_atomic

    if isinstance(version, bool) or version not in CUBE_FORMATS:
        raise ValueError(f"version must be one of {CUBE_FORMATS}, got {version!r}")
    n_two = int(np.count_nonzero(cube.rtn.two_trap))
    if version == 1 and n_two:
        raise ValueError(f"version 1 has no planes for a second trap, and the cube has {n_two} two-trap pixels: "
                         "write it as version 2")
    path = Path(path)
    primary = fits.PrimaryHDU()
    hdr = primary.header
    hdr["RTNFMT"] = (int(version), "rtnstream RTN calibration file format version")
    hdr["GAIN"] = (float(cube.gain_e_per_adu), "[e-/ADU] conversion gain")
    hdr["CUBEID"] = (cube.cube_id, "content hash of the planes")
    hdr["NRTN"] = (cube.n_rtn, "number of RTN pixels")
    if n_two:  # only then: a cube without two-trap pixels keeps its bytes
        hdr["N2TRAP"] = (n_two, "number of two-trap RTN pixels")
    meta = dict(cube.meta)
    meta.setdefault("software_version", __version__)
    for key, name in _META_KEYS.items():
        value = meta.get(name)
        if value is not None:
            hdr[key] = value.item() if isinstance(value, np.generic) else value
    hdus = _v1_hdus(cube) if version == 1 else _v2_hdus(cube)
    dq = hdus[-1]
    for key, (bit, label) in _DQ_KEYS.items():
        dq.header[key] = (bit, f"bit value of the {label} flag")
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path} exists; give overwrite=True (--overwrite) to replace it")
    # through a hidden temporary name: a failure (a full disk) leaves the file that was there
    return write_atomic(fits.HDUList([primary, *hdus]), path, checksum=True)


def _v1_hdus(cube: RTNCube) -> list[fits.ImageHDU]:
    """Format 1: one float64 image per parameter (read back bit for bit: cube_id), then DQ."""
    from astropy.io import fits
    hdus = []
    for name, (attr, unit, _rtn) in _PLANES.items():
        plane = cube.plane(attr) if attr in _RTN_ATTRS else getattr(cube, attr).astype(np.float64)
        hdu = fits.ImageHDU(plane, name=name)
        hdu.header["BUNIT"] = unit
        hdus.append(hdu)
    dq = fits.ImageHDU(cube.dq, name="DQ")
    dq.header["BUNIT"] = ""
    return [*hdus, dq]


def _v2_hdus(cube: RTNCube) -> list[fits.CompImageHDU]:
    """Format 2: one 1-D image a column of the RTN pixels, then MEANBIAS, READNOISE and DQ, all tile-compressed
    (lossless), DQ last."""
    size = cube.shape[0] * cube.shape[1]
    denominator = cube.meta.get("n_bias_frames")
    n = max(cube.n_rtn, 1)
    hdus = [_compressed(f"{_COLUMN_PREFIX}INDEX", cube.rtn.index.astype(
        np.int32 if size <= np.iinfo(np.int32).max else np.int64), "", (min(_COLUMN_TILE, n),))]
    columns = {**_TABLE_COLUMNS, **(_TWO_TRAP_COLUMNS if cube.rtn.two_trap.any() else {})}
    for name, (fmt, attr, unit) in columns.items():
        values = getattr(cube.rtn, attr).astype(np.float32 if fmt == "E" else np.float64)
        hdus.append(_compressed(f"{_COLUMN_PREFIX}{name}", values, unit, (min(_COLUMN_TILE, n),)))
    tile = (min(_TILE_ROWS, cube.shape[0]), cube.shape[1])
    hdus.append(_compressed("MEANBIAS", cube.meanbias_adu, "adu", tile, denominator))
    hdus.append(_compressed("READNOISE", cube.readnoise_e, "electron", tile))
    hdus.append(_compressed("DQ", cube.dq, "", tile))
    return hdus


def _compressed(name: str, values: np.ndarray, unit: str, tile: tuple[int, ...],
                denominator: Any = None) -> fits.CompImageHDU:
    """A lossless tile-compressed image of ``values`` (``quantize_level=0``: no quantization), as the int32
    numerators over ``denominator`` (header RTNDENOM) where those give back every value bit for bit."""
    from astropy.io import fits
    numerators = _exact_numerators(values, denominator)
    hdu = fits.CompImageHDU(values if numerators is None else numerators, name=name,
                            compression_type=_COMPRESSION, quantize_level=0.0, tile_shape=tile)
    hdu.header["BUNIT"] = unit
    if numerators is not None:
        hdu.header[_DENOM_KEY] = (int(denominator), "values are the data divided by this")
    return hdu


def _exact_numerators(values: np.ndarray, denominator: Any) -> np.ndarray | None:
    """int32 ``k`` with ``(k / denominator).astype(values.dtype) == values`` at every element, or None."""
    if isinstance(denominator, bool) or not isinstance(denominator, int | np.integer) or not 0 < denominator < 2**31:
        return None
    scaled = np.rint(values.astype(np.float64) * int(denominator))
    if not np.all(np.abs(scaled) < 2**31):
        return None
    numerators = scaled.astype(np.int32)
    if not np.array_equal(_from_numerators(numerators, int(denominator), values.dtype), values):
        return None
    return numerators


def _from_numerators(numerators: np.ndarray, denominator: int, dtype: np.dtype) -> np.ndarray:
    return (numerators / float(denominator)).astype(dtype, copy=False)


def _unit_ok(found: str, expected: str) -> bool:
    return found.strip().lower() in _UNIT_ALIASES[expected]


def _verify_checksums(where: str, hdul: fits.HDUList) -> None:
    """Raise if an HDU carries CHECKSUM / DATASUM and it does not match (absent keywords are accepted)."""
    for k, hdu in enumerate(hdul):
        name = hdu.name or f"HDU {k}"
        # verify_*: 1 = matches, 0 = fails, 2 = keyword absent
        if "DATASUM" in hdu.header and hdu.verify_datasum() == 0:
            raise CubeFormatError(f"{where}: extension {name} fails its DATASUM check (data corrupted)")
        if "CHECKSUM" in hdu.header and hdu.verify_checksum() == 0:
            raise CubeFormatError(f"{where}: extension {name} fails its CHECKSUM check (file corrupted)")


def _header_shape(hdu: fits.hdu.base.ExtensionHDU | fits.PrimaryHDU) -> tuple[int, ...]:
    """The data shape (numpy order) an HDU's header claims."""
    n = hdu.header.get("NAXIS", 0)
    return tuple(int(hdu.header.get(f"NAXIS{i}", 0)) for i in range(n, 0, -1))


def _check_sizes(where: str, path: Path, hdul: fits.HDUList) -> None:
    """Refuse, before any data is read, an HDU whose header claims more data than the file holds."""
    file_size = path.stat().st_size
    for k, hdu in enumerate(hdul):
        name = hdu.name or f"HDU {k}"
        try:
            start, size = hdul.fileinfo(k)["datLoc"], int(hdu.size)
        except (KeyError, TypeError, ValueError) as exc:
            raise CubeFormatError(f"{where}: extension {name} has an invalid data size ({exc})") from None
        if size < 0 or start + size > file_size:
            raise CubeFormatError(f"{where}: extension {name} claims data of shape {_header_shape(hdu)} "
                                  f"({size} bytes), but the file holds {max(file_size - start, 0)} bytes after "
                                  "its header")


def _plane_hdus(where: str, hdul: fits.HDUList) -> dict[str, fits.ImageHDU]:
    """The required extensions by name, each checked from its header alone: an image of MU's 2-D shape."""
    from astropy.io import fits
    names = {hdu.name.upper(): hdu for hdu in hdul[1:]}
    required = [*_PLANES, "DQ"]
    missing = [n for n in required if n not in names]
    if missing:
        raise CubeFormatError(f"{where}: missing extension(s) {', '.join(missing)}")
    shape = _header_shape(names["MU"])
    if len(shape) != 2:
        raise CubeFormatError(f"{where}: MU must be a 2-D (ny, nx) plane, got shape {shape}")
    for name in required:
        hdu = names[name]
        if not isinstance(hdu, fits.ImageHDU):
            raise CubeFormatError(f"{where}: extension {name} must be an image extension (format 1 has no "
                                  f"tile compression), got {type(hdu).__name__}")
        if _header_shape(hdu) != shape:
            raise CubeFormatError(f"{where}: {name} has shape {_header_shape(hdu)}, MU has {shape}")
    return {name: names[name] for name in required}


def read_cube(path: str | os.PathLike, name: str | None = None) -> RTNCube:
    """Read and validate an RTN calibration file.

    Both format versions are read (``RTNFMT`` in the primary header). Every header is checked before any
    data is read: an extension that claims more data than the file holds, a plane of another shape than
    the others, or (format 2) a compressed map that claims more pixels than its bytes can hold or a table
    with more rows than the sensor has pixels, is refused without allocating it.

    Parameters
    ----------
    path : path
        The FITS file.
    name : str, optional
        What messages call the file (default: ``path``); a service gives the client's file name, never a
        path of its own.

    Raises
    ------
    CubeFormatError
        Unreadable or corrupt FITS, an extension larger than the file, failed checksum, missing extension,
        shape mismatch, wrong BUNIT, NaN where a value is required, out-of-range values. The message names
        the file and the part.
    """
    from astropy.io import fits
    path = Path(path)
    where = str(path) if name is None else name

    def scrub(exc: BaseException) -> str:
        return str(exc).replace(str(path), where)

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", fits.verify.VerifyWarning)
            hdul = fits.open(path, memmap=False, disable_image_compression=True)
            hdul.readall()  # every header now, so a truncated or malformed file fails here, by name
    except FileNotFoundError:
        raise CubeFormatError(f"{where}: no such RTN calibration file") from None
    except (OSError, ValueError, TypeError, fits.verify.VerifyWarning) as exc:
        raise CubeFormatError(f"{where}: not a readable FITS file ({scrub(exc)})") from exc
    with hdul:
        try:
            _check_sizes(where, path, hdul)
            version = _format_version(where, hdul[0].header)
            if version == 2:
                table, images = _v2_hdus_checked(where, hdul)
                _verify_checksums(where, hdul)
                parts = _v2_parts(where, table, images)
            else:
                hdus = _plane_hdus(where, hdul)
                _verify_checksums(where, hdul)
                planes = _v1_planes(where, hdus)
            hdr = hdul[0].header
            if "GAIN" not in hdr:
                raise CubeFormatError(f"{where}: primary header has no GAIN (e-/ADU)")
            meta = {key_name: hdr[key] for key, key_name in _META_KEYS.items() if key in hdr}
            gain = hdr["GAIN"]
            if isinstance(gain, bool | str):
                raise CubeFormatError(f"{where}: GAIN must be a finite positive number in e-/ADU, got {gain!r}")
            if version == 2:
                return RTNCube(gain_e_per_adu=float(gain), meta=meta, **parts)
            return RTNCube.from_planes(gain_e_per_adu=float(gain), meta=meta, **planes)
        except CubeFormatError as exc:
            if str(exc).startswith("cube:"):
                raise CubeFormatError(f"{where}:{str(exc)[5:]}") from None
            raise
        except (OSError, ValueError, TypeError) as exc:
            raise CubeFormatError(f"{where}: corrupt data ({scrub(exc)})") from exc


def _format_version(where: str, header: fits.Header) -> int:
    """``RTNFMT`` of the primary header (a file without it is format 1, as the first files were)."""
    version = header.get("RTNFMT", 1)
    if isinstance(version, bool) or version not in CUBE_FORMATS:
        raise CubeFormatError(f"{where}: RTNFMT {version!r} is not a known format version "
                              f"({', '.join(map(str, CUBE_FORMATS))})")
    return int(version)


def _v1_planes(where: str, hdus: dict[str, fits.ImageHDU]) -> dict[str, np.ndarray]:
    """The (ny, nx) planes of a format-1 file (headers already checked)."""
    planes: dict[str, np.ndarray] = {}
    for ext, hdu in hdus.items():
        if hdu.data is None:
            raise CubeFormatError(f"{where}: extension {ext} has no data")
        if ext == "DQ":
            planes["dq"] = _dq_flags(where, np.asarray(hdu.data))
            continue
        attr, unit, _rtn = _PLANES[ext]
        found = str(hdu.header.get("BUNIT", ""))
        if not _unit_ok(found, unit):
            raise CubeFormatError(f"{where}: extension {ext} has BUNIT {found!r}, expected {unit!r}")
        planes[attr] = np.asarray(hdu.data, dtype=np.float64)
    return planes


def _dq_flags(where: str, dq: np.ndarray) -> np.ndarray:
    if not np.issubdtype(dq.dtype, np.integer) or dq.min(initial=0) < 0 or dq.max(initial=0) > 0xFFFF:
        raise CubeFormatError(f"{where}: extension DQ must hold unsigned 16-bit integer flags, got {dq.dtype}")
    return dq


def _v2_hdus_checked(where: str, hdul: fits.HDUList) -> tuple[fits.BinTableHDU | None, dict[str, fits.BinTableHDU]]:
    """Format 2's compressed images (as the raw binary tables) and, in files of the table layout, the table
    ``RTNPIX`` (else None), checked from their headers alone.

    A map must be a 2-D tile-compressed image (GZIP) of the expected ZBITPIX, every map of one shape, and
    claim no more pixels than its compressed bytes can hold; the RTN pixels' columns likewise 1-D images of
    one length, or the table with every column and its unit; no more RTN pixels than the sensor has pixels.
    """
    names = {hdu.name.upper(): hdu for hdu in hdul[1:]}
    columns = [f"{_COLUMN_PREFIX}{c}" for c in ("INDEX", *_TABLE_COLUMNS)]
    table_layout = _TABLE in names
    required = [*_MAPS] if table_layout else [*columns, *_MAPS]
    second = [f"{_COLUMN_PREFIX}{c}" for c in _TWO_TRAP_COLUMNS]
    if not table_layout and any(n in names for n in second):  # the second trap's columns: all five or none
        required += second
        columns += second
    missing = [n for n in required if n not in names]
    if missing:
        raise CubeFormatError(f"{where}: missing extension(s) {', '.join(missing)}")
    images: dict[str, fits.BinTableHDU] = {}
    shape = None
    for name, zbitpix in _MAPS.items():
        dims = _compressed_dims(where, name, names[name], 2, (zbitpix,))
        if shape is None:
            shape = dims
        elif dims != shape:
            raise CubeFormatError(f"{where}: {name} has shape {dims}, MEANBIAS has {shape}")
        images[name] = names[name]
    size = shape[0] * shape[1]
    if table_layout:
        rows = _table_checked(where, names[_TABLE])
    else:
        rows = None
        formats = {**_TABLE_COLUMNS, **_TWO_TRAP_COLUMNS}
        for name in columns:
            fmt = formats.get(name.removeprefix(_COLUMN_PREFIX), ("J",))[0]
            allowed = (32, 64) if fmt == "J" else (_COLUMN_ZBITPIX[fmt],)
            (length,) = _compressed_dims(where, name, names[name], 1, allowed)
            if rows is None:
                rows = length
            elif length != rows:
                raise CubeFormatError(f"{where}: {name} has {length} rows, {columns[0]} has {rows}")
            images[name] = names[name]
    if rows > size:
        raise CubeFormatError(f"{where}: {_TABLE if table_layout else columns[0]} has {rows} rows, more than the "
                              f"{size} pixels of the maps")
    return (names[_TABLE] if table_layout else None), images


def _compressed_dims(where: str, name: str, hdu: Any, ndim: int, zbitpix: tuple[int, ...]) -> tuple[int, ...]:
    """The (numpy-order) shape of the tile-compressed image ``hdu``, checked from its header alone: ``ndim``
    axes, a ZBITPIX of ``zbitpix`` (or int32 numerators with RTNDENOM where a float is expected), GZIP, and
    no more bytes than deflate can make of those the HDU holds."""
    from astropy.io import fits
    hdr = hdu.header
    if not isinstance(hdu, fits.BinTableHDU) or hdr.get("ZIMAGE") is not True:
        raise CubeFormatError(f"{where}: extension {name} must be a tile-compressed image (format 2), got "
                              f"{type(hdu).__name__}")
    if hdr.get("ZNAXIS") != ndim:
        what = "2-D (ny, nx) map" if ndim == 2 else "1-D column"
        raise CubeFormatError(f"{where}: {name} must be a {what}, got ZNAXIS {hdr.get('ZNAXIS')!r}")
    dims = tuple(hdr.get(f"ZNAXIS{i}") for i in range(ndim, 0, -1))
    if not all(isinstance(d, int) and not isinstance(d, bool) and d > 0 for d in dims):
        raise CubeFormatError(f"{where}: {name} has an invalid shape {dims}")
    found = hdr.get("ZBITPIX")
    if found == 32 and zbitpix[0] < 0:
        denominator = hdr.get(_DENOM_KEY)
        if isinstance(denominator, bool) or not isinstance(denominator, int) or denominator < 1:
            raise CubeFormatError(f"{where}: {name} holds integers (ZBITPIX 32) but no positive integer "
                                  f"{_DENOM_KEY} to divide them by, got {denominator!r}")
    elif found not in zbitpix:
        raise CubeFormatError(f"{where}: {name} must have ZBITPIX {' or '.join(map(str, zbitpix))}, got {found!r}")
    if hdr.get("ZCMPTYPE") not in _COMPRESSIONS:
        raise CubeFormatError(f"{where}: {name} must be compressed with {' or '.join(_COMPRESSIONS)} "
                              f"(lossless), got {hdr.get('ZCMPTYPE')!r}")
    held = int(hdu.size)
    claimed = int(np.prod(dims)) * abs(found) // 8
    if claimed > _MAX_DEFLATE_RATIO * max(held, 1):
        raise CubeFormatError(f"{where}: {name} claims a {'map' if ndim == 2 else 'column'} of shape {dims} "
                              f"({claimed} bytes), more than its {held} compressed bytes can hold")
    return dims


def _table_checked(where: str, table: Any) -> int:
    """Rows of the table ``RTNPIX`` (the layout of 2026-12-01), its columns and units checked."""
    from astropy.io import fits
    if not isinstance(table, fits.BinTableHDU) or table.header.get("ZIMAGE") is True:
        raise CubeFormatError(f"{where}: extension {_TABLE} must be a binary table, got {type(table).__name__}")
    formats = {c.name.upper(): c for c in table.columns}
    missing = [n for n in ("INDEX", *_TABLE_COLUMNS) if n not in formats]
    if missing:
        raise CubeFormatError(f"{where}: {_TABLE} has no column(s) {', '.join(missing)}")
    if str(formats["INDEX"].format) not in ("J", "K", "1J", "1K"):
        raise CubeFormatError(f"{where}: {_TABLE} column INDEX must be a 32- or 64-bit integer (J or K), got "
                              f"{formats['INDEX'].format}")
    for name, (_fmt, _attr, unit) in _TABLE_COLUMNS.items():
        col = formats[name]
        if str(col.format) not in ("E", "D", "1E", "1D"):
            raise CubeFormatError(f"{where}: {_TABLE} column {name} must be a float (E or D), got {col.format}")
        if not _unit_ok(str(col.unit or ""), unit):
            raise CubeFormatError(f"{where}: {_TABLE} column {name} has unit {col.unit!r}, expected {unit!r}")
    return int(table.header.get("NAXIS2", 0))


def _v2_parts(where: str, table: fits.BinTableHDU | None, compressed: dict[str, fits.BinTableHDU]
              ) -> dict[str, Any]:
    """The :class:`RTNCube` fields of a format-2 file (headers already checked): the RTN pixels' columns
    (images, or the table ``RTNPIX``), the maps."""
    from astropy.io import fits
    images = {name: fits.CompImageHDU(bintable=hdu) for name, hdu in compressed.items()}
    units = {**{n: u for n, (_a, u, _r) in _PLANES.items()}, "DQ": "", f"{_COLUMN_PREFIX}INDEX": "",
             **{f"{_COLUMN_PREFIX}{n}": u for n, (_f, _a, u) in (*_TABLE_COLUMNS.items(),
                                                                   *_TWO_TRAP_COLUMNS.items())}}
    for name, image in images.items():
        found = str(image.header.get("BUNIT", ""))
        if name not in ("DQ", f"{_COLUMN_PREFIX}INDEX") and not _unit_ok(found, units[name]):
            raise CubeFormatError(f"{where}: extension {name} has BUNIT {found!r}, expected {units[name]!r}")
    def values(name: str) -> np.ndarray:
        image = images[name]
        data = np.asarray(image.data)
        if _DENOM_KEY in image.header and np.issubdtype(data.dtype, np.integer):  # numerators over RTNDENOM
            return _from_numerators(data, int(image.header[_DENOM_KEY]), np.float32 if name in _MAPS else np.float64)
        return data

    # decompressed side by side (zlib releases the GIL)
    with ThreadPoolExecutor(min(len(images), max(os.cpu_count() or 1, 2)), thread_name_prefix="cube-read") as pool:
        data = dict(zip(images, pool.map(values, images), strict=True))
    parts: dict[str, Any] = {"dq": _dq_flags(where, data.pop("DQ"))}
    for name in ("MEANBIAS", "READNOISE"):
        parts[_PLANES[name][0]] = data.pop(name)
    shape = parts["meanbias_adu"].shape
    if table is None:
        where_index = f"{_COLUMN_PREFIX}INDEX"
        index = data[where_index].astype(np.int64, copy=False)
        columns = {attr: data[f"{_COLUMN_PREFIX}{name}"].astype(np.float64, copy=False)
                   for name, (_fmt, attr, _unit) in (*_TABLE_COLUMNS.items(), *_TWO_TRAP_COLUMNS.items())
                   if f"{_COLUMN_PREFIX}{name}" in data}  # no second-trap columns: a cube of one-trap pixels
    else:
        where_index = f"{_TABLE} INDEX"
        rows = table.data
        index = np.asarray(rows["INDEX"], dtype=np.int64) if rows is not None else np.zeros(0, np.int64)
        columns = {attr: (np.asarray(rows[name], dtype=np.float64) if rows is not None else np.zeros(0))
                   for name, (_fmt, attr, _unit) in _TABLE_COLUMNS.items()}
    size = shape[0] * shape[1]
    if index.size and (index[0] < 0 or index[-1] >= size or np.any(np.diff(index) <= 0)):
        raise CubeFormatError(f"{where}: {where_index} must be strictly ascending flat pixel indices in "
                              f"[0, {size})")
    bad = index.size - int(np.count_nonzero(np.isfinite(columns["mu_adu"])))
    if bad:
        raise CubeFormatError(f"{where}: MU is NaN or infinite in {bad} rows; every row is an RTN pixel")
    parts["shape"] = shape
    parts["rtn"] = RTNPixels(index, **columns)
    return parts


def model_mean_and_std(
    mu_adu: np.ndarray, delta_e: np.ndarray, sigma_e: np.ndarray, frac_lo: np.ndarray, frac_hi: np.ndarray,
    gain_e_per_adu: float,
) -> tuple[np.ndarray, np.ndarray]:
    """Mean (adu) and standard deviation (electron) of the three-level model of ALGORITHM.md section 1.

    ``mean = mu + D (b_hi - b_lo) / g``; ``var = sigma^2 + D^2 (b_lo + b_hi) - (D (b_hi - b_lo))^2``.
    """
    shift_e = delta_e * (frac_hi - frac_lo)
    var_e = sigma_e**2 + delta_e**2 * (frac_lo + frac_hi) - shift_e**2
    return mu_adu + shift_e / gain_e_per_adu, np.sqrt(var_e)


def _read_plane(path: Path, what: str, shape: tuple[int, int]) -> np.ndarray:
    from astropy.io import fits
    try:
        data = fits.getdata(path)
    except (OSError, ValueError, TypeError) as exc:
        raise CubeFormatError(f"{what} {path}: not a readable FITS image ({exc})") from exc
    data = np.asarray(data, dtype=np.float64)
    if data.shape != shape:
        raise CubeFormatError(f"{what} {path}: shape {data.shape} differs from the parameters' {shape}")
    if not np.all(np.isfinite(data)):
        raise CubeFormatError(f"{what} {path}: holds NaN or infinite values")
    return data


def import_paper(
    params_path: str | os.PathLike,
    gain_adu_per_e: float,
    mean_bias_path: str | os.PathLike | None = None,
    read_noise_path: str | os.PathLike | None = None,
) -> RTNCube:
    """Convert the RTN paper's parameter file into an :class:`RTNCube`.

    Parameters
    ----------
    params_path : path
        One primary HDU of 6 planes (6, ny, nx): mu (electron), A, B_low, Delta (electron),
        sigma (electron), lambda_max (electron); NaN where a pixel has no RTN.
    gain_adu_per_e : float
        The paper's gain convention (ADU per electron), e.g. 3.26 for a QHY600M in high-gain mode.
    mean_bias_path : path, optional
        (ny, nx) mean bias in adu. Without it MEANBIAS is the model's mean for RTN pixels and the median
        of those elsewhere (fine for the temporal references; the spatial reference wants a real map).
    read_noise_path : path, optional
        (ny, nx) read noise in electron. Without it READNOISE is the model's standard deviation for RTN
        pixels and the median RTN-free sigma elsewhere.
    """
    from astropy.io import fits
    params_path = Path(params_path)
    g_adu = float(gain_adu_per_e)
    if not (np.isfinite(g_adu) and g_adu > 0):
        raise CubeFormatError(f"gain_adu_per_e must be a finite positive number, got {gain_adu_per_e!r}")
    gain = 1.0 / g_adu
    try:
        with fits.open(params_path, memmap=False) as hdul:
            data = np.asarray(hdul[0].data, dtype=np.float64) if hdul[0].data is not None else None
    except (OSError, ValueError, TypeError) as exc:
        raise CubeFormatError(f"{params_path}: not a readable FITS file ({exc})") from exc
    if data is None or data.ndim != 3 or data.shape[0] != 6:
        shape = None if data is None else data.shape
        raise CubeFormatError(f"{params_path}: expected a primary HDU of 6 planes (6, ny, nx), got {shape}")
    mu_e, a, b_lo, delta_e, sigma_e, lammax = data
    rtn = np.all(np.isfinite(data), axis=0) & (delta_e > 0) & (sigma_e > 0)
    nan = np.full(mu_e.shape, np.nan)

    def keep(plane: np.ndarray) -> np.ndarray:
        return np.where(rtn, plane, nan)

    b_hi = 1.0 - a - b_lo
    # A one-sided pixel stored with A + B_low = 1 gives b_hi of a few -1e-17 by rounding: that is 0.
    b_hi = np.where((b_hi < 0) & (b_hi > -1e-9), 0.0, b_hi)
    with np.errstate(invalid="ignore"):
        bad = int(np.count_nonzero(rtn & ~((a >= 0) & (b_lo >= 0) & (b_hi >= 0))))
    if bad:
        raise CubeFormatError(f"{params_path}: A and B_low must be >= 0 with A + B_low <= 1; {bad} RTN "
                              "pixels are not")
    mu_adu = keep(mu_e * g_adu)
    model_mean, model_std = model_mean_and_std(mu_adu, keep(delta_e), keep(sigma_e), keep(b_lo), keep(b_hi),
                                               gain)
    meta: dict[str, Any] = {}
    if mean_bias_path is not None:
        meanbias = _read_plane(Path(mean_bias_path), "mean bias", mu_e.shape)
        meta["meanbias_source"] = "file"
    else:
        fill = float(np.median(model_mean[rtn])) if rtn.any() else 0.0
        meanbias = np.where(rtn, model_mean, fill)
        meta["meanbias_source"] = "model"
    if read_noise_path is not None:
        readnoise = _read_plane(Path(read_noise_path), "read noise", mu_e.shape)
        meta["readnoise_source"] = "file"
    else:
        fill = float(np.median(sigma_e[rtn])) if rtn.any() else 0.0
        readnoise = np.where(rtn, model_std, fill)
        meta["readnoise_source"] = "model"
    dq = np.where(rtn, DQ_RTN, 0).astype(np.uint16)
    try:
        return RTNCube.from_planes(
            mu_adu=mu_adu, delta_e=keep(delta_e), sigma_e=keep(sigma_e), frac_c=keep(a), frac_lo=keep(b_lo),
            frac_hi=keep(b_hi), lammax_e=keep(lammax), meanbias_adu=meanbias, readnoise_e=readnoise, dq=dq,
            gain_e_per_adu=gain, meta=meta,
        )
    except CubeFormatError as exc:  # name the paper's file, not "cube"
        raise CubeFormatError(f"{params_path}: {str(exc).removeprefix('cube: ')}") from None
