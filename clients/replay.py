"""FITS replay: frames of FITS files (2-D frames or 3-D stacks, in time order) sent as a live series.

Each frame carries its file's whole header in ``meta`` (:func:`header_meta`) and the exposure's
``DATE-OBS`` as its ``timestamp``, so a consumer of the job's output can write the frame as the
acquisition software wrote it.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from collections.abc import Sequence

from astropy.io import fits
from tqdm import tqdm

from rtnstream.clients.stream import FrameSender
from rtnstream.fitsio import FrameSource
from rtnstream.service.protocol import MAX_HEADER_BYTES, MAX_META_VALUES, ProtocolError, unix_time

__all__ = ["META_BUDGET_BYTES", "header_meta", "header_timestamp", "replay_files"]

log = logging.getLogger(__name__)

#: Most bytes of a frame's ``meta`` as JSON: the protocol's header bound less room for the other fields.
META_BUDGET_BYTES = MAX_HEADER_BYTES - 4096
_LIST_KEYS = ("COMMENT", "HISTORY")  # repeated cards, carried as lists of strings, dropped first when too big


def header_meta(header: fits.Header, budget_bytes: int = META_BUDGET_BYTES) -> tuple[dict, list[str]]:
    """Every card of a FITS header as ``meta`` key/values, within the protocol's bounds.

    Parameters
    ----------
    header : astropy.io.fits.Header
        The frame's header (structural keywords such as BITPIX and NAXISn are already left out by
        :class:`rtnstream.fitsio.FrameSource`).
    budget_bytes : int
        Most bytes of the result as JSON.

    Returns
    -------
    meta : dict
        Keyword (as astropy spells it: ``'ESO DET DIT'`` for a HIERARCH card, which
        ``header['ESO DET DIT'] = value`` writes back as HIERARCH) -> value (str, int, float, bool, or None
        for a card without a value); ``COMMENT`` and ``HISTORY`` as lists of strings, in order. A keyword
        repeated (other than those) keeps its first value.
    left_out : list of str
        What could not be carried, one line each: blank-keyword cards, values JSON has no form for
        (non-finite or complex numbers), repeated keywords, and the COMMENT / HISTORY lines (then other
        cards, from the end) dropped to stay within ``budget_bytes`` or the protocol's number of values.
        Card comments are never carried.
    """
    meta: dict[str, object] = {}
    left_out: list[str] = []
    for card in header.cards:
        key, value = card.keyword, card.value
        if key in _LIST_KEYS:
            meta.setdefault(key, []).append(str(value))
            continue
        if key == "":
            left_out.append(f"blank-keyword card {str(value)[:40]!r}")
            continue
        if isinstance(value, fits.card.Undefined):
            value = None
        elif isinstance(value, float) and not math.isfinite(value):
            left_out.append(f"{key} = {value!r} (JSON has no non-finite numbers)")
            continue
        elif not isinstance(value, str | bool | int | float):
            left_out.append(f"{key} = {value!r} (a {type(value).__name__} value)")
            continue
        if key in meta:
            left_out.append(f"{key} repeated: the first value is kept")
            continue
        meta[key] = value
    # the protocol counts the object, each value and each list element
    while _size(meta) > budget_bytes or _n_values(meta) > MAX_META_VALUES:
        lists = [k for k in _LIST_KEYS if meta.get(k)]
        if lists:
            key = max(lists, key=lambda k: len(meta[k]))
            n = max(1, len(meta[key]) // 4)
            del meta[key][-n:]
            left_out.append(f"{n} {key} lines (header over the protocol's bound)")
            if not meta[key]:
                del meta[key]
        else:
            key = next(reversed(meta))
            del meta[key]
            left_out.append(f"{key} (header over the protocol's bound)")
    return meta, left_out


def _size(meta: dict) -> int:
    return len(json.dumps(meta, ensure_ascii=False).encode())


def _n_values(meta: dict) -> int:
    return 1 + sum(1 + (len(v) if isinstance(v, list) else 0) for v in meta.values())


def header_timestamp(header: fits.Header) -> str | None:
    """The exposure's start from ``DATE-OBS`` (with ``TIME-OBS`` when DATE-OBS holds only the date) as an
    ISO 8601 string (UTC, as FITS defines DATE-OBS), or None when the header has no usable DATE-OBS."""
    date = header.get("DATE-OBS")
    if not isinstance(date, str) or not date.strip():
        return None
    text = date.strip()
    if "T" not in text and isinstance(header.get("TIME-OBS"), str):
        text = f"{text}T{header['TIME-OBS'].strip()}"
    try:
        unix_time(text)  # the service's own check: ISO 8601, at most 64 characters
    except ProtocolError:
        return None
    return text


def replay_files(sender: FrameSender, paths: Sequence[str | os.PathLike], fps: float | None = None,
                 series: str | None = None, progress: bool = True) -> tuple[str, int]:
    """Send the frames of ``paths`` as one series; returns ``(series id, frames sent)``.

    Every frame's ``meta`` holds its file's header (:func:`header_meta`) plus ``FILENAME`` and
    ``FRAMENUM`` (plane of a 3-D stack, 0 for a 2-D frame); its ``timestamp`` is the file's ``DATE-OBS``
    (every plane of a 3-D stack gets the file's), or the send time when the file has none (logged).
    What a header could not carry is logged once per file. Files are checked before the series starts,
    then opened one at a time.

    Parameters
    ----------
    sender : FrameSender
    paths : sequence of path-like
        FITS files in time order, each one (ny, nx) frame or one (n, ny, nx) stack.
    fps : float or None
        Frame rate, frames/s (None: as fast as the service takes them).
    series : str, optional
    progress : bool

    Raises
    ------
    FrameError
        A file is unreadable or holds no 2-D / 3-D image.
    ValueError
        ``fps`` <= 0.
    """
    if fps is not None and not fps > 0:
        raise ValueError(f"fps must be > 0 (frames/s), got {fps}")
    counts = []
    for p in paths:
        with FrameSource(p) as src:
            counts.append(src.n_frames)
    series = sender.start_series(series)
    t0 = time.monotonic()
    sent = 0
    with tqdm(total=sum(counts), unit="frame", desc="replay", disable=not progress) as bar:
        for p in paths:
            with FrameSource(p) as src:
                meta, left_out = header_meta(src.header)
                if left_out:
                    log.warning("%s: not carried in meta: %s", src.path.name, "; ".join(left_out))
                meta["FILENAME"] = src.path.name
                stamp = header_timestamp(src.header)
                if stamp is None:
                    log.warning("%s: no usable DATE-OBS; its frames carry the send time", src.path.name)
                exptime = src.header.get("EXPTIME", src.header.get("EXPOSURE"))
                exptime = float(exptime) if isinstance(exptime, int | float) and not isinstance(exptime, bool) \
                    else None
                for i in range(src.n_frames):
                    if fps is not None and (delay := t0 + sent / fps - time.monotonic()) > 0:
                        time.sleep(delay)
                    sender.send_frame(src.read(i), exptime=exptime, timestamp=stamp,
                                      meta={**meta, "FRAMENUM": i})
                    sent += 1
                    bar.update(1)
    sender.end_series()
    return series, sent
