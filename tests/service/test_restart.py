"""A restarted service on the same Redis database lists earlier jobs, marks the ones left running interrupted,
and runs new jobs; services of other nodes on the same Redis keep their running jobs."""

import httpx
import numpy as np

from rtnstream.clients.control import ControlClient
from rtnstream.clients.stream import FrameReceiver, FrameSender
from rtnstream.kernels.engine import EngineSettings
from rtnstream.service.server import BackgroundServer
from tests.service._support import RedisServer, loopback, offline, receive_series, serve_process, service_settings


def test_restart_lists_earlier_jobs_marks_running_ones_interrupted_and_runs_new_ones(tmp_path, sim):
    data = tmp_path / "data"
    with serve_process(data) as url, ControlClient(url) as api:  # killed (SIGKILL) at the end of the block
        cube_id = api.upload_cube(sim.cube_path)["id"]
        body = {"cube_id": cube_id, "ingest": loopback(), "publish": loopback()}
        stopped = api.create_job("cam-a", **body)
        api.stop_job(stopped)
        body = {"cube_id": cube_id, "ingest": loopback(), "publish": loopback()}
        running = api.create_job("cam-b", **body)
        assert api.get_job(running)["state"] == "running"
    # a crash: no lifespan shutdown, no state written
    with BackgroundServer(service_settings(data)) as server, ControlClient(server.url) as api:
        jobs = {j["id"]: j for j in api.list_jobs()}
        assert jobs[stopped]["state"] == "stopped"
        assert jobs[running]["state"] == "interrupted" and not jobs[running]["live"]
        assert jobs[running]["config"]["camera"] == "cam-b"
        assert api.get_job(running)["error"].startswith("the service stopped")
        r = httpx.post(f"{server.url}/v1/jobs/{running}/stop")
        assert r.status_code == 409 and r.json()["error"]["code"] == "not_running"
        # a new job on the restarted service, on the cube stored before the crash, corrects frames
        settings = EngineSettings(reference="causal", window=4)
        job = api.create_job("cam-c", cube_id, loopback(), loopback(), push=loopback(), reference="causal",
                             window=4)
        ep = api.get_job(job)["endpoints"]
        with FrameReceiver(ep["push"], "pull") as rx, FrameSender(ep["ingest"], "cam-c") as tx:
            tx.start_series("after-restart")
            for f in sim.frames:
                tx.send_frame(f)
            tx.end_series()
            got = receive_series(rx)
        for m, w in zip(got, offline(sim.cube, sim.frames, settings), strict=True):
            np.testing.assert_array_equal(m.data, w.data)
        final = api.stop_job(job)
        assert final["state"] == "stopped" and final["counters"]["frames_out"] == len(sim.frames)
        assert {j["id"]: j["state"] for j in api.list_jobs()} == {stopped: "stopped", running: "interrupted",
                                                                   job: "stopped"}


def test_a_restart_interrupts_only_its_own_nodes_jobs(tmp_path, sim):
    rs = RedisServer(tmp_path).start()
    try:
        node_a = {"RTNSTREAM_NODE_ID": "node-a", "REDIS_URL": rs.url}
        with serve_process(tmp_path / "a", env=node_a) as url, ControlClient(url) as api:
            cube_id = api.upload_cube(sim.cube_path)["id"]
            job_a = api.create_job("cam-a", cube_id, loopback(), loopback())
        # node a crashed; node b starts on the same Redis and runs a job of its own
        b_settings = service_settings(tmp_path / "b", redis_url=rs.url, node_id="node-b")
        with BackgroundServer(b_settings) as b, ControlClient(b.url) as api_b:
            a_seen_by_b = api_b.get_job(job_a)
            assert (a_seen_by_b["state"], a_seen_by_b["node"], a_seen_by_b["live"]) == ("running", "node-a", False)
            api_b.upload_cube(sim.cube_path)
            job_b = api_b.create_job("cam-b", cube_id, loopback(), loopback())
            # node a comes back: its own job is interrupted, node b's keeps running
            with serve_process(tmp_path / "a", env=node_a) as url, ControlClient(url) as api_a:
                states = {j["id"]: (j["state"], j["node"]) for j in api_a.list_jobs()}
                assert states == {job_a: ("interrupted", "node-a"), job_b: ("running", "node-b")}
            assert api_b.get_job(job_b)["state"] == "running" and api_b.get_job(job_b)["live"]
            assert api_b.stop_job(job_b)["state"] == "stopped"
    finally:
        rs.stop()
