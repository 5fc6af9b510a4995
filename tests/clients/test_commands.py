"""The service's command-line tools: status, camera, demo."""

import re

from rtnstream.cli import main
from rtnstream.kernels.cube import read_cube
from rtnstream.kernels.simulate import SensorModel
from tests.clients._job import start_job


def test_status_prints_jobs_and_counters(api, server, sim, capsys):
    status = start_job(api, sim.cube_path, push=False)
    assert main(["status", "--url", server.url]) == 0
    out = capsys.readouterr().out
    line = next(row for row in out.splitlines() if row.strip().startswith(status["id"]))
    assert line.split()[1:4] == ["cam", "running", "numpy"]
    api.stop_job(status["id"])
    assert main(["status", status["id"], "--url", server.url]) == 0
    assert "stopped" in capsys.readouterr().out


def test_camera_writes_the_true_cube_of_its_sensor(tmp_path):
    path = tmp_path / "cube.fits"
    assert main(["camera", "--ingest", "tcp://127.0.0.1:1", "--shape", "32", "40", "--sensor-seed", "4",
                 "--write-cube", str(path)]) == 0
    assert read_cube(path).cube_id == SensorModel.random((32, 40), seed=4).true_cube().cube_id


def test_demo_runs_end_to_end_and_reduces_the_rtn_noise(capsys):
    assert main(["demo", "--frames", "30", "--fps", "200", "--shape", "64", "64", "--scene", "bias"]) == 0
    out = capsys.readouterr().out
    assert re.search(r"frames\s+30 out of 30 in \(0 rejected, 0 dropped", out)
    before, after = map(float, re.search(r"RMS\s+([\d.]+) e- before, ([\d.]+) e- after", out).groups())
    assert after < 0.5 * before  # bias frames: nearly every jump is caught (ALGORITHM.md section 3)
