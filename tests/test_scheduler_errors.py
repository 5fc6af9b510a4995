"""``rtnstream correct`` and ``fit`` with a bad ``--scheduler``: exit 2 and one line naming it, no traceback."""

from __future__ import annotations

import os
import socket
import subprocess
import sys

import numpy as np
import pytest
from astropy.io import fits

from rtnstream.kernels.cube import write_cube
from rtnstream.kernels.simulate import SensorModel

pytest.importorskip("distributed")


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """A cube, six small frames (enough for a window of 4) and a 64-frame bias stack (enough for a fit)."""
    root = tmp_path_factory.mktemp("sched")
    write_cube(SensorModel.random((8, 8), rtn_fraction=0.1, seed=1).true_cube(), root / "cube.fits")
    for k in range(6):
        fits.PrimaryHDU(np.full((8, 8), 100, np.uint16)).writeto(root / f"f{k}.fits")
    noise = np.random.default_rng(2).normal(100, 3, (64, 8, 8)).round().astype(np.uint16)
    fits.PrimaryHDU(noise, header=fits.Header({"IMAGETYP": "bias"})).writeto(root / "bias.fits")
    return root


def _free_port() -> int:
    """A local TCP port with nothing listening on it."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run(args, env_timeout="1s"):
    env = dict(os.environ, DASK_DISTRIBUTED__COMM__TIMEOUTS__CONNECT=env_timeout)
    return subprocess.run([sys.executable, "-m", "rtnstream", *args], capture_output=True, text=True,
                          timeout=120, env=env)


def _command(name, root, scheduler):
    if name == "correct":
        return ["correct", str(root / "f*.fits"), "--cube", str(root / "cube.fits"), "-o", str(root / "out"),
                "--no-progress", "--window", "4", "--scheduler", scheduler]
    return ["fit", str(root / "bias.fits"), "--gain-e-per-adu", "0.3", "-o", str(root / "fit" / "cube.fits"),
            "--no-progress", "--no-plots", "--scheduler", scheduler]


@pytest.mark.parametrize("name", ["correct", "fit"])
@pytest.mark.parametrize("scheduler", ["nonsense", "tcp://127.0.0.1", "local", "local:0"])
def test_a_malformed_scheduler_is_one_line_naming_it(files, name, scheduler):
    proc = _run(_command(name, files, scheduler))
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "--scheduler" in lines[0] and repr(scheduler) in lines[0], proc.stderr


@pytest.mark.parametrize("name", ["correct", "fit"])
def test_an_unreachable_scheduler_is_one_line_naming_its_address(files, name):
    address = f"tcp://127.0.0.1:{_free_port()}"
    proc = _run(_command(name, files, address))
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    errors = [line for line in proc.stderr.splitlines() if "error:" in line]
    assert len(errors) == 1 and "--scheduler" in errors[0] and address in errors[0], proc.stderr
    assert not (files / "fit" / "cube.fits").exists()
