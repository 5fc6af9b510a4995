"""The paper's data-volume trick: full fit against ``--prescreen N`` and a compact stack, bytes and time.

    flock /tmp/heavy.lock .venv/bin/python bench/prescreen.py                     # 2000 frames of 256 x 256
    flock /tmp/heavy.lock .venv/bin/python bench/prescreen.py --shape 512 512 --frames 3000

Writes a simulated bias run (5 % RTN pixels) as 3D FITS files of 250 frames to a temporary folder, then
times (best of ``--repeat``) the full fit, the prescreened fit, ``bias-collect`` (the compact stack) and
the fit of the compact stack; prints the bytes of pixel data each reads (``read_volume``: the full fit
reads every frame twice plus the first 400 once more; the prescreen the first N frames once and then the
candidates' values, which on uncompressed files lie in nearly every disk page), the compact stack's
measured size against the formula, and the projected size of a 5000-frame full IMX455 run. Saves
``prescreen.png`` (stored bytes per pixel against the run's length) beside the numbers (``--out``).
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np
from astropy.io import fits

from rtnstream.calibration.fit import fit_bias_stack
from rtnstream.calibration.prescreen import collect_stack, read_volume
from rtnstream.calibration.stacks import FitsStack
from rtnstream.kernels.simulate import SensorModel

FULL_SHAPE = (6388, 9576)
FULL_FRAMES = 5000


def _best(fn, repeat: int):
    times, out = [], None
    for _ in range(repeat):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return out, min(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--shape", type=int, nargs=2, default=(256, 256), metavar=("NY", "NX"))
    ap.add_argument("--frames", type=int, default=2000)
    ap.add_argument("--screen", type=int, default=400, help="frames screened (--prescreen N)")
    ap.add_argument("--memory-limit", type=int, default=256 << 20, help="bytes")
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--out", type=Path, default=Path("."), help="folder of prescreen.png")
    ap.add_argument("--json", type=Path, default=None, help="write the figures here (bench/results/README.md)")
    args = ap.parse_args()
    shape = tuple(args.shape)
    npix = shape[0] * shape[1]
    sensor = SensorModel.random(shape, rtn_fraction=0.05, seed=1)
    with tempfile.TemporaryDirectory() as tmp:
        paths = []
        frames = sensor.frames(args.frames, seed=2)
        for k in range(0, args.frames, 250):
            part = np.stack([next(frames).data for _ in range(min(250, args.frames - k))])
            paths.append(Path(tmp) / f"bias_{k:05d}.fits")
            fits.PrimaryHDU(part).writeto(paths[-1])
        g, lim = sensor.gain_e_per_adu, args.memory_limit
        full, t_full = _best(lambda: fit_bias_stack(paths, g, memory_limit_bytes=lim), args.repeat)
        pre, t_pre = _best(lambda: fit_bias_stack(paths, g, memory_limit_bytes=lim, prescreen=args.screen),
                           args.repeat)
        compact, t_collect = _best(lambda: collect_stack(FitsStack(paths), args.screen, Path(tmp) / "c.fits",
                                                         memory_limit_bytes=lim, overwrite=True), args.repeat)
        from_compact, t_compact = _best(lambda: fit_bias_stack([compact.path], g, memory_limit_bytes=lim),
                                        args.repeat)
        stored_files = sum(p.stat().st_size for p in paths)
        size = compact.nbytes()
    k = compact.n_candidates
    vol = read_volume(args.frames, args.screen, shape, k, 2, index=compact.screen.index)
    same = from_compact.cube.cube_id == pre.cube.cube_id
    fc, pc = full.maps["candidate"], pre.maps["candidate"]
    rtn = np.zeros(npix, bool)
    rtn[sensor.rtn_index] = True
    mb = 1e6
    print(f"run: {args.frames} frames of {shape[0]} x {shape[1]} uint16, {sensor.rtn_index.size} RTN pixels "
          f"({100 * sensor.rtn_index.size / npix:.1f} %); screen {args.screen} frames; memory limit {lim >> 20} MiB")
    print(f"candidates: full fit {fc.sum()}, prescreen {pc.sum()} ({100 * k / npix:.2f} % of pixels), differing "
          f"{np.sum(fc != pc)}; RTN pixels accepted: full {np.sum(full.cube.rtn_mask.ravel() & rtn)}, prescreen "
          f"{np.sum(pre.cube.rtn_mask.ravel() & rtn)}")
    print(f"time (best of {args.repeat}): full fit {t_full:.2f} s; --prescreen {t_pre:.2f} s; bias-collect "
          f"{t_collect:.2f} s; fit of the compact stack {t_compact:.2f} s; same cube as --prescreen: {same}")
    print(f"pixel bytes read: full fit {vol['full_fit'] / mb:.1f} MB; prescreen {vol['prescreen_fit'] / mb:.1f} MB "
          f"(screen {vol['screen'] / mb:.1f} MB + candidates' values {vol['values'] / mb:.2f} MB, which lie in "
          f"{vol['values_pages'] / mb:.1f} MB of {4096}-byte pages); compact stack fit {size / mb:.2f} MB")
    per_pixel = (size - vol["values"]) / npix
    print(f"compact stack: {size} bytes measured, formula {vol['compact_stack']} (values {vol['values']} + "
          f"32 B/pixel screen + 8 B/candidate index; {size - vol['compact_stack']} bytes of headers); frames "
          f"{stored_files} bytes on disk: {stored_files / size:.1f}x smaller")
    frac = k / npix
    full_sensor = FULL_SHAPE[0] * FULL_SHAPE[1]
    big_full = FULL_FRAMES * full_sensor * 2
    big_compact = FULL_FRAMES * frac * full_sensor * 2 + per_pixel * full_sensor
    print(f"projected {FULL_FRAMES}-frame IMX455 run ({FULL_SHAPE[1]} x {FULL_SHAPE[0]}) at {100 * frac:.2f} % "
          f"candidates: frames {big_full / 1e9:.0f} GB, compact stack {big_compact / 1e9:.1f} GB: "
          f"{big_full / big_compact:.1f}x smaller (= 2 N / (2 N c + {per_pixel:.1f}))")
    _plot(args.out, frac, per_pixel, args.screen)
    if args.json is not None:
        figures = {"shape": list(shape), "frames": args.frames, "screen": args.screen, "rtn_fraction": 0.05,
                   "memory_limit_bytes": lim, "cpu_count": os.cpu_count(), "candidates_full": int(fc.sum()),
                   "candidates_prescreen": int(k), "candidates_differing": int(np.sum(fc != pc)),
                   "time_s": {"full_fit": t_full, "prescreen_fit": t_pre, "bias_collect": t_collect,
                              "compact_fit": t_compact},
                   "bytes_read": vol, "compact_stack_bytes": size, "frames_bytes_on_disk": stored_files,
                   "same_cube_compact_and_prescreen": bool(same),
                   "projected_imx455_5000": {"frames_bytes": big_full, "compact_bytes": big_compact,
                                             "reduction": big_full / big_compact}}
        args.json.write_text(json.dumps(figures, indent=2))


def _plot(folder: Path, frac: float, per_pixel: float, screen: int) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = np.geomspace(screen, 20000, 60)
    full = 2 * n
    compact = 2 * n * frac + per_pixel
    whole = 2 * screen + 2 * (n - screen) * frac  # keeping the screened frames whole instead of their maps
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 4))
    a.loglog(n, full, label="all frames")
    a.loglog(n, whole, label=f"first {screen} frames whole + candidates")
    a.loglog(n, compact, label="compact stack (screen maps + candidates)")
    a.set_xlabel("bias frames in the run")
    a.set_ylabel("stored bytes per pixel (uint16)")
    a.legend(fontsize=8)
    b.semilogx(n, full / compact, label="compact stack")
    b.semilogx(n, full / whole, label=f"first {screen} whole + candidates")
    b.axhline(10, color="grey", ls=":")
    b.axvline(FULL_FRAMES, color="grey", ls=":")
    b.set_xlabel("bias frames in the run")
    b.set_ylabel("reduction of stored data (x)")
    b.set_title(f"candidates {100 * frac:.2f} % of pixels", fontsize=9)
    b.legend(fontsize=8)
    fig.tight_layout()
    folder.mkdir(parents=True, exist_ok=True)
    fig.savefig(folder / "prescreen.png", dpi=110)
    print(f"wrote {folder / 'prescreen.png'}")


if __name__ == "__main__":
    main()
