"""One camera stream's live pipeline: ZeroMQ ingest -> bounded queue -> RTNEngine -> ZeroMQ publish.

Two threads and a bounded queue between them:

* the **receive thread** owns the PULL socket: it decodes each message (:mod:`.protocol`, zero copy),
  checks it against the job (cube shape, series state), counts sequence gaps and rejects, and applies the
  overload policy when it enqueues a frame;
* the **processing thread** owns the output sockets: it feeds frames to :meth:`RTNEngine.push` (this is
  where a frame is corrected), flushes a series with :meth:`RTNEngine.finish` on ``end`` or stop, and
  publishes every frame that comes out.

Overload policies (``overload``), visible in the counters:

``block``
    Lossless. The receive thread waits for room in the queue and stops reading the socket meanwhile, so
    ZeroMQ's high-water marks push back on the producer.
``drop``
    A frame that finds the queue full is dropped and counted (``dropped``).
``passthrough``
    When the processing thread finds at least half the queue waiting behind the frame it takes, it
    publishes that frame unchanged, flagged ``rtn.corrected = false, rtn.overload = "passthrough"``
    (counted in ``passthrough``). In the temporal modes such a frame skips the engine and may overtake the
    up to W/2 frames the engine holds.

Start / end messages are never dropped. A message that fails a check is rejected, counted by reason and
logged once per reason per interval; nothing a producer sends stops the pipeline.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import zmq

from rtnstream.kernels.cube import RTNCube
from rtnstream.kernels.engine import CorrectedFrame, EngineSettings, RTNEngine
from rtnstream.kernels.exceptions import RTNStreamError
from rtnstream.service.protocol import Header, ProtocolError, RTNInfo, decode, encode
from rtnstream.service.stats import PipelineCounters, RateLimitedLog, RateWindow

__all__ = ["OVERLOAD_POLICIES", "EndpointError", "PipelineConfig", "SeriesResult", "Pipeline"]

log = logging.getLogger(__name__)

Overload = Literal["block", "passthrough", "drop"]
OVERLOAD_POLICIES: tuple[str, ...] = ("block", "passthrough", "drop")
_POLL_MS = 100


class EndpointError(RTNStreamError, OSError):
    """A ZeroMQ endpoint cannot be bound; ``field`` is 'ingest', 'publish' or 'push'."""

    def __init__(self, field: str, endpoint: str, reason: str) -> None:
        super().__init__(f"{field} endpoint {endpoint!r} cannot be bound: {reason}")
        self.field = field


@dataclass(frozen=True)
class PipelineConfig:
    """What a pipeline does.

    Attributes
    ----------
    ingest : str
        ZeroMQ endpoint the PULL socket binds (e.g. ``tcp://0.0.0.0:5555``).
    publish : str
        Endpoint of the PUB output socket.
    push : str or None
        Endpoint of an optional PUSH output socket (one lossless consumer; the pipeline waits for it).
    engine : EngineSettings
    backend : {'auto', 'numpy', 'cupy'}
    overload : {'block', 'passthrough', 'drop'}
    queue_frames : int >= 1
        Bound of the queue between the two threads (frames); also the ingest socket's high-water mark.
    stats_window_s : float
        Span of the throughput / latency figures, s.
    reject_log_interval_s : float
        Each rejection reason is logged at most once per this interval, s.
    """

    ingest: str
    publish: str
    push: str | None = None
    engine: EngineSettings = EngineSettings()
    backend: str = "auto"
    overload: Overload = "block"
    queue_frames: int = 8
    stats_window_s: float = 10.0
    reject_log_interval_s: float = 60.0

    def __post_init__(self) -> None:
        if self.overload not in OVERLOAD_POLICIES:
            raise ValueError(f"overload must be one of {OVERLOAD_POLICIES}, got {self.overload!r}")
        if not isinstance(self.queue_frames, int) or self.queue_frames < 1:
            raise ValueError(f"queue_frames must be an integer >= 1, got {self.queue_frames!r}")


@dataclass
class SeriesResult:
    """A finished series.

    Attributes
    ----------
    series : str
    camera : str
    frames : int
        Frames that went through the engine.
    bias_offset_adu : numpy.ndarray, shape (ny, nx), float64, adu
        :meth:`RTNEngine.bias_offset_map` at the end of the series.
    """

    series: str
    camera: str
    frames: int
    bias_offset_adu: np.ndarray


@dataclass
class _Item:
    header: Header
    data: np.ndarray | None
    t_arrival_s: float


@dataclass
class _RxSeries:
    series: str
    dtype: str | None
    next_seq: int = 0


_STOP = object()


class Pipeline:
    """Live RTN correction of one camera stream (see the module docstring).

    Parameters
    ----------
    name : str
        Shown in log messages (the job id).
    cube : RTNCube
    config : PipelineConfig
    context : zmq.Context
    on_series_end : callable, optional
        Called from the processing thread with a :class:`SeriesResult` after each series is flushed.

    Raises
    ------
    EndpointError
        An endpoint cannot be bound (nothing stays bound).
    """

    def __init__(self, name: str, cube: RTNCube, config: PipelineConfig, context: zmq.Context,
                 on_series_end: Callable[[SeriesResult], None] | None = None) -> None:
        self.name = name
        self.config = config
        self.engine = RTNEngine(cube, config.engine, backend=config.backend)
        self.counters = PipelineCounters()
        self.rates = RateWindow(config.stats_window_s)
        self.error: str | None = None
        self._on_series_end = on_series_end
        self._rejects = RateLimitedLog(log, config.reject_log_interval_s)
        self._queue: queue.Queue[Any] = queue.Queue(maxsize=config.queue_frames)
        self._passthrough_backlog = max(1, config.queue_frames // 2)
        self._stopping = threading.Event()
        self._abort = threading.Event()
        self._rx_series: _RxSeries | None = None
        self._series: Header | None = None
        self._sockets: list[zmq.Socket] = []
        try:
            self._pull = self._bind(context, zmq.PULL, "ingest", config.ingest, rcvhwm=config.queue_frames)
            self._pub = self._bind(context, zmq.PUB, "publish", config.publish)
            self._push = self._bind(context, zmq.PUSH, "push", config.push) if config.push else None
        except EndpointError:
            self._close_sockets()
            raise
        self._threads = [threading.Thread(target=self._run_receive, name=f"rtn-rx-{name}", daemon=True),
                         threading.Thread(target=self._run_process, name=f"rtn-proc-{name}", daemon=True)]

    def _bind(self, context: zmq.Context, kind: int, field: str, endpoint: str, **options: int) -> zmq.Socket:
        sock = context.socket(kind)
        self._sockets.append(sock)
        sock.setsockopt(zmq.LINGER, 2000)
        for key, value in options.items():
            sock.setsockopt(getattr(zmq, key.upper()), value)
        try:
            sock.bind(endpoint)
        except zmq.ZMQError as exc:
            raise EndpointError(field, endpoint, str(exc)) from exc
        return sock

    def _close_sockets(self) -> None:
        for sock in self._sockets:
            sock.close()
        self._sockets.clear()

    # ------------------------------------------------------------------ life cycle
    def start(self) -> None:
        """Start the receive and processing threads."""
        for t in self._threads:
            t.start()

    @property
    def alive(self) -> bool:
        """True while either thread runs."""
        return any(t.is_alive() for t in self._threads)

    @property
    def endpoints(self) -> dict[str, str | None]:
        """Endpoints actually bound (port numbers resolved when a wildcard port was asked)."""
        def last(sock: zmq.Socket | None) -> str | None:
            return sock.getsockopt_string(zmq.LAST_ENDPOINT) if sock is not None else None
        return {"ingest": last(self._pull), "publish": last(self._pub), "push": last(self._push)}

    def stop(self, timeout_s: float = 60.0) -> bool:
        """Stop: read what already reached the socket, correct and publish every queued frame, flush the
        open series (``RTNEngine.finish``), then close the sockets.

        Returns
        -------
        bool
            True when everything was flushed within ``timeout_s``; False if the pipeline had to be
            abandoned (a lossless consumer never took its frames).
        """
        self._stopping.set()
        deadline = time.monotonic() + timeout_s
        for t in self._threads:
            if t.ident is not None:
                t.join(max(0.0, deadline - time.monotonic()))
        clean = not self.alive
        if not clean:
            log.error("job %s: not flushed within %.0f s; abandoning its remaining frames", self.name,
                      timeout_s)
            self._abort.set()
            for t in self._threads:
                t.join(5.0)
            c = self.counters.snapshot()
            self.counters.add(abandoned=c["frames_in"] - c["frames_out"] - sum(c["rejected"].values())
                              - c["dropped"] - c["abandoned"])
        self._close_sockets()
        return clean

    def status(self) -> dict[str, Any]:
        """Counters, throughput, latency, queue depth, backend and device (plain data)."""
        return {
            "counters": self.counters.snapshot(),
            "rates": self.rates.figures(),
            "queue_depth": self._queue.qsize(),
            "series": self._series.series if self._series else None,
            "backend": self.engine.backend.name,
            "device": str(self.engine.backend.device),
            "error": self.error,
        }

    # ------------------------------------------------------------------ receive thread
    def _run_receive(self) -> None:
        poller = zmq.Poller()
        poller.register(self._pull, zmq.POLLIN)
        try:
            while not self._stopping.is_set() and not self._abort.is_set():
                if poller.poll(_POLL_MS):
                    self._receive(self._pull.recv_multipart(copy=False))
            while not self._abort.is_set():  # what already arrived is part of the stream: take it
                try:
                    parts = self._pull.recv_multipart(flags=zmq.NOBLOCK, copy=False)
                except zmq.Again:
                    break
                self._receive(parts)
        except zmq.ZMQError as exc:
            self._fail(f"ingest socket failed: {exc}")
        finally:
            self._put(_STOP)

    def _receive(self, parts: list[zmq.Frame]) -> None:
        t_arrival = time.monotonic()
        try:
            header, data = decode(parts)
            self._admit(header)
        except ProtocolError as exc:
            self.counters.reject(exc.reason)
            self._rejects.warning(exc.reason, "job %s: rejected a message (%s): %s", self.name, exc.reason,
                                  exc)
            return
        item = _Item(header, data, t_arrival)
        if header.kind != "frame":
            self._put(item)
            return
        self.counters.add(frames_in=1)
        if self.config.overload != "drop":
            self._put(item)
            return
        try:
            self._queue.put_nowait(item)
        except queue.Full:
            self.counters.add(dropped=1)
            self._rejects.warning("dropped", "job %s: dropped frame %s#%d (queue full, overload=drop)",
                                  self.name, header.series, header.seq)

    def _admit(self, h: Header) -> None:
        """Check ``h`` against the job and the open series; update the series state and gap counter."""
        shape = self.engine.shape
        if h.shape is not None and tuple(h.shape) != tuple(shape):
            raise ProtocolError("shape", f"{h.kind} {h.series}#{h.seq}: shape {list(h.shape)} differs from "
                                         f"the RTN cube's {list(shape)}")
        rx = self._rx_series
        if h.kind == "start":
            self._rx_series = _RxSeries(h.series, h.dtype)
            return
        if rx is None or rx.series != h.series:
            open_ = f"series {rx.series!r} is open" if rx else "no series is open"
            raise ProtocolError("no_series",
                                f"{h.kind} of series {h.series!r} but {open_}; send 'start' first")
        if h.kind == "end":
            self._rx_series = None
            return
        if rx.dtype is None:
            rx.dtype = h.dtype
        elif h.dtype != rx.dtype:
            raise ProtocolError("dtype", f"frame {h.series}#{h.seq} has dtype {h.dtype}, the series "
                                         f"started with {rx.dtype}")
        if h.seq > rx.next_seq:
            self.counters.add(seq_gaps=h.seq - rx.next_seq)
            self._rejects.warning("seq_gap", "job %s: series %s jumped from seq %d to %d", self.name,
                                  h.series, rx.next_seq - 1, h.seq)
        elif h.seq < rx.next_seq:
            self.counters.add(seq_out_of_order=1)
            self._rejects.warning("seq_order", "job %s: series %s: seq %d after %d (repeated or out of "
                                  "order; corrected in arrival order)", self.name, h.series, h.seq,
                                  rx.next_seq - 1)
        rx.next_seq = max(rx.next_seq, h.seq + 1)

    def _put(self, item: Any) -> None:
        """Enqueue, waiting for room (the ``block`` policy, control messages, the stop marker)."""
        while not self._abort.is_set():
            try:
                self._queue.put(item, timeout=_POLL_MS / 1000)
                return
            except queue.Full:
                continue

    # ------------------------------------------------------------------ processing thread
    def _run_process(self) -> None:
        try:
            while not self._abort.is_set():
                try:
                    item = self._queue.get(timeout=_POLL_MS / 1000)
                except queue.Empty:
                    continue
                if item is _STOP:
                    self._end_series()
                    return
                self._process(item)
        except zmq.ZMQError as exc:
            self._fail(f"output socket failed: {exc}")

    def _process(self, item: _Item) -> None:
        h = item.header
        try:
            if h.kind == "start":
                self._end_series()
                self.engine.start_series()
                self._series = h
                self.counters.add(series_started=1)
                self._send(h.with_rtn(self._rtn_info()), None)
            elif h.kind == "end":
                self._end_series()
            elif self.config.overload == "passthrough" and self._queue.qsize() >= self._passthrough_backlog:
                self._publish(h.with_rtn(self._rtn_info(corrected=False, overload="passthrough")), item.data,
                              item.t_arrival_s)
                self.counters.add(passthrough=1)
            else:
                for out in self.engine.push(item.data, tag=item):  # <- where a frame is corrected
                    self._publish_corrected(out)
        except zmq.ZMQError:
            raise
        except Exception:  # one frame's failure must not stop the stream: reject it, with its id in the log
            log.exception("job %s: %s %s#%s failed in the engine; rejected", self.name, h.kind, h.series,
                          h.seq)
            self.counters.reject("engine", counted_in=h.kind == "frame")

    def _end_series(self) -> None:
        """Flush the open series: correct and publish every pending frame, report the series' result."""
        if self._series is None:
            return
        h = self._series
        for out in self.engine.finish():
            self._publish_corrected(out)
        result = SeriesResult(h.series, h.camera, self.engine.frames_in, self.engine.bias_offset_map())
        self._series = None
        self.counters.add(series_finished=1)
        end = Header("end", h.camera, h.series, None, h.shape, h.dtype, meta=dict(h.meta))
        self._send(end.with_rtn(self._rtn_info()), None)
        if self._on_series_end is not None:
            self._on_series_end(result)

    def _rtn_info(self, counts: Any = None, corrected: bool = True, overload: str | None = None) -> RTNInfo:
        s = self.engine.settings
        c = {} if counts is None else {"low": counts.low, "high": counts.high, "vetoed": counts.vetoed,
                                       "out_of_table": counts.out_of_table}
        return RTNInfo(s.reference, s.window, s.alpha, s.k_var, s.spatial_size, self.engine.cube_id,
                       corrected=corrected, overload=overload, **c)

    def _publish_corrected(self, out: CorrectedFrame) -> None:
        item: _Item = out.tag
        c = out.counts
        self.counters.add(corrections_low=c.low, corrections_high=c.high, vetoed=c.vetoed,
                          out_of_table=c.out_of_table)
        self._publish(item.header.with_rtn(self._rtn_info(c, out.corrected), out.data.dtype), out.data,
                      item.t_arrival_s)

    def _publish(self, header: Header, data: np.ndarray, t_arrival_s: float) -> None:
        self._send(header, data)
        now = time.monotonic()
        self.rates.record(now, now - t_arrival_s, data.size)
        self.counters.add(frames_out=1)

    def _send(self, header: Header, data: np.ndarray | None) -> None:
        parts = encode(header, data)
        self._pub.send_multipart(parts, copy=False)
        if self._push is None:
            return
        while not self._abort.is_set():  # lossless consumer: wait for it, but give way to an abort
            if self._push.poll(_POLL_MS, zmq.POLLOUT):
                self._push.send_multipart(parts, copy=False)
                return
        log.error("job %s: %s %s#%s not delivered to the push output (aborted)", self.name, header.kind,
                  header.series, header.seq)

    def _fail(self, message: str) -> None:
        log.error("job %s: %s", self.name, message)
        self.error = message
        self._stopping.set()
        self._abort.set()
