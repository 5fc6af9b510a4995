"""FITS sink: write the frames a job publishes as FITS files, through the writer of offline correction.

Each frame becomes one file (:func:`frame_filename`), written atomically by
:func:`rtnstream.fitsio.write_frame_file` with the frame's ``meta`` as header cards, BUNIT, the provenance
keywords and HISTORY line of :mod:`rtnstream.products`, and, given the job's cube, the ``DQ`` and
``UNCERT`` extensions of :class:`rtnstream.products.FrameModel` (the wire protocol carries the frame's
counts, not its per-pixel decisions, so the per-frame LOW / HIGH / VETO bits stay clear: docs/formats.md).
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from urllib.parse import quote

import numpy as np
from astropy.io import fits
from tqdm import tqdm

from rtnstream.clients.stream import FrameReceiver, Message
from rtnstream.fitsio import extension_hdus, header_from_meta, write_frame_file
from rtnstream.kernels.cube import RTNCube
from rtnstream.kernels.lut import get_table
from rtnstream.kernels.pixels import PixelParams
from rtnstream.products import DQ_BITS, FrameModel, history_line, rtn_header_cards
from rtnstream.service.protocol import Header

__all__ = ["frame_filename", "frame_fits_header", "SinkProducts", "write_frame", "run_sink"]

log = logging.getLogger(__name__)


def frame_filename(header: Header) -> str:
    """``<camera>_<series>_<seq:06d>.fits`` (camera and series URL-quoted so any id makes a safe name)."""
    return f"{quote(header.camera, safe='')}_{quote(header.series, safe='')}_{header.seq:06d}.fits"


def frame_fits_header(header: Header) -> fits.Header:
    """FITS cards of an output frame: its ``meta`` (every card the producer sent), CAMERA, SERIES, SEQ,
    EXPTIME and DATE-OBS when ``meta`` lacks them, BUNIT, the provenance keywords
    (:func:`rtnstream.products.rtn_header_cards`) and a HISTORY line."""
    hdr = header_from_meta(header.meta)
    hdr["CAMERA"] = (header.camera, "camera stream")
    hdr["SERIES"] = (header.series[:68], "series id")
    hdr["SEQ"] = (header.seq, "frame number in the series")
    if header.exptime is not None and "EXPTIME" not in hdr:
        hdr["EXPTIME"] = (header.exptime, "[s] exposure time")
    if "DATE-OBS" not in hdr:  # the exposure's time from the producer's header, never overwritten
        if isinstance(header.timestamp, str):
            hdr["DATE-OBS"] = (header.timestamp.rstrip("Z"), "UTC")
        elif header.timestamp is not None:
            hdr["TSTAMP"] = (float(header.timestamp), "[s] unix time of the frame")
    if "BUNIT" not in hdr:
        hdr["BUNIT"] = ("adu", "physical unit of the array values")
    if header.rtn is not None:
        rtn = header.rtn
        for key, value, comment in rtn_header_cards(rtn.engine_settings(), rtn.cube, rtn.counts(), rtn.corrected):
            hdr[key] = (value, comment)
        if rtn.overload:
            hdr["RTNOVERL"] = (rtn.overload, "overload policy that bypassed the correction")
        hdr.add_history(history_line(rtn.cube, "correct", rtn.corrected))
    return hdr


class SinkProducts:
    """DQ and UNCERT of the frames of a job corrected with ``cube``.

    Parameters
    ----------
    cube : RTNCube
        The job's cube; frames corrected with another (another RTNCUBE) or of another shape get no products.
    dq, uncertainty : bool
    """

    def __init__(self, cube: RTNCube, dq: bool = True, uncertainty: bool = True) -> None:
        self.cube = cube
        self.dq = dq
        self.uncertainty = uncertainty
        self._models: dict[float, FrameModel] = {}

    def extensions(self, header: Header, data: np.ndarray, states: np.ndarray | None = None) -> list:
        """The extension HDUs of one frame (none when it does not belong to the cube); ``states``: the job's
        per-pixel decisions in this frame (jobs with ``states``), for the per-frame DQ bits."""
        rtn = header.rtn
        if rtn is None or rtn.cube != self.cube.cube_id or tuple(data.shape) != self.cube.shape:
            log.warning("frame %s#%s: not corrected with cube %s; written without DQ/UNCERT", header.series,
                        header.seq, self.cube.cube_id)
            return []
        if rtn.alpha not in self._models:
            self._models[rtn.alpha] = FrameModel(self.cube, PixelParams.from_cube(self.cube, get_table(rtn.alpha)))
        if states is not None and states.size != self.cube.n_rtn:
            log.warning("frame %s#%s: %d per-pixel decisions for %d RTN pixels; DQ written without them",
                        header.series, header.seq, states.size, self.cube.n_rtn)
            states = None
        dq, uncert, _mask = self._models[rtn.alpha].products(data, states, rtn.corrected, "correct", self.dq,
                                                             self.uncertainty)
        return extension_hdus(dq, uncert, None, DQ_BITS, compressed=False)


def write_frame(message: Message, outdir: Path, products: SinkProducts | None = None) -> Path:
    """Write one output frame to ``outdir`` (atomically); returns the file written."""
    exts = products.extensions(message.header, message.data, message.states) if products is not None else []
    return write_frame_file(Path(outdir) / frame_filename(message.header), message.data,
                            frame_fits_header(message.header), extensions=exts)


def run_sink(receiver: FrameReceiver, outdir: str | os.PathLike, max_frames: int | None = None,
             idle_timeout_s: float | None = None, progress: bool = True, products: SinkProducts | None = None
             ) -> int:
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
            write_frame(msg, outdir, products)
            written += 1
            bar.update(1)
            bar.set_postfix_str(f"{msg.header.series}#{msg.header.seq} at {time.strftime('%H:%M:%S')}")
    return written
