"""Packaging: the wheel holds the whole program, and it works installed in fresh virtual environments outside
the checkout, run from another folder.

The wheel is built once per session from a copy of the tracked files (no stale ``build/`` can leak into it) and
installed twice: with the ``service`` extra (every command, the service, a job naming a packaged camera preset,
``/docs`` assets, the demo) and alone (the base install: offline correction and fitting, without the service
stack). pip takes the dependencies from its cache or PyPI.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import tomllib
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from rtnstream.cli import _COMMANDS
from tests.service._support import wait_healthy

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
PACKAGE_DIR: dict[str, str] = PYPROJECT["tool"]["setuptools"]["package-dir"]
VERSION = PYPROJECT["project"]["version"]
PRESETS = sorted(p.stem for p in (ROOT / "config" / "cameras").glob("*.toml"))
INSTALL_TIMEOUT_S = 900
COMMAND_TIMEOUT_S = 300


def _tracked_files() -> list[str]:
    """The checkout's files that git tracks (paths relative to the root)."""
    out = subprocess.run(["git", "-C", str(ROOT), "ls-files", "-z"], check=True, capture_output=True).stdout
    return [p for p in out.decode().split("\0") if p and (ROOT / p).is_file()]


def expected_wheel_files() -> set[str]:
    """Every tracked file under the folders pyproject.toml maps, as the path it must have in the wheel."""
    expected = set()
    for path in _tracked_files():
        for package, folder in PACKAGE_DIR.items():
            if path.startswith(f"{folder}/"):
                expected.add(f"{package.replace('.', '/')}/{path.removeprefix(f'{folder}/')}")
    return expected


@pytest.fixture(scope="session")
def wheel(tmp_path_factory) -> Path:
    source = tmp_path_factory.mktemp("source")
    for path in _tracked_files():
        (source / path).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / path, source / path)
    dist = tmp_path_factory.mktemp("dist")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(dist), str(source)],
                   check=True, timeout=INSTALL_TIMEOUT_S)
    (built,) = dist.glob("rtnstream-*.whl")
    return built


@dataclass
class Venv:
    """A fresh virtual environment outside the checkout with the wheel installed, and a folder to run in."""

    bin: Path
    cwd: Path

    def run(self, *argv: str, check: bool = True, timeout: float = COMMAND_TIMEOUT_S
            ) -> subprocess.CompletedProcess[str]:
        """Run ``argv[0]`` of the environment's bin folder in ``cwd``, the checkout nowhere on its paths."""
        proc = subprocess.run([str(self.bin / argv[0]), *argv[1:]], cwd=self.cwd, env=clean_env(),
                              capture_output=True, text=True, timeout=timeout)
        if check:
            assert proc.returncode == 0, f"{argv}: exit {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
        return proc


def clean_env() -> dict[str, str]:
    """This process's environment without anything that would import from the checkout."""
    return {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")
            and not k.startswith("RTNSTREAM_") and k != "REDIS_URL"}


def make_venv(base: Path, requirement: str) -> Venv:
    subprocess.run([sys.executable, "-m", "venv", str(base / "venv")], check=True, timeout=INSTALL_TIMEOUT_S)
    bin_dir = base / "venv" / "bin"
    subprocess.run([str(bin_dir / "python"), "-m", "pip", "install", "-q", requirement], check=True,
                   timeout=INSTALL_TIMEOUT_S, env=clean_env(), cwd=base)
    cwd = base / "work"
    cwd.mkdir()
    assert ROOT not in cwd.parents
    return Venv(bin_dir, cwd)


@pytest.fixture(scope="session")
def service_venv(wheel, tmp_path_factory) -> Venv:
    return make_venv(tmp_path_factory.mktemp("service-venv"), f"{wheel}[service]")


@pytest.fixture(scope="session")
def base_venv(wheel, tmp_path_factory) -> Venv:
    return make_venv(tmp_path_factory.mktemp("base-venv"), str(wheel))


# ------------------------------------------------------------------------------------------- the wheel
def test_the_wheel_holds_every_module_and_data_file_of_the_package_folders(wheel):
    with zipfile.ZipFile(wheel) as z:
        names = {n for n in z.namelist() if ".dist-info/" not in n}
        metadata = z.read(f"rtnstream-{VERSION}.dist-info/METADATA").decode()
    expected = expected_wheel_files()
    assert sorted(expected - names) == [], "missing from the wheel"
    assert sorted(names - expected) == [], "in the wheel but not a tracked file of the package folders"
    for needed in ("rtnstream/commands/serve.py", "rtnstream/service/routers/jobs.py",
                   "rtnstream/kernels/rtn_correct.cu", "rtnstream/config/service.toml",
                   *(f"rtnstream/config/cameras/{p}.toml" for p in PRESETS)):
        assert needed in names
    requires = [line.removeprefix("Requires-Dist: ") for line in metadata.splitlines()
                if line.startswith("Requires-Dist: ")]
    base = sorted(r.split(">")[0].split("<")[0].split("[")[0] for r in requires if "extra ==" not in r)
    assert base == ["astropy", "matplotlib", "numpy", "scipy", "tqdm"]  # no compiler, no service stack
    assert any(r.startswith("cupy-cuda12x[ctk]") and 'extra == "gpu"' in r for r in requires)
    assert any(r.startswith("pyzmq") and 'extra == "service"' in r for r in requires)


# ------------------------------------------------------------------------------------------- installed, service
def test_version_and_the_help_of_every_command(service_venv):
    assert service_venv.run("rtnstream", "--version").stdout.strip() == f"rtnstream {VERSION}"
    top = service_venv.run("rtnstream", "--help").stdout
    for name in _COMMANDS:
        assert name in top
        text = service_venv.run("rtnstream", name, "--help").stdout
        assert text.startswith(f"usage: rtnstream {name}")
    for action in ("import-paper", "info"):
        assert service_venv.run("rtnstream", "cube", action, "--help").stdout.startswith(
            f"usage: rtnstream cube {action}")
    assert "(default: 400)" in service_venv.run("rtnstream", "demo", "--help").stdout  # defaults shown


def _simulate_and_correct(venv: Venv) -> dict:
    venv.run("rtnstream", "simulate", "-o", "sim", "--shape", "32", "48", "--frames", "24", "--scene", "stars",
             "--frames-per-file", "12")
    out = venv.run("rtnstream", "correct", "--cube", "sim/cube.fits", "sim/stars_00000.fits",
                   "sim/stars_00001.fits", "-o", "corrected", "--no-progress").stdout
    summary = json.loads(out.strip().splitlines()[-1])
    assert summary["frames"] == 24 and summary["backend"] == "numpy"
    for name in ("stars_00000.fits", "stars_00001.fits", "calib/series_001_bias_offset.fits", "summary.json"):
        assert (venv.cwd / "corrected" / name).is_file(), name
    return summary


def test_simulate_and_correct(service_venv):
    assert _simulate_and_correct(service_venv)["corrections"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def served(service_venv, tmp_path_factory) -> Iterator[str]:
    """``rtnstream serve`` of the installed package, in a subprocess; yields its base URL."""
    port = _free_port()
    log = (tmp_path_factory.mktemp("serve") / "serve.log").open("w+")
    proc = subprocess.Popen([str(service_venv.bin / "rtnstream"), "serve", "--port", str(port), "--data-dir",
                             str(service_venv.cwd / "state")], cwd=service_venv.cwd, env=clean_env(),
                            stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_healthy(url, proc)
        yield url
    finally:
        proc.send_signal(signal.SIGINT)
        code = proc.wait(timeout=120)
        log.seek(0)
        text = log.read()
        log.close()
    assert code == 0, text
    assert "(loopback only, no token)" in text


@pytest.fixture(scope="module")
def cube_id(served, service_venv) -> str:
    """A small cube (the true cube of ``rtnstream camera``'s default sensor, 32 x 48) uploaded to the service."""
    service_venv.run("rtnstream", "camera", "--ingest", "tcp://127.0.0.1:1", "--shape", "32", "48",
                     "--write-cube", "cam-cube.fits")
    with open(service_venv.cwd / "cam-cube.fits", "rb") as f:
        r = httpx.post(f"{served}/v1/cubes", files={"file": ("c.fits", f)}, timeout=60)
    assert r.status_code == 201, r.text
    return r.json()["id"]


def _job_body(cube_id: str, **fields: str) -> dict[str, str]:
    return {"camera": "cam", "cube_id": cube_id, "ingest": f"tcp://127.0.0.1:{_free_port()}",
            "publish": f"tcp://127.0.0.1:{_free_port()}", **fields}


def test_serve_answers_healthz_and_runs_a_job(served, service_venv, cube_id):
    body = _job_body(cube_id)
    job = httpx.post(f"{served}/v1/jobs", json=body, timeout=60)
    assert job.status_code == 201, job.text
    job_id = job.json()["id"]
    service_venv.run("rtnstream", "camera", "--ingest", body["ingest"], "--camera", body["camera"], "--shape", "32",
                     "48", "--frames", "20", "--fps", "0")
    deadline = time.monotonic() + 60
    while (status := httpx.get(f"{served}/v1/jobs/{job_id}").json())["counters"]["frames_out"] < 20:
        assert time.monotonic() < deadline, status
        time.sleep(0.2)
    assert httpx.post(f"{served}/v1/jobs/{job_id}/stop", timeout=90).status_code == 200
    table = service_venv.run("rtnstream", "status", "--url", served).stdout
    assert job_id in table and "stopped" in table


@pytest.mark.parametrize("preset", PRESETS)
def test_a_job_naming_a_packaged_camera_preset_finds_it(served, cube_id, preset):
    """The service reads the preset from the installed package: it is found and applied, and refused only
    because the small cube here is not of the preset's full-sensor shape (a full IMX455 cube is GBs)."""
    r = httpx.post(f"{served}/v1/jobs", json=_job_body(cube_id, preset=preset), timeout=60)
    assert r.status_code == 422, r.text
    err = r.json()["error"]
    assert (err["code"], err["field"]) == ("preset_mismatch", "preset")
    assert f"camera preset {preset!r} has frames of shape [6388, 9576]" in err["message"]
    missing = httpx.post(f"{served}/v1/jobs", json=_job_body(cube_id, preset="no-such-camera"), timeout=60)
    assert missing.status_code == 404
    assert all(p in missing.json()["error"]["message"] for p in PRESETS)  # the packaged presets are listed


def test_docs_assets_are_served_by_the_installed_service(served):
    page = httpx.get(f"{served}/docs").text
    assert "cdn." not in page and "/static-offline-docs/swagger-ui-bundle.js" in page
    for asset in ("swagger-ui-bundle.js", "swagger-ui.css"):
        assert httpx.get(f"{served}/static-offline-docs/{asset}").status_code == 200


def test_demo(service_venv):
    out = service_venv.run("rtnstream", "demo", "--frames", "20", "--fps", "100", "--shape", "48", "48",
                           "--scene", "bias").stdout
    assert "20 out of 20 in (0 rejected, 0 dropped" in out


# ------------------------------------------------------------------------------------------- installed, base
def test_the_base_install_has_no_service_stack(base_venv):
    for module in ("zmq", "fastapi", "uvicorn", "pydantic", "redis", "httpx"):
        proc = base_venv.run("python", "-c", f"import {module}", check=False)
        assert proc.returncode != 0 and "ModuleNotFoundError" in proc.stderr, module
    assert base_venv.run("python", "-c", "import rtnstream.kernels.engine").returncode == 0


def test_the_base_install_simulates_fits_and_corrects(base_venv):
    base_venv.run("rtnstream", "simulate", "-o", "bias", "--shape", "24", "32", "--frames", "200", "--scene",
                  "bias", "--seed", "3")
    base_venv.run("rtnstream", "fit", "bias/bias.fits", "--gain-e-per-adu", str(1 / 3.26), "-o", "fitted.fits",
                  "--no-progress")
    assert (base_venv.cwd / "fitted.fits").is_file()
    assert list((base_venv.cwd / "fitted_plots").glob("*.png"))  # matplotlib plots
    info = json.loads(base_venv.run("rtnstream", "cube", "info", "fitted.fits").stdout)
    assert info["shape"] == [24, 32] and info["n_rtn"] > 0
    assert _simulate_and_correct(base_venv)["frames"] == 24
    gpu = base_venv.run("rtnstream", "correct", "--cube", "sim/cube.fits", "sim/stars_00000.fits", "-o", "gpu",
                        "--backend", "cupy", check=False)
    assert gpu.returncode == 2 and "pip install 'rtnstream[gpu]'" in gpu.stderr  # the GPU extra, named


@pytest.mark.parametrize("argv", [["serve"], ["demo"], ["status"], ["camera", "--ingest", "tcp://127.0.0.1:1"],
                                  ["sink", "--endpoint", "tcp://127.0.0.1:1", "-o", "x"]])
def test_a_command_of_the_service_extra_names_the_install_to_run(base_venv, argv):
    assert base_venv.run("rtnstream", argv[0], "--help").stdout.startswith(f"usage: rtnstream {argv[0]}")
    proc = base_venv.run("rtnstream", *argv, check=False)
    assert proc.returncode == 2
    assert f"rtnstream {argv[0]}: error: " in proc.stderr
    assert "pip install 'rtnstream[service]'" in proc.stderr and "Traceback" not in proc.stderr


@pytest.mark.parametrize("predict", [False, True])
def test_evaluate_without_photutils_names_the_evaluate_extra(base_venv, predict):
    proc = base_venv.run("python", "-c", "import photutils", check=False)
    assert proc.returncode != 0 and "ModuleNotFoundError" in proc.stderr
    base_venv.run("rtnstream", "simulate", "-o", "sim-evaluate", "--shape", "24", "32", "--frames", "12", "--scene",
                  "stars", "--seed", "5")
    argv = (["--predict", "--fwhm", "2.6"] if predict else ["sim-evaluate/stars_00000.fits", "-o", "evaluated"])
    proc = base_venv.run("rtnstream", "evaluate", "--cube", "sim-evaluate/cube.fits", *argv, check=False)
    assert proc.returncode == 2
    assert "rtnstream evaluate: error: " in proc.stderr
    assert "pip install 'rtnstream[evaluate]'" in proc.stderr and "Traceback" not in proc.stderr
    assert not (base_venv.cwd / "evaluated").exists()  # refused before any work
