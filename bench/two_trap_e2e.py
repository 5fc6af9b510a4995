"""Two-trap pixels (issue 19) through the product path: FITS bias frames -> ``rtnstream fit`` -> cube file ->
``rtnstream correct`` (NumPy backend) on held-out FITS frames, scored against the simulator's truth.

The chain is tests/calibration/_two_trap_e2e.py's ``run_chain`` (the sensor, seeds and frames of
bench/two_trap.py: 5 % one-trap pixels, jumps 4-10 sigma, second jumps 4-14 sigma at least 3 sigma from the
first); the calibration stack is one 3-D FITS file, the held-out series 2-D files with DATE-OBS and EGAIN. It
fits twice (with the two-trap refit, and ``--no-two-trap``) and corrects the held-out files with each cube
against the spatial and the temporal reference (the engine's: W = 10, variability veto k_var = 1.5). Printed
per two-trap fraction: the classification the cube file holds, then per reference and population (true
two-trap pixels, those the fit found, true one-trap pixels, and these with the ``--no-two-trap`` cube) the RMS
read noise before and after and over sigma, pixel-frames changed for the worse ("harmful": corrected although
at the central level, or moved further from the true level than they were), corrected to a level more than
sigma from the true one ("wrong level"), and jumps corrected to their level. With ``--compare`` (default) the
same truth is also scored by ``two_trap_eval.fit_stack`` / ``evaluate`` (bench/two_trap.py's own loops;
temporal: its "temporal + veto" row), beside the files' figures.

Bars (issue 19): found >= 85 %, one-trap taken < 5 %, two-trap RMS after <= 1.2 sigma, harmful < 0.3 %.

    .venv/bin/python bench/two_trap_e2e.py                       # 300 x 300, 1000 + 500 frames, 0.5 % and 1 %
    .venv/bin/python bench/two_trap_e2e.py --shape 200 200 --no-compare --json out.json
"""

from __future__ import annotations

import argparse
import contextlib
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the checkout: tests/calibration/_two_trap_e2e.py

from rtnstream.calibration import two_trap_eval  # noqa: E402
from rtnstream.kernels.lut import get_table  # noqa: E402
from tests.calibration._two_trap_e2e import REFERENCES, run_chain  # noqa: E402

BARS = {"two_trap_found": (">=", 0.85), "one_trap_taken_for_two": ("<", 0.05),
        "rms_after_over_sigma": ("<=", 1.2), "harmful_fraction": ("<", 0.003)}
POPULATIONS = ("two_trap", "two_trap_found", "one_trap", "one_trap_without_refit")
#: two_trap_eval.evaluate's keywords for the engine's references
EVALUATE = {"spatial": {"reference": "spatial"}, "temporal": {"reference": "temporal", "k_var": 1.5}}


def _passes(value: float, bar: tuple[str, float]) -> bool:
    op, limit = bar
    return {">=": value >= limit, "<": value < limit, "<=": value <= limit}[op]


def _own_loops(shape: tuple[int, int], fraction: float, n_frames: int, n_held: int, seed: int) -> dict:
    """bench/two_trap.py's figures of the same truth and frames (its fit and correction loops)."""
    table = get_table(0.003)
    truth = two_trap_eval.simulate(shape, 0.05, fraction, seed=seed)
    data, _, _ = two_trap_eval.bias_stack(truth, n_frames, seed=seed + 1)
    held = two_trap_eval.bias_stack(truth, n_held, seed=seed + 2)
    fit = two_trap_eval.fit_stack(data, truth.sensor.gain_e_per_adu, table)
    return {ref: two_trap_eval.evaluate(truth, fit, held, table, **kw) for ref, kw in EVALUATE.items()}


def _row(label: str, f: dict, flags: str = "") -> str:
    return (f"  {label:44s} {f['rms_before_e']:9.3f} {f['rms_after_e']:9.3f} {f['sigma_rms_e']:7.3f} "
            f"{f['rms_after_over_sigma']:9.3f} {100 * f['harmful_fraction']:7.3f}% "
            f"{100 * f['wrong_level_fraction']:8.3f}% {100 * f['jumps_caught_fraction']:6.1f}%  {flags}")


def _print(fraction: float, res: dict, own: dict | None) -> None:
    c, t = res["classification"], res["timing_s"]
    print(f"\n== two-trap fraction {100 * fraction:.2f} %: {c['n_two_trap']} two-trap, {c['n_one_trap']} one-trap "
          f"pixels; the cube file: {c['n_fitted_rtn']} RTN pixels, {c['n_fitted_two_trap']} two-trap")
    print("  time (s): " + ", ".join(f"{k} {v:.1f}" for k, v in t.items()))
    for key in ("two_trap_found", "one_trap_taken_for_two"):
        ok = "pass" if _passes(c[key], BARS[key]) else "FAIL"
        extra = f"   (two_trap_eval: {100 * own['spatial']['classification'][key]:.2f} %)" if own else ""
        print(f"  {key:28s} {100 * c[key]:7.2f} %   (bar {BARS[key][0]} {100 * BARS[key][1]:g} %: {ok}){extra}")
    print(f"  normal pixels taken for two  {c['normal_taken_for_two']:7d}")
    print(f"  {'population / reference':44s} {'RN before':>9s} {'RN after':>9s} {'sigma':>7s} {'after/sig':>9s} "
          f"{'harmful':>8s} {'wrong lvl':>9s} {'caught':>7s}")
    for ref in REFERENCES:
        for pop in POPULATIONS:
            f = res[ref][pop]
            flags = ""
            if pop.startswith("two_trap"):
                flags = " ".join("pass" if _passes(f[k], BARS[k]) else f"FAIL({k})"
                                 for k in ("rms_after_over_sigma", "harmful_fraction"))
            print(_row(f"{pop} / {ref}", f, flags))
        if own:
            for pop in ("two_trap", "one_trap"):
                print(_row(f"{pop} / {ref} (two_trap_eval)", own[ref][pop]))
        differ = res[ref]["one_trap_kept_frames_differing"]
        print(f"  one-trap pixels left one-trap by the refit, pixel-frames corrected otherwise than with the "
              f"--no-two-trap cube ({ref}): {differ}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", type=int, nargs=2, default=(300, 300), metavar=("NY", "NX"))
    parser.add_argument("--frames", type=int, default=1000, help="calibration bias frames")
    parser.add_argument("--held-out", type=int, default=500, help="held-out bias frames corrected")
    parser.add_argument("--fractions", type=float, nargs="+", default=(0.005, 0.01), help="two-trap fractions")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--no-compare", dest="compare", action="store_false",
                        help="do not score the same truth with two_trap_eval's own loops")
    parser.add_argument("--json", type=Path, help="write the figures here")
    args = parser.parse_args()
    shape = tuple(args.shape)
    print(f"# {platform.node()} {platform.machine()}, python {platform.python_version()}, numpy {np.__version__}; "
          f"{shape[0]} x {shape[1]} pixels, {args.frames} calibration + {args.held_out} held-out frames, seed "
          f"{args.seed}")
    results = []
    for fraction in args.fractions:
        with tempfile.TemporaryDirectory(prefix="two_trap_e2e-") as work, contextlib.redirect_stdout(sys.stderr):
            t0 = time.perf_counter()
            res = run_chain(Path(work), shape, args.frames, args.held_out, 0.05, fraction, args.seed)
            res["timing_s"]["chain_total"] = time.perf_counter() - t0
            t0 = time.perf_counter()
            own = _own_loops(shape, fraction, args.frames, args.held_out, args.seed) if args.compare else None
            if own:
                res["timing_s"]["two_trap_eval_total"] = time.perf_counter() - t0
        _print(fraction, res, own)
        results.append({"fraction": fraction, "chain": res,
                        "two_trap_eval": {ref: own[ref] for ref in own} if own else None})
    if args.json:
        params = {"shape": list(shape), "frames": args.frames, "held_out": args.held_out, "seed": args.seed,
                  "one_trap_fraction": 0.05, "alpha": 0.003}
        args.json.write_text(json.dumps({"params": params, "results": results}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
