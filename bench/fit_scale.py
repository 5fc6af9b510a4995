"""RTN fit in one process against a dask LocalCluster on the same stack, and the projected full-sensor time.

    .venv/bin/python bench/fit_scale.py                          # 1000 frames of 512 x 512, local:2
    .venv/bin/python bench/fit_scale.py --shape 1024 1024 --workers 2

Writes a simulated bias stack to a temporary folder, fits it with ``fit_bias_stack`` in this process and
with ``scheduler='local:N'``, checks that both cubes are the same (``cube_id``), and projects the time of a
5000-frame full IMX455 fit (9576 x 6388) on N workers from the measured cost per pixel and frame (the fit
is linear in both; the cluster's start-up is left out of the projection).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
from astropy.io import fits

from rtnstream.calibration.fit import fit_bias_stack
from rtnstream.kernels.simulate import SensorModel

FULL_PIXELS = 9576 * 6388
FULL_FRAMES = 5000


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--shape", type=int, nargs=2, default=(512, 512), metavar=("NY", "NX"))
    ap.add_argument("--frames", type=int, default=1000)
    ap.add_argument("--workers", type=int, default=2, help="workers of the LocalCluster")
    ap.add_argument("--memory-limit", type=int, default=64 << 20, help="bytes (bands of a few MB: many bands)")
    args = ap.parse_args()
    shape = tuple(args.shape)
    sensor = SensorModel.random(shape, rtn_fraction=0.05, seed=1)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "bias.fits"
        data, _, _ = sensor.stack(args.frames, seed=2)
        fits.PrimaryHDU(data).writeto(path)
        del data
        t0 = time.perf_counter()
        one = fit_bias_stack([path], sensor.gain_e_per_adu, memory_limit_bytes=args.memory_limit)
        t_one = time.perf_counter() - t0
        t0 = time.perf_counter()
        dask = fit_bias_stack([path], sensor.gain_e_per_adu, memory_limit_bytes=args.memory_limit,
                              scheduler=f"local:{args.workers}")
        t_dask = time.perf_counter() - t0
    npix = shape[0] * shape[1]
    same = one.cube.cube_id == dask.cube.cube_id and bool(np.array_equal(one.cube.dq, dask.cube.dq))
    print(f"stack {args.frames} frames of {shape[0]} x {shape[1]}; {one.cube.n_rtn} RTN pixels")
    print(f"one process: {t_one:.1f} s; LocalCluster of {args.workers} workers (processes, start-up included): "
          f"{t_dask:.1f} s; speed-up {t_one / t_dask:.2f}; same cube: {same}")
    cost = t_one / (npix * args.frames)
    full = cost * FULL_PIXELS * FULL_FRAMES
    print(f"cost {cost * 1e9:.2f} ns per pixel and frame; a {FULL_FRAMES}-frame full IMX455 fit, ideal scaling: "
          + ", ".join(f"{n} workers {full / n / 60:.0f} min" for n in (1, 8, 32, 128)))


if __name__ == "__main__":
    main()
