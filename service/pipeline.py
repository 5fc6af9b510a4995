"""One camera stream's live pipeline: ZeroMQ ingest -> bounded queue -> RTNEngine -> ZeroMQ outputs.

Two threads and a bounded queue between them:

* the **receive thread** owns the PULL socket: it decodes each message (:mod:`.protocol`, zero copy),
  checks it against the job (camera, cube shape, series state), counts sequence gaps and rejects, and
  applies the overload policy when it enqueues a frame;
* the **processing thread** owns the output sockets: it feeds frames to :meth:`RTNEngine.push` (this is
  where a frame is corrected), flushes a series with :meth:`RTNEngine.finish` on ``end`` or stop, and
  sends every frame that comes out to the PUB output (best effort, bounded) and the lossless output
  (acknowledged by its consumer, :class:`~rtnstream.service.outputs.LosslessOutput`).

Every frame accepted is in exactly one place at any moment: in flight (queued, held by the engine, or
waiting for the lossless consumer), delivered, rejected, dropped or abandoned
(:class:`~rtnstream.service.stats.PipelineCounters`). Whatever one frame does (a failure in the engine or
in encoding its output), it is counted and the others go on.

Overload policies (``overload``), visible in the counters:

``block``
    Lossless. The receive thread waits for room in the queue and stops reading the socket meanwhile, so
    ZeroMQ's high-water marks push back on the producer.
``drop``
    A frame that finds the queue full is dropped and counted (``dropped``).
``passthrough``
    When the processing thread finds at least half the queue waiting behind the frame it takes, that frame
    skips the correction (it still joins the engine's series, so output order is arrival order and its
    pixels still serve its neighbours' temporal reference) and goes out flagged ``rtn.corrected = false,
    rtn.overload = "passthrough"`` (counted in ``passthrough``).

Frames travel without a host copy: each is received zero-copy (``recv_multipart(copy=False)``) into the
buffer libzmq allocated for that message alone, which the pipeline owns from then on and hands to the
engine writable (:func:`~rtnstream.service.protocol.writable_pixels`); the corrected frame goes out
zero-copy (``send_multipart(copy=False)``), referenced by the PUB socket and the lossless output until
they are done with it. No buffer is ever reused for another frame, so a frame's output cannot be
overwritten by a later frame before its consumer took it; memory stays bounded by the frames in flight
(queue, engine window, output bounds). ``inproc://`` messages share the producer's memory: those are
copied once.

Start / end messages are never dropped. A message that fails a check is rejected, counted by reason and
logged once per reason per interval; nothing a producer sends stops the pipeline.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import zmq

from rtnstream.kernels.cube import RTNCube
from rtnstream.kernels.engine import CorrectedFrame, EngineSettings, RTNEngine
from rtnstream.kernels.exceptions import FrameError
from rtnstream.kernels.numpy_backend import STATE_NONE
from rtnstream.service.curve import CurveServer
from rtnstream.service.endpoints import EndpointError, check_bindable, parse_endpoint
from rtnstream.service.outputs import LosslessOutput, OutputBounds
from rtnstream.service.protocol import MAX_HEADER_BYTES, Header, ProtocolError, RTNInfo, decode, encode
from rtnstream.service.stats import PipelineCounters, RateLimitedLog, RateWindow

__all__ = ["OVERLOAD_POLICIES", "EndpointError", "PipelineConfig", "SeriesResult", "Pipeline"]

log = logging.getLogger(__name__)

Overload = Literal["block", "passthrough", "drop"]
OVERLOAD_POLICIES: tuple[str, ...] = ("block", "passthrough", "drop")
_POLL_MS = 100
#: Largest pixel itemsize a frame may have (float64). A message part larger than the largest frame (or
#: than 4 x MAX_HEADER_BYTES, whichever is larger) makes ZeroMQ drop the producer's connection before the
#: part is buffered (ZMQ_MAXMSGSIZE); an oversized header below that is read and rejected (``size``).
_MAX_ITEMSIZE = 8


@dataclass(frozen=True)
class PipelineConfig:
    """What a pipeline does.

    Attributes
    ----------
    ingest : str
        ZeroMQ endpoint the PULL socket binds (e.g. ``tcp://0.0.0.0:5555``).
    publish : str
        Endpoint of the PUB output socket (best effort).
    push : str or None
        Endpoint of the optional lossless output (a ROUTER socket for one consumer speaking the credit
        protocol; the pipeline waits for it).
    engine : EngineSettings
    backend : {'auto', 'numpy', 'cupy'}
    overload : {'block', 'passthrough', 'drop'}
    queue_frames : int >= 1
        Bound of the queue between the two threads (frames); also the ingest socket's high-water mark.
    output : OutputBounds
        Bound of each output queue: frames held per PUB subscriber, and unacknowledged frames of the
        lossless output, in frames and bytes.
    camera : str or None
        The job's camera: messages naming another camera are rejected (``camera``); None accepts any.
    socket_dir : pathlib.Path or None
        The only folder ``ipc://`` endpoints may use (None: no ipc endpoints).
    states : bool
        Send each output frame's per-pixel decisions (a third part, ``rtn.states``: the FITS sink writes
        the same DQ bits as offline correction from it); costs n_rtn bytes a frame.
    curve : CurveServer or None
        Keys that make every socket a CURVE server (the context needs an authenticator:
        :func:`rtnstream.service.curve.start_authenticator`); None: plain sockets.
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
    output: OutputBounds = field(default_factory=lambda: OutputBounds(16, 1 << 30))
    camera: str | None = None
    socket_dir: Path | None = None
    states: bool = False
    curve: CurveServer | None = None
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
    correct: bool = True  # False: the frame passes through the engine uncorrected (overload)


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
        Called from the processing thread with a :class:`SeriesResult` after each series is flushed; it
        must return at once (no I/O that can hang: it is on the frame path).

    Raises
    ------
    EndpointError
        An endpoint is not allowed or cannot be bound (checked before any socket is made; nothing stays
        bound).
    """

    def __init__(self, name: str, cube: RTNCube, config: PipelineConfig, context: zmq.Context,
                 on_series_end: Callable[[SeriesResult], None] | None = None) -> None:
        self.name = name
        self.config = config
        for field_name in ("ingest", "publish", "push"):
            if getattr(config, field_name) is not None:
                check_bindable(field_name, getattr(config, field_name), config.socket_dir)
        # in_place: every received frame sits in a writable buffer of its own (protocol.decode(writable=True)),
        # handed to the engine and sent on as its output: no full-frame copy between receive and publish
        self.engine = RTNEngine(cube, config.engine, backend=config.backend, track_states=config.states,
                                in_place=True)
        self.counters = PipelineCounters()
        self.rates = RateWindow(config.stats_window_s)
        self.error: str | None = None
        #: The last frame published, (ny, nx), as it went out (a reference, not a copy; for live views)
        self.last_frame: np.ndarray | None = None
        self._on_series_end = on_series_end
        self._rejects = RateLimitedLog(log, config.reject_log_interval_s)
        self._queue: queue.Queue[Any] = queue.Queue(maxsize=config.queue_frames)
        self._passthrough_backlog = max(1, config.queue_frames // 2)
        self._stopping = threading.Event()
        self._abort = threading.Event()
        self._rx_series: _RxSeries | None = None
        # a received message's buffer is the pipeline's, except over inproc (the producer's own memory)
        self._copy_received = parse_endpoint(config.ingest).scheme == "inproc"
        self._series: Header | None = None
        self._held = 0  # frames pushed into the engine and not yet out of it
        ny, nx = self.engine.shape
        self.output_frames = config.output.frames_of(ny * nx * _MAX_ITEMSIZE)
        self._sockets: list[zmq.Socket] = []
        try:
            self._pull = self._bind(context, zmq.PULL, "ingest", config.ingest, rcvhwm=config.queue_frames,
                                    maxmsgsize=max(ny * nx * _MAX_ITEMSIZE, 4 * MAX_HEADER_BYTES))
            self._pub = self._bind(context, zmq.PUB, "publish", config.publish, sndhwm=self.output_frames)
            lossless = self._bind(context, zmq.ROUTER, "push", config.push,
                                  sndhwm=self.output_frames + 2) if config.push else None
        except EndpointError:
            self._close_sockets()
            raise
        self._lossless = None if lossless is None else LosslessOutput(
            lossless, OutputBounds(self.output_frames, config.output.bytes), self._delivered, name)
        self._threads = [threading.Thread(target=self._run_receive, name=f"rtn-rx-{name}", daemon=True),
                         threading.Thread(target=self._run_process, name=f"rtn-proc-{name}", daemon=True)]

    def _bind(self, context: zmq.Context, kind: int, field_name: str, endpoint: str,
              **options: int) -> zmq.Socket:
        sock = context.socket(kind)
        self._sockets.append(sock)
        # the lossless output lingers a moment so its last messages leave; the others are best effort or input
        sock.setsockopt(zmq.LINGER, 1000 if kind == zmq.ROUTER else 0)
        if self.config.curve is not None:
            self.config.curve.apply(sock)
        for key, value in options.items():
            sock.setsockopt(getattr(zmq, key.upper()), value)
        try:
            sock.bind(endpoint)
        except zmq.ZMQError as exc:
            raise EndpointError(field_name, endpoint, str(exc)) from exc
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
        return {"ingest": last(self._pull), "publish": last(self._pub),
                "push": last(self._lossless.socket) if self._lossless else None}

    def stop(self, timeout_s: float = 60.0) -> bool:
        """Stop: read what already reached the socket, correct and send every queued frame, flush the
        open series (``RTNEngine.finish``), wait until the lossless consumer has acknowledged everything,
        then close the sockets.

        Returns
        -------
        bool
            True when every accepted frame was delivered within ``timeout_s``; False if the pipeline had to
            give up: what was not delivered is counted ``abandoned`` and :attr:`error` says how many.
        """
        self._stopping.set()
        deadline = time.monotonic() + timeout_s
        for t in self._threads:
            if t.ident is not None:
                t.join(max(0.0, deadline - time.monotonic()))
        if self.alive:
            log.error("job %s: not flushed within %.0f s; abandoning its remaining frames", self.name,
                      timeout_s)
            self._abort.set()
            for t in self._threads:
                t.join(5.0)
        left = self.counters.snapshot()["in_flight"]
        if left:
            self.counters.add(abandoned=left, in_flight=-left)
            self.error = (f"{left} frame(s) abandoned: not delivered within the stop timeout of {timeout_s:g} s"
                          + (" (the lossless consumer did not acknowledge them)" if self._lossless else ""))
            log.error("job %s: %s", self.name, self.error)
        self._close_sockets()
        return not left and not self.alive

    def status(self) -> dict[str, Any]:
        """Counters, throughput, latency, queue depth, outputs, backend and device (plain data)."""
        lossless = None if self._lossless is None else {
            "unacknowledged": self._lossless.unacknowledged_frames, "reconnects": self._lossless.reconnects}
        return {
            "counters": self.counters.snapshot(),
            "rates": self.rates.figures(),
            "queue_depth": self._queue.qsize(),
            "outputs": {"frames_per_queue": self.output_frames, "lossless": lossless},
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
            header, data = decode(parts, writable=True)  # the engine may correct it in place
            self._admit(header)
        except ProtocolError as exc:
            self.counters.reject(exc.reason)
            self._rejects.warning(exc.reason, "job %s: rejected a message (%s): %s", self.name, exc.reason,
                                  exc)
            return
        if data is not None and self._copy_received:
            data = data.copy()
        item = _Item(header, data, t_arrival)
        if header.kind != "frame":
            self._put(item)
            return
        self.counters.add(frames_in=1, in_flight=1)  # before the queue: the processing thread may deliver it at once
        if self.config.overload != "drop":
            self._put(item)
            return
        try:
            self._queue.put_nowait(item)
        except queue.Full:
            self.counters.add(in_flight=-1, dropped=1)
            self._rejects.warning("dropped", "job %s: dropped frame %s#%d (queue full, overload=drop)",
                                  self.name, header.series, header.seq)

    def _admit(self, h: Header) -> None:
        """Check ``h`` against the job and the open series; update the series state and gap counter."""
        if self.config.camera is not None and h.camera != self.config.camera:
            raise ProtocolError("camera", f"{h.kind} {h.series}#{h.seq}: camera {h.camera[:64]!r} is not this "
                                          f"job's ({self.config.camera!r})")
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
                waiting = self._lossless is not None and self._lossless.unacknowledged_frames
                try:  # while the lossless consumer owes acknowledgements, serve it every 10 ms
                    item = self._queue.get(timeout=0.01 if waiting else _POLL_MS / 1000)
                except queue.Empty:
                    if self._lossless is not None:
                        self._lossless.pump(0)
                    continue
                if item is _STOP:
                    self._end_series()
                    if self._lossless is not None:
                        self._lossless.drain(lambda: not self._abort.is_set())
                    return
                self._process(item)
        except zmq.ZMQError as exc:
            self._fail(f"output socket failed: {exc}")

    def _process(self, item: _Item) -> None:
        h = item.header
        if h.kind == "start":
            self._end_series()
            self.engine.start_series()
            self._series = h
            self.counters.add(series_started=1)
            self._send(h.with_rtn(self._rtn_info()), None)
        elif h.kind == "end":
            self._end_series()
        else:
            item.correct = not (self.config.overload == "passthrough"
                                and self._queue.qsize() >= self._passthrough_backlog)
            # the engine holds the frame until it returns it corrected; the item (its tag) lets go of it, so
            # each input is freed as its output is made (full frames: W/2 + 1 fewer frames at a series' start)
            data, item.data = item.data, None
            self._engine_step(lambda: self.engine.push(data, tag=item, correct=item.correct),  # <- corrected
                              pushed=1, what=f"frame {h.series}#{h.seq}")

    def _engine_step(self, step: Callable[[], list[CorrectedFrame]], pushed: int, what: str) -> None:
        """Run one engine call and send what it returns; on failure count the frames it held as rejected
        (``engine``) and start the engine's series afresh, so the next frames are corrected."""
        try:
            outs = step()
        except FrameError as exc:  # the frame was refused and not added; the series goes on
            log.error("job %s: %s refused by the engine: %s", self.name, what, exc)
            self.counters.reject("engine", in_flight=True)
            return
        except Exception:  # the engine's state is unknown: every frame it held is lost, and counted
            lost = self._held + pushed
            log.exception("job %s: the engine failed on %s; %d frame(s) it held rejected", self.name, what, lost)
            self.counters.reject("engine", n=lost, in_flight=True)
            self._held = 0
            self.engine.start_series()
            return
        self._held += pushed - len(outs)
        for out in outs:
            self._send_corrected(out)

    def _end_series(self) -> None:
        """Flush the open series: correct and send every pending frame, report the series' result."""
        if self._series is None:
            return
        h = self._series
        self._engine_step(self.engine.finish, pushed=0, what=f"the end of series {h.series}")
        result = SeriesResult(h.series, h.camera, self.engine.frames_in, self.engine.bias_offset_map())
        self._series = None
        self.counters.add(series_finished=1)
        end = Header("end", h.camera, h.series, None, h.shape, h.dtype, meta=dict(h.meta))
        self._send(end.with_rtn(self._rtn_info()), None)
        if self._on_series_end is not None:
            self._on_series_end(result)

    def _rtn_info(self, counts: Any = None, corrected: bool = True, overload: str | None = None,
                  states: bool = False) -> RTNInfo:
        s = self.engine.settings
        c = {} if counts is None else {"low": counts.low, "high": counts.high, "vetoed": counts.vetoed,
                                       "out_of_table": counts.out_of_table}
        return RTNInfo(s.reference, s.window, s.alpha, s.k_var, s.spatial_size, self.engine.cube_id,
                       corrected=corrected, overload=overload, states=states, **c)

    def _send_corrected(self, out: CorrectedFrame) -> None:
        """Send one frame out of the engine; a frame that cannot be encoded is rejected (``output``)."""
        item: _Item = out.tag
        h, c = item.header, out.counts
        passed = not item.correct
        try:
            states = out.states if self.config.states else None
            if self.config.states and states is None:  # uncorrected (short series, passthrough): no decision
                states = np.full(self.engine.n_rtn, STATE_NONE, np.uint8)
            header = h.with_rtn(self._rtn_info(c, out.corrected, "passthrough" if passed else None,
                                               states is not None), out.data.dtype)
            parts = encode(header, out.data, states)
        except Exception:  # one frame's header must never stop the others (it was checked at decode)
            log.exception("job %s: frame %s#%s could not be encoded for output; rejected", self.name, h.series,
                          h.seq)
            self.counters.reject("output", in_flight=True)
            return
        self.counters.add(corrections_low=c.low, corrections_high=c.high, vetoed=c.vetoed,
                          out_of_table=c.out_of_table, passthrough=int(passed))
        self._send_parts(parts, out.data.nbytes)
        self.last_frame = out.data
        now = time.monotonic()
        ts = h.timestamp_s
        self.rates.record(now, now - item.t_arrival_s, out.data.size,
                          None if ts is None else time.time() - ts)

    def _send(self, header: Header, data: np.ndarray | None) -> None:
        """Send a start / end message."""
        self._send_parts(encode(header, data), None)

    def _send_parts(self, parts: list[Any], frame_bytes: int | None) -> None:
        """PUB (never waits), then the lossless output (waits for room, gives way to an abort). A frame
        counts as delivered here without a lossless output, else when its consumer acknowledges it."""
        self._pub.send_multipart(parts, copy=False)
        if self._lossless is not None:
            self._lossless.offer(parts, frame_bytes is not None, frame_bytes or 0,
                                 keep_going=lambda: not self._abort.is_set())
        elif frame_bytes is not None:
            self._delivered(1)

    def _delivered(self, n_frames: int) -> None:
        self.counters.add(frames_out=n_frames, in_flight=-n_frames)

    def _fail(self, message: str) -> None:
        log.error("job %s: %s", self.name, message)
        self.error = message
        self._stopping.set()
        self._abort.set()
