"""CuPy backend of the correction engine: the CUDA kernels of ``rtn_correct.cu`` driven from the host.

A drop-in twin of :class:`~rtnstream.kernels.numpy_backend.NumpyBackend` (same constructor, methods and
bit-identical output, docs/cuda.md). Per frame, only the RTN pixels travel to the device (gathered on the
host, on several threads, into pinned memory, copied asynchronously into the device ring buffer of W + 1
slots); one fused kernel (compiled when the backend is made, with W fixed at compile time) computes the
reference, veto, decision and correction and writes the corrected pixels compacted (a second one does the
same for the two-trap pixels, when the cube has any, with their rules); the host then scatters
those few pixels into the frame (in place) or into a copy. The spatial reference needs every neighbour, so
there the whole frame goes to the device. The threshold table and the per-pixel parameters stay on the
device for the life of the backend.

The backend is *pipelined*: :meth:`KernelBackend.submit_temporal` queues a frame's work and returns at
once; :meth:`KernelBackend.collect` waits for that frame only (CUDA events) and finishes it on the host.
Two sets of output buffers let frame t+1's kernel run while frame t is collected; RTNEngine keeps one
frame in flight, so each frame comes out one push later and nothing inside ``push`` waits for the device
except the frame before.

This is the only module that uses CuPy, and it imports it lazily: importing it (or ``rtnstream.kernels``)
never imports CuPy. :class:`KernelBackend` holds the host-side logic every executor of the kernels shares;
:class:`CupyBackend` runs it on a CUDA device, and the tests run the same logic on the host build of the
same CUDA source.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections import defaultdict
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np

from rtnstream.kernels import _cuda
from rtnstream.kernels.exceptions import BackendUnavailableError, FrameError
from rtnstream.kernels.lut import ThresholdTable
from rtnstream.kernels.numpy_backend import (
    STATE_HIGH,
    STATE_LOW,
    STATE_OUT_OF_TABLE,
    STATE_VETO,
    FrameCounts,
    PixelCounters,
    gather,
    scatter,
)
from rtnstream.kernels.pixels import PixelParams
from rtnstream.kernels.two_trap import N_LEVELS

__all__ = ["INSTALL_HINT", "KernelBackend", "CupyBackend", "StageTimer", "Ticket", "gpu_available"]

INSTALL_HINT = ("install CuPy with NVRTC and the CUDA headers, `pip install 'rtnstream[gpu]'` "
                "(cupy-cuda12x[ctk]), on a machine with an NVIDIA GPU and a CUDA 12 (or newer) driver")
BLOCK_THREADS = 256  # threads per block (a multiple of the warp size, as rtn_correct.cu requires)
MAX_SPATIAL_SIZE = 9  # (9 x 9 - 1) neighbours = _cuda.MAX_VALUES
MAX_WINDOW = _cuda.MAX_VALUES  # largest temporal window W the kernels take
_COUNTER_NAMES = ("n_lo", "n_hi", "n_veto", "n_frames")


def _reason(exc: BaseException) -> str:
    """``Type: message`` of ``exc`` on one line (CuPy's messages span several)."""
    return f"{type(exc).__name__}: {' '.join(str(exc).split())}"


def _import_cupy(check_nvrtc: bool = False):
    """Import CuPy and check that a CUDA device is usable; raise BackendUnavailableError saying why not.

    ``check_nvrtc``: also check, first, that CuPy can load NVRTC (the run-time compiler of the kernels).
    """
    try:
        import cupy
    except Exception as exc:  # ImportError, or CuPy failing to load its CUDA libraries
        raise BackendUnavailableError(f"the cupy backend needs CuPy, which cannot be imported ({_reason(exc)}); "
                                      f"{INSTALL_HINT}") from exc
    if check_nvrtc:
        try:
            from cupy.cuda import nvrtc

            nvrtc.getVersion()
        except Exception as exc:  # cuda.pathfinder's DynamicLibNotFoundError, OSError, RuntimeError...
            raise BackendUnavailableError(f"the cupy backend cannot load NVRTC, the CUDA run-time compiler "
                                          f"({_reason(exc)}); {INSTALL_HINT}") from exc
    try:
        n_devices = cupy.cuda.runtime.getDeviceCount()
    except Exception as exc:  # cupy.cuda.runtime.CUDARuntimeError: no driver, no device
        raise BackendUnavailableError(f"the cupy backend found no usable CUDA device ({_reason(exc)}); "
                                      f"{INSTALL_HINT}") from exc
    if n_devices < 1:
        raise BackendUnavailableError(f"the cupy backend found no CUDA device; {INSTALL_HINT}")
    return cupy


def gpu_available() -> bool:
    """True when CuPy imports and a CUDA device is usable (never raises; says nothing of NVRTC)."""
    try:
        _import_cupy()
    except Exception:  # BackendUnavailableError, or anything CuPy raises while it loads
        return False
    return True


def _check_window_slots(slot: int, window_slots: Sequence[int], n_slots: int) -> np.ndarray:
    """The W reference slots as int32, checked: distinct ring slots other than ``slot``."""
    window = np.asarray(window_slots, dtype=np.int64)
    if window.shape != (n_slots - 1,):
        raise ValueError(f"window_slots must hold {n_slots - 1} ring slots, got shape {window.shape}")
    if np.any((window < 0) | (window >= n_slots)) or np.unique(window).size != window.size or slot in window:
        raise ValueError(f"window_slots must be distinct slots in [0, {n_slots}) other than slot {slot}, "
                         f"got {window.tolist()}")
    return window.astype(np.int32)


def _two_trap_arrays(params: PixelParams) -> dict[str, tuple[np.ndarray, Any]]:
    """The kernels' two-trap arguments (``_cuda._TWO_TRAP_PARAMS``) as (host array, dtype).

    ``tt_slot`` (n,) holds each RTN pixel's position among the two-trap pixels (-1: one trap), ``tt_pos``
    (n_two,) their positions among the RTN pixels; without two-trap pixels the kernels read none of these,
    and each is one element.
    """
    n_two = params.n_two_trap
    if n_two == 0:
        return {name: (np.zeros(1), dtype) for name, dtype in (
            ("tt_slot", np.int32), ("tt_pos", np.int64), ("delta2_e", np.float64), ("delta2_adu_int", np.int64),
            ("delta2_adu_float", np.float64), ("tt_sigma_e", np.float64), ("tt_log_prior", np.float64),
            ("tt_log_prior_centre", np.float64))}
    two = params.two_trap
    slot = np.full(params.n, -1, dtype=np.int32)
    slot[params.two_trap_pos] = np.arange(n_two, dtype=np.int32)
    return {"tt_slot": (slot, np.int32), "tt_pos": (params.two_trap_pos, np.int64),
            "delta2_e": (two.delta2_e, np.float64),
            "delta2_adu_int": (two.delta2_adu_int, np.int64), "delta2_adu_float": (two.delta2_adu_float, np.float64),
            "tt_sigma_e": (two.sigma_e, np.float64), "tt_log_prior": (two.log_prior, np.float64),
            "tt_log_prior_centre": (two.log_prior_centre, np.float64)}


@dataclass(eq=False)
class Ticket:
    """A frame submitted to a :class:`KernelBackend` and not yet collected."""

    frame: np.ndarray
    in_place: bool
    buf: int | None  # the output buffer set its kernel writes (None: no RTN pixel, nothing launched)


class KernelBackend:
    """Host-side logic of the CUDA kernels, shared by every executor (a CUDA device, or the host build).

    Subclasses provide memory, transfers and launches (the methods raising NotImplementedError); this
    class checks every input before a kernel sees it, builds the kernels' arguments from their
    :class:`~rtnstream.kernels._cuda.KernelSpec`, and turns their compacted output into corrected frames,
    per-frame counts and per-pixel counters. Work is submitted (:meth:`submit_temporal`,
    :meth:`submit_spatial`) and collected (:meth:`collect`) separately, through :data:`N_BUFFERS` sets of
    output buffers used in turn: at most that many frames may be submitted and not collected.

    Parameters
    ----------
    params : PixelParams
    table : ThresholdTable
    k_var : float
        Variability-veto factor (temporal references).
    spatial_size : int, odd, in [3, 9]
        Neighbourhood size of the spatial reference (checked only when ``n_slots`` is 0).
    n_slots : int
        Ring-buffer slots: W + 1 (W even, in [4, 80]) for the temporal references, 0 for spatial.

    Raises
    ------
    ValueError
        A size beyond what the kernels hold.
    """

    name = "kernels"
    device = "unknown"
    pipelined = True  # RTNEngine submits a frame and collects it one push later
    N_BUFFERS = 2
    _pool: ThreadPoolExecutor | None = None  # host threads of gather and scatter (None: the calling thread)

    def __init__(self, params: PixelParams, table: ThresholdTable, k_var: float, spatial_size: int,
                 n_slots: int) -> None:
        window = n_slots - 1
        if n_slots and not (4 <= window <= _cuda.MAX_VALUES and window % 2 == 0):
            raise ValueError(f"window (n_slots - 1) must be even and in [4, {_cuda.MAX_VALUES}] for the CUDA "
                             f"kernels, got {window}")
        if not n_slots and not (3 <= spatial_size <= MAX_SPATIAL_SIZE and spatial_size % 2 == 1):
            raise ValueError(f"spatial_size must be odd and in [3, {MAX_SPATIAL_SIZE}] for the CUDA kernels, "
                             f"got {spatial_size}")
        if params.n > np.iinfo(np.int32).max:
            raise ValueError(f"the CUDA kernels handle at most {np.iinfo(np.int32).max} RTN pixels, got "
                             f"{params.n}")
        self.params = params
        self.table = table
        self.k_var = float(k_var)
        self.n_slots = n_slots
        self.window = window if n_slots else 0
        self._dtype: np.dtype | None = None
        self._busy = [False] * self.N_BUFFERS
        self._turn = 0
        ny, nx = params.shape
        self._scalars = {"n": params.n, "n_two": params.n_two_trap, "gain": params.gain_e_per_adu, "k_var": self.k_var,
                         "n_lambda": table.lambda_nodes.size, "n_sigma": table.sigma_nodes.size,
                         "window": window, "ny": ny, "nx": nx, "size": spatial_size}
        host = {
            "index": (params.index, np.int64), "mu_adu": (params.mu_adu, np.float64),
            "delta_e": (params.delta_e, np.float64), "delta_adu_int": (params.delta_adu_int, np.int64),
            "delta_adu_float": (params.delta_adu_float, np.float64), "sigma_j": (params.sigma_j, np.int32),
            "sigma_w": (params.sigma_w, np.float64), "sigma_ok": (params.sigma_ok, np.uint8),
            "lambda_nodes": (table.lambda_nodes, np.float64), "q_lo": (table.q_lo, np.float64),
            "q_hi": (table.q_hi, np.float64),
        }
        host.update(_two_trap_arrays(params))
        if n_slots:
            host["rn2_e2"] = (params.rn2_e2, np.float64)
            host["window_slots"] = (np.zeros(window), np.int32)
        else:
            host["meanbias_adu"] = (params.meanbias_adu, np.float64)
        self._dev: dict[str, Any] = {
            name: self._to_device(np.ascontiguousarray(array, dtype=dtype))
            for name, (array, dtype) in host.items()
        }
        self._dev["changed_index"] = self._zeros((self.N_BUFFERS, params.n), np.int64)
        self._dev["counts"] = self._zeros((self.N_BUFFERS, _cuda.N_COUNTS), np.uint32)
        for name in _COUNTER_NAMES:  # uint32: 2^32 frames per series is out of reach
            self._dev[name] = self._zeros((params.n,), np.uint32)
        self._dev["n_level"] = self._zeros((max(params.n_two_trap, 1), N_LEVELS), np.uint32)

    # ---- what an executor provides -------------------------------------------------------------------

    def _to_device(self, array: np.ndarray) -> Any:
        """A device copy of ``array`` (kept for the life of the backend)."""
        raise NotImplementedError

    def _zeros(self, shape: tuple[int, ...], dtype: Any) -> Any:
        """A zeroed device array."""
        raise NotImplementedError

    def _prepare(self, kernel_name: str) -> None:
        """Check that kernel ``kernel_name`` is ready to launch (compiled when the executor was made)."""
        raise NotImplementedError

    def _store(self, slot: int, frame: np.ndarray) -> None:
        """Gather the RTN pixels of ``frame`` into device ring slot ``slot`` (may return before done)."""
        raise NotImplementedError

    def _upload(self, name: str, array: np.ndarray) -> None:
        """Copy ``array`` into device buffer ``name`` of the same size (may return before done; ``array``
        may be reused at once)."""
        raise NotImplementedError

    def _clear(self, array: Any) -> None:
        """Zero the device array ``array`` (a buffer or a row of one; in order with the launches)."""
        raise NotImplementedError

    def _launch(self, kernel_name: str, args: tuple, n_threads: int) -> None:
        """Launch ``kernel_name`` with ``n_threads`` threads (the RTN pixels, or the two-trap pixels; may
        return before done)."""
        raise NotImplementedError

    def _queue_counts(self, buf: int) -> None:
        """Queue the copy of output set ``buf``'s per-frame counts to the host, after the launch."""
        raise NotImplementedError

    def _read_counts(self, buf: int) -> np.ndarray:
        """Output set ``buf``'s per-frame counts, shape (N_COUNTS,), once its kernel is done."""
        raise NotImplementedError

    def _read_changed(self, buf: int, count: int) -> tuple[np.ndarray, np.ndarray]:
        """The first ``count`` (flat index, new value) pairs of output set ``buf``; valid until the next
        call with the same ``buf``."""
        raise NotImplementedError

    def _download(self, names: Sequence[str], count: int) -> list[np.ndarray]:
        """The first ``count`` elements of device buffers ``names``, once every queued operation is done.

        The arrays may be reused by the next call: read them before.
        """
        raise NotImplementedError

    def _stage(self, label: str) -> contextlib.AbstractContextManager:
        """Context around a host stage (timed by executors that time their stages)."""
        return contextlib.nullcontext()

    # ---- the backend interface (NumpyBackend's, plus submit / collect) ---------------------------------

    @property
    def counters(self) -> PixelCounters:
        """Per-RTN-pixel counts of the current series (a host copy), each of shape (n,), int64."""
        counters = [a.astype(np.int64) for a in self._download(_COUNTER_NAMES, self.params.n)]
        n_two = self.params.n_two_trap
        n_level = self._download(("n_level",), n_two * N_LEVELS)[0].astype(np.int64).reshape(n_two, N_LEVELS)
        return PixelCounters(*counters, n_level=n_level)

    def reset(self, dtype: Any) -> None:
        """Start a series of frames of ``dtype``: empty ring, zero per-pixel counters.

        Frames submitted and not collected are dropped.

        Raises
        ------
        ValueError
            ``dtype`` is not one of the supported frame dtypes.
        """
        for spec in self._specs():
            self._prepare(spec.kernel_name(dtype))
        dtype = np.dtype(dtype)
        n = self.params.n
        self._dev["changed_value"] = self._zeros((self.N_BUFFERS, n), dtype)
        if self.n_slots:
            self._dev["ring"] = self._zeros((self.n_slots, n), dtype)
        else:
            self._dev["frame"] = self._zeros(self.params.shape, dtype)
        for name in (*_COUNTER_NAMES, "n_level"):
            self._clear(self._dev[name])
        self._busy = [False] * self.N_BUFFERS
        self._dtype = dtype

    def store(self, slot: int, frame: np.ndarray) -> None:
        """Gather the RTN pixels of ``frame`` (shape (ny, nx)) into ring slot ``slot``."""
        self._check_frame(frame)
        if not 0 <= slot < self.n_slots:
            raise ValueError(f"slot must be in [0, {self.n_slots}), got {slot}")
        self._store(int(slot), frame)

    def submit_temporal(self, frame: np.ndarray, slot: int, window_slots: Sequence[int], in_place: bool = False
                        ) -> Ticket:
        """Queue the correction of ``frame`` (stored in ``slot``) against the median of ``window_slots``.

        ``window_slots`` are the W ring slots of the reference frames in time order. Returns at once;
        :meth:`collect` gives the result. ``in_place``: the result is ``frame`` itself, corrected.
        """
        self._check_frame(frame)
        if not 0 <= slot < self.n_slots:
            raise ValueError(f"slot must be in [0, {self.n_slots}), got {slot}")
        window = _check_window_slots(slot, window_slots, self.n_slots)
        if self.params.n == 0:
            return Ticket(frame, in_place, None)
        self._upload("window_slots", window)
        return self._submit(frame, in_place, _cuda.TEMPORAL, slot=int(slot))

    def submit_spatial(self, frame: np.ndarray, in_place: bool = False) -> Ticket:
        """Queue the correction of ``frame`` against the median of each RTN pixel's bias-subtracted
        neighbours (the frame is copied up before this returns). :meth:`collect` gives the result."""
        self._check_frame(frame)
        if self.n_slots:
            raise ValueError("correct_spatial needs a backend built with n_slots=0")
        if self.params.n == 0:
            return Ticket(frame, in_place, None)
        self._upload("frame", frame)
        return self._submit(frame, in_place, _cuda.SPATIAL)

    def collect(self, ticket: Ticket) -> tuple[np.ndarray, FrameCounts]:
        """Wait for a submitted frame and finish it: the corrected frame and its counts.

        Returns
        -------
        corrected : numpy.ndarray, shape (ny, nx), frame dtype
            A new array, or the submitted frame itself if submitted ``in_place``.
        counts : FrameCounts
        """
        frame, buf = ticket.frame, ticket.buf
        if buf is None:
            return (frame if ticket.in_place else frame.copy()), FrameCounts()
        if not self._busy[buf]:
            raise RuntimeError("this ticket was collected already, or dropped by reset()")
        with self._stage("copy (host)"):  # overlaps the device's work on this frame and the next
            out = frame if ticket.in_place else frame.copy()
        with self._stage("wait counts (host)"):
            counts = self._read_counts(buf).astype(np.int64)
        n_changed = int(counts[_cuda.COUNT_CHANGED])
        if n_changed:
            index, value = self._read_changed(buf, n_changed)
            with self._stage("scatter (host)"):
                scatter(out.reshape(-1), index, value, self._pool)
        self._busy[buf] = False
        return out, FrameCounts(low=int(counts[STATE_LOW]), high=int(counts[STATE_HIGH]),
                                vetoed=int(counts[STATE_VETO]), out_of_table=int(counts[STATE_OUT_OF_TABLE]))

    def correct_temporal(self, frame: np.ndarray, slot: int, window_slots: Sequence[int], in_place: bool = False
                         ) -> tuple[np.ndarray, FrameCounts]:
        """:meth:`submit_temporal` then :meth:`collect` (NumpyBackend's interface)."""
        return self.collect(self.submit_temporal(frame, slot, window_slots, in_place))

    def correct_spatial(self, frame: np.ndarray, in_place: bool = False) -> tuple[np.ndarray, FrameCounts]:
        """:meth:`submit_spatial` then :meth:`collect` (NumpyBackend's interface)."""
        return self.collect(self.submit_spatial(frame, in_place))

    # ---- shared steps ----------------------------------------------------------------------------------

    def _specs(self) -> tuple[_cuda.KernelSpec, ...]:
        """The kernels this backend launches: its reference's, and its two-trap kernel if it has two-trap
        pixels."""
        spec = _cuda.TEMPORAL if self.n_slots else _cuda.SPATIAL
        return (spec, _cuda.TWO_TRAP_KERNEL[spec.name]) if self.params.n_two_trap else (spec,)

    def _check_frame(self, frame: np.ndarray) -> None:
        if self._dtype is None:
            raise RuntimeError("call reset(dtype) before passing frames")
        if not isinstance(frame, np.ndarray):
            raise FrameError(f"frame must be a numpy array, got {type(frame).__name__}")
        if frame.dtype != self._dtype or frame.shape != tuple(self.params.shape):
            raise FrameError(f"frame has dtype {frame.dtype} and shape {frame.shape}; this series takes "
                             f"{self._dtype} frames of shape {tuple(self.params.shape)}")

    def _submit(self, frame: np.ndarray, in_place: bool, spec: _cuda.KernelSpec, **scalars: Any) -> Ticket:
        buf = self._turn
        if self._busy[buf]:
            raise RuntimeError(f"{self.N_BUFFERS} frames are submitted and not collected: collect one first")
        outputs = {name: self._dev[name][buf] for name in ("changed_index", "changed_value", "counts")}
        values = {**self._dev, **self._scalars, **scalars, **outputs}
        self._clear(outputs["counts"])
        self._launch(spec.kernel_name(self._dtype), spec.arguments(values, self._dtype), self.params.n)
        if self.params.n_two_trap:  # then the two-trap pixels, which the kernel above left alone
            two = _cuda.TWO_TRAP_KERNEL[spec.name]
            self._launch(two.kernel_name(self._dtype), two.arguments(values, self._dtype), self.params.n_two_trap)
        self._queue_counts(buf)
        self._busy[buf] = True
        self._turn = (buf + 1) % self.N_BUFFERS
        return Ticket(frame, in_place, buf)


class StageTimer:
    """Time spent per stage by a :class:`CupyBackend` (benchmarks only).

    Device stages (``H2D``, ``kernel``, ``D2H``) are timed with CUDA events on the backend's stream,
    host stages (gather, copy, scatter) with the host clock. :meth:`collect` waits for the recorded events
    and returns the totals so far, in milliseconds.
    """

    def __init__(self, cupy) -> None:
        self._cupy = cupy
        self._pending: list[tuple[str, Any, Any]] = []
        self.totals_ms: dict[str, float] = defaultdict(float)

    @contextlib.contextmanager
    def device(self, label: str, stream) -> Iterator[None]:
        start, end = self._cupy.cuda.Event(), self._cupy.cuda.Event()
        start.record(stream)
        yield
        end.record(stream)
        self._pending.append((label, start, end))

    @contextlib.contextmanager
    def host(self, label: str) -> Iterator[None]:
        t0 = time.perf_counter()
        yield
        self.totals_ms[label] += (time.perf_counter() - t0) * 1e3

    def collect(self) -> dict[str, float]:
        """Totals per stage (ms) of everything timed so far."""
        for label, start, end in self._pending:
            end.synchronize()
            self.totals_ms[label] += self._cupy.cuda.get_elapsed_time(start, end)
        self._pending.clear()
        return dict(self.totals_ms)


class _PinnedBuffers:
    """Pinned host buffers used in turn; one is reused only after the copies reading it have finished."""

    def __init__(self, cupy, cupyx, nbytes: int, count: int) -> None:
        self._buffers = [cupyx.empty_pinned((max(nbytes, 1),), np.uint8) for _ in range(count)]
        self._events = [cupy.cuda.Event(disable_timing=True) for _ in range(count)]
        self._turn = 0

    def take(self, dtype: np.dtype, size: int) -> np.ndarray:
        """The next buffer as ``size`` elements of ``dtype`` (waits until its previous copy is done)."""
        self._events[self._turn].synchronize()
        return self._buffers[self._turn][: size * dtype.itemsize].view(dtype)

    def release(self, stream) -> None:
        """Mark the buffer from :meth:`take` as read by the copies queued so far on ``stream``."""
        self._events[self._turn].record(stream)
        self._turn = (self._turn + 1) % len(self._buffers)


class CupyBackend(KernelBackend):
    """The correction engine's backend on a CUDA device (same interface and output as NumpyBackend).

    Everything that can fail on a machine is done here, when the backend is made: CuPy import, NVRTC,
    device, compilation of every kernel of the reference (all dtypes, W fixed at compile time), device
    memory of the per-pixel parameters and the table.

    Parameters
    ----------
    params : PixelParams
    table : ThresholdTable
    k_var : float
    spatial_size : int, odd, in [3, 9]
    n_slots : int
        W + 1 (W even, in [4, 80]) for the temporal references, 0 for spatial.
    threads : int, optional
        Host threads of the gather (default: the number of CPUs).

    Raises
    ------
    ValueError
        A size beyond the kernels' limits (checked before any CUDA call).
    BackendUnavailableError
        CuPy cannot be imported or load NVRTC, no CUDA device is usable, the kernels do not compile (no
        CUDA headers, say) or device memory cannot be allocated; the message says which and how to install.
    """

    name = "cupy"

    def __init__(self, params: PixelParams, table: ThresholdTable, k_var: float, spatial_size: int,
                 n_slots: int, threads: int | None = None) -> None:
        cupy = _import_cupy(check_nvrtc=True)
        self.device = "CUDA device"
        try:
            import cupyx

            self._cupy, self._cupyx = cupy, cupyx
            runtime = cupy.cuda.runtime
            device_id = runtime.getDevice()
            props = runtime.getDeviceProperties(device_id)
            name = props["name"].decode() if isinstance(props["name"], bytes) else str(props["name"])
            self.device = f"{name} (cuda:{device_id}, sm_{props['major']}{props['minor']})"
            self._stream = cupy.cuda.Stream(non_blocking=True)
            self._copy_stream = cupy.cuda.Stream(non_blocking=True)  # compacted outputs down, beside the kernels
            self.timer: StageTimer | None = None
            with self._stream:
                super().__init__(params, table, k_var, spatial_size, n_slots)
            names = tuple(spec.kernel_name(dtype) for spec in self._specs() for dtype in _cuda.DTYPE_SUFFIX)
            module = _cuda.load_module(_cuda.CUDA_SOURCES[0], self.window, names)
            self._kernels = {name: module.get_function(name) for name in names}
            self._stream.synchronize()
            # Host staging: ring stores alternate between two pinned buffers (the host gathers frame t+1
            # while frame t is copied); counts and compacted outputs come down into one pinned set per
            # output buffer.
            self._ring_stage = _PinnedBuffers(cupy, cupyx, params.n * 8, 2) if n_slots else None
            self._upload_stage: dict[str, _PinnedBuffers] = {}
            self._counts_host = cupyx.empty_pinned((self.N_BUFFERS, _cuda.N_COUNTS), np.uint32)
            self._counts_ready = [cupy.cuda.Event(disable_timing=True) for _ in range(self.N_BUFFERS)]
            self._index_host = cupyx.empty_pinned((self.N_BUFFERS, max(params.n, 1)), np.int64)
            self._value_host: np.ndarray | None = None
            self._download_stage: dict[str, np.ndarray] = {}
        except (ValueError, BackendUnavailableError):
            raise
        except Exception as exc:  # CompileException, missing headers, CUDARuntimeError, OutOfMemoryError...
            raise BackendUnavailableError(f"the cupy backend cannot run on {self.device}: {_reason(exc)}; "
                                          f"{INSTALL_HINT}") from exc
        self._threads = threads or os.cpu_count() or 1
        self._pool = ThreadPoolExecutor(self._threads, thread_name_prefix="rtn-gather") if self._threads > 1 else None

    def enable_timing(self) -> StageTimer:
        """Time every stage from now on (benchmarks); returns the :class:`StageTimer` that collects."""
        self.timer = StageTimer(self._cupy)
        return self.timer

    def _stage(self, label: str) -> contextlib.AbstractContextManager:
        return self.timer.host(label) if self.timer else contextlib.nullcontext()

    def _device_stage(self, label: str, stream=None) -> contextlib.AbstractContextManager:
        return self.timer.device(label, stream or self._stream) if self.timer else contextlib.nullcontext()

    def _to_device(self, array: np.ndarray) -> Any:
        with self._stream:
            return self._cupy.asarray(array)

    def _zeros(self, shape: tuple[int, ...], dtype: Any) -> Any:
        try:
            with self._stream:
                return self._cupy.zeros(shape, dtype=dtype)
        except Exception as exc:  # cupy.cuda.memory.OutOfMemoryError
            raise BackendUnavailableError(f"the cupy backend cannot allocate {shape} {np.dtype(dtype)} on "
                                          f"{self.device}: {_reason(exc)}") from exc

    def reset(self, dtype: Any) -> None:
        super().reset(dtype)
        if self._value_host is None or self._value_host.dtype != self._dtype:
            self._value_host = self._cupyx.empty_pinned((self.N_BUFFERS, max(self.params.n, 1)), self._dtype)

    def _prepare(self, kernel_name: str) -> None:
        if kernel_name not in self._kernels:
            raise KeyError(f"kernel {kernel_name} was not compiled")

    def _copy_in(self, device_array, host: np.ndarray) -> None:
        runtime = self._cupy.cuda.runtime
        if not host.nbytes:
            return
        with self._device_stage("H2D"):
            runtime.memcpyAsync(device_array.data.ptr, host.ctypes.data, host.nbytes,
                                runtime.memcpyHostToDevice, self._stream.ptr)

    def _store(self, slot: int, frame: np.ndarray) -> None:
        with self._stage("gather (host)"):
            host = self._ring_stage.take(self._dtype, self.params.n)
            gather(frame.reshape(-1), self.params.index, host, self._pool)
        self._copy_in(self._dev["ring"][slot], host)
        self._ring_stage.release(self._stream)

    def _upload(self, name: str, array: np.ndarray) -> None:
        device_array = self._dev[name]
        stage = self._upload_stage.get(name)
        if stage is None:
            stage = self._upload_stage[name] = _PinnedBuffers(self._cupy, self._cupyx, device_array.nbytes, 2)
        with self._stage(f"stage {name} (host)"):
            host = stage.take(device_array.dtype, device_array.size)
            np.copyto(host, array.reshape(-1))
        self._copy_in(device_array, host)
        stage.release(self._stream)

    def _clear(self, array: Any) -> None:
        if array.nbytes:
            self._cupy.cuda.runtime.memsetAsync(array.data.ptr, 0, array.nbytes, self._stream.ptr)

    def _launch(self, kernel_name: str, args: tuple, n_threads: int) -> None:
        blocks = -(-n_threads // BLOCK_THREADS)
        with self._device_stage("kernel"), self._stream:
            self._kernels[kernel_name]((blocks,), (BLOCK_THREADS,), args)

    def _queue_counts(self, buf: int) -> None:
        runtime = self._cupy.cuda.runtime
        host = self._counts_host[buf]
        runtime.memcpyAsync(host.ctypes.data, self._dev["counts"][buf].data.ptr, host.nbytes,
                            runtime.memcpyDeviceToHost, self._stream.ptr)
        self._counts_ready[buf].record(self._stream)

    def _read_counts(self, buf: int) -> np.ndarray:
        self._counts_ready[buf].synchronize()  # this frame's kernel and counts only, not the next frame's
        return self._counts_host[buf].copy()

    def _read_changed(self, buf: int, count: int) -> tuple[np.ndarray, np.ndarray]:
        runtime = self._cupy.cuda.runtime
        stream = self._copy_stream
        stream.wait_event(self._counts_ready[buf])
        with self._device_stage("D2H", stream):
            for device_array, host in ((self._dev["changed_index"][buf], self._index_host[buf]),
                                       (self._dev["changed_value"][buf], self._value_host[buf])):
                runtime.memcpyAsync(host.ctypes.data, device_array.data.ptr, count * host.itemsize,
                                    runtime.memcpyDeviceToHost, stream.ptr)
        with self._stage("wait D2H (host)"):
            stream.synchronize()
        return self._index_host[buf][:count], self._value_host[buf][:count]

    def _download(self, names: Sequence[str], count: int) -> list[np.ndarray]:
        runtime = self._cupy.cuda.runtime
        out = []
        with self._device_stage("D2H"):
            for name in names:
                device_array = self._dev[name]
                host = self._download_stage.get(name)
                if host is None or host.dtype != device_array.dtype:
                    host = self._cupyx.empty_pinned((device_array.size,), device_array.dtype)
                    self._download_stage[name] = host
                if count:
                    runtime.memcpyAsync(host.ctypes.data, device_array.data.ptr, count * host.itemsize,
                                        runtime.memcpyDeviceToHost, self._stream.ptr)
                out.append(host[:count])
        self._stream.synchronize()
        return out
