"""The command-line tools: status, camera, demo; the gain options of cube import-paper and fit; --help."""

import re

import numpy as np
import pytest
from astropy.io import fits

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


def _paper_file(path):
    """A small file in the RTN paper's layout (6, ny, nx): mu e-, A, B_low, Delta e-, sigma e-, lambda_max."""
    rng = np.random.default_rng(2)
    shape = (4, 5)
    planes = [rng.uniform(140, 170, shape), rng.uniform(0.8, 0.9, shape), rng.uniform(0.02, 0.08, shape),
              rng.uniform(3, 9, shape), rng.uniform(0.9, 1.6, shape), rng.uniform(1, 60, shape)]
    fits.PrimaryHDU(np.stack(planes)).writeto(path)
    return path


def test_cube_import_paper_takes_the_gain_either_way_round(tmp_path, capsys):
    params = _paper_file(tmp_path / "params.fits")
    assert main(["cube", "import-paper", str(params), "--gain-adu-per-e", "3.26", "-o", str(tmp_path / "a.fits")]) == 0
    assert main(["cube", "import-paper", str(params), "--gain-e-per-adu", str(1 / 3.26), "-o",
                 str(tmp_path / "b.fits")]) == 0
    a, b = read_cube(tmp_path / "a.fits"), read_cube(tmp_path / "b.fits")
    assert a.gain_e_per_adu == pytest.approx(1 / 3.26, rel=1e-12) and b.gain_e_per_adu == pytest.approx(1 / 3.26)
    np.testing.assert_allclose(a.delta_e, b.delta_e)
    capsys.readouterr()
    with pytest.raises(SystemExit):
        main(["cube", "import-paper", str(params), "-o", str(tmp_path / "c.fits")])
    assert "one of the arguments --gain-e-per-adu --gain-adu-per-e is required" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["cube", "import-paper", str(params), "--gain-e-per-adu", "0.3", "--gain-adu-per-e", "3.3", "-o",
              str(tmp_path / "c.fits")])
    assert "not allowed with argument" in capsys.readouterr().err
    with pytest.raises(SystemExit, match="--gain-e-per-adu must be a positive number, got -0.3"):
        main(["cube", "import-paper", str(params), "--gain-e-per-adu", "-0.3", "-o", str(tmp_path / "c.fits")])


def test_fit_takes_the_gain_either_way_round(tmp_path):
    assert main(["simulate", "-o", str(tmp_path / "bias"), "--shape", "16", "20", "--frames", "120", "--seed",
                 "4"]) == 0
    for option, value, name in (("--gain-e-per-adu", "0.25", "e.fits"), ("--gain-adu-per-e", "4", "a.fits")):
        assert main(["fit", str(tmp_path / "bias" / "bias.fits"), option, value, "-o", str(tmp_path / name),
                     "--no-plots", "--no-progress"]) == 0
    assert read_cube(tmp_path / "e.fits").gain_e_per_adu == read_cube(tmp_path / "a.fits").gain_e_per_adu == 0.25
    assert main(["fit", str(tmp_path / "bias" / "bias.fits"), "--gain-adu-per-e", "0", "-o",
                 str(tmp_path / "z.fits"), "--no-plots"]) == 2


def test_help_shows_the_defaults(capsys):
    with pytest.raises(SystemExit):
        main(["correct", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    for shown in ("(default: temporal)", "(default: 10)", "(default: 0.003)", "(default: 1.5)", "(default: auto)"):
        assert shown in text
    assert "(default: None)" not in text and "(default: False)" not in text


def test_demo_adds_files_to_its_output_folder_and_removes_none(tmp_path, capsys):
    mine = tmp_path / "mine.fits"
    mine.write_bytes(b"the user's")
    before = set(tmp_path.iterdir())
    assert main(["demo", "--frames", "12", "--fps", "200", "--shape", "32", "32", "--scene", "bias", "-o",
                 str(tmp_path)]) == 0
    after = set(tmp_path.iterdir())
    assert before < after and mine.read_bytes() == b"the user's"
    assert len(after - before) == 12 and all(p.name.startswith("demo-cam_") for p in after - before)
