"""A restarted service on the same Redis database lists earlier jobs; the ones left running are interrupted."""

import os
import signal
import subprocess
import sys

import httpx

from rtnstream.clients.control import ControlClient
from rtnstream.service.server import BackgroundServer, free_port
from tests.service._support import loopback, service_settings, wait_for


def _healthy(url):
    try:
        return httpx.get(f"{url}/healthz", timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


def test_restart_lists_earlier_jobs_and_marks_running_ones_interrupted(tmp_path, sim):
    data = tmp_path / "data"
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    proc = subprocess.Popen([sys.executable, "-m", "rtnstream", "serve", "--port", str(port), "--data-dir",
                             str(data), "--backend", "numpy", "--log-level", "warning"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for(lambda: _healthy(url), 60, "first service up")
        with ControlClient(url) as api:
            cube_id = api.upload_cube(sim.cube_path)["id"]
            body = {"cube_id": cube_id, "ingest": loopback(), "publish": loopback()}
            stopped = api.create_job("cam-a", **body)
            api.stop_job(stopped)
            body = {"cube_id": cube_id, "ingest": loopback(), "publish": loopback()}
            running = api.create_job("cam-b", **body)
            assert api.get_job(running)["state"] == "running"
    finally:
        os.kill(proc.pid, signal.SIGKILL)  # a crash: no lifespan shutdown, no state written
        proc.wait(10)
    with BackgroundServer(service_settings(data)) as server, ControlClient(server.url) as api:
        jobs = {j["id"]: j for j in api.list_jobs()}
        assert jobs[stopped]["state"] == "stopped"
        assert jobs[running]["state"] == "interrupted" and not jobs[running]["live"]
        assert jobs[running]["config"]["camera"] == "cam-b"
        assert api.get_job(running)["error"].startswith("the service stopped")
        r = httpx.post(f"{server.url}/v1/jobs/{running}/stop")
        assert r.status_code == 409 and r.json()["error"]["code"] == "not_running"
