"""``rtnstream source alpaca`` against the ``alpaca-simulators`` camera (a real Alpaca server), a real service."""

from __future__ import annotations

import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pytest

from rtnstream.clients.stream import FrameReceiver
from rtnstream.kernels.cube import read_cube, write_cube
from rtnstream.kernels.engine import EngineSettings
from rtnstream.kernels.simulate import SensorModel
from rtnstream.service.server import free_port
from tests.clients._job import start_job
from tests.service._support import Collector, offline, wait_for, wait_listening

Camera = pytest.importorskip("alpaca.camera", reason="alpyca (the 'cameras' extra) not installed").Camera

FULL = (1024, 1024)  # the simulator camera's sensor
DARK_LEVEL_ADU = 318.0  # its dark frames lie at about 300..335 adu


@pytest.fixture(scope="module")
def alpaca_server(tmp_path_factory) -> str:
    """The alpaca-simulators server on a free loopback port; yields its address HOST:PORT."""
    exe = Path(sys.executable).with_name("alpaca-simulators")
    if not exe.exists():
        pytest.skip("alpaca-simulators (the 'test' extra) not installed")
    port = free_port()
    log = tmp_path_factory.mktemp("alpaca") / "alpaca.log"
    with open(log, "w") as out:
        proc = subprocess.Popen([exe, "--host", "127.0.0.1", "--port", str(port)], stdout=out, stderr=out,
                                cwd=log.parent)
    try:
        wait_listening(port, proc, log, "alpaca-simulators", 30)
        yield f"127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(10)


def cube_file(directory: Path, shape: tuple[int, int]) -> Path:
    model = SensorModel.random(shape, rtn_fraction=0.02, bias_level_adu=DARK_LEVEL_ADU, delta_over_sigma=(1.0, 3.0),
                               seed=6)
    return write_cube(model.true_cube(), directory / f"cube-{shape[0]}x{shape[1]}.fits")


def run_source(address: str, job: dict, server_url: str, count: int, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "rtnstream", "source", "alpaca", "--url", f"http://{address}", "--device", "0",
         "--exposure", "0.2", "--count", str(count), "--dark", "--camera", "cam", "--ingest", job["config"]["ingest"],
         "--service", server_url, *extra], capture_output=True, text=True, timeout=120)


def acquired(address: str, job: dict, server_url: str, count: int, *extra: str):
    """Run the source into ``job``; returns (the frames at the job's output, the source's log, the camera)."""
    with Collector(FrameReceiver(job["config"]["push"], "pull")) as out:
        t0 = datetime.now(UTC)
        done = run_source(address, job, server_url, count, *extra)
        t1 = datetime.now(UTC)
        assert done.returncode == 0, done.stdout + done.stderr
        wait_for(lambda: out.series() and out.ended(out.series()[0].header.series), 20, "the end of the series")
    return out.series(), done.stderr, (t0, t1)


def check_last_frame(address: str, msg, cube_path: Path) -> None:
    """The last frame out is exactly the offline correction of the camera's last image (still on the device)."""
    camera = Camera(address, 0)
    raw = np.asarray(camera.ImageArray, dtype=np.uint16).T  # Alpaca's [x][y] as (ny, nx)
    expected = offline(read_cube(cube_path), [raw], EngineSettings(reference="spatial"))[0]
    assert msg.header.rtn.corrected and msg.header.rtn.low + msg.header.rtn.high > 0
    np.testing.assert_array_equal(msg.data, expected.data)
    assert msg.header.timestamp == msg.header.meta["DATE-OBS"]
    assert datetime.fromisoformat(camera.LastExposureStartTime).replace(tzinfo=None) \
        == datetime.fromisoformat(msg.header.timestamp)


def test_dark_frames_arrive_corrected_one_for_one_with_their_start_times(alpaca_server, api, server, tmp_path):
    cube_path = cube_file(tmp_path, FULL)
    job = start_job(api, cube_path, reference="spatial")
    try:
        full = ("--bin", "1", "--subframe", "0", "0", "1024", "1024")  # whatever another test set before
        frames, log, (t0, t1) = acquired(alpaca_server, job, server.url, 4, *full)
        status = api.get_job(job["id"])
    finally:
        api.stop_job(job["id"])
    assert [m.header.seq for m in frames] == [0, 1, 2, 3]
    assert status["counters"]["frames_in"] == 4 and not status["counters"]["rejected"]
    starts = [datetime.fromisoformat(m.header.timestamp).replace(tzinfo=UTC) for m in frames]
    # the exposures' own start times: within the run, in order, each a whole exposure after the one before
    assert t0 <= starts[0] and starts[-1] <= t1
    assert all((b - a).total_seconds() >= 0.2 for a, b in zip(starts, starts[1:], strict=False))
    for m in frames:
        assert m.data.shape == FULL and m.header.exptime == 0.2
        meta = m.header.meta
        assert meta["IMAGETYP"] == "DARK" and meta["EXPTIME"] == 0.2
        assert {"GAIN", "OFFSET", "READOUTM", "XBINNING", "YBINNING", "XORGSUBF", "YORGSUBF", "CCD-TEMP"} <= set(meta)
    check_last_frame(alpaca_server, frames[-1], cube_path)
    assert "took every one" in log


def test_a_subframe_arrives_as_ny_by_nx(alpaca_server, api, server, tmp_path):
    cube_path = cube_file(tmp_path, (200, 300))  # not square: an image sent [x][y] untransposed would not fit
    job = start_job(api, cube_path, reference="spatial")
    try:
        frames, _, _ = acquired(alpaca_server, job, server.url, 2, "--subframe", "10", "20", "300", "200")
    finally:
        api.stop_job(job["id"])
    assert [m.data.shape for m in frames] == [(200, 300)] * 2
    assert (frames[0].header.meta["XORGSUBF"], frames[0].header.meta["YORGSUBF"]) == (10, 20)
    check_last_frame(alpaca_server, frames[-1], cube_path)
