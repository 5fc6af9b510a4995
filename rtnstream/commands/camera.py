"""``rtnstream camera``: a simulated camera publishing frames of a simulated sensor to a job's ingest."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from rtnstream.commands.source import add_delivery_options, deliver
from rtnstream.kernels.cube import write_cube
from rtnstream.kernels.simulate import Scene, SensorModel

__all__ = ["configure", "run"]

log = logging.getLogger(__name__)


def configure(parser: argparse.ArgumentParser) -> None:
    """Add the options of ``rtnstream camera``."""
    add_delivery_options(parser, ingest_required=False)  # not needed with --write-cube
    parser.add_argument("--camera", default="simcam", help="camera name in the headers")
    parser.add_argument("--shape", nargs=2, type=int, default=[512, 512], metavar=("NY", "NX"),
                        help="frame shape, pixels")
    parser.add_argument("--frames", type=int, default=100, help="frames in the series")
    parser.add_argument("--fps", type=float, default=10.0, help="frames/s (0: as fast as possible)")
    parser.add_argument("--scene", choices=("bias", "flat", "stars", "varying"), default="stars",
                        help="what the frames show")
    parser.add_argument("--sky-e", type=float, default=20.0, help="sky level, electron/pixel/frame")
    parser.add_argument("--rtn-fraction", type=float, default=0.05, help="fraction of RTN pixels")
    parser.add_argument("--sensor-seed", type=int, default=0, help="seed of the sensor (its RTN pixels)")
    parser.add_argument("--seed", type=int, default=1, help="seed of the frames' noise")
    parser.add_argument("--series", help="series id (default: a new unique one)")
    parser.add_argument("--write-cube", type=Path, metavar="FITS",
                        help="write the sensor's true RTN cube here (upload it for the job) and exit")


def run(args: argparse.Namespace) -> int:
    """Send the series (or write the cube); returns 0, or 1 when the job rejected frames (``--service``)."""
    from rtnstream.clients.camera import run_camera  # ZeroMQ: the service extra

    try:
        shape = (args.shape[0], args.shape[1])
        model = SensorModel.random(shape, rtn_fraction=args.rtn_fraction, seed=args.sensor_seed)
        scene = Scene.make(args.scene, shape, sky_e=args.sky_e, seed=args.sensor_seed)
    except ValueError as exc:
        raise SystemExit(f"rtnstream camera: error: {exc}") from None
    if args.write_cube:
        write_cube(model.true_cube(), args.write_cube, overwrite=True)
        log.info("wrote the true RTN cube of the simulated sensor to %s", args.write_cube)
        return 0
    if args.ingest is None:
        raise SystemExit("rtnstream camera: error: --ingest is required (unless --write-cube)")
    return deliver(args, lambda sender: run_camera(sender, model, args.frames, args.fps or None, scene, args.series,
                                                   args.seed, progress=True))
