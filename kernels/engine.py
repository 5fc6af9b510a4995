"""The correction engine: frames in (in time order), corrected frames out, for one series at a time.

This is where a frame is corrected. :class:`RTNEngine` owns the series bookkeeping that every backend
shares: frame validation, the ring-buffer slots, which frames form each frame's reference window
(ALGORITHM.md section 2, with the sliding rule at the series edges), when a frame can be emitted, the
series counters and the bias offset map (section 5). The per-frame arithmetic is the backend's
(``numpy``: :mod:`rtnstream.kernels.numpy_backend`; ``cupy``: :mod:`rtnstream.kernels.cupy_backend`).

Typical use::

    engine = RTNEngine(cube, EngineSettings(reference="temporal", window=10))  # in_place=True: see RTNEngine
    engine.start_series()
    for frame in frames:
        for out in engine.push(frame):
            write(out.data)
    for out in engine.finish():
        write(out.data)
    offset_adu = engine.bias_offset_map()
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from rtnstream.kernels.cube import RTNCube
from rtnstream.kernels.exceptions import BackendUnavailableError, FrameError, SeriesError
from rtnstream.kernels.lut import ThresholdTable, get_table
from rtnstream.kernels.numpy_backend import STATE_HIGH, STATE_LOW, STATE_NONE, STATE_VETO, FrameCounts, NumpyBackend
from rtnstream.kernels.pixels import PixelParams
from rtnstream.kernels.two_trap import two_trap_offset_map

__all__ = [
    "SUPPORTED_DTYPES",
    "EngineSettings",
    "CorrectedFrame",
    "RTNEngine",
    "check_frame",
    "window_start",
]

SUPPORTED_DTYPES = tuple(np.dtype(t) for t in ("uint8", "uint16", "int16", "uint32", "int32", "float32",
                                                 "float64"))
log = logging.getLogger(__name__)

Reference = Literal["temporal", "causal", "spatial"]
BackendName = Literal["auto", "numpy", "cupy"]


@dataclass(frozen=True)
class EngineSettings:
    """How frames are corrected.

    Attributes
    ----------
    reference : {'temporal', 'causal', 'spatial'}
        Centred temporal median, causal temporal median (past frames only), or spatial median.
    window : int, even, >= 4
        Temporal window W (frames, the frame itself excluded).
    spatial_size : int, odd, >= 3
        Side k of the spatial neighbourhood (pixels).
    alpha : float in (0, 0.5)
        Significance of the jump test.
    k_var : float > 0
        Variability veto factor (temporal references).
    """

    reference: Reference = "temporal"
    window: int = 10
    spatial_size: int = 5
    alpha: float = 0.003
    k_var: float = 1.5

    def __post_init__(self) -> None:
        if self.reference not in ("temporal", "causal", "spatial"):
            raise ValueError(f"reference must be 'temporal', 'causal' or 'spatial', got {self.reference!r}")
        if not isinstance(self.window, int | np.integer) or self.window < 4 or self.window % 2:
            raise ValueError(f"window must be an even integer >= 4, got {self.window!r}")
        if not isinstance(self.spatial_size, int | np.integer) or self.spatial_size < 3 or self.spatial_size % 2 == 0:
            raise ValueError(f"spatial_size must be an odd integer >= 3, got {self.spatial_size!r}")
        if not (np.isfinite(self.alpha) and 0 < self.alpha < 0.5):
            raise ValueError(f"alpha must be in (0, 0.5), got {self.alpha!r}")
        if not (np.isfinite(self.k_var) and self.k_var > 0):
            raise ValueError(f"k_var must be a finite number > 0, got {self.k_var!r}")

    @property
    def temporal(self) -> bool:
        """True for the two temporal references."""
        return self.reference != "spatial"

    @property
    def latency_frames(self) -> int:
        """Frames that must arrive after frame t before t can be emitted (in steady state)."""
        return self.window // 2 if self.reference == "temporal" else 0


@dataclass
class CorrectedFrame:
    """One frame out of the engine.

    Attributes
    ----------
    index : int
        Position of the frame in its series (0-based).
    data : numpy.ndarray, shape (ny, nx), input dtype
        The corrected frame: a new array (the input is never modified), or with ``RTNEngine(in_place=True)``
        the pushed array itself, changed at the corrected pixels only. A frame pushed with ``correct=False``
        is returned as pushed (in native byte order), not copied.
    counts : FrameCounts
        Corrections and vetoes made in this frame.
    corrected : bool
        False when the frame went out unchanged: the series was shorter than W + 1 frames, or the frame was
        pushed with ``correct=False``.
    tag : Any
        Whatever the caller passed to :meth:`RTNEngine.push` with the frame (headers, timestamps).
    states : numpy.ndarray, shape (n_rtn,), uint8, or None
        With ``RTNEngine(track_states=True)``: the decision for each RTN pixel (in the order of
        ``engine.params.index``) in this frame, ``STATE_LOW``, ``STATE_HIGH``, ``STATE_VETO`` or
        ``STATE_NONE``, taken from the change of the per-pixel series counters (so every backend gives
        them; a two-trap pixel's ``STATE_LOW`` / ``STATE_HIGH``: corrected upward / downward, by its
        level's offset); None otherwise and for frames that went out uncorrected.
    """

    index: int
    data: np.ndarray
    counts: FrameCounts
    corrected: bool = True
    tag: Any = None
    states: np.ndarray | None = None


def check_frame(frame: Any, shape: tuple[int, int], name: str = "frame") -> np.ndarray:
    """Validate a frame against the sensor shape and the supported dtypes; returns it in native byte order.

    Raises
    ------
    FrameError
        Not an array, not 2-D, shape differing from the cube's, or unsupported dtype.
    """
    if not isinstance(frame, np.ndarray):
        raise FrameError(f"{name} must be a numpy array, got {type(frame).__name__}")
    if frame.ndim != 2 or tuple(frame.shape) != tuple(shape):
        raise FrameError(f"{name} has shape {frame.shape}, the RTN cube has {tuple(shape)}")
    native = frame.dtype.newbyteorder("=")
    if native not in SUPPORTED_DTYPES:
        supported = ", ".join(str(d) for d in SUPPORTED_DTYPES)
        raise FrameError(f"{name} has unsupported dtype {frame.dtype}; supported: {supported}")
    if frame.dtype != native:
        frame = frame.astype(native)
    return frame


def window_start(t: int, n_frames: int | None, window: int, reference: Reference) -> int:
    """First frame of frame ``t``'s reference window (frames ``start .. start+W`` without ``t``).

    ``start = clamp(t - W/2, 0, N-1-W)`` for the centred median, ``clamp(t - W, 0, N-1-W)`` for the causal
    one (ALGORITHM.md section 2). ``n_frames=None`` while the series is still open: the upper clamp is
    then not known, and the caller only asks for frames whose window no longer depends on it.
    """
    offset = window // 2 if reference == "temporal" else window
    start = max(t - offset, 0)
    if n_frames is not None:
        start = min(start, n_frames - 1 - window)
    return start


def make_backend(name: BackendName, params: PixelParams, table: ThresholdTable, settings: EngineSettings):
    """Instantiate the backend called ``name`` ('auto' picks CuPy when a CUDA device is usable).

    Raises
    ------
    ValueError
        ``name`` is not 'auto', 'numpy' or 'cupy'.
    BackendUnavailableError
        ``name='cupy'`` and CuPy cannot import, find a device, compile the kernels or allocate their
        memory (the message says which). ``'auto'`` then uses NumPy and logs why, at WARNING level when
        a CUDA device was found (a broken GPU set-up), else at INFO.
    """
    n_slots = settings.window + 1 if settings.temporal else 0
    if name not in ("auto", "numpy", "cupy"):
        raise ValueError(f"backend must be 'auto', 'numpy' or 'cupy', got {name!r}")
    if name in ("auto", "cupy"):
        try:
            from rtnstream.kernels import cupy_backend
        except ImportError as exc:  # the CuPy backend module itself is not part of this build
            if name == "cupy":
                raise BackendUnavailableError(f"the cupy backend is not available: {exc}") from exc
        else:
            if name == "cupy":
                return cupy_backend.CupyBackend(params, table, settings.k_var, settings.spatial_size, n_slots)
            try:
                return cupy_backend.CupyBackend(params, table, settings.k_var, settings.spatial_size, n_slots)
            except ValueError as exc:  # settings beyond the kernels' limits: the NumPy backend takes them
                log.info("backend auto: cupy declined (%s); using numpy", exc)
            except BackendUnavailableError as exc:  # no CuPy, NVRTC, device, headers or memory
                level = logging.WARNING if cupy_backend.gpu_available() else logging.INFO
                log.log(level, "backend auto: cupy unavailable (%s); using numpy", exc)
    return NumpyBackend(params, table, settings.k_var, settings.spatial_size, n_slots)


@dataclass
class _Pending:
    index: int
    frame: np.ndarray
    tag: Any
    correct: bool = True


@dataclass
class _InFlight:
    """A frame handed to a pipelined backend (``ticket``) or already done (``done``), in output order."""

    pending: _Pending
    push_no: int
    ticket: Any = None
    done: CorrectedFrame | None = None


@dataclass
class _Series:
    dtype: np.dtype | None = None
    n_in: int = 0
    pending: list[_Pending] = field(default_factory=list)
    in_flight: list[_InFlight] = field(default_factory=list)


class RTNEngine:
    """Correct the RTN pixels of a series of frames.

    Parameters
    ----------
    cube : RTNCube
        RTN parameters of the sensor.
    settings : EngineSettings, optional
    backend : {'auto', 'numpy', 'cupy'}
    table : ThresholdTable, optional
        Threshold table for ``settings.alpha`` (default: the cached default-grid table).
    track_states : bool
        Attach each frame's per-pixel decisions (:attr:`CorrectedFrame.states`); costs a read of the
        per-pixel counters per frame (a device download on the GPU), so the live path leaves it off.
    in_place : bool
        False (default): every corrected frame is a new array and pushed frames are never modified.
        True: the pushed array is corrected in place and returned as :attr:`CorrectedFrame.data` (the same
        object, changed at the corrected pixels only; no frame-sized copy). The caller hands the buffer
        over at :meth:`push` and gets it back with the frame out: it must not read or refill it in
        between. Such frames must be writeable and C-contiguous (in native byte order, else the native
        copy :func:`check_frame` makes is what is corrected and returned).

    Notes
    -----
    A pipelined backend (the CuPy one, ``backend.pipelined``) does not wait for the device inside
    :meth:`push`: the frame whose correction a push starts comes out of the *next* push (or
    :meth:`finish`), so the device works while the caller handles the frame before. Without
    ``track_states`` that adds one push to the latency; the order and content of frames are unchanged.
    """

    def __init__(self, cube: RTNCube, settings: EngineSettings | None = None, backend: BackendName = "numpy",
                 table: ThresholdTable | None = None, track_states: bool = False, in_place: bool = False) -> None:
        self.track_states = bool(track_states)
        self.in_place = bool(in_place)
        self.settings = settings or EngineSettings()
        self.table = table if table is not None else get_table(self.settings.alpha)
        if self.table.alpha != self.settings.alpha:
            raise ValueError(f"table alpha {self.table.alpha} differs from settings alpha {self.settings.alpha}")
        self.cube_id = cube.cube_id
        self.params = PixelParams.from_cube(cube, self.table)
        self.backend = make_backend(backend, self.params, self.table, self.settings)
        self._series: _Series | None = None
        self._push_no = 0

    @property
    def _pipelined(self) -> bool:
        """Frames go to the backend by submit / collect, one push apart (not with ``track_states``)."""
        return bool(getattr(self.backend, "pipelined", False)) and not self.track_states

    @property
    def shape(self) -> tuple[int, int]:
        """(ny, nx) of the frames this engine accepts."""
        return self.params.shape

    @property
    def n_rtn(self) -> int:
        """Number of RTN pixels corrected."""
        return self.params.n

    @property
    def frames_in(self) -> int:
        """Frames pushed in the current series."""
        return self._series.n_in if self._series else 0

    def start_series(self) -> None:
        """Open a new series (frames pending from an unfinished series are discarded: call finish first)."""
        if self._series is not None:
            for entry in self._series.in_flight:  # let the backend's buffers go
                if entry.ticket is not None:
                    self.backend.collect(entry.ticket)
        self._series = _Series()

    def push(self, frame: np.ndarray, tag: Any = None, correct: bool = True) -> list[CorrectedFrame]:
        """Add the next frame of the series; returns the frames that became ready (possibly none), in order.

        The engine keeps a reference to ``frame`` (no copy) until that frame is returned (W/2 pushes later
        in steady state, up to W at the start of a series, one more with a pipelined backend, or by
        :meth:`finish`): a caller that refills one buffer must push a copy. With ``in_place=True`` the
        returned frame's data is ``frame`` itself, corrected.

        Parameters
        ----------
        frame : numpy.ndarray, shape (ny, nx), a supported dtype
        tag : any, optional
            Returned with the frame (:attr:`CorrectedFrame.tag`).
        correct : bool
            False: the frame joins the series (its pixels serve the temporal reference of its neighbours)
            but is returned unchanged, in its place in the order, with ``corrected=False`` and no counts; the
            cost of its correction is saved (the service's ``passthrough`` overload policy).

        Raises
        ------
        FrameError
            Wrong shape or unsupported dtype, or a dtype differing from the series' first frame, or (with
            ``in_place=True``) a read-only or non-contiguous frame. The frame is not added and the
            series goes on.
        """
        if self._series is None:
            self.start_series()
        series = self._series
        frame = check_frame(frame, self.shape)
        if self.in_place and not (frame.flags.writeable and frame.flags.c_contiguous):
            raise FrameError("frame must be writeable and C-contiguous with in_place=True (it is corrected "
                             "in place); push a copy, or use in_place=False")
        if series.dtype is None:
            self.backend.reset(frame.dtype)  # may raise: the series stays without a dtype
            series.dtype = frame.dtype
        elif frame.dtype != series.dtype:
            raise FrameError(f"frame has dtype {frame.dtype}, this series started with {series.dtype}")
        self._push_no += 1
        t = series.n_in
        series.n_in += 1
        pending = _Pending(t, frame, tag, correct)
        if not self.settings.temporal:
            self._correct(pending, lambda: self.backend.submit_spatial(frame, self.in_place),
                          lambda: self.backend.correct_spatial(frame, self.in_place))
            return self._drain(final=False)
        self.backend.store(t % (self.settings.window + 1), frame)
        series.pending.append(pending)
        return self._emit(lambda p: self._ready(p.index, series.n_in - 1), n_frames=None)

    def finish(self) -> list[CorrectedFrame]:
        """End the series: correct every frame still pending (sliding window at the end) and return them.

        A series shorter than W + 1 frames cannot be corrected with the temporal references: its frames
        are returned unchanged with ``corrected=False``, none is lost.
        """
        series = self._series
        if series is None or not (series.pending or series.in_flight):
            return []
        n = series.n_in
        if not self.settings.temporal:
            return self._drain(final=True)
        if n < self.settings.window + 1:
            out = [CorrectedFrame(p.index, p.frame if self.in_place else p.frame.copy(), FrameCounts(), False,
                                  p.tag) for p in series.pending]
            series.pending.clear()
            return out
        return self._emit(lambda p: True, n_frames=n, final=True)

    def _ready(self, t: int, newest: int) -> bool:
        """Frame t can go once the last frame of its window (start + W, start >= 0) has arrived."""
        w = self.settings.window
        return newest >= window_start(t, None, w, self.settings.reference) + w

    def _emit(self, ready, n_frames: int | None, final: bool = False) -> list[CorrectedFrame]:
        series = self._series
        w = self.settings.window
        slots = w + 1
        while series.pending and ready(series.pending[0]):
            p = series.pending.pop(0)
            start = window_start(p.index, n_frames, w, self.settings.reference)
            window = [(start + k) % slots for k in range(w + 1) if start + k != p.index]
            slot = p.index % slots
            self._correct(p, lambda p=p, slot=slot, window=window:
                          self.backend.submit_temporal(p.frame, slot, window, self.in_place),
                          lambda p=p, slot=slot, window=window:
                          self.backend.correct_temporal(p.frame, slot, window, self.in_place))
        return self._drain(final)

    def _correct(self, p: _Pending, submit, correct) -> None:
        """Queue frame ``p``'s correction: done now, or submitted to a pipelined backend (``submit()``)."""
        entry = _InFlight(p, self._push_no)
        if not p.correct:
            entry.done = CorrectedFrame(p.index, p.frame, FrameCounts(), False, p.tag)
        elif self._pipelined:
            entry.ticket = submit()
        else:
            before = self._counter_snapshot()
            data, counts = correct()
            entry.done = CorrectedFrame(p.index, data, counts, True, p.tag, self._states_since(before))
        in_flight = self._series.in_flight
        in_flight.append(entry)
        if entry.ticket is not None:  # at most one frame left on the device: collect the ones before
            for older in in_flight[:-1]:
                self._collect(older)

    def _collect(self, entry: _InFlight) -> None:
        if entry.ticket is not None:
            data, counts = self.backend.collect(entry.ticket)
            entry.ticket = None
            entry.done = CorrectedFrame(entry.pending.index, data, counts, True, entry.pending.tag)

    def _drain(self, final: bool) -> list[CorrectedFrame]:
        """The frames done, in order; a frame submitted in this push stays in flight unless ``final``."""
        in_flight = self._series.in_flight
        out: list[CorrectedFrame] = []
        while in_flight:
            entry = in_flight[0]
            if entry.ticket is not None and entry.push_no == self._push_no and not final:
                break
            self._collect(entry)
            out.append(in_flight.pop(0).done)
        return out

    def _counter_snapshot(self) -> tuple[np.ndarray, ...] | None:
        if not self.track_states or hasattr(self.backend, "frame_states"):
            return None
        c = self.backend.counters
        return c.n_lo.copy(), c.n_hi.copy(), c.n_veto.copy()

    def _states_since(self, before: tuple[np.ndarray, ...] | None) -> np.ndarray | None:
        """Per-pixel decisions of the frame just corrected: which counter each pixel's decision raised (the
        backend's ``frame_states()`` where it has one, else the change of its counters since ``before``)."""
        if not self.track_states:
            return None
        if hasattr(self.backend, "frame_states"):
            return self.backend.frame_states()
        c = self.backend.counters
        states = np.full(self.params.n, STATE_NONE, dtype=np.uint8)
        for code, now, then in ((STATE_LOW, c.n_lo, before[0]), (STATE_HIGH, c.n_hi, before[1]),
                                (STATE_VETO, c.n_veto, before[2])):
            states[now != then] = code
        return states

    def check_series_length(self, n_frames: int) -> None:
        """Raise :class:`SeriesError` if a series of ``n_frames`` is too short for the temporal window."""
        if self.settings.temporal and n_frames < self.settings.window + 1:
            raise SeriesError(f"window {self.settings.window} needs a series of at least "
                              f"{self.settings.window + 1} frames, got {n_frames}")

    def bias_offset_map(self) -> np.ndarray:
        """Bias offset map of the current series, ``O = D_adu (n_lo - n_hi) / n_frames`` (ALGORITHM.md s. 5).

        Two-trap pixels: ``O = -sum_k n_k (i_k D1_adu + j_k D2_adu) / n_frames`` over their levels
        (:func:`~rtnstream.kernels.two_trap.two_trap_offset_map`).

        Returns
        -------
        numpy.ndarray, shape (ny, nx), float64, adu
            Zero outside RTN pixels and before any frame was corrected.
        """
        c = self.backend.counters
        p = self.params
        dtype = self._series.dtype if self._series else None
        integer = dtype is None or np.issubdtype(dtype, np.integer)
        d_adu = p.delta_adu_int if integer else p.delta_adu_float
        out = np.zeros(self.shape[0] * self.shape[1])
        with np.errstate(invalid="ignore", divide="ignore"):
            offset = d_adu * (c.n_lo - c.n_hi) / c.n_frames
        out[p.index] = np.where(c.n_frames > 0, offset, 0.0)
        if p.n_two_trap:
            pos = p.two_trap_pos
            out[p.index[pos]] = two_trap_offset_map(c.n_level, c.n_frames[pos], p.two_trap, integer)
        return out.reshape(self.shape)

    def two_trap_level_counts(self) -> np.ndarray:
        """Corrections of the two-trap pixels per level over the current series (docs/algorithm.md s. 9).

        Returns
        -------
        numpy.ndarray, shape (n_two_trap, 8), int64
            Rows in the order of ``params.two_trap_pos`` (their flat indices: ``params.index[two_trap_pos]``),
            columns in the level order of :data:`~rtnstream.kernels.two_trap.LEVEL_I` / ``LEVEL_J``.
        """
        return self.backend.counters.n_level

    def pixel_counters(self) -> dict[str, np.ndarray]:
        """Per-pixel counters of the current series as (ny, nx) int64 maps: n_lo, n_hi, n_veto, n_frames."""
        c = self.backend.counters
        maps = {}
        for name in ("n_lo", "n_hi", "n_veto", "n_frames"):
            m = np.zeros(self.shape[0] * self.shape[1], dtype=np.int64)
            m[self.params.index] = getattr(c, name)
            maps[name] = m.reshape(self.shape)
        return maps
