"""Test helpers: the CUDA source built for the host, a KernelBackend running it, and simulated test series.

``build_host_library`` compiles ``kernels/rtn_correct.cu`` with g++ after force-including
``kernels/cuda_host_shim.h`` (each kernel becomes a host function whose grid-stride loop visits every RTN
pixel in order), IEEE like the GPU build: ``-ffp-contract=off``, no ``-ffast-math``. ``HostKernelBackend``
is :class:`~rtnstream.kernels.cupy_backend.KernelBackend` with host memory for device memory and ctypes
calls for launches, so the tests run the CuPy backend's own host-side logic around the same kernel code.
The series builders and comparison helpers are shared by the host tests and the GPU tests.
"""

from __future__ import annotations

import ctypes
import shutil
import subprocess
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from rtnstream.kernels import _cuda
from rtnstream.kernels.cube import RTNCube
from rtnstream.kernels.cupy_backend import KernelBackend
from rtnstream.kernels.engine import CorrectedFrame, EngineSettings, RTNEngine
from rtnstream.kernels.lut import ThresholdTable
from rtnstream.kernels.numpy_backend import gather
from rtnstream.kernels.pixels import PixelParams
from rtnstream.kernels.simulate import Scene, SecondTraps, SensorModel, two_trap_frames, two_trap_true_cube

__all__ = [
    "HOST_FLAGS",
    "SHIM",
    "find_cxx",
    "build_host_library",
    "HostKernels",
    "HostKernelBackend",
    "host_engine",
    "Series",
    "simulated_series",
    "threshold_series",
    "subnormal_series",
    "flush_subnormals",
    "run_engine",
    "assert_one_push_later",
    "assert_same_run",
]

SHIM = _cuda.SOURCE_DIR / "cuda_host_shim.h"
HOST_FLAGS = ("-std=c++17", "-O2", "-fPIC", "-shared", "-ffp-contract=off", "-fno-fast-math", "-Wall",
              "-Wextra", "-Werror")
_CTYPES = {"i32": ctypes.c_int32, "i64": ctypes.c_int64, "f64": ctypes.c_double}


def find_cxx() -> str | None:
    """Path of a C++ compiler (g++, c++ or clang++), or None."""
    for name in ("g++", "c++", "clang++"):
        path = shutil.which(name)
        if path:
            return path
    return None


def build_host_library(cxx: str, out_dir: Path, source: str = _cuda.CUDA_SOURCES[0], window: int = 0) -> Path:
    """Compile ``kernels/<source>`` for the host into a shared library in ``out_dir``.

    ``window`` > 0 fixes the temporal window at compile time (``-DRTN_WINDOW``), as the CuPy backend does.

    Raises
    ------
    RuntimeError
        The compiler failed (its messages included).
    """
    lib = out_dir / f"{Path(source).stem}_w{window}_host.so"
    cmd = [cxx, *HOST_FLAGS, f"-DRTN_WINDOW={window}", "-include", str(SHIM), "-x", "c++",
           str(_cuda.SOURCE_DIR / source), "-o", str(lib)]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"host build failed ({' '.join(cmd)}):\n{proc.stderr}")
    return lib


class HostKernels:
    """The kernels of a host library, with ctypes signatures taken from their KernelSpec."""

    def __init__(self, path: Path) -> None:
        self._lib = ctypes.CDLL(str(path))
        self._fns: dict[str, Callable] = {}
        for spec in _cuda.KERNELS:
            argtypes = [_CTYPES.get(kind, ctypes.c_void_p) for _name, kind in spec.params]
            for dtype in _cuda.DTYPE_SUFFIX:
                fn = getattr(self._lib, spec.kernel_name(dtype))
                fn.argtypes = argtypes
                fn.restype = None
                self._fns[spec.kernel_name(dtype)] = fn

    def __contains__(self, kernel_name: str) -> bool:
        return kernel_name in self._fns

    def launch(self, kernel_name: str, args: Sequence) -> None:
        """Run ``kernel_name`` to completion with ``args`` (NumPy arrays and NumPy scalars)."""
        self._fns[kernel_name](*(a.ctypes.data if isinstance(a, np.ndarray) else a.item() for a in args))


class HostKernelBackend(KernelBackend):
    """The CuPy backend's host-side logic over the host build of the kernels (host arrays for device ones)."""

    name = "cuda-host"
    device = "cpu (host build of rtn_correct.cu)"

    def __init__(self, kernels: HostKernels, params: PixelParams, table: ThresholdTable, k_var: float,
                 spatial_size: int, n_slots: int) -> None:
        self._kernels = kernels
        super().__init__(params, table, k_var, spatial_size, n_slots)

    def _to_device(self, array: np.ndarray) -> np.ndarray:
        return array.copy()

    def _zeros(self, shape, dtype) -> np.ndarray:
        return np.zeros(shape, dtype=dtype)

    def _prepare(self, kernel_name: str) -> None:
        if kernel_name not in self._kernels:
            raise KeyError(f"the host library has no kernel {kernel_name}")

    def _store(self, slot: int, frame: np.ndarray) -> None:
        gather(frame.reshape(-1), self.params.index, self._dev["ring"][slot])

    def _upload(self, name: str, array: np.ndarray) -> None:
        np.copyto(self._dev[name], array.reshape(self._dev[name].shape))

    def _clear(self, array: np.ndarray) -> None:
        array.fill(0)

    def _launch(self, kernel_name: str, args: tuple, n_threads: int) -> None:
        self._kernels.launch(kernel_name, args)

    def _queue_counts(self, buf: int) -> None:
        pass  # the launch has finished: the counts are in host memory already

    def _read_counts(self, buf: int) -> np.ndarray:
        return self._dev["counts"][buf].copy()

    def _read_changed(self, buf: int, count: int) -> tuple[np.ndarray, np.ndarray]:
        return self._dev["changed_index"][buf][:count], self._dev["changed_value"][buf][:count]

    def _download(self, names: Sequence[str], count: int) -> list[np.ndarray]:
        return [self._dev[name].reshape(-1)[:count] for name in names]


def host_engine(kernels: HostKernels, cube: RTNCube, settings: EngineSettings, track_states: bool = False
                ) -> RTNEngine:
    """An RTNEngine whose backend is the host build of the kernels."""
    engine = RTNEngine(cube, settings, backend="numpy", track_states=track_states)
    n_slots = settings.window + 1 if settings.temporal else 0
    engine.backend = HostKernelBackend(kernels, engine.params, engine.table, settings.k_var,
                                       settings.spatial_size, n_slots)
    return engine


# ---- test series ------------------------------------------------------------------------------------------


@dataclass
class Series:
    """A simulated series: the cube, its frames (n, ny, nx) in the test dtype, and what it exercises."""

    label: str
    cube: RTNCube
    frames: np.ndarray


def _to_dtype(frames: np.ndarray, dtype: np.dtype) -> np.ndarray:
    if np.issubdtype(dtype, np.integer):
        info = np.iinfo(dtype)
        return np.clip(frames, info.min, info.max).astype(dtype)
    return frames.astype(dtype)


def simulated_series(dtype, scene: str, bias_level_adu: float, n_frames: int, shape=(30, 36),
                     seed: int = 0, specials: tuple[float, ...] = (np.inf, -np.inf),
                     two_trap_fraction: float = 0.0) -> Series:
    """Frames of a simulated sensor (10 % RTN pixels) converted to ``dtype`` (saturating at its range).

    A bias level near the top or the bottom of the dtype's range makes corrections saturate there.
    Float series also get the ``specials`` values at a few RTN pixels of three frames.
    ``two_trap_fraction`` > 0: that fraction of all pixels (taken among the RTN pixels) has a second trap
    (:class:`~rtnstream.kernels.simulate.SecondTraps`, in the frames and in the cube).
    """
    dtype = np.dtype(dtype)
    sensor = SensorModel.random(shape, rtn_fraction=0.1, bias_level_adu=bias_level_adu, seed=seed)
    sc = Scene.make(scene, shape, sky_e=2.0, n_stars=3, star_flux_e=(500.0, 30000.0), seed=seed)
    if two_trap_fraction:
        traps = SecondTraps.random(sensor, two_trap_fraction, seed=seed + 3)
        data = np.stack([f.data for f in two_trap_frames(sensor, traps, n_frames, sc, seed=seed + 1)])
        cube = two_trap_true_cube(sensor, traps)
    else:
        data, _states, _clean = sensor.stack(n_frames, sc, seed=seed + 1)
        cube = sensor.true_cube()
    frames = _to_dtype(data.astype(np.float64), dtype)
    if np.issubdtype(dtype, np.floating):
        rng = np.random.default_rng(seed + 2)
        flat = frames.reshape(n_frames, -1)
        for t in rng.choice(n_frames, 3, replace=False):
            flat[t, rng.choice(sensor.rtn_index, len(specials), replace=False)] = specials
    label = f"{dtype}-{scene}-bias{bias_level_adu:g}" + (f"-2trap{two_trap_fraction:g}" if two_trap_fraction else "")
    return Series(label, cube, frames)


def threshold_series(make_cube: Callable[..., RTNCube], table: ThresholdTable, window: int, n_frames: int,
                     lambda_range_e=(0.0, 0.0), shape=(24, 30), seed: int = 3) -> Series:
    """float64 frames with pixels exactly at, or one ulp beside, their decision thresholds.

    The cube (every pixel RTN, from the ``make_cube`` fixture) has mu = 0 adu and g = 0.5 e-/ADU, so a
    signal s = (x - mu) g is exact and x = q / g puts it exactly at q. Every pixel reads ``L / g``, L drawn
    per pixel from ``lambda_range_e`` (electron): a temporal reference then gives lambda = L (computed here
    as the engine does; keep the default L = 0 for the spatial reference). In every ``window + 1``-th
    frame, 10 % of the pixels are put at one of the four thresholds of section 3 at their lambda
    (``q_lo - D``, ``min(q_lo, q_hi - D)``, ``max(q_hi, q_lo + D)``, ``q_hi + D``), moved by -1, 0 or
    +1 ulp.
    """
    rng = np.random.default_rng(seed)
    g = 0.5
    sigma = rng.uniform(0.5, 4.0, shape)
    cube = make_cube(np.zeros(shape), rng.uniform(3.0, 10.0, shape) * sigma, sigma, gain_e_per_adu=g,
                     table=table)
    params = PixelParams.from_cube(cube, table)
    level = rng.uniform(*lambda_range_e, params.n) / g
    lam = np.maximum((level - params.mu_adu) * g, 0.0)
    q_lo, q_hi, _ok = table.lookup(lam, params.sigma_j, params.sigma_w)
    d = params.delta_e
    thresholds = np.stack([q_lo - d, np.minimum(q_lo, q_hi - d), np.maximum(q_hi, q_lo + d), q_hi + d])
    frames = np.broadcast_to(level, (n_frames, params.n)).copy()
    for t in range(0, n_frames, window + 1):
        k = rng.choice(params.n, params.n // 10, replace=False)
        x = thresholds[rng.integers(0, 4, k.size), k] / g
        ulps = rng.integers(-1, 2, k.size)
        moved = np.where(ulps > 0, np.nextafter(x, np.inf), x)
        frames[t, k] = np.where(ulps < 0, np.nextafter(x, -np.inf), moved)
    return Series("float64-thresholds", cube, frames.reshape((n_frames, *shape)))


def subnormal_series(make_cube: Callable[..., RTNCube], table: ThresholdTable, window: int = 6,
                     n_frames: int = 22, shape=(24, 30), seed: int = 5) -> Series:
    """float32 frames where float32 subnormals (below 1.18e-38) decide the variability veto.

    The cube (every pixel RTN) has mu = 0 adu, g = 1 e-/adu and no read noise (RN = 0). Pixels read 0,
    except a few subnormal values (a sixth of the pixels in each frame) and, in every ``window + 1``-th
    frame, a jump of D (4-9 e-) in a third of them. A window whose median is 0 but which holds a
    subnormal has lambda = 0 and a spread > 0, so ``spread > k_var * sqrt(lambda + RN^2) = 0`` vetoes
    the jump; with the subnormals flushed to zero (CUDA's FTZ) the spread is 0 and the jump is corrected.
    """
    rng = np.random.default_rng(seed)
    sigma = np.full(shape, 0.6)
    cube = make_cube(np.zeros(shape), rng.uniform(4.0, 9.0, shape), sigma, gain_e_per_adu=1.0,
                     readnoise_e=0.0, table=table)
    params = PixelParams.from_cube(cube, table)
    frames = np.zeros((n_frames, params.n), dtype=np.float32)
    tiny = float(np.finfo(np.float32).tiny)
    for t in range(n_frames):
        k = rng.choice(params.n, params.n // 6, replace=False)
        frames[t, k] = rng.uniform(0.0, tiny, k.size).astype(np.float32)
        if t % (window + 1) == 0:
            k = rng.choice(params.n, params.n // 3, replace=False)
            frames[t, k] = params.delta_e[k].astype(np.float32)
    return Series("float32-subnormals", cube, frames.reshape((n_frames, *shape)))


def flush_subnormals(a: np.ndarray) -> np.ndarray:
    """``a`` with every float32 subnormal replaced by a zero of its sign (what FTZ does to inputs)."""
    tiny = np.finfo(np.float32).tiny
    return np.where(np.abs(a) < tiny, np.copysign(np.float32(0), a), a).astype(a.dtype)


def assert_one_push_later(want: list[list[int]], got: list[list[int]], corrected: Sequence[bool]) -> None:
    """Frame indices out per push: ``got`` (a pipelined engine) against ``want`` (the NumPy engine).

    The same frames in the same order overall; a frame the NumPy engine returns at push t comes out at
    push t or t + 1, and the last frame corrected at push t (the one left in flight) at t + 1.
    """
    assert [i for push in got for i in push] == [i for push in want for i in push]
    for t, indices in enumerate(want[:-1]):
        assert all(i in got[t] or i in got[t + 1] for i in indices), (t, want, got)
        last = [i for i in indices if corrected[i]][-1:]
        assert not set(last) & set(got[t]) and set(last) <= set(got[t + 1]), (t, want, got)


def run_engine(engine: RTNEngine, frames: np.ndarray) -> tuple[list[CorrectedFrame], dict[str, np.ndarray]]:
    """Push every frame and finish; returns the frames out (in order) and the per-pixel counter maps (with
    the bias offset map and the two-trap pixels' per-level counts, ``n_level``)."""
    engine.start_series()
    out: list[CorrectedFrame] = []
    for frame in frames:
        out.extend(engine.push(frame))
    out.extend(engine.finish())
    maps = engine.pixel_counters()
    maps["bias_offset"] = engine.bias_offset_map()
    maps["n_level"] = engine.two_trap_level_counts()
    return out, maps


def assert_same_run(expected: tuple, got: tuple, label: str) -> None:
    """Frames (bit for bit, NaN included), per-frame counts, per-frame states (where tracked) and per-pixel
    counters identical."""
    exp_frames, exp_maps = expected
    got_frames, got_maps = got
    assert [f.index for f in got_frames] == [f.index for f in exp_frames], label
    for e, g in zip(exp_frames, got_frames, strict=True):
        assert g.data.dtype == e.data.dtype, label
        diff = np.flatnonzero(g.data.view(np.uint8) != e.data.view(np.uint8))
        assert diff.size == 0, f"{label}: frame {e.index} differs at {diff.size} bytes"
        assert g.counts == e.counts, f"{label}: frame {e.index} counts {g.counts} != {e.counts}"
        assert g.corrected == e.corrected, label
        assert (g.states is None) == (e.states is None), label
        if e.states is not None:
            np.testing.assert_array_equal(g.states, e.states, err_msg=f"{label}: frame {e.index} states")
    for name, exp in exp_maps.items():
        np.testing.assert_array_equal(got_maps[name], exp, err_msg=f"{label}: {name}")
