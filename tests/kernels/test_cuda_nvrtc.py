"""The CUDA source compiled by NVRTC under exactly the options CuPy uses at run time: no FTZ, no FMA.

CuPy 14 (``cupy/cuda/compiler.py``, ``_compile_with_cache_cuda`` and ``_compile_using_nvrtc``) appends
``-ftz=true``, ``-arch=sm_<cc>`` (or ``compute_<cc>``) and ``--device-as-default-execution-space`` after the
project's options (:data:`rtnstream.kernels._cuda.NVRTC_OPTIONS` and the compile-time window), so the last
``-ftz`` wins. These tests compile ``kernels/rtn_correct.cu`` with libnvrtc (the ``nvidia-cuda-nvrtc-cu12``
wheel of the ``test`` extra, loaded with ctypes; no GPU, no CuPy needed) under those options and read the
PTX: no flush-to-zero instruction (float32 subnormals would be zeroed), no fused multiply-add (float64
results would round differently from NumPy's). CuPy also passes ``--pch`` and ``-I`` include paths, which
change neither the instructions nor this header-free source; they are left out.
"""

from __future__ import annotations

import ctypes
import importlib.util
import re
from pathlib import Path

import pytest

from rtnstream.kernels import _cuda

# What CuPy 14 adds after the caller's options (H200: compute capability 9.0; PTX rather than a cubin).
CUPY_APPENDED = ("-ftz=true", "-arch=compute_90", "--device-as-default-execution-space")


def _find_libnvrtc() -> str | None:
    spec = importlib.util.find_spec("nvidia")
    roots = [Path(p) for p in (spec.submodule_search_locations or [])] if spec else []
    for root in roots:  # nvidia/cuda_nvrtc/lib (CUDA 12 wheels) or nvidia/cu13/lib (CUDA 13)
        for lib in sorted(root.glob("*/lib/libnvrtc.so*")):
            return str(lib)
    for name in ("libnvrtc.so.12", "libnvrtc.so.13", "libnvrtc.so"):
        try:
            ctypes.CDLL(name)
        except OSError:
            continue
        return name
    return None


def _load_nvrtc():
    path = _find_libnvrtc()
    if path is None:
        return None
    try:
        return ctypes.CDLL(path)
    except OSError:
        return None


NVRTC = _load_nvrtc()
pytestmark = pytest.mark.skipif(NVRTC is None, reason="libnvrtc not loadable (pip install nvidia-cuda-nvrtc-cu12)")


def nvrtc_ptx(source: str, options: tuple[str, ...]) -> str:
    """PTX of ``source`` compiled by NVRTC with ``options`` (AssertionError with the log on failure)."""
    lib = NVRTC
    prog = ctypes.c_void_p()
    assert lib.nvrtcCreateProgram(ctypes.byref(prog), source.encode(), b"rtn_correct.cu", 0, None, None) == 0
    try:
        argv = (ctypes.c_char_p * len(options))(*(o.encode() for o in options))
        status = lib.nvrtcCompileProgram(prog, len(options), argv)
        size = ctypes.c_size_t()
        lib.nvrtcGetProgramLogSize(prog, ctypes.byref(size))
        log = ctypes.create_string_buffer(size.value)
        lib.nvrtcGetProgramLog(prog, log)
        assert status == 0, f"NVRTC failed ({' '.join(options)}):\n{log.value.decode(errors='replace')}"
        lib.nvrtcGetPTXSize(prog, ctypes.byref(size))
        ptx = ctypes.create_string_buffer(size.value)
        assert lib.nvrtcGetPTX(prog, ptx) == 0
        return ptx.value.decode()
    finally:
        lib.nvrtcDestroyProgram(ctypes.byref(prog))


@pytest.fixture(scope="module", params=[10, 0], ids=["window10", "window-run-time"])
def cupy_ptx(request) -> str:
    options = (*_cuda.nvrtc_options(request.param), *CUPY_APPENDED)
    assert options.index("-ftz=true") > options.index("--fmad=false")  # CuPy's FTZ comes last and wins
    return nvrtc_ptx(_cuda.source_text(_cuda.CUDA_SOURCES[0]), options)


def test_no_flush_to_zero_under_cupy_options(cupy_ptx):
    ftz = sorted(set(re.findall(r"\b\w+(?:\.\w+)*\.ftz(?:\.\w+)*", cupy_ptx)))
    assert not ftz, f"flush-to-zero instructions in the PTX: {ftz}"
    assert re.search(r"cvt\.f64\.f32", cupy_ptx)  # the float32 kernels do convert, exactly


def test_no_fused_multiply_add_under_cupy_options(cupy_ptx):
    assert not re.search(r"\bfma\.", cupy_ptx), "FMA in the PTX despite --fmad=false"


def test_every_kernel_present_under_cupy_options(cupy_ptx):
    names = set(re.findall(r"\.entry (\w+)\(", cupy_ptx))
    assert names == {spec.kernel_name(d) for spec in _cuda.KERNELS for d in _cuda.DTYPE_SUFFIX}


def test_the_checks_can_fail():
    """A plain float -> double cast under the same options gives ``cvt.ftz``, and ``a * b + c`` an FMA
    without ``--fmad=false``: the patterns above do see what they look for."""
    plain = 'extern "C" __global__ void k(const float* a, double* b) { b[0] = (double)a[0] * b[1] + b[2]; }'
    ptx = nvrtc_ptx(plain, (*_cuda.NVRTC_OPTIONS, *CUPY_APPENDED))
    assert re.search(r"cvt\.ftz\.f64\.f32", ptx)
    contracted = nvrtc_ptx(plain, ("--std=c++17", *CUPY_APPENDED))
    assert re.search(r"\bfma\.rn\.f64", contracted)
