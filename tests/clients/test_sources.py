"""What every frame source says: nothing listening at the ingest endpoint, the job's rejections, its progress.

Regressions of issue 13: ``replay`` reported "sent 20 frames" while the service rejected all 20; ``camera``
pointed at a port with no listener sat at 0 % without a word.
"""

from __future__ import annotations

import logging
import re

from astropy.io import fits

from rtnstream.cli import main
from rtnstream.service.server import free_port
from tests.clients._job import start_job


def no_listener() -> str:
    return f"tcp://127.0.0.1:{free_port()}"


def test_replay_reports_that_the_job_rejected_every_frame(api, server, sim, tmp_path, caplog):
    path = tmp_path / "stack.fits"
    fits.PrimaryHDU(sim.frames[:20]).writeto(path)
    job = start_job(api, sim.cube_path, push=False)
    try:
        with caplog.at_level(logging.INFO):
            status = main(["replay", str(path), "--ingest", job["config"]["ingest"], "--camera", "not-the-jobs",
                           "--service", server.url])
        counters = api.get_job(job["id"])["counters"]
    finally:
        api.stop_job(job["id"])
    assert status == 1
    assert counters["rejected"]["camera"] >= 20 and counters["frames_out"] == 0
    line = next(r.getMessage() for r in caplog.records if "rejected" in r.getMessage() and "sent" in r.getMessage())
    found = re.search(r"sent 20 frames .* rejected (\d+) messages \(camera: \1\)", line)
    assert found and int(found.group(1)) >= 20, line


def test_camera_reports_every_frame_taken_and_shows_progress(api, server, sim, caplog, capsys):
    job = start_job(api, sim.cube_path, push=False)
    try:
        with caplog.at_level(logging.INFO):
            status = main(["camera", "--ingest", job["config"]["ingest"], "--camera", "cam", "--service", server.url,
                           "--shape", str(sim.cube.shape[0]), str(sim.cube.shape[1]), "--frames", "5", "--fps", "0",
                           "--scene", "bias"])
        counters = api.get_job(job["id"])["counters"]
    finally:
        api.stop_job(job["id"])
    assert status == 0 and counters["frames_in"] == 5 and not counters["rejected"]
    assert any("sent 5 frames" in r.getMessage() and "took every one" in r.getMessage() for r in caplog.records)
    assert "5/5" in capsys.readouterr().err  # the progress bar


def test_camera_says_when_nothing_listens_at_the_ingest_endpoint(capsys):
    endpoint = no_listener()
    status = main(["camera", "--ingest", endpoint, "--connect-timeout", "1", "--shape", "16", "16", "--frames", "3"])
    assert status == 2
    assert f"nothing listens at {endpoint}: no connection within 1 s" in capsys.readouterr().err


def test_replay_and_the_indi_source_say_when_nothing_listens(sim, tmp_path, capsys):
    path = tmp_path / "frame.fits"
    fits.PrimaryHDU(sim.frames[0]).writeto(path)
    for argv in (["replay", str(path)],
                 ["source", "indi", "--server", "127.0.0.1:1", "--device", "CCD", "--camera", "cam"]):
        endpoint = no_listener()
        assert main([*argv, "--ingest", endpoint, "--connect-timeout", "0.5"]) == 2
        assert f"nothing listens at {endpoint}" in capsys.readouterr().err


def test_a_service_without_a_job_at_the_ingest_endpoint_is_named(server, sim, capsys):
    endpoint = no_listener()
    assert main(["camera", "--ingest", endpoint, "--service", server.url, "--frames", "1"]) == 2
    assert f"0 running jobs have ingest '{endpoint}'" in capsys.readouterr().err
