"""Engine throughput: frames/s and Mpx/s of RTNEngine for a frame size, RTN fraction and window.

Default: a full IMX455 frame (9576 x 6388 uint16), 5 % RTN pixels, W = 10, centred temporal reference,
``in_place=True`` where the engine has it. Frames are simulated bias frames (``--distinct`` of them) in a
pool of buffers larger than the frames the engine holds; a buffer corrected in place is restored from its
pristine frame once it comes out, outside the timing (as if each push brought a fresh frame). Only the
``push`` calls are timed, after the ring is full.

``--against CHECKOUT`` runs the same measurement on another checkout (``git worktree add --detach
../before e7ba72c``) and on this one at the same time: one process per checkout, importing that
checkout's code through a link layout (bench/layout.py), both set up (one after the other), then asked
in turn to time ``--frames / --rounds`` pushes, ``--rounds`` times, so that a change of the machine's load
during the run weighs on both alike; it prints both rates (total frames / total push time) and their
ratio.

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


def measure(args, serve: bool = False) -> dict:
    """Set up one engine and time its pushes (this process's rtnstream).

    ``serve``: after the set-up, print ``READY`` and time pushes on request: each stdin line ``N`` pushes
    N frames and prints their total push time in seconds; an empty line ends.
    """
    import numpy as np

    from rtnstream.kernels.engine import EngineSettings, RTNEngine
    from rtnstream.kernels.simulate import SensorModel

    shape = tuple(args.shape)
    t0 = time.perf_counter()
    sensor = SensorModel.random(shape, rtn_fraction=args.rtn_fraction, seed=0)
    if args.two_trap_fraction:  # that fraction of all pixels, among the RTN pixels, gets a second trap
        # (imported here: --against runs this script in checkouts older than two-trap pixels too)
        from rtnstream.kernels.simulate import SecondTraps, two_trap_frames, two_trap_true_cube

        traps = SecondTraps.random(sensor, args.two_trap_fraction, seed=2)
        pristine = [f.data for f in two_trap_frames(sensor, traps, args.distinct, seed=1)]
        cube = two_trap_true_cube(sensor, traps)
    else:
        pristine = [f.data for f in sensor.frames(args.distinct, seed=1)]
        cube = sensor.true_cube()
    in_place = args.in_place and "in_place" in inspect.signature(RTNEngine).parameters
    extra = {"in_place": True} if in_place else {}
    engine = RTNEngine(cube, EngineSettings(reference=args.reference, window=args.window),
                       backend=args.backend, **extra)
    del sensor  # the engine keeps what it needs: the simulated planes can go
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
    n_out, elapsed, n_frames = 0, 0.0, 0

    def run(n: int) -> float:
        nonlocal k, n_out
        spent = 0.0
        for _ in range(n):
            t0 = time.perf_counter()
            outs = engine.push(pool[k % n_pool])
            spent += time.perf_counter() - t0
            k += 1
            n_out += len(outs)
            restore(outs)
        return spent

    if serve:
        print("READY", flush=True)
        for line in sys.stdin:
            if not line.strip():
                break
            n = int(line)
            spent = run(n)
            elapsed += spent
            n_frames += n
            print(f"{spent:.6f}", flush=True)
    else:
        elapsed, n_frames = run(args.frames), args.frames
    engine.finish()
    fps = n_frames / elapsed
    mpix = fps * shape[0] * shape[1] / 1e6
    print(f"{fps:.2f} frames/s, {mpix:.1f} Mpx/s ({n_frames} frames in {elapsed:.2f} s)",
          file=sys.stderr if serve else sys.stdout, flush=True)
    return {
        "bench": "engine", "backend": engine.backend.name, "device": getattr(engine.backend, "device", "cpu"),
        "shape": list(shape), "rtn_fraction": args.rtn_fraction, "n_rtn": engine.n_rtn,
        "two_trap_fraction": args.two_trap_fraction,
        "window": args.window, "reference": args.reference, "in_place": in_place, "frames": n_frames,
        "frames_out": n_out, "elapsed_s": round(elapsed, 3), "frames_per_s": round(fps, 3),
        "mpix_per_s": round(mpix, 1), "cpu_count": os.cpu_count(),
        "machine": platform.processor() or platform.machine(),
    }


def compare(args, argv: list[str]) -> dict:
    """Run ``measure`` on ``args.against`` and on this checkout, in two serving child processes, in turn."""
    sys.path.insert(0, str(HERE))
    from layout import make_layout

    checkouts = {"before": Path(args.against).resolve(), "after": HERE.parent}
    drop = {"--against": 2, "--json": 2, "--rounds": 2}
    child_argv, i = [], 0
    while i < len(argv):
        if argv[i] in drop:
            i += drop[argv[i]]
            continue
        child_argv.append(argv[i])
        i += 1
    per_round = max(args.frames // args.rounds, 1)
    with tempfile.TemporaryDirectory(prefix="rtn-bench-") as tmp:
        children = {}
        for name, path in checkouts.items():  # set up one after the other (the set-up's memory peak)
            print(f"--- {name}: {path}", flush=True)
            env = {**os.environ, "PYTHONPATH": str(make_layout(path, Path(tmp) / name))}
            out = Path(tmp) / f"{name}.json"
            child = subprocess.Popen([sys.executable, str(HERE / "engine.py"), *child_argv, "--serve", "--json",
                                      str(out)], env=env, cwd=tmp, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     text=True)
            for line in child.stdout:
                print(line, end="", flush=True)
                if line.startswith("READY"):
                    break
            children[name] = (child, out)
        spent = {name: 0.0 for name in children}
        for r in range(args.rounds):
            for name, (child, _out) in children.items():
                child.stdin.write(f"{per_round}\n")
                child.stdin.flush()
                spent[name] += float(child.stdout.readline())
            print(f"round {r + 1}/{args.rounds}: " + ", ".join(
                f"{name} {per_round * (r + 1) / spent[name]:.2f} frames/s" for name in spent), flush=True)
        results = {}
        for name, (child, out) in children.items():
            child.stdin.write("\n")
            child.stdin.flush()
            child.wait()
            results[name] = json.loads(out.read_text())
    rate = {name: r["frames_per_s"] for name, r in results.items()}
    ratio = rate["after"] / rate["before"]
    print(f"before {rate['before']:.2f} frames/s, after {rate['after']:.2f} frames/s: {ratio:.2f}x "
          f"({args.rounds} alternating rounds of {per_round} pushes each)")
    return {"bench": "engine_compare", "before": results["before"], "after": results["after"],
            "frames_per_s": rate, "ratio": round(ratio, 3), "rounds": args.rounds, "pushes_per_round": per_round}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shape", type=int, nargs=2, default=(6388, 9576), metavar=("NY", "NX"))
    ap.add_argument("--rtn-fraction", type=float, default=0.05)
    ap.add_argument("--two-trap-fraction", type=float, default=0.0,
                    help="fraction of all pixels, taken among the RTN pixels, with a second trap")
    ap.add_argument("--window", type=int, default=10)
    ap.add_argument("--reference", choices=("temporal", "causal", "spatial"), default="temporal")
    ap.add_argument("--frames", type=int, default=30, help="frames pushed and timed (after warm-up)")
    ap.add_argument("--distinct", type=int, default=4, help="distinct simulated frames")
    ap.add_argument("--backend", choices=("auto", "numpy", "cupy"), default="numpy")
    ap.add_argument("--no-in-place", dest="in_place", action="store_false",
                    help="new output arrays (RTNEngine's default) instead of correcting in place")
    ap.add_argument("--against", help="another checkout to measure side by side with this one")
    ap.add_argument("--rounds", type=int, default=6, help="with --against: alternating turns of each")
    ap.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)  # a child of --against
    ap.add_argument("--json", help="also write the figures to this JSON file")
    args = ap.parse_args()
    result = compare(args, sys.argv[1:]) if args.against else measure(args, serve=args.serve)
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(result, fh, indent=2)


if __name__ == "__main__":
    main()
