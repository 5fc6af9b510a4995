"""Small PNG pictures for the dashboard: the last corrected frame, where corrections happen, bias offset maps.

Every picture is at most ``max_side`` pixels on its longer side: a frame is subsampled (every k-th pixel),
a map of RTN pixels (sparse) is binned in k x k blocks so that no pixel is lost. PNGs are written here with
:mod:`zlib` (8-bit grey or RGB, no extra package).
"""

from __future__ import annotations

import struct
import zlib

import numpy as np

__all__ = ["encode_png", "frame_preview", "corrections_map", "offset_map", "MAX_SIDE"]

#: Largest side of a picture the dashboard may ask for, pixels.
MAX_SIDE = 2048


def encode_png(pixels: np.ndarray) -> bytes:
    """PNG bytes of an 8-bit picture.

    Parameters
    ----------
    pixels : numpy.ndarray, shape (h, w) or (h, w, 3), uint8
        Grey levels or RGB.

    Raises
    ------
    ValueError
        Not uint8, or not of one of those shapes.
    """
    if pixels.dtype != np.uint8 or pixels.ndim not in (2, 3) or (pixels.ndim == 3 and pixels.shape[2] != 3):
        raise ValueError(f"pixels must be (h, w) or (h, w, 3) uint8, got {pixels.shape} {pixels.dtype}")
    h, w = pixels.shape[:2]
    color_type = 0 if pixels.ndim == 2 else 2
    rows = np.hstack([np.zeros((h, 1), np.uint8), np.ascontiguousarray(pixels).reshape(h, -1)])  # filter 0

    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data))

    header = struct.pack(">IIBBBBB", w, h, 8, color_type, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows.tobytes(), 6))
            + chunk(b"IEND", b""))


def _step(shape: tuple[int, int], max_side: int) -> int:
    """Subsampling / binning factor that brings ``shape`` to at most ``max_side`` on its longer side."""
    return max(1, -(-max(shape) // max_side))


def frame_preview(frame: np.ndarray, max_side: int = 512) -> np.ndarray:
    """A frame subsampled to at most ``max_side`` pixels a side and stretched to 8 bits.

    Parameters
    ----------
    frame : numpy.ndarray, shape (ny, nx), any real dtype, adu
    max_side : int >= 1

    Returns
    -------
    numpy.ndarray, shape (ceil(ny / k), ceil(nx / k)), uint8
        Linear between the 0.5 and 99.5 percentiles of the subsampled frame (black and white).
    """
    k = _step(frame.shape, max_side)
    small = np.asarray(frame[::k, ::k], dtype=np.float64)
    lo, hi = np.percentile(small, (0.5, 99.5))
    scaled = (small - lo) / (hi - lo) if hi > lo else np.zeros_like(small)
    return (np.clip(scaled, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


def _binned(shape: tuple[int, int], index: np.ndarray, values: np.ndarray, max_side: int) -> np.ndarray:
    """Sum of ``values`` at flat pixel indices ``index`` of a ``shape`` frame in k x k blocks."""
    k = _step(shape, max_side)
    ny, nx = shape
    by, bx = -(-ny // k), -(-nx // k)
    rows, cols = np.divmod(index, nx)
    blocks = (rows // k) * bx + cols // k  # the block of each pixel
    return np.bincount(blocks, weights=values, minlength=by * bx).reshape(by, bx)


def corrections_map(shape: tuple[int, int], index: np.ndarray, n_corrected: np.ndarray,
                    max_side: int = 512) -> np.ndarray:
    """Where corrections happen: corrections per block on a logarithmic black-red-yellow-white scale.

    Parameters
    ----------
    shape : (ny, nx)
        The frame's shape, pixels.
    index : numpy.ndarray, shape (n,), int
        Flat indices of the RTN pixels.
    n_corrected : numpy.ndarray, shape (n,), int
        Corrections (low + high) of each RTN pixel in the current series.
    max_side : int >= 1

    Returns
    -------
    numpy.ndarray, shape (by, bx, 3), uint8
        Black where nothing was corrected, white at the block with the most corrections.
    """
    counts = _binned(shape, index, n_corrected.astype(np.float64), max_side)
    top = counts.max()
    level = np.log1p(counts) / np.log1p(top) if top > 0 else np.zeros_like(counts)
    rgb = np.stack([np.clip(3 * level, 0, 1), np.clip(3 * level - 1, 0, 1), np.clip(3 * level - 2, 0, 1)], -1)
    return (rgb * 255.0 + 0.5).astype(np.uint8)


def offset_map(offset_adu: np.ndarray, max_side: int = 512) -> np.ndarray:
    """A bias offset map on a diverging scale: blue below zero, white at zero, red above.

    Parameters
    ----------
    offset_adu : numpy.ndarray, shape (ny, nx), float, adu
        Zero outside RTN pixels.
    max_side : int >= 1

    Returns
    -------
    numpy.ndarray, shape (by, bx, 3), uint8
        Each k x k block shows the sum of its offsets; full colour at the largest magnitude.
    """
    flat = np.asarray(offset_adu, dtype=np.float64).reshape(-1)
    index = np.flatnonzero(np.isfinite(flat) & (flat != 0))
    summed = _binned(offset_adu.shape, index, flat[index], max_side)
    top = np.abs(summed).max()
    v = summed / top if top > 0 else np.zeros_like(summed)
    fade = 1.0 - np.abs(v)  # white at 0
    rgb = np.stack([np.where(v < 0, fade, 1.0), fade, np.where(v > 0, fade, 1.0)], -1)
    return (rgb * 255.0 + 0.5).astype(np.uint8)
