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
from dataclasses import MISSING, asdict, dataclass, field, fields, replace
from datetime import UTC, datetime
from typing import Any, Literal

import numpy as np

from rtnstream.kernels.engine import SUPPORTED_DTYPES, EngineSettings
from rtnstream.kernels.exceptions import RTNStreamError
from rtnstream.kernels.numpy_backend import FrameCounts

__all__ = [
    "PROTO",
    "KINDS",
    "MAX_SERIES_CHARS",
    "MAX_CAMERA_CHARS",
    "MAX_HEADER_BYTES",
    "MAX_META_DEPTH",
    "MAX_META_VALUES",
    "MAX_SIDE",
    "DTYPE_STRINGS",
    "REJECT_REASONS",
    "Header",
    "RTNInfo",
    "ProtocolError",
    "encode",
    "decode",
    "decode_output",
    "writable_pixels",
    "frame_header",
    "unix_time",
    "delivery_part",
    "parse_delivery",
    "encode_credit",
    "decode_credit",
]

PROTO = "rtnstream/1"
KINDS = ("start", "frame", "end")
MAX_SERIES_CHARS = 128
MAX_CAMERA_CHARS = 128
#: Largest header (part 0) decoded, bytes: room for every card of a large FITS header in ``meta``.
MAX_HEADER_BYTES = 256 * 1024
MAX_META_DEPTH = 8
MAX_META_VALUES = 10_000
#: Largest frame side, pixels.
MAX_SIDE = 1 << 17
MAX_EXPTIME_S = 1e7
MAX_TIMESTAMP_CHARS = 64
MAX_UNIX_S = 1e11
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
#: The dtype strings a header may carry (both byte orders of every supported dtype, and the NumPy names of
#: the native ones), each mapped to its canonical form. Checked before NumPy ever parses the string.
DTYPE_STRINGS: dict[str, str] = {
    **{d.name: d.str for d in SUPPORTED_DTYPES},
    **{d.newbyteorder(order).str: d.newbyteorder(order).str for d in SUPPORTED_DTYPES for order in "<>"},
}
Kind = Literal["start", "frame", "end"]

#: Every reason a message can be rejected for, with its meaning (the pipeline adds the last six).
REJECT_REASONS: dict[str, str] = {
    "parts": "wrong number of message parts (header only for start/end, header + pixels for frames)",
    "size": f"header larger than {MAX_HEADER_BYTES} bytes",
    "json": "part 0 is not a UTF-8 JSON object (NaN and Infinity are not JSON)",
    "proto": "missing or unknown protocol version",
    "header": "a header field is missing or has the wrong type or value",
    "dtype": "unsupported pixel dtype, or a dtype differing from the series' first frame",
    "bytes": "pixel part size differs from shape x itemsize",
    "shape": "frame shape differs from the job's RTN cube",
    "camera": "the message's camera differs from the job's",
    "no_series": "frame or end without an open series (no start, or another series' id)",
    "engine": "the correction engine failed on the frame (see the log for the frame id)",
    "output": "the corrected frame could not be encoded for output (see the log for the frame id)",
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
    states : bool
        True when the message carries a third part: the engine's decision for each RTN pixel of the cube
        (uint8, in the cube's pixel order; :data:`rtnstream.kernels.engine.STATE_LOW` etc.).
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
    states: bool = False

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
    timestamp_s : float or None
        ``timestamp`` as unix seconds (set by :func:`decode`; not sent).
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
    timestamp_s: float | None = field(default=None, compare=False, repr=False)

    def to_json(self) -> bytes:
        """Part 0 of the message: the header as UTF-8 JSON (``rtn`` left out when None)."""
        d = asdict(self)
        del d["timestamp_s"]
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
                  exptime, timestamp, dict(meta or {}), timestamp_s=unix_time(timestamp))


def encode(header: Header, data: np.ndarray | None = None, states: np.ndarray | None = None) -> list[Any]:
    """The parts of a message: ``[header JSON]`` or ``[header JSON, pixels]`` (pixels C order, no copy), and
    for an output frame whose ``rtn.states`` is set, ``states`` (uint8, one per RTN pixel) as a third part.

    Raises
    ------
    ValueError
        ``data`` given for start / end, missing for a frame, or differing from the header's shape / dtype;
        ``states`` given or missing against ``rtn.states``.
    """
    wants_states = header.rtn is not None and header.rtn.states
    if wants_states != (states is not None):
        raise ValueError("states must be given exactly when the header's rtn.states is set")
    if header.kind != "frame":
        if data is not None:
            raise ValueError(f"a {header.kind!r} message carries no pixels; data must be None")
        return [header.to_json()]
    if data is None:
        raise ValueError("a 'frame' message needs its pixels; data must be an array")
    if tuple(data.shape) != tuple(header.shape or ()) or data.dtype.str != header.dtype:
        raise ValueError(f"data has shape {data.shape} and dtype {data.dtype.str}, the header says "
                         f"{header.shape} and {header.dtype}")
    parts = [header.to_json(), np.ascontiguousarray(data)]
    return parts if states is None else [*parts, np.ascontiguousarray(states, dtype=np.uint8)]


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


def _int(d: dict, name: str, required: bool, lo: int = 0, hi: int = INT64_MAX) -> int | None:
    value = _field(d, name, (int,), required)
    if value is not None and not lo <= value <= hi:
        raise ProtocolError("header", f"header field {name!r} must be an integer in [{lo}, {hi}], got "
                                      f"{_short(value)}")
    return value


def _number(d: dict, name: str, lo: float, hi: float) -> float | None:
    """An optional number in [lo, hi] (integers of any size are compared exactly, never converted blindly)."""
    value = _field(d, name, (int, float), False)
    if value is None:
        return None
    if not (lo <= value <= hi):  # NaN fails this too; inf and huge integers are out of range
        raise ProtocolError("header", f"header field {name!r} must be a finite number in [{lo:g}, {hi:g}], "
                                      f"got {_short(value)}")
    return float(value)


def _short(value: Any) -> str:
    text = repr(value) if not isinstance(value, int) else (str(value) if abs(value) < 10**30 else
                                                           f"an integer of {len(str(abs(value)))} digits")
    return text if len(text) <= 60 else text[:57] + "..."


def unix_time(timestamp: str | float | None) -> float | None:
    """``timestamp`` (ISO 8601 string, UTC when no offset is given, or unix seconds) as unix seconds.

    Raises
    ------
    ProtocolError
        ``header``: not a timestamp, or outside years 1970-5138.
    """
    if timestamp is None:
        return None
    if isinstance(timestamp, str):
        if len(timestamp) > MAX_TIMESTAMP_CHARS:
            raise ProtocolError("header", f"header field 'timestamp' has more than {MAX_TIMESTAMP_CHARS} "
                                          "characters")
        try:
            t = datetime.fromisoformat(timestamp)
        except ValueError:
            raise ProtocolError("header", f"header field 'timestamp' {_short(timestamp)} is not ISO 8601 "
                                          "(e.g. 2026-03-01T21:04:22.117Z)") from None
        if t.tzinfo is None:
            t = t.replace(tzinfo=UTC)
        seconds = t.timestamp()
    else:
        seconds = timestamp
    if not 0 <= seconds <= MAX_UNIX_S:
        raise ProtocolError("header", f"header field 'timestamp' must be after 1970 and finite, got "
                                      f"{_short(timestamp)}")
    return float(seconds)


def _check_meta(meta: dict) -> None:
    """Bound ``meta``: depth, number of values, integers within int64 (it is passed through to FITS)."""
    stack: list[tuple[Any, int]] = [(meta, 1)]
    nodes = 0
    while stack:
        value, depth = stack.pop()
        nodes += 1
        if nodes > MAX_META_VALUES:
            raise ProtocolError("header", f"header field 'meta' has more than {MAX_META_VALUES} values")
        if isinstance(value, dict | list):
            if depth > MAX_META_DEPTH:
                raise ProtocolError("header", f"header field 'meta' is nested deeper than {MAX_META_DEPTH}")
            children = value.values() if isinstance(value, dict) else value
            stack.extend((v, depth + 1) for v in children)
        elif isinstance(value, int) and not isinstance(value, bool) and not INT64_MIN <= value <= INT64_MAX:
            raise ProtocolError("header", f"header field 'meta' holds {_short(value)}, beyond 64-bit integers")


def _rtn_info(rtn: dict) -> RTNInfo:
    known = {f.name: f for f in fields(RTNInfo)}
    unknown = sorted(set(rtn) - set(known))
    if unknown:
        raise ProtocolError("header", f"header field 'rtn' has unknown key(s) {', '.join(unknown)[:200]}")
    types = {"reference": (str,), "cube": (str,), "window": (int,), "spatial_size": (int,), "low": (int,),
             "high": (int,), "vetoed": (int,), "out_of_table": (int,), "alpha": (int, float),
             "k_var": (int, float), "overload": (str,)}
    for name, value in rtn.items():
        if name in ("corrected", "states"):
            if not isinstance(value, bool):
                raise ProtocolError("header", f"header field 'rtn.{name}' must be a boolean")
            continue
        _field(rtn, name, types[name], required=name in ("reference", "window", "alpha", "k_var",
                                                          "spatial_size", "cube"))
        if name in ("window", "spatial_size", "low", "high", "vetoed", "out_of_table"):
            _int(rtn, name, False)
        elif name in ("alpha", "k_var"):
            _number(rtn, name, 0.0, 1e6)
    missing = [n for n, f in known.items() if f.default is MISSING and n not in rtn]
    if missing:
        raise ProtocolError("header", f"header field 'rtn' lacks {', '.join(missing)}")
    return RTNInfo(**rtn)


def _reject_constant(name: str) -> None:
    raise ValueError(f"{name} is not a JSON number")


def _parse_header(raw: bytes | memoryview) -> Header:
    n_bytes = memoryview(raw).nbytes
    if n_bytes > MAX_HEADER_BYTES:
        raise ProtocolError("size", f"header has {n_bytes} bytes, at most {MAX_HEADER_BYTES} are read")
    try:
        d = json.loads(bytes(raw).decode("utf-8"), parse_constant=_reject_constant)
    except (ValueError, RecursionError) as exc:  # bad UTF-8 or JSON, NaN / Infinity, huge integers, nesting
        raise ProtocolError("json", f"header is not UTF-8 JSON ({str(exc)[:200]})") from None
    if not isinstance(d, dict):
        raise ProtocolError("json", f"header must be a JSON object, got {type(d).__name__}")
    proto = d.get("proto")
    if proto != PROTO:
        raise ProtocolError("proto", f"header field 'proto' is {_short(proto)}, this service speaks {PROTO!r}")
    kind = d.get("kind")
    if kind not in KINDS:
        raise ProtocolError("header", f"header field 'kind' must be one of {KINDS}, got {_short(kind)}")
    is_frame = kind == "frame"
    camera = _field(d, "camera", (str,), True)
    if not 0 < len(camera) <= MAX_CAMERA_CHARS:
        raise ProtocolError("header", f"header field 'camera' must have 1 to {MAX_CAMERA_CHARS} characters")
    series = _field(d, "series", (str,), True)
    if not 0 < len(series) <= MAX_SERIES_CHARS:
        raise ProtocolError("header", f"header field 'series' must have 1 to {MAX_SERIES_CHARS} characters")
    seq = _int(d, "seq", is_frame)
    shape = _field(d, "shape", (list,), is_frame)
    if shape is not None:
        if len(shape) != 2 or not all(type(n) is int and 0 < n <= MAX_SIDE for n in shape):
            raise ProtocolError("header", f"header field 'shape' must be [ny, nx], integers in [1, {MAX_SIDE}], "
                                          f"got {_short(shape)}")
        shape = (shape[0], shape[1])
    dtype = _field(d, "dtype", (str,), is_frame)
    if dtype is not None:
        if dtype not in DTYPE_STRINGS:
            raise ProtocolError("dtype", f"dtype {_short(dtype)} is not supported; supported: "
                                         f"{', '.join(sorted(set(DTYPE_STRINGS.values())))}")
        dtype = DTYPE_STRINGS[dtype]
    exptime = _number(d, "exptime", 0.0, MAX_EXPTIME_S)
    timestamp = _field(d, "timestamp", (str, int, float), False)
    timestamp_s = unix_time(timestamp)
    meta = _field(d, "meta", (dict,), False) or {}
    _check_meta(meta)
    rtn = _field(d, "rtn", (dict,), False)
    rtn_info = _rtn_info(rtn) if rtn is not None else None
    return Header(kind, camera, series, seq, shape, dtype, exptime, timestamp, meta, rtn_info,
                  timestamp_s=timestamp_s)


def decode(parts: list[Any], writable: bool = False) -> tuple[Header, np.ndarray | None]:
    """Parse and validate a received message (what producers send: a frame has exactly two parts).

    Parameters
    ----------
    parts : list of bytes, memoryview or zmq.Frame
        The message parts (``recv_multipart(copy=False)`` frames are read without a copy).
    writable : bool
        Return the pixels writable, still without a copy when part 1 is a received ``zmq.Frame`` (see
        :func:`writable_pixels`) or a writable buffer; a read-only buffer of another kind (``bytes``) is
        copied.

    Returns
    -------
    header : Header
    data : numpy.ndarray, shape (ny, nx), header dtype, or None
        The pixels, a view on the received buffer (no copy; read-only unless ``writable``); None for
        start / end.

    Raises
    ------
    ProtocolError
        With ``reason`` in ``parts``, ``size``, ``json``, ``proto``, ``header``, ``dtype``, ``bytes``.
    """
    header, data, _ = _decode(parts, output=False)
    if writable and data is not None and not data.flags.writeable:
        data = writable_pixels(parts[1], data)
    return header, data


class _ReceivedPixels:
    """Owner of a received message's pixels: keeps its ``zmq.Frame`` alive for as long as an array views it,
    and exposes the frame's memory to NumPy writable (``__array_interface__``)."""

    __slots__ = ("frame", "__array_interface__")

    def __init__(self, frame: Any, view: np.ndarray) -> None:
        self.frame = frame
        self.__array_interface__ = {"data": (view.__array_interface__["data"][0], False), "shape": view.shape,
                                    "typestr": view.dtype.str, "version": 3}


def writable_pixels(part: Any, view: np.ndarray) -> np.ndarray:
    """``view`` (the read-only pixels of message part ``part``) made writable, without a copy when it can be.

    A received ``zmq.Frame`` owns its message buffer (libzmq hands the receiver the message, and its data is
    the receiver's to change: ``zmq_msg_data`` is not const); pyzmq only exposes it read-only. The array
    returned views that buffer and holds the frame, so the buffer lives as long as the array and is never
    given to another message: no later frame can overwrite it. Any other read-only buffer (``bytes``, which
    Python shares) is copied.

    Parameters
    ----------
    part : zmq.Frame, bytes or buffer
        The message part ``view`` was made from.
    view : numpy.ndarray, shape (ny, nx)
        ``np.frombuffer`` view of ``part``'s buffer.

    Returns
    -------
    numpy.ndarray, shape (ny, nx), the dtype of ``view``, writable
    """
    import zmq  # the service extra; decoding bytes needs no pyzmq

    if isinstance(part, zmq.Frame):
        return np.asarray(_ReceivedPixels(part, view))
    return view.copy()


def decode_output(parts: list[Any]) -> tuple[Header, np.ndarray | None, np.ndarray | None]:
    """Parse and validate a message of a job's output: as :func:`decode`, and a frame whose ``rtn.states``
    is set carries a third part, returned as ``states`` (uint8, read-only, one per RTN pixel; else None)."""
    return _decode(parts, output=True)


def _decode(parts: list[Any], output: bool) -> tuple[Header, np.ndarray | None, np.ndarray | None]:
    if not parts:
        raise ProtocolError("parts", "empty message")
    buffers = [getattr(p, "buffer", p) for p in parts]
    header = _parse_header(buffers[0])
    with_states = output and header.kind == "frame" and header.rtn is not None and header.rtn.states
    expected = (3 if with_states else 2) if header.kind == "frame" else 1
    if len(parts) != expected:
        raise ProtocolError("parts", f"a {header.kind!r} message has {expected} part(s), got {len(parts)}")
    if header.kind != "frame":
        return header, None, None
    dtype = np.dtype(header.dtype)
    ny, nx = header.shape
    want = ny * nx * dtype.itemsize
    got = memoryview(buffers[1]).nbytes
    if got != want:
        raise ProtocolError("bytes", f"frame {header.series}#{header.seq}: pixel part has {got} bytes, shape "
                                     f"{[ny, nx]} of {dtype.str} needs {want}")
    data = np.frombuffer(buffers[1], dtype=dtype).reshape(ny, nx)
    return header, data, np.frombuffer(buffers[2], dtype=np.uint8) if with_states else None


# ---------------------------------------------------------------------------------------------- lossless output
# The lossless output prefixes every message with a delivery part (8 bytes of epoch, 8 bytes of id, big
# endian); the consumer answers with credit messages (one JSON part). See docs/protocol.md.
_MAX_CREDIT = 1 << 20


def delivery_part(epoch: bytes, delivery_id: int) -> bytes:
    """The delivery part of a lossless-output message: ``epoch`` (8 bytes) and ``delivery_id`` (uint64)."""
    return epoch + delivery_id.to_bytes(8, "big")


def parse_delivery(part: Any) -> tuple[bytes, int]:
    """``(epoch, delivery id)`` of a delivery part.

    Raises
    ------
    ProtocolError
        ``parts``: the part is not 16 bytes.
    """
    raw = bytes(getattr(part, "buffer", part))
    if len(raw) != 16:
        raise ProtocolError("parts", f"delivery part has {len(raw)} bytes, 16 expected")
    return raw[:8], int.from_bytes(raw[8:], "big")


def encode_credit(epoch: bytes | None, ack: int, credit: int) -> list[bytes]:
    """A consumer's credit message: it has taken every message up to delivery id ``ack`` of ``epoch`` (-1:
    none yet) and accepts ``credit`` more after it."""
    body = {"epoch": epoch.hex() if epoch is not None else None, "ack": int(ack), "credit": int(credit)}
    return [json.dumps(body).encode()]


def decode_credit(parts: list[Any]) -> tuple[bytes | None, int, int]:
    """``(epoch, ack, credit)`` of a credit message.

    Raises
    ------
    ProtocolError
        ``parts``, ``json`` or ``header``: not one JSON object with an integer ``ack`` >= -1, an integer
        ``credit`` in [0, 2**20] and ``epoch`` null or 16 hex digits.
    """
    if len(parts) != 1:
        raise ProtocolError("parts", f"a credit message has 1 part, got {len(parts)}")
    raw = getattr(parts[0], "buffer", parts[0])
    if memoryview(raw).nbytes > 1024:
        raise ProtocolError("size", "a credit message has at most 1024 bytes")
    try:
        d = json.loads(bytes(raw).decode("utf-8"), parse_constant=_reject_constant)
    except (ValueError, RecursionError) as exc:
        raise ProtocolError("json", f"credit message is not UTF-8 JSON ({str(exc)[:200]})") from None
    if not isinstance(d, dict):
        raise ProtocolError("json", "a credit message is a JSON object")
    ack = _int(d, "ack", True, lo=-1)
    credit = _int(d, "credit", True, hi=_MAX_CREDIT)
    epoch = _field(d, "epoch", (str,), False)
    try:
        epoch_bytes = bytes.fromhex(epoch) if epoch is not None else None
    except ValueError:
        epoch_bytes = b""
    if epoch_bytes is not None and len(epoch_bytes) != 8:
        raise ProtocolError("header", "credit field 'epoch' must be 16 hex digits or null")
    return epoch_bytes, ack, credit
