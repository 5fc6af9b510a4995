"""``rtnstream cube``: RTN calibration cubes: import the RTN paper's output, convert between formats, summary."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from rtnstream.commands.fit import gain_from_args
from rtnstream.kernels.cube import CUBE_FORMAT_VERSION, CUBE_FORMATS, import_paper, read_cube, write_cube


def configure(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="cube_command", metavar="ACTION", required=True)
    imp = sub.add_parser("import-paper", help="convert the RTN paper's 6-plane parameter file",
                         formatter_class=parser.formatter_class)
    imp.add_argument("params", metavar="PARAMS.fits", help="6 planes: mu e-, A, B_low, Delta e-, sigma e-, "
                                                           "lambda_max")
    gain = imp.add_mutually_exclusive_group(required=True)
    gain.add_argument("--gain-e-per-adu", type=float, metavar="G",
                      help="conversion gain, e-/ADU (FITS GAIN convention, as everywhere in rtnstream)")
    gain.add_argument("--gain-adu-per-e", type=float, metavar="G",
                      help="conversion gain given the other way, ADU/e- (the RTN paper writes 3.26)")
    imp.add_argument("--mean-bias", help="mean bias map (adu), FITS")
    imp.add_argument("--read-noise", help="read noise map (electron), FITS")
    imp.add_argument("-o", "--output", required=True, help="cube file to write")
    imp.add_argument("--overwrite", action="store_true", help="replace an existing output file")
    conv = sub.add_parser("convert", help="rewrite a cube in another format version (docs/formats.md)",
                          formatter_class=parser.formatter_class)
    conv.add_argument("input", metavar="IN.fits", help="cube to read (any format version)")
    conv.add_argument("output", metavar="OUT.fits", help="cube file to write")
    conv.add_argument("--format", type=int, choices=CUBE_FORMATS, default=CUBE_FORMAT_VERSION,
                      help="format version to write: 2 (RTN pixels as a table, compressed maps) or 1 (one image "
                           "plane per parameter)")
    conv.add_argument("--overwrite", action="store_true", help="replace an existing output file")
    info = sub.add_parser("info", help="validate a cube and print its summary as JSON",
                          formatter_class=parser.formatter_class)
    info.add_argument("cube", metavar="CUBE.fits")


def run(args: argparse.Namespace) -> int:
    if args.cube_command == "import-paper":
        try:
            gain_e_per_adu = gain_from_args(args)
        except ValueError as exc:
            raise SystemExit(f"rtnstream cube import-paper: error: {exc}") from None
        gain_adu_per_e = args.gain_adu_per_e if args.gain_adu_per_e is not None else 1.0 / gain_e_per_adu
        cube = import_paper(args.params, gain_adu_per_e, args.mean_bias, args.read_noise)
        write_cube(cube, args.output, overwrite=args.overwrite)
    elif args.cube_command == "convert":
        if Path(args.output).exists() and not args.overwrite:
            raise SystemExit(f"rtnstream cube convert: error: {args.output} exists (--overwrite replaces it)")
        cube = read_cube(args.input)
        try:
            write_cube(cube, args.output, overwrite=args.overwrite, version=args.format)
        except ValueError as exc:  # format 1 cannot hold a cube's second traps
            raise SystemExit(f"rtnstream cube convert: error: --format {args.format}: {exc}") from None
        print(f"wrote {args.output} (format {args.format}, {Path(args.output).stat().st_size} bytes, cube "
              f"{cube.cube_id})")
        return 0
    else:
        cube = read_cube(args.cube)
    print(json.dumps({
        "id": cube.cube_id,
        "shape": list(cube.shape),
        "n_rtn": cube.n_rtn,
        "n_two_trap": int(np.count_nonzero(cube.rtn.two_trap)),
        "rtn_fraction": cube.n_rtn / (cube.shape[0] * cube.shape[1]),
        "gain_e_per_adu": cube.gain_e_per_adu,
        "median_delta_e": float(np.median(cube.rtn.delta_e)) if cube.n_rtn else None,
        "median_sigma_e": float(np.median(cube.rtn.sigma_e)) if cube.n_rtn else None,
        "meta": {k: str(v) for k, v in cube.meta.items()},
    }, indent=2))
    return 0
