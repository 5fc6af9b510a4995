"""Read stacks of FITS frames, given as files of 2D frames or 3D cubes in any mix, in bounded memory."""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np
from astropy.io import fits
from numpy.typing import DTypeLike
from tqdm import tqdm

from rtnstream.kernels.exceptions import FrameError

__all__ = [
    "DEFAULT_MAX_BYTES",
    "Band",
    "FitsFileInfo",
    "FitsStack",
    "FrameSource",
    "inspect_fits",
    "read_frame",
]

#: Default memory budget of one row band, bytes (256 MiB).
DEFAULT_MAX_BYTES = 256 * 1024**2

# Keywords of the primary header that are not copied into an extension's merged header.
_STRUCTURAL = frozenset(
    {"", "SIMPLE", "BITPIX", "NAXIS", "NAXIS1", "NAXIS2", "NAXIS3", "EXTEND", "PCOUNT", "GCOUNT",
     "XTENSION", "EXTNAME", "CHECKSUM", "DATASUM", "COMMENT", "HISTORY", "BZERO", "BSCALE"}
)


@dataclass(frozen=True)
class FitsFileInfo:
    """What one FITS file holds.

    Attributes
    ----------
    path : pathlib.Path
        The file.
    hdu_index : int
        Index of the image HDU read (the first one with 2D or 3D data unless asked otherwise).
    n_frames : int
        1 for a 2D image, the length of the first axis for a 3D cube.
    shape : tuple of int
        Frame shape ``(ny, nx)``, pixels.
    dtype : numpy.dtype
        Pixel type as astropy returns it (BSCALE / BZERO applied, e.g. ``uint16``).
    header : astropy.io.fits.Header
        The image HDU's header, completed with the primary header's keywords when the image is in an
        extension (so ``EXPTIME`` written only in the primary header is found).
    """

    path: Path
    hdu_index: int
    n_frames: int
    shape: tuple[int, int]
    dtype: np.dtype
    header: fits.Header


@dataclass(frozen=True)
class FrameSource:
    """Where one frame of a stack lives: file, HDU index, and plane of a 3D cube (``None`` for 2D)."""

    path: Path
    hdu_index: int
    plane: int | None


class Band(NamedTuple):
    """One row band of a stack: rows ``y0 <= y < y1`` of every selected frame.

    ``data`` has shape ``(n_frames, y1 - y0, x1 - x0)`` (``x0, x1`` the column range asked for; the whole
    width by default), in adu.
    """

    y0: int
    y1: int
    data: np.ndarray


def _merged_header(hdul: fits.HDUList, index: int) -> fits.Header:
    header = hdul[index].header.copy()
    if index > 0:
        for card in hdul[0].header.cards:
            if card.keyword not in _STRUCTURAL and card.keyword not in header:
                header.append(card)
    return header


def _image_ndim(hdu: fits.hdu.base._BaseHDU) -> int:
    if not getattr(hdu, "is_image", False):
        return 0
    return len(hdu.shape) if hdu.shape else 0


def inspect_fits(path: str | os.PathLike, hdu: int | None = None) -> FitsFileInfo:
    """Describe a FITS file without reading its pixels.

    Parameters
    ----------
    path : str or path-like
        The file.
    hdu : int, optional
        Index of the image HDU to use; by default the first HDU with 2D or 3D image data.

    Returns
    -------
    FitsFileInfo

    Raises
    ------
    FrameError
        The file cannot be opened or parsed as FITS, holds no 2D / 3D image, or is a compact bias stack
        (:mod:`rtnstream.calibration.compact`); the message names it.
    """
    path = Path(path)
    try:
        with warnings.catch_warnings(record=True) as caught, \
                fits.open(path, memmap=False, lazy_load_hdus=True) as hdul:
            warnings.simplefilter("always")
            if "RTNCSTK" in hdul[0].header:
                raise FrameError(f"{path}: a compact bias stack (rtnstream bias-collect), not bias frames; "
                                 f"fit it alone: rtnstream fit {path}")
            if hdu is None:
                index = next((i for i, h in enumerate(hdul) if _image_ndim(h) in (2, 3)), None)
                if index is None:
                    raise FrameError(f"{path}: no 2D or 3D image HDU in this FITS file")
            else:
                index = hdu
                if index >= len(hdul) or _image_ndim(hdul[index]) not in (2, 3):
                    raise FrameError(f"{path}: HDU {index} is not a 2D or 3D image")
            image = hdul[index]
            shape = tuple(int(n) for n in image.shape)
            probe = image.section[(0,) * (len(shape) - 2) + (slice(0, 1), slice(0, 1))]
            header = _merged_header(hdul, index)
            truncated = [w for w in caught if "truncated" in str(w.message)]
            if truncated:
                raise FrameError(f"{path}: FITS file is truncated ({truncated[0].message})")
    except FrameError:
        raise
    except (OSError, ValueError, TypeError, IndexError, KeyError) as exc:
        raise FrameError(f"cannot read FITS file {path}: {exc}") from exc
    n_frames = 1 if len(shape) == 2 else shape[0]
    if n_frames < 1 or shape[-1] < 1 or shape[-2] < 1:
        raise FrameError(f"{path}: empty image of shape {shape}")
    return FitsFileInfo(path, index, n_frames, (shape[-2], shape[-1]), probe.dtype, header)


def _read_region(
    hdul: fits.HDUList, source: FrameSource, rows: tuple[int, int], cols: tuple[int, int]
) -> np.ndarray:
    window = (slice(*rows), slice(*cols))
    if source.plane is not None:
        window = (source.plane, *window)
    try:
        return hdul[source.hdu_index].section[window]
    except (OSError, ValueError, TypeError, IndexError) as exc:
        raise FrameError(f"cannot read pixels of FITS file {source.path}: {exc}") from exc


def read_frame(
    path: str | os.PathLike,
    plane: int | None = None,
    *,
    hdu: int | None = None,
    rows: tuple[int, int] | None = None,
    cols: tuple[int, int] | None = None,
    dtype: DTypeLike | None = np.float64,
) -> np.ndarray:
    """Read one frame (or a rectangle of it) from a FITS file.

    Parameters
    ----------
    path : str or path-like
        The file.
    plane : int, optional
        Plane of a 3D cube; required for a cube, must be ``None`` or 0 for a 2D image.
    hdu : int, optional
        Image HDU index (default: the first 2D / 3D image).
    rows, cols : (int, int), optional
        Half-open pixel ranges ``(start, stop)``; the whole axis by default.
    dtype : dtype or None
        Output type; ``None`` keeps the file's type.

    Returns
    -------
    numpy.ndarray, shape (y1 - y0, x1 - x0)
        Pixel values, adu.

    Raises
    ------
    FrameError
        Unreadable file, or ``plane`` out of range / missing for a cube.
    """
    info = inspect_fits(path, hdu)
    if _is_cube(info):
        if plane is None or not 0 <= plane < info.n_frames:
            raise FrameError(f"{info.path}: plane must be in [0, {info.n_frames}) for this cube, got {plane}")
        index = plane
    elif plane not in (None, 0):
        raise FrameError(f"{info.path}: plane {plane} asked of a 2D image")
    else:
        index = 0
    return FitsStack([info]).read_frame(index, rows=rows, cols=cols, dtype=dtype)


def _is_cube(info: FitsFileInfo) -> bool:
    return int(info.header.get("NAXIS", 2)) == 3


def _check_range(name: str, rng: tuple[int, int] | None, n: int) -> tuple[int, int]:
    if rng is None:
        return 0, n
    start, stop = (int(v) for v in rng)
    if not 0 <= start < stop <= n:
        raise ValueError(f"{name} must satisfy 0 <= start < stop <= {n}, got {rng}")
    return start, stop


class FitsStack:
    """A stack of same-shape frames spread over FITS files, read lazily.

    Parameters
    ----------
    files : sequence of str, path-like or FitsFileInfo
        Files in stack order; each a 2D frame or a 3D cube ``(n, ny, nx)`` (its planes in order).
    hdu : int, optional
        Image HDU index used in every file (default: the first 2D / 3D image of each).

    Raises
    ------
    ValueError
        ``files`` is empty.
    FrameError
        A file cannot be read, or its frame shape differs from the first file's (the message names both).

    Notes
    -----
    Pixels are read through astropy's ``hdu.section``, so only the rows asked for are read from disk and
    memory stays bounded by the band size. Files are opened per band and closed again, so stacks of
    thousands of files do not exhaust file handles.
    """

    def __init__(self, files: Sequence[str | os.PathLike | FitsFileInfo], *, hdu: int | None = None):
        if len(files) == 0:
            raise ValueError("files: empty list, a stack needs at least one FITS file")
        infos = [f if isinstance(f, FitsFileInfo) else inspect_fits(f, hdu) for f in files]
        first = infos[0]
        for info in infos[1:]:
            if info.shape != first.shape:
                raise FrameError(
                    f"{info.path}: frame shape {info.shape} differs from {first.shape} of {first.path}"
                )
        self._infos = tuple(infos)
        sources: list[FrameSource] = []
        headers: list[fits.Header] = []
        for info in infos:
            cube = _is_cube(info)
            for k in range(info.n_frames):
                sources.append(FrameSource(info.path, info.hdu_index, k if cube else None))
                headers.append(info.header)
        self._sources = tuple(sources)
        self._headers = tuple(headers)

    @property
    def files(self) -> tuple[FitsFileInfo, ...]:
        """Per-file descriptions, in stack order."""
        return self._infos

    @property
    def frames(self) -> tuple[FrameSource, ...]:
        """Where each frame lives, length ``n_frames``."""
        return self._sources

    @property
    def n_frames(self) -> int:
        """Number of frames (planes of cubes counted one by one)."""
        return len(self._sources)

    @property
    def shape(self) -> tuple[int, int]:
        """Frame shape ``(ny, nx)``, pixels."""
        return self._infos[0].shape

    @property
    def dtype(self) -> np.dtype:
        """Common pixel type of the files (``numpy.result_type`` of each file's type)."""
        return np.result_type(*(info.dtype for info in self._infos))

    @property
    def headers(self) -> tuple[fits.Header, ...]:
        """Header of each frame (planes of one cube share their file's header). Do not modify."""
        return self._headers

    def header_values(self, key: str) -> list[object | None]:
        """Value of header keyword ``key`` for each frame, ``None`` where it is missing."""
        return [h.get(key) for h in self._headers]

    def subset(self, indices: Sequence[int]) -> FitsStack:
        """A stack of the frames ``indices`` (in that order), sharing this stack's files."""
        sub = object.__new__(FitsStack)
        idx = [int(i) for i in indices]
        if not idx:
            raise ValueError("indices: empty, a stack needs at least one frame")
        for i in idx:
            if not 0 <= i < self.n_frames:
                raise IndexError(f"frame index {i} out of range [0, {self.n_frames})")
        sub._sources = tuple(self._sources[i] for i in idx)
        sub._headers = tuple(self._headers[i] for i in idx)
        paths = {s.path for s in sub._sources}
        sub._infos = tuple(info for info in self._infos if info.path in paths)
        return sub

    def band_rows(self, max_bytes: int = DEFAULT_MAX_BYTES, *, n_frames: int | None = None,
                  ncols: int | None = None, itemsize: int = 8) -> int:
        """Rows per band so that one band of ``n_frames`` frames fits in ``max_bytes`` (at least 1)."""
        if max_bytes <= 0:
            raise ValueError(f"max_bytes must be positive, got {max_bytes}")
        n = self.n_frames if n_frames is None else n_frames
        width = self.shape[1] if ncols is None else ncols
        return max(1, min(self.shape[0], int(max_bytes) // max(1, n * width * itemsize)))

    def read_frame(
        self,
        index: int,
        *,
        rows: tuple[int, int] | None = None,
        cols: tuple[int, int] | None = None,
        dtype: DTypeLike | None = np.float64,
    ) -> np.ndarray:
        """Read frame ``index`` (or the rectangle ``rows`` x ``cols`` of it).

        Parameters
        ----------
        index : int
            Frame index in ``[0, n_frames)``.
        rows, cols : (int, int), optional
            Half-open pixel ranges; the whole axis by default.
        dtype : dtype or None
            Output type; ``None`` keeps the file's type.

        Returns
        -------
        numpy.ndarray, shape (y1 - y0, x1 - x0)
            Pixel values, adu.
        """
        if not 0 <= index < self.n_frames:
            raise IndexError(f"frame index {index} out of range [0, {self.n_frames})")
        rows = _check_range("rows", rows, self.shape[0])
        cols = _check_range("cols", cols, self.shape[1])
        source = self._sources[index]
        with self._open(source.path) as hdul:
            data = _read_region(hdul, source, rows, cols)
        return np.array(data, dtype=dtype if dtype is not None else data.dtype, copy=True)

    def iter_values(self, flat_index: np.ndarray, *, progress: bool = False, desc: str | None = None
                    ) -> Iterator[np.ndarray]:
        """Yield, frame by frame, the values of the pixels ``flat_index`` (row-major flat indices).

        An uncompressed image is memory-mapped, so only the disk pages holding those pixels are read
        (for pixels scattered over the sensor that is most pages: see docs/fit.md, "Prescreen"); each
        file is opened once for its consecutive frames.

        Yields
        ------
        numpy.ndarray, shape (len(flat_index),), dtype :attr:`dtype`, adu
        """
        flat_index = np.asarray(flat_index, dtype=np.int64)
        dtype = self.dtype
        i = 0
        with tqdm(total=self.n_frames, desc=desc, disable=not progress, unit="frame") as bar:
            while i < self.n_frames:
                path = self._sources[i].path
                j = i
                while j < self.n_frames and self._sources[j].path == path:
                    j += 1
                for values in self._file_values(i, j, flat_index):
                    yield values.astype(dtype, copy=False)
                    bar.update()
                i = j

    def _file_values(self, i: int, j: int, flat_index: np.ndarray) -> Iterator[np.ndarray]:
        """Values of frames ``i .. j-1`` (all in one file) at ``flat_index``."""
        path = self._sources[i].path
        try:
            hdul = fits.open(path, memmap=True, do_not_scale_image_data=True, lazy_load_hdus=True)
        except (OSError, ValueError, TypeError) as exc:
            raise FrameError(f"cannot read FITS file {path}: {exc}") from exc
        with hdul:
            for k in range(i, j):
                source = self._sources[k]
                hdu = hdul[source.hdu_index]
                bzero, bscale = hdu.header.get("BZERO", 0), hdu.header.get("BSCALE", 1)
                if (not isinstance(hdu, fits.PrimaryHDU | fits.ImageHDU) or "BLANK" in hdu.header or bscale != 1
                        or not float(bzero).is_integer()):  # compressed or scaled: astropy reads the frame
                    yield self.read_frame(k, dtype=None).reshape(-1)[flat_index]
                    continue
                raw = hdu.data if source.plane is None else hdu.data[source.plane]
                values = np.asarray(raw.reshape(-1)[flat_index])
                del raw
                yield values.astype(np.int64) + int(bzero) if bzero else values

    def iter_frames(
        self,
        *,
        rows: tuple[int, int] | None = None,
        cols: tuple[int, int] | None = None,
        dtype: DTypeLike | None = np.float64,
        progress: bool = False,
        desc: str | None = None,
    ) -> Iterator[np.ndarray]:
        """Yield each frame (or its rectangle ``rows`` x ``cols``) in order, shape ``(y1-y0, x1-x0)``, adu."""
        for i in tqdm(range(self.n_frames), desc=desc, disable=not progress, unit="frame"):
            yield self.read_frame(i, rows=rows, cols=cols, dtype=dtype)

    def iter_bands(
        self,
        max_bytes: int = DEFAULT_MAX_BYTES,
        *,
        rows: tuple[int, int] | None = None,
        cols: tuple[int, int] | None = None,
        dtype: DTypeLike | None = np.float64,
        progress: bool = False,
        desc: str | None = None,
        max_open_files: int = 256,
    ) -> Iterator[Band]:
        """Yield row bands of every frame, top to bottom.

        Parameters
        ----------
        max_bytes : int
            Memory budget of one band in bytes; the band height is the largest that fits (at least one
            row, so a single row of a very deep stack can exceed it).
        rows, cols : (int, int), optional
            Restrict to these half-open row / column ranges (default: the whole frame).
        dtype : dtype or None
            Type of the band array (default float64); ``None`` keeps the files' common type.
        progress : bool
            Show a tqdm progress bar (on stderr).
        desc : str, optional
            Label of the progress bar.
        max_open_files : int
            Stacks of at most this many files keep them open for the whole pass; larger stacks open and
            close each file once per band.

        Yields
        ------
        Band
            ``(y0, y1, data)`` with ``data`` of shape ``(n_frames, y1 - y0, x1 - x0)``, adu.
        """
        y_start, y_stop = _check_range("rows", rows, self.shape[0])
        x0, x1 = _check_range("cols", cols, self.shape[1])
        out_dtype = np.dtype(dtype) if dtype is not None else self.dtype
        step = self.band_rows(max_bytes, ncols=x1 - x0, itemsize=out_dtype.itemsize)
        by_path: dict[Path, list[tuple[int, FrameSource]]] = {}
        for i, source in enumerate(self._sources):
            by_path.setdefault(source.path, []).append((i, source))
        # Keep the files open for the whole pass when there are few of them, else open them per band.
        keep_open = len(by_path) <= max_open_files
        handles: dict[Path, fits.HDUList] = {}
        try:
            for y0 in tqdm(range(y_start, y_stop, step), desc=desc, disable=not progress, unit="band"):
                y1 = min(y0 + step, y_stop)
                data = np.empty((self.n_frames, y1 - y0, x1 - x0), dtype=out_dtype)
                for path, members in by_path.items():
                    hdul = handles.get(path) or self._open(path)
                    try:
                        for i, source in members:
                            data[i] = _read_region(hdul, source, (y0, y1), (x0, x1))
                    finally:
                        if keep_open:
                            handles[path] = hdul
                        else:
                            hdul.close()
                yield Band(y0, y1, data)
        finally:
            for hdul in handles.values():
                hdul.close()

    @staticmethod
    def _open(path: Path) -> fits.HDUList:
        try:
            return fits.open(path, memmap=False, lazy_load_hdus=True)
        except (OSError, ValueError, TypeError) as exc:
            raise FrameError(f"cannot read FITS file {path}: {exc}") from exc
