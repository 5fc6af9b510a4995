"""Soak run: the live service (HTTP control plane, embedded Redis, one job) fed for a fixed time on loopback.

A producer thread sends series after series of simulated frames (a few distinct ones, cycled) to the job's
ingest as fast as the job takes them (overload policy ``block``: lossless) or at ``--fps``; a consumer
thread takes every frame from the job's lossless push output and records which (series, seq) arrived.
Printed: frames in / out, lost frames (sent but never received: must be 0), the job's own counters, and
the process's resident memory (RSS, from /proc/self/status) sampled every second: after warm-up, mid-run,
at the end, and the slope of a straight-line fit after warm-up (MB/min; a leak shows as a steady rise).
The service, producer and consumer run in this one process, so the RSS is theirs together.

    python bench/soak.py [--duration 120] [--shape 2048 2048] [--fps 0] [--series-frames 200]
                         [--reference temporal] [--window 10] [--backend auto] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from tqdm import tqdm

from rtnstream.clients.control import ControlClient
from rtnstream.clients.stream import FrameReceiver, FrameSender
from rtnstream.kernels.cube import write_cube
from rtnstream.kernels.simulate import SensorModel
from rtnstream.service.server import BackgroundServer, free_port
from rtnstream.service.settings import ServiceSettings

__all__ = ["SoakResult", "rss_mb", "run_soak"]


def rss_mb() -> float:
    """Resident memory of this process, MB (``VmRSS`` of /proc/self/status)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS in /proc/self/status (Linux only)")


@dataclass
class SoakResult:
    """What a soak run measured.

    Attributes
    ----------
    frames_sent, frames_received : int
    lost : int
        Frames sent and never received on the push output.
    series_sent, series_received : int
        Series sent, and series whose ``end`` came out.
    counters : dict
        The job's counters at the end (``GET /v1/jobs/{id}``).
    rss_mb : list of (float, float)
        (seconds since the start, RSS in MB) samples.
    warmup_s : float
        Samples before this time are warm-up (threshold table, buffers, first series).
    duration_s : float
        Time the producer sent frames, s.
    """

    frames_sent: int = 0
    frames_received: int = 0
    lost: int = 0
    series_sent: int = 0
    series_received: int = 0
    counters: dict = field(default_factory=dict)
    rss_mb: list = field(default_factory=list)
    warmup_s: float = 0.0
    duration_s: float = 0.0

    def rss_after_warmup(self) -> list[tuple[float, float]]:
        """The RSS samples taken after warm-up."""
        return [s for s in self.rss_mb if s[0] >= self.warmup_s]

    def rss_slope_mb_per_min(self) -> float:
        """Slope of a straight line through the samples after warm-up, MB/min."""
        t, mb = np.array(self.rss_after_warmup()).T
        return float(np.polyfit(t, mb, 1)[0] * 60)


def run_soak(shape: tuple[int, int], duration_s: float, fps: float | None = None, series_frames: int = 200,
             reference: str = "temporal", window: int = 10, backend: str = "auto", distinct: int = 4,
             warmup_fraction: float = 0.2, progress: bool = False) -> SoakResult:
    """Run the service for ``duration_s`` seconds of sending; see the module docstring.

    Parameters
    ----------
    shape : (ny, nx)
        Frame shape, pixels.
    duration_s : float > 0
        How long the producer sends, s.
    fps : float or None
        Producer rate, frames/s (None: as fast as the job takes them).
    series_frames : int >= 1
        Frames per series.
    reference, window, backend
        The job's settings.
    distinct : int >= 1
        Distinct simulated frames, cycled.
    warmup_fraction : float in [0, 1)
        Share of ``duration_s`` counted as warm-up in the memory figures.
    progress : bool
        Show a progress bar of frames received.

    Raises
    ------
    ValueError
        ``duration_s`` <= 0, ``series_frames`` < 1, or ``warmup_fraction`` outside [0, 1).
    """
    if not duration_s > 0:
        raise ValueError(f"duration_s must be > 0, got {duration_s}")
    if series_frames < 1:
        raise ValueError(f"series_frames must be >= 1, got {series_frames}")
    if not 0 <= warmup_fraction < 1:
        raise ValueError(f"warmup_fraction must be in [0, 1), got {warmup_fraction}")
    result = SoakResult(warmup_s=warmup_fraction * duration_s)
    sensor = SensorModel.random(shape, rtn_fraction=0.05, seed=0)
    frames = [f.data for f in sensor.frames(distinct, seed=1)]
    with tempfile.TemporaryDirectory(prefix="rtnstream-soak-") as tmp:
        cube_path = write_cube(sensor.true_cube(), Path(tmp) / "cube.fits")
        del sensor
        settings = ServiceSettings(host="127.0.0.1", port=0, data_dir=Path(tmp) / "data", backend=backend,
                                   state_flush_s=1.0)
        with BackgroundServer(settings) as server, ControlClient(server.url) as api:
            cube_id = api.upload_cube(cube_path)["id"]
            ep = {k: f"tcp://127.0.0.1:{free_port()}" for k in ("ingest", "publish", "push")}
            job = api.create_job("soak", cube_id, ep["ingest"], ep["publish"], push=ep["push"],
                                 reference=reference, window=window, overload="block", queue_frames=4)
            _soak(api, job, ep, frames, duration_s, fps, series_frames, result, progress)
            result.counters = api.stop_job(job)["counters"]
    return result


def _soak(api: ControlClient, job: str, ep: dict[str, str], frames: list[np.ndarray], duration_s: float,
          fps: float | None, series_frames: int, result: SoakResult, progress: bool) -> None:
    sent: set[tuple[str, int]] = set()
    received: set[tuple[str, int]] = set()
    done_sending = threading.Event()
    t0 = time.monotonic()

    def consume() -> None:
        with FrameReceiver(ep["push"], "pull", rcvhwm=4) as rx, \
                tqdm(unit="frame", desc="soak", disable=not progress) as bar:
            while not (done_sending.is_set() and result.series_received == result.series_sent):
                msg = rx.recv(0.5)
                if msg is None:
                    continue
                if msg.header.kind == "frame":
                    received.add((msg.header.series, msg.header.seq))
                    bar.update(1)
                elif msg.header.kind == "end":
                    result.series_received += 1

    def sample() -> None:
        while not done_sending.is_set() or consumer.is_alive():
            result.rss_mb.append((time.monotonic() - t0, rss_mb()))
            time.sleep(1.0)

    consumer = threading.Thread(target=consume, name="soak-consumer", daemon=True)
    sampler = threading.Thread(target=sample, name="soak-rss", daemon=True)
    consumer.start()
    sampler.start()
    with FrameSender(ep["ingest"], "soak", sndhwm=2) as tx:
        k = 0
        while time.monotonic() - t0 < duration_s:
            series = tx.start_series(f"soak-{result.series_sent:05d}")
            for seq in range(series_frames):
                if fps and (delay := t0 + k / fps - time.monotonic()) > 0:
                    time.sleep(delay)
                tx.send_frame(frames[k % len(frames)], exptime=0.0)
                sent.add((series, seq))
                k += 1
                if time.monotonic() - t0 >= duration_s:
                    break
            tx.end_series()
            result.series_sent += 1
        result.duration_s = time.monotonic() - t0
        done_sending.set()
        consumer.join(120.0)
    sampler.join(5.0)
    if consumer.is_alive():
        raise RuntimeError(f"job {job}: {result.series_sent - result.series_received} series never ended on "
                           f"the push output within 120 s; counters {api.get_job(job)['counters']}")
    result.frames_sent, result.frames_received = len(sent), len(received)
    result.lost = len(sent - received)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--duration", type=float, default=120.0, help="seconds of sending")
    ap.add_argument("--shape", type=int, nargs=2, default=(2048, 2048), metavar=("NY", "NX"))
    ap.add_argument("--fps", type=float, default=0.0, help="producer rate, frames/s (0: as fast as possible)")
    ap.add_argument("--series-frames", type=int, default=200, help="frames per series")
    ap.add_argument("--reference", choices=("temporal", "causal", "spatial"), default="temporal")
    ap.add_argument("--window", type=int, default=10)
    ap.add_argument("--backend", choices=("auto", "numpy", "cupy"), default="auto")
    ap.add_argument("--json", help="also write the figures to this JSON file")
    args = ap.parse_args()

    r = run_soak((args.shape[0], args.shape[1]), args.duration, args.fps or None, args.series_frames,
                 args.reference, args.window, args.backend, progress=True)
    c = r.counters
    after = r.rss_after_warmup()
    mid = after[len(after) // 2]
    print(f"soak: {args.shape[1]} x {args.shape[0]}, {args.reference} W={args.window}, {r.duration_s:.0f} s "
          f"of sending, {r.series_sent} series")
    print(f"frames sent {r.frames_sent}, received {r.frames_received}, lost {r.lost}; "
          f"{r.frames_received / r.duration_s:.2f} frames/s")
    print(f"job counters: in {c['frames_in']}, out {c['frames_out']}, rejected {sum(c['rejected'].values())}, "
          f"dropped {c['dropped']}, series {c['series_started']} started / {c['series_finished']} finished")
    print(f"RSS MB: start {r.rss_mb[0][1]:.0f} (t=0), after warm-up {after[0][1]:.0f} (t={after[0][0]:.0f} s), "
          f"mid {mid[1]:.0f} (t={mid[0]:.0f} s), end {after[-1][1]:.0f} (t={after[-1][0]:.0f} s), "
          f"max {max(s[1] for s in r.rss_mb):.0f}; slope after warm-up {r.rss_slope_mb_per_min():+.2f} MB/min")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"bench": "soak", "shape": list(args.shape), **asdict(r),
                       "rss_slope_mb_per_min": r.rss_slope_mb_per_min()}, f, indent=2)
    if r.lost:
        raise SystemExit(f"bench/soak.py: {r.lost} frames lost")


if __name__ == "__main__":
    main()
