"""Redis paused mid-stream: frames/s of a live service before, during and after its Redis hangs.

A real service (HTTP control plane, embedded Redis, one job with a lossless push output) is fed short
series of simulated frames on loopback by a producer thread (as fast as the job takes them, overload
policy ``block``, or at ``--fps``); a consumer thread takes every frame. After ``--normal`` seconds the
embedded redis-server process is paused (SIGSTOP: it keeps its socket and answers nothing, a hung
server), after ``--pause`` more seconds resumed (SIGCONT), then the stream goes on for ``--after``
seconds. Every series end records a finished series (bias offset map on disk, state in Redis), so the
pause is felt at once if any Redis call sits on the frame path. Printed: frames/s while Redis answers
(before the pause after ``--warmup`` seconds, and after the resume: together they are "normal", so a
machine whose load drifts during the run, a shared one, weighs on both sides alike) and while it is
paused, their ratio (must be >= 0.9), what ``/readyz`` said during the pause (pending writes, age of the
oldest), and how long the buffered state took to be written after the resume. Exits 1 when the ratio is
below 0.9 or a frame was lost.

    python bench/redis_pause.py [--shape 256 256] [--series-frames 10] [--normal 10] [--pause 10]
                                [--after 10] [--fps 0] [--reference causal] [--window 4] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import tempfile
import threading
import time
from pathlib import Path

import httpx
import numpy as np

from rtnstream.clients.control import ControlClient
from rtnstream.clients.stream import FrameReceiver, FrameSender
from rtnstream.kernels.cube import write_cube
from rtnstream.kernels.simulate import SensorModel
from rtnstream.service.server import BackgroundServer, free_port
from rtnstream.service.settings import ServiceSettings


def _rate(times: np.ndarray, start: float, end: float) -> float:
    """Frames received in [start, end) per second."""
    return float(np.count_nonzero((times >= start) & (times < end)) / (end - start))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shape", type=int, nargs=2, default=(256, 256), metavar=("NY", "NX"))
    ap.add_argument("--series-frames", type=int, default=10, help="frames per series")
    ap.add_argument("--warmup", type=float, default=2.0, help="seconds left out at the start")
    ap.add_argument("--normal", type=float, default=10.0, help="seconds before the pause (warm-up included)")
    ap.add_argument("--pause", type=float, default=10.0, help="seconds Redis stays paused")
    ap.add_argument("--after", type=float, default=10.0, help="seconds of streaming after the resume")
    ap.add_argument("--fps", type=float, default=0.0, help="producer rate, frames/s (0: as fast as possible)")
    ap.add_argument("--reference", choices=("temporal", "causal", "spatial"), default="causal")
    ap.add_argument("--window", type=int, default=4)
    ap.add_argument("--backend", choices=("auto", "numpy", "cupy"), default="auto")
    ap.add_argument("--json", help="also write the figures to this JSON file")
    args = ap.parse_args()
    if not 0 <= args.warmup < args.normal:
        raise SystemExit("bench/redis_pause.py: --warmup must be in [0, --normal)")

    shape = (args.shape[0], args.shape[1])
    sensor = SensorModel.random(shape, rtn_fraction=0.05, seed=0)
    frames = [f.data for f in sensor.frames(4, seed=1)]
    total_s = args.normal + args.pause + args.after
    with tempfile.TemporaryDirectory(prefix="rtnstream-redis-pause-") as tmp:
        cube_path = write_cube(sensor.true_cube(), Path(tmp) / "cube.fits")
        settings = ServiceSettings(host="127.0.0.1", port=0, data_dir=Path(tmp) / "data", backend=args.backend)
        with BackgroundServer(settings) as server, ControlClient(server.url) as api:
            cube_id = api.upload_cube(cube_path)["id"]
            ep = {k: f"tcp://127.0.0.1:{free_port()}" for k in ("ingest", "publish", "push")}
            job = api.create_job("bench", cube_id, ep["ingest"], ep["publish"], push=ep["push"],
                                 reference=args.reference, window=args.window, overload="block", queue_frames=4)
            db = settings.embedded_db_file
            redis_pid = json.loads(db.with_name(f"{db.name}.pid").read_text())["pid"]  # the embedded server
            received: list[float] = []
            sent = [0]
            done_sending = threading.Event()

            def consume() -> None:
                with FrameReceiver(ep["push"], "pull", rcvhwm=4) as rx:
                    ended = 0
                    while not (done_sending.is_set() and ended == sent[0] // args.series_frames
                               and len(received) == sent[0]):
                        msg = rx.recv(0.5)
                        if msg is None:
                            continue
                        if msg.header.kind == "frame":
                            received.append(time.monotonic())
                        elif msg.header.kind == "end":
                            ended += 1

            def produce(t0: float) -> None:
                with FrameSender(ep["ingest"], "bench", sndhwm=2) as tx:
                    k = 0
                    while time.monotonic() - t0 < total_s:
                        tx.start_series(f"s{k // args.series_frames:06d}")
                        for _ in range(args.series_frames):
                            if args.fps and (delay := t0 + k / args.fps - time.monotonic()) > 0:
                                time.sleep(delay)
                            tx.send_frame(frames[k % len(frames)], exptime=0.0)
                            k += 1
                        tx.end_series()
                        sent[0] = k
                done_sending.set()

            consumer = threading.Thread(target=consume, name="bench-consumer", daemon=True)
            consumer.start()
            t0 = time.monotonic()
            producer = threading.Thread(target=produce, args=(t0,), name="bench-producer", daemon=True)
            producer.start()
            time.sleep(args.normal)
            t_pause = time.monotonic()
            os.kill(redis_pid, signal.SIGSTOP)
            try:
                time.sleep(args.pause / 2)
                ready = httpx.get(f"{server.url}/readyz", timeout=10)
                time.sleep(max(0.0, t_pause + args.pause - time.monotonic()))
            finally:
                t_resume = time.monotonic()
                os.kill(redis_pid, signal.SIGCONT)
            store = server.server.config.app.state.manager.store
            while store.pending and time.monotonic() - t_resume < 60:
                time.sleep(0.05)
            catch_up_s = time.monotonic() - t_resume
            producer.join()
            consumer.join(60)
            status = api.stop_job(job)
    times = np.array(received)
    before = _rate(times, t0 + args.warmup, t_pause)
    paused = _rate(times, t_pause, t_resume)
    after = _rate(times, t_resume, t0 + total_s)
    answering_s = (t_pause - t0 - args.warmup) + (t0 + total_s - t_resume)
    normal = (before * (t_pause - t0 - args.warmup) + after * (t0 + total_s - t_resume)) / answering_s
    ratio = paused / normal if normal else 0.0
    c = status["counters"]
    lost = sent[0] - len(received)
    result = {"bench": "redis_pause", "shape": list(shape), "series_frames": args.series_frames,
              "reference": args.reference, "window": args.window, "backend": status["backend"],
              "producer_fps": args.fps or None, "fps_normal": round(normal, 1), "fps_before": round(before, 1),
              "fps_paused": round(paused, 1), "fps_after": round(after, 1), "ratio": round(ratio, 3),
              "readyz_during_pause": ready.json(), "readyz_status_during_pause": ready.status_code,
              "catch_up_s": round(catch_up_s, 2),
              "frames_sent": sent[0], "frames_received": len(received), "lost": lost,
              "series_finished": c["series_finished"], "cpu_count": os.cpu_count()}
    print(f"redis pause: {shape[1]} x {shape[0]}, series of {args.series_frames} frames, {args.reference} "
          f"W={args.window}, backend {status['backend']}, Redis paused {args.pause:g} s after {args.normal:g} s")
    print(f"frames/s: Redis answering {normal:.1f} (before the pause {before:.1f}, after the resume "
          f"{after:.1f}), Redis paused {paused:.1f}: {100 * ratio:.1f} % of normal")
    print(f"/readyz during the pause: HTTP {ready.status_code}, {ready.json()}")
    print(f"buffered state written {catch_up_s:.2f} s after the resume; frames sent {sent[0]}, received "
          f"{len(received)}, lost {lost}; series finished {c['series_finished']}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)
    if ratio < 0.9 or lost:
        raise SystemExit(f"bench/redis_pause.py: throughput while Redis was paused is {100 * ratio:.1f} % of "
                         f"normal (needs >= 90 %), {lost} frames lost")


if __name__ == "__main__":
    main()
