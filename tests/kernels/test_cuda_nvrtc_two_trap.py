"""The two builds of ``kernels/rtn_correct.cu`` the CuPy backend compiles (two-trap code in or out), under NVRTC
with CuPy's options: no FTZ, no FMA, every kernel, and the one-trap build without the two-trap code.

``test_cuda_nvrtc.py`` checks the default build (two-trap pixels compiled in); the CuPy backend compiles
``-DRTN_TWO_TRAP=0`` for cubes without two-trap pixels, so that their kernels need the registers of
one-trap pixels alone (ptxas for sm_90: temporal W = 10 52 registers, spatial 40; with the two-trap code
128 and 58).
"""

from __future__ import annotations

import re

import pytest

from rtnstream.kernels import _cuda
from tests.kernels.test_cuda_nvrtc import CUPY_APPENDED, NVRTC, nvrtc_ptx

pytestmark = pytest.mark.skipif(NVRTC is None, reason="libnvrtc not loadable (pip install nvidia-cuda-nvrtc-cu12)")


@pytest.fixture(scope="module")
def ptx() -> dict[bool, str]:
    source = _cuda.source_text(_cuda.CUDA_SOURCES[0])
    return {two_trap: nvrtc_ptx(source, (*_cuda.nvrtc_options(10, two_trap), *CUPY_APPENDED))
            for two_trap in (True, False)}


@pytest.mark.parametrize("two_trap", [True, False])
def test_both_builds_keep_ieee_and_every_kernel(ptx, two_trap):
    text = ptx[two_trap]
    assert not re.search(r"\.ftz\b", text)
    assert not re.search(r"\bfma\.", text)
    names = set(re.findall(r"\.entry (\w+)\(", text))
    assert names == {spec.kernel_name(d) for spec in (_cuda.TEMPORAL, _cuda.SPATIAL) for d in _cuda.DTYPE_SUFFIX}


def test_one_trap_build_has_no_two_trap_code(ptx):
    """The two-trap code takes square roots (rtn_two_trap_decide's width, the six of rtn_tt_log) and reads
    tt_slot: the one-trap build has the square roots of the variability veto and the spread only, and no
    load through tt_slot (its parameter stays, unread)."""
    sqrt = {k: len(re.findall(r"\bsqrt\.rn\.f64\b", text)) for k, text in ptx.items()}
    assert sqrt[False] < sqrt[True] / 4, sqrt
    per_kernel = {k: re.split(r"\.entry ", text)[1:] for k, text in ptx.items()}
    tt_index = [name for name, _kind in _cuda.TEMPORAL.params].index("tt_slot")
    for body in per_kernel[False]:
        if body.startswith("rtn_temporal"):
            assert f"_param_{tt_index}]" not in body  # tt_slot never loaded
    assert any(f"_param_{tt_index}]" in body for body in per_kernel[True] if body.startswith("rtn_temporal"))
