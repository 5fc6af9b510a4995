"""bench/gpu_check.sh on a machine without a CUDA GPU: says so, exits 0, runs and writes nothing."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from rtnstream.kernels.cupy_backend import gpu_available

SCRIPT = Path(__file__).resolve().parents[2] / "bench" / "gpu_check.sh"


@pytest.mark.skipif(gpu_available(), reason="a CUDA device is usable here: the script would run everything")
@pytest.mark.skipif(shutil.which("bash") is None, reason="no bash")
def test_gpu_check_without_gpu_says_so_and_exits_0(tmp_path):
    results = tmp_path / "results"
    proc = subprocess.run(["bash", str(SCRIPT), str(results)], capture_output=True, text=True, timeout=120,
                          check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "no CUDA GPU usable through CuPy here" in proc.stdout and "nothing run" in proc.stdout
    assert not results.exists()
