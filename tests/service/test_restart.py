"""A restarted service on the same Redis database lists earlier jobs (also after a crash that took its
embedded Redis along), marks the ones left running interrupted once their process's lease expired, and runs
new jobs; services sharing a Redis, even with one node_id, keep each other's running jobs."""

import time

import httpx
import numpy as np

from rtnstream.clients.control import ControlClient
from rtnstream.clients.stream import FrameReceiver, FrameSender
from rtnstream.kernels.engine import EngineSettings
from rtnstream.service.server import BackgroundServer
from tests.service._redis import embedded_redis_pid, kill_and_wait
from tests.service._support import (
    RedisServer,
    loopback,
    offline,
    receive_series,
    serve_process,
    service_settings,
)

#: A short lease, so that a crashed process's jobs are found interrupted soon.
LEASE = {"RTNSTREAM_STATE_FLUSH_S": "0.2", "RTNSTREAM_INSTANCE_LEASE_S": "1"}


def test_restart_lists_earlier_jobs_marks_running_ones_interrupted_and_runs_new_ones(tmp_path, sim):
    data = tmp_path / "data"
    with serve_process(data, env=LEASE) as url, ControlClient(url) as api:  # killed (SIGKILL) at the end
        cube_id = api.upload_cube(sim.cube_path)["id"]
        body = {"cube_id": cube_id, "ingest": loopback(), "publish": loopback()}
        stopped = api.create_job("cam-a", **body)
        api.stop_job(stopped)
        body = {"cube_id": cube_id, "ingest": loopback(), "publish": loopback()}
        running = api.create_job("cam-b", **body)
        assert api.get_job(running)["state"] == "running"
    # a crash: no lifespan shutdown, no state written
    settings = service_settings(data, instance_lease_s=1.0)
    with BackgroundServer(settings) as server, ControlClient(server.url) as api:
        api.wait_until(running, lambda s: s["state"] == "interrupted")  # once the crashed process's lease ended
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


def test_kill_9_of_service_and_embedded_redis_keeps_jobs_created_2_s_before(tmp_path, sim):
    """Issue 10, defect 8: the embedded Redis keeps an append-only file (fsync every second), so a crash
    of the service together with its Redis loses no job created at least 2 s before, nor a finished series."""
    data = tmp_path / "data"
    with serve_process(data, env=LEASE) as url, ControlClient(url) as api:
        cube_id = api.upload_cube(sim.cube_path)["id"]
        finished = api.create_job("cam-a", cube_id, loopback(), loopback(), push=loopback(), reference="spatial")
        ep = api.get_job(finished)["endpoints"]
        with FrameReceiver(ep["push"], "pull") as rx, FrameSender(ep["ingest"], "cam-a") as tx:
            tx.start_series("night")
            for f in sim.frames[:4]:
                tx.send_frame(f)
            tx.end_series()
            receive_series(rx)
        assert api.stop_job(finished)["series"][0]["series"] == "night"
        running = api.create_job("cam-b", cube_id, loopback(), loopback())
        time.sleep(2.0)  # the requirement: jobs created at least 2 s before the crash survive it
        kill_and_wait(embedded_redis_pid(data))  # Redis first, so that nothing is written after this
    # ... and the service (SIGKILL at the end of the block): neither wrote anything at exit
    with serve_process(data, env=LEASE) as url, ControlClient(url) as api:
        jobs = {j["id"]: j for j in api.list_jobs()}
        assert set(jobs) == {finished, running}
        assert jobs[finished]["state"] == "stopped" and jobs[finished]["series"][0]["frames"] == 4
        assert api.bias_offset(finished, "night").shape == sim.frames.shape[1:]
        assert api.wait_until(running, lambda s: s["state"] == "interrupted")["config"]["camera"] == "cam-b"


def test_two_services_with_one_node_id_do_not_interrupt_each_others_jobs(tmp_path, sim):
    """Risk of issue 10: every service process leases an instance id in Redis; a job is marked interrupted
    only once the lease of the process that runs it expired, whatever the node_id (both use the default,
    the host name, here)."""
    rs = RedisServer(tmp_path).start()
    env = {**LEASE, "REDIS_URL": rs.url}
    a = serve_process(tmp_path / "a", env=env)
    url_a = a.__enter__()
    try:
        with ControlClient(url_a) as api_a:
            cube_id = api_a.upload_cube(sim.cube_path)["id"]
            job_a = api_a.create_job("cam-a", cube_id, loopback(), loopback())
        with serve_process(tmp_path / "b", env=env) as url_b, ControlClient(url_b) as api_b:
            seen = api_b.get_job(job_a)  # b's start-up check ran: a's job is a's, and running
            assert (seen["state"], seen["live"]) == ("running", False)
            api_b.upload_cube(sim.cube_path)
            job_b = api_b.create_job("cam-b", cube_id, loopback(), loopback())
            with ControlClient(url_a) as api_a:
                assert api_a.get_job(job_b)["state"] == "running"
                assert api_a.get_job(job_a)["live"] and api_a.stop_job(job_a)["state"] == "stopped"
                job_a2 = api_a.create_job("cam-a", cube_id, loopback(), loopback())
            a.__exit__(None, None, None)  # a crashes (SIGKILL) while b runs: b interrupts a's job, keeps its own
            a = None
            api_b.wait_until(job_a2, lambda s: s["state"] == "interrupted")
            assert api_b.get_job(job_a)["state"] == "stopped"
            assert api_b.get_job(job_b)["state"] == "running" and api_b.get_job(job_b)["live"]
            assert api_b.stop_job(job_b)["state"] == "stopped"
    finally:
        if a is not None:
            a.__exit__(None, None, None)
        rs.stop()

