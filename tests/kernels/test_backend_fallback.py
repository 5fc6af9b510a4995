"""Backend choice when CUDA is missing in part: a clear error naming the cause, and 'auto' falling back.

The main case is the one the gpu extra used to produce: CuPy importable, NVRTC (the run-time compiler)
absent. It is built for real: a fresh virtual environment that sees every package of this one through a
``.pth`` file except the NVRTC wheel (``nvidia/cuda_nvrtc``), with no CUDA_HOME / CUDA_PATH, so CuPy
imports and cannot find libnvrtc. Skipped where CuPy is not installed, or where this machine has a system
libnvrtc that the environment would still find.
"""

from __future__ import annotations

import ctypes
import importlib.util
import logging
import os
import subprocess
import sys
import sysconfig
import textwrap
import venv
from pathlib import Path

import numpy as np
import pytest

from rtnstream.kernels.cupy_backend import gpu_available
from rtnstream.kernels.engine import EngineSettings, RTNEngine
from rtnstream.kernels.exceptions import BackendUnavailableError
from rtnstream.kernels.numpy_backend import NumpyBackend
from rtnstream.kernels.simulate import SensorModel

CUPY = importlib.util.find_spec("cupy") is not None


def _system_nvrtc() -> bool:
    for name in ("libnvrtc.so.12", "libnvrtc.so.13", "libnvrtc.so"):
        try:
            ctypes.CDLL(name)
        except OSError:
            continue
        return True
    return False


def _env_without_nvrtc(root: Path) -> Path:
    """Python of a virtual environment seeing this one's packages except NVRTC; returns its executable."""
    env_dir = root / "env"
    venv.create(env_dir, with_pip=False, symlinks=True)
    python = env_dir / "bin" / "python"
    env_site = Path(subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                                   capture_output=True, text=True, check=True).stdout.strip())
    links = root / "links"
    links.mkdir()
    for site_dir in {Path(sysconfig.get_paths()["purelib"]), Path(sysconfig.get_paths()["platlib"])}:
        for entry in site_dir.iterdir():
            if entry.name == "nvidia":  # the NVIDIA wheels stay visible, but for the folder holding NVRTC
                (links / "nvidia").mkdir(exist_ok=True)
                for part in entry.iterdir():
                    if not any(part.glob("lib/libnvrtc*")) and not (links / "nvidia" / part.name).exists():
                        (links / "nvidia" / part.name).symlink_to(part)
                continue
            if entry.name.startswith("nvidia_cuda_nvrtc"):
                continue
            if entry.suffix == ".pth":  # editable installs and the like: processed in the new site dir
                (env_site / entry.name).write_text(entry.read_text())
            elif not (links / entry.name).exists():
                (links / entry.name).symlink_to(entry)
    (env_site / "00-links.pth").write_text(f"{links}\n")  # sorts before the copied .pth files
    return python


SCRIPT = textwrap.dedent("""
    import logging, sys
    logging.basicConfig(level=logging.INFO, stream=sys.stdout, format="LOG %(levelname)s %(message)s")
    try:
        import cupy  # importable: the point of the test
    except Exception as exc:
        print("NOCUPY", type(exc).__name__, exc)
        raise SystemExit(0)
    from rtnstream.kernels.engine import EngineSettings, RTNEngine
    from rtnstream.kernels.exceptions import BackendUnavailableError
    from rtnstream.kernels.simulate import SensorModel

    sensor = SensorModel.random((16, 20), rtn_fraction=0.2, seed=0)
    cube = sensor.true_cube()
    try:
        RTNEngine(cube, EngineSettings(), backend="cupy")
    except BackendUnavailableError as exc:
        print("ERROR", exc)
    engine = RTNEngine(cube, EngineSettings(), backend="auto")
    print("BACKEND", engine.backend.name)
""")


@pytest.mark.skipif(not CUPY, reason="CuPy is not installed here (pip install cupy-cuda12x)")
@pytest.mark.skipif(_system_nvrtc(), reason="a system libnvrtc is loadable here: NVRTC cannot be hidden")
def test_cupy_without_nvrtc_raises_and_auto_falls_back(tmp_path):
    python = _env_without_nvrtc(tmp_path)
    env = {k: v for k, v in os.environ.items() if k not in ("CUDA_HOME", "CUDA_PATH", "CONDA_PREFIX")}
    proc = subprocess.run([str(python), "-c", SCRIPT], capture_output=True, text=True, env=env, cwd=tmp_path,
                          timeout=240, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    lines = proc.stdout.splitlines()
    if any(line.startswith("NOCUPY") for line in lines):
        pytest.skip(f"CuPy does not import without the folder holding NVRTC here: {proc.stdout.strip()}")
    error = next((line for line in lines if line.startswith("ERROR")), None)
    if error is None and "BACKEND cupy" in lines:
        pytest.skip("CuPy still finds NVRTC here (outside the hidden folders)")
    assert "NVRTC" in error and "rtnstream[gpu]" in error, error
    assert "BACKEND numpy" in lines, proc.stdout
    fallback = [line for line in lines if line.startswith("LOG") and "backend auto" in line]
    assert fallback and "NVRTC" in fallback[0] and "using numpy" in fallback[0], proc.stdout


@pytest.mark.skipif(gpu_available(), reason="a CUDA device is usable here")
def test_auto_without_device_logs_why(caplog):
    cube = SensorModel.random((16, 20), rtn_fraction=0.2, seed=0).true_cube()
    with pytest.raises(BackendUnavailableError, match=r"cupy backend"):
        RTNEngine(cube, EngineSettings(), backend="cupy")
    with caplog.at_level(logging.INFO, logger="rtnstream.kernels.engine"):
        engine = RTNEngine(cube, EngineSettings(), backend="auto")
    assert engine.backend.name == "numpy"
    messages = [r.getMessage() for r in caplog.records if "backend auto" in r.getMessage()]
    assert messages and "using numpy" in messages[0] and ("CuPy" in messages[0] or "device" in messages[0])


class _FailingOnceBackend(NumpyBackend):
    """The NumPy backend whose first reset fails, as a device allocation can (fault injection)."""

    failures = 1

    def reset(self, dtype) -> None:
        if self.failures:
            self.failures -= 1
            raise BackendUnavailableError("cannot allocate the ring buffer (injected)")
        super().reset(dtype)


def test_failed_reset_leaves_the_series_usable():
    sensor = SensorModel.random((24, 30), rtn_fraction=0.2, seed=2)
    frames = [f.data for f in sensor.frames(15, seed=3)]
    settings = EngineSettings(window=4)
    engine = RTNEngine(sensor.true_cube(), settings)
    engine.backend = _FailingOnceBackend(engine.params, engine.table, settings.k_var, settings.spatial_size,
                                         settings.window + 1)
    engine.start_series()
    with pytest.raises(BackendUnavailableError, match="injected"):
        engine.push(frames[0])
    assert engine.frames_in == 0
    got = [o for f in frames for o in engine.push(f)] + engine.finish()  # the same series, from its start
    fresh = RTNEngine(sensor.true_cube(), settings)
    expected = [o for f in frames for o in fresh.push(f)] + fresh.finish()
    assert [o.index for o in got] == list(range(15))
    for g, e in zip(got, expected, strict=True):
        np.testing.assert_array_equal(g.data, e.data)
        assert g.counts == e.counts


def test_gpu_available_never_raises():
    assert gpu_available() in (True, False)
    assert sys.modules.get("cupy") is None or CUPY
