"""The CUDA sources compile for the GPU (sm_90, nvcc) with the options NVRTC uses at run time.

Checks on the PTX: one entry per kernel and supported dtype, each with the parameter list its KernelSpec
describes, and no fused multiply-add (``--fmad=false``: float64 results round as NumPy's do).
"""

from __future__ import annotations

import re
import shutil
import subprocess

import numpy as np
import pytest

from rtnstream.kernels import _cuda

NVCC = shutil.which("nvcc")
pytestmark = pytest.mark.skipif(NVCC is None, reason="nvcc (CUDA toolkit) not on PATH")

_PTX_TYPE = {"i32": ".u32", "i64": ".u64", "f64": ".f64"}  # every pointer is .u64


def _ptx(tmp_path, source: str, options) -> str:
    out = tmp_path / (source + ".ptx")
    cmd = [NVCC, "-arch=sm_90", *options, "-Werror", "all-warnings", "-ptx", str(_cuda.SOURCE_DIR / source),
           "-o", str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    assert proc.returncode == 0, f"{' '.join(cmd)} failed:\n{proc.stderr}"
    return out.read_text()


def _entries(ptx: str) -> dict[str, list[str]]:
    """Kernel name -> PTX types of its parameters."""
    return {m[1]: re.findall(r"\.param (\.\w+) ", m[2])
            for m in re.finditer(r"\.entry (\w+)\(\s*(.*?)\)", ptx, flags=re.S)}


@pytest.fixture(scope="module")
def ptx(tmp_path_factory) -> dict[str, str]:
    tmp = tmp_path_factory.mktemp("ptx")
    return {source: _ptx(tmp, source, _cuda.NVRTC_OPTIONS) for source in _cuda.CUDA_SOURCES}


def test_every_kernel_compiled_with_its_spec(ptx):
    entries = _entries(ptx["rtn_correct.cu"])
    expected = {spec.kernel_name(dtype): [_PTX_TYPE.get(kind, ".u64") for _name, kind in spec.params]
                for spec in _cuda.KERNELS for dtype in _cuda.DTYPE_SUFFIX}
    assert entries == expected


def test_no_fused_multiply_add(ptx, tmp_path):
    assert "--fmad=false" in _cuda.NVRTC_OPTIONS
    for source, text in ptx.items():
        assert not re.search(r"\bfma\.", text), f"{source}: FMA in the PTX despite --fmad=false"
    # the check can see an FMA: the same source with contraction allowed has some
    contracted = _ptx(tmp_path, "rtn_correct.cu", [o for o in _cuda.NVRTC_OPTIONS if o != "--fmad=false"])
    assert re.search(r"\bfma\.rn\.f64", contracted)


def test_no_transcendental_functions(ptx):
    """Only sqrt (correctly rounded, sqrt.rn.f64) among the math functions: the rest are not IEEE-exact."""
    for source, text in ptx.items():
        assert re.search(r"\bsqrt\.rn\.f64", text), source
        assert not re.search(r"\b(ex2|lg2|sin|cos|rsqrt|rcp\.approx|sqrt\.approx)\.", text), source


def test_dtype_whitelist_matches_engine():
    from rtnstream.kernels.engine import SUPPORTED_DTYPES

    assert set(_cuda.DTYPE_SUFFIX) == set(SUPPORTED_DTYPES)
    assert all(np.dtype(d).isnative for d in _cuda.DTYPE_SUFFIX)
