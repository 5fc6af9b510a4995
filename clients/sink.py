"""FITS sink: write the frames a job publishes as FITS files with the RTN provenance keys."""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from urllib.parse import quote

from astropy.io import fits
from tqdm import tqdm

from rtnstream.clients.stream import FrameReceiver, Message
from rtnstream.fitsio import FrameSink
from rtnstream.offline import rtn_header_cards
from rtnstream.service.protocol import Header

__all__ = ["frame_filename", "frame_fits_header", "write_frame", "run_sink"]

log = logging.getLogger(__name__)


def frame_filename(header: Header) -> str:
    """``<camera>_<series>_<seq:06d>.fits`` (camera and series URL-quoted so any id makes a safe name)."""
    return f"{quote(header.camera, safe='')}_{quote(header.series, safe='')}_{header.seq:06d}.fits"


def frame_fits_header(header: Header) -> fits.Header:
    """FITS cards of an output frame: its ``meta``, CAMERA, SERIES, SEQ, EXPTIME, DATE-OBS and the RTN keys
    (:func:`rtnstream.offline.rtn_header_cards`)."""
    hdr = fits.Header()
    for key, value in header.meta.items():
        if isinstance(value, str | int | float | bool) and len(key) <= 8:
            hdr[key.upper()] = value
    hdr["CAMERA"] = (header.camera, "camera stream")
    hdr["SERIES"] = (header.series[:68], "series id")
    hdr["SEQ"] = (header.seq, "frame number in the series")
    if header.exptime is not None:
        hdr["EXPTIME"] = (header.exptime, "[s] exposure time")
    if isinstance(header.timestamp, str):
        hdr["DATE-OBS"] = (header.timestamp.rstrip("Z"), "UTC")
    elif header.timestamp is not None:
        hdr["TSTAMP"] = (float(header.timestamp), "[s] unix time of the frame")
    if header.rtn is not None:
        rtn = header.rtn
        cards = rtn_header_cards(rtn.engine_settings(), rtn.cube, rtn.counts(), rtn.corrected)
        for key, value, comment in cards:
            hdr[key] = (value, comment)
        if rtn.overload:
            hdr["RTNOVERL"] = (rtn.overload, "overload policy that bypassed the correction")
    return hdr


def write_frame(message: Message, outdir: Path) -> Path:
    """Write one output frame to ``outdir``; returns the file written."""
    path = Path(outdir) / frame_filename(message.header)
    sink = FrameSink(path, message.data.shape, message.data.dtype, 1, frame_fits_header(message.header))
    sink.write(message.data)
    sink.close()
    return path


def run_sink(receiver: FrameReceiver, outdir: str | os.PathLike, max_frames: int | None = None,
             idle_timeout_s: float | None = None, progress: bool = True) -> int:
    """Write every frame received to ``outdir`` until ``max_frames`` frames or ``idle_timeout_s`` of silence.

    Returns
    -------
    int
        Frames written.
    """
    outdir = Path(outdir)
    outdir.mkdir(parents=True, exist_ok=True)
    written = 0
    with tqdm(unit="frame", desc="sink", disable=not progress) as bar:
        while max_frames is None or written < max_frames:
            msg = receiver.recv(idle_timeout_s)
            if msg is None:
                break
            if msg.header.kind != "frame":
                log.info("series %s: %s", msg.header.series, msg.header.kind)
                continue
            write_frame(msg, outdir)
            written += 1
            bar.update(1)
            bar.set_postfix_str(f"{msg.header.series}#{msg.header.seq} at {time.strftime('%H:%M:%S')}")
    return written
