"""Characterization speed: ``characterize`` on a simulated camera's FITS stacks, and its reading and clipping.

Default: 1024 x 1024 uint16 frames, 60 biases, darks at 5 exposure times (4 each), a 6-step flat series
(2 each) and 40 flats at one exposure (about 300 MB), written to a folder first (not timed; kept with
``--data-dir`` and reused). Prints the wall time of ``characterize`` and, from a cProfile of the same run,
the time spent reading frames and sigma clipping (``clipped_stats``); then the same work done both ways:
every frame read once through astropy (``FitsStack.read_frame``) and directly (``FrameReader``), every
bias and dark frame clipped once with astropy's ``sigma_clipped_stats`` and with ``clipped_stats``.

    python bench/characterize.py [--shape 1024 1024] [--n-bias 60] [--data-dir DIR] [--json FILE]
"""

from __future__ import annotations

import argparse
import cProfile
import json
import platform
import pstats
import tempfile
import time
from pathlib import Path

import numpy as np
from astropy.stats import sigma_clipped_stats

from rtnstream.calibration._fitsread import FrameReader
from rtnstream.calibration._ptc import clipped_stats
from rtnstream.calibration.characterize import characterize
from rtnstream.calibration.detector_sim import CameraModel, CameraSimulator, write_camera_series
from rtnstream.calibration.stacks import FitsStack


def _cumulative(stats: pstats.Stats, names: tuple[str, ...]) -> float:
    """Cumulative seconds of the functions named ``names`` (outermost calls only)."""
    total = 0.0
    for (_, _, func), (_, _, _, cumtime, callers) in stats.stats.items():  # type: ignore[attr-defined]
        if func in names and not any(c[2] in names for c in callers):
            total += cumtime
    return total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", type=int, nargs=2, default=(1024, 1024), metavar=("NY", "NX"))
    parser.add_argument("--n-bias", type=int, default=60)
    parser.add_argument("--n-flat-pixel", type=int, default=40)
    parser.add_argument("--data-dir", type=Path, default=None, help="keep the simulated stacks here")
    parser.add_argument("--json", type=Path, default=None, help="also write the figures to this file")
    args = parser.parse_args()
    folder = args.data_dir or Path(tempfile.mkdtemp(prefix="rtnstream-bench-char-"))
    stamp = folder / "truth.json"
    if not stamp.exists():
        print(f"writing the simulated stacks to {folder} ...", flush=True)
        sim = CameraSimulator(CameraModel(shape=tuple(args.shape)), seed=1)
        write_camera_series(folder, sim, n_bias=args.n_bias, n_dark_per_exptime=4,
                            n_flat_pixel=args.n_flat_pixel)
    files = {kind: sorted(str(p) for p in (folder / kind).glob("*.fits")) for kind in ("bias", "dark", "flat")}
    n_frames = sum(len(v) for v in files.values())
    profile = cProfile.Profile()
    start = time.perf_counter()
    profile.enable()
    characterize(files["bias"], files["dark"], files["flat"])
    profile.disable()
    wall = time.perf_counter() - start
    stats = pstats.Stats(profile)
    reading = _cumulative(stats, ("read_frame", "iter_bands", "_read_region"))
    clipping = _cumulative(stats, ("clipped_stats",))
    # The same work both ways: every frame of every set read once, every bias and dark frame clipped once.
    stack = FitsStack(files["bias"] + files["dark"] + files["flat"])
    reader = FrameReader(stack)
    n_clip = len(files["bias"]) + len(files["dark"])
    read_astropy = read_direct = clip_astropy = clip_fast = worst = 0.0
    for i in range(stack.n_frames):  # alternate the two ways frame by frame, so both see the same cache
        t0 = time.perf_counter()
        frame = stack.read_frame(i)
        t1 = time.perf_counter()
        fast = reader.read_frame(i)
        t2 = time.perf_counter()
        read_astropy, read_direct = read_astropy + t1 - t0, read_direct + t2 - t1
        if not np.array_equal(frame, fast):
            raise AssertionError(f"frame {i}: the direct reader differs from astropy")
        if i < n_clip:
            t0 = time.perf_counter()
            old = sigma_clipped_stats(frame, sigma=3.0, maxiters=5)
            t1 = time.perf_counter()
            new = clipped_stats(frame)
            t2 = time.perf_counter()
            clip_astropy, clip_fast = clip_astropy + t1 - t0, clip_fast + t2 - t1
            worst = max(worst, abs(float(old[0]) - new[0]))
    figures = {"shape": list(args.shape), "n_frames": n_frames, "wall_s": wall, "reading_s": reading,
               "clipping_s": clipping, "reading_and_clipping_s": reading + clipping,
               "same_work": {"read_astropy_s": read_astropy, "read_direct_s": read_direct,
                             "clip_astropy_s": clip_astropy, "clip_fast_s": clip_fast, "n_clipped": n_clip,
                             "max_clipped_mean_difference_adu": worst,
                             "speedup": (read_astropy + clip_astropy) / (read_direct + clip_fast)},
               "python": platform.python_version()}
    print(f"{n_frames} frames of {args.shape[0]} x {args.shape[1]}: characterize {wall:.2f} s (profiled), "
          f"reading {reading:.2f} s, clipping {clipping:.2f} s")
    print(f"same work: reading {read_astropy:.2f} s (astropy per frame) -> {read_direct:.2f} s (direct); "
          f"clipping {n_clip} frames {clip_astropy:.2f} s (astropy) -> {clip_fast:.2f} s; together "
          f"{figures['same_work']['speedup']:.1f}x faster (clipped means agree to {worst:.1e} adu)")
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
