"""``rtnstream demo``: the live service end to end on one machine, with a simulated camera and its truth.

Starts an embedded Redis and the service (a real uvicorn HTTP server on a free loopback port, in this
process), uploads the true RTN cube of a simulated sensor, creates a job, runs a simulated camera (PUSH
to the job's ingest) and a sink (the job's lossless push output), shows live throughput and correction
counts, and prints a summary: frames, frame rate, latency, corrections, and the RMS error of the RTN
pixels against the simulated truth (the frame without jumps) before and after correction, in electrons.
"""

from __future__ import annotations

import argparse
import logging
import tempfile
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from tqdm import tqdm

from rtnstream.kernels.cube import write_cube
from rtnstream.kernels.simulate import Scene, SensorModel, SimulatedFrame

if TYPE_CHECKING:
    from rtnstream.clients.stream import FrameReceiver

__all__ = ["configure", "run", "TruthScore"]

log = logging.getLogger(__name__)


class TruthScore:
    """RMS error of the RTN pixels against the simulated truth, before and after correction.

    The camera hands each frame to :meth:`keep` before sending it; the sink hands each corrected frame to
    :meth:`score`. Only the RTN pixels of frames in flight are kept.

    Parameters
    ----------
    model : SensorModel
    """

    def __init__(self, model: SensorModel) -> None:
        self.index = model.rtn_index
        self.gain_e_per_adu = model.gain_e_per_adu
        self._pending: dict[int, tuple[np.ndarray, np.ndarray, int]] = {}
        self._lock = threading.Lock()
        self._scored = threading.Condition(self._lock)
        self.frames = 0
        self.true_jumps = 0
        self._sq_before_e2 = 0.0
        self._sq_after_e2 = 0.0

    def keep(self, seq: int, frame: SimulatedFrame) -> None:
        """Remember frame ``seq``'s raw values at the RTN pixels (uint16) and its jump-free values as float32
        offsets from them (adu): 6 bytes an RTN pixel while the frame is in flight."""
        raw = frame.data.reshape(-1)[self.index]
        offset = frame.clean_rtn_adu - raw  # clean - raw, adu
        with self._lock:
            self._pending[seq] = (raw, offset.astype(np.float32), int(np.count_nonzero(frame.states)))

    def wait_in_flight(self, limit: int, stop: threading.Event) -> None:
        """Block while ``limit`` or more frames are kept and not yet scored (or until ``stop`` is set)."""
        with self._scored:
            while len(self._pending) >= limit and not stop.is_set():
                self._scored.wait(0.5)

    def score(self, seq: int, data: np.ndarray) -> None:
        """Add corrected frame ``seq`` (shape (ny, nx)) to the sums."""
        with self._scored:
            raw, offset, jumps = self._pending.pop(seq)
            self._scored.notify_all()
        out = data.reshape(-1)[self.index].astype(np.float64) - raw  # out - raw, adu (exact)
        g2 = self.gain_e_per_adu ** 2
        self._sq_before_e2 += float(np.sum(offset.astype(np.float64) ** 2)) * g2
        self._sq_after_e2 += float(np.sum((out - offset) ** 2)) * g2
        self.frames += 1
        self.true_jumps += jumps

    def rms_e(self) -> tuple[float, float]:
        """RMS error (electron) of the RTN pixels before and after correction."""
        n = max(self.frames * self.index.size, 1)
        return float(np.sqrt(self._sq_before_e2 / n)), float(np.sqrt(self._sq_after_e2 / n))


def configure(parser: argparse.ArgumentParser) -> None:
    """Add the options of ``rtnstream demo``."""
    parser.add_argument("--frames", type=int, default=400, help="frames the camera sends")
    parser.add_argument("--fps", type=float, default=20.0, help="camera frame rate, frames/s")
    parser.add_argument("--shape", nargs=2, type=int, default=[512, 512], metavar=("NY", "NX"),
                        help="frame shape, pixels")
    parser.add_argument("--reference", choices=("temporal", "causal", "spatial"), default="temporal",
                        help="reference of each pixel: neighbouring frames (centred or past only) or pixels")
    parser.add_argument("--window", type=int, default=10, help="temporal window W, frames")
    parser.add_argument("--scene", choices=("bias", "flat", "stars", "varying"), default="stars",
                        help="what the frames show")
    parser.add_argument("--sky-e", type=float, default=1.0,
                        help="sky level, electron/pixel/frame (1: short exposures)")
    parser.add_argument("--overload", choices=("block", "passthrough", "drop"), default="block",
                        help="what the job does when frames come faster than it corrects them")
    parser.add_argument("--backend", choices=("auto", "numpy", "cupy"), default="auto",
                        help="compute backend (auto: CuPy when a GPU is usable, else NumPy)")
    parser.add_argument("--transport", choices=("ipc", "tcp"), default="ipc",
                        help="the job's sockets: ipc (Unix sockets in the service's socket folder, the fast path "
                             "on one node) or tcp on loopback")
    parser.add_argument("--seed", type=int, default=0, help="seed of the simulated sensor and scene")
    parser.add_argument("--linger", type=float, default=0.0, metavar="S",
                        help="keep the service and its dashboard up S seconds after the camera's last frame, "
                             "the job still running ('inf': until Ctrl-C; Ctrl-C ends the wait early)")
    parser.add_argument("-o", "--outdir", type=Path,
                        help="also write the corrected frames here as FITS (new files named "
                             "<camera>_<series>_<seq>.fits of this run's new series; nothing there is removed; "
                             "default: write none)")


def _sink(receiver: FrameReceiver, truth: TruthScore, outdir: Path | None, done: threading.Event) -> None:
    from rtnstream.clients.sink import write_frame

    while not done.is_set():
        msg = receiver.recv(0.2)
        if msg is None:
            continue
        if msg.header.kind == "end":
            done.set()
        elif msg.header.kind == "frame":
            truth.score(msg.header.seq, msg.data)
            if outdir is not None:
                write_frame(msg, outdir)


def _live(bar: tqdm, status: dict[str, Any]) -> None:
    c = status["counters"]
    bar.n = c["frames_out"]
    p99 = status["latency_ms"]["p99"]
    bar.set_postfix_str(f"{status['throughput']['fps']:.1f} fps, low {c['corrections_low']}, high "
                        f"{c['corrections_high']}, veto {c['vetoed']}, p99 "
                        f"{'-' if p99 is None else f'{p99:.0f} ms'}")
    bar.refresh()


def run(args: argparse.Namespace) -> int:
    """Run the demo; returns 0."""
    from rtnstream.clients.camera import camera_io_threads, run_camera  # the service extra loads only now
    from rtnstream.clients.control import ControlClient
    from rtnstream.clients.stream import FrameReceiver, FrameSender
    from rtnstream.service.server import BackgroundServer, free_port
    from rtnstream.service.settings import ServiceSettings

    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per poll would bury the progress bar
    if args.frames < 1 or args.fps <= 0:
        raise SystemExit("rtnstream demo: error: --frames must be >= 1 and --fps > 0")
    shape = (args.shape[0], args.shape[1])
    model = SensorModel.random(shape, seed=args.seed)
    scene = Scene.make(args.scene, shape, sky_e=args.sky_e, seed=args.seed)
    if args.outdir is not None:
        args.outdir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="rtnstream-demo-") as tmp:
        work = Path(tmp)
        print(f"simulated sensor {shape[0]} x {shape[1]}, {model.n_rtn} RTN pixels; scene {args.scene}, "
              f"sky {args.sky_e:g} e-/pixel/frame")
        write_cube(model.true_cube(), work / "cube.fits")
        settings = ServiceSettings(host="127.0.0.1", port=0, data_dir=work / "service", backend=args.backend)
        with BackgroundServer(settings) as server, ControlClient(server.url) as api:
            print(f"service on {server.url} (job state in an embedded Redis); dashboard: {server.url}/")
            cube = api.upload_cube(work / "cube.fits")
            if args.transport == "ipc":
                ingest, publish, push = (f"ipc://{settings.ipc_dir / name}" for name in ("ingest", "publish", "push"))
            else:
                ingest, publish, push = (f"tcp://127.0.0.1:{free_port()}" for _ in range(3))
            job_id = api.create_job("demo-cam", cube["id"], ingest, publish, push=push,
                                    reference=args.reference, window=args.window, overload=args.overload)
            # the job's engine holds what it needs of the cube: the store's copy (read noise, DQ) goes
            server.server.config.app.state.cubes.forget(cube["id"])
            job = api.get_job(job_id)
            print(f"job {job_id}: {args.reference} reference, W = {args.window}, backend {job['backend']} "
                  f"({job['device']}); camera -> {ingest}, sink <- {push}")
            truth = TruthScore(model)
            done = threading.Event()
            # at most W + 1 frames in flight (the job's first outputs come once it has W + 1): a camera faster
            # than the job waits here with one frame instead of filling the job's queue (each a full frame in
            # this process); not with overload 'drop', whose dropped frames never come out
            in_flight = args.window + 1 if args.overload != "drop" else None

            def on_frame(seq: int, frame: SimulatedFrame) -> None:
                if in_flight is not None:
                    truth.wait_in_flight(in_flight, done)
                truth.keep(seq, frame)

            io_threads = camera_io_threads(model, args.fps)  # the sink takes what the camera sends
            # sndhwm=1: a camera faster than the job waits with one frame queued here (the job's own queue is
            # queue_frames deep) instead of 16, each a full frame in this process
            with FrameReceiver(push, "pull", io_threads=io_threads) as receiver, \
                    FrameSender(ingest, "demo-cam", sndhwm=1, io_threads=io_threads) as sender:
                sink = threading.Thread(target=_sink, args=(receiver, truth, args.outdir, done), daemon=True)
                sink.start()
                camera = threading.Thread(target=run_camera, daemon=True,
                                          args=(sender, model, args.frames, args.fps, scene),
                                          kwargs={"seed": args.seed + 1, "on_frame": on_frame})
                t0 = time.monotonic()
                camera.start()
                with tqdm(total=args.frames, unit="frame", desc="corrected") as bar:
                    while not done.wait(0.5):
                        _live(bar, api.get_job(job_id))
                        if not camera.is_alive() and not sink.is_alive():
                            break
                    _live(bar, api.get_job(job_id))
                elapsed = time.monotonic() - t0
                camera.join()
                sink.join()
            _linger(args.linger, server.url)
            final = api.stop_job(job_id)
    _summary(final, truth, elapsed)
    return 0


def _linger(seconds: float, url: str) -> None:
    """Keep the service up ``seconds`` (``inf``: until Ctrl-C) so that a person can look at its dashboard."""
    if not seconds > 0:
        return
    until = "Ctrl-C" if seconds == float("inf") else f"{seconds:g} s or Ctrl-C"
    print(f"the service stays up, its job running, for {until}: dashboard {url}/", flush=True)
    try:
        threading.Event().wait(None if seconds == float("inf") else seconds)
    except KeyboardInterrupt:
        print()


def _summary(job: dict[str, Any], truth: TruthScore, elapsed_s: float) -> None:
    c, lat = job["counters"], job["latency_ms"]
    before, after = truth.rms_e()
    rejected = sum(c["rejected"].values())
    p50 = "-" if lat["p50"] is None else f"{lat['p50']:.1f}"
    p99 = "-" if lat["p99"] is None else f"{lat['p99']:.1f}"
    lines = [
        "",
        "summary",
        f"  frames          {c['frames_out']} out of {c['frames_in']} in ({rejected} rejected, "
        f"{c['dropped']} dropped, {c['passthrough']} passed through)",
        f"  frame rate      {c['frames_out'] / elapsed_s:.1f} frames/s over {elapsed_s:.1f} s",
        f"  latency         p50 {p50} ms, p99 {p99} ms (arrival to publish, last "
        f"{job['throughput']['window_s']:.0f} s)",
        f"  corrections     {c['corrections_low']} low, {c['corrections_high']} high, {c['vetoed']} vetoed "
        f"({truth.true_jumps} true jumps in the frames scored)",
        f"  RTN pixels RMS  {before:.3f} e- before, {after:.3f} e- after correction "
        f"(against the simulated frames without jumps, {truth.frames} frames)",
    ]
    print("\n".join(lines))
