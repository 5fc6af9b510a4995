"""Host side of a push on full frames, stage by stage, for both backends; and a model of the GPU engine's rate.

Default: full IMX455 frames (9576 x 6388 uint16), 5 % RTN pixels, W = 10, centred temporal reference,
simulated bias frames. Each stage is timed on its own with the host clock (median of ``--repeat`` runs):

NumPy backend (everything happens on the host)
    gather     ``store``: the frame's RTN pixels into the ring (``numpy_backend.gather``, threaded)
    math       ``correct_temporal``'s per-pixel work: median, veto, decision, counters (threaded blocks)
    math 1 thread  the same on the calling thread alone (the work the threads share)
    scatter    ``apply_corrections(in_place=True)``: the corrected pixels written into the frame
    copy       the frame-sized copy ``in_place=False`` adds
    push       ``RTNEngine.push`` as a whole (in_place=True), steady state: the rest is Python
CuPy backend, host part (what CupyBackend runs on the CPU; no device is needed to time it)
    gather     the same threaded gather, into a buffer (pinned memory on the GPU machine)
    scatter    the (index, value) pairs the kernel compacts, scattered into the frame (in place)
    python     engine and backend bookkeeping per push: measured on the NumPy engine as push - stages

The model: the CuPy engine is pipelined (the device works on frame t while the host gathers t+1 and
scatters t-1), so frames/s = 1000 / max(host ms, device ms), host = gather + scatter + python, device =
H2D (RTN pixels) + kernel (its bytes at the HBM rate) + D2H (corrected pairs), at the rates given.

    python bench/engine_host_stages.py [--shape 6388 9576] [--rtn-fraction 0.05] [--window 10]
        [--threads N] [--repeat 7] [--pcie-gbs 50] [--hbm-gbs 4000] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time

import numpy as np

from rtnstream.kernels.engine import EngineSettings, RTNEngine
from rtnstream.kernels.numpy_backend import STATE_HIGH, STATE_LOW, FrameCounts, apply_corrections, gather
from rtnstream.kernels.simulate import SensorModel


def timed(fn, repeat: int) -> float:
    """Median wall time of ``fn()`` in ms."""
    runs = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        runs.append((time.perf_counter() - t0) * 1e3)
    return float(np.median(runs))


def kernel_bytes_per_pixel(window: int, itemsize: int) -> int:
    """Device memory traffic of rtn_temporal per RTN pixel and frame (bytes; corrected pixels' extras
    excluded): the W + 1 ring values, the per-pixel parameters read, the four uint32 counters read and
    written."""
    ring = (window + 1) * itemsize
    params = 8 + 8 + 8 + 4 + 8 + 1 + 8  # index, mu, delta_e, sigma_j, sigma_w, sigma_ok, rn2
    counters = 4 * 4 * 2
    return ring + params + counters


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shape", type=int, nargs=2, default=(6388, 9576), metavar=("NY", "NX"))
    ap.add_argument("--rtn-fraction", type=float, default=0.05)
    ap.add_argument("--window", type=int, default=10)
    ap.add_argument("--threads", type=int, default=None, help="host threads (default: the number of CPUs)")
    ap.add_argument("--repeat", type=int, default=7)
    ap.add_argument("--pcie-gbs", type=float, default=50.0, help="pinned host <-> device rate assumed, GB/s")
    ap.add_argument("--hbm-gbs", type=float, default=4000.0, help="device memory rate assumed, GB/s")
    ap.add_argument("--json", help="also write the figures to this JSON file")
    args = ap.parse_args()

    shape = tuple(args.shape)
    t0 = time.perf_counter()
    sensor = SensorModel.random(shape, rtn_fraction=args.rtn_fraction, seed=0)
    frames = [f.data for f in sensor.frames(args.window + 3, seed=1)]
    settings = EngineSettings(window=args.window)
    engine = RTNEngine(sensor.true_cube(), settings, backend="numpy", in_place=True)
    if args.threads:
        engine.backend._threads = args.threads
    backend = engine.backend
    params = engine.params
    print(f"set-up {time.perf_counter() - t0:.1f} s: {shape[1]} x {shape[0]} uint16, {params.n} RTN pixels, "
          f"W={args.window}, {backend._threads} host threads, {os.cpu_count()} CPUs")

    engine.start_series()
    for f in frames[: args.window + 1]:
        engine.push(f.copy())
    w = args.window
    slot, rows = 0, list(range(1, w + 1))
    frame = frames[0].copy()
    x = backend._ring[slot]
    pool = backend._executor()
    out = np.empty(params.n, dtype=frame.dtype)

    stages: dict[str, float] = {}
    stages["numpy gather"] = timed(lambda: backend.store(slot, frame), args.repeat)
    state = backend._map(lambda sl: backend._temporal_block(x, rows, sl))
    stages["numpy math"] = timed(lambda: backend._map(lambda sl: backend._temporal_block(x, rows, sl)), args.repeat)
    threads, backend._threads, backend._pool = backend._threads, 1, None  # no pool: _map runs every block here
    stages["numpy math 1 thread"] = timed(lambda: backend._map(lambda sl: backend._temporal_block(x, rows, sl)),
                                          args.repeat)
    backend._threads, backend._pool = threads, pool
    stages["numpy counts"] = timed(lambda: FrameCounts.from_states(state), args.repeat)
    stages["numpy scatter"] = timed(lambda: apply_corrections(frame, x, state, params, in_place=True), args.repeat)
    stages["numpy copy"] = timed(frame.copy, args.repeat)
    fresh = [f.copy() for f in frames]
    k = iter(range(10**9))
    stages["numpy push"] = timed(lambda: engine.push(fresh[next(k) % len(fresh)]), args.repeat)
    python = stages["numpy push"] - sum(stages[f"numpy {s}"] for s in ("gather", "math", "counts", "scatter"))
    stages["python"] = max(python, 0.0)

    changed = np.flatnonzero((state == STATE_LOW) | (state == STATE_HIGH))
    index, value = params.index[changed], x[changed]
    flat = frame.reshape(-1)
    stages["cupy gather"] = timed(lambda: gather(flat, params.index, out, pool), args.repeat)
    stages["cupy gather 1 thread"] = timed(lambda: gather(flat, params.index, out, None), args.repeat)
    stages["cupy scatter"] = timed(lambda: flat.__setitem__(index, value), args.repeat)
    host_ms = stages["cupy gather"] + stages["cupy scatter"] + stages["python"]

    itemsize = frame.dtype.itemsize
    h2d_ms = params.n * itemsize / (args.pcie_gbs * 1e6)
    d2h_ms = changed.size * (8 + itemsize) / (args.pcie_gbs * 1e6)
    kernel_ms = params.n * kernel_bytes_per_pixel(w, itemsize) / (args.hbm_gbs * 1e6)
    device_ms = h2d_ms + kernel_ms + d2h_ms
    fps = 1e3 / max(host_ms, device_ms)

    print(f"per push (ms, median of {args.repeat}); {changed.size} pixels corrected "
          f"({changed.size / max(params.n, 1):.1%} of RTN pixels)")
    for name, ms in stages.items():
        print(f"  {name:<24s} {ms:8.3f}")
    print(f"NumPy engine: {1e3 / stages['numpy push']:.1f} frames/s (push, in place)")
    print(f"GPU model: host {host_ms:.3f} ms (gather + scatter + python), device {device_ms:.3f} ms "
          f"(H2D {h2d_ms:.3f} at {args.pcie_gbs:g} GB/s, kernel {kernel_ms:.3f} for "
          f"{kernel_bytes_per_pixel(w, itemsize)} B/pixel at {args.hbm_gbs:g} GB/s, D2H {d2h_ms:.3f}) -> "
          f"{fps:.0f} frames/s, {'host' if host_ms >= device_ms else 'device'}-bound")
    if args.json:
        result = {"bench": "engine_host_stages", "shape": list(shape), "n_rtn": params.n, "window": w,
                  "threads": backend._threads, "cpu_count": os.cpu_count(),
                  "machine": platform.processor() or platform.machine(), "n_changed": int(changed.size),
                  "stage_ms": {k: round(v, 4) for k, v in stages.items()},
                  "model": {"host_ms": round(host_ms, 4), "device_ms": round(device_ms, 4),
                            "h2d_ms": round(h2d_ms, 4), "kernel_ms": round(kernel_ms, 4),
                            "d2h_ms": round(d2h_ms, 4), "pcie_gbs": args.pcie_gbs, "hbm_gbs": args.hbm_gbs,
                            "frames_per_s": round(fps, 1)}}
        with open(args.json, "w") as fh:
            json.dump(result, fh, indent=2)


if __name__ == "__main__":
    main()
