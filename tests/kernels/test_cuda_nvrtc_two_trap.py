"""The two-trap pixels have kernels of their own: the main kernels carry none of their code (NVRTC, CuPy's options).

A kernel's registers are the most any of its paths needs, so the two-trap rule inside the main kernels would
lower the occupancy of every pixel (ptxas for sm_90, W = 10: the temporal kernel went from 52 registers to
128). With the two-trap pixels in ``rtn_temporal_two_trap_*`` / ``rtn_spatial_two_trap_*`` the main kernels
only test ``tt_slot`` (ptxas: 50 and 40 registers, as without two-trap pixels). ``test_cuda_nvrtc.py`` checks
every kernel for FTZ, FMA and presence.
"""

from __future__ import annotations

import re

import pytest

from rtnstream.kernels import _cuda
from tests.kernels.test_cuda_nvrtc import CUPY_APPENDED, NVRTC, nvrtc_ptx

pytestmark = pytest.mark.skipif(NVRTC is None, reason="libnvrtc not loadable (pip install nvidia-cuda-nvrtc-cu12)")


@pytest.fixture(scope="module", params=[10, 0], ids=["window10", "window-run-time"])
def entries(request) -> dict[str, str]:
    """PTX body of every kernel, by name."""
    ptx = nvrtc_ptx(_cuda.source_text(_cuda.CUDA_SOURCES[0]), (*_cuda.nvrtc_options(request.param), *CUPY_APPENDED))
    return {m[1]: m[2] for m in re.finditer(r"\.entry (\w+)\((.*?)\n}\n", ptx, re.S)}


def test_main_kernels_leave_two_trap_pixels_to_their_kernels(entries):
    """Per frame dtype: the main kernels take two square roots per pixel (temporal: spread and veto bound;
    spatial: none) and read tt_slot; the two-trap kernels take the two-trap decision's (its width, the
    temporal rule's logarithms by roots) and read tt_pos."""
    assert len(entries) == 4 * len(_cuda.DTYPE_SUFFIX)
    for dtype in _cuda.DTYPE_SUFFIX:
        sqrt = {spec.name: len(re.findall(r"\bsqrt\.rn\.f64\b", entries[spec.kernel_name(dtype)]))
                for spec in _cuda.KERNELS}
        assert sqrt["rtn_temporal"] <= 2 and sqrt["rtn_spatial"] == 0, (dtype, sqrt)
        assert sqrt["rtn_temporal_two_trap"] > 8 and sqrt["rtn_spatial_two_trap"] >= 1, (dtype, sqrt)
        for spec in _cuda.KERNELS:
            names = [name for name, _kind in spec.params]
            body = entries[spec.kernel_name(dtype)]
            loads = {name: f"_param_{names.index(name)}]" in body for name in ("tt_slot", "tt_pos") if name in names}
            two = spec in _cuda.TWO_TRAP_KERNEL.values()
            assert loads == ({"tt_slot": False, "tt_pos": True} if two else {"tt_slot": True}), (spec.name, loads)
