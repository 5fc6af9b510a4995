"""Guards of a correction: no frame corrected twice, with another camera's cube, or with the wrong part of it.

:func:`check_frame_header` refuses a frame already corrected (RTNCORR) or whose header disagrees with
the camera and setting the cube was fitted on (:attr:`RTNCube.camera`), naming the key and both values;
:func:`cube_part` gives the part of the cube under a subframe (ROI) from its origin keys.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from astropy.io import fits

from rtnstream.kernels.cube import RTNCube, RTNPixels
from rtnstream.kernels.exceptions import FrameError

__all__ = ["CAMERA_FRAME_KEYS", "DEFAULT_TEMPERATURE_TOLERANCE_C", "check_frame_header", "cube_part",
           "frame_origin"]

DEFAULT_TEMPERATURE_TOLERANCE_C = 2.0

# cube camera key -> frame header keywords (the first present is compared)
CAMERA_FRAME_KEYS: dict[str, tuple[str, ...]] = {
    "camera": ("INSTRUME", "CAMERA"),
    "detector": ("DETECTOR",),
    "serial": ("SERIALNO", "CAMSERNO"),
    "gain_setting": ("GAINSET", "GAIN"),
    "offset": ("OFFSET", "BLKLEVEL"),
    "readout_mode": ("READOUTM", "READMODE"),
    "binning_x": ("XBINNING",),
    "binning_y": ("YBINNING",),
    "temperature_c": ("CCD-TEMP",),
}


def _same(a: Any, b: Any, tolerance: float) -> bool:
    try:
        fa, fb = float(a), float(b)
    except (TypeError, ValueError):
        return str(a).strip().casefold() == str(b).strip().casefold()
    return abs(fa - fb) <= tolerance


def _is_setting(value: Any) -> bool:
    """A ``GAIN`` card holds a gain setting (an integer in every camera driver) unless it is a fractional
    number, which is the FITS convention's conversion gain in e-/ADU and not comparable with a setting."""
    if isinstance(value, bool):
        return False
    if isinstance(value, int | np.integer):
        return True
    return isinstance(value, float | np.floating) and float(value).is_integer()


def check_frame_header(header: fits.Header, cube: RTNCube, name: str, force: bool = False,
                       temperature_tolerance_c: float = DEFAULT_TEMPERATURE_TOLERANCE_C) -> tuple[str, ...]:
    """Refuse a frame already corrected or taken with another camera or setting than the cube's.

    A key is compared only when both the cube and the frame have it; numbers are equal within 1e-6,
    except the sensor temperature (CCD-TEMP), within ``temperature_tolerance_c`` degrees C. A fractional
    ``GAIN`` is a conversion gain (e-/ADU), not a gain setting, and is not compared.

    Parameters
    ----------
    header : astropy.io.fits.Header
        The frame's header.
    cube : RTNCube
    name : str
        The frame's name for messages (its file).
    force : bool
        Report the disagreements instead of refusing.
    temperature_tolerance_c : float, degrees C

    Returns
    -------
    tuple of str
        The guards overridden with ``force`` (``'RTNCORR'`` and frame keywords), empty when none.

    Raises
    ------
    FrameError
        Without ``force``: the message names the frame, the key and both values.
    """
    problems: list[tuple[str, str]] = []
    if header.get("RTNCORR") is True:
        problems.append(("RTNCORR", f"{name}: already corrected (RTNCORR = T, cube {header.get('RTNCUBE')}); "
                                    "correcting it again would add false corrections (--force to do it anyway)"))
    for meta_key, value in cube.camera.items():
        keys = CAMERA_FRAME_KEYS.get(meta_key, ())
        key = next((k for k in keys if k in header), None)
        if key is None or (key == "GAIN" and not _is_setting(header[key])):
            continue
        tol = temperature_tolerance_c if meta_key == "temperature_c" else 1e-6
        if not _same(header[key], value, tol):
            extra = f" (tolerance {tol} C)" if meta_key == "temperature_c" else ""
            problems.append((key, f"{name}: {key} = {header[key]!r} but the cube was fitted with {meta_key} = "
                                  f"{value!r}{extra}: another camera or setting (--force to correct anyway)"))
    if problems and not force:
        raise FrameError("; ".join(message for _key, message in problems))
    return tuple(key for key, _message in problems)


def frame_origin(header: fits.Header, shape: tuple[int, int], sensor: tuple[int, int], name: str,
                 origin_keys: Sequence[str] = ("XORGSUBF", "YORGSUBF")) -> tuple[int, int] | None:
    """(y0, x0) of a frame in the sensor: None for a full frame, from ``origin_keys`` for a subframe.

    Raises
    ------
    FrameError
        A frame larger than the sensor, a subframe without its origin keys, or one reaching outside.
    """
    if tuple(shape) == tuple(sensor):
        return None
    if shape[0] > sensor[0] or shape[1] > sensor[1]:
        raise FrameError(f"{name}: frames have shape {tuple(shape)}, the RTN cube has {tuple(sensor)}")
    xkey, ykey = origin_keys
    if xkey not in header or ykey not in header:
        raise FrameError(f"{name}: frames have shape {tuple(shape)}, smaller than the RTN cube's {tuple(sensor)}, "
                         f"and the header has no {xkey}/{ykey} to place the subframe on the sensor")
    x0, y0 = header[xkey], header[ykey]
    if not all(isinstance(v, int | np.integer) and not isinstance(v, bool) for v in (x0, y0)):
        raise FrameError(f"{name}: {xkey}/{ykey} must be integers, got {x0!r}/{y0!r}")
    if x0 < 0 or y0 < 0 or y0 + shape[0] > sensor[0] or x0 + shape[1] > sensor[1]:
        raise FrameError(f"{name}: subframe {tuple(shape)} at {xkey}={x0}, {ykey}={y0} reaches outside the "
                         f"sensor {tuple(sensor)}")
    return int(y0), int(x0)


def cube_part(cube: RTNCube, origin: tuple[int, int] | None, shape: tuple[int, int]) -> RTNCube:
    """The cube restricted to the subframe of ``shape`` at ``origin`` (y0, x0); the cube itself for None."""
    if origin is None:
        return cube
    (y0, x0), (ny, nx) = origin, shape
    cut = (slice(y0, y0 + ny), slice(x0, x0 + nx))
    rtn = cube.rtn
    y, x = np.divmod(rtn.index, cube.shape[1])
    inside = np.flatnonzero((y >= y0) & (y < y0 + ny) & (x >= x0) & (x < x0 + nx))
    # row-major order on the sensor is row-major order in the subframe: the index stays ascending
    part = RTNPixels(index=(y[inside] - y0) * nx + (x[inside] - x0),
                     **{attr: getattr(rtn, attr)[inside] for attr in ("mu_adu", "delta_e", "sigma_e", "frac_c",
                                                                      "frac_lo", "frac_hi", "lammax_e", "delta2_e",
                                                                      "frac2_c", "frac2_lo", "frac2_hi", "lammax2_e")})
    return RTNCube(shape=(ny, nx), rtn=part, meanbias_adu=cube.meanbias_adu[cut], readnoise_e=cube.readnoise_e[cut],
                   dq=cube.dq[cut], gain_e_per_adu=cube.gain_e_per_adu, meta=dict(cube.meta))
