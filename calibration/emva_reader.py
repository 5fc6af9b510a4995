"""Read the EMVA 1288 descriptor (``EMVA1288_Data.txt``) and its PNG or TIFF images.

The descriptor is a text file of lines (``#`` starts a comment; CRLF and LF both read):

- ``v VERSION``; ``n BITS WIDTH HEIGHT``;
- ``b EXPOSURE_NS PHOTONS`` then two or more ``i PATH`` lines: a bright set (two images: temporal, more:
  spatial), ``PHOTONS`` the mean number of photons per pixel;
- ``d EXPOSURE_NS`` then two or more ``i PATH`` lines: a dark set.

Paths are relative to the descriptor's folder, with ``\\`` or ``/``; a decimal comma is read as a point.
Images need the ``emva`` extra (``imageio`` for PNG, ``tifffile`` for TIFF).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tqdm import tqdm

from rtnstream.calibration.emva1288 import SpatialStack, TemporalPoint, spatial_stack, temporal_point

__all__ = ["EmvaDescriptor", "EmvaInput", "EmvaSet", "load_emva", "parse_descriptor", "read_image"]

_NS = 1e-9


@dataclass(frozen=True)
class EmvaSet:
    """One image set of the descriptor.

    Attributes
    ----------
    exposure_s : float
        Exposure time, s (the descriptor gives ns).
    photons : float or None
        Mean photons per pixel (bright sets), ``None`` for dark sets.
    paths : tuple of pathlib.Path
        The images, two (temporal) or more (spatial).
    """

    exposure_s: float
    photons: float | None
    paths: tuple[Path, ...]


@dataclass
class EmvaDescriptor:
    """The parsed descriptor: format and the bright and dark sets, in file order.

    Attributes
    ----------
    path : pathlib.Path
        The descriptor file.
    version : str or None
        The ``v`` line.
    bits, width, height : int
        The ``n`` line: bits per pixel and image size, pixels.
    bright, dark : list of EmvaSet
        The ``b`` and ``d`` sets.
    """

    path: Path
    version: str | None
    bits: int
    width: int
    height: int
    bright: list[EmvaSet] = field(default_factory=list)
    dark: list[EmvaSet] = field(default_factory=list)


def _number(text: str, what: str, where: str) -> float:
    try:
        value = float(text.replace(",", "."))
    except ValueError:
        raise ValueError(f"{where}: {what} {text!r} is not a number") from None
    if not np.isfinite(value) or value < 0:
        raise ValueError(f"{where}: {what} must be a finite number >= 0, got {text!r}")
    return value


def parse_descriptor(path: str | os.PathLike) -> EmvaDescriptor:
    """Parse an EMVA 1288 descriptor file.

    Parameters
    ----------
    path : str or path-like
        ``EMVA1288_Data.txt`` (any name).

    Returns
    -------
    EmvaDescriptor

    Raises
    ------
    FileNotFoundError
        The descriptor does not exist.
    ValueError
        A malformed line (the message gives the file and line number), no ``n`` line, or a set with fewer
        than two images.
    """
    path = Path(path)
    base = path.parent
    lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
    version = None
    fmt: tuple[int, int, int] | None = None
    bright: list[EmvaSet] = []
    dark: list[EmvaSet] = []
    current: tuple[str, float, float | None, list[Path]] | None = None

    def close(where: str) -> None:
        if current is None:
            return
        kind, exposure, photons, paths = current
        if len(paths) < 2:
            raise ValueError(f"{where}: the {kind} set at {exposure / _NS:g} ns has {len(paths)} image(s); "
                             "each set needs two or more 'i PATH' lines")
        (bright if kind == "bright" else dark).append(EmvaSet(exposure, photons, tuple(paths)))

    for number, raw in enumerate(lines, start=1):
        line = raw.strip()
        where = f"{path}:{number}"
        if not line or line.startswith("#"):
            continue
        tag, _, rest = line.partition(" ")
        fields = rest.split()
        if tag == "i":
            if current is None:
                raise ValueError(f"{where}: image line before any 'b' or 'd' line")
            if not rest.strip():
                raise ValueError(f"{where}: 'i' needs a path")
            parts = [p for p in rest.strip().replace("\\", "/").split("/") if p]
            current[3].append(base.joinpath(*parts))
            continue
        close(where)
        current = None
        if tag == "v":
            version = rest.strip()
        elif tag == "n":
            if len(fields) != 3:
                raise ValueError(f"{where}: expected 'n BITS WIDTH HEIGHT', got {line!r}")
            if fmt is not None:
                raise ValueError(f"{where}: a second 'n' line")
            fmt = tuple(int(_number(f, "n field", where)) for f in fields)  # type: ignore[assignment]
        elif tag == "b":
            if len(fields) != 2:
                raise ValueError(f"{where}: expected 'b EXPOSURE_NS PHOTONS', got {line!r}")
            current = ("bright", _number(fields[0], "exposure", where) * _NS,
                       _number(fields[1], "photon count", where), [])
        elif tag == "d":
            if len(fields) != 1:
                raise ValueError(f"{where}: expected 'd EXPOSURE_NS', got {line!r}")
            current = ("dark", _number(fields[0], "exposure", where) * _NS, None, [])
        else:
            raise ValueError(f"{where}: unknown line {line!r} (expected v, n, b, d or i)")
    close(f"{path}:{len(lines)}")
    if fmt is None:
        raise ValueError(f"{path}: no 'n BITS WIDTH HEIGHT' line")
    bits, width, height = fmt
    if not 1 <= bits <= 32 or width < 1 or height < 1:
        raise ValueError(f"{path}: bad 'n' line: bits {bits}, width {width}, height {height}")
    return EmvaDescriptor(path, version, bits, width, height, bright, dark)


def read_image(path: str | os.PathLike, shape: tuple[int, int] | None = None) -> np.ndarray:
    """Read one image (PNG through imageio, TIFF through tifffile) as a 2D array.

    Parameters
    ----------
    path : str or path-like
        The image.
    shape : (int, int), optional
        Expected ``(ny, nx)``.

    Returns
    -------
    numpy.ndarray, shape (ny, nx)
        The pixel values, adu, in the file's integer type (the first channel of a colour image).

    Raises
    ------
    FileNotFoundError
        The image does not exist.
    ImportError
        imageio or tifffile is not installed (``pip install 'rtnstream[emva]'``).
    ValueError
        The file cannot be decoded, or has another shape than ``shape``.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"EMVA image not found: {path}")
    try:
        if path.suffix.lower() in (".tif", ".tiff"):
            import tifffile

            data = tifffile.imread(path)
        else:
            import imageio.v3 as iio

            data = iio.imread(path)
    except ImportError as exc:
        raise ImportError(f"reading {path} needs {exc.name}: pip install 'rtnstream[emva]'") from exc
    except Exception as exc:  # decoders raise many types; name the file and keep the cause
        raise ValueError(f"cannot read image {path}: {exc}") from exc
    data = np.asarray(data)
    if data.ndim == 3:
        data = data[..., 0]
    if data.ndim != 2:
        raise ValueError(f"{path}: expected a 2D image, got shape {data.shape}")
    if shape is not None and data.shape != tuple(shape):
        raise ValueError(f"{path}: image shape {data.shape} differs from the descriptor's {tuple(shape)}")
    return data


@dataclass
class EmvaInput:
    """Everything the analysis needs from one descriptor.

    Attributes
    ----------
    descriptor : EmvaDescriptor
    points : list of TemporalPoint
    dark_spatial, bright_spatial : SpatialStack or None
    max_adu : float
        ``2**bits - 1``, adu.
    warnings : list of str
    """

    descriptor: EmvaDescriptor
    points: list[TemporalPoint]
    dark_spatial: SpatialStack | None
    bright_spatial: SpatialStack | None
    max_adu: float
    warnings: list[str]


def _images(paths: tuple[Path, ...], shape: tuple[int, int], bar: tqdm) -> Iterator[np.ndarray]:
    for p in paths:
        yield read_image(p, shape)
        bar.update()


def load_emva(path: str | os.PathLike, *, progress: bool = False) -> EmvaInput:
    """Parse a descriptor and reduce its images to the statistics of :mod:`rtnstream.calibration.emva1288`.

    Each temporal bright pair is matched with the temporal dark pair of the same exposure time (the nearest
    one, with a warning, when none has it). The spatial dark stack is the largest dark set with more than
    two images; the spatial bright stack the largest such bright set.

    Parameters
    ----------
    path : str or path-like
        The descriptor.
    progress : bool
        Show a tqdm progress bar on stderr.

    Returns
    -------
    EmvaInput

    Raises
    ------
    ValueError
        Malformed descriptor or image, or no temporal dark pair for the bright pairs.
    """
    desc = parse_descriptor(path)
    shape = (desc.height, desc.width)
    warnings: list[str] = []
    temporal_b = [s for s in desc.bright if len(s.paths) == 2]
    temporal_d = [s for s in desc.dark if len(s.paths) == 2]
    spatial_b = [s for s in desc.bright if len(s.paths) > 2]
    spatial_d = [s for s in desc.dark if len(s.paths) > 2]
    if temporal_b and not temporal_d:
        raise ValueError(f"{desc.path}: bright pairs but no dark pair ('d' set of two images)")
    total = sum(len(s.paths) for s in temporal_b + temporal_d) + max((len(s.paths) for s in spatial_b), default=0)
    total += max((len(s.paths) for s in spatial_d), default=0)
    with tqdm(total=total, desc="EMVA images", unit="img", disable=not progress) as bar:
        dark_pairs = {s.exposure_s: list(_images(s.paths, shape, bar)) for s in temporal_d}
        dark_times = np.array(sorted(dark_pairs))
        points = []
        unmatched = 0
        for s in temporal_b:
            t_dark = float(dark_times[np.argmin(np.abs(dark_times - s.exposure_s))])
            unmatched += not np.isclose(t_dark, s.exposure_s, rtol=1e-6, atol=0)
            points.append(temporal_point(s.exposure_s, s.photons, list(_images(s.paths, shape, bar)),
                                         dark_pairs[t_dark]))
        if unmatched:
            warnings.append(f"{unmatched} bright pair(s) have no dark pair at their exposure time; the nearest "
                            "dark exposure is used")
        spatial = []
        for sets in (spatial_d, spatial_b):
            if sets:
                s = max(sets, key=lambda item: len(item.paths))
                spatial.append(spatial_stack(_images(s.paths, shape, bar), s.exposure_s))
            else:
                spatial.append(None)
    return EmvaInput(desc, points, spatial[0], spatial[1], float(2**desc.bits - 1), warnings)
