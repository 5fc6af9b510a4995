"""One series from frames to per-star results: correct (or take corrected frames), find stars, measure, predict.

:func:`evaluate_arrays` works on frames in memory (tests, benchmarks, notebooks) and corrects them with the
engine :class:`~rtnstream.kernels.engine.RTNEngine`; :func:`evaluate_files` works on FITS files, corrects them
with :func:`rtnstream.offline.correct_files` (the same outputs ``rtnstream correct`` writes, into
``OUTDIR/corrected``) or takes frames already corrected, and reads one frame pair at a time (memory: the
median frame's sample and the light curves, not the series).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from rtnstream.evaluate.lightcurves import LightCurves, measure, star_table, summary_by_flux
from rtnstream.evaluate.photometry import ANNULUS_FWHM, Apertures, estimate_fwhm, find_sources
from rtnstream.evaluate.prediction import PixelNoise, predict_gains
from rtnstream.kernels.cube import RTNCube
from rtnstream.kernels.engine import BackendName, EngineSettings, RTNEngine
from rtnstream.kernels.exceptions import FrameError, SeriesError

__all__ = ["Evaluation", "evaluate_arrays", "evaluate_files", "read_catalog", "MEDIAN_FRAMES"]

#: frames (evenly spaced over the series) whose median the stars are found on, at most, and at least
MEDIAN_FRAMES, MEDIAN_FRAMES_MIN = 64, 3
#: bytes of frames (in their own dtype) the median frame's sample may hold: fewer frames for large frames
MEDIAN_BYTES = 512 * 2**20
#: pixels per band of the median's computation (its float64 temporaries: frames x band x 8 bytes)
MEDIAN_BAND_PX = 2**22


@dataclass
class Evaluation:
    """What ``rtnstream evaluate`` found for one series.

    Attributes
    ----------
    stars : list of dict
        Per star (:func:`rtnstream.evaluate.lightcurves.star_table`).
    summary : dict
        Medians overall and by flux bin (:func:`rtnstream.evaluate.lightcurves.summary_by_flux`).
    curves : LightCurves
        Absolute light curves of every variant, electron.
    apertures : Apertures
    predicted : dict of numpy.ndarray
        :func:`rtnstream.evaluate.prediction.predict_gains` per star.
    fwhm_px : float
    n_comparison : int
    median_e : numpy.ndarray, shape (ny, nx), electron
        The median frame, bias removed.
    info : dict
        Where the corrected frames and the bias offset map came from, frame count, settings.
    """

    stars: list[dict]
    summary: dict
    curves: LightCurves
    apertures: Apertures
    predicted: dict
    fwhm_px: float
    n_comparison: int
    median_e: np.ndarray
    info: dict


def read_catalog(path: str | os.PathLike) -> np.ndarray:
    """(n, 2) pixel positions (x, y), 0-based (photutils' convention), from a table astropy reads (ECSV,
    CSV, FITS) with columns ``x``, ``y`` (or ``x_centroid`` / ``xcentroid`` and the y twins).

    Raises
    ------
    FrameError
        Unreadable, or no x / y columns.
    """
    from astropy.table import Table

    try:
        table = Table.read(path)
    except (OSError, ValueError) as exc:
        raise FrameError(f"--sources {path}: not a readable table ({exc})") from exc
    for xc, yc in (("x", "y"), ("x_centroid", "y_centroid"), ("xcentroid", "ycentroid")):
        if xc in table.colnames and yc in table.colnames:
            return np.column_stack([np.asarray(table[xc], np.float64), np.asarray(table[yc], np.float64)])
    raise FrameError(f"--sources {path}: needs columns x and y (pixel, 0-based), has {table.colnames}")


def _median_e(sample: Sequence[np.ndarray], cube: RTNCube) -> np.ndarray:
    """(ny, nx) float64 electron: the median of the sample frames less MEANBIAS, computed band by band."""
    stack = np.stack(sample)  # the frames' own dtype
    ny, nx = stack.shape[1:]
    out = np.empty((ny, nx), dtype=np.float64)
    rows = max(1, MEDIAN_BAND_PX // nx)
    for y0 in range(0, ny, rows):
        out[y0 : y0 + rows] = np.median(stack[:, y0 : y0 + rows], axis=0)
    out -= cube.meanbias_adu
    out *= float(cube.gain_e_per_adu)
    return out


def _sample_indices(n_frames: int, frame_nbytes: int) -> np.ndarray:
    """Frames of the median's sample, evenly spread: as many as :data:`MEDIAN_BYTES` hold, within
    :data:`MEDIAN_FRAMES_MIN` .. :data:`MEDIAN_FRAMES`."""
    k = int(np.clip(MEDIAN_BYTES // max(int(frame_nbytes), 1), MEDIAN_FRAMES_MIN, MEDIAN_FRAMES))
    return np.unique(np.linspace(0, n_frames - 1, min(n_frames, k)).round().astype(int))


def _evaluate(median_e: np.ndarray, pairs: Callable[[], Iterator[tuple[np.ndarray, np.ndarray]]], n_frames: int,
              cube: RTNCube, offset_adu: np.ndarray, fwhm_px: float | None, positions_xy: np.ndarray | None,
              n_comparison: int, progress: bool | None, info: dict, settings: EngineSettings) -> Evaluation:
    if n_frames < 3:
        raise SeriesError(f"evaluate needs at least 3 frames for a light curve's scatter, got {n_frames}")
    noise = PixelNoise.from_cube(cube)
    if fwhm_px is None:
        guess = find_sources(median_e, 3.0, max_sources=50)
        if guess.shape[0] == 0:
            raise FrameError("no star found to measure the FWHM on: pass --fwhm")
        fwhm_px = estimate_fwhm(median_e - np.median(median_e), guess, 3.0)
    elif not np.isfinite(fwhm_px) or fwhm_px <= 0:
        raise ValueError(f"fwhm_px must be a positive number, got {fwhm_px!r}")
    # a star's background annulus spans 2 * ANNULUS_FWHM[1] FWHM across: it must fit in the frame
    max_fwhm_px = min(median_e.shape) / (2 * ANNULUS_FWHM[1])
    if fwhm_px > max_fwhm_px:
        raise ValueError(f"fwhm_px (--fwhm) must be at most {max_fwhm_px:.4g} px (the {median_e.shape[0]}x"
                         f"{median_e.shape[1]} frame's smaller side / {2 * ANNULUS_FWHM[1]:g}, the background "
                         f"annulus' diameter in FWHM), got {fwhm_px:.6g}")
    if positions_xy is None:
        positions_xy = find_sources(median_e, fwhm_px)
        if positions_xy.shape[0] == 0:
            raise FrameError("no star found on the median frame (pass --sources CATALOG)")
    apertures = Apertures(positions_xy, fwhm_px, median_e.shape, excluded=noise.rtn)
    curves = measure(pairs(), apertures, cube, offset_adu, n_frames=n_frames, progress=progress)
    predicted = predict_gains(apertures, median_e, noise, settings)
    count_rate = (apertures.weights @ apertures.gather(np.maximum(median_e, 0.0))) / apertures.area_px
    stars = star_table(curves, apertures, predicted, n_comparison, count_rate)
    info = {**info, "n_frames": n_frames, "fwhm_px": float(fwhm_px), "n_stars": apertures.n_stars,
            "n_comparison": int(min(n_comparison, apertures.n_stars)), "aperture_radius_px": float(fwhm_px),
            "rtn_fraction": float(noise.rtn.mean()), "gain_e_per_adu": float(cube.gain_e_per_adu)}
    return Evaluation(stars, summary_by_flux(stars), curves, apertures, predicted, float(fwhm_px),
                      int(n_comparison), median_e, info)


def evaluate_arrays(raw_adu: np.ndarray, cube: RTNCube, corrected_adu: np.ndarray | None = None,
                    offset_adu: np.ndarray | None = None, *, fwhm_px: float | None = None,
                    positions_xy: np.ndarray | None = None, n_comparison: int = 20,
                    settings: EngineSettings | None = None, backend: BackendName = "numpy",
                    progress: bool | None = None) -> Evaluation:
    """Evaluate one series held in memory.

    Parameters
    ----------
    raw_adu : numpy.ndarray, shape (n_frames, ny, nx), adu
        The frames as recorded, in time order.
    cube : RTNCube
        Calibration of these pixels (same shape).
    corrected_adu : numpy.ndarray, shape (n_frames, ny, nx), adu, optional
        The frames already corrected; default: corrected here with the engine (``settings``, ``backend``).
    offset_adu : numpy.ndarray, shape (ny, nx), adu, optional
        The bias offset map of ``corrected_adu`` (required with it).
    fwhm_px : float, optional
        PSF FWHM (the aperture radius); default: fitted on the median frame.
    positions_xy : numpy.ndarray, shape (n_stars, 2), optional
        Star positions; default: found on the median frame.
    n_comparison : int
        Comparison stars of the differential light curves (0: none).
    settings, backend, progress
        Engine settings and backend; progress bars.

    Raises
    ------
    ValueError
        Frames of another shape than the cube's, or ``corrected_adu`` without ``offset_adu``.
    """
    raw = np.asarray(raw_adu)
    if raw.ndim != 3 or raw.shape[1:] != cube.shape:
        raise ValueError(f"raw_adu must have shape (n_frames, {cube.shape[0]}, {cube.shape[1]}), got {raw.shape}")
    if corrected_adu is None:
        engine = RTNEngine(cube, settings or EngineSettings(), backend=backend)
        engine.check_series_length(raw.shape[0])
        outs = [o for frame in raw for o in engine.push(frame)] + engine.finish()
        corrected = np.stack([o.data for o in sorted(outs, key=lambda o: o.index)])
        offset = engine.bias_offset_map()
        info = {"corrected": "engine", "backend": engine.backend.name}
    else:
        corrected = np.asarray(corrected_adu)
        if corrected.shape != raw.shape:
            raise ValueError(f"corrected_adu must have the shape of raw_adu {raw.shape}, got {corrected.shape}")
        if offset_adu is None:
            raise ValueError("offset_adu (the bias offset map of corrected_adu) is required with corrected_adu")
        offset = np.asarray(offset_adu, np.float64)
        info = {"corrected": "given"}
    median = _median_e(list(raw[_sample_indices(raw.shape[0], raw[0].nbytes)]), cube)
    return _evaluate(median, lambda: zip(raw, corrected, strict=True), raw.shape[0], cube, offset, fwhm_px,
                     positions_xy, n_comparison, progress, info, settings or EngineSettings())


def _frames(files: Sequence[Path]) -> Iterator[np.ndarray]:
    from rtnstream.fitsio import FrameSource

    for path in files:
        with FrameSource(path) as src:
            for i in range(src.n_frames):
                yield src.read(i)


def _one_series(inputs: Sequence[str | os.PathLike], what: str, order_key: str, max_gap: float):
    from rtnstream.series import discover, plan, scan

    paths, _ = discover(inputs)
    files, _ = scan(paths, order_key=order_key, progress=False)
    if not files:
        raise FrameError(f"{what}: no FITS frames")
    series = plan(files, max_gap=max_gap, order_key=order_key)
    if len(series) != 1:
        raise SeriesError(f"{what}: evaluate takes one series, these frames make {len(series)} "
                          f"({series[1].reason} at {series[1].files[0].path.name}); evaluate each series apart")
    return series[0]


def evaluate_files(cube_path: str | os.PathLike, inputs: Sequence[str | os.PathLike], outdir: str | os.PathLike,
                   *, corrected: Sequence[str | os.PathLike] | None = None,
                   offset_map: str | os.PathLike | None = None, fwhm_px: float | None = None,
                   sources: str | os.PathLike | None = None, n_comparison: int = 20,
                   settings: EngineSettings | None = None, backend: BackendName = "auto",
                   progress: bool | None = None, order_key: str = "DATE-OBS", max_gap: float = 5.0,
                   origin_keys: Sequence[str] = ("XORGSUBF", "YORGSUBF")) -> Evaluation:
    """Evaluate one series of FITS frames.

    Parameters
    ----------
    cube_path : path-like
        The RTN calibration file.
    inputs : sequence of path-like
        The raw frames (files, folders, globs; 2-D frames or 3-D stacks), one series.
    outdir : path-like
        Output folder; the corrected frames go to ``outdir/corrected`` unless ``corrected`` is given.
    corrected : sequence of path-like, optional
        The same frames already corrected (``rtnstream correct``), in the same order.
    offset_map : path-like, optional
        Their bias offset map; default ``calib/series_NNN_bias_offset.fits`` beside them (``NNN`` = RTNSER).
    fwhm_px, n_comparison, settings, backend, progress
        As for :func:`evaluate_arrays`.
    sources : path-like, optional
        A star catalog (:func:`read_catalog`) instead of source finding.
    order_key, max_gap, origin_keys
        As for :func:`rtnstream.offline.correct_files`.

    Raises
    ------
    FrameError, SeriesError
        No frames, more than one series, raw and corrected series of different lengths, no offset map.
    """
    from astropy.io import fits

    from rtnstream.guards import cube_part, frame_origin
    from rtnstream.kernels.cube import read_cube
    from rtnstream.offline import correct_files

    settings = settings or EngineSettings()
    cube = read_cube(cube_path)
    raw_series = _one_series(inputs, "FRAMES", order_key, max_gap)
    first = raw_series.files[0]
    origin = frame_origin(first.header, first.shape, cube.shape, str(first.path), origin_keys)
    part = cube_part(cube, origin, first.shape)
    raw_files = [f.path for f in raw_series.files]
    if corrected is None:
        summary = correct_files(cube, inputs, Path(outdir) / "corrected", settings, backend=backend,
                                progress=progress, cube_path=str(cube_path), order_key=order_key, max_gap=max_gap,
                                origin_keys=origin_keys)
        corr_files = [Path(entry["output"]) for entry in summary["files"]]
        offset_path = Path(summary["series"][0]["bias_offset_map"])
        info = {"corrected": str(Path(outdir) / "corrected"), "backend": summary["backend"],
                "corrections": summary["corrections"]}
    else:
        corr_series = _one_series(corrected, "--corrected", order_key, max_gap)
        if corr_series.n_frames != raw_series.n_frames:
            raise SeriesError(f"--corrected has {corr_series.n_frames} frames, FRAMES {raw_series.n_frames}")
        corr_files = [f.path for f in corr_series.files]
        if offset_map is not None:
            offset_path = Path(offset_map)
        else:
            number = corr_series.files[0].header.get("RTNSER")
            if number is None:
                raise FrameError(f"{corr_files[0]}: no RTNSER keyword to find the bias offset map by: "
                                 "pass --offset-map")
            offset_path = corr_files[0].parent / "calib" / f"series_{int(number):03d}_bias_offset.fits"
        info = {"corrected": [str(p) for p in corr_files]}
    if not offset_path.is_file():
        raise FrameError(f"bias offset map {offset_path} not found: pass --offset-map")
    offset = np.asarray(fits.getdata(offset_path), np.float64)
    if offset.shape != first.shape:
        raise FrameError(f"bias offset map {offset_path} has shape {offset.shape}, the frames {first.shape}")
    info["bias_offset_map"] = str(offset_path)
    n = raw_series.n_frames
    frame_nbytes = first.shape[0] * first.shape[1] * 8  # float frames at most
    wanted = set(_sample_indices(n, frame_nbytes).tolist())
    median = _median_e([f for t, f in enumerate(_frames(raw_files)) if t in wanted], part)
    positions = read_catalog(sources) if sources is not None else None
    return _evaluate(median, lambda: zip(_frames(raw_files), _frames(corr_files), strict=True), n, part, offset,
                     fwhm_px, positions, n_comparison, progress, info, settings)
