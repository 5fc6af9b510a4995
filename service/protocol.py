"""Wire protocol ``rtnstream/1``: encode and decode the multipart ZeroMQ messages (docs/protocol.md).

Both sides use this module: the service's ingest and publish stages and the clients (camera simulator,
FITS replay, sink, tests). A message is a list of parts: part 0 a UTF-8 JSON header, part 1 (frames only)
the raw pixels in C order. :func:`decode` validates everything that can be checked without knowing the
job (JSON, protocol version, kind, fields, dtype, number of parts, byte count) and raises
:class:`ProtocolError` with a short machine-readable ``reason``; the pipeline adds the checks that need the
job (shape of the cube, series state).
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Literal

import numpy as np

from rtnstream.kernels.engine import SUPPORTED_DTYPES, EngineSettings
from rtnstream.kernels.exceptions import RTNStreamError
from rtnstream.kernels.numpy_backend import FrameCounts

__all__ = [
    "PROTO",
    "KINDS",
    "MAX_SERIES_CHARS",
    "REJECT_REASONS",
    "Header",
    "RTNInfo",
    "ProtocolError",
    "encode",
    "decode",
    "frame_header",
]

PROTO = "rtnstream/1"
KINDS = ("start", "frame", "end")
MAX_SERIES_CHARS = 128
Kind = Literal["start", "frame", "end"]

#: Every reason a message can be rejected for, with its meaning (the pipeline adds the last four).
REJECT_REASONS: dict[str, str] = {
    "parts": "wrong number of message parts (header only for start/end, header + pixels for frames)",
    "json": "part 0 is not a UTF-8 JSON object",
    "proto": "missing or unknown protocol version",
    "header": "a header field is missing or has the wrong type or value",
    "dtype": "unsupported pixel dtype, or a dtype differing from the series' first frame",
    "bytes": "pixel part size differs from shape x itemsize",
    "shape": "frame shape differs from the job's RTN cube",
    "no_series": "frame or end without an open series (no start, or another series' id)",
    "engine": "the correction engine failed on the frame (see the log for the frame id)",
}


class ProtocolError(RTNStreamError, ValueError):
    """A message that does not follow ``rtnstream/1``; ``reason`` is a key of :data:`REJECT_REASONS`."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True)
class RTNInfo:
    """What the service did to an output frame (the header's ``rtn`` object).

    Attributes
    ----------
    reference : {'temporal', 'causal', 'spatial'}
    window : int
        Temporal window W, frames.
    alpha : float
        Significance of the jump test.
    k_var : float
        Variability veto factor (temporal references).
    spatial_size : int
        Side of the spatial neighbourhood, pixels (spatial reference).
    cube : str
        Id of the RTN cube used.
    low, high, vetoed, out_of_table : int
        RTN pixels corrected down-jump / up-jump, vetoed as variable, outside the threshold table.
    corrected : bool
        False when the frame went out unchanged (series shorter than W + 1, or overload passthrough).
    overload : {'passthrough'} or None
        Set when the frame bypassed the engine because the pipeline was behind.
    """

    reference: str
    window: int
    alpha: float
    k_var: float
    spatial_size: int
    cube: str
    low: int = 0
    high: int = 0
    vetoed: int = 0
    out_of_table: int = 0
    corrected: bool = True
    overload: str | None = None

    def engine_settings(self) -> EngineSettings:
        """The engine settings the frame was corrected with."""
        return EngineSettings(reference=self.reference, window=self.window, spatial_size=self.spatial_size,
                              alpha=self.alpha, k_var=self.k_var)

    def counts(self) -> FrameCounts:
        """The frame's corrections as the engine reports them."""
        return FrameCounts(self.low, self.high, self.vetoed, self.out_of_table)


@dataclass(frozen=True)
class Header:
    """Header of one message (part 0).

    Attributes
    ----------
    kind : {'start', 'frame', 'end'}
    camera : str
    series : str
        Unique id of the series (1 to 128 characters).
    seq : int
        Frame number in the series, from 0 (frames; optional on start / end).
    shape : (ny, nx) or None
        Frame shape, pixels (required on frames, optional on start).
    dtype : str or None
        NumPy dtype string such as ``"<u2"`` (required on frames, optional on start).
    exptime : float or None
        Exposure time, s.
    timestamp : str or float or None
        UTC, ISO 8601 string or unix seconds.
    meta : dict
        FITS-style key/values passed through unchanged.
    rtn : RTNInfo or None
        Output frames only.
    proto : str
        Always :data:`PROTO`.
    """

    kind: Kind
    camera: str
    series: str
    seq: int | None = None
    shape: tuple[int, int] | None = None
    dtype: str | None = None
    exptime: float | None = None
    timestamp: str | float | None = None
    meta: dict[str, Any] = field(default_factory=dict)
    rtn: RTNInfo | None = None
    proto: str = PROTO

    def to_json(self) -> bytes:
        """Part 0 of the message: the header as UTF-8 JSON (``rtn`` left out when None)."""
        d = asdict(self)
        if d["rtn"] is None:
            del d["rtn"]
        if d["shape"] is not None:
            d["shape"] = list(d["shape"])
        return json.dumps(d, separators=(",", ":")).encode()

    def with_rtn(self, rtn: RTNInfo, dtype: np.dtype | None = None) -> Header:
        """A copy carrying ``rtn`` (and the output ``dtype`` when given)."""
        return replace(self, rtn=rtn, dtype=np.dtype(dtype).str if dtype is not None else self.dtype)


def frame_header(camera: str, series: str, seq: int, data: np.ndarray, exptime: float | None = None,
                 timestamp: str | float | None = None, meta: dict[str, Any] | None = None) -> Header:
    """The header of a frame message carrying ``data`` (shape (ny, nx))."""
    return Header("frame", camera, series, seq, (int(data.shape[0]), int(data.shape[1])), data.dtype.str,
                  exptime, timestamp, dict(meta or {}))


def encode(header: Header, data: np.ndarray | None = None) -> list[Any]:
    """The parts of a message: ``[header JSON]`` or ``[header JSON, pixels]`` (pixels C order, no copy).

    Raises
    ------
    ValueError
        ``data`` given for start / end, missing for a frame, or differing from the header's shape / dtype.
    """
    if header.kind != "frame":
        if data is not None:
            raise ValueError(f"a {header.kind!r} message carries no pixels; data must be None")
        return [header.to_json()]
    if data is None:
        raise ValueError("a 'frame' message needs its pixels; data must be an array")
    if tuple(data.shape) != tuple(header.shape or ()) or data.dtype.str != header.dtype:
        raise ValueError(f"data has shape {data.shape} and dtype {data.dtype.str}, the header says "
                         f"{header.shape} and {header.dtype}")
    return [header.to_json(), np.ascontiguousarray(data)]


def _field(d: dict, name: str, types: tuple[type, ...], required: bool) -> Any:
    value = d.get(name)
    if value is None:
        if required:
            raise ProtocolError("header", f"header field {name!r} is missing")
        return None
    if isinstance(value, bool) or not isinstance(value, types):
        names = " or ".join(t.__name__ for t in types)
        raise ProtocolError("header", f"header field {name!r} must be {names}, got {type(value).__name__}")
    return value


def _parse_dtype(text: str) -> np.dtype:
    try:
        dtype = np.dtype(text)
    except (TypeError, ValueError, SyntaxError):  # numpy parses some strings as structured dtypes
        raise ProtocolError("dtype", f"header field 'dtype' {text!r} is not a numpy dtype string") from None
    if dtype.newbyteorder("=") not in SUPPORTED_DTYPES:
        supported = ", ".join(d.str for d in SUPPORTED_DTYPES)
        raise ProtocolError("dtype", f"dtype {text!r} is not supported; supported: {supported}")
    return dtype


def _parse_header(raw: bytes | memoryview) -> Header:
    try:
        d = json.loads(bytes(raw).decode("utf-8"))
    except (ValueError, RecursionError) as exc:  # bad UTF-8 or JSON, huge integers, deep nesting
        raise ProtocolError("json", f"header is not UTF-8 JSON ({str(exc)[:200]})") from None
    if not isinstance(d, dict):
        raise ProtocolError("json", f"header must be a JSON object, got {type(d).__name__}")
    proto = d.get("proto")
    if proto != PROTO:
        raise ProtocolError("proto", f"header field 'proto' is {proto!r}, this service speaks {PROTO!r}")
    kind = d.get("kind")
    if kind not in KINDS:
        raise ProtocolError("header", f"header field 'kind' must be one of {KINDS}, got {kind!r}")
    is_frame = kind == "frame"
    camera = _field(d, "camera", (str,), True)
    series = _field(d, "series", (str,), True)
    if not 0 < len(series) <= MAX_SERIES_CHARS:
        raise ProtocolError("header", f"header field 'series' must have 1 to {MAX_SERIES_CHARS} characters")
    seq = _field(d, "seq", (int,), is_frame)
    if seq is not None and seq < 0:
        raise ProtocolError("header", f"header field 'seq' must be >= 0, got {seq}")
    shape = _field(d, "shape", (list,), is_frame)
    if shape is not None:
        if len(shape) != 2 or not all(type(n) is int and n > 0 for n in shape):
            raise ProtocolError("header",
                                f"header field 'shape' must be [ny, nx] positive integers, got {shape}")
        shape = (shape[0], shape[1])
    dtype = _field(d, "dtype", (str,), is_frame)
    if dtype is not None:
        dtype = _parse_dtype(dtype).str
    exptime = _field(d, "exptime", (int, float), False)
    if exptime is not None and not (math.isfinite(exptime) and exptime >= 0):
        raise ProtocolError("header",
                            f"header field 'exptime' must be a finite number >= 0 (s), got {exptime}")
    timestamp = _field(d, "timestamp", (str, int, float), False)
    meta = _field(d, "meta", (dict,), False) or {}
    rtn = _field(d, "rtn", (dict,), False)
    try:
        rtn_info = RTNInfo(**rtn) if rtn is not None else None
    except TypeError as exc:
        raise ProtocolError("header", f"header field 'rtn' is malformed ({exc})") from None
    return Header(kind, camera, series, seq, shape, dtype, exptime, timestamp, meta, rtn_info)


def decode(parts: list[Any]) -> tuple[Header, np.ndarray | None]:
    """Parse and validate a received message.

    Parameters
    ----------
    parts : list of bytes, memoryview or zmq.Frame
        The message parts (``recv_multipart(copy=False)`` frames are read without a copy).

    Returns
    -------
    header : Header
    data : numpy.ndarray, shape (ny, nx), header dtype, read-only, or None
        The pixels, a view on the received buffer (no copy); None for start / end.

    Raises
    ------
    ProtocolError
        With ``reason`` in ``parts``, ``json``, ``proto``, ``header``, ``dtype``, ``bytes``.
    """
    if not parts:
        raise ProtocolError("parts", "empty message")
    buffers = [getattr(p, "buffer", p) for p in parts]
    header = _parse_header(buffers[0])
    expected = 2 if header.kind == "frame" else 1
    if len(parts) != expected:
        raise ProtocolError("parts", f"a {header.kind!r} message has {expected} part(s), got {len(parts)}")
    if header.kind != "frame":
        return header, None
    dtype = np.dtype(header.dtype)
    ny, nx = header.shape
    want = ny * nx * dtype.itemsize
    got = memoryview(buffers[1]).nbytes
    if got != want:
        raise ProtocolError("bytes", f"frame {header.series}#{header.seq}: pixel part has {got} bytes, shape "
                                     f"{[ny, nx]} of {dtype.str} needs {want}")
    return header, np.frombuffer(buffers[1], dtype=dtype).reshape(ny, nx)
