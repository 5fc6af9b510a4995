"""Engine throughput: frames/s and Mpx/s of RTNEngine for a frame size, RTN fraction and window.

Default: a full IMX455 frame (9576 x 6388 uint16), 5 % RTN pixels, W = 10, centred temporal reference,
``in_place=True`` where the engine has it. Frames are simulated bias frames (``--distinct`` of them) in a
pool of buffers larger than the frames the engine holds; a buffer corrected in place is restored from its
pristine frame once it comes out, outside the timing (as if each push brought a fresh frame). Only the
``push`` calls are timed, after the ring is full.

``--against CHECKOUT`` runs the same measurement on another checkout (``git worktree add --detach
../before e7ba72c``) and on this one, each in its own process importing that checkout's code through a
link layout (bench/layout.py), one after the other, ``--rounds`` times alternately, and prints both rates
and their ratio.

    python bench/engine.py [--shape 6388 9576] [--rtn-fraction 0.05] [--window 10]
                           [--reference temporal] [--frames 30] [--backend numpy] [--no-in-place]
                           [--against CHECKOUT [--rounds 1]] [--json FILE]
"""

from __future__ import annotations

import argparse
import inspect
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def measure(args) -> dict:
    """Set up one engine and time its pushes (this process's rtnstream)."""
    import numpy as np

    from rtnstream.kernels.engine import EngineSettings, RTNEngine
    from rtnstream.kernels.simulate import SensorModel

    shape = tuple(args.shape)
    t0 = time.perf_counter()
    sensor = SensorModel.random(shape, rtn_fraction=args.rtn_fraction, seed=0)
    pristine = [f.data for f in sensor.frames(args.distinct, seed=1)]
    in_place = args.in_place and "in_place" in inspect.signature(RTNEngine).parameters
    extra = {"in_place": True} if in_place else {}
    engine = RTNEngine(sensor.true_cube(), EngineSettings(reference=args.reference, window=args.window),
                       backend=args.backend, **extra)
    n_pool = max(args.distinct, args.window + 3)  # more buffers than the engine holds at once
    pool = [pristine[k % args.distinct].copy() for k in range(n_pool)]
    source = {id(b): pristine[k % args.distinct] for k, b in enumerate(pool)}
    print(f"set-up {time.perf_counter() - t0:.1f} s: {shape[1]} x {shape[0]}, {engine.n_rtn} RTN pixels "
          f"({args.rtn_fraction:.1%}), W={args.window}, {args.reference}, backend={engine.backend.name}, "
          f"in_place={in_place}", flush=True)

    def restore(outs) -> None:
        if in_place:
            for out in outs:
                np.copyto(out.data, source[id(out.data)])

    engine.start_series()
    k = 0
    for _ in range(args.window + 2):  # fill the ring (and a pipelined backend): one frame out per push
        restore(engine.push(pool[k % n_pool]))
        k += 1
    n_out, elapsed = 0, 0.0
    for _ in range(args.frames):
        t0 = time.perf_counter()
        outs = engine.push(pool[k % n_pool])
        elapsed += time.perf_counter() - t0
        k += 1
        n_out += len(outs)
        restore(outs)
    engine.finish()
    fps = args.frames / elapsed
    mpix = fps * shape[0] * shape[1] / 1e6
    print(f"{fps:.2f} frames/s, {mpix:.1f} Mpx/s ({args.frames} frames in {elapsed:.2f} s)", flush=True)
    return {
        "bench": "engine", "backend": engine.backend.name, "device": getattr(engine.backend, "device", "cpu"),
        "shape": list(shape), "rtn_fraction": args.rtn_fraction, "n_rtn": engine.n_rtn,
        "window": args.window, "reference": args.reference, "in_place": in_place, "frames": args.frames,
        "frames_out": n_out, "elapsed_s": round(elapsed, 3), "frames_per_s": round(fps, 3),
        "mpix_per_s": round(mpix, 1), "cpu_count": os.cpu_count(),
        "machine": platform.processor() or platform.machine(),
    }


def compare(args, argv: list[str]) -> dict:
    """Run ``measure`` on ``args.against`` and on this checkout, in child processes, alternately."""
    sys.path.insert(0, str(HERE))
    from layout import make_layout

    checkouts = {"before": Path(args.against).resolve(), "after": HERE.parent}
    child_argv = [a for a in argv if a not in ("--against", args.against, "--json", args.json or "")]
    results: dict[str, list[dict]] = {"before": [], "after": []}
    with tempfile.TemporaryDirectory(prefix="rtn-bench-") as tmp:
        layouts = {name: make_layout(path, Path(tmp) / name) for name, path in checkouts.items()}
        for _ in range(args.rounds):
            for name, layout in layouts.items():
                out = Path(tmp) / f"{name}.json"
                print(f"--- {name}: {checkouts[name]}", flush=True)
                env = {**os.environ, "PYTHONPATH": str(layout)}
                subprocess.run([sys.executable, str(HERE / "engine.py"), *child_argv, "--json", str(out)],
                               env=env, cwd=tmp, check=True)
                results[name].append(json.loads(out.read_text()))
    best = {name: max(r["frames_per_s"] for r in runs) for name, runs in results.items()}
    ratio = best["after"] / best["before"]
    print(f"before {best['before']:.2f} frames/s, after {best['after']:.2f} frames/s: {ratio:.2f}x "
          f"(best of {args.rounds} round(s) each)")
    return {"bench": "engine_compare", "before": results["before"], "after": results["after"],
            "best_frames_per_s": best, "ratio": round(ratio, 3)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shape", type=int, nargs=2, default=(6388, 9576), metavar=("NY", "NX"))
    ap.add_argument("--rtn-fraction", type=float, default=0.05)
    ap.add_argument("--window", type=int, default=10)
    ap.add_argument("--reference", choices=("temporal", "causal", "spatial"), default="temporal")
    ap.add_argument("--frames", type=int, default=30, help="frames pushed and timed (after warm-up)")
    ap.add_argument("--distinct", type=int, default=4, help="distinct simulated frames")
    ap.add_argument("--backend", choices=("auto", "numpy", "cupy"), default="numpy")
    ap.add_argument("--no-in-place", dest="in_place", action="store_false",
                    help="new output arrays (RTNEngine's default) instead of correcting in place")
    ap.add_argument("--against", help="another checkout to measure side by side with this one")
    ap.add_argument("--rounds", type=int, default=1, help="with --against: alternate runs of each")
    ap.add_argument("--json", help="also write the figures to this JSON file")
    args = ap.parse_args()
    result = compare(args, sys.argv[1:]) if args.against else measure(args)
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(result, fh, indent=2)


if __name__ == "__main__":
    main()
