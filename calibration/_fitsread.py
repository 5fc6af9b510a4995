"""Fast reads of frames of a :class:`~rtnstream.calibration.stacks.FitsStack` straight from the file.

astropy opens and parses every header of a file for each frame read (most of the reading time of a
characterization of 2D-frame stacks). Here each file's image HDU is located once by scanning its header
blocks, and a frame (or a row range of it) is read with one seek and ``numpy.fromfile``, BZERO / BSCALE
applied. HDUs that this cannot read exactly (tile-compressed, BLANK-flagged integers, random groups) are
read through the stack as before, and so are scaled integers (BSCALE other than 1, which astropy returns
in float32).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from rtnstream.calibration.stacks import FitsStack, FrameSource
from rtnstream.kernels.exceptions import FrameError

__all__ = ["FrameReader"]

_BLOCK = 2880
_CARD = 80
_BITPIX = {8: ">u1", 16: ">i2", 32: ">i4", 64: ">i8", -32: ">f4", -64: ">f8"}


@dataclass(frozen=True)
class _Layout:
    offset: int  # byte offset of the image data
    dtype: np.dtype
    bzero: float
    ny: int
    nx: int


def _cards(f, path: Path) -> dict[str, str]:
    """The keyword -> raw value text of one header, the file positioned after its END block."""
    cards: dict[str, str] = {}
    while True:
        block = f.read(_BLOCK)
        if len(block) < _BLOCK:
            raise FrameError(f"{path}: FITS header ends before its END card")
        for i in range(0, _BLOCK, _CARD):
            card = block[i:i + _CARD].decode("ascii", errors="replace")
            key = card[:8].strip()
            if key == "END":
                return cards
            if card[8:10] == "= " and key not in cards:
                cards[key] = card[10:].split("/", 1)[0].strip()


def _int(cards: dict[str, str], key: str, default: int | None = None) -> int:
    if key not in cards:
        if default is None:
            raise KeyError(key)
        return default
    return int(cards[key])


def _locate(path: Path, hdu_index: int) -> _Layout | None:
    """Where the image of HDU ``hdu_index`` lies in ``path``; ``None`` when it cannot be read directly."""
    with open(path, "rb") as f:
        for index in range(hdu_index + 1):
            start = f.tell()
            cards = _cards(f, path)
            data_start = f.tell()
            bitpix, naxis = _int(cards, "BITPIX"), _int(cards, "NAXIS")
            dims = [_int(cards, f"NAXIS{k}") for k in range(1, naxis + 1)]
            size = abs(bitpix) // 8 * _int(cards, "GCOUNT", 1) * (_int(cards, "PCOUNT", 0) + int(np.prod(dims)))
            if index == hdu_index:
                plain = (naxis in (2, 3) and bitpix in _BITPIX and "ZIMAGE" not in cards
                         and not ("BLANK" in cards and bitpix > 0) and cards.get("GROUPS", "F") != "T"
                         and float(cards.get("BSCALE", 1)) == 1
                         and (index == 0 or cards.get("XTENSION", "").strip("' ") == "IMAGE"))
                if not plain:
                    return None
                return _Layout(data_start, np.dtype(_BITPIX[bitpix]), float(cards.get("BZERO", 0)), dims[1], dims[0])
            f.seek(data_start + -(-size // _BLOCK) * _BLOCK)
            if f.tell() == start:
                return None
    return None


class FrameReader:
    """Read frames of one stack, each file's image located once.

    Parameters
    ----------
    stack : FitsStack
        The stack (its files already inspected).
    """

    def __init__(self, stack: FitsStack):
        self.stack = stack
        self._layouts: dict[tuple[Path, int], _Layout | None] = {}

    def _layout(self, source: FrameSource) -> _Layout | None:
        key = (source.path, source.hdu_index)
        if key not in self._layouts:
            try:
                self._layouts[key] = _locate(source.path, source.hdu_index)
            except (OSError, ValueError, KeyError):
                self._layouts[key] = None  # let astropy read it and name the problem
        return self._layouts[key]

    def read_frame(self, index: int, *, rows: tuple[int, int] | None = None,
                   cols: tuple[int, int] | None = None) -> np.ndarray:
        """Frame ``index`` of the stack (or its rectangle ``rows`` x ``cols``), float64 adu.

        Parameters
        ----------
        index : int
            Frame index in ``[0, n_frames)``.
        rows, cols : (int, int), optional
            Half-open pixel ranges; the whole axis by default.

        Returns
        -------
        numpy.ndarray, shape (y1 - y0, x1 - x0), float64
            The same values as ``FitsStack.read_frame``.

        Raises
        ------
        FrameError
            The file is shorter than its header says (the message names it).
        """
        stack = self.stack
        if not 0 <= index < stack.n_frames:
            raise IndexError(f"frame index {index} out of range [0, {stack.n_frames})")
        source = stack.frames[index]
        layout = self._layout(source)
        if layout is None:
            return stack.read_frame(index, rows=rows, cols=cols)
        y0, y1 = rows if rows is not None else (0, layout.ny)
        x0, x1 = cols if cols is not None else (0, layout.nx)
        if not (0 <= y0 < y1 <= layout.ny and 0 <= x0 < x1 <= layout.nx):
            return stack.read_frame(index, rows=rows, cols=cols)  # the stack names the bad range
        plane = source.plane or 0
        item = layout.dtype.itemsize
        count = (y1 - y0) * layout.nx
        with open(source.path, "rb") as f:
            f.seek(layout.offset + ((plane * layout.ny + y0) * layout.nx) * item)
            raw = np.fromfile(f, dtype=layout.dtype, count=count)
        if raw.size != count:
            raise FrameError(f"cannot read pixels of FITS file {source.path}: the file is truncated")
        data = raw.reshape(y1 - y0, layout.nx)[:, x0:x1].astype(np.float64)
        if layout.bzero:
            data += layout.bzero
        return data

    def iter_frames(self, *, rows: tuple[int, int] | None = None, cols: tuple[int, int] | None = None,
                    progress: bool = False, desc: str | None = None) -> Iterator[np.ndarray]:
        """Yield every frame (or its rectangle) in order, float64 adu, with an optional tqdm bar."""
        for i in tqdm(range(self.stack.n_frames), desc=desc, disable=not progress, unit="frame"):
            yield self.read_frame(i, rows=rows, cols=cols)
