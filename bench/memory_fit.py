"""Peak memory (RSS) of ``rtnstream fit --memory-limit`` on full-frame bias stacks of several frame counts.

    .venv/bin/python bench/memory_fit.py                              # IMX455 6388 x 9576, 60 and 120 frames
    .venv/bin/python bench/memory_fit.py --shape 2000 3000 --frames 60 120 --memory-limit 1G

Writes ``max(--frames)`` simulated uint16 bias frames (one 2D FITS file each: bias 500 +- 3 adu, read noise
1.2 e-, 5 % RTN pixels with three levels, gain 0.3067 e-/ADU) into a temporary folder (``--dir``; deleted at
the end), then runs ``rtnstream fit`` as its own process on the first N of them for each N of ``--frames``
and takes its peak RSS (``ru_maxrss`` from ``os.wait4``; VmRSS sampled every 0.5 s for the plot). Prints
the peak, the limit, the bands the fit planned (rows a band: they shrink as the frame count grows, so the
peak does not grow with it) and the RTN pixels found. A 1000-frame full-frame stack (122 GB) does not fit
on a 45 GB disk: the frame counts measured are what does.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from astropy.io import fits
from memory_rss import RssSampler, plot_rss, run_sampled  # bench/ is on the path

from rtnstream.calibration.fit_report import report_path
from rtnstream.commands.fit import parse_size

GAIN_E_PER_ADU = 0.3067


def write_stack(shape: tuple[int, int], n_frames: int, folder: Path, seed: int = 0) -> list[Path]:
    """``n_frames`` uint16 bias frames of a sensor with 5 % RTN pixels, one FITS file each."""
    rng = np.random.default_rng(seed)
    npix = shape[0] * shape[1]
    bias = (500.0 + rng.normal(0, 3.0, npix)).astype(np.float32)
    sigma_adu = (1.2 * np.exp(rng.normal(0, 0.15, npix)) / GAIN_E_PER_ADU).astype(np.float32)
    index = np.sort(rng.choice(npix, npix // 20, replace=False))
    delta_adu = (rng.uniform(3.0, 10.0, index.size) * sigma_adu[index]).astype(np.float32)
    p_lo = rng.uniform(0.03, 0.1, index.size)
    p_hi = rng.uniform(0.03, 0.1, index.size)
    paths = []
    t0 = time.perf_counter()
    for k in range(n_frames):
        frame = rng.standard_normal(npix, dtype=np.float32)
        frame *= sigma_adu
        frame += bias
        u = rng.random(index.size)
        frame[index] += np.where(u < p_lo, -delta_adu, np.where(u > 1 - p_hi, delta_adu, 0)).astype(np.float32)
        np.rint(frame, out=frame)
        data = np.clip(frame, 0, 65535).astype(np.uint16).reshape(shape)
        del frame
        hdr = fits.Header({"IMAGETYP": "Bias", "EXPTIME": 0.0, "EGAIN": GAIN_E_PER_ADU})
        path = folder / f"bias_{k:04d}.fits"
        fits.PrimaryHDU(data, header=hdr).writeto(path)
        paths.append(path)
        if (k + 1) % 10 == 0:
            print(f"  {k + 1}/{n_frames} frames written ({time.perf_counter() - t0:.0f} s)", flush=True)
    return paths


def measure_fit(paths: list[Path], n_frames: int, limit: str, out: Path) -> tuple[float, RssSampler, dict]:
    """Peak RSS (MB) of ``rtnstream fit`` on the first ``n_frames`` of ``paths``, its samples and report."""
    cube = out / f"cube_{n_frames}.fits"
    cmd = [sys.executable, "-m", "rtnstream", "fit", *map(str, paths[:n_frames]), "-o", str(cube),
           "--gain-e-per-adu", str(GAIN_E_PER_ADU), "--memory-limit", limit, "--no-plots", "--no-progress",
           "--overwrite"]
    peak_mb, sampler = run_sampled("rtnstream fit", cmd, lambda pid: RssSampler(pid, interval_s=0.5),
                                   stdout=subprocess.DEVNULL)
    report = json.loads(report_path(cube).read_text())
    return peak_mb, sampler, report


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--shape", type=int, nargs=2, default=(6388, 9576), metavar=("NY", "NX"))
    ap.add_argument("--frames", type=int, nargs="+", default=[60, 120], help="frame counts fitted")
    ap.add_argument("--memory-limit", default="4G")
    ap.add_argument("--plot", type=Path, default=Path("bench/results/memory_fit.png"))
    ap.add_argument("--dir", default=None, help="folder for the stack (default: a temporary one; removed)")
    args = ap.parse_args()
    shape = (args.shape[0], args.shape[1])
    limit_mb = parse_size(args.memory_limit) / 2**20
    curves: dict[str, RssSampler] = {}
    with tempfile.TemporaryDirectory(dir=args.dir, prefix="memory-fit-") as tmp:
        folder = Path(tmp)
        n_max = max(args.frames)
        print(f"writing {n_max} frames of {shape[0]} x {shape[1]} uint16 "
              f"({n_max * shape[0] * shape[1] * 2 / 1e9:.1f} GB) into {folder}")
        paths = write_stack(shape, n_max, folder)
        for n in sorted(args.frames):
            t0 = time.perf_counter()
            peak, sampler, report = measure_fit(paths, n, args.memory_limit, folder)
            mem, counts = report["memory"], report["counts"]
            curves[f"{n} frames"] = sampler
            print(f"fit of {n} frames {shape[0]} x {shape[1]}, --memory-limit {args.memory_limit} "
                  f"({limit_mb:.0f} MiB): peak RSS {peak:.0f} MiB ({peak / limit_mb:.0%} of the limit) in "
                  f"{time.perf_counter() - t0:.0f} s; band rows: moments {mem['moments_rows']}, candidates "
                  f"{mem['anderson_rows']}, fit {mem['fit_rows']}; {counts['accepted']} RTN pixels accepted of "
                  f"{counts['candidates']} candidates", flush=True)
    plot_rss(curves, {}, limit_mb, args.plot, f"rtnstream fit {shape[0]} x {shape[1]}, --memory-limit "
                                              f"{args.memory_limit}: RSS against time")
    print(f"plot: {args.plot}")


if __name__ == "__main__":
    main()
