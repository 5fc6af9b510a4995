#!/usr/bin/env bash
# gpu_check.sh: every GPU test and GPU benchmark of rtnstream in one run, figures written with the device name.
#
#     bash bench/gpu_check.sh [RESULTS_DIR]        # default RESULTS_DIR: bench/results of this checkout
#
# Needs Python 3.11+ with NumPy, SciPy, CuPy and pytest only (no astropy, pyzmq, fastapi; no install of
# rtnstream). Wheels in .whl/ of the checkout, if any, are installed into a private folder first. Without a
# CUDA GPU usable through CuPy it says so and exits 0, having run nothing.
#
# rtnstream is imported from this checkout without installing it: bench/layout.py builds a folder of links
# in the package layout (rtnstream/, rtnstream/kernels -> kernels/, ...) under a temporary folder, which
# goes first on PYTHONPATH, and everything runs from there: never from the checkout, whose rtnstream/
# folder would shadow the package (docs/cuda.md, "Running from a checkout").
#
# Budget: about 1-2 min of tests, then four full-frame benchmarks (9576 x 6388 uint16, 5 % RTN, W = 10),
# each ~30-60 s of set-up (simulated sensor and cube) plus a few seconds of timing: under 10 minutes.
# Files written (at most 8, as a device run brings back): gpu_check-<device>-<date>.txt (environment,
# test summary, every benchmark's printed output), engine-cupy-, engine-numpy-, engine_cuda_breakdown-,
# engine_host_stages-<device>-<date>.json, gpu_check-tests-<device>-<date>.txt (the pytest log). They are
# copied to $OUT too when it is set.

set -u
PY=${PYTHON:-python3}
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
RESULTS=${1:-$REPO/bench/results}

probe=$("$PY" - <<'EOF' 2>&1
try:
    import cupy
    n = cupy.cuda.runtime.getDeviceCount()
    p = cupy.cuda.runtime.getDeviceProperties(0) if n else None
except Exception as exc:
    print("NO", f"{type(exc).__name__}: {' '.join(str(exc).split())}")
else:
    name = p["name"].decode() if p is not None and isinstance(p["name"], bytes) else (p or {}).get("name")
    print("YES", name) if n else print("NO", "no CUDA device")
EOF
)
if [[ "$probe" != YES* ]]; then
    echo "gpu_check: no CUDA GPU usable through CuPy here (${probe#NO }); nothing run"
    exit 0
fi
DEVICE=${probe#YES }
SLUG=$(echo "$DEVICE" | tr '[:upper:]' '[:lower:]' | sed -E 's/[^a-z0-9]+/-/g; s/^-|-$//g')
DATE=$(date -u +%Y-%m-%d)
mkdir -p "$RESULTS"
SUMMARY=$RESULTS/gpu_check-$SLUG-$DATE.txt
TESTLOG=$RESULTS/gpu_check-tests-$SLUG-$DATE.txt

WORK=$(mktemp -d /tmp/rtn-gpu-check.XXXXXX)
trap 'rm -rf "$WORK"' EXIT
"$PY" "$REPO/bench/layout.py" "$REPO" "$WORK/site" >/dev/null || { echo "gpu_check: layout failed"; exit 1; }
ln -s "$REPO/tests" "$WORK/site/tests"
SITE=$WORK/site
if compgen -G "$REPO/.whl/*.whl" >/dev/null; then
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target "$WORK/wheels" \
        "$REPO"/.whl/*.whl && SITE=$SITE:$WORK/wheels
fi
export PYTHONPATH=$SITE${PYTHONPATH:+:$PYTHONPATH}
export PYTHONUNBUFFERED=1
cd "$WORK/site" || exit 1

{
    echo "gpu_check $DATE on $DEVICE"
    echo "commit: $(git -C "$REPO" rev-parse --short HEAD 2>/dev/null || echo unknown)"
    nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv 2>&1 | head -3
    "$PY" -c "import sys, numpy, scipy, cupy; print('python', sys.version.split()[0], 'numpy', numpy.__version__,
'scipy', scipy.__version__, 'cupy', cupy.__version__, 'nvrtc', cupy.cuda.nvrtc.getVersion())" 2>&1
    "$PY" -c "import rtnstream.kernels, os; print('rtnstream from', os.path.dirname(rtnstream.kernels.__file__))"
    echo "CPUs: $(nproc)"
} >"$SUMMARY" 2>&1
cat "$SUMMARY"

status=0
step() {  # step LABEL TIMEOUT_S COMMAND...: run, log its output to the summary, remember a failure
    local label=$1 limit=$2
    shift 2
    echo "=== $label" | tee -a "$SUMMARY"
    timeout "$limit" "$@" 2>&1 | tee -a "$SUMMARY"
    local rc=${PIPESTATUS[0]}
    echo "=== $label: exit $rc" | tee -a "$SUMMARY"
    [[ $rc -eq 0 ]] || status=1
}

# Every test that needs or concerns the GPU; -p no:cacheprovider: nothing written into the checkout.
step "tests" 240 "$PY" -m pytest -c "$REPO/pyproject.toml" --rootdir "$WORK/site" -p no:cacheprovider -q \
    tests/kernels/test_cupy_backend.py tests/kernels/test_cuda_nvrtc.py tests/kernels/test_cuda_compile.py \
    tests/kernels/test_cuda_host.py tests/kernels/test_backend_fallback.py tests/kernels/test_imports.py \
    tests/kernels/test_engine_inplace.py tests/kernels/test_gpu_check.py
sed -n '/^=== tests$/,/^=== tests: exit/p' "$SUMMARY" >"$TESTLOG"

step "engine, cupy, full frame" 150 "$PY" "$REPO/bench/engine.py" --backend cupy --frames 300 \
    --json "$RESULTS/engine-cupy-$SLUG-$DATE.json"
step "engine_cuda_breakdown, full frame" 150 "$PY" "$REPO/bench/engine_cuda_breakdown.py" --frames 100 \
    --json "$RESULTS/engine_cuda_breakdown-$SLUG-$DATE.json"
step "engine_host_stages, full frame" 150 "$PY" "$REPO/bench/engine_host_stages.py" --repeat 7 \
    --json "$RESULTS/engine_host_stages-$SLUG-$DATE.json"
step "engine, numpy, full frame (this machine's CPUs)" 150 "$PY" "$REPO/bench/engine.py" --backend numpy \
    --frames 20 --json "$RESULTS/engine-numpy-$SLUG-$DATE.json"

echo "gpu_check: done on $DEVICE, status $status; figures in $RESULTS" | tee -a "$SUMMARY"
if [[ -n "${OUT:-}" && -d "${OUT:-}" ]]; then
    cp "$RESULTS"/*-"$SLUG"-"$DATE".* "$OUT"/ 2>/dev/null
fi
exit $status
