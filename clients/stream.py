"""Send and receive frames over ZeroMQ with the ``rtnstream/1`` protocol (producers, consumers, tests).

:class:`FrameSender` PUSHes series of frames to a job's ingest endpoint; :class:`FrameReceiver` reads a
job's output (SUB on the publish endpoint, or PULL on the lossless push endpoint). Encoding and decoding
are :mod:`rtnstream.service.protocol`'s, the same code the service runs.

Both send and receive without copying the pixels. A client that moves full frames needs a context with
enough I/O threads (about one per GB/s: :func:`rtnstream.service.zmq_io.io_threads_for`): give
``io_threads`` and it makes its own, terminated at :meth:`close`; the default is the process-wide
context (one I/O thread). ``ipc://PATH`` endpoints (a job's socket in the service's ``socket_dir``) are
the fast path for producers on the service's node.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import zmq

from rtnstream.kernels.exceptions import RTNStreamError
from rtnstream.service.curve import CurveClient
from rtnstream.service.protocol import Header, decode_output, encode, encode_credit, frame_header, parse_delivery
from rtnstream.service.zmq_io import frame_context

__all__ = ["FrameSender", "FrameReceiver", "Message", "utc_now"]


def _context(context: zmq.Context | None, io_threads: int | None) -> tuple[zmq.Context, bool]:
    """The context a client uses, and whether it made it (and terminates it)."""
    if io_threads is None:
        return context or zmq.Context.instance(), False
    if context is not None:
        raise ValueError("give context or io_threads, not both (io_threads makes the client its own context)")
    return frame_context(io_threads), True


def utc_now() -> str:
    """The current time as an ISO 8601 UTC string (millisecond precision)."""
    t = time.time()
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(t)) + f".{int(t % 1 * 1000):03d}Z"


class FrameSender:
    """Producer side: a PUSH socket connected to a job's ingest endpoint.

    Parameters
    ----------
    endpoint : str
        The job's ``ingest`` endpoint, e.g. ``tcp://127.0.0.1:5555``.
    camera : str
        Camera name written in every header.
    sndhwm : int
        High-water mark of the socket (messages); sends block beyond it (backpressure).
    linger_s : float
        How long :meth:`close` waits for messages still queued, s.
    context : zmq.Context, optional
        Default: the process-wide instance (unless ``io_threads``).
    curve : CurveClient, optional
        This client's CURVE keys and the service's public key, for a service that requires CURVE.
    io_threads : int in [1, 64], optional
        Make this sender its own context with this many I/O threads (not with ``context``).

    Raises
    ------
    TypeError, ValueError
        ``io_threads`` not an integer in [1, 64], or given with ``context``.

    Examples
    --------
    >>> with FrameSender("tcp://127.0.0.1:5555", "cam1") as tx:  # doctest: +SKIP
    ...     tx.start_series("night-1")
    ...     for frame in frames:
    ...         tx.send_frame(frame, exptime=1.0)
    ...     tx.end_series()
    """

    def __init__(self, endpoint: str, camera: str, sndhwm: int = 16, linger_s: float = 30.0,
                 context: zmq.Context | None = None, curve: CurveClient | None = None,
                 io_threads: int | None = None) -> None:
        self.camera = camera
        self._context, self._own_context = _context(context, io_threads)
        self._socket = self._context.socket(zmq.PUSH)
        if curve is not None:
            curve.apply(self._socket)
        self._socket.setsockopt(zmq.SNDHWM, sndhwm)
        self._socket.setsockopt(zmq.LINGER, int(linger_s * 1000))
        self._socket.connect(endpoint)
        self.series: str | None = None
        self.seq = 0

    def send_parts(self, parts: list[Any]) -> None:
        """Send raw message parts (any bytes: the tests use this to send malformed messages)."""
        self._socket.send_multipart(parts, copy=False)

    def start_series(self, series: str | None = None, meta: dict[str, Any] | None = None) -> str:
        """Open a series (``series`` default: a new unique id); returns its id."""
        self.series = series or f"{self.camera}-{uuid.uuid4().hex[:12]}"
        self.seq = 0
        self.send_parts(encode(Header("start", self.camera, self.series, meta=dict(meta or {}))))
        return self.series

    def send_frame(self, data: np.ndarray, exptime: float | None = None, timestamp: str | float | None = None,
                   meta: dict[str, Any] | None = None, seq: int | None = None) -> int:
        """Send the next frame of the open series (``seq`` default: the next number); returns its seq.

        Raises
        ------
        RTNStreamError
            No series is open.
        """
        if self.series is None:
            raise RTNStreamError("no series is open: call start_series first")
        seq = self.seq if seq is None else seq
        header = frame_header(self.camera, self.series, seq, data, exptime,
                              utc_now() if timestamp is None else timestamp, meta)
        self.send_parts(encode(header, data))
        self.seq = seq + 1
        return seq

    def end_series(self) -> None:
        """Close the open series: the service flushes it."""
        if self.series is not None:
            self.send_parts(encode(Header("end", self.camera, self.series)))
        self.series = None

    def close(self) -> None:
        """Close the socket (waits up to ``linger_s`` for queued messages to go out)."""
        self._socket.close()
        if self._own_context:
            self._context.term()

    def __enter__(self) -> FrameSender:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@dataclass
class Message:
    """A received message: its header, for frames the pixels (shape (ny, nx), header dtype), and for frames
    of a job that sends them its per-pixel decisions (``states``, uint8, one per RTN pixel; else None)."""

    header: Header
    data: np.ndarray | None
    states: np.ndarray | None = None


class FrameReceiver:
    """Consumer side: SUB on a job's ``publish`` endpoint, or the lossless consumer of its ``push`` endpoint.

    Parameters
    ----------
    endpoint : str
    mode : {'sub', 'pull'}
        ``sub``: any number of subscribers, messages lost if one falls behind (:attr:`missed` counts the
        frames a subscriber can tell it missed, from ``seq``). ``pull``: the one lossless consumer of the
        job's push output (a DEALER socket speaking the credit protocol of docs/protocol.md): a message
        counts as delivered when the next :meth:`recv` (or :meth:`close`) acknowledges it, so a consumer
        that dies while handling a message gets it again; messages sent again are dropped here.
    rcvhwm : int
        High-water mark, messages.
    context : zmq.Context, optional
    credit : int >= 1
        ``pull`` mode: messages the service may send ahead of what this consumer has taken.
    curve : CurveClient, optional
        This client's CURVE keys and the service's public key, for a service that requires CURVE.
    io_threads : int in [1, 64], optional
        Make this receiver its own context with this many I/O threads (not with ``context``).

    Raises
    ------
    TypeError, ValueError
        ``mode``, ``credit`` or ``io_threads`` out of range, or ``io_threads`` given with ``context``.
    """

    _HEARTBEAT_S = 1.0

    def __init__(self, endpoint: str, mode: Literal["sub", "pull"] = "sub", rcvhwm: int = 1000,
                 context: zmq.Context | None = None, credit: int = 8, curve: CurveClient | None = None,
                 io_threads: int | None = None) -> None:
        if mode not in ("sub", "pull"):
            raise ValueError(f"mode must be 'sub' or 'pull', got {mode!r}")
        if isinstance(credit, bool) or not isinstance(credit, int) or credit < 1:
            raise ValueError(f"credit must be an integer >= 1, got {credit!r}")
        self.mode = mode
        self.credit = credit
        self.missed = 0
        self._context, self._own_context = _context(context, io_threads)
        self._socket = self._context.socket(zmq.SUB if mode == "sub" else zmq.DEALER)
        if curve is not None:
            curve.apply(self._socket)
        self._socket.setsockopt(zmq.RCVHWM, rcvhwm)
        self._socket.setsockopt(zmq.LINGER, 0 if mode == "sub" else 1000)  # let the last acknowledgement go
        if mode == "sub":
            self._socket.setsockopt(zmq.SUBSCRIBE, b"")
        self._socket.connect(endpoint)
        self._epoch: bytes | None = None
        self._last_id = -1  # delivery id of the last message handed out (pull mode)
        self._last_seq: tuple[str, int] | None = None  # (series, seq) of the last frame (sub mode)
        if mode == "pull":
            self._send_credit()

    def _send_credit(self) -> None:
        try:
            self._socket.send_multipart(encode_credit(self._epoch, self._last_id, self.credit), flags=zmq.NOBLOCK)
        except zmq.Again:  # not connected yet: the next heartbeat says it again
            pass
        self._credit_sent_s = time.monotonic()

    def recv(self, timeout_s: float | None = None) -> Message | None:
        """The next message (start, frame or end), or None after ``timeout_s`` seconds without one.

        Raises
        ------
        ProtocolError
            The message does not follow ``rtnstream/1``.
        """
        if self.mode == "sub":
            if timeout_s is not None and not self._socket.poll(int(timeout_s * 1000)):
                return None
            msg = Message(*decode_output(self._socket.recv_multipart(copy=False)))
            self._count_missed(msg.header)
            return msg
        if self._last_id >= 0:
            self._send_credit()  # acknowledges the message handed out before
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        while True:
            wait_s = self._HEARTBEAT_S if deadline is None else min(self._HEARTBEAT_S, deadline - time.monotonic())
            if wait_s > 0 and self._socket.poll(int(wait_s * 1000)):
                delivery, *parts = self._socket.recv_multipart(copy=False)
                epoch, delivery_id = parse_delivery(delivery)
                if epoch != self._epoch:  # another job (or the first message): a new numbering
                    self._epoch, self._last_id = epoch, -1
                if delivery_id <= self._last_id:  # sent again after a reconnection: already handed out
                    self._send_credit()
                    continue
                msg = Message(*decode_output(parts))
                self._last_id = delivery_id
                return msg
            if deadline is not None and time.monotonic() >= deadline:
                return None
            if time.monotonic() - self._credit_sent_s >= self._HEARTBEAT_S:
                self._send_credit()  # heartbeat: a service that lost track of this consumer finds it again

    def _count_missed(self, h: Header) -> None:
        if h.kind != "frame":
            return
        last = self._last_seq
        if last is not None and last[0] == h.series and h.seq > last[1] + 1:
            self.missed += h.seq - last[1] - 1
        self._last_seq = (h.series, h.seq)

    def frames(self, timeout_s: float) -> list[Message]:
        """Every message until ``timeout_s`` seconds pass without one."""
        out = []
        while (msg := self.recv(timeout_s)) is not None:
            out.append(msg)
        return out

    def close(self) -> None:
        """Close the socket (in ``pull`` mode after acknowledging the last message handed out)."""
        if self.mode == "pull" and self._last_id >= 0:
            self._send_credit()
        self._socket.close()
        if self._own_context:
            self._context.term()

    def __enter__(self) -> FrameReceiver:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
