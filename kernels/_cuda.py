"""The one loader of the CUDA C sources in ``kernels/`` and the description of their kernels' parameters.

The sources are files beside this module (``rtn_correct.cu`` and the header it includes,
``rtn_two_trap.cuh``), never Python strings. :func:`load_module` compiles one with ``cupy.RawModule`` (NVRTC)
under explicit options (:data:`NVRTC_OPTIONS`, FMA contraction off so float64 results match the NumPy backend
bit for bit), after :func:`source_text` has inlined the included headers (NVRTC has no include path here) with
``#line`` directives so that compiler messages point at the real file and line, and caches the module per
device. CuPy is imported
inside :func:`load_module` only; everything else here is plain NumPy, shared by the CuPy backend and the
host build of the same sources that the tests run on the CPU.

Each kernel's parameter list is written once, as a :class:`KernelSpec`: the launch code builds its
arguments from it (:meth:`KernelSpec.arguments`, which checks every array's dtype first) and the host test
build derives its ctypes signatures from it.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "SOURCE_DIR",
    "CUDA_SOURCES",
    "CUDA_HEADERS",
    "NVRTC_OPTIONS",
    "nvrtc_options",
    "MAX_VALUES",
    "COUNT_CHANGED",
    "N_COUNTS",
    "DTYPE_SUFFIX",
    "KernelSpec",
    "TEMPORAL",
    "SPATIAL",
    "TEMPORAL_TWO_TRAP",
    "SPATIAL_TWO_TRAP",
    "KERNELS",
    "TWO_TRAP_KERNEL",
    "dtype_suffix",
    "source_text",
    "load_module",
]

SOURCE_DIR = Path(__file__).resolve().parent
CUDA_SOURCES = ("rtn_correct.cu",)
CUDA_HEADERS = ("rtn_two_trap.cuh",)  # the headers a source may include (``#include "<name>"``), inlined
# --fmad=false: no multiply-add contraction, so every float64 operation rounds as NumPy's does. (CuPy appends
# -ftz=true after these; rtn_correct.cu converts float32 in explicit PTX, which FTZ does not touch.)
NVRTC_OPTIONS = ("--std=c++17", "--fmad=false")
MAX_VALUES = 80  # RTN_MAX_VALUES in rtn_correct.cu: largest window W and spatial neighbourhood (9 x 9 - 1)
COUNT_CHANGED = 5  # RTN_COUNT_CHANGED: slot of the per-frame counts holding the number of corrected pixels
N_COUNTS = 6  # per-frame counts: one per decision code (numpy_backend.STATE_*) and COUNT_CHANGED

DTYPE_SUFFIX: dict[np.dtype, str] = {
    np.dtype(np.uint8): "u8",
    np.dtype(np.uint16): "u16",
    np.dtype(np.int16): "i16",
    np.dtype(np.uint32): "u32",
    np.dtype(np.int32): "i32",
    np.dtype(np.float32): "f32",
    np.dtype(np.float64): "f64",
}

# Parameter kinds: scalars, pointers to fixed dtypes, and "T*" for the frame dtype.
_SCALARS = {"i32": np.int32, "i64": np.int64, "f64": np.float64}
_POINTERS = {"i32*": np.dtype(np.int32), "i64*": np.dtype(np.int64), "f64*": np.dtype(np.float64),
             "u8*": np.dtype(np.uint8), "u32*": np.dtype(np.uint32)}
FRAME_POINTER = "T*"


def dtype_suffix(dtype: Any, name: str = "dtype") -> str:
    """Suffix of the kernel wrappers for frames of ``dtype`` (the whitelist checked before any launch).

    Raises
    ------
    TypeError
        ``dtype`` is not a NumPy dtype specification.
    ValueError
        ``dtype`` is not one of the supported frame dtypes (native byte order).
    """
    try:
        dt = np.dtype(dtype)
    except TypeError as exc:
        raise TypeError(f"{name} must be a numpy dtype, got {dtype!r}") from exc
    if dt not in DTYPE_SUFFIX or not dt.isnative:
        supported = ", ".join(str(d) for d in DTYPE_SUFFIX)
        raise ValueError(f"{name} {dt.str} is not supported by the CUDA kernels; supported (native order): "
                         f"{supported}")
    return DTYPE_SUFFIX[dt]


@dataclass(frozen=True)
class KernelSpec:
    """Parameter list of one kernel of ``rtn_correct.cu``, in the order of its C signature.

    Attributes
    ----------
    name : str
        Kernel name without the dtype suffix (``rtn_temporal``).
    params : tuple of (str, str)
        ``(name, kind)`` pairs; kind is a scalar (``'i32'``, ``'i64'``, ``'f64'``), a pointer to a fixed
        dtype (``'i64*'``, ``'f64*'``, ...) or ``'T*'``, a pointer to the frame dtype.
    """

    name: str
    params: tuple[tuple[str, str], ...]

    def kernel_name(self, dtype: Any) -> str:
        """Name of the ``extern "C"`` wrapper for frames of ``dtype`` (checked against the whitelist)."""
        return f"{self.name}_{dtype_suffix(dtype)}"

    def arguments(self, values: Mapping[str, Any], dtype: Any) -> tuple:
        """Arguments in signature order: scalars as NumPy scalars of the C type, arrays checked.

        Parameters
        ----------
        values : mapping
            Every parameter by name: numbers for scalars, arrays (NumPy or CuPy, C-contiguous) for pointers.
        dtype : numpy.dtype
            Frame dtype (the type of ``'T*'`` parameters).

        Raises
        ------
        KeyError
            A parameter is missing from ``values``.
        ValueError
            An array has the wrong dtype or is not C-contiguous.
        """
        frame_dtype = np.dtype(dtype)
        out = []
        for name, kind in self.params:
            value = values[name]
            if kind in _SCALARS:
                out.append(_SCALARS[kind](value))
                continue
            expected = frame_dtype if kind == FRAME_POINTER else _POINTERS[kind]
            if value.dtype != expected:
                raise ValueError(f"{self.name}: argument {name} has dtype {value.dtype}, the kernel takes "
                                 f"{expected}")
            if not value.flags.c_contiguous:
                raise ValueError(f"{self.name}: argument {name} must be C-contiguous")
            out.append(value)
        return tuple(out)


_PIXEL_PARAMS = (("index", "i64*"), ("mu_adu", "f64*"), ("delta_e", "f64*"), ("delta_adu_int", "i64*"),
                 ("delta_adu_float", "f64*"), ("sigma_j", "i32*"), ("sigma_w", "f64*"), ("sigma_ok", "u8*"))
_TWO_TRAP_PARAMS = (("n_two", "i64"), ("tt_slot", "i32*"), ("delta2_e", "f64*"), ("delta2_adu_int", "i64*"),
                    ("delta2_adu_float", "f64*"), ("tt_sigma_e", "f64*"), ("tt_log_prior", "f64*"),
                    ("tt_log_prior_centre", "f64*"))
_TABLE_PARAMS = (("lambda_nodes", "f64*"), ("n_lambda", "i32"), ("q_lo", "f64*"), ("q_hi", "f64*"),
                 ("n_sigma", "i32"))
_OUTPUT_PARAMS = (("changed_index", "i64*"), ("changed_value", "T*"), ("counts", "u32*"), ("n_lo", "u32*"),
                  ("n_hi", "u32*"), ("n_veto", "u32*"), ("n_frames", "u32*"), ("n_level", "u32*"))

TEMPORAL = KernelSpec("rtn_temporal", (
    ("ring", "T*"), ("window_slots", "i32*"), ("window", "i32"), ("slot", "i32"), ("n", "i64"),
    ("gain", "f64"), ("k_var", "f64"), ("rn2_e2", "f64*"),
) + _PIXEL_PARAMS + _TWO_TRAP_PARAMS + _TABLE_PARAMS + _OUTPUT_PARAMS)

SPATIAL = KernelSpec("rtn_spatial", (
    ("frame", "T*"), ("meanbias_adu", "f64*"), ("ny", "i32"), ("nx", "i32"), ("size", "i32"), ("n", "i64"),
    ("gain", "f64"),
) + _PIXEL_PARAMS + _TWO_TRAP_PARAMS + _TABLE_PARAMS + _OUTPUT_PARAMS)

# The two-trap pixels' kernels (one thread each, tt_pos: their positions among the RTN pixels), launched
# after the main kernel of the reference when the cube has two-trap pixels.
TEMPORAL_TWO_TRAP = KernelSpec("rtn_temporal_two_trap", TEMPORAL.params + (("tt_pos", "i64*"),))
SPATIAL_TWO_TRAP = KernelSpec("rtn_spatial_two_trap", SPATIAL.params + (("tt_pos", "i64*"),))
KERNELS = (TEMPORAL, SPATIAL, TEMPORAL_TWO_TRAP, SPATIAL_TWO_TRAP)
TWO_TRAP_KERNEL = {TEMPORAL.name: TEMPORAL_TWO_TRAP, SPATIAL.name: SPATIAL_TWO_TRAP}


_INCLUDE = re.compile(r'^#include "([^"]+)"[ \t]*$')


def source_text(filename: str) -> str:
    """The CUDA source ``kernels/<filename>`` as NVRTC compiles it, every ``#include "<header>"`` inlined.

    The text starts with ``#line 1 "<path>"``; an included header (one of :data:`CUDA_HEADERS`) is put in
    place of its ``#include`` line between ``#line 1 "<header path>"`` and ``#line <next line> "<path>"``
    (its ``#pragma once`` blanked), so compiler messages name the real file and line everywhere.

    Raises
    ------
    ValueError
        ``filename`` is not one of :data:`CUDA_SOURCES`, or it includes a file that is not one of
        :data:`CUDA_HEADERS`.
    """
    if filename not in CUDA_SOURCES:
        raise ValueError(f"filename must be one of {CUDA_SOURCES}, got {filename!r}")
    path = SOURCE_DIR / filename
    out = [f'#line 1 "{path.as_posix()}"\n']
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(keepends=True), start=1):
        match = _INCLUDE.match(line.rstrip("\n"))
        if match is None:
            out.append(line)
            continue
        header = match[1]
        if header not in CUDA_HEADERS:
            raise ValueError(f"{filename} line {number} includes {header!r}, which is not one of {CUDA_HEADERS}")
        header_path = SOURCE_DIR / header
        # inlined once, it needs no include guard (and a compiler warns of one in its main file): blanked
        lines = ["\n" if h.strip() == "#pragma once" else h
                 for h in header_path.read_text(encoding="utf-8").splitlines(keepends=True)]
        if lines and not lines[-1].endswith("\n"):
            lines[-1] += "\n"
        out += [f'#line 1 "{header_path.as_posix()}"\n', *lines, f'#line {number + 1} "{path.as_posix()}"\n']
    return "".join(out)


def nvrtc_options(window: int = 0) -> tuple[str, ...]:
    """NVRTC options of the kernels: :data:`NVRTC_OPTIONS` and the temporal window fixed at compile time.

    Parameters
    ----------
    window : int
        Temporal window W (even, in [4, MAX_VALUES]) compiled in (``-DRTN_WINDOW=W``: the window's values
        stay in registers); 0 leaves W a run-time argument (the spatial kernels do not use it).

    Raises
    ------
    ValueError
        ``window`` is neither 0 nor an even number in [4, MAX_VALUES].
    """
    if window != 0 and not (4 <= window <= MAX_VALUES and window % 2 == 0):
        raise ValueError(f"window must be 0 or even in [4, {MAX_VALUES}], got {window!r}")
    return (*NVRTC_OPTIONS, f"-DRTN_WINDOW={int(window)}")


_modules: dict[tuple[int, str, int], Any] = {}
_lock = threading.Lock()


def load_module(filename: str, window: int = 0, kernel_names: tuple[str, ...] = ()):
    """Compile ``kernels/<filename>`` for the current CUDA device (once per device, file and window).

    Parameters
    ----------
    filename : str
        One of :data:`CUDA_SOURCES`.
    window : int
        See :func:`nvrtc_options`.
    kernel_names : tuple of str
        Kernels looked up at once, so that compilation happens here and not at the first launch.

    Returns
    -------
    cupy.RawModule
        Built with :func:`nvrtc_options` (CuPy caches the binary on disk); its kernels are the
        ``extern "C"`` wrappers.
    """
    import cupy

    key = (cupy.cuda.runtime.getDevice(), filename, int(window))
    with _lock:
        module = _modules.get(key)
        if module is None:
            module = cupy.RawModule(code=source_text(filename), options=nvrtc_options(window))
            module.compile()
            _modules[key] = module
    for name in kernel_names:
        module.get_function(name)
    return module
