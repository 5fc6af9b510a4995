"""Service end to end: frames/s and latency of a job's pipeline through real ZeroMQ sockets on this node.

A producer thread PUSHes one series of simulated frames (a few distinct ones, cycled) to the pipeline's
ingest over ``ipc://`` (the fast path for a camera on the service's node; ``--transport tcp``: loopback
TCP); a consumer thread PULLs the corrected frames from its lossless push output. The producer, the
service and the consumer each have their own ZeroMQ context, as separate processes would, with
``--io-threads`` I/O threads each (``auto``: this rtnstream's rule, one per GB/s of the context's traffic
at ``--rate-fps`` full-shape frames/s, at most one per two CPUs; an rtnstream without the rule gets 1, its
default). The script runs against any rtnstream from e7ba72c on (its before / after comparisons of
issue 16 ran this file with the older checkout's interpreter). Printed:
end-to-end frames/s (first frame sent to last frame received), end-to-end latency p50 / p99 (send to
receive, same clock) and the pipeline's own latency (arrival to publish), with the overload policy
``block`` (lossless); the steady-state latency leaves out the first W + 1 frames, which wait for the
window to fill at the start of a series. ``--fps 0`` sends as fast as the pipeline takes frames
(throughput; latency then includes the queueing); ``--fps F`` paces the producer (latency at that rate).
The centred temporal reference holds W/2 frames, so its latency includes W/2 frame periods by design.

    python bench/service.py [--shape 2048 2048] [--frames 60] [--fps 0] [--rtn-fraction 0.05]
                            [--window 10] [--reference temporal] [--backend auto] [--transport ipc]
                            [--io-threads auto] [--json FILE]

Full frames (``--shape 6388 9576``) need several GB (the simulated sensor's cube): run them under
``flock /tmp/heavy.lock``. ``--compare A.json B.json ... [--plot PNG]`` prints runs written by ``--json``
side by side (and draws their frames/s and latency as a PNG) instead of measuring.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import zmq

from rtnstream.clients.stream import FrameReceiver, FrameSender
from rtnstream.kernels.engine import EngineSettings
from rtnstream.kernels.simulate import SensorModel
from rtnstream.service.pipeline import Pipeline, PipelineConfig
from rtnstream.service.server import free_port


def _endpoints(transport: str, folder: Path) -> dict[str, str]:
    if transport == "ipc":
        return {name: f"ipc://{folder / name}" for name in ("ingest", "publish", "push")}
    return {name: f"tcp://127.0.0.1:{free_port()}" for name in ("ingest", "publish", "push")}


def _io_threads(asked: str, frame_bytes: int, rate_fps: float) -> tuple[int, int, str]:
    """I/O threads of the (service, producer and consumer) contexts, and how they were chosen."""
    if asked != "auto":
        n = int(asked)
        return n, n, "asked"
    try:
        from rtnstream.service.zmq_io import io_threads_for
    except ImportError:  # an rtnstream before issue 16: one I/O thread, libzmq's default
        return 1, 1, "this rtnstream's default"
    stream = frame_bytes * rate_fps
    return io_threads_for(2 * stream), io_threads_for(stream), f"auto for {rate_fps:g} frames/s"


def compare(paths: list[str], plot: str | None) -> None:
    """Print the runs of ``paths`` (``--json`` files) side by side; draw them to ``plot`` (PNG) when given."""
    runs = []
    for path in paths:
        with open(path) as f:
            runs.append(json.load(f))
    labels = [Path(p).stem for p in paths]
    print(f"{'run':<44} {'transport':>9} {'I/O thr':>7} {'frames/s':>9} {'p50 ms':>8} {'p99 ms':>8}")
    for label, r in zip(labels, runs, strict=True):
        io = r.get("io_threads", {}).get("service", 1)
        lat = r["e2e_steady_latency_ms"]
        print(f"{label:<44} {r.get('transport', 'tcp'):>9} {io:>7} {r['frames_per_s']:>9.2f} {lat['p50']:>8.0f} "
              f"{lat['p99']:>8.0f}")
    if plot:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, (ax_fps, ax_lat) = plt.subplots(1, 2, figsize=(10, 3.8))
        y = np.arange(len(runs))
        ax_fps.barh(y, [r["frames_per_s"] for r in runs], color="tab:blue")
        ax_fps.set(yticks=y, yticklabels=labels, xlabel="frames/s, end to end")
        ax_fps.invert_yaxis()
        ax_lat.invert_yaxis()
        ax_lat.barh(y - 0.2, [r["e2e_steady_latency_ms"]["p50"] for r in runs], 0.4, label="p50")
        ax_lat.barh(y + 0.2, [r["e2e_steady_latency_ms"]["p99"] for r in runs], 0.4, label="p99")
        ax_lat.set(yticks=y, yticklabels=[], xlabel="send -> receive after W+1 frames, ms")
        ax_lat.legend(loc="lower right")
        r0 = runs[0]
        fig.suptitle(f"service, {r0['shape'][1]} x {r0['shape'][0]} frames, backend {r0['backend']}, "
                     f"{r0['cpu_count']} CPUs")
        fig.tight_layout()
        fig.savefig(plot, dpi=100)
        print(f"plot: {plot}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shape", type=int, nargs=2, default=(2048, 2048), metavar=("NY", "NX"))
    ap.add_argument("--frames", type=int, default=60, help="frames in the series")
    ap.add_argument("--fps", type=float, default=0.0, help="producer rate, frames/s (0: as fast as possible)")
    ap.add_argument("--distinct", type=int, default=4, help="distinct simulated frames, cycled")
    ap.add_argument("--rtn-fraction", type=float, default=0.05)
    ap.add_argument("--window", type=int, default=10)
    ap.add_argument("--reference", choices=("temporal", "causal", "spatial"), default="temporal")
    ap.add_argument("--backend", choices=("auto", "numpy", "cupy"), default="auto")
    ap.add_argument("--queue-frames", type=int, default=4, help="pipeline queue bound (frames)")
    ap.add_argument("--transport", choices=("ipc", "tcp"), default="ipc", help="ipc sockets or loopback tcp")
    ap.add_argument("--io-threads", default="auto",
                    help="ZeroMQ I/O threads of each context (an integer, or auto)")
    ap.add_argument("--rate-fps", type=float, default=20.0,
                    help="frame rate the auto I/O threads are sized for, frames/s")
    ap.add_argument("--json", help="also write the figures to this JSON file")
    ap.add_argument("--compare", nargs="+", metavar="JSON", help="print these runs side by side, measure nothing")
    ap.add_argument("--plot", metavar="PNG", help="with --compare: draw the runs here")
    args = ap.parse_args()
    if args.compare:
        compare(args.compare, args.plot)
        return

    shape = (args.shape[0], args.shape[1])
    t0 = time.perf_counter()
    sensor = SensorModel.random(shape, rtn_fraction=args.rtn_fraction, seed=0)
    frames = [f.data for f in sensor.frames(args.distinct, seed=1)]
    service_threads, client_threads, how = _io_threads(args.io_threads, frames[0].nbytes, args.rate_fps)
    context = zmq.Context(io_threads=service_threads)
    producer_context = zmq.Context(io_threads=client_threads)
    consumer_context = zmq.Context(io_threads=client_threads)
    sockets = tempfile.TemporaryDirectory(prefix="rtnbench-")
    folder = Path(sockets.name)
    config = PipelineConfig(**_endpoints(args.transport, folder),
                            engine=EngineSettings(reference=args.reference, window=args.window),
                            backend=args.backend, overload="block", queue_frames=args.queue_frames,
                            socket_dir=folder, stats_window_s=3600.0)
    pipeline = Pipeline("bench", sensor.true_cube(), config, context)
    del sensor
    pipeline.start()
    ep = pipeline.endpoints
    print(f"set-up {time.perf_counter() - t0:.1f} s: {shape[1]} x {shape[0]} {frames[0].dtype}, "
          f"{pipeline.engine.n_rtn} RTN pixels, W={args.window}, {args.reference}, "
          f"backend={pipeline.engine.backend.name}, {args.frames} frames, "
          f"{'max rate' if not args.fps else f'{args.fps:g} frames/s'}; {args.transport}, ZeroMQ I/O threads: "
          f"service {service_threads}, producer and consumer {client_threads} each ({how})")

    sent_s = np.zeros(args.frames)
    recv_s = np.zeros(args.frames)
    received = threading.Event()

    def consume() -> None:
        with FrameReceiver(ep["push"], "pull", rcvhwm=2, context=consumer_context) as rx:
            n = 0
            while n < args.frames:
                msg = rx.recv(60.0)
                if msg is None:
                    raise SystemExit(f"bench/service.py: no frame for 60 s after {n} frames")
                if msg.header.kind == "frame":
                    recv_s[msg.header.seq] = time.perf_counter()
                    n += 1
        received.set()

    consumer = threading.Thread(target=consume, daemon=True)
    consumer.start()
    with FrameSender(ep["ingest"], "bench", sndhwm=2, context=producer_context) as tx:
        tx.start_series("bench")
        start = time.perf_counter()
        for i in range(args.frames):
            if args.fps and (delay := start + i / args.fps - time.perf_counter()) > 0:
                time.sleep(delay)
            sent_s[i] = time.perf_counter()
            tx.send_frame(frames[i % len(frames)], exptime=0.0)
        tx.end_series()
        received.wait()
    status = pipeline.status()
    pipeline.stop()
    for ctx in (context, producer_context, consumer_context):
        ctx.term()
    sockets.cleanup()

    elapsed = recv_s.max() - sent_s[0]
    fps = args.frames / elapsed
    lat_ms = (recv_s - sent_s) * 1e3
    steady_ms = lat_ms[args.window + 1:]  # the first W frames wait for the window to fill (series start)
    rates = status["rates"]
    result = {
        "bench": "service", "backend": status["backend"], "device": status["device"], "shape": list(shape),
        "n_rtn": pipeline.engine.n_rtn, "window": args.window, "reference": args.reference,
        "frames": args.frames, "producer_fps": args.fps or None, "transport": args.transport,
        "io_threads": {"service": service_threads, "clients": client_threads, "how": how},
        "elapsed_s": round(float(elapsed), 3),
        "frames_per_s": round(float(fps), 3), "mpix_per_s": round(float(fps * shape[0] * shape[1] / 1e6), 1),
        "e2e_latency_ms": {"p50": round(float(np.percentile(lat_ms, 50)), 1),
                           "p99": round(float(np.percentile(lat_ms, 99)), 1)},
        "e2e_steady_latency_ms": {"p50": round(float(np.percentile(steady_ms, 50)), 1),
                                  "p99": round(float(np.percentile(steady_ms, 99)), 1)},
        "pipeline_latency_ms": {"p50": round(rates["p50_ms"], 1), "p99": round(rates["p99_ms"], 1)},
        "pipeline_latency_from_timestamp_ms": {"p50": round(rates["ts_p50_ms"], 1),
                                               "p99": round(rates["ts_p99_ms"], 1)},
        "counters": status["counters"], "cpu_count": os.cpu_count(),
        "machine": platform.processor() or platform.machine(),
    }
    e2e, steady, pipe = result["e2e_latency_ms"], result["e2e_steady_latency_ms"], result["pipeline_latency_ms"]
    stamped = result["pipeline_latency_from_timestamp_ms"]
    print(f"end to end: {fps:.2f} frames/s ({result['mpix_per_s']} Mpx/s) over {elapsed:.1f} s")
    print(f"latency send->receive, all frames: p50 {e2e['p50']} ms, p99 {e2e['p99']} ms; after the first "
          f"W+1 frames: p50 {steady['p50']} ms, p99 {steady['p99']} ms")
    print(f"latency arrival->publish inside the pipeline, all frames: p50 {pipe['p50']} ms, p99 {pipe['p99']} ms")
    print(f"latency header timestamp->publish as the service reports it: p50 {stamped['p50']} ms, "
          f"p99 {stamped['p99']} ms")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)


if __name__ == "__main__":
    main()
