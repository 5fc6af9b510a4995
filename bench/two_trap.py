"""Two-trap pixels (issue 19): how many are found, and how well their correction works, on simulated truth.

For each two-trap fraction a simulated IMX455-like sensor (5 % one-trap pixels; jumps 4-10 sigma, second
jumps 4-14 sigma and at least 3 sigma from the first) records a calibration bias stack, fitted as
``fit_bias_stack`` fits (Anderson-Darling candidates, three-level fit and rules) plus the two-trap refit
(calibration/two_trap.py); a held-out bias stack is then corrected with the fitted parameters
(kernels/two_trap.py for two-trap pixels, the same rules with D2 = 0 for one-trap pixels) against the
spatial and the temporal (W = 10) references: the temporal one with the two-trap pixels' temporal rule
(docs/algorithm.md section 9, "Temporal reference"), with phase 1's (the window median's lambda, the plain
decision), and with the engine's variability veto (k_var = 1.5; the two-trap pixels' spread de-jumped).
Printed per fraction:

* classification: two-trap pixels found, one-trap pixels taken for two-trap, normal pixels taken for
  two-trap, median relative errors of the fitted jumps and sigma; the refit's time;
* per population (true two-trap, true one-trap pixels) and reference: RMS read noise before and after
  correction and over the true sigma; pixel-frames changed for the worse ("harmful": corrected although
  at the central level, or away from the true level by more than they were off) and changed to a level
  other than the true one by more than sigma ("wrong level"); jumps corrected to their level.

Bars (issue 19): found >= 85 %, one-trap taken < 5 %, two-trap RMS after <= 1.2 sigma, harmful < 0.3 %.

    .venv/bin/python bench/two_trap.py                           # 300 x 300, fractions 0.5 % and 1 %
    .venv/bin/python bench/two_trap.py --shape 200 200 --frames 1000 --held-out 500 --json out.json
    .venv/bin/python bench/two_trap.py --plot docs/two-trap.png  # also the figure (histogram and RMS)
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from tqdm import tqdm  # noqa: E402

from rtnstream.calibration import two_trap_eval  # noqa: E402
from rtnstream.kernels.lut import get_table  # noqa: E402
from rtnstream.kernels.two_trap import level_offsets_e  # noqa: E402

BARS = {"two_trap_found": (">=", 0.85), "one_trap_taken_for_two": ("<", 0.05),
        "rms_after_over_sigma": ("<=", 1.2), "harmful_fraction": ("<", 0.003)}


def _passes(value: float, bar: tuple[str, float]) -> bool:
    op, limit = bar
    return {">=": value >= limit, "<": value < limit, "<=": value <= limit}[op]


#: (label, evaluate keywords) of each correction scored
REFERENCES = (("spatial", {"reference": "spatial"}),
              ("temporal", {"reference": "temporal"}),
              ("temporal phase 1", {"reference": "temporal", "two_trap_temporal": "median"}),
              ("temporal + veto", {"reference": "temporal", "k_var": 1.5}),
              ("temporal phase 1 + veto", {"reference": "temporal", "two_trap_temporal": "median", "k_var": 1.5}))


def run_one(shape, fraction: float, n_frames: int, n_held: int, seed: int, table) -> dict:
    truth = two_trap_eval.simulate(shape, 0.05, fraction, seed=seed)
    data, _, _ = two_trap_eval.bias_stack(truth, n_frames, seed=seed + 1)
    held = two_trap_eval.bias_stack(truth, n_held, seed=seed + 2)
    t0 = time.perf_counter()
    fit = two_trap_eval.fit_stack(data, truth.sensor.gain_e_per_adu, table)
    fit_s = time.perf_counter() - t0
    out = {"fraction": fraction, "fit_stack_s": fit_s}
    for label, kwargs in REFERENCES:
        out[label] = two_trap_eval.evaluate(truth, fit, held, table, **kwargs)
    out["_plot"] = (truth, fit, data)
    return out


def _print(res: dict) -> None:
    c = res["spatial"]["classification"]
    print(f"\n== two-trap fraction {100 * res['fraction']:.2f} %: {c['n_two_trap']} two-trap, {c['n_one_trap']} "
          f"one-trap pixels, {c['n_candidates']} candidates ({c['n_refitted']} refitted with two traps); "
          f"fit_stack {res['fit_stack_s']:.1f} s")
    for key in ("two_trap_found", "one_trap_taken_for_two"):
        ok = "pass" if _passes(c[key], BARS[key]) else "FAIL"
        print(f"  {key:28s} {100 * c[key]:7.2f} %   (bar {BARS[key][0]} {100 * BARS[key][1]:g} %: {ok})")
    print(f"  normal pixels taken for two  {c['normal_taken_for_two']:7d}")
    for key in ("delta1_median_rel_error", "delta2_median_rel_error", "sigma_median_rel_error"):
        print(f"  {key:28s} {100 * c.get(key, float('nan')):7.2f} %")
    print(f"  {'population / reference':36s} {'RN before':>9s} {'RN after':>9s} {'sigma':>7s} {'after/sig':>9s} "
          f"{'harmful':>8s} {'wrong lvl':>9s} {'caught':>7s}")
    for ref, _ in REFERENCES:
        for pop in ("two_trap", "one_trap"):
            f = res[ref][pop]
            flags = ""
            if pop == "two_trap":
                flags = " ".join("pass" if _passes(f[k], BARS[k]) else f"FAIL({k})"
                                 for k in ("rms_after_over_sigma", "harmful_fraction"))
            print(f"  {pop + ' / ' + ref:36s} {f['rms_before_e']:9.3f} {f['rms_after_e']:9.3f} {f['sigma_rms_e']:7.3f} "
                  f"{f['rms_after_over_sigma']:9.3f} {100 * f['harmful_fraction']:7.3f}% "
                  f"{100 * f['wrong_level_fraction']:8.3f}% {100 * f['jumps_caught_fraction']:6.1f}%  {flags}")


def _plot(res: dict, path: Path) -> None:
    truth, fit, data = res["_plot"]
    g = truth.sensor.gain_e_per_adu
    fig, (ax0, ax1) = plt.subplots(1, 2, figsize=(12, 4.2), gridspec_kw={"width_ratios": [1, 1.3]})
    # a found two-trap pixel: histogram of its calibration values and the fitted levels
    flat = truth.two_trap_flat
    where = {int(f): i for i, f in enumerate(fit["index"])}
    found = [(int(f), where[int(f)]) for f in flat if int(f) in where and fit["two_trap"][where[int(f)]]]
    if found:
        f, i = found[0]
        v = data.reshape(data.shape[0], -1)[:, f].astype(float)
        ax0.hist(v, bins=np.arange(v.min() - 0.5, v.max() + 1.5), color="0.6", label="calibration frames")
        offs = level_offsets_e(np.array([fit["delta_e"][i]]), np.array([fit["delta2_e"][i]]))[0] / g
        for k, off in enumerate(offs):
            label = "fitted levels mu + i D1 + j D2" if k == 0 else None
            ax0.axvline(fit["mu_adu"][i] + off, color="C1", lw=1, label=label)
        ax0.axvline(fit["mu_adu"][i], color="C0", lw=1.5, label="fitted mu")
        ax0.set_xlabel("value (adu)")
        ax0.set_ylabel("frames")
        ax0.set_title(f"a two-trap pixel: D1 = {fit['delta_e'][i]:.1f} e-, D2 = {fit['delta2_e'][i]:.1f} e-, "
                      f"sigma = {fit['sigma_e'][i]:.2f} e-", fontsize=9)
        ax0.legend(fontsize=8)
    labels, before, after, sig = [], [], [], []
    for ref in ("spatial", "temporal", "temporal phase 1"):
        for pop in ("two_trap", "one_trap"):
            fg = res[ref][pop]
            labels.append(f"{pop.replace('_', '-')}\n{ref.replace(' phase', chr(10) + 'phase')}")
            before.append(fg["rms_before_e"])
            after.append(fg["rms_after_e"])
            sig.append(fg["sigma_rms_e"])
    x = np.arange(len(labels))
    ax1.bar(x - 0.27, before, 0.27, label="raw", color="0.6")
    ax1.bar(x, after, 0.27, label="corrected", color="C0")
    ax1.bar(x + 0.27, sig, 0.27, label="true sigma", color="C2")
    ax1.bar(x + 0.27, np.array(sig) * 0.2, 0.27, bottom=sig, color="C2", alpha=0.3, label="sigma + 20 % (bar)")
    ax1.set_xticks(x, labels, fontsize=8)
    ax1.set_ylabel("RMS read noise (e-)")
    ax1.set_title(f"held-out bias stack, two-trap fraction {100 * res['fraction']:.2f} %", fontsize=9)
    ax1.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    print(f"\nplot: {path}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", type=int, nargs=2, default=(300, 300), metavar=("NY", "NX"))
    parser.add_argument("--frames", type=int, default=1000, help="calibration bias frames")
    parser.add_argument("--held-out", type=int, default=500, help="held-out bias frames corrected")
    parser.add_argument("--fractions", type=float, nargs="+", default=(0.005, 0.01), help="two-trap fractions")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--json", type=Path, help="write the figures here")
    parser.add_argument("--plot", type=Path, help="write the figure (PNG) here")
    args = parser.parse_args()
    table = get_table(0.003)
    results = []
    for fraction in tqdm(args.fractions, desc="two-trap fractions", unit="fraction"):
        res = run_one(tuple(args.shape), fraction, args.frames, args.held_out, args.seed, table)
        _print(res)
        results.append(res)
    if args.plot:
        _plot(results[-1], args.plot)
    if args.json:
        params = {"shape": list(args.shape), "frames": args.frames, "held_out": args.held_out, "seed": args.seed,
                  "one_trap_fraction": 0.05, "alpha": 0.003}
        clean = [{k: v for k, v in r.items() if k != "_plot"} for r in results]
        args.json.write_text(json.dumps({"params": params, "results": clean}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
