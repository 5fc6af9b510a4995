"""``rtnstream watch``: frames/s and the latency the watch adds per frame, on one-frame FITS files.

A writer saves ``--frames`` frames (``--shape``, uint16, DATE-OBS / EXPTIME / OBJECT) into a folder every
``--cadence`` seconds (each written and closed, not renamed into place); ``rtnstream watch`` (NumPy
backend, temporal reference ``--window``) corrects them. Frame t can go out only once frame t + W/2 is
written (frame W for the first W/2 frames), so *added* is each output's time (its file's modification
time) less the time that frame was closed: the settle time, the poll interval, reading, correcting and
writing. A second run copies every frame at once: frames/s is the frames over the time from the first
input to the last output, less the settle time.

    python bench/watch.py [--shape 1024 1024] [--frames 40] [--cadence 0.5] [--window 10]
                          [--settle-s 1.0] [--poll-s 0.5]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timedelta
from pathlib import Path

import numpy as np
from astropy.io import fits

from rtnstream.kernels.cube import write_cube
from rtnstream.kernels.simulate import Scene, SensorModel


def _frames(shape: tuple[int, int], n: int, folder: Path) -> tuple[list[bytes], list[str], Path]:
    sensor = SensorModel.random(shape, rtn_fraction=0.05, seed=1)
    cube = write_cube(sensor.true_cube(), folder / "cube.fits")
    data, _, _ = sensor.stack(n, Scene.make("stars", shape, n_stars=20, seed=2), seed=3)
    start = datetime(2026, 11, 30, 21, 0, 0)
    blobs, names = [], []
    for k, frame in enumerate(data):
        hdu = fits.PrimaryHDU(frame)
        hdu.header["DATE-OBS"] = (start + timedelta(seconds=k)).isoformat(timespec="milliseconds")
        hdu.header["EXPTIME"] = 1.0
        hdu.header["OBJECT"] = "M31"
        tmp = folder / "frame.tmp"
        hdu.writeto(tmp, overwrite=True)
        blobs.append(tmp.read_bytes())
        names.append(f"LIGHT_M31_{k + 1}.fits")
    return blobs, names, cube


def _run(work: Path, cube: Path, blobs: list[bytes], names: list[str], cadence: float, args) -> dict:
    indir, outdir = work / "in", work / "out"
    indir.mkdir()
    cmd = [sys.executable, "-m", "rtnstream", "watch", str(indir), "-o", str(outdir), "--cube", str(cube),
           "--window", str(args.window), "--backend", "numpy", "--settle-s", str(args.settle_s),
           "--poll-s", str(args.poll_s)]
    with open(work / "watch.log", "w") as log:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=log, text=True)
    while not (outdir / "watch_state.json").exists():
        time.sleep(0.05)
    closed = []
    for blob, name in zip(blobs, names, strict=True):
        with open(indir / name, "wb") as fh:
            fh.write(blob)
        closed.append(os.stat(indir / name).st_mtime)
        if cadence:
            time.sleep(cadence)
    half = args.window // 2
    expect = len(names) - half
    deadline = time.monotonic() + 600
    while sum((outdir / n).exists() for n in names) < expect and time.monotonic() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGTERM)
    proc.communicate(timeout=120)
    out_t = [os.stat(outdir / n).st_mtime for n in names]
    added = [out_t[t] - closed[max(t + half, args.window)] for t in range(expect)]  # the window's last frame
    return {"added_p50_s": round(float(np.percentile(added, 50)), 3),
            "added_p99_s": round(float(np.percentile(added, 99)), 3),
            "frames_per_s": round(expect / (out_t[expect - 1] - closed[0] - args.settle_s), 2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", type=int, nargs=2, default=(1024, 1024))
    parser.add_argument("--frames", type=int, default=40)
    parser.add_argument("--cadence", type=float, default=0.5, help="s between frames in the latency run")
    parser.add_argument("--window", type=int, default=10)
    parser.add_argument("--settle-s", type=float, default=1.0)
    parser.add_argument("--poll-s", type=float, default=0.5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        blobs, names, cube = _frames(tuple(args.shape), args.frames, tmp)
        (tmp / "live").mkdir()
        (tmp / "burst").mkdir()
        live = _run(tmp / "live", cube, blobs, names, args.cadence, args)
        burst = _run(tmp / "burst", cube, blobs, names, 0.0, args)
    print(json.dumps({"shape": list(args.shape), "frames": args.frames, "window": args.window,
                      "cadence_s": args.cadence, "settle_s": args.settle_s, "poll_s": args.poll_s,
                      "added_per_frame_p50_s": live["added_p50_s"], "added_per_frame_p99_s": live["added_p99_s"],
                      "frames_per_s_burst": burst["frames_per_s"]}))


if __name__ == "__main__":
    main()
