"""``rtnstream simulate``: a sensor with known RTN pixels; writes frames, the truth and the true cube."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
from astropy.io import fits
from tqdm import tqdm

from rtnstream.fitsio import FrameSink
from rtnstream.kernels.cube import write_cube
from rtnstream.kernels.simulate import Scene, SecondTraps, SensorModel, two_trap_frames, two_trap_true_cube


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-o", "--outdir", required=True, help="output folder")
    parser.add_argument("--shape", type=int, nargs=2, default=(256, 256), metavar=("NY", "NX"),
                        help="frame shape, pixels")
    parser.add_argument("--frames", type=int, default=100, help="number of frames")
    parser.add_argument("--scene", choices=("bias", "flat", "stars", "varying"), default="bias",
                        help="what the frames show")
    parser.add_argument("--sky-e", type=float, default=20.0, help="sky level, electron/pixel/frame")
    parser.add_argument("--n-stars", type=int, default=20, help="stars in the 'stars' and 'varying' scenes")
    parser.add_argument("--rtn-fraction", type=float, default=0.05, help="fraction of RTN pixels")
    parser.add_argument("--two-trap-fraction", type=float, default=0.0,
                        help="fraction of pixels with a second, independent trap (besides --rtn-fraction one-trap "
                             "pixels); their second traps' truth goes to truth.npz (states2, two_trap_*)")
    parser.add_argument("--gain-e-per-adu", type=float, default=1 / 3.26, help="conversion gain, e-/ADU")
    parser.add_argument("--frames-per-file", type=int, default=0,
                        help="split into files of this many frames (0: one 3-D stack; 1: 2-D frames)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the sensor, scene and noise")


def _check(args: argparse.Namespace) -> None:
    """Refuse bad arguments before anything is written (``SystemExit`` naming the option)."""
    problems = [
        (args.shape[0] >= 1 and args.shape[1] >= 1, f"--shape must be two sizes >= 1, got {args.shape[0]} "
                                                     f"{args.shape[1]}"),
        (args.frames >= 1, f"--frames must be >= 1, got {args.frames}"),
        (args.frames_per_file >= 0, f"--frames-per-file must be >= 0 (0: one 3-D stack), got {args.frames_per_file}"),
        (args.n_stars >= 0, f"--n-stars must be >= 0, got {args.n_stars}"),
        (np.isfinite(args.sky_e) and args.sky_e >= 0, f"--sky-e must be >= 0 electron/pixel/frame, got {args.sky_e}"),
        (0 <= args.rtn_fraction <= 1, f"--rtn-fraction must be in [0, 1], got {args.rtn_fraction}"),
        (0 <= args.two_trap_fraction <= 1 - args.rtn_fraction,
         f"--two-trap-fraction must be in [0, 1 - --rtn-fraction], got {args.two_trap_fraction!r}"),
        (np.isfinite(args.gain_e_per_adu) and args.gain_e_per_adu > 0,
         f"--gain-e-per-adu must be a positive number, got {args.gain_e_per_adu}"),
        (args.seed >= 0, f"--seed must be >= 0, got {args.seed}"),
    ]
    # Scene.make keeps its stars 3 FWHM from the border
    star_side = int(np.ceil(2 * 3 * Scene.fwhm_px + 1))
    if args.scene in ("stars", "varying"):
        problems.append((min(args.shape) >= star_side,
                         f"--shape must be at least {star_side} {star_side} for the {args.scene!r} scene's stars "
                         f"(kept 3 FWHM = {3 * Scene.fwhm_px:g} px from the border), got {args.shape[0]} "
                         f"{args.shape[1]}"))
    for ok, message in problems:
        if not ok:
            raise SystemExit(f"rtnstream simulate: error: {message}")


def run(args: argparse.Namespace) -> int:
    _check(args)
    shape = tuple(args.shape)
    two = args.two_trap_fraction
    try:  # the models check their own arguments too: before anything is written
        sensor = SensorModel.random(shape, rtn_fraction=args.rtn_fraction + two,
                                    gain_e_per_adu=args.gain_e_per_adu, seed=args.seed)
        traps = SecondTraps.random(sensor, two, seed=args.seed + 3) if two > 0 else None
        scene = Scene.make(args.scene, shape, sky_e=args.sky_e, n_stars=args.n_stars, seed=args.seed + 1)
    except ValueError as exc:
        raise SystemExit(f"rtnstream simulate: error: {exc}") from None
    outdir = Path(args.outdir)
    outdir.mkdir(parents=True, exist_ok=True)
    per_file = args.frames_per_file or args.frames
    states = np.empty((args.frames, sensor.n_rtn), dtype=np.int8)
    files: list[str] = []
    sink = None
    header = fits.Header([("EGAIN", sensor.gain_e_per_adu, "[e-/ADU] conversion gain"),
                          ("BUNIT", "adu"), ("ORIGIN", "rtnstream simulate"),
                          ("RTNSEED", args.seed, "seed of the simulation (truth.json)")])
    frames = (sensor.frames(args.frames, scene, seed=args.seed + 2) if traps is None
              else two_trap_frames(sensor, traps, args.frames, scene, seed=args.seed + 2))
    states2 = np.empty((args.frames, traps.n_two if traps else 0), dtype=np.int8)
    for t, sim in enumerate(tqdm(frames, total=args.frames, unit="frame", desc="simulate")):
        if t % per_file == 0:
            n = min(per_file, args.frames - t)
            name = f"{args.scene}.fits" if per_file == args.frames else f"{args.scene}_{t // per_file:05d}.fits"
            sink = FrameSink(outdir / name, shape, np.uint16, n, header=header, stack=per_file > 1)
            files.append(name)
        sink.write(sim.data)
        states[t] = sim.states
        if traps is not None:
            states2[t] = sim.states2
        if sink.written == sink.n_frames:
            sink.close()
    cube = sensor.true_cube() if traps is None else two_trap_true_cube(sensor, traps)
    write_cube(cube, outdir / "cube.fits", overwrite=True)
    second = {} if traps is None else {
        "states2": states2, "two_trap_index": sensor.rtn_index[traps.rtn_pos], "two_trap_delta2_e": traps.delta_e,
        "two_trap_frac2_c": traps.frac_c, "two_trap_frac2_lo": traps.frac_lo, "two_trap_frac2_hi": traps.frac_hi}
    np.savez_compressed(
        outdir / "truth.npz", states=states, rtn_index=sensor.rtn_index, delta_e=sensor.delta_e,
        frac_c=sensor.frac_c, frac_lo=sensor.frac_lo, frac_hi=sensor.frac_hi, bias_adu=sensor.bias_adu,
        sigma_e=sensor.sigma_e, gain_e_per_adu=np.float64(sensor.gain_e_per_adu),
        star_y=scene.star_y, star_x=scene.star_x, star_flux_e=scene.star_flux_e, **second,
    )
    info = {"files": files, "frames": args.frames, "shape": list(shape), "scene": args.scene,
            "n_rtn": sensor.n_rtn, "gain_e_per_adu": sensor.gain_e_per_adu, "cube": "cube.fits",
            "truth": "truth.npz", "seed": args.seed}
    if traps is not None:
        info["n_two_trap"] = traps.n_two
    (outdir / "truth.json").write_text(json.dumps(info, indent=2))
    print(json.dumps(info))
    return 0
