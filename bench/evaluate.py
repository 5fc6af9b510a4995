"""What correction and masking do to light curves: ``evaluate`` on simulated star fields with known truth.

For each field (rtnstream.starfield: constant stars on an IMX455-like sensor of kernels/simulate.py, the
sensor's true cube; FWHM 2.6 px undersampled or 6 px well sampled; faint 20-300 e- or bright 3000-30000 e-
stars; 1, 5 or 10 % RTN pixels; sky 0.5 e-/pixel/frame, and one field at sky 3 e- for the flux bias) the frames
are corrected by the engine ``rtnstream correct`` runs (temporal median, W = 10, alpha = 0.003) and measured by
``rtnstream evaluate``'s photometry (aperture radius FWHM, 3-sigma clipped median annulus 2-3 FWHM, offset map
in source apertures only, no comparison stars). Printed per field, over the stars with RTN pixels in their
aperture (mean +- standard error over stars, percent): the SNR improvement of correction and of masking,
measured and predicted from the cube (ALGORITHM.md section 6.5), their difference, and the flux bias of
corrected photometry without and with the bias offset map; over all stars, the measured mean improvement and the
Monte Carlo's (``evaluate --predict``) for the same fluxes.

    .venv/bin/python bench/evaluate.py                          # table on stdout, plot docs/evaluate.png
    .venv/bin/python bench/evaluate.py --frames 300 --json evaluate.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from rtnstream.evaluate import evaluate_arrays  # noqa: E402
from rtnstream.evaluate.prediction import monte_carlo  # noqa: E402
from rtnstream.starfield import StarField  # noqa: E402

FAINT, BRIGHT = (20.0, 300.0), (3000.0, 30000.0)


def fields() -> list[dict]:
    """The grid: FWHM x brightness x RTN fraction at sky 0.5, and the sky-3 flux-bias field."""
    out = []
    for fwhm, shape in ((2.6, (256, 256)), (6.0, (384, 384))):
        for regime, flux in (("faint", FAINT), ("bright", BRIGHT)):
            for frac in (0.01, 0.05, 0.10):
                out.append({"fwhm_px": fwhm, "regime": regime, "flux_range_e": flux, "rtn_fraction": frac,
                            "sky_e": 0.5, "shape": shape})
    out.append({"fwhm_px": 6.0, "regime": "sky3", "flux_range_e": (50.0, 1000.0), "rtn_fraction": 0.10,
                "sky_e": 3.0, "shape": (384, 384)})
    return out


def _mean_se(a: np.ndarray) -> tuple[float, float]:
    a = a[np.isfinite(a)]
    return float(a.mean()), float(a.std(ddof=1) / np.sqrt(a.size))


def run_field(spec: dict, n_frames: int, seed: int, trials: int) -> dict:
    field = StarField.make(spec["shape"], fwhm_px=spec["fwhm_px"], flux_range_e=spec["flux_range_e"],
                           sky_e=spec["sky_e"], rtn_fraction=spec["rtn_fraction"], seed=seed)
    t0 = time.perf_counter()
    raw = np.stack([f.data for f in field.frames(n_frames, seed=seed + 1)])
    cube = field.cube()
    ev = evaluate_arrays(raw, cube, fwhm_px=spec["fwhm_px"], positions_xy=field.positions_xy, n_comparison=0,
                         progress=False)
    rows = [s for s in ev.stars if s["n_rtn_in_aperture"] > 0]

    def col(key: str, stars=rows) -> np.ndarray:
        return np.array([np.nan if s[key] is None else s[key] for s in stars], dtype=np.float64)

    # the Monte Carlo with the scene's PSF (sampled at pixel centres) and with real optics' (integrated)
    mc = {sampling: monte_carlo(cube, spec["fwhm_px"], field.scene.star_flux_e, sky_e=spec["sky_e"],
                                n_trials=trials, seed=seed, psf_sampling=sampling)
          for sampling in ("centre", "integrated")}
    res = {**{k: (list(v) if isinstance(v, tuple) else v) for k, v in spec.items()}, "n_frames": n_frames,
           "n_stars": len(ev.stars), "n_with_rtn": len(rows), "elapsed_s": round(time.perf_counter() - t0, 2)}
    for key in ("improvement_corrected_pct", "improvement_masked_pct", "predicted_improvement_corrected_pct",
                "predicted_improvement_masked_pct", "flux_bias_pct_without_offset", "flux_bias_pct_with_offset"):
        res[key] = _mean_se(col(key))
    res["corrected_minus_masked_pct"] = _mean_se(col("improvement_corrected_pct") - col("improvement_masked_pct"))
    res["corrected_minus_predicted_pct"] = _mean_se(col("improvement_corrected_pct")
                                                    - col("predicted_improvement_corrected_pct"))
    res["masked_minus_predicted_pct"] = _mean_se(col("improvement_masked_pct")
                                                 - col("predicted_improvement_masked_pct"))
    res["all_stars_corrected_pct"] = _mean_se(col("improvement_corrected_pct", ev.stars))
    res["all_stars_masked_pct"] = _mean_se(col("improvement_masked_pct", ev.stars))
    for sampling, tag in (("centre", ""), ("integrated", "_integrated")):
        for name in ("corrected", "masked"):
            res[f"monte_carlo_{name}{tag}_pct"] = float(100 * (mc[sampling][f"gain_{name}_mean"].mean() - 1))
    return res


def _fmt(v: tuple[float, float]) -> str:
    return f"{v[0]:6.2f}+-{v[1]:4.2f}"


def print_table(results: list[dict]) -> None:
    print(f"{'FWHM':>4} {'stars':>6} {'RTN':>4} {'sky':>3} {'n':>7} | {'corrected':>11} {'predicted':>11} "
          f"{'masked':>11} {'predicted':>11} {'corr-mask':>11} | {'bias w/o':>11} {'bias with':>11} | "
          f"{'all: corr':>11} {'MC':>6} {'MC int':>6} {'all: mask':>11} {'MC':>6} {'MC int':>6}")
    for r in results:
        print(f"{r['fwhm_px']:4.1f} {r['regime']:>6} {100 * r['rtn_fraction']:3.0f}% {r['sky_e']:3.1f} "
              f"{r['n_with_rtn']:3d}/{r['n_stars']:<3d} | {_fmt(r['improvement_corrected_pct'])} "
              f"{_fmt(r['predicted_improvement_corrected_pct'])} {_fmt(r['improvement_masked_pct'])} "
              f"{_fmt(r['predicted_improvement_masked_pct'])} {_fmt(r['corrected_minus_masked_pct'])} | "
              f"{_fmt(r['flux_bias_pct_without_offset'])} {_fmt(r['flux_bias_pct_with_offset'])} | "
              f"{_fmt(r['all_stars_corrected_pct'])} {r['monte_carlo_corrected_pct']:6.2f} "
              f"{r['monte_carlo_corrected_integrated_pct']:6.2f} {_fmt(r['all_stars_masked_pct'])} "
              f"{r['monte_carlo_masked_pct']:6.2f} {r['monte_carlo_masked_integrated_pct']:6.2f}")
    print(f"(percent, mean +- standard error over the stars with RTN pixels in the aperture (n = with / all), "
          f"{results[0]['n_frames']} frames; 'all': over every star, against the Monte Carlo's mean, 'MC' with the "
          f"scene's PSF sampled at pixel centres, 'MC int' integrated over pixels)")


def plot(results: list[dict], path: Path) -> None:
    fig, ax = plt.subplots(figsize=(11, 4.5))
    x = np.arange(len(results))
    for name, colour, dx in (("corrected", "tab:orange", -0.12), ("masked", "tab:green", 0.12)):
        m = np.array([r[f"improvement_{name}_pct"] for r in results])
        p = np.array([r[f"predicted_improvement_{name}_pct"][0] for r in results])
        ax.errorbar(x + dx, m[:, 0], yerr=m[:, 1], fmt="o", color=colour, capsize=3, label=f"{name}, measured")
        ax.scatter(x + dx, p, marker="_", s=250, color=colour, label=f"{name}, predicted from the cube")
    ax.axhline(0, color="k", lw=0.6)
    ax.set_xticks(x, [f"{r['fwhm_px']:g} px\n{r['regime']}\n{100 * r['rtn_fraction']:.0f} %" for r in results],
                  fontsize=7)
    ax.set_ylabel("SNR improvement over raw (%)")
    ax.set_title("stars with RTN pixels in the aperture: mean +- standard error over stars")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--frames", type=int, default=300, help="frames per field")
    p.add_argument("--seed", type=int, default=3)
    p.add_argument("--trials", type=int, default=300, help="Monte Carlo trials per star flux")
    p.add_argument("--plot", type=Path, default=Path("docs/evaluate.png"), help="PNG to write")
    p.add_argument("--json", type=Path, help="also write the figures as JSON here")
    p.add_argument("--quick", action="store_true", help="only the first field of each FWHM (a smoke run)")
    args = p.parse_args(argv)
    specs = fields()
    if args.quick:
        specs = [specs[0], specs[6]]
    results = []
    for k, spec in enumerate(specs):
        print(f"field {k + 1}/{len(specs)}: FWHM {spec['fwhm_px']} px, {spec['regime']}, "
              f"{100 * spec['rtn_fraction']:.0f} % RTN", file=sys.stderr, flush=True)
        results.append(run_field(spec, args.frames, args.seed, args.trials))
    print_table(results)
    plot(results, args.plot)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
