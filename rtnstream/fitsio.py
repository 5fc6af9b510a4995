"""FITS frames in and out, one frame at a time: stacks larger than memory stream through.

:class:`FrameSource` opens a FITS file holding one 2-D frame or one 3-D stack (the first HDU with image
data) and reads frame ``i`` through astropy's ``section`` (only that plane is read, BZERO/BSCALE applied,
so unsigned integers come back as ``uint16`` / ``uint32``). :class:`FrameSink` writes frames one at a time
with the on-disk conventions of FITS (BZERO for unsigned integers) and lets a few header values be
filled in once the data are written (counts known only at the end).

:func:`write_frame_file` writes one corrected 2-D frame atomically with the layout of its input file (the
same HDUs, EXTNAMEs, headers and tile compression) plus the :func:`extension_hdus` products; it is the one
writer of offline correction, the Python API's files and the live FITS sink.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
from astropy.io import fits

from rtnstream.kernels.exceptions import FrameError

try:  # a corrupt tile-compressed image raises this plain Exception subclass of astropy's C extension
    from astropy.io.fits.hdu.compressed._compression import CfitsioException as _TileError
except ImportError:  # another astropy layout: its errors are among the ones caught anyway
    _TileError = OSError
_READ_ERRORS = (OSError, ValueError, TypeError, IndexError, _TileError)

log = logging.getLogger(__name__)

__all__ = ["FrameSource", "FrameSink", "merged_header", "image_hdu_index", "check_complete", "read_image",
           "extension_hdus", "write_atomic", "write_frame_file", "apply_cards",
           "header_from_meta"]

# numpy dtype -> (BITPIX, BZERO, on-disk big-endian dtype)
_DISK = {
    np.dtype("uint8"): (8, None, ">u1"),
    np.dtype("int16"): (16, None, ">i2"),
    np.dtype("uint16"): (16, 32768, ">i2"),
    np.dtype("int32"): (32, None, ">i4"),
    np.dtype("uint32"): (32, 2147483648, ">i4"),
    np.dtype("float32"): (-32, None, ">f4"),
    np.dtype("float64"): (-64, None, ">f8"),
}
_STRUCTURAL = {"SIMPLE", "XTENSION", "BITPIX", "NAXIS", "EXTEND", "PCOUNT", "GCOUNT", "BZERO", "BSCALE",
               "CHECKSUM", "DATASUM", "EXTNAME", "END"}


class FrameSource:
    """Frames of one FITS file (a 2-D frame or a 3-D stack), read lazily.

    Parameters
    ----------
    path : path-like

    Attributes
    ----------
    path : pathlib.Path
    n_frames : int
    shape : (ny, nx)
    dtype : numpy.dtype
        Dtype of the frames as read (BZERO applied: unsigned integers for BZERO-shifted data).
    header : astropy.io.fits.Header
        Primary header merged with the image HDU's (non-structural cards).

    Raises
    ------
    FrameError
        Not a FITS file, no image data, or an image that is not 2-D or 3-D.
    """

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        try:
            self._hdul = fits.open(self.path, memmap=False, lazy_load_hdus=False)
        except FileNotFoundError:
            raise FrameError(f"{self.path}: no such file") from None
        except (OSError, ValueError, TypeError) as exc:
            raise FrameError(f"{self.path}: not a readable FITS file ({exc})") from exc
        try:
            self._hdu = next((h for h in self._hdul if h.is_image and h.header.get("NAXIS", 0) > 0), None)
            if self._hdu is None:
                raise FrameError(f"{self.path}: no image data in any HDU")
            naxis = [self._hdu.header[f"NAXIS{k}"] for k in range(self._hdu.header["NAXIS"], 0, -1)]
            if len(naxis) not in (2, 3):
                raise FrameError(f"{self.path}: image has {len(naxis)} axes; expected a 2-D frame or 3-D stack")
            self.shape: tuple[int, int] = (int(naxis[-2]), int(naxis[-1]))
            self.n_frames = int(naxis[0]) if len(naxis) == 3 else 1
            self.is_stack = len(naxis) == 3
            self.dtype = np.dtype(self._read(0).dtype).newbyteorder("=")
            self.header = merged_header(self._hdul[0].header, self._hdu.header)
        except FrameError:
            self._hdul.close()
            raise
        except (OSError, ValueError, TypeError, KeyError, IndexError) as exc:
            self._hdul.close()
            raise FrameError(f"{self.path}: corrupt FITS data ({exc})") from exc

    def _read(self, i: int) -> np.ndarray:
        return self._hdu.section[i] if self.is_stack else self._hdu.section[:, :]

    def read(self, i: int) -> np.ndarray:
        """Frame ``i`` as a (ny, nx) array in native byte order.

        Raises
        ------
        FrameError
            The file is truncated or unreadable at that frame.
        """
        if not 0 <= i < self.n_frames:
            raise IndexError(f"{self.path}: frame {i} out of range 0..{self.n_frames - 1}")
        try:
            frame = np.asarray(self._read(i))
        except (OSError, ValueError, TypeError) as exc:
            raise FrameError(f"{self.path}: cannot read frame {i} ({exc})") from exc
        if frame.shape != self.shape:
            raise FrameError(f"{self.path}: frame {i} truncated (got shape {frame.shape})")
        return frame.astype(frame.dtype.newbyteorder("="), copy=False)

    def close(self) -> None:
        self._hdul.close()

    def __enter__(self) -> FrameSource:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class FrameSink:
    """Write ``n_frames`` frames of one shape and dtype to a new FITS file, one at a time.

    Parameters
    ----------
    path : path-like
        Output file (overwritten).
    shape : (ny, nx)
    dtype : numpy.dtype
        One of uint8, int16, uint16, int32, uint32, float32, float64.
    n_frames : int
        1 writes a 2-D image, more a 3-D stack (n_frames, ny, nx).
    header : astropy.io.fits.Header, optional
        Non-structural cards to copy (plus the RTN keys, which can be updated by :meth:`update_cards`).
    stack : bool, optional
        Write a 3-D stack even for one frame (default: ``n_frames > 1``).
    extname : str, optional
        Append the frames as image extension ``extname`` to the existing file ``path`` instead of
        writing a new file (:meth:`update_cards` is for a new file's primary header only).
    """

    def __init__(self, path: str | os.PathLike, shape: tuple[int, int], dtype: np.dtype, n_frames: int,
                 header: fits.Header | None = None, stack: bool | None = None, extname: str | None = None) -> None:
        dtype = np.dtype(dtype).newbyteorder("=")
        if dtype not in _DISK:
            raise FrameError(f"cannot write dtype {dtype} to FITS")
        self.path = Path(path)
        self.dtype = dtype
        self.n_frames = n_frames
        self.shape = tuple(shape)
        bitpix, bzero, self._disk = _DISK[dtype]
        hdr = fits.Header()
        hdr["SIMPLE"] = True
        hdr["BITPIX"] = bitpix
        stack = n_frames > 1 if stack is None else stack
        dims = [shape[1], shape[0]] + ([n_frames] if stack else [])
        hdr["NAXIS"] = len(dims)
        for k, n in enumerate(dims, start=1):
            hdr[f"NAXIS{k}"] = n
        if extname is None:
            hdr["EXTEND"] = True
        if bzero is not None:
            hdr["BZERO"] = bzero
            hdr["BSCALE"] = 1
        if extname is not None:
            hdr["EXTNAME"] = extname
        for card in (header or fits.Header()).cards:
            if card.keyword not in _STRUCTURAL and not card.keyword.startswith("NAXIS"):
                hdr.append(card, end=True)
        self._header = hdr
        if extname is None:
            self.path.unlink(missing_ok=True)  # StreamingHDU appends to an existing file
        self._hdu = fits.StreamingHDU(self.path, hdr)
        self.written = 0

    def write(self, frame: np.ndarray) -> None:
        """Append one (ny, nx) frame of the sink's dtype."""
        if frame.shape != self.shape or frame.dtype.newbyteorder("=") != self.dtype:
            raise FrameError(f"{self.path}: frame {frame.shape} {frame.dtype} does not fit "
                             f"{self.shape} {self.dtype}")
        if self.dtype == np.uint16:
            disk = (frame ^ np.uint16(0x8000)).view(np.int16)
        elif self.dtype == np.uint32:
            disk = (frame ^ np.uint32(0x80000000)).view(np.int32)
        else:
            disk = frame
        self._hdu.write(np.ascontiguousarray(disk, dtype=self._disk))
        self.written += 1

    def close(self) -> None:
        """Close the file (it must hold all ``n_frames`` frames)."""
        self._hdu.close()
        if self.written != self.n_frames:
            raise FrameError(f"{self.path}: closed after {self.written} of {self.n_frames} frames")

    def abort(self) -> None:
        """Close the file without checking the frame count and remove it (an output that will not be finished)."""
        self._hdu.close()
        self.path.unlink(missing_ok=True)

    def update_cards(self, values: dict[str, object]) -> None:
        """Overwrite header cards already present (same keyword) in place, after the data are written.

        Each card keeps its 80-character slot, so the data do not move.
        """
        with open(self.path, "r+b") as fh:
            head = fh.read(2880 * max(1, (len(self._header) * 80 + 80 + 2879) // 2880))
            for key, value in values.items():
                old = self._header.cards[key]
                new = fits.Card(key, value, old.comment).image
                pos = head.find(old.image.encode("ascii"))
                if pos < 0 or pos % 80:
                    raise KeyError(f"{self.path}: header card {key} not found for update")
                fh.seek(pos)
                fh.write(new.encode("ascii"))
                self._header[key] = value


def merged_header(primary: fits.Header, image: fits.Header) -> fits.Header:
    """Non-structural cards of the primary header followed by the image HDU's (once if they are the same)."""
    merged = fits.Header()
    for hdr in {id(h): h for h in (primary, image)}.values():
        for card in hdr.cards:
            if card.keyword not in _STRUCTURAL and not card.keyword.startswith("NAXIS"):
                merged.append(card, end=True)
    return merged


def image_hdu_index(hdul: fits.HDUList) -> int | None:
    """Index of the first HDU holding image data (a compressed image counts), or None."""
    for k, hdu in enumerate(hdul):
        if hdu.is_image and hdu.header.get("NAXIS", 0) > 0:
            return k
    return None


def check_complete(path: Path, hdul: fits.HDUList) -> None:
    """Raise :class:`FrameError` if the file ends before the data of one of its HDUs does.

    ``hdul`` must have read every header (``lazy_load_hdus=False``).
    """
    size = path.stat().st_size
    for k, hdu in enumerate(hdul):
        info = hdul.fileinfo(k)
        end = info["datLoc"] + hdu._data_size  # astropy's own truncation test uses the same numbers
        if end > size:
            raise FrameError(f"{path}: truncated: HDU {k} needs {end} bytes, the file has {size}")


def read_image(path: str | os.PathLike, index: int) -> np.ndarray:
    """The data of HDU ``index`` of ``path`` (BZERO/BSCALE applied, native byte order); the file is closed after.

    Raises
    ------
    FrameError
        The file cannot be read.
    """
    path = Path(path)
    try:
        with fits.open(path, memmap=False) as hdul:
            data = np.asarray(hdul[index].data)
    except _READ_ERRORS as exc:
        raise FrameError(f"{path}: cannot read the image data ({exc})") from exc
    return data.astype(data.dtype.newbyteorder("="), copy=False)


def _image_like(hdu, data: np.ndarray, header: fits.Header):
    """An HDU of the same kind as ``hdu`` (primary, extension or tile-compressed, same compression) with ``data``."""
    if isinstance(hdu, fits.CompImageHDU):
        return fits.CompImageHDU(data, header=header, name=hdu.name, compression_type=hdu.compression_type,
                                 tile_shape=tuple(int(n) for n in hdu.tile_shape),
                                 quantize_level=hdu.quantize_level, quantize_method=hdu.quantize_method,
                                 dither_seed=hdu.dither_seed)
    if isinstance(hdu, fits.PrimaryHDU):
        return fits.PrimaryHDU(data, header=header)
    return fits.ImageHDU(data, header=header, name=hdu.name)


def extension_hdus(dq: np.ndarray | None, uncertainty: np.ndarray | None, mask: np.ndarray | None,
                   dq_cards: dict[str, tuple[int, str]], compressed: bool) -> list:
    """The ``DQ`` (uint16, RICE tile-compressed), ``UNCERT`` (float32 adu, StdDevUncertainty as CCDData
    reads it; RICE-compressed with quantization when the image is compressed) and ``MASK`` (uint8)
    extensions, for those given."""
    hdus = []
    if dq is not None:
        hdu = fits.CompImageHDU(dq.astype(np.uint16), name="DQ", compression_type="RICE_1")
        for key, (bit, label) in dq_cards.items():
            hdu.header[key] = (bit, label[:47])
        hdus.append(hdu)
    if uncertainty is not None:
        data = uncertainty.astype(np.float32)
        hdu = (fits.CompImageHDU(data, name="UNCERT", compression_type="RICE_1", quantize_level=64.0)
               if compressed else fits.ImageHDU(data, name="UNCERT"))
        hdu.header["BUNIT"] = ("adu", "unit of the uncertainty")
        hdu.header["UTYPE"] = ("StdDevUncertainty", "astropy uncertainty class")
        hdus.append(hdu)
    if mask is not None:
        hdu = fits.ImageHDU(mask.astype(np.uint8), name="MASK")
        hdu.header["COMMENT"] = "1: RTN jump found in this frame and left in place (masking mode)"
        hdus.append(hdu)
    return hdus


def write_atomic(hdul: fits.HDUList, path: Path, checksum: bool = False) -> Path:
    """Write ``hdul`` to a hidden temporary name beside ``path``, then rename it to ``path``.

    A failure leaves no file under ``path`` (nor the temporary one): a half-written file never carries
    the final name.
    """
    tmp = path.with_name(f".{path.name}.{os.getpid()}.part")
    try:
        hdul.writeto(tmp, overwrite=True, checksum=checksum)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def write_frame_file(path: str | os.PathLike, data: np.ndarray, cards: fits.Header, *,
                     like: str | os.PathLike | None = None, like_index: int = 0, extensions: list = ()) -> Path:
    """Write one 2-D frame, atomically, keeping the layout of the input file ``like``.

    Parameters
    ----------
    path : path-like
        The output file.
    data : numpy.ndarray, shape (ny, nx)
        The frame's pixels.
    cards : astropy.io.fits.Header
        Cards set on the image HDU's header (added, or replacing a card of the same keyword; HISTORY and
        COMMENT cards are appended).
    like : path-like, optional
        The input file: every HDU is copied as it is (the same order, EXTNAMEs, headers and tile
        compression) except HDU ``like_index``, whose data become ``data``. Without it the output is one
        primary HDU holding ``data`` and ``cards``.
    extensions : list of HDU
        Appended after the input's HDUs (:func:`extension_hdus`).

    Raises
    ------
    FrameError
        The input file cannot be read.
    """
    path = Path(path)
    if like is None:
        return write_atomic(fits.HDUList([fits.PrimaryHDU(data, header=apply_cards(fits.Header(), cards)),
                                          *extensions]), path)
    like = Path(like)
    try:
        with fits.open(like, memmap=False) as src:
            out = []
            for k, hdu in enumerate(src):
                if k == like_index:
                    out.append(_image_like(hdu, data, apply_cards(hdu.header.copy(), cards)))
                else:
                    hdu.data  # noqa: B018 - load it before the source closes
                    out.append(hdu)
            checksum = any("CHECKSUM" in h.header for h in src)
            return write_atomic(fits.HDUList([*out, *extensions]), path, checksum=checksum)
    except _READ_ERRORS as exc:
        raise FrameError(f"{like}: cannot copy the layout ({exc})") from exc


def apply_cards(header: fits.Header, cards: fits.Header) -> fits.Header:
    """Set ``cards`` on ``header`` (in place; returned): a keyword replaces its card, HISTORY / COMMENT append."""
    for card in cards.cards:
        if card.keyword in ("HISTORY", "COMMENT", ""):
            header.append(card, end=True)
        else:
            header[card.keyword] = (card.value, card.comment)
    return header


def header_from_meta(meta: dict) -> fits.Header:
    """A dict of header values (a live frame's ``meta``, a CCDData's ``meta``) as FITS cards.

    Scalars go under their key (HIERARCH beyond 8 characters or with spaces), HISTORY / COMMENT take a
    string or a list of strings; values FITS cannot hold (nested objects, structural keywords) are left out.
    """
    hdr = fits.Header()
    for key, value in meta.items():
        key = str(key).upper()
        values = value if isinstance(value, list) else [value]
        if key in ("HISTORY", "COMMENT"):
            for text in values:
                hdr.append((key, str(text)), end=True)
        elif isinstance(value, str | int | float | bool) and key not in ("SIMPLE", "BITPIX", "EXTEND", "END"):
            if len(key) > 8 or " " in key:
                key = f"HIERARCH {key}"
            try:
                hdr[key] = value
            except ValueError:
                log.debug("meta %r = %r is not a FITS card; left out", key, value)
    return hdr
