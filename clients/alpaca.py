"""ASCOM Alpaca camera: active acquisition of a series through the maintained ``alpyca`` client.

Each exposure is started with ``StartExposure``, waited for with ``ImageReady`` and read with the ImageBytes
transfer when the device offers it (``ImageArrayRaw``), else as JSON (``ImageArray``). The frame carries the
exposure's real start (``LastExposureStartTime``, also ``meta['DATE-OBS']``) as its ``timestamp``, the
duration the camera reports (``LastExposureDuration``) as ``exptime``, and the camera's settings in ``meta``
under the keywords N.I.N.A. and MaxIm write: INSTRUME, DETECTOR, GAIN, OFFSET, READOUTM, XBINNING / YBINNING,
XORGSUBF / YORGSUBF (the subframe's origin), EGAIN, CCD-TEMP, IMAGETYP.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import alpaca.exceptions
import numpy as np
import requests
from alpaca.camera import Camera
from alpaca.exceptions import InvalidValueException, NotImplementedException
from tqdm import tqdm

from rtnstream.clients._source import SourceError, date_obs
from rtnstream.clients.stream import FrameSender

__all__ = ["ALPACA_ERRORS", "camera_settings", "expose", "acquire"]

log = logging.getLogger(__name__)

#: What talking to an Alpaca device can raise: the HTTP client's errors and alpyca's one class per ASCOM error
#: (they share no base class).
ALPACA_ERRORS: tuple[type[Exception], ...] = (requests.RequestException, *(
    v for v in vars(alpaca.exceptions).values() if isinstance(v, type) and issubclass(v, Exception)))

_POLL_S = 0.02  # ImageReady is asked this often while an exposure runs
_READOUT_GRACE_S = 60.0  # an exposure not ready this long after its duration is an error


def _optional(read: Callable[[], Any]) -> Any:
    """A property the device may not implement (None then)."""
    try:
        return read()
    except NotImplementedException:
        return None


def camera_settings(camera: Camera) -> dict[str, Any]:
    """The camera's settings as FITS keywords for ``meta`` (those the device implements).

    Returns
    -------
    dict
        ``INSTRUME`` (the device's name), ``DETECTOR`` (sensor name), ``XBINNING`` / ``YBINNING``,
        ``XORGSUBF`` / ``YORGSUBF`` (subframe origin, binned pixels), ``GAIN`` and ``OFFSET`` (the device's
        values; where it names them in a list, ``GAIN`` is the index and ``GAINNAME`` the name, likewise
        ``OFFSETNM``), ``READOUTM`` (the readout mode's name), ``EGAIN`` (e-/ADU), ``CCD-TEMP`` (deg C).
    """
    meta: dict[str, Any] = {"INSTRUME": camera.Name, "XBINNING": camera.BinX, "YBINNING": camera.BinY,
                            "XORGSUBF": camera.StartX, "YORGSUBF": camera.StartY}
    optional = {"DETECTOR": lambda: camera.SensorName, "EGAIN": lambda: camera.ElectronsPerADU,
                "CCD-TEMP": lambda: camera.CCDTemperature}
    for key, read in optional.items():
        if (value := _optional(read)) is not None:
            meta[key] = value
    for key, name_key, value, names in (("GAIN", "GAINNAME", lambda: camera.Gain, lambda: camera.Gains),
                                        ("OFFSET", "OFFSETNM", lambda: camera.Offset, lambda: camera.Offsets)):
        if (v := _optional(value)) is None:
            continue
        meta[key] = v
        listed = _optional(names)
        if listed and 0 <= v < len(listed):
            meta[name_key] = listed[v]
    mode, modes = _optional(lambda: camera.ReadoutMode), _optional(lambda: camera.ReadoutModes)
    if mode is not None:
        meta["READOUTM"] = modes[mode] if modes and 0 <= mode < len(modes) else mode
    return meta


def _start_time(text: str | None, fallback: datetime) -> str:
    """``LastExposureStartTime`` (FITS form, UTC; some devices add an offset) as DATE-OBS, to the microsecond."""
    try:
        return date_obs(datetime.fromisoformat(text) if text else fallback, "microseconds")
    except ValueError:
        log.warning("the camera's LastExposureStartTime %r is not ISO 8601; the request time is used", text)
        return date_obs(fallback, "microseconds")


def _image(camera: Camera, nx: int, ny: int, dtype: np.dtype) -> np.ndarray:
    """The last image as (ny, nx): Alpaca's arrays are indexed [x][y], so they are transposed."""
    try:
        xy = np.asarray(camera.ImageArrayRaw).reshape(nx, ny)  # ImageBytes: the fast transfer
    except InvalidValueException:  # no ImageBytes on this device: the (slow) JSON transfer
        xy = np.asarray(camera.ImageArray)
    if xy.shape != (nx, ny):
        raise SourceError(f"the camera sent an image of {xy.shape[0]} x {xy.shape[1]} pixels; its subframe is "
                          f"{nx} x {ny}")
    info = np.iinfo(dtype)
    if xy.size and (xy.min() < info.min or xy.max() > info.max):
        raise SourceError(f"the camera's pixel values {xy.min()}..{xy.max()} do not fit {dtype} (its MaxADU)")
    return np.ascontiguousarray(xy.T, dtype=dtype)


def expose(camera: Camera, exposure_s: float, light: bool) -> tuple[np.ndarray, str, float]:
    """Take one exposure; returns (frame (ny, nx), DATE-OBS of its start, its duration in s)."""
    nx, ny = camera.NumX, camera.NumY
    dtype = np.dtype(np.uint16 if camera.MaxADU <= 65535 else np.uint32)
    requested = datetime.now(UTC)
    camera.StartExposure(exposure_s, light)
    deadline = time.monotonic() + exposure_s + _READOUT_GRACE_S
    while not camera.ImageReady:
        if time.monotonic() > deadline:
            raise SourceError(f"the camera's image was not ready {_READOUT_GRACE_S:g} s after the end of its "
                              f"{exposure_s:g} s exposure")
        time.sleep(_POLL_S)
    start = _start_time(_optional(lambda: camera.LastExposureStartTime), requested)
    duration = _optional(lambda: camera.LastExposureDuration)
    return _image(camera, nx, ny, dtype), start, float(exposure_s if duration is None else duration)


def acquire(sender: FrameSender, camera: Camera, exposure_s: float, count: int, dark: bool = False,
            series: str | None = None, progress: bool = False) -> str:
    """Take ``count`` exposures as one series (start, frames, end); returns the series id.

    Parameters
    ----------
    sender : FrameSender
        Connected to the job's ingest endpoint.
    camera : alpaca.camera.Camera
        Connected; its binning, subframe, gain, offset and readout mode are used as they are set.
    exposure_s : float >= 0
        Exposure time, s.
    count : int >= 1
    dark : bool
        Dark frames (shutter closed, ``IMAGETYP = 'DARK'``) instead of light frames.
    series : str, optional
        Series id (default: a new unique one).
    progress : bool
        Show a progress bar.

    Raises
    ------
    ValueError
        ``exposure_s`` < 0 or ``count`` < 1.
    SourceError
        An image was not ready in time, or does not fit the camera's subframe or MaxADU.
    """
    if not exposure_s >= 0:
        raise ValueError(f"exposure_s must be >= 0 (s), got {exposure_s}")
    if count < 1:
        raise ValueError(f"count must be >= 1, got {count}")
    settings = camera_settings(camera)
    series = sender.start_series(series, meta=settings)
    for _ in tqdm(range(count), unit="frame", desc="alpaca", disable=not progress):
        data, start, duration = expose(camera, exposure_s, light=not dark)
        temperature = _optional(lambda: camera.CCDTemperature)
        meta = {**settings, "IMAGETYP": "DARK" if dark else "LIGHT", "DATE-OBS": start, "EXPTIME": duration}
        if temperature is not None:
            meta["CCD-TEMP"] = temperature
        sender.send_frame(data, exptime=duration, timestamp=start, meta=meta)
    sender.end_series()
    return series
