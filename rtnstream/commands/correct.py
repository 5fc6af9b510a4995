"""``rtnstream correct``: correct FITS frames offline with an RTN calibration cube."""

from __future__ import annotations

import argparse
import json

from rtnstream.kernels.cube import read_cube
from rtnstream.kernels.engine import EngineSettings
from rtnstream.offline import correct_files


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("inputs", nargs="+", metavar="INPUT",
                        help="FITS files in time order, each a 2-D frame or a 3-D stack")
    parser.add_argument("--cube", required=True, help="RTN calibration file (FITS)")
    parser.add_argument("-o", "--outdir", required=True, help="output folder")
    parser.add_argument("--reference", choices=("temporal", "causal", "spatial"), default="temporal",
                        help="reference of each pixel: neighbouring frames (centred or past only) or pixels")
    parser.add_argument("--window", type=int, default=10, help="temporal window W, even >= 4 (frames)")
    parser.add_argument("--spatial-size", type=int, default=5, help="spatial neighbourhood k (odd >= 3)")
    parser.add_argument("--alpha", type=float, default=0.003, help="significance of the jump test")
    parser.add_argument("--k-var", type=float, default=1.5, help="variability veto factor")
    parser.add_argument("--backend", choices=("auto", "numpy", "cupy"), default="auto",
                        help="compute backend (auto: CuPy when a GPU is usable, else NumPy)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    try:
        settings = EngineSettings(reference=args.reference, window=args.window, spatial_size=args.spatial_size,
                                  alpha=args.alpha, k_var=args.k_var)
    except ValueError as exc:
        raise SystemExit(f"rtnstream correct: error: {exc}") from None
    cube = read_cube(args.cube)
    summary = correct_files(cube, args.inputs, args.outdir, settings, backend=args.backend,
                            progress=False if args.no_progress else None, cube_path=args.cube)
    print(json.dumps({k: summary[k] for k in ("frames", "corrections", "backend", "frames_per_s", "cube_id")}))
    return 0
