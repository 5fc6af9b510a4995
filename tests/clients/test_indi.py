"""``rtnstream source indi`` against the real INDI server and CCD simulator (Debian's indi-bin), a real service."""

from __future__ import annotations

import shutil
import signal
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

from rtnstream.clients.replay import header_meta
from rtnstream.clients.stream import FrameReceiver
from rtnstream.fitsio import FrameSource
from rtnstream.kernels.cube import read_cube, write_cube
from rtnstream.kernels.engine import EngineSettings
from rtnstream.kernels.simulate import SensorModel
from rtnstream.service.server import free_port
from tests.clients._job import start_job
from tests.service._support import Collector, offline, wait_for, wait_listening

pytestmark = pytest.mark.skipif(
    not all(shutil.which(b) for b in ("indiserver", "indi_simulator_ccd", "indi_setprop")),
    reason="INDI server and CCD simulator not installed (Debian package indi-bin; .ci/run installs it)")

DEVICE = "CCD Simulator"
SHAPE = (1024, 1280)  # the simulator's frame, 16 bit


def setprop(port: int, *assignments: str) -> None:
    """What a second INDI client (the observatory software) does: set properties of the device."""
    for a in assignments:
        subprocess.run(["indi_setprop", "-p", str(port), f"{DEVICE}.{a}"], check=True, timeout=30)


@pytest.fixture(scope="module")
def indi(tmp_path_factory):
    """A real indiserver with the CCD simulator on a free loopback port; yields (port, upload folder)."""
    port = free_port()
    log = tmp_path_factory.mktemp("indi") / "indiserver.log"
    with open(log, "w") as out:
        proc = subprocess.Popen(["indiserver", "-p", str(port), "indi_simulator_ccd"], stdout=out, stderr=out)
    try:
        wait_listening(port, proc, log, "indiserver", 20)
        yield port
    finally:
        proc.terminate()
        proc.wait(10)


@pytest.fixture(scope="module")
def cube_path(tmp_path_factory) -> Path:
    # its bias near the simulator's dark level (a few adu), so that jumps of its noise are corrected
    model = SensorModel.random(SHAPE, rtn_fraction=0.02, bias_level_adu=4.0, delta_over_sigma=(1.0, 3.0), seed=4)
    cube = model.true_cube()
    return write_cube(cube, tmp_path_factory.mktemp("cube") / "cube.fits")


class Source:
    """The command a user runs, ``rtnstream source indi``, as its own process; its log read as it goes."""

    def __init__(self, port: int, job: dict, server_url: str, *extra: str) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "rtnstream", "source", "indi", "--server", f"127.0.0.1:{port}", "--device",
             DEVICE, "--camera", "cam", "--ingest", job["config"]["ingest"], "--service", server_url, *extra],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        self.lines: list[str] = []
        self._reader = threading.Thread(target=lambda: self.lines.extend(self.proc.stdout), daemon=True)
        self._reader.start()

    def wait_listening(self) -> None:
        """Until the listener has enabled the device's images (an image sent before is not seen)."""
        wait_for(lambda: any("images of CCD1 enabled" in line for line in self.lines), 60, "the listener")

    def stop(self) -> str:
        """SIGTERM (what a service manager sends); returns the log after checking the exit status 0."""
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(60)
        self._reader.join(10)
        log = "".join(self.lines)
        assert self.proc.returncode == 0, log
        return log

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


def test_exposures_triggered_by_another_client_arrive_corrected_one_for_one(indi, api, server, cube_path,
                                                                             tmp_path):
    upload = tmp_path / "upload"
    upload.mkdir()
    job = start_job(api, cube_path, reference="spatial")
    src = Source(indi, job, server.url)
    try:
        with Collector(FrameReceiver(job["config"]["push"], "pull")) as out:
            # the observatory software connects the camera, and keeps a copy of each image (to compare with)
            setprop(indi, "CONNECTION.CONNECT=On")
            setprop(indi, f"UPLOAD_SETTINGS.UPLOAD_DIR={upload}", "UPLOAD_SETTINGS.UPLOAD_PREFIX=IMG_XXX",
                    "UPLOAD_MODE.UPLOAD_BOTH=On")
            src.wait_listening()
            exposures = [0.1, 0.1, 0.1, 0.2]  # the last one changes the settings: a new series
            for i, exptime in enumerate(exposures):
                setprop(indi, f"CCD_EXPOSURE.CCD_EXPOSURE_VALUE={exptime}")
                wait_for(lambda n=i + 1: len(out.series()) == n, 60, f"frame {i + 1} at the job's output")
            log = src.stop()
            wait_for(lambda: out.ended(out.series()[-1].header.series), 20, "the end of the last series")
            frames = out.series()
    finally:
        src.kill()
        api.stop_job(job["id"])

    # one for one: four exposures, four frames, in two series split at the exposure-time change
    assert [(m.header.seq, m.header.exptime) for m in frames] == [(0, 0.1), (1, 0.1), (2, 0.1), (0, 0.2)]
    assert len({m.header.series for m in frames[:3]}) == 1 and frames[3].header.series != frames[0].header.series
    files = sorted(upload.glob("IMG_*.fits"))
    assert len(files) == len(exposures)
    status = api.get_job(job["id"])
    assert status["counters"]["frames_in"] == len(exposures) and not status["counters"]["rejected"]

    settings = EngineSettings(reference="spatial")
    rtn_cube = read_cube(cube_path)
    for msg, path in zip(frames, files, strict=True):
        with FrameSource(path) as src:
            raw, header = src.read(0), src.header
        assert msg.data.shape == SHAPE and raw.dtype == np.uint16
        # corrected: exactly what the offline engine makes of the driver's own image
        expected = offline(rtn_cube, [raw], settings)[0]
        assert msg.header.rtn.corrected and msg.header.rtn.low + msg.header.rtn.high > 0
        np.testing.assert_array_equal(msg.data, expected.data)
        # every card of the image's header in meta, the exposure's start as the timestamp, INDI's settings
        meta, _ = header_meta(header)
        assert {k: msg.header.meta[k] for k in meta} == meta
        assert msg.header.timestamp == header["DATE-OBS"]
        assert msg.header.meta["GAIN"] == 90 and msg.header.meta["XBINNING"] == 1
    assert "series" in log and "rejected" not in log and DEVICE in log


def test_a_series_ends_after_idle_s_without_an_image(indi, api, server, cube_path):
    job = start_job(api, cube_path, reference="spatial")
    src = Source(indi, job, server.url, "--idle-s", "1")
    try:
        with Collector(FrameReceiver(job["config"]["push"], "pull")) as out:
            setprop(indi, "CONNECTION.CONNECT=On", "UPLOAD_MODE.UPLOAD_CLIENT=On")
            src.wait_listening()
            setprop(indi, "CCD_EXPOSURE.CCD_EXPOSURE_VALUE=0.1")
            wait_for(lambda: len(out.series()) == 1, 60, "the first frame")
            first = out.series()[0].header.series
            wait_for(lambda: out.ended(first), 20, "the end of the idle series")  # same settings, but idle
            setprop(indi, "CCD_EXPOSURE.CCD_EXPOSURE_VALUE=0.1")
            wait_for(lambda: len(out.series()) == 2, 60, "the second frame")
            log = src.stop()
        second = out.series()[1].header
    finally:
        src.kill()
        api.stop_job(job["id"])
    assert second.series != first and second.seq == 0
    assert "ends (idle)" in log
