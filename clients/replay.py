"""FITS replay: frames of FITS files (2-D frames or 3-D stacks, in time order) sent as a live series."""

from __future__ import annotations

import os
import time
from collections.abc import Sequence

from tqdm import tqdm

from rtnstream.clients.stream import FrameSender
from rtnstream.fitsio import FrameSource

__all__ = ["replay_files"]

# Header keywords copied into each frame's ``meta`` when present.
_META_KEYS = ("DATE-OBS", "OBJECT", "FILTER", "INSTRUME", "TELESCOP", "CCD-TEMP", "GAIN", "OFFSET",
              "READMODE")


def replay_files(sender: FrameSender, paths: Sequence[str | os.PathLike], fps: float | None = None,
                 series: str | None = None, progress: bool = True) -> tuple[str, int]:
    """Send the frames of ``paths`` as one series; returns ``(series id, frames sent)``.

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
    sources: list[FrameSource] = []
    try:
        for p in paths:
            sources.append(FrameSource(p))
        total = sum(s.n_frames for s in sources)
        series = sender.start_series(series)
        t0 = time.monotonic()
        sent = 0
        with tqdm(total=total, unit="frame", desc="replay", disable=not progress) as bar:
            for src in sources:
                meta = {k: src.header[k] for k in _META_KEYS if k in src.header}
                meta["FILENAME"] = src.path.name
                exptime = src.header.get("EXPTIME")
                for i in range(src.n_frames):
                    if fps is not None and (delay := t0 + sent / fps - time.monotonic()) > 0:
                        time.sleep(delay)
                    sender.send_frame(src.read(i), exptime=float(exptime) if exptime is not None else None,
                                      meta={**meta, "FRAMENUM": i})
                    sent += 1
                    bar.update(1)
        sender.end_series()
        return series, sent
    finally:
        for s in sources:
            s.close()
