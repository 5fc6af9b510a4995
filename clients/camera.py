"""Simulated camera: frames of a simulated sensor (kernels/simulate.py) pushed live at a chosen rate."""

from __future__ import annotations

import time
from collections.abc import Callable

from tqdm import tqdm

from rtnstream.clients.stream import FrameSender
from rtnstream.kernels.simulate import Scene, SensorModel, SimulatedFrame

__all__ = ["run_camera"]


def run_camera(sender: FrameSender, model: SensorModel, n_frames: int, fps: float | None = None,
               scene: Scene | None = None, series: str | None = None, seed: int = 1, exptime_s: float = 1.0,
               on_frame: Callable[[int, SimulatedFrame], None] | None = None, progress: bool = False) -> str:
    """Send one series of ``n_frames`` simulated frames (start, frames, end); returns the series id.

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
        ``on_frame(seq, frame)`` before each frame is sent (the demo keeps the truth this way).
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
    series = sender.start_series(series, meta={"INSTRUME": "rtnstream simulated camera"})
    t0 = time.monotonic()
    frames = tqdm(model.frames(n_frames, scene, seed=seed), total=n_frames, unit="frame", desc="camera",
                  disable=not progress)
    for seq, frame in enumerate(frames):
        if fps is not None:
            delay = t0 + seq / fps - time.monotonic()
            if delay > 0:
                time.sleep(delay)
        if on_frame is not None:
            on_frame(seq, frame)
        sender.send_frame(frame.data, exptime=exptime_s)
    sender.end_series()
    return series
