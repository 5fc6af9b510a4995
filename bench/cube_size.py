"""Size on disk and load time of a full-sensor RTN cube (format 2, optionally format 1), and the engine's memory.

    .venv/bin/python bench/cube_size.py                      # IMX455: 6388 x 9576, 5 % RTN pixels
    .venv/bin/python bench/cube_size.py --shape 2000 2000 --v1

The cube is simulated directly (no fit), with values shaped as a fit of ``--n-bias`` frames gives them:
mean bias and the fractions are multiples of 1 / n-bias, the other parameters continuous; its NBIAS is
n-bias (so format 2 stores the mean bias as exact numerators over it, docs/formats.md; ``--no-nbias``
leaves NBIAS out, as for a mean bias that is no such quotient). Prints the file size (and, for format 2,
each part's: the RTN pixels' columns, the maps), the time to write it, the time to read and validate it
(``read_cube``), the time to build the correction engine from it (``RTNEngine``, NumPy backend, temporal
reference), the engine's per-pixel parameter memory and the process's peak RSS.
"""

from __future__ import annotations

import argparse
import resource
import tempfile
import time
from pathlib import Path

import numpy as np

from rtnstream.kernels.cube import DQ_HOT, DQ_RTN, RTNCube, RTNPixels, read_cube, write_cube
from rtnstream.kernels.engine import RTNEngine
from rtnstream.kernels.lut import get_table


def simulate_cube(shape: tuple[int, int], rtn_fraction: float, n_bias: int, seed: int = 0,
                  record_n_bias: bool = True) -> RTNCube:
    """A cube of ``shape`` with ``rtn_fraction`` RTN pixels, values as a fit of ``n_bias`` frames gives them
    (and, with ``record_n_bias``, its ``meta['n_bias_frames']``)."""
    rng = np.random.default_rng(seed)
    ny, nx = shape
    npix = ny * nx
    g = 1 / 3.26
    n = int(round(rtn_fraction * npix))
    index = np.sort(rng.choice(npix, n, replace=False))
    meanbias = np.rint((500.0 + rng.normal(0, 3.0, npix)) * n_bias) / n_bias
    readnoise = np.clip(1.2 * np.exp(rng.normal(0, 0.15, npix)), 0.5, 5.0)
    sigma = np.clip(1.2 * np.exp(rng.normal(0, 0.15, n)), 0.5, 5.0)
    delta = rng.uniform(3.0, 10.0, n) * sigma
    lo = np.rint(rng.uniform(0.02, 0.1, n) * n_bias) / n_bias
    hi = np.rint(rng.uniform(0.0, 0.08, n) * n_bias) / n_bias
    table = get_table(0.003)

    readnoise[index] = np.sqrt(sigma**2 + delta**2 * (lo + hi) - (delta * (hi - lo)) ** 2)
    dq = np.zeros(npix, np.uint16)
    dq[index] = DQ_RTN
    dq[rng.choice(npix, npix // 10_000, replace=False)] |= DQ_HOT
    rtn = RTNPixels(index=index, mu_adu=meanbias[index] - delta * (hi - lo) / g, delta_e=delta, sigma_e=sigma,
                    frac_c=1.0 - lo - hi, frac_lo=lo, frac_hi=hi, lammax_e=table.lambda_max(delta, sigma))
    return RTNCube(shape=shape, rtn=rtn, meanbias_adu=meanbias.reshape(shape), readnoise_e=readnoise.reshape(shape),
                   dq=dq.reshape(shape), gain_e_per_adu=g,
                   meta={"n_bias_frames": n_bias} if record_n_bias else {})


def _parts_mb(path: Path) -> str:
    """MB on disk of each extension (header and data) of a format-2 file, the RTN pixels' columns summed."""
    from astropy.io import fits
    parts: dict[str, float] = {}
    with fits.open(path, disable_image_compression=True) as hdul:
        for k, hdu in enumerate(hdul[1:], start=1):
            info = hdul.fileinfo(k)
            name = "RTN_* columns" if hdu.name.startswith("RTN_") else hdu.name
            parts[name] = parts.get(name, 0.0) + (info["datLoc"] - info["hdrLoc"] + info["datSpan"]) / 1e6
    return ", ".join(f"{name} {mb:.1f} MB" for name, mb in parts.items())


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--shape", type=int, nargs=2, default=(6388, 9576), metavar=("NY", "NX"))
    ap.add_argument("--rtn-fraction", type=float, default=0.05)
    ap.add_argument("--n-bias", type=int, default=1000, help="bias frames the simulated fit used")
    ap.add_argument("--no-nbias", action="store_true", help="leave NBIAS out of the cube's metadata")
    ap.add_argument("--v1", action="store_true", help="also write and read format 1 (about 74 bytes a pixel)")
    ap.add_argument("--dir", default=None, help="folder for the files (default: a temporary one, removed)")
    args = ap.parse_args()
    shape = tuple(args.shape)
    t0 = time.perf_counter()
    cube = simulate_cube(shape, args.rtn_fraction, args.n_bias, record_n_bias=not args.no_nbias)
    print(f"simulated {shape[0]} x {shape[1]} ({shape[0] * shape[1] / 1e6:.1f} Mpx), {cube.n_rtn} RTN pixels "
          f"({cube.n_rtn / (shape[0] * shape[1]):.1%}) in {time.perf_counter() - t0:.1f} s")
    versions = (2, 1) if args.v1 else (2,)
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        for version in versions:
            path = Path(tmp) / f"cube_v{version}.fits"
            t0 = time.perf_counter()
            write_cube(cube, path, version=version)
            t_write = time.perf_counter() - t0
            size = path.stat().st_size
            t0 = time.perf_counter()
            back = read_cube(path)
            t_read = time.perf_counter() - t0
            t0 = time.perf_counter()
            engine = RTNEngine(back, backend="numpy")
            t_engine = time.perf_counter() - t0
            assert back.cube_id == cube.cube_id
            p = engine.params
            own = sum(a.nbytes for a in (p.index, p.mu_adu, p.delta_e, p.delta_adu_int, p.delta_adu_float, p.rn2_e2,
                                         p.sigma_j, p.sigma_w, p.sigma_ok))
            shared = np.shares_memory(p.meanbias_adu, back.meanbias_adu)
            if version == 2:
                print(f"  parts: {_parts_mb(path)}")
            print(f"format {version}: {size / 1e6:.1f} MB on disk ({size / (shape[0] * shape[1]):.2f} bytes/pixel); "
                  f"write {t_write:.1f} s; read_cube {t_read:.1f} s; RTNEngine {t_engine:.1f} s; loaded for "
                  f"correction in {t_read + t_engine:.1f} s")
            arrays = [*(v for v in vars(back).values() if isinstance(v, np.ndarray)), *vars(back.rtn).values()]
            held = sum(a.nbytes for a in arrays)
            print(f"  engine per-pixel parameters {own / 1e6:.1f} MB, plus the mean-bias map "
                  f"{p.meanbias_adu.nbytes / 1e6:.1f} MB ({'shared with the cube, no copy' if shared else 'a copy'})"
                  f"; the RTNCube itself {held / 1e6:.0f} MB")
            del engine, back
    print(f"peak RSS {_peak_rss_mb():.0f} MB")


if __name__ == "__main__":
    main()
