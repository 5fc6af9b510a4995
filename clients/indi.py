"""Passive INDI listener: every image a CCD device sends (exposures another client triggers) forwarded as frames.

The listener is an INDI client (:mod:`indipyclient`) that enables BLOBs of one device (``enableBLOB Also``) and
never sets a property: the observatory software (KStars/Ekos, a script, ``indi_setprop``) drives the camera,
and each FITS image the driver sends to its clients goes to the job as one frame, with the file's whole header
in ``meta`` (:func:`rtnstream.clients.replay.header_meta`), the exposure time from the device's
``CCD_EXPOSURE`` and its start from the header's ``DATE-OBS`` (else the time the driver reported the exposure
busy). A new series starts when the settings change (exposure time, binning, frame / ROI, gain, offset,
frame shape or dtype) or after ``idle_s`` seconds without an image.
"""

from __future__ import annotations

import asyncio
import logging
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from typing import Any

from indipyclient import IPyClient
from tqdm import tqdm

from rtnstream.clients._source import date_obs
from rtnstream.clients.replay import header_meta, header_timestamp
from rtnstream.clients.stream import FrameSender
from rtnstream.fitsio import FrameSource

__all__ = ["INDISource", "SETTINGS", "READINGS"]

log = logging.getLogger(__name__)

#: INDI number vectors whose values make a series (vector -> member -> the FITS keyword it fills in ``meta``
#: when the image's own header lacks it), besides the exposure time. Vectors a device lacks are left out.
SETTINGS: dict[str, dict[str, str]] = {
    "CCD_BINNING": {"HOR_BIN": "XBINNING", "VER_BIN": "YBINNING"},
    "CCD_FRAME": {"X": "XORGSUBF", "Y": "YORGSUBF", "WIDTH": "NAXIS1", "HEIGHT": "NAXIS2"},
    "CCD_GAIN": {"GAIN": "GAIN"},
    "CCD_OFFSET": {"OFFSET": "OFFSET"},
    "CCD_CONTROLS": {"Gain": "GAIN", "Offset": "OFFSET"},
}
#: Read like SETTINGS, carried in ``meta``, but no series setting.
READINGS: dict[str, dict[str, str]] = {"CCD_TEMPERATURE": {"CCD_TEMPERATURE_VALUE": "CCD-TEMP"}}
_FITS_FORMATS = (".fits", ".fit", ".fts")


class INDISource(IPyClient):
    """An INDI client forwarding every image of one CCD device to a job.

    Parameters
    ----------
    host : str
        The INDI server's host.
    port : int
        Its port (INDI's default is 7624).
    device : str
        The CCD device, e.g. ``'CCD Simulator'``.
    sender : FrameSender
        Connected to the job's ingest endpoint; used from one thread only.
    idle_s : float or None
        End the series after this many seconds without an image (None: only a settings change ends it).
    blob : str
        The BLOB vector that carries the images (``CCD1``, the primary chip).
    progress : bool
        Show a count of the frames forwarded.

    Raises
    ------
    ValueError
        ``idle_s`` is not > 0.
    """

    def __init__(self, host: str, port: int, device: str, sender: FrameSender, idle_s: float | None = None,
                 blob: str = "CCD1", progress: bool = False) -> None:
        if idle_s is not None and not idle_s > 0:
            raise ValueError(f"idle_s must be > 0 (s) or None, got {idle_s}")
        super().__init__(indihost=host, indiport=port)
        self.device = device
        self.blob = blob
        self.sender = sender
        self.idle_s = idle_s
        self.resend_enableBLOB_on_def = False  # BLOBs of this one device only, enabled below
        self.enable_reports = False
        self._key: tuple | None = None  # settings of the open series
        self._last_frame_s = 0.0
        # (when, seconds) of the exposure the driver last reported busy: CCD_EXPOSURE counts down to 0 as it runs
        self._exposure: tuple[datetime, float] | None = None
        self._io = ThreadPoolExecutor(max_workers=1, thread_name_prefix="indi-send")  # the sender's one thread
        self._bar = tqdm(unit="frame", desc=f"indi {device}", disable=not progress)

    # ------------------------------------------------------------------ INDI events
    async def rxevent(self, event: Any) -> None:
        """Enable the device's image BLOBs when defined, note exposure starts, forward each image."""
        if event.eventtype == "ConnectionMade":
            log.info("connected to the INDI server %s:%s; waiting for %s", self.indihost, self.indiport, self.device)
        elif event.eventtype == "ConnectionLost" and not self._stop:
            log.warning("lost the INDI server %s:%s; reconnecting", self.indihost, self.indiport)
        if event.devicename != self.device:
            return
        if event.eventtype == "DefineBLOB" and event.vectorname == self.blob:
            await self.send_enableBLOB("Also", self.device, self.blob)  # the driver defines it again and again
            log.log(logging.DEBUG if self._key else logging.INFO, "%s: images of %s enabled; forwarding each "
                    "exposure", self.device, self.blob)
        elif event.eventtype == "SetNumber" and event.vectorname == "CCD_EXPOSURE":
            if event.vector.state == "Busy" and self._exposure is None:
                self._exposure = (event.timestamp, event.vector.getfloatvalue("CCD_EXPOSURE_VALUE"))
        elif event.eventtype == "SetBLOB" and event.vectorname == self.blob:
            exposure, self._exposure = self._exposure, None
            for member, value in event.items():
                fmt = event.sizeformat[member][1]
                if not value:
                    continue
                if fmt.lower() not in _FITS_FORMATS:
                    log.warning("%s.%s: a %r image left out (only FITS is forwarded: set CCD_TRANSFER_FORMAT to "
                                "FITS and CCD_COMPRESSION off)", self.device, member, fmt)
                    continue
                settings = self._settings()
                await asyncio.get_running_loop().run_in_executor(self._io, self._forward, value, settings, exposure)

    async def hardware(self) -> None:
        """Runs beside the INDI connection: ends the series after ``idle_s`` without an image."""
        while not self._stop:
            await asyncio.sleep(0.1)
            if self.idle_s is not None and self._key is not None and self._idle():
                await asyncio.get_running_loop().run_in_executor(self._io, self._end_idle_series)

    # ------------------------------------------------------------------ frames
    def _settings(self) -> dict[tuple[str, str], float]:
        """(vector, member) -> value of the device's current settings (those it has)."""
        device = self.get(self.device)
        out: dict[tuple[str, str], float] = {}
        for vector_name, members in (SETTINGS | READINGS).items():
            vector = None if device is None else device.get(vector_name)
            if vector is None or vector.vectortype != "NumberVector":
                continue
            for member in members:
                if member in vector:
                    out[(vector_name, member)] = vector.getfloatvalue(member)
        return out

    def _forward(self, blob: bytes, settings: dict[tuple[str, str], float],
                 exposure: tuple[datetime, float] | None) -> None:
        with tempfile.NamedTemporaryFile(suffix=".fits") as tmp:
            tmp.write(blob)
            tmp.flush()
            with FrameSource(tmp.name) as src:
                data, header = src.read(0), src.header
        meta, left_out = header_meta(header)
        if left_out:
            log.warning("%s: not carried in meta: %s", self.device, "; ".join(left_out))
        keywords = SETTINGS | READINGS
        for (vector, member), value in settings.items():
            if not keywords[vector][member].startswith("NAXIS"):
                meta.setdefault(keywords[vector][member], value)
        exptime = exposure[1] if exposure is not None else meta.get("EXPTIME")
        exptime = float(exptime) if isinstance(exptime, int | float) and not isinstance(exptime, bool) else None
        if exptime is not None:
            meta.setdefault("EXPTIME", exptime)
        stamp = header_timestamp(header)  # the driver's DATE-OBS: the exposure's start
        if stamp is None and exposure is not None:
            stamp = date_obs(exposure[0])
        key = (exptime, data.shape, data.dtype.str, *sorted((k, v) for k, v in settings.items() if k[0] in SETTINGS))
        if key != self._key:
            if self._key is not None:
                self._end_series("settings changed")
            self.sender.start_series(meta={k: meta[k] for k in ("EXPTIME", "XBINNING", "YBINNING", "GAIN",
                                                                   "OFFSET") if k in meta})
            self._key = key
            log.info("%s: series %s (exposure %s s, %d x %d)", self.device, self.sender.series, exptime,
                     data.shape[1], data.shape[0])
        self.sender.send_frame(data, exptime=exptime, timestamp=stamp, meta=meta)
        self._last_frame_s = time.monotonic()
        self._bar.update(1)

    def _idle(self) -> bool:
        return time.monotonic() - self._last_frame_s > self.idle_s

    def _end_idle_series(self) -> None:
        if self._idle():  # asked again in the sending thread: a frame may have gone out since
            self._end_series("idle")

    def _end_series(self, why: str) -> None:
        if self._key is not None:
            log.info("%s: series %s ends (%s)", self.device, self.sender.series, why)
            self.sender.end_series()
            self._key = None

    def finish(self) -> None:
        """End the open series (call after the client stopped) and release the sending thread."""
        self._io.submit(self._end_series, "listener stopped").result()
        self._io.shutdown()
        self._bar.close()
