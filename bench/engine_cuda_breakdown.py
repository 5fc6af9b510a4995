"""Where the CuPy backend's time goes per frame: host gather / copy / scatter, H2D, kernel, D2H.

Default: full IMX455 frames (9576 x 6388 uint16), 5 % RTN pixels, W = 10, centred temporal reference;
simulated bias frames (a few distinct ones, cycled). Device stages are timed with CUDA events on the
backend's stream, host stages with the host clock, wall time per push with the host clock; reading the
events after each push serialises host and device, so the wall time here is higher than bench/engine.py's
pipelined rate. ``in_place=True`` unless ``--no-in-place``. Needs a CUDA GPU usable through CuPy; without
one it says so and exits with status 2.

    python bench/engine_cuda_breakdown.py [--shape 6388 9576] [--rtn-fraction 0.05] [--window 10]
                                          [--reference temporal] [--frames 50] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import numpy as np

from rtnstream.kernels.cupy_backend import INSTALL_HINT, gpu_available
from rtnstream.kernels.engine import EngineSettings, RTNEngine
from rtnstream.kernels.simulate import SensorModel

DEVICE_STAGES = ("H2D", "kernel", "D2H")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shape", type=int, nargs=2, default=(6388, 9576), metavar=("NY", "NX"))
    ap.add_argument("--rtn-fraction", type=float, default=0.05)
    ap.add_argument("--window", type=int, default=10)
    ap.add_argument("--reference", choices=("temporal", "causal", "spatial"), default="temporal")
    ap.add_argument("--frames", type=int, default=50, help="frames pushed and timed (after warm-up)")
    ap.add_argument("--distinct", type=int, default=4, help="distinct simulated frames, cycled")
    ap.add_argument("--no-in-place", dest="in_place", action="store_false",
                    help="new output arrays (a frame copy per push) instead of correcting in place")
    ap.add_argument("--json", help="also write the figures to this JSON file")
    args = ap.parse_args()
    if not gpu_available():
        print(f"engine_cuda_breakdown: no CUDA GPU usable through CuPy here; {INSTALL_HINT}", file=sys.stderr)
        return 2
    try:  # progress bar where tqdm is installed (the GPU machine may have only NumPy, SciPy and CuPy)
        from tqdm import tqdm
    except ImportError:
        def tqdm(iterable, **_kwargs):
            return iterable

    shape = tuple(args.shape)
    t0 = time.perf_counter()
    sensor = SensorModel.random(shape, rtn_fraction=args.rtn_fraction, seed=0)
    frames = [f.data for f in sensor.frames(args.distinct, seed=1)]
    engine = RTNEngine(sensor.true_cube(), EngineSettings(reference=args.reference, window=args.window),
                       backend="cupy", in_place=args.in_place)
    # more buffers than the engine holds; one corrected in place is restored (untimed) when it comes out
    pool = [frames[k % len(frames)].copy() for k in range(max(len(frames), args.window + 3))]
    source = {id(b): frames[k % len(frames)] for k, b in enumerate(pool)}

    def restore(outs) -> None:
        for out in outs:
            if out.data is not None and id(out.data) in source:
                np.copyto(out.data, source[id(out.data)])
    print(f"set-up {time.perf_counter() - t0:.1f} s: {shape[1]} x {shape[0]} {frames[0].dtype}, "
          f"{engine.n_rtn} RTN pixels ({args.rtn_fraction:.1%}), W={args.window}, {args.reference}, "
          f"device {engine.backend.device}")

    engine.start_series()
    k = 0
    for _ in range(args.window + 2):  # fills the ring and the pipeline (kernels compiled at init)
        restore(engine.push(pool[k % len(pool)]))
        k += 1
    timer = engine.backend.enable_timing()
    per_frame: list[dict[str, float]] = []
    wall_ms: list[float] = []
    before: dict[str, float] = {}
    for _ in tqdm(range(args.frames), desc="frames", unit="frame"):
        t = time.perf_counter()
        outs = engine.push(pool[k % len(pool)])
        wall_ms.append((time.perf_counter() - t) * 1e3)
        k += 1
        restore(outs)
        totals = timer.collect()
        per_frame.append({k: v - before.get(k, 0.0) for k, v in totals.items()})
        before = totals
    engine.finish()

    stages = sorted({k for f in per_frame for k in f}, key=lambda k: (k not in DEVICE_STAGES, k))
    table = {k: np.array([f.get(k, 0.0) for f in per_frame]) for k in stages}
    wall = np.array(wall_ms)
    print(f"\nper frame over {args.frames} frames (ms): mean, p99")
    for k in stages:
        where = "device" if k in DEVICE_STAGES else "host  "
        print(f"  {where} {k:<26s} {table[k].mean():8.3f} {np.percentile(table[k], 99):8.3f}")
    device_ms = sum(table[k].mean() for k in stages if k in DEVICE_STAGES)
    transfer_ms = sum(table[k].mean() for k in ("H2D", "D2H") if k in table)
    mpix = shape[0] * shape[1] / 1e6
    print(f"  wall per push{'':<20s} {wall.mean():8.3f} {np.percentile(wall, 99):8.3f}")
    print(f"device busy {device_ms:.3f} ms/frame (transfers {transfer_ms:.3f}, kernel "
          f"{table.get('kernel', np.zeros(1)).mean():.3f}); engine {1e3 / wall.mean():.1f} frames/s, "
          f"{1e3 / wall.mean() * mpix:.0f} Mpx/s; device-only bound {1e3 / device_ms:.0f} frames/s")
    if args.json:
        result = {
            "bench": "engine_cuda_breakdown", "device": engine.backend.device, "shape": list(shape),
            "rtn_fraction": args.rtn_fraction, "n_rtn": engine.n_rtn, "window": args.window,
            "reference": args.reference, "frames": args.frames,
            "stage_ms_mean": {k: round(float(v.mean()), 4) for k, v in table.items()},
            "stage_ms_p99": {k: round(float(np.percentile(v, 99)), 4) for k, v in table.items()},
            "wall_ms_mean": round(float(wall.mean()), 4), "frames_per_s": round(1e3 / float(wall.mean()), 2),
        }
        with open(args.json, "w") as fh:
            json.dump(result, fh, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
