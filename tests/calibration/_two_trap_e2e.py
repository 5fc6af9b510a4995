"""Issue 19's figures through the product path, on simulated truth: FITS bias frames -> ``rtnstream fit`` -> the
cube file -> ``rtnstream correct`` (NumPy backend) on held-out FITS frames -> the corrected files read back.

:func:`run_chain` is the whole chain; tests/calibration/test_two_trap_end_to_end.py runs it on a small sensor,
bench/two_trap_e2e.py at the bench's size. The sensor and the frames' truth (both traps' states, frame by
frame) are :func:`~rtnstream.calibration.two_trap_eval.simulate` and ``bias_stack``'s; the scores
:func:`~rtnstream.calibration.two_trap_eval.correction_figures`, from the corrections the files show
(corrected minus raw).
"""

from __future__ import annotations

import json
import time
from datetime import datetime, timedelta
from pathlib import Path

import numpy as np
from astropy.io import fits

from rtnstream.calibration import two_trap_eval
from rtnstream.cli import main
from rtnstream.fitsio import FrameSink
from rtnstream.kernels.cube import read_cube

__all__ = ["REFERENCES", "write_bias_stack", "write_frames", "fit_cube", "correct_frames", "run_chain"]

#: the references scored (``rtnstream correct --reference``)
REFERENCES = ("spatial", "temporal")
CADENCE_S = 2.0
START = datetime(2026, 12, 1, 20, 0, 0)


def _header(gain_e_per_adu: float) -> fits.Header:
    """The cards ``rtnstream simulate`` writes: the conversion gain the fit reads, the unit."""
    return fits.Header([("EGAIN", gain_e_per_adu, "[e-/ADU] conversion gain"), ("BUNIT", "adu"),
                        ("ORIGIN", "tests/calibration/_two_trap_e2e.py")])


def write_bias_stack(path: Path, data: np.ndarray, gain_e_per_adu: float) -> Path:
    """Write ``data`` (n_frames, ny, nx) uint16 adu as one 3-D FITS stack with EGAIN; returns ``path``."""
    sink = FrameSink(path, data.shape[1:], data.dtype, data.shape[0], header=_header(gain_e_per_adu), stack=True)
    for frame in data:
        sink.write(frame)
    sink.close()
    return path


def write_frames(folder: Path, data: np.ndarray, gain_e_per_adu: float) -> list[Path]:
    """Write ``data`` (n_frames, ny, nx) uint16 adu as 2-D FITS files ``bias_NNNNN.fits`` in ``folder``, each
    with EGAIN and a DATE-OBS ``CADENCE_S`` after the previous one (one series, in time order)."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for t, frame in enumerate(data):
        header = _header(gain_e_per_adu)
        header["DATE-OBS"] = ((START + timedelta(seconds=CADENCE_S * t)).isoformat(timespec="milliseconds"),
                              "start of the exposure (UTC)")
        sink = FrameSink(folder / f"bias_{t:05d}.fits", frame.shape, frame.dtype, 1, header=header)
        sink.write(frame)
        sink.close()
        paths.append(sink.path)
    return paths


def _cli(argv: list[str]) -> None:
    status = main(argv)
    if status != 0:
        raise RuntimeError(f"rtnstream {' '.join(argv)} exited with {status}")


def fit_cube(bias: Path, cube: Path, *options: str) -> Path:
    """``rtnstream fit BIAS -o CUBE --no-plots --no-progress OPTIONS`` (the gain from the files' EGAIN)."""
    _cli(["fit", str(bias), "-o", str(cube), "--no-plots", "--no-progress", *options])
    return cube


def correct_frames(cube: Path, frames: list[Path], outdir: Path, reference: str) -> tuple[np.ndarray, dict]:
    """``rtnstream correct FRAMES --cube CUBE -o OUTDIR --reference REFERENCE --backend numpy``: the corrected
    frames read back from OUTDIR, (n_frames, ny, nx) in the order of ``frames``, and OUTDIR/summary.json."""
    _cli(["correct", *map(str, frames), "--cube", str(cube), "-o", str(outdir), "--reference", reference,
          "--backend", "numpy", "--no-progress"])
    summary = json.loads((outdir / "summary.json").read_text())
    return np.stack([fits.getdata(outdir / p.name) for p in frames]), summary


def run_chain(workdir: Path, shape: tuple[int, int] = (100, 100), n_calibration: int = 1000, n_held_out: int = 400,
              one_trap_fraction: float = 0.05, two_trap_fraction: float = 0.01, seed: int = 1,
              references: tuple[str, ...] = REFERENCES) -> dict:
    """Simulate, write, fit (with and without the two-trap refit), correct and score.

    Parameters
    ----------
    workdir : pathlib.Path
        Folder for the files (bias stack, held-out frames, cubes, corrected frames).
    shape : (ny, nx)
    n_calibration, n_held_out : int
        Frames of the calibration stack (fitted) and of the held-out series (corrected).
    one_trap_fraction, two_trap_fraction : float in [0, 1]
    seed : int
        The sensor's seed; the calibration frames use ``seed + 1``, the held-out ones ``seed + 2`` (as
        bench/two_trap.py).
    references : tuple of {'spatial', 'temporal', 'causal'}

    Returns
    -------
    dict
        ``classification``: counts, ``two_trap_found`` (fraction of the true two-trap pixels the fit made
        two-trap), ``one_trap_taken_for_two``, ``normal_taken_for_two`` (count); ``timing_s``; per reference,
        :func:`~rtnstream.calibration.two_trap_eval.correction_figures` of ``two_trap`` (every true two-trap
        pixel), ``two_trap_found`` (those the fit found), ``one_trap`` (every true one-trap pixel) and
        ``one_trap_without_refit`` (the same pixels corrected with the ``--no-two-trap`` cube), and
        ``one_trap_kept_frames_differing``: pixel-frames of the true one-trap pixels the refit left one-trap
        whose corrected values differ between the two cubes; ``series``: the numbers of series ``correct`` made
        of the held-out frames (``[1]``: one series, as written).
    """
    timing = {}
    t0 = time.perf_counter()
    truth = two_trap_eval.simulate(shape, one_trap_fraction, two_trap_fraction, seed=seed)
    g = truth.sensor.gain_e_per_adu
    calibration, _, _ = two_trap_eval.bias_stack(truth, n_calibration, seed=seed + 1)
    held, states, states2 = two_trap_eval.bias_stack(truth, n_held_out, seed=seed + 2)
    bias = write_bias_stack(workdir / "bias.fits", calibration, g)
    del calibration
    frames = write_frames(workdir / "held_out", held, g)
    timing["simulate_and_write"] = time.perf_counter() - t0
    cubes = {}
    for name, options in (("two_trap", ()), ("one_trap", ("--no-two-trap",))):
        t0 = time.perf_counter()
        cubes[name] = fit_cube(bias, workdir / f"cube_{name}.fits", *options)
        timing[f"fit_{name}"] = time.perf_counter() - t0

    rtn = truth.sensor.rtn_index
    is_two = np.isin(rtn, truth.two_trap_flat)
    fitted = read_cube(cubes["two_trap"]).rtn
    two_fitted = fitted.index[fitted.two_trap]
    found = np.isin(rtn, two_fitted)
    out: dict = {"classification": {
        "n_two_trap": int(is_two.sum()), "n_one_trap": int((~is_two).sum()),
        "n_fitted_rtn": int(fitted.index.size), "n_fitted_two_trap": int(two_fitted.size),
        "two_trap_found": float(found[is_two].mean()), "one_trap_taken_for_two": float(found[~is_two].mean()),
        "normal_taken_for_two": int(np.setdiff1d(two_fitted, rtn).size)}, "timing_s": timing}

    n = held.shape[0]
    raw = held.reshape(n, -1)[:, rtn]
    true_off = two_trap_eval.true_offsets_e(truth, states, states2)
    sigma = truth.sensor.sigma_e.ravel()[rtn]
    kept = ~is_two & ~found  # true one-trap pixels the refit left with one trap

    def figures(corrected: np.ndarray, mask: np.ndarray) -> dict[str, float]:
        applied = corrected[:, mask].astype(np.int64) - raw[:, mask]
        return two_trap_eval.correction_figures(raw[:, mask], corrected[:, mask], applied, true_off[:, mask],
                                                sigma[mask], g)

    for ref in references:
        after, series = {}, set()
        for name, cube in cubes.items():
            t0 = time.perf_counter()
            corrected, summary = correct_frames(cube, frames, workdir / f"out_{name}_{ref}", ref)
            timing[f"correct_{name}_{ref}"] = time.perf_counter() - t0
            after[name] = corrected.reshape(n, -1)[:, rtn]
            series.add(len(summary["series"]))

        two, one = after["two_trap"], after["one_trap"]
        out[ref] = {"two_trap": figures(two, is_two), "two_trap_found": figures(two, is_two & found),
                    "one_trap": figures(two, ~is_two), "one_trap_without_refit": figures(one, ~is_two),
                    "one_trap_kept_frames_differing": int((two[:, kept] != one[:, kept]).sum()),
                    "series": sorted(series)}
    return out
