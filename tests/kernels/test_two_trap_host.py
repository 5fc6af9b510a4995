"""kernels/rtn_two_trap.cuh built for the host (g++, cuda_host_shim.h) against kernels/two_trap.py, bit for bit.

``tests/kernels/rtn_two_trap_host.cu`` wraps the device functions in one host function per frame dtype; the
decision (level codes) and the corrected values must equal the NumPy specification's on every supported
dtype, with pixels at and one ulp beside every range bound, saturating integer corrections, and NaN and
infinities in float frames. With nvcc on PATH the header is also compiled for sm_90.
"""

from __future__ import annotations

import ctypes
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from rtnstream.kernels import _cuda
from rtnstream.kernels.two_trap import (
    TwoTrapParams,
    apply_two_trap,
    decide_two_trap,
    level_offsets_e,
)
from tests.kernels._cuda_host import HOST_FLAGS, SHIM, find_cxx

CXX = find_cxx()
DRIVER = Path(__file__).with_name("rtn_two_trap_host.cu")
HEADER = _cuda.SOURCE_DIR / "rtn_two_trap.cuh"


@pytest.fixture(scope="module")
def host_lib(tmp_path_factory) -> ctypes.CDLL:
    if CXX is None:
        pytest.skip("no C++ compiler (g++, c++ or clang++) on PATH")
    lib = tmp_path_factory.mktemp("two_trap_host") / "rtn_two_trap_host.so"
    cmd = [CXX, *HOST_FLAGS, "-include", str(SHIM), "-I", str(_cuda.SOURCE_DIR), "-x", "c++", str(DRIVER),
           "-o", str(lib)]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    assert proc.returncode == 0, f"host build failed ({' '.join(cmd)}):\n{proc.stderr}"
    return ctypes.CDLL(str(lib))


def _case(dtype: np.dtype, table, n: int = 6000, seed: int = 0):
    """Pixels of random parameters; values near level centres, at and one ulp beside every range bound."""
    rng = np.random.default_rng(seed)
    g = 0.5
    sigma = rng.uniform(0.4, 4.0, n)
    d2 = rng.uniform(0.0, 8.0, n) * sigma
    d2[: n // 10] = 0.0  # one-trap limit
    d1 = d2 + rng.uniform(0.0, 8.0, n) * sigma
    fr = rng.uniform(0.0, 0.2, (4, n))
    fr[:, rng.random(n) < 0.2] = 0.0  # one-sided and absent traps: log prior -inf
    lam = np.where(rng.random(n) < 0.4, 0.0, rng.uniform(0.0, 110.0, n))  # some beyond the table's top
    if np.issubdtype(dtype, np.integer):
        info = np.iinfo(dtype)
        lo_adu, hi_adu = float(info.min), float(info.max)
    else:
        lo_adu, hi_adu = -1000.0, 70000.0
    # bias levels near the dtype's limits too, so corrections saturate
    centre, half = 0.5 * (lo_adu + hi_adu), min(0.25 * (hi_adu - lo_adu), 1000.0)
    mu = np.where(rng.random(n) < 0.2, np.where(rng.random(n) < 0.5, lo_adu + 5, hi_adu - 5),
                  rng.uniform(centre - half, centre + half, n))
    params = TwoTrapParams.from_arrays(mu, d1, d2, sigma, g, table, frac_lo=fr[0], frac_hi=fr[1], frac2_lo=fr[2],
                                       frac2_hi=fr[3])
    q_lo, q_hi, _ = table.lookup(lam, params.sigma_j, params.sigma_w)
    offs = level_offsets_e(d1, d2)
    k = rng.integers(0, 8, n)
    rows = np.arange(n)
    kind = rng.integers(0, 4, n)
    s = np.select([kind == 0, kind == 1, kind == 2],
                  [lam + offs[rows, k] + rng.normal(0, 1, n) * sigma, q_lo + offs[rows, k], q_hi + offs[rows, k]],
                  q_lo if rng.random() < 0.5 else q_hi)
    # resolvability at its bound: D1 exactly q_hi - lambda (or lambda - q_lo), the signal at level +-D1
    edge = rng.random(n) < 0.1
    up = rng.random(n) < 0.5
    d1 = np.where(edge, np.where(up, q_hi - lam, lam - q_lo), d1)
    d2 = np.where(edge, 0.1 * d1, d2)
    params = TwoTrapParams.from_arrays(mu, d1, d2, sigma, g, table, frac_lo=fr[0], frac_hi=fr[1], frac2_lo=fr[2],
                                       frac2_hi=fr[3])
    s = np.where(edge, np.where(up, q_hi + 0.5 * d1, q_lo - 0.5 * d1), s)
    x = mu + s / g
    if np.issubdtype(dtype, np.integer):
        info = np.iinfo(dtype)
        native = np.clip(np.rint(x), info.min, info.max).astype(dtype)
    else:
        ulps = rng.integers(-1, 2, n)
        x = np.where(ulps > 0, np.nextafter(x, np.inf), np.where(ulps < 0, np.nextafter(x, -np.inf), x))
        native = x.astype(dtype)
        native[:3] = [np.nan, np.inf, -np.inf]
    return native, lam, params


def _run_host(lib, native, lam, params, table):
    dtype = native.dtype
    fn = getattr(lib, f"rtn_two_trap_host_{_cuda.DTYPE_SUFFIX[dtype]}")
    q_lo, q_hi, in_table = table.lookup(lam, params.sigma_j, params.sigma_w)
    ok = (in_table & params.sigma_ok).astype(np.uint8)
    state = np.zeros(native.size, dtype=np.uint8)
    out = np.zeros_like(native)
    arrays = [native, params.mu_adu, lam, q_lo, q_hi, ok, params.delta1_e, params.delta2_e, params.sigma_e,
              np.ascontiguousarray(params.log_prior), params.delta1_adu_int, params.delta2_adu_int,
              params.delta1_adu_float, params.delta2_adu_float, state, out]
    arrays = [np.ascontiguousarray(a) for a in arrays]
    ptrs = [ctypes.c_void_p(a.ctypes.data) for a in arrays]
    fn(ctypes.c_longlong(native.size), ptrs[0], ptrs[1], ctypes.c_double(params.gain_e_per_adu), *ptrs[2:])
    return arrays[-2], arrays[-1]


@pytest.mark.parametrize("dtype", list(_cuda.DTYPE_SUFFIX), ids=lambda d: np.dtype(d).name)
@pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")
def test_host_build_matches_numpy(host_lib, table, dtype):
    native, lam, params = _case(np.dtype(dtype), table)
    expected_state = decide_two_trap(native.astype(np.float64), lam, params, table)
    expected = apply_two_trap(native, expected_state, params)
    state, out = _run_host(host_lib, native, lam, params, table)
    np.testing.assert_array_equal(state, expected_state)
    assert np.array_equal(out.view(np.uint8), expected.view(np.uint8)), "corrected values differ"
    changed = (expected_state >= 1) & (expected_state <= 8)
    assert changed.mean() > 0.2 and (~changed).mean() > 0.2  # both outcomes exercised
    if np.issubdtype(native.dtype, np.integer):  # some corrections saturated at the dtype's limits
        info = np.iinfo(native.dtype)
        assert np.any(changed & ((out == info.min) | (out == info.max)))


@pytest.mark.skipif(shutil.which("nvcc") is None, reason="nvcc (CUDA toolkit) not on PATH")
def test_header_compiles_for_sm90(tmp_path):
    """The header in a kernel, compiled with NVRTC's options (--fmad=false) for sm_90."""
    src = tmp_path / "two_trap_probe.cu"
    src.write_text(f'#include "{HEADER}"\n'
                   'extern "C" __global__ void probe(const double* v, const double* lp, int* state) {\n'
                   '    state[threadIdx.x] = rtn_two_trap_decide(v[0], v[1], v[2], v[3], true, v[4], v[5], v[6], lp);\n'
                   '}\n')
    cmd = [shutil.which("nvcc"), "-arch=sm_90", *_cuda.NVRTC_OPTIONS, "-Werror", "all-warnings", "-ptx", str(src),
           "-o", str(tmp_path / "probe.ptx")]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stderr
    assert "fma" not in (tmp_path / "probe.ptx").read_text()
