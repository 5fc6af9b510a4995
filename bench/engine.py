"""Engine throughput: frames/s and Mpx/s of RTNEngine for a frame size, RTN fraction and window.

Default: a full IMX455 frame (9576 x 6388 uint16), 5 % RTN pixels, W = 10, centred temporal reference.
Frames are simulated bias frames (a few distinct ones, cycled); only push/finish are timed.

    python bench/engine.py [--shape 6388 9576] [--rtn-fraction 0.05] [--window 10]
                           [--reference temporal] [--frames 30] [--backend numpy] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time

from rtnstream.kernels.engine import EngineSettings, RTNEngine
from rtnstream.kernels.simulate import SensorModel


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shape", type=int, nargs=2, default=(6388, 9576), metavar=("NY", "NX"))
    ap.add_argument("--rtn-fraction", type=float, default=0.05)
    ap.add_argument("--window", type=int, default=10)
    ap.add_argument("--reference", choices=("temporal", "causal", "spatial"), default="temporal")
    ap.add_argument("--frames", type=int, default=30, help="frames pushed (after warm-up)")
    ap.add_argument("--distinct", type=int, default=4, help="distinct simulated frames, cycled")
    ap.add_argument("--backend", choices=("auto", "numpy", "cupy"), default="numpy")
    ap.add_argument("--json", help="also write the figures to this JSON file")
    args = ap.parse_args()

    shape = tuple(args.shape)
    t0 = time.perf_counter()
    sensor = SensorModel.random(shape, rtn_fraction=args.rtn_fraction, seed=0)
    frames = [f.data for f in sensor.frames(args.distinct, seed=1)]
    engine = RTNEngine(sensor.true_cube(), EngineSettings(reference=args.reference, window=args.window),
                       backend=args.backend)
    print(f"set-up {time.perf_counter() - t0:.1f} s: {shape[1]} x {shape[0]}, {engine.n_rtn} RTN pixels "
          f"({args.rtn_fraction:.1%}), W={args.window}, {args.reference}, backend={engine.backend.name}")

    engine.start_series()
    warm = args.window + 1
    for i in range(warm):  # fill the ring buffer: the steady state emits one frame per push
        engine.push(frames[i % len(frames)])
    n_out = 0
    t0 = time.perf_counter()
    for i in range(args.frames):
        n_out += len(engine.push(frames[i % len(frames)]))
    elapsed = time.perf_counter() - t0
    engine.finish()
    fps = args.frames / elapsed
    mpix = fps * shape[0] * shape[1] / 1e6
    result = {
        "bench": "engine", "backend": engine.backend.name, "device": getattr(engine.backend, "device", "cpu"),
        "shape": list(shape), "rtn_fraction": args.rtn_fraction, "n_rtn": engine.n_rtn,
        "window": args.window, "reference": args.reference, "frames": args.frames, "frames_out": n_out,
        "elapsed_s": round(elapsed, 3), "frames_per_s": round(fps, 3), "mpix_per_s": round(mpix, 1),
        "cpu_count": os.cpu_count(), "machine": platform.processor() or platform.machine(),
    }
    print(f"{fps:.2f} frames/s, {mpix:.1f} Mpx/s ({args.frames} frames in {elapsed:.2f} s)")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(result, fh, indent=2)


if __name__ == "__main__":
    main()
