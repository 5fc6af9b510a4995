"""Test nights written the way acquisition software writes them (one file a frame, full headers).

``nina``: ``LIGHT_<object>_<n>.fits`` (numbers not zero-padded, so name order is not time order), GAIN as
the gain setting, EGAIN, OFFSET, READOUTM. ``sharpcap``: ``Capture_<n>.fits`` with 7-digit fractional
seconds in DATE-OBS and XORGSUBF / YORGSUBF. ``maxim``: ``<object>-<n>L.fit``, IMAGETYP 'Light Frame'.
``ekos``: ``<object>_Light_<filter>_<t>_secs_<n>.fits.fz``, a RICE tile-compressed image in extension 1.
``sci``: the image in an uncompressed ``SCI`` image extension after an empty primary HDU.
"""

from __future__ import annotations

import dataclasses
from datetime import datetime, timedelta
from pathlib import Path

import numpy as np
from astropy.io import fits

from rtnstream.kernels.cube import RTNCube

STYLES = ("nina", "sharpcap", "maxim", "ekos", "sci")

CAMERA = {"camera": "QHY600M", "gain_setting": 56, "offset": 30, "readout_mode": "High Gain Mode",
          "binning_x": 1, "binning_y": 1, "temperature_c": -10.0}


def with_camera(cube: RTNCube, **changes) -> RTNCube:
    """A copy of ``cube`` whose meta records the test camera (with ``changes``)."""
    meta = {**cube.meta, **CAMERA, **changes}
    return dataclasses.replace(cube, meta=meta)


def header_for(style: str, k: int, start: datetime, cadence_s: float, obj: str = "M31", filt: str = "L",
               exptime: float = 2.0, gain: int = 56, temperature: float = -10.0, origin=None) -> fits.Header:
    """The header acquisition software ``style`` writes for frame ``k`` of a night."""
    t = start + timedelta(seconds=k * cadence_s)
    h = fits.Header()
    h["IMAGETYP"] = "Light Frame" if style == "maxim" else "LIGHT"
    digits = 7 if style == "sharpcap" else 3
    h["DATE-OBS"] = t.strftime("%Y-%m-%dT%H:%M:%S.") + f"{t.microsecond:06d}{'0' * 7}"[:digits]
    h["EXPTIME"] = exptime
    h["EXPOSURE"] = exptime
    h["INSTRUME"] = "QHY600M"
    h["GAIN"] = gain
    h["EGAIN"] = 0.3067
    h["OFFSET"] = 30
    if style in ("nina", "maxim"):
        h["READOUTM"] = "High Gain Mode"
    h["XBINNING"] = 1
    h["YBINNING"] = 1
    h["CCD-TEMP"] = temperature
    h["FILTER"] = filt
    h["OBJECT"] = obj
    h["RA"] = 10.6847
    h["DEC"] = 41.269
    h["HIERARCH NINA SEQUENCE TITLE"] = "night 1"
    h.add_history("written by a test acquisition program")
    if origin is not None or style in ("sharpcap", "maxim"):
        y0, x0 = origin or (0, 0)
        h["XORGSUBF"] = x0
        h["YORGSUBF"] = y0
    return h


def file_name(style: str, k: int, obj: str = "M31", filt: str = "L", exptime: float = 2.0) -> str:
    return {"nina": f"LIGHT_{obj}_{k}.fits", "sharpcap": f"Capture_{k}.fits", "maxim": f"{obj}-{k}{filt}.fit",
            "ekos": f"{obj}_Light_{filt}_{exptime:g}_secs_{k}.fits.fz", "sci": f"{obj}_sci_{k}.fits"}[style]


def write_frame(path: Path, style: str, data: np.ndarray, header: fits.Header) -> Path:
    """Write one frame file of ``style``."""
    if style == "ekos":
        hdus = [fits.PrimaryHDU(), fits.CompImageHDU(data, header=header, name="SCI", compression_type="RICE_1")]
    elif style == "sci":
        hdus = [fits.PrimaryHDU(header=fits.Header([("ORIGIN", "test pipeline")])),
                fits.ImageHDU(data, header=header, name="SCI")]
    else:
        hdus = [fits.PrimaryHDU(data, header=header)]
    fits.HDUList(hdus).writeto(path)
    return path


def write_night(folder: Path, frames: np.ndarray, style: str = "nina", first: int = 1, cadence_s: float = 3.0,
                start: datetime | None = None, **header_args) -> list[Path]:
    """Write ``frames`` (n, ny, nx) as one file each, in time order; returns the paths in time order."""
    folder.mkdir(parents=True, exist_ok=True)
    start = start or datetime(2026, 11, 30, 21, 0, 0, 125000)
    paths = []
    for k, frame in enumerate(frames):
        name_args = {a: header_args[a] for a in ("obj", "filt", "exptime") if a in header_args}
        path = folder / file_name(style, first + k, **name_args)
        paths.append(write_frame(path, style, frame, header_for(style, k, start, cadence_s, **header_args)))
    return paths
