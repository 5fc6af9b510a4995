"""ZeroMQ contexts sized for the frames they carry: I/O threads from the byte rate (docs/service.md).

libzmq moves every message of a connection on one of its context's I/O threads (a connection stays on
the thread it was given when it was made); one thread moves about 1 GB/s of large messages on this
project's reference machine (``bench/zmq_relay.py``), so a context that carries full frames (a 6388 x 9576
uint16 frame is 122 MB) needs about one I/O thread per GB/s, and its connections spread over them.
"""

from __future__ import annotations

import math
import os
from typing import Any

import zmq

__all__ = ["BYTES_PER_IO_THREAD_S", "FULL_FRAME_BYTES", "DEFAULT_STREAM_BYTES_PER_S", "MAX_IO_THREADS",
           "io_threads_for", "check_io_threads", "frame_context"]

#: Bytes/s one libzmq I/O thread is counted for when a context is sized.
BYTES_PER_IO_THREAD_S = 1e9
#: One full IMX455 frame, 6388 x 9576 uint16, bytes.
FULL_FRAME_BYTES = 6388 * 9576 * 2
#: Frames one camera stream is sized for when nothing else is said: 20 full frames/s, bytes/s (2.45 GB/s).
DEFAULT_STREAM_BYTES_PER_S = 20.0 * FULL_FRAME_BYTES
#: Most I/O threads a context is given.
MAX_IO_THREADS = 64


def io_threads_for(bytes_per_s: float, cpus: int | None = None) -> int:
    """I/O threads for a context that moves ``bytes_per_s``: one per GB/s, at least 1, at most half the CPUs.

    The cap leaves the other CPUs to what the I/O threads serve (the engine, the producer and consumer):
    on a 2-CPU machine, 2 I/O threads in each of three contexts moved full frames slower than 1
    (``bench/zmq_relay.py``), since the kernel's socket copies, not the threads, are the limit there.

    Parameters
    ----------
    bytes_per_s : float >= 0
        Every message byte the context sends and receives per second, bytes/s.
    cpus : int, optional
        CPUs to count on (default: ``os.cpu_count()``).

    Raises
    ------
    ValueError
        ``bytes_per_s`` negative or not finite.
    """
    if not (math.isfinite(bytes_per_s) and bytes_per_s >= 0):
        raise ValueError(f"bytes_per_s must be a finite number >= 0 (bytes/s), got {bytes_per_s!r}")
    cap = max(1, min(MAX_IO_THREADS, (cpus if cpus is not None else (os.cpu_count() or 1)) // 2))
    return max(1, min(cap, math.ceil(bytes_per_s / BYTES_PER_IO_THREAD_S)))


def check_io_threads(value: Any, name: str = "io_threads") -> int:
    """``value`` if it is an integer in [1, :data:`MAX_IO_THREADS`].

    Raises
    ------
    TypeError
        Not an integer (a bool is not one), the message naming ``name``.
    ValueError
        Out of range, the message naming ``name``.
    """
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an integer in [1, {MAX_IO_THREADS}] (ZeroMQ I/O threads), got "
                        f"{type(value).__name__} {value!r}")
    if not 1 <= value <= MAX_IO_THREADS:
        raise ValueError(f"{name} must be an integer in [1, {MAX_IO_THREADS}] (ZeroMQ I/O threads), got {value}")
    return value


def frame_context(io_threads: int) -> zmq.Context:
    """A new ZeroMQ context with ``io_threads`` I/O threads (checked by :func:`check_io_threads`); the caller
    terminates it."""
    return zmq.Context(io_threads=check_io_threads(io_threads))
