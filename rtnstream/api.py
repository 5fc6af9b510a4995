"""Python API: correct a series of :class:`astropy.nddata.CCDData` frames, for ccdproc or BANZAI-style pipelines."""

from __future__ import annotations

import copy
import os
from collections.abc import Sequence
from typing import Any

import numpy as np
from astropy import units as u
from astropy.io import fits
from astropy.nddata import CCDData, StdDevUncertainty

from rtnstream.fitsio import header_from_meta
from rtnstream.guards import DEFAULT_TEMPERATURE_TOLERANCE_C, check_frame_header, cube_part, frame_origin
from rtnstream.kernels.cube import RTNCube, read_cube
from rtnstream.kernels.engine import BackendName, EngineSettings
from rtnstream.kernels.exceptions import FrameError
from rtnstream.products import FrameProducts, Mode, SeriesCorrector, history_line, rtn_header_cards

__all__ = ["correct_ccddata"]


def _header(frame: CCDData) -> fits.Header:
    meta = frame.meta
    return meta.copy() if isinstance(meta, fits.Header) else header_from_meta(dict(meta))


def correct_ccddata(
    frames: Sequence[CCDData],
    cube: RTNCube | str | os.PathLike,
    settings: EngineSettings | None = None,
    *,
    mode: Mode = "correct",
    backend: BackendName = "numpy",
    dq: bool = True,
    uncertainty: bool = True,
    force: bool = False,
    origin_keys: Sequence[str] = ("XORGSUBF", "YORGSUBF"),
    temperature_tolerance_c: float = DEFAULT_TEMPERATURE_TOLERANCE_C,
) -> list[CCDData]:
    """Correct the RTN jumps of one series of frames (in time order) and return new CCDData frames.

    Parameters
    ----------
    frames : sequence of CCDData
        One series, in time order: (ny, nx) integer or float data in adu, all of one shape (the sensor's,
        or a subframe placed by ``origin_keys`` in ``meta``), with the camera's header in ``meta``.
    cube : RTNCube or path-like
        The cube, or its file.
    settings : EngineSettings, optional
    mode : {'correct', 'mask'}
        ``'mask'``: data unchanged, the jumps flagged in ``mask`` and ``flags``.
    backend : {'auto', 'numpy', 'cupy'}
    dq : bool
        Return the per-frame bit flags (docs/formats.md) as ``flags``, uint16 (ny, nx).
    uncertainty : bool
        Return the uncertainty as a StdDevUncertainty in adu (replacing the input's).
    force, origin_keys, temperature_tolerance_c
        As for :func:`rtnstream.offline.correct_files`.

    Returns
    -------
    list of CCDData
        New frames, in the input order: data, unit adu, ``uncertainty``, ``mask`` (the input's mask, or
        in masking mode with the jumps added), ``flags`` and ``meta`` (the input's cards plus the
        provenance keywords and a HISTORY line). The inputs are not modified.

    Raises
    ------
    TypeError
        An element of ``frames`` is not a CCDData.
    FrameError
        A frame not in adu, of another shape than the first, or refused by the guards.
    SeriesError
        Fewer frames than the temporal window needs.
    """
    settings = settings or EngineSettings()
    if isinstance(cube, str | os.PathLike):
        cube = read_cube(cube)
    frames = list(frames)
    if not frames:
        return []
    headers = []
    for k, frame in enumerate(frames):
        if not isinstance(frame, CCDData):
            raise TypeError(f"frames[{k}] must be a CCDData, got {type(frame).__name__}")
        if frame.unit is not None and frame.unit != u.adu:
            raise FrameError(f"frames[{k}] has unit {frame.unit}; RTN correction works on adu")
        if frame.data.shape != frames[0].data.shape:
            raise FrameError(f"frames[{k}] has shape {frame.data.shape}, frames[0] has {frames[0].data.shape}")
        headers.append(_header(frame))
    shape = frames[0].data.shape
    origin = frame_origin(headers[0], shape, cube.shape, "frames[0]", origin_keys)
    forced = [check_frame_header(h, cube, f"frames[{k}]", force, temperature_tolerance_c)
              for k, h in enumerate(headers)]
    corrector = SeriesCorrector(cube_part(cube, origin, shape), settings, backend, mode, dq, uncertainty)
    corrector.engine.check_series_length(len(frames))
    products: list[FrameProducts] = []
    for k, frame in enumerate(frames):
        products.extend(corrector.push(np.asarray(frame.data), tag=k))
    products.extend(corrector.finish())
    out = []
    for p in products:
        src, header = frames[p.tag], headers[p.tag]
        for key, value, comment in rtn_header_cards(settings, corrector.cube_id, p.counts, p.corrected, mode=mode,
                                                    origin=origin, forced=forced[p.tag]):
            header[key] = (value, comment)
        header.add_history(history_line(corrector.cube_id, mode, p.corrected))
        header["BUNIT"] = "adu"
        mask = src.mask.copy() if src.mask is not None else None
        if p.mask is not None:
            mask = p.mask if mask is None else (mask | p.mask)
        unc: Any = (StdDevUncertainty(p.uncertainty, unit=u.adu) if p.uncertainty is not None
                    else copy.deepcopy(src.uncertainty))
        data = p.data.copy() if p.data is src.data else p.data
        out.append(CCDData(data, unit=u.adu, uncertainty=unc, mask=mask, flags=p.dq, meta=header,
                           wcs=src.wcs))
    return out
