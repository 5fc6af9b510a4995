"""``rtnstream.kernels`` runs with NumPy alone: astropy, SciPy, tqdm and CuPy are never needed to import it.

A subprocess puts a finder at the head of ``sys.meta_path`` that refuses those packages (as if they were
not installed), imports every engine-side module and the kernels' test conftest, and corrects a small
series with the threshold table read from a disk cache that the parent wrote (computing a table is what
needs SciPy). A control run shows the same blocker does stop a module that needs a blocked package.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

from rtnstream.kernels.lut import table_cache_path

BLOCKED = ("astropy", "scipy", "tqdm", "cupy", "cupyx")
CONFTEST = Path(__file__).with_name("conftest.py")

PRELUDE = textwrap.dedent(f"""
    import sys

    BLOCKED = {BLOCKED!r}

    class Blocker:
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in BLOCKED:
                raise ImportError(f"{{name}} is blocked (not installed on the GPU machine)")
            return None

    sys.meta_path.insert(0, Blocker())
""")

SCRIPT = PRELUDE + textwrap.dedent(f"""
    import importlib.util

    import rtnstream.kernels
    import rtnstream.kernels._cuda
    import rtnstream.kernels.cupy_backend
    import rtnstream.kernels.engine
    import rtnstream.kernels.lut
    import rtnstream.kernels.numpy_backend
    import rtnstream.kernels.pixels
    import rtnstream.kernels.simulate

    spec = importlib.util.spec_from_file_location("kernels_conftest", {str(CONFTEST)!r})
    spec.loader.exec_module(importlib.util.module_from_spec(spec))

    from rtnstream.kernels.cupy_backend import gpu_available
    from rtnstream.kernels.engine import EngineSettings, RTNEngine
    from rtnstream.kernels.simulate import SensorModel

    sensor = SensorModel.random((20, 24), rtn_fraction=0.2, seed=1)
    engine = RTNEngine(sensor.true_cube(), EngineSettings(window=4), backend="auto")
    frames = [f.data for f in sensor.frames(9, seed=2)]
    out = [o for f in frames for o in engine.push(f)] + engine.finish()
    loaded = sorted(m for m in sys.modules if m.split(".")[0] in BLOCKED)
    print("OK", engine.backend.name, len(out), gpu_available(), loaded)
""")


def _run(script: str, cache: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "RTNSTREAM_CACHE": str(cache)}
    return subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=120,
                          check=False)


def test_engine_imports_and_runs_with_numpy_alone(table, tmp_path, monkeypatch):
    monkeypatch.setenv("RTNSTREAM_CACHE", str(tmp_path))
    table.save(table_cache_path(table.alpha))  # the child reads it: no table computation, no SciPy
    proc = _run(SCRIPT, tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.split() == ["OK", "numpy", "9", "False", "[]"], proc.stdout + proc.stderr


def test_the_blocker_blocks(tmp_path):
    """The same finder makes a module that needs a blocked package fail (the check above can fail)."""
    proc = _run(PRELUDE + "from rtnstream.kernels.cube import read_cube\nread_cube('x.fits')\n", tmp_path)
    assert proc.returncode != 0 and "astropy is blocked" in proc.stderr, proc.stderr
    proc = _run(PRELUDE + "from rtnstream.kernels.lut import build_table\nbuild_table()\n", tmp_path)
    assert proc.returncode != 0 and "scipy is blocked" in proc.stderr, proc.stderr
