"""Input frames of offline correction: which files, in which order, in which series.

:func:`discover` expands files, folders and globs into candidate files and skips what is not FITS;
:func:`scan` reads each file's headers once (the file is closed again at once, so a night of thousands of
files never holds more than one open) and checks it is complete; :func:`plan` orders the frames by time
and splits them into series where the camera settings change or the time gap exceeds a multiple of the
cadence.
"""

from __future__ import annotations

import glob
import logging
import math
import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
from astropy.io import fits

from rtnstream.fitsio import check_complete, image_hdu_index, merged_header
from rtnstream.kernels.exceptions import FrameError

__all__ = ["SETTING_KEYS", "FrameFile", "Series", "discover", "scan", "plan", "plan_lines", "natural_key",
           "header_value", "parse_time"]

log = logging.getLogger(__name__)

FITS_SUFFIXES = (".fits", ".fit", ".fts", ".fits.fz", ".fit.fz", ".fz", ".fits.gz", ".fit.gz")
_MAGIC = b"SIMPLE  ="

# setting -> header keywords, the first present wins (N.I.N.A., SharpCap, MaxIm, Ekos spellings)
SETTING_KEYS: dict[str, tuple[str, ...]] = {
    "exptime": ("EXPTIME", "EXPOSURE"),
    "gain": ("GAINSET", "GAIN"),
    "offset": ("OFFSET", "BLKLEVEL"),
    "readout": ("READOUTM", "READMODE"),
    "xbinning": ("XBINNING",),
    "ybinning": ("YBINNING",),
    "filter": ("FILTER",),
    "object": ("OBJECT",),
}


def natural_key(name: str) -> list:
    """Sort key putting ``frame_2`` before ``frame_10``."""
    return [int(part) if part.isdigit() else part.casefold() for part in re.split(r"(\d+)", name)]


def header_value(header: fits.Header, keys: Sequence[str]) -> Any:
    """The value of the first of ``keys`` present in ``header`` (None if none is)."""
    for key in keys:
        if key in header:
            return header[key]
    return None


def _norm(value: Any) -> Any:
    if isinstance(value, str):
        return value.strip().casefold()
    if isinstance(value, bool) or value is None:
        return value
    if isinstance(value, int | float | np.integer | np.floating):
        return round(float(value), 6)
    return str(value)


def parse_time(value: Any) -> float | None:
    """Seconds (float) from a DATE-OBS-like ISO string or a number (JD, MJD, seconds); None if neither."""
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, int | float):
        return float(value) * (86400.0 if value < 1e7 else 1.0)  # days (JD / MJD) or seconds
    text = str(value).strip().rstrip("Z")
    match = re.fullmatch(r"(\d{4}-\d\d-\d\d[T ]\d\d:\d\d:\d\d)(?:\.(\d+))?", text)
    if match is None:
        return None
    try:
        base = datetime.fromisoformat(match.group(1))
    except ValueError:
        return None
    frac = float(f"0.{match.group(2)}") if match.group(2) else 0.0
    return (base - datetime(1970, 1, 1)).total_seconds() + frac


@dataclass
class FrameFile:
    """One input file, as scanned (no file handle kept).

    Attributes
    ----------
    path : pathlib.Path
    hdu_index : int
        The HDU holding the image.
    header : astropy.io.fits.Header
        Primary and image-HDU cards merged (non-structural).
    shape : (ny, nx)
    n_frames : int
        1 for a 2-D image, the depth of a 3-D stack.
    is_stack : bool
    compressed : bool
        The image is tile-compressed.
    time : float or None
        Seconds, from the ordering key.
    """

    path: Path
    hdu_index: int
    header: fits.Header
    shape: tuple[int, int]
    n_frames: int
    is_stack: bool
    compressed: bool
    time: float | None = None

    def settings(self) -> tuple:
        """The camera settings that must not change within a series (ROI: shape and subframe origin)."""
        roi = (self.shape, _norm(self.header.get("XORGSUBF")), _norm(self.header.get("YORGSUBF")))
        return (*(_norm(header_value(self.header, keys)) for keys in SETTING_KEYS.values()), roi)


@dataclass
class Series:
    """Frames corrected together, in time order; ``reason`` says why the series starts here."""

    number: int
    files: list[FrameFile] = field(default_factory=list)
    reason: str = "first"

    @property
    def n_frames(self) -> int:
        return sum(f.n_frames for f in self.files)


def discover(inputs: Iterable[str | os.PathLike]) -> tuple[list[Path], list[tuple[Path, str]]]:
    """Expand ``inputs`` (files, folders, glob patterns) into candidate FITS files.

    A folder gives its files (not its sub-folders, nor hidden files such as temporary outputs). A file
    that does not start like FITS is skipped, unless its name ends like a FITS file (then it is kept, to
    be reported as corrupt by :func:`scan`).

    Returns
    -------
    files : list of pathlib.Path
        In the order found, each once.
    skipped : list of (pathlib.Path, str)
        What was passed over and why.

    Raises
    ------
    FrameError
        An input that does not exist and matches nothing.
    """
    found: list[Path] = []
    seen: set[Path] = set()
    skipped: list[tuple[Path, str]] = []
    for item in inputs:
        text = os.fspath(item)
        path = Path(text)
        if path.is_dir():
            entries = sorted(path.iterdir(), key=lambda p: natural_key(p.name))
            candidates = [p for p in entries if p.is_file() and not p.name.startswith(".")]
        elif path.exists():
            candidates = [path]
        elif glob.has_magic(text):
            candidates = [Path(p) for p in sorted(glob.glob(text), key=natural_key) if Path(p).is_file()]
            if not candidates:
                raise FrameError(f"{text}: no file matches")
        else:
            raise FrameError(f"{path}: no such file or folder")
        for cand in candidates:
            if cand.resolve() in seen:
                continue
            seen.add(cand.resolve())
            with open(cand, "rb") as fh:
                head = fh.read(len(_MAGIC))
            if head != _MAGIC and not cand.name.lower().endswith(FITS_SUFFIXES):
                skipped.append((cand, "not a FITS file"))
                log.debug("skipped %s: not a FITS file", cand)
                continue
            found.append(cand)
    return found, skipped


def _scan_one(path: Path, order_key: str) -> FrameFile:
    try:
        with fits.open(path, memmap=False, lazy_load_hdus=False) as hdul:
            check_complete(path, hdul)
            k = image_hdu_index(hdul)
            if k is None:
                raise FrameError(f"{path}: no image data in any HDU")
            hdu = hdul[k]
            naxis = [int(hdu.header[f"NAXIS{j}"]) for j in range(int(hdu.header["NAXIS"]), 0, -1)]
            if len(naxis) not in (2, 3):
                raise FrameError(f"{path}: image has {len(naxis)} axes; expected a 2-D frame or 3-D stack")
            header = merged_header(hdul[0].header, hdu.header)
            return FrameFile(path, k, header, (naxis[-2], naxis[-1]), naxis[0] if len(naxis) == 3 else 1,
                             len(naxis) == 3, isinstance(hdu, fits.CompImageHDU),
                             parse_time(header.get(order_key)))
    except FrameError:
        raise
    except (OSError, ValueError, TypeError, KeyError, IndexError) as exc:
        raise FrameError(f"{path}: not a readable FITS file ({exc})") from exc


def scan(paths: Sequence[Path], order_key: str = "DATE-OBS", skip_bad: bool = False, progress: bool | None = None
         ) -> tuple[list[FrameFile], list[tuple[Path, str]]]:
    """Read the headers of ``paths`` (each file opened and closed in turn) and check each is complete.

    Returns
    -------
    files : list of FrameFile
    bad : list of (pathlib.Path, str)
        Files passed over with ``skip_bad``, and why.

    Raises
    ------
    FrameError
        A file that is corrupt or truncated (without ``skip_bad``), named in the message.
    """
    from tqdm import tqdm

    files: list[FrameFile] = []
    bad: list[tuple[Path, str]] = []
    for path in tqdm(paths, unit="file", desc="scan", disable=(not progress) if progress is not None else None):
        try:
            files.append(_scan_one(path, order_key))
        except FrameError as exc:
            if not skip_bad:
                raise
            bad.append((path, str(exc)))
            log.debug("skipped bad file: %s", exc)
    return files, bad


def plan(files: Sequence[FrameFile], max_gap: float = 5.0, order_key: str = "DATE-OBS") -> list[Series]:
    """Order ``files`` in time and split them into series.

    Frames are ordered by their ``order_key`` time when every file has one, else by natural name order.
    A new series starts where a setting of :data:`SETTING_KEYS` or the ROI changes, or where the time
    step exceeds ``max_gap`` times the cadence (the median step of the frames with the same settings).

    Returns
    -------
    list of Series
    """
    if not files:
        return []
    timed = all(f.time is not None for f in files)
    if timed:
        ordered = sorted(files, key=lambda f: (f.time, natural_key(f.path.name)))
    else:
        ordered = sorted(files, key=lambda f: natural_key(f.path.name))
        log.info("not every file has %s: frames ordered by file name", order_key)
    runs: list[list[FrameFile]] = [[ordered[0]]]
    reasons = ["first"]
    for prev, cur in zip(ordered, ordered[1:], strict=False):
        if cur.settings() != prev.settings():
            names = [n for n, a, b in zip([*SETTING_KEYS, "roi"], prev.settings(), cur.settings(), strict=True)
                     if a != b]
            runs.append([cur])
            reasons.append(f"{'/'.join(names)} changed")
        else:
            runs[-1].append(cur)
    out: list[Series] = []
    for run, reason in zip(runs, reasons, strict=True):
        steps = [b.time - a.time for a, b in zip(run, run[1:], strict=False)] if timed else []
        cadence = float(np.median(steps)) if len(steps) >= 2 else math.inf
        out.append(Series(len(out) + 1, [run[0]], reason))
        for a, b in zip(run, run[1:], strict=False):
            step = b.time - a.time if timed else 0.0
            if cadence > 0 and step > max_gap * cadence:
                out.append(Series(len(out) + 1, [b], f"gap of {step:.1f} s (cadence {cadence:.1f} s)"))
            else:
                out[-1].files.append(b)
    return out


def plan_lines(series: Sequence[Series]) -> list[str]:
    """One line per series for ``--dry-run``: frames, first and last file, settings and why it starts."""
    lines = []
    for s in series:
        h = s.files[0].header
        desc = ", ".join(f"{name}={header_value(h, keys)}" for name, keys in SETTING_KEYS.items()
                         if header_value(h, keys) is not None)
        lines.append(f"series {s.number}: {s.n_frames} frames, {s.files[0].path.name} .. {s.files[-1].path.name}"
                     f", shape {s.files[0].shape[0]}x{s.files[0].shape[1]} ({desc}) [{s.reason}]")
    return lines
