"""Simulated camera: frames of a simulated sensor (kernels/simulate.py) pushed live at a chosen rate.

Its sender should have the I/O threads its byte rate needs (:func:`camera_io_threads`: full frames at
20 frames/s are 2.45 GB/s) and, on the service's node, an ``ipc://`` ingest endpoint (the fast path).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

from tqdm import tqdm

from rtnstream.clients._source import date_obs
from rtnstream.clients.stream import FrameSender
from rtnstream.kernels.simulate import Scene, SensorModel, SimulatedFrame
from rtnstream.service.zmq_io import DEFAULT_STREAM_BYTES_PER_S, FULL_FRAME_BYTES, io_threads_for

__all__ = ["run_camera", "camera_meta", "camera_io_threads"]

#: Readout mode written by the simulated camera (its sensor has one).
READOUT_MODE = "simulated"


def camera_meta(model: SensorModel, scene: Scene | None) -> dict[str, object]:
    """The camera keywords every frame of the simulated camera carries in ``meta`` (as N.I.N.A. names them).

    Returns
    -------
    dict
        ``INSTRUME``, ``DETECTOR``, ``IMAGETYP`` (``'BIAS'`` for a bias scene, ``'FLAT'``, else ``'LIGHT'``),
        ``EGAIN`` (the sensor's conversion gain, e-/ADU), ``READOUTM``, ``XBINNING`` / ``YBINNING`` (1).
    """
    kind = "bias" if scene is None else scene.kind
    imagetyp = {"bias": "BIAS", "flat": "FLAT"}.get(kind, "LIGHT")
    return {"INSTRUME": "rtnstream simulated camera", "DETECTOR": f"simulated {model.shape[0]}x{model.shape[1]}",
            "IMAGETYP": imagetyp, "EGAIN": float(model.gain_e_per_adu), "READOUTM": READOUT_MODE,
            "XBINNING": 1, "YBINNING": 1}


def camera_io_threads(model: SensorModel, fps: float | None) -> int:
    """ZeroMQ I/O threads for a sender of ``model``'s frames (uint16) at ``fps`` frames/s (None: as fast as
    the service takes them, counted as the default stream's 20 full frames/s), one per GB/s."""
    frame_bytes = model.shape[0] * model.shape[1] * 2
    rate = DEFAULT_STREAM_BYTES_PER_S / FULL_FRAME_BYTES if fps is None else fps
    return io_threads_for(frame_bytes * rate)


def run_camera(sender: FrameSender, model: SensorModel, n_frames: int, fps: float | None = None,
               scene: Scene | None = None, series: str | None = None, seed: int = 1, exptime_s: float = 1.0,
               on_frame: Callable[[int, SimulatedFrame], None] | None = None, progress: bool = False) -> str:
    """Send one series of ``n_frames`` simulated frames (start, frames, end); returns the series id.

    Each frame's exposure is taken to end when it is sent: its ``timestamp`` and ``meta['DATE-OBS']`` are
    the start of the exposure (send time less ``exptime_s``), ``meta['EXPTIME']`` is ``exptime_s``, and
    ``meta`` has the keywords of :func:`camera_meta`.

    Parameters
    ----------
    sender : FrameSender
        Connected to the job's ingest endpoint.
    model : SensorModel
        The simulated sensor (its :meth:`~SensorModel.true_cube` is the cube the job should use).
    n_frames : int >= 1
    fps : float or None
        Frame rate to keep, frames/s (None: as fast as the service takes them).
    scene : Scene, optional
        Default: bias frames.
    series : str, optional
        Series id (default: a new unique one).
    seed : int
        Seed of the frames' noise.
    exptime_s : float
        Written in each header, s.
    on_frame : callable, optional
        ``on_frame(seq, frame)`` before each frame is sent (the demo keeps the truth this way); the frame's
        jump-free values are those of its RTN pixels (``frame.clean_adu`` is None: not made, to bound memory).
    progress : bool
        Show a progress bar.

    Raises
    ------
    ValueError
        ``n_frames`` < 1 or ``fps`` <= 0.
    """
    if n_frames < 1:
        raise ValueError(f"n_frames must be >= 1, got {n_frames}")
    if fps is not None and not fps > 0:
        raise ValueError(f"fps must be > 0 (frames/s), got {fps}")
    keywords = camera_meta(model, scene)
    series = sender.start_series(series, meta=keywords)
    t0 = time.monotonic()
    frames = tqdm(model.frames(n_frames, scene, seed=seed, clean=False), total=n_frames, unit="frame", desc="camera",
                  disable=not progress)
    for seq, frame in enumerate(frames):
        if fps is not None:
            delay = t0 + seq / fps - time.monotonic()
            if delay > 0:
                time.sleep(delay)
        if on_frame is not None:
            on_frame(seq, frame)
        start = date_obs(datetime.now(UTC) - timedelta(seconds=exptime_s))
        sender.send_frame(frame.data, exptime=exptime_s, timestamp=start,
                          meta={**keywords, "DATE-OBS": start, "EXPTIME": exptime_s})
    sender.end_series()
    return series
