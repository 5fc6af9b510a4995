"""The compact bias stack (docs/formats.md, "Compact bias stack"): a candidate screen and candidates' values.

The paper's data-volume trick (its section V.1): the first frames of a long bias run are screened for
candidate RTN pixels (:func:`rtnstream.calibration.prescreen.screen_stack`); from then on only the
candidates' values are kept. A compact stack holds

* the screen: per-pixel mean, standard deviation, modified A^2 and finite-value count of the screened
  frames (``SCREEN``, float64, shape (4, ny, nx)), and the candidates' flat indices (``INDEX``);
* the candidates' values in every frame of the run, the screened ones included (``VALUES``, shape
  (n_frames, n_candidates), in the frames' pixel type);
* every frame's header and source name (``FRAMES``, zlib-compressed JSON), so the fit checks frame
  types, camera settings and gain as for FITS files.

:class:`CompactStackWriter` writes one frame at a time (values spooled to ``<output>.part``, memory
independent of the run's length); :class:`CompactStack` reads it back, the values memory-mapped.
"""

from __future__ import annotations

import json
import os
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from astropy.io import fits

from rtnstream import __version__

__all__ = ["COMPACT_VERSION", "SCREEN_PLANES", "SCREEN_SETTINGS", "Screen", "CompactStack",
           "CompactStackWriter", "is_compact_stack"]

#: Version of the compact stack format (primary header keyword ``RTNCSTK``).
COMPACT_VERSION = 1
#: Planes of the ``SCREEN`` HDU, in order.
SCREEN_PLANES = ("MEAN_ADU", "STD_ADU", "A2", "N_VALID")
#: FitSettings fields the screen depends on: a fit must use the same values.
SCREEN_SETTINGS = ("ad_frames", "a2_critical", "clip_sigma", "clip_iterations", "dither_seed")
_BLOCK = 2880
_PIECE_BYTES = 1024**2  # values streamed from the spool into VALUES this many bytes at a time
# dtype -> (BITPIX, BZERO, big-endian storage dtype); unsigned integers stored offset, as FITS requires
_STORAGE = {np.dtype(np.uint8): (8, 0, ">u1"), np.dtype(np.int16): (16, 0, ">i2"),
            np.dtype(np.uint16): (16, 32768, ">i2"), np.dtype(np.int32): (32, 0, ">i4"),
            np.dtype(np.uint32): (32, 2**31, ">i4"), np.dtype(np.float32): (-32, 0, ">f4"),
            np.dtype(np.float64): (-64, 0, ">f8")}


@dataclass(frozen=True)
class Screen:
    """Candidate screen of the first frames of a bias run.

    Attributes
    ----------
    mean_adu, std_adu : numpy.ndarray, shape (ny, nx), float64, adu
        Per-pixel mean and standard deviation (ddof = 1) of the screened frames' finite values.
    a2 : numpy.ndarray, shape (ny, nx), float32 (float64 holding float32 values when read from a file)
        Modified Anderson-Darling statistic of the first ``min(ad_frames, n_frames)`` screened frames.
    n_valid : numpy.ndarray, shape (ny, nx), int64
        Finite values of each pixel in the screened frames.
    bad_per_frame : numpy.ndarray, shape (n_frames,), int64
        Non-finite values in each screened frame.
    index : numpy.ndarray, shape (n_candidates,), int64
        Flat (row-major) indices of the candidates, increasing.
    settings : dict
        The :data:`SCREEN_SETTINGS` values the screen was made with.
    """

    mean_adu: np.ndarray
    std_adu: np.ndarray
    a2: np.ndarray
    n_valid: np.ndarray
    bad_per_frame: np.ndarray
    index: np.ndarray
    settings: dict[str, Any]

    @property
    def n_frames(self) -> int:
        """Frames screened."""
        return int(self.bad_per_frame.size)

    @property
    def shape(self) -> tuple[int, int]:
        """Frame shape ``(ny, nx)``, pixels."""
        return tuple(self.mean_adu.shape)  # type: ignore[return-value]


def is_compact_stack(path: str | os.PathLike) -> bool:
    """True when ``path`` is a FITS file whose primary header carries ``RTNCSTK`` (a compact stack)."""
    try:
        return "RTNCSTK" in fits.getheader(path, 0)
    except (OSError, ValueError, TypeError):
        return False


def _storage(dtype: np.dtype) -> tuple[int, int, str]:
    dtype = np.dtype(dtype)
    if dtype not in _STORAGE:
        raise ValueError(f"dtype: compact stacks hold {', '.join(map(str, _STORAGE))} pixels, got {dtype}")
    return _STORAGE[dtype]


class CompactStackWriter:
    """Write a compact stack frame by frame.

    Parameters
    ----------
    path : path-like
        The compact stack to write (``.fits``); ``<path>.part`` holds the values until :meth:`close`.
    screen : Screen
    dtype : numpy.dtype
        Pixel type of the frames (uint8, int16, uint16, int32, uint32, float32 or float64).
    overwrite : bool
        Replace an existing ``path``.

    Raises
    ------
    FileExistsError
        ``path`` exists and ``overwrite`` is False.
    ValueError
        An unsupported ``dtype``.
    """

    def __init__(self, path: str | os.PathLike, screen: Screen, dtype: np.dtype, overwrite: bool = False):
        self.path = Path(path)
        if self.path.exists() and not overwrite:
            raise FileExistsError(f"{self.path} exists; give overwrite=True (--overwrite) to replace it")
        self.screen = screen
        self.dtype = np.dtype(dtype)
        _storage(self.dtype)
        self._part = self.path.with_name(self.path.name + ".part")
        self._spool = open(self._part, "wb")  # noqa: SIM115 - closed by close() / discard()
        self._frames: list[dict[str, Any]] = []

    @property
    def n_frames(self) -> int:
        """Frames added so far."""
        return len(self._frames)

    def add_frame(self, frame: np.ndarray, header: fits.Header | None, name: str) -> None:
        """Keep the candidates' values of one whole frame, shape (ny, nx), adu."""
        if frame.shape != self.screen.shape:
            raise ValueError(f"frame: shape {frame.shape} of {name} differs from the screen's {self.screen.shape}")
        self.add_values(frame.reshape(-1)[self.screen.index], header, name)

    def add_values(self, values: np.ndarray, header: fits.Header | None, name: str) -> None:
        """Keep one frame's candidate values, shape (n_candidates,), adu, in the index's order."""
        values = np.asarray(values)
        if values.shape != self.screen.index.shape:
            raise ValueError(f"values: {values.shape} for {name}, expected ({self.screen.index.size},)")
        if values.dtype != self.dtype and not np.can_cast(values.dtype, self.dtype, "same_kind"):
            raise ValueError(f"values: dtype {values.dtype} of {name} does not fit the stack's {self.dtype}")
        self._spool.write(np.ascontiguousarray(values, dtype=self.dtype).tobytes())
        self._frames.append({"name": str(name), "header": header.tostring() if header is not None else ""})

    def rollback(self, n_frames: int) -> None:
        """Forget the frames added after the first ``n_frames`` (a file that failed half-way)."""
        if not 0 <= n_frames <= self.n_frames:
            raise ValueError(f"n_frames must be in [0, {self.n_frames}], got {n_frames!r}")
        self._spool.flush()
        self._spool.truncate(n_frames * self.screen.index.size * self.dtype.itemsize)
        self._spool.seek(0, os.SEEK_END)
        del self._frames[n_frames:]

    def discard(self) -> None:
        """Stop and remove the spool (nothing is written)."""
        self._spool.close()
        self._part.unlink(missing_ok=True)

    def close(self, extra_cards: dict[str, Any] | None = None) -> Path:
        """Write the compact stack (the spooled values streamed in) and remove the spool; returns its path.

        Parameters
        ----------
        extra_cards : dict, optional
            More primary header cards (keyword -> value).
        """
        self._spool.close()
        n, k = self.n_frames, self.screen.index.size
        if n < self.screen.n_frames:
            self.discard()
            raise ValueError(f"frames: a compact stack needs at least the {self.screen.n_frames} screened "
                             f"frames, got {n}")
        s = self.screen
        primary = fits.PrimaryHDU()
        hdr = primary.header
        first = fits.Header.fromstring(self._frames[0]["header"]) if self._frames[0]["header"] else fits.Header()
        for card in first.cards:
            if card.keyword not in hdr and card.keyword not in ("", "COMMENT", "HISTORY", "CHECKSUM",
                                                                "DATASUM", "BZERO", "BSCALE", "EXTEND") \
                    and not card.keyword.startswith("NAXIS"):
                hdr.append(card)
        hdr["RTNCSTK"] = (COMPACT_VERSION, "rtnstream compact bias stack format version")
        hdr["NFRAMES"] = (n, "bias frames in the run")
        hdr["NSCREEN"] = (s.n_frames, "first frames screened for candidates")
        hdr["NCAND"] = (k, "candidate pixels kept")
        hdr["SCRNY"], hdr["SCRNX"] = s.shape
        hdr["PIXTYPE"] = (str(self.dtype), "numpy type of the frames")
        hdr["SWVERS"] = (__version__, "rtnstream version")
        for key, value in s.settings.items():
            hdr[f"HIERARCH RTN SCREEN {key.upper()}"] = value
        for key, value in (extra_cards or {}).items():
            hdr[key] = value
        screen = fits.ImageHDU(np.stack([s.mean_adu, s.std_adu, s.a2, s.n_valid.astype(np.float64)]),
                               name="SCREEN")
        for i, plane in enumerate(SCREEN_PLANES):
            screen.header[f"PLANE{i + 1}"] = plane
        index = fits.ImageHDU(s.index.astype(np.int64), name="INDEX")
        meta = {"frames": self._frames, "screen_bad_per_frame": s.bad_per_frame.tolist()}
        blob = np.frombuffer(zlib.compress(json.dumps(meta).encode(), 9), dtype=np.uint8)
        frames = fits.ImageHDU(blob, name="FRAMES")
        frames.header["ENCODING"] = ("zlib+json", "frames: [{name, header}], screen_bad_per_frame")
        tmp = self.path.with_name(self.path.name + ".tmp")
        try:
            fits.HDUList([primary, screen, index, frames]).writeto(tmp, overwrite=True)
            bitpix, bzero, stored = _storage(self.dtype)
            head = fits.Header([("XTENSION", "IMAGE"), ("BITPIX", bitpix), ("NAXIS", 2), ("NAXIS1", k),
                                ("NAXIS2", n), ("PCOUNT", 0), ("GCOUNT", 1)])
            if bzero:
                head["BZERO"] = bzero
                head["BSCALE"] = 1
            head["EXTNAME"] = "VALUES"
            with open(tmp, "ab") as out, open(self._part, "rb") as spool:
                out.write(head.tostring().encode("ascii"))
                row_bytes = max(1, k) * self.dtype.itemsize
                rows = max(1, _PIECE_BYTES // row_bytes)
                written = 0
                while chunk := spool.read(rows * row_bytes):
                    raw = np.frombuffer(chunk, dtype=self.dtype)
                    if bzero:  # offset storage: subtracting 2^(bits-1) is flipping the top bit
                        raw = (raw ^ self.dtype.type(bzero)).view(np.dtype(stored).newbyteorder("="))
                    data = raw.astype(stored).tobytes()
                    out.write(data)
                    written += len(data)
                out.write(b"\0" * (-written % _BLOCK))
            back = CompactStack(tmp)  # read back before it takes the name: never a malformed output
            if (back.n_frames, back.n_candidates) != (n, k):
                raise ValueError(f"VALUES holds ({back.n_frames}, {back.n_candidates}) values, expected ({n}, {k})")
            if written != n * k * np.dtype(stored).itemsize:
                raise ValueError(f"the spool held {written} bytes of values, expected {n} x {k} x "
                                 f"{np.dtype(stored).itemsize}")
        except Exception as exc:
            tmp.unlink(missing_ok=True)
            self._part.unlink(missing_ok=True)
            raise ValueError(f"{self.path}: not written: writing failed or the stack does not read back ({exc}); "
                             f"nothing left behind") from exc
        os.replace(tmp, self.path)
        self._part.unlink(missing_ok=True)
        return self.path


class CompactStack:
    """A compact stack read back: the screen, the frames' headers, the candidates' values (memory-mapped).

    Parameters
    ----------
    path : path-like

    Raises
    ------
    ValueError
        Not a compact stack, or a version this software does not read (the message names the file).
    """

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        with fits.open(self.path, memmap=False, lazy_load_hdus=True) as hdul:
            hdr = hdul[0].header
            if "RTNCSTK" not in hdr:
                raise ValueError(f"{self.path}: not a compact bias stack (no RTNCSTK keyword)")
            if int(hdr["RTNCSTK"]) > COMPACT_VERSION:
                raise ValueError(f"{self.path}: compact stack version {hdr['RTNCSTK']} is newer than this "
                                 f"software reads ({COMPACT_VERSION})")
            self.primary_header = hdr.copy()
            planes = np.asarray(hdul["SCREEN"].data, dtype=np.float64)
            index = np.asarray(hdul["INDEX"].data, dtype=np.int64)
            meta = json.loads(zlib.decompress(np.asarray(hdul["FRAMES"].data).tobytes()))
            values_index = hdul.index_of("VALUES")
            info = hdul.fileinfo(values_index)
            vhdr = hdul[values_index].header
        self.dtype = np.dtype(hdr["PIXTYPE"])
        settings = {name: hdr[f"HIERARCH RTN SCREEN {name.upper()}"] for name in SCREEN_SETTINGS}
        self.screen = Screen(mean_adu=planes[0], std_adu=planes[1], a2=planes[2],
                             n_valid=planes[3].astype(np.int64),
                             bad_per_frame=np.asarray(meta["screen_bad_per_frame"], dtype=np.int64),
                             index=index, settings=settings)
        self.names = [f["name"] for f in meta["frames"]]
        parsed: dict[str, fits.Header] = {}  # the planes of one file share their header: parse it once
        for f in meta["frames"]:
            if f["header"] not in parsed:
                parsed[f["header"]] = fits.Header.fromstring(f["header"]) if f["header"] else fits.Header()
        self.headers = tuple(parsed[f["header"]] for f in meta["frames"])
        self._offset = int(info["datLoc"])
        self._bzero = int(vhdr.get("BZERO", 0))
        self._stored = _storage(self.dtype)[2]
        self._shape = (int(vhdr["NAXIS2"]), int(vhdr["NAXIS1"]))

    @property
    def n_frames(self) -> int:
        """Frames of the run."""
        return self._shape[0]

    @property
    def n_candidates(self) -> int:
        """Candidate pixels kept."""
        return self._shape[1]

    @property
    def shape(self) -> tuple[int, int]:
        """Frame shape ``(ny, nx)``, pixels."""
        return self.screen.shape

    def header_values(self, key: str) -> list[object | None]:
        """Value of header keyword ``key`` for each frame, ``None`` where it is missing."""
        return [h.get(key) for h in self.headers]

    def values(self, start: int = 0, stop: int | None = None, n_frames: int | None = None) -> np.ndarray:
        """Values of candidates ``start .. stop-1`` (index order) in the first ``n_frames`` frames.

        Returns
        -------
        numpy.ndarray, shape (n_frames, stop - start), the frames' type, adu
        """
        stop = self.n_candidates if stop is None else stop
        n = self.n_frames if n_frames is None else n_frames
        if self.n_candidates == 0 or stop <= start:
            return np.zeros((n, 0), dtype=self.dtype)
        raw = np.memmap(self.path, dtype=self._stored, mode="r", offset=self._offset, shape=self._shape)
        part = raw[:n, start:stop].astype(np.dtype(self._stored).newbyteorder("="))  # one native copy
        del raw
        if self._bzero:  # offset storage: adding 2^(bits-1) is flipping the top bit, in place
            part = part.view(self.dtype)
            part ^= self.dtype.type(self._bzero)
        return part

    def nbytes(self) -> int:
        """Size of the file, bytes."""
        return self.path.stat().st_size

