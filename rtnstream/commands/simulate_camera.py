"""``rtnstream simulate-camera``: write simulated bias, dark and flat FITS frames with their truth."""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

from rtnstream.calibration.detector_sim import CameraModel, CameraSimulator, write_camera_series

__all__ = ["configure", "run"]

log = logging.getLogger(__name__)


def configure(parser: argparse.ArgumentParser) -> None:
    """Add the options of ``rtnstream simulate-camera`` to ``parser``."""
    d = CameraModel()
    parser.add_argument("-o", "--output", required=True, type=Path, metavar="DIR",
                        help="folder for bias/, dark/, flat/ and truth.json")
    parser.add_argument("--shape", nargs=2, type=int, default=list(d.shape), metavar=("NY", "NX"),
                        help="frame shape, pixels")
    parser.add_argument("--gain-e-per-adu", type=float, default=d.gain_e_per_adu, help="gain, e-/ADU")
    parser.add_argument("--read-noise-e", type=float, default=d.read_noise_e, help="median read noise, e-")
    parser.add_argument("--dark-current-e-per-s", type=float, default=d.dark_current_e_per_s,
                        help="dark current of ordinary pixels, e-/pixel/s")
    parser.add_argument("--hot-pixel-fraction", type=float, default=d.hot_pixel_fraction,
                        help="fraction of hot pixels")
    parser.add_argument("--flux-e-per-s", type=float, default=d.flux_e_per_s,
                        help="flat illumination, e-/pixel/s")
    parser.add_argument("--nonlinearity-pct", type=float, default=d.nonlinearity_pct,
                        help=f"signal compression at {d.nonlinearity_ref_adu:g} adu, percent")
    parser.add_argument("--n-bias", type=int, default=100, help="number of bias frames")
    parser.add_argument("--n-dark", type=int, default=2, help="dark frames per exposure time")
    parser.add_argument("--dark-exptimes", nargs="+", type=float, default=[0.0, 60.0, 150.0, 300.0, 600.0],
                        metavar="S", help="dark exposure times, s")
    parser.add_argument("--exptimes", nargs="+", type=float, default=[0.5, 1.0, 2.0, 4.0, 6.0, 8.0],
                        metavar="S", help="flat series exposure times, s")
    parser.add_argument("--n-flat", type=int, default=2, help="flats per exposure time of the series")
    parser.add_argument("--n-flat-pixel", type=int, default=100,
                        help="extra flats at --pixel-exptime for the pixel-level maps")
    parser.add_argument("--pixel-exptime", type=float, default=2.0, help="their exposure time, s")
    parser.add_argument("--seed", type=int, default=0, help="random seed")


def run(args: argparse.Namespace) -> int:
    """Simulate the camera and write its frames and truth; returns 0."""
    try:
        model = CameraModel(
            shape=(args.shape[0], args.shape[1]),
            gain_e_per_adu=args.gain_e_per_adu,
            read_noise_e=args.read_noise_e,
            dark_current_e_per_s=args.dark_current_e_per_s,
            hot_pixel_fraction=args.hot_pixel_fraction,
            flux_e_per_s=args.flux_e_per_s,
            nonlinearity_pct=args.nonlinearity_pct,
        )
    except ValueError as exc:
        raise SystemExit(f"rtnstream simulate-camera: error: {exc}") from exc
    truth = write_camera_series(
        args.output, CameraSimulator(model, seed=args.seed),
        n_bias=args.n_bias,
        dark_exptimes_s=args.dark_exptimes,
        n_dark_per_exptime=args.n_dark,
        flat_exptimes_s=args.exptimes,
        n_flat_per_exptime=args.n_flat,
        pixel_flat_exptime_s=args.pixel_exptime,
        n_flat_pixel=args.n_flat_pixel,
    )
    counts = {kind: len(paths) for kind, paths in truth["files"].items()}
    log.info("wrote %s frames and truth.json to %s", json.dumps(counts), args.output)
    return 0
