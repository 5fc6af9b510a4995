"""Offline correction of FITS files (``rtnstream correct``): one series through the engine, frame by frame.

The input files, in time order, form one series (each file a 2-D frame or a 3-D stack). Frames are read
one at a time, pushed through :class:`~rtnstream.kernels.engine.RTNEngine`, and written as they come out
to a file of the same name, shape and dtype in the output folder, with the input header and the RTN
provenance keys (:func:`rtn_header_cards`). ``bias_offset.fits`` (adu) and ``summary.json`` go beside them.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
from astropy.io import fits
from tqdm import tqdm

from rtnstream import __version__
from rtnstream.fitsio import FrameSink, FrameSource
from rtnstream.kernels.cube import RTNCube
from rtnstream.kernels.engine import BackendName, EngineSettings, RTNEngine
from rtnstream.kernels.exceptions import FrameError
from rtnstream.kernels.numpy_backend import FrameCounts

__all__ = ["rtn_header_cards", "correct_files"]

log = logging.getLogger(__name__)


def rtn_header_cards(settings: EngineSettings, cube_id: str, counts: FrameCounts, corrected: bool = True
                     ) -> list[tuple[str, Any, str]]:
    """Provenance keywords of a corrected frame or file, as ``(keyword, value, comment)``.

    RTNCORR, RTNREF, RTNWIN (or RTNSPAT for the spatial reference), RTNALPHA, RTNKVAR, RTNCUBE,
    RTNNLO, RTNNHI, RTNNVETO, RTNVERS.
    """
    cards: list[tuple[str, Any, str]] = [
        ("RTNCORR", bool(corrected), "RTN jumps corrected by rtnstream"),
        ("RTNREF", settings.reference, "RTN reference: temporal, causal or spatial"),
    ]
    if settings.temporal:
        cards.append(("RTNWIN", settings.window, "[frames] temporal reference window"))
        cards.append(("RTNKVAR", settings.k_var, "variability veto factor"))
    else:
        cards.append(("RTNSPAT", settings.spatial_size, "[pixel] spatial reference size"))
    cards += [
        ("RTNALPHA", settings.alpha, "significance of the jump test"),
        ("RTNCUBE", cube_id, "RTN calibration cube id"),
        ("RTNNLO", counts.low, "pixels corrected from the low state"),
        ("RTNNHI", counts.high, "pixels corrected from the high state"),
        ("RTNNVETO", counts.vetoed, "RTN pixels left alone: variable source"),
        ("RTNVERS", __version__, "rtnstream version"),
    ]
    return cards


def _add(a: FrameCounts, b: FrameCounts) -> FrameCounts:
    return FrameCounts(a.low + b.low, a.high + b.high, a.vetoed + b.vetoed, a.out_of_table + b.out_of_table)


def correct_files(
    cube: RTNCube,
    inputs: Sequence[str | os.PathLike],
    outdir: str | os.PathLike,
    settings: EngineSettings,
    backend: BackendName = "auto",
    progress: bool | None = None,
    cube_path: str | None = None,
) -> dict[str, Any]:
    """Correct ``inputs`` (FITS files in time order, one series) into ``outdir``.

    Parameters
    ----------
    cube : RTNCube
    inputs : sequence of path-like
        FITS files, each a (ny, nx) frame or an (n, ny, nx) stack, all of the cube's shape.
    outdir : path-like
        Created if needed; must not be the folder of an input file.
    settings : EngineSettings
    backend : {'auto', 'numpy', 'cupy'}
    progress : bool or None
        Show a progress bar (None: only on a terminal).
    cube_path : str, optional
        Recorded in the summary.

    Returns
    -------
    dict
        The summary also written to ``outdir/summary.json``.

    Raises
    ------
    FrameError
        Unreadable input, shape differing from the cube's, unsupported dtype, or an output that would
        overwrite an input.
    SeriesError
        Fewer frames than the temporal window needs.
    """
    outdir = Path(outdir)
    sources = []
    try:
        for path in inputs:
            src = FrameSource(path)
            sources.append(src)
            if src.shape != cube.shape:
                raise FrameError(f"{src.path}: frames have shape {src.shape}, the RTN cube has {cube.shape}")
        names = [s.path.name for s in sources]
        if len(set(names)) != len(names):
            raise FrameError("input files must have distinct names (outputs keep them)")
        outdir.mkdir(parents=True, exist_ok=True)
        for s in sources:
            if (outdir / s.path.name).resolve() == s.path.resolve():
                raise FrameError(f"{s.path}: the output would overwrite the input; choose another -o")
        engine = RTNEngine(cube, settings, backend=backend)
        total = sum(s.n_frames for s in sources)
        engine.check_series_length(total)
        return _run(engine, sources, outdir, total, progress, cube_path)
    finally:
        for s in sources:
            s.close()


def _run(engine: RTNEngine, sources: list[FrameSource], outdir: Path, total: int, progress: bool | None,
         cube_path: str | None) -> dict[str, Any]:
    settings = engine.settings
    # frame index of the series -> (file number, position in file)
    owner = np.repeat(np.arange(len(sources)), [s.n_frames for s in sources])
    file_counts = [FrameCounts() for _ in sources]
    sinks: dict[int, FrameSink] = {}
    totals = FrameCounts()
    t0 = time.perf_counter()

    def write(out) -> None:
        nonlocal totals
        k = int(owner[out.index])
        src = sources[k]
        if k not in sinks:
            header = src.header.copy()
            for key, value, comment in rtn_header_cards(settings, engine.cube_id, FrameCounts()):
                header[key] = (value, comment)
            sinks[k] = FrameSink(outdir / src.path.name, src.shape, out.data.dtype, src.n_frames, header,
                                 stack=src.n_frames > 1 or src.is_stack)
        sink = sinks[k]
        sink.write(out.data)
        file_counts[k] = _add(file_counts[k], out.counts)
        totals = _add(totals, out.counts)
        if sink.written == sink.n_frames:
            sink.close()
            c = file_counts[k]
            sink.update_cards({"RTNNLO": c.low, "RTNNHI": c.high, "RTNNVETO": c.vetoed,
                               "RTNCORR": out.corrected})
            del sinks[k]

    engine.start_series()
    with tqdm(total=total, unit="frame", desc="correct", disable=(not progress) if progress is not None
              else None) as bar:
        for src in sources:
            for i in range(src.n_frames):
                frame = src.read(i)
                for out in engine.push(frame):
                    write(out)
                bar.update(1)
        for out in engine.finish():
            write(out)
    elapsed = time.perf_counter() - t0

    offset = fits.PrimaryHDU(engine.bias_offset_map())
    offset.header["BUNIT"] = "adu"
    offset.header["COMMENT"] = "RTN bias offset map O = D_adu (n_lo - n_hi) / n_frames (add to the mean bias)"
    for key, value, comment in rtn_header_cards(settings, engine.cube_id, totals):
        offset.header[key] = (value, comment)
    offset.writeto(outdir / "bias_offset.fits", overwrite=True)

    summary = {
        "frames": total,
        "files": [{"input": str(s.path), "output": str(outdir / s.path.name), "frames": s.n_frames,
                   "corrections": asdict(c)} for s, c in zip(sources, file_counts, strict=True)],
        "corrections": asdict(totals),
        "settings": asdict(settings),
        "cube_id": engine.cube_id,
        "cube_path": cube_path,
        "n_rtn_pixels": engine.n_rtn,
        "backend": engine.backend.name,
        "elapsed_s": round(elapsed, 3),
        "frames_per_s": round(total / elapsed, 3) if elapsed > 0 else None,
        "software_version": __version__,
    }
    (outdir / "summary.json").write_text(json.dumps(summary, indent=2))
    log.info("corrected %d frames: %d low, %d high, %d vetoed", total, totals.low, totals.high, totals.vetoed)
    return summary
