"""``rtnstream evaluate``: what correction and masking do to the light curves of a series' stars."""

from __future__ import annotations

import argparse
import json
from typing import TYPE_CHECKING

import numpy as np

from rtnstream.kernels.exceptions import RTNStreamError

if TYPE_CHECKING:
    from rtnstream.kernels.engine import EngineSettings


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("inputs", nargs="*", metavar="FRAMES",
                        help="raw FITS frames of one series (files, folders or globs); none with --predict")
    parser.add_argument("--cube", required=True, help="RTN calibration file (FITS)")
    parser.add_argument("-o", "--outdir", help="output folder (report.json, report.html, plots)")
    parser.add_argument("--corrected", nargs="+", metavar="CORRECTED",
                        help="the same frames already corrected (rtnstream correct); default: corrected here")
    parser.add_argument("--offset-map", help="bias offset map of --corrected (default: calib/ beside them)")
    parser.add_argument("--fwhm", type=float, nargs="+", metavar="PX",
                        help="PSF FWHM, pixel: the aperture radius (default: fitted on the median frame), at most "
                             "the frame's smaller side / 6 (the background annulus reaches 3 FWHM); with "
                             "--predict, one Monte Carlo per value, each at most 50")
    parser.add_argument("--sources", metavar="CATALOG",
                        help="star catalog (ECSV/CSV/FITS table with x, y in 0-based pixels) instead of finding")
    parser.add_argument("--comparison", type=int, default=20, help="comparison stars (the N brightest; 0: none)")
    parser.add_argument("--star-plots", type=int, default=50, help="light-curve plots of the first N stars")
    parser.add_argument("--predict", action="store_true",
                        help="only the Monte Carlo of correction against masking against no RTN (the RTN paper's "
                             "Fig. 6), from the cube alone")
    parser.add_argument("--flux-range", type=float, nargs=2, default=(10.0, 1e5), metavar=("A", "B"),
                        help="--predict: source flux range, electron per frame")
    parser.add_argument("--rtn-fraction", type=float, nargs="+",
                        help="--predict: fraction(s) of RTN pixels (default: the cube's)")
    parser.add_argument("--sky-e", type=float, default=0.0, help="--predict: sky, electron/pixel/frame")
    parser.add_argument("--trials", type=int, default=2000, help="--predict: Monte Carlo trials per flux")
    parser.add_argument("--reference", choices=("temporal", "causal", "spatial"), default="temporal",
                        help="correction reference")
    parser.add_argument("--window", type=int, default=10, help="temporal window W, even >= 4 (frames)")
    parser.add_argument("--alpha", type=float, default=0.003, help="significance of the jump test")
    parser.add_argument("--backend", choices=("auto", "numpy", "cupy"), default="auto", help="compute backend")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")


def _predict(args: argparse.Namespace, settings: EngineSettings) -> int:
    from rtnstream.evaluate.prediction import monte_carlo
    from rtnstream.evaluate.report import write_prediction
    from rtnstream.kernels.cube import read_cube

    if not args.fwhm:
        raise SystemExit("rtnstream evaluate: error: --predict needs --fwhm PX [PX ...]")
    lo, hi = args.flux_range
    if not 0 < lo < hi:
        raise SystemExit(f"rtnstream evaluate: error: --flux-range must be 0 < A < B, got {lo} {hi}")
    cube = read_cube(args.cube)
    fractions = args.rtn_fraction or [None]
    flux = np.geomspace(lo, hi, 13)
    try:
        runs = [monte_carlo(cube, fwhm, flux, rtn_fraction=frac, sky_e=args.sky_e, n_trials=args.trials,
                            settings=settings)
                for fwhm in args.fwhm for frac in fractions]
    except RTNStreamError:
        raise
    except ValueError as exc:
        raise SystemExit(f"rtnstream evaluate: error: {exc}") from None
    print(f"{'FWHM':>5} {'RTN %':>6} {'flux e-':>9} | {'corrected %':>11} {'masked %':>9} {'no RTN %':>9} "
          f"| masked worse")
    for r in runs:
        for k, f in enumerate(r["flux_e"]):
            print(f"{r['fwhm_px']:5.2f} {100 * r['rtn_fraction']:6.2f} {f:9.3g} | "
                  f"{100 * (r['gain_corrected_median'][k] - 1):11.2f} {100 * (r['gain_masked_median'][k] - 1):9.2f} "
                  f"{100 * (r['gain_ideal_median'][k] - 1):9.2f} | {100 * r['masked_worse_fraction'][k]:5.1f} %")
    if args.outdir:
        paths = write_prediction(runs, args.outdir)
        print(json.dumps({k: str(v) for k, v in paths.items()}))
    return 0


def run(args: argparse.Namespace) -> int:
    import photutils  # noqa: F401  (the 'evaluate' extra: missing, the entry point names the install, before any work)

    from rtnstream.kernels.engine import EngineSettings

    try:
        settings = EngineSettings(reference=args.reference, window=args.window, alpha=args.alpha)
    except ValueError as exc:
        raise SystemExit(f"rtnstream evaluate: error: {exc}") from None
    if args.predict:
        return _predict(args, settings)
    if not args.inputs:
        raise SystemExit("rtnstream evaluate: error: FRAMES are required (or --predict)")
    if not args.outdir:
        raise SystemExit("rtnstream evaluate: error: -o/--outdir is required")
    if args.fwhm and len(args.fwhm) != 1:
        raise SystemExit("rtnstream evaluate: error: --fwhm takes one value without --predict")
    if args.comparison < 0:
        raise SystemExit(f"rtnstream evaluate: error: --comparison must be >= 0, got {args.comparison}")
    from rtnstream.evaluate import evaluate_files
    from rtnstream.evaluate.report import write_report

    progress = False if args.no_progress else None
    try:
        evaluation = evaluate_files(args.cube, args.inputs, args.outdir, corrected=args.corrected,
                                    offset_map=args.offset_map, fwhm_px=args.fwhm[0] if args.fwhm else None,
                                    sources=args.sources, n_comparison=args.comparison, settings=settings,
                                    backend=args.backend, progress=progress)
    except RTNStreamError:
        raise  # printed by the entry point, exit status 2
    except ValueError as exc:
        raise SystemExit(f"rtnstream evaluate: error: {exc}") from None
    paths = write_report(evaluation, args.outdir, max_star_plots=args.star_plots, progress=progress)
    s = evaluation.summary["with_rtn"]
    print(json.dumps({"stars": len(evaluation.stars), "with_rtn": s["n_stars"], "fwhm_px": evaluation.fwhm_px,
                      "improvement_corrected_pct": s["improvement_corrected_pct"],
                      "improvement_masked_pct": s["improvement_masked_pct"],
                      "predicted_improvement_corrected_pct": s["predicted_improvement_corrected_pct"],
                      "flux_bias_pct_without_offset": s["flux_bias_pct_without_offset"],
                      "flux_bias_pct_with_offset": s["flux_bias_pct_with_offset"],
                      "report": str(paths["html"])}))
    return 0
