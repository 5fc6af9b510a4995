"""kernels/rtn_two_trap.cuh built for the host (g++, cuda_host_shim.h) against kernels/two_trap.py, bit for bit.

``tests/kernels/rtn_two_trap_host.cu`` wraps the device functions in host functions per frame dtype; the
decision (level codes, with and without the temporal reference's centre rule) and the corrected values must
equal the NumPy specification's on every supported dtype, with pixels at and one ulp beside every range
bound, saturating integer corrections, and NaN and infinities in float frames; the temporal lambda and the
de-jumped spread of two-trap windows must equal ``temporal_lambda_two_trap``'s bit for bit on every dtype.
With nvcc on PATH the header is also compiled for sm_90.
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
    temporal_lambda_two_trap,
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


def _ptrs(arrays):
    arrays = [np.ascontiguousarray(a) for a in arrays]
    return arrays, [ctypes.c_void_p(a.ctypes.data) for a in arrays]


def _run_host(lib, native, lam, params, table, beat_centre=False):
    dtype = native.dtype
    fn = getattr(lib, f"rtn_two_trap_host_{_cuda.DTYPE_SUFFIX[dtype]}")
    q_lo, q_hi, in_table = table.lookup(lam, params.sigma_j, params.sigma_w)
    ok = (in_table & params.sigma_ok).astype(np.uint8)
    state = np.zeros(native.size, dtype=np.uint8)
    out = np.zeros_like(native)
    arrays, ptrs = _ptrs([native, params.mu_adu, lam, q_lo, q_hi, ok, params.delta1_e, params.delta2_e,
                          params.sigma_e, params.log_prior, params.delta1_adu_int, params.delta2_adu_int,
                          params.delta1_adu_float, params.delta2_adu_float, params.log_prior_centre, state, out])
    fn(ctypes.c_longlong(native.size), ptrs[0], ptrs[1], ctypes.c_double(params.gain_e_per_adu), *ptrs[2:14],
       ctypes.c_int(int(beat_centre)), *ptrs[14:])
    return arrays[-2], arrays[-1]


@pytest.mark.parametrize("beat_centre", [False, True], ids=["plain", "beat_centre"])
@pytest.mark.parametrize("dtype", list(_cuda.DTYPE_SUFFIX), ids=lambda d: np.dtype(d).name)
@pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")
def test_host_build_matches_numpy(host_lib, table, dtype, beat_centre):
    native, lam, params = _case(np.dtype(dtype), table)
    expected_state = decide_two_trap(native.astype(np.float64), lam, params, table, beat_centre)
    expected = apply_two_trap(native, expected_state, params)
    state, out = _run_host(host_lib, native, lam, params, table, beat_centre)
    np.testing.assert_array_equal(state, expected_state)
    assert np.array_equal(out.view(np.uint8), expected.view(np.uint8)), "corrected values differ"
    changed = (expected_state >= 1) & (expected_state <= 8)
    assert changed.mean() > 0.2 and (~changed).mean() > 0.2  # both outcomes exercised
    if beat_centre:  # the centre rule left some levels the plain decision takes
        plain = decide_two_trap(native.astype(np.float64), lam, params, table)
        assert np.sum((plain != expected_state) & (expected_state == 0)) > 50
    if np.issubdtype(native.dtype, np.integer):  # some corrections saturated at the dtype's limits
        info = np.iinfo(native.dtype)
        assert np.any(changed & ((out == info.min) | (out == info.max)))


def _windows(dtype: np.dtype, table, w: int, n: int = 3000, seed: int = 1):
    """Window values (w, n) of two-trap pixels at random levels, lambda 0-40 e-, and their parameters."""
    rng = np.random.default_rng(seed)
    g = 0.5
    sigma = rng.uniform(0.4, 4.0, n)
    d2 = rng.uniform(3.0, 8.0, n) * sigma
    d1 = d2 + rng.uniform(2.0, 8.0, n) * sigma
    fr = rng.uniform(0.02, 0.2, (4, n))
    fr[:, rng.random(n) < 0.2] = 0.0  # one-sided and absent traps: log priors -inf
    info = np.iinfo(dtype) if np.issubdtype(dtype, np.integer) else None
    lo_adu, hi_adu = (float(info.min), float(info.max)) if info else (-1000.0, 70000.0)
    mu = rng.uniform(max(lo_adu, -900.0) + 100, min(hi_adu, 60000.0) - 100, n)
    params = TwoTrapParams.from_arrays(mu, d1, d2, sigma, g, table, frac_lo=fr[0], frac_hi=fr[1], frac2_lo=fr[2],
                                       frac2_hi=fr[3])
    lam = np.where(rng.random(n) < 0.5, 0.0, rng.uniform(0.0, 40.0, n))
    i = rng.choice([-1, 0, 1], (w, n), p=[0.2, 0.6, 0.2])
    j = rng.choice([-1, 0, 1], (w, n), p=[0.2, 0.6, 0.2])
    e = rng.poisson(lam, (w, n)) + rng.normal(0, 1, (w, n)) * sigma + i * d1 + j * d2
    x = mu + e / g
    native = np.clip(np.rint(x), info.min, info.max).astype(dtype) if info else x.astype(dtype)
    return native, params


@pytest.mark.parametrize("w", [4, 10])
@pytest.mark.parametrize("dtype", list(_cuda.DTYPE_SUFFIX), ids=lambda d: np.dtype(d).name)
def test_host_temporal_lambda_matches_numpy(host_lib, table, dtype, w):
    window, params = _windows(np.dtype(dtype), table, w)
    lam, spread = temporal_lambda_two_trap(window.astype(np.float64), params)
    fn = getattr(host_lib, f"rtn_two_trap_lambda_host_{_cuda.DTYPE_SUFFIX[np.dtype(dtype)]}")
    lam_h = np.zeros(params.n)
    spread_h = np.zeros(params.n)
    _, ptrs = _ptrs([window, params.mu_adu, params.delta1_e, params.delta2_e, params.sigma_e, params.log_prior,
                     params.log_prior_centre])
    fn(ctypes.c_longlong(params.n), ctypes.c_int(w), ptrs[0], ptrs[1], ctypes.c_double(params.gain_e_per_adu),
       *ptrs[2:], ctypes.c_void_p(lam_h.ctypes.data), ctypes.c_void_p(spread_h.ctypes.data))
    assert np.array_equal(lam_h.view(np.uint64), lam.view(np.uint64)), "lambdas differ"
    assert np.array_equal(spread_h.view(np.uint64), spread.view(np.uint64)), "spreads differ"
    median = np.median(window.astype(np.float64), axis=0)
    plain = np.maximum((median - params.mu_adu) * params.gain_e_per_adu, 0.0)
    assert np.mean(lam != plain) > 0.1 and np.mean(lam == plain) > 0.1  # both kinds of hypothesis won
    assert np.mean(lam == 0) > 0.1 and np.mean(lam > 0) > 0.1


@pytest.mark.skipif(shutil.which("nvcc") is None, reason="nvcc (CUDA toolkit) not on PATH")
def test_header_compiles_for_sm90(tmp_path):
    """The header in a kernel, compiled with NVRTC's options (--fmad=false) for sm_90."""
    src = tmp_path / "two_trap_probe.cu"
    src.write_text(f'#include "{HEADER}"\n'
                   'extern "C" __global__ void probe(const double* v, const double* lp, int* state, double* lam) {\n'
                   '    state[threadIdx.x] = rtn_two_trap_decide(v[0], v[1], v[2], v[3], true, v[4], v[5], v[6], lp)\n'
                   '        + rtn_two_trap_decide_temporal(v[0], v[1], v[2], v[3], true, v[4], v[5], v[6], lp, v[7]);\n'
                   '    lam[threadIdx.x] = rtn_two_trap_temporal_lambda(v + 8, 10, v[0], v[1], v[2], v[3], v[4],\n'
                   '                                                   v[5], lp, v[6], lam + 32);\n'
                   '}\n')
    cmd = [shutil.which("nvcc"), "-arch=sm_90", *_cuda.NVRTC_OPTIONS, "-Werror", "all-warnings", "-ptx", str(src),
           "-o", str(tmp_path / "probe.ptx")]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stderr
    assert "fma" not in (tmp_path / "probe.ptx").read_text()
