"""Bounds of a pipeline's outputs, and its lossless, acknowledged output (docs/protocol.md).

The best-effort PUB output is a plain PUB socket whose per-subscriber queue (``SNDHWM``) is
:meth:`OutputBounds.frames_of` the job's frames: a subscriber that does not read loses messages (ZeroMQ
drops them without telling the sender; subscribers see the gap in ``seq``) and holds at most that many
frames in the service's memory.

:class:`LosslessOutput` serves a bound ROUTER socket to one consumer that speaks the credit protocol
(:func:`rtnstream.service.protocol.encode_credit`): each message goes out with a delivery id; the consumer
acknowledges what it has taken and grants credit for more. Messages stay in a bounded buffer until they are
acknowledged and are sent again, in order, to a consumer that (re)connects, so none is lost across a
consumer's crash or reconnection; the consumer drops duplicates by delivery id. Delivery ids carry an epoch
drawn when the output is made, so a consumer that outlives a job never acknowledges the next job's
messages with the old job's ids. What is still unacknowledged when the job gives up is counted
``abandoned`` by the pipeline.
"""

from __future__ import annotations

import logging
import os
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import zmq

from rtnstream.service.protocol import ProtocolError, decode_credit, delivery_part
from rtnstream.service.stats import RateLimitedLog

__all__ = ["OutputBounds", "LosslessOutput"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class OutputBounds:
    """How much an output may hold: at most ``frames`` frames and ``bytes`` bytes of pixels (at least one
    frame always fits).

    Attributes
    ----------
    frames : int >= 1
    bytes : int >= 1
    """

    frames: int
    bytes: int

    def __post_init__(self) -> None:
        for name in ("frames", "bytes"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"output bound {name} must be an integer >= 1, got {value!r}")

    def frames_of(self, frame_bytes: int) -> int:
        """Frames of ``frame_bytes`` bytes that fit (>= 1)."""
        return max(1, min(self.frames, self.bytes // max(1, frame_bytes)))


@dataclass
class _Delivery:
    id: int
    parts: list[Any]
    frame: bool
    nbytes: int


class LosslessOutput:
    """Acknowledged output on a bound ROUTER socket (see the module docstring).

    Parameters
    ----------
    socket : zmq.Socket
        Bound ROUTER socket (``ROUTER_MANDATORY`` is set here).
    bounds : OutputBounds
        Unacknowledged messages held at most.
    on_delivered : callable
        Called with the number of frames (start / end messages excluded) the consumer acknowledged.
    name : str
        For log messages (the job id).
    """

    def __init__(self, socket: zmq.Socket, bounds: OutputBounds, on_delivered: Callable[[int], None],
                 name: str) -> None:
        self.socket = socket
        self.socket.setsockopt(zmq.ROUTER_MANDATORY, 1)
        self.bounds = bounds
        self._on_delivered = on_delivered
        self._name = name
        self._log = RateLimitedLog(log, 60.0)
        self._buffer: deque[_Delivery] = deque()
        self._bytes = 0
        self.epoch = os.urandom(8)
        self._next_id = 0
        self._acked = -1
        self._peer: bytes | None = None
        self._limit = -1  # highest delivery id the consumer accepts now
        self._sent = -1  # highest delivery id sent to the current consumer
        self._highest_sent = -1  # highest delivery id sent to any consumer
        self.reconnects = 0
        self._lost = False  # the consumer was found gone (a send to it failed) and none has come since

    @property
    def unacknowledged_frames(self) -> int:
        """Frames sent or waiting to be sent, not yet acknowledged."""
        return sum(d.frame for d in self._buffer)

    def _has_room(self, nbytes: int) -> bool:
        if not self._buffer:
            return True
        frames = sum(d.frame for d in self._buffer)
        return frames < self.bounds.frames and self._bytes + nbytes <= self.bounds.bytes

    def offer(self, parts: list[Any], frame: bool, nbytes: int, keep_going: Callable[[], bool]) -> bool:
        """Queue one message for the consumer, waiting (and serving acknowledgements) while the buffer is
        full. Returns False, without queueing, when ``keep_going()`` turns false while waiting."""
        self.pump(0)  # take the acknowledgements and credit that have come in
        while not self._has_room(nbytes):
            if not keep_going():
                return False
            self.pump(100)
        self._buffer.append(_Delivery(self._next_id, parts, frame, nbytes))
        self._bytes += nbytes
        self._next_id += 1
        self._transmit()
        return True

    def pump(self, timeout_ms: int) -> None:
        """Read the consumer's credit messages (waiting up to ``timeout_ms``) and send what they allow."""
        if not self.socket.poll(timeout_ms, zmq.POLLIN):
            return
        while True:
            try:
                peer, *body = self.socket.recv_multipart(flags=zmq.NOBLOCK)
            except zmq.Again:
                break
            try:
                epoch, ack, credit = decode_credit(body)
            except ProtocolError as exc:
                self._log.warning("credit", "job %s: ignored a malformed message from the lossless consumer: %s",
                                  self._name, exc)
                continue
            # acknowledgements of another epoch (an earlier job) acknowledge nothing, and none goes beyond what
            # was sent: a confused consumer cannot make frames count as delivered that it never received
            self._credit(peer, min(ack, self._highest_sent) if epoch == self.epoch else -1, credit)
        self._transmit()

    def drain(self, keep_going: Callable[[], bool]) -> None:
        """Serve the consumer until every frame is acknowledged or ``keep_going()`` turns false (a last
        ``end`` message is sent, and left to the socket's linger, but not waited for)."""
        while self.unacknowledged_frames and keep_going():
            self.pump(100)

    def abandon(self) -> int:
        """Give up on what is unacknowledged; returns the number of frames given up."""
        frames = self.unacknowledged_frames
        self._buffer.clear()
        self._bytes = 0
        return frames

    def _credit(self, peer: bytes, ack: int, credit: int) -> None:
        if peer != self._peer:  # a new or reconnected consumer: everything after its ack goes again
            if self._peer is not None or self._lost:  # it replaces one (still known, or found gone)
                self.reconnects += 1
                self._lost = False
                log.info("job %s: lossless consumer reconnected (acknowledged up to %d); resending from %d",
                         self._name, ack, max(ack, self._acked) + 1)
            self._peer = peer
            self._sent = max(ack, self._acked)
        delivered = 0
        while self._buffer and self._buffer[0].id <= ack:
            d = self._buffer.popleft()
            self._bytes -= d.nbytes
            delivered += d.frame
        self._acked = max(self._acked, ack)
        self._sent = max(self._sent, self._acked)
        self._limit = self._acked + credit  # credit counts from what has been delivered to any consumer
        if delivered:
            self._on_delivered(delivered)

    def _transmit(self) -> None:
        if self._peer is None:
            return
        for d in self._buffer:
            if d.id <= self._sent:
                continue
            if d.id > self._limit:
                break
            try:
                self.socket.send_multipart([self._peer, delivery_part(self.epoch, d.id), *d.parts], flags=zmq.NOBLOCK,
                                           copy=False)
            except zmq.Again:  # the consumer's queue is full: the next pump tries again
                break
            except zmq.ZMQError as exc:
                if exc.errno != zmq.EHOSTUNREACH:
                    raise
                self._peer = None  # gone: wait for a consumer to ask again
                self._lost = True
                break
            self._sent = d.id
            self._highest_sent = max(self._highest_sent, d.id)
