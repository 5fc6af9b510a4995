"""Redis going away or hanging in the middle of a stream: the job keeps correcting (no frame lost, output
exact), reads of live jobs keep working, and the state catches up when Redis returns (also mid-series)."""

import time

import httpx
import numpy as np
import redis

from rtnstream.clients.control import ControlClient
from rtnstream.clients.stream import FrameReceiver, FrameSender
from rtnstream.kernels.engine import EngineSettings
from rtnstream.service import keys
from rtnstream.service.jobstore import JobStore
from rtnstream.service.server import BackgroundServer
from tests.service._redis import embedded_redis_pid, paused
from tests.service._support import Collector, RedisServer, loopback, offline, receive_series, service_settings, wait_for


def test_pipeline_survives_a_redis_outage_mid_series_and_state_catches_up(tmp_path, sim):
    rs = RedisServer(tmp_path).start()
    settings = service_settings(tmp_path / "data", redis_url=rs.url)
    frames = sim.frames
    try:
        with BackgroundServer(settings) as server, ControlClient(server.url) as api:
            cube_id = api.upload_cube(sim.cube_path)["id"]
            job = api.create_job("cam", cube_id, loopback(), loopback(), push=loopback(), reference="spatial")
            ep = api.get_job(job)["endpoints"]
            with FrameReceiver(ep["push"], "pull") as rx, FrameSender(ep["ingest"], "cam") as tx, \
                    Collector(rx) as received:  # reads (and acknowledges) all along
                tx.start_series("night")
                for f in frames[:8]:
                    tx.send_frame(f)
                api.wait_until(job, lambda s: s["counters"]["frames_out"] == 8)
                rs.stop()  # Redis goes away in the middle of the series
                for f in frames[8:16]:
                    tx.send_frame(f)
                live = api.wait_until(job, lambda s: s["counters"]["frames_out"] == 16)  # from the pipeline
                assert live["state"] == "running" and live["live"]
                assert [j["id"] for j in api.list_jobs()] == [job]
                ready = httpx.get(f"{server.url}/readyz")
                assert ready.status_code == 503 and ready.json()["redis"] is False
                rs.start()  # back, with what it had before the outage; the buffered state follows
                store = JobStore(redis.Redis(unix_socket_path=str(rs.socket), decode_responses=True))
                wait_for(lambda: (store.get_job(job) or {}).get("counters", {}).get("frames_out") == 16,
                         what="counters written after Redis returned")
                for f in frames[16:]:
                    tx.send_frame(f)
                tx.end_series()
                wait_for(lambda: received.ended("night"), what="the end of the series")
                got = received.series("night")
            # no frame lost, none out of order, each corrected exactly as without the outage
            assert [m.header.seq for m in got] == list(range(len(frames)))
            want = offline(sim.cube, frames, EngineSettings(reference="spatial"))
            for m, w in zip(got, want, strict=True):
                np.testing.assert_array_equal(m.data, w.data)
            wait_for(lambda: [s["series"] for s in store.get_series(job)] == ["night"],
                     what="finished series written")
            assert store.get_series(job)[0]["frames"] == len(frames)
            assert store.client.exists(keys.job_events(job))
            assert httpx.get(f"{server.url}/readyz").status_code == 200
            c = api.stop_job(job)["counters"]
            assert c["frames_in"] == c["frames_out"] == len(frames) and c["dropped"] == 0
        assert store.get_job(job)["state"] == "stopped"  # written at shutdown
    finally:
        rs.stop()


def test_hung_redis_does_not_stall_frames(tmp_path, sim):
    """Issue 10, defect 7: with the embedded Redis hung (SIGSTOP) many short series go through, each frame
    delivered and each series recorded with its bias offset map, while Redis is still stopped; /readyz
    says Redis is away and how many writes wait; the state is written once Redis resumes."""
    n_series, per_series = 40, 2  # a series end wrote to Redis twice on the frame path: ~4 s each when hung
    data = tmp_path / "data"
    with BackgroundServer(service_settings(data)) as server, ControlClient(server.url) as api:
        cube_id = api.upload_cube(sim.cube_path)["id"]
        job = api.create_job("cam", cube_id, loopback(), loopback(), push=loopback(), reference="spatial")
        ep = api.get_job(job)["endpoints"]
        store = server.server.config.app.state.manager.store
        wait_for(lambda: store.pending == 0, what="job state written before the pause")
        with FrameReceiver(ep["push"], "pull") as rx, FrameSender(ep["ingest"], "cam") as tx, \
                paused(embedded_redis_pid(data)):
            for k in range(n_series):
                tx.start_series(f"s{k}")
                for f in sim.frames[:per_series]:
                    tx.send_frame(f)
                tx.end_series()
            deadline = time.monotonic() + 30.0  # a bound of its own, not Redis's timeouts (~160 s before)
            got = [[m.header.seq for m in receive_series(rx, max(0.5, deadline - time.monotonic()))]
                   for _ in range(n_series)]
            assert got == [list(range(per_series))] * n_series  # every frame, while Redis is still stopped
            status = api.wait_until(job, lambda s: s["counters"]["series_finished"] == n_series)
            assert [s["series"] for s in status["series"]] == [f"s{k}" for k in range(n_series)]
            assert api.bias_offset(job, f"s{n_series - 1}").shape == sim.frames.shape[1:]
            ready = httpx.get(f"{server.url}/readyz", timeout=10)
            assert ready.status_code == 503 and ready.json()["redis"] is False
            assert ready.json()["pending_writes"] >= n_series and ready.json()["oldest_pending_s"] > 0
            stopped = api.stop_job(job)  # stopping does not wait for Redis either
            assert stopped["state"] == "stopped" and stopped["counters"]["frames_out"] == n_series * per_series
        # Redis resumed: the buffered state follows
        wait_for(lambda: len(store.get_series(job)) == n_series and store.get_job(job)["state"] == "stopped",
                 what="buffered state written after Redis resumed")
        ends = [e for e in store.events(job, count=1000) if e["kind"] == "series_end"]
        assert [e["series"] for e in ends] == [f"s{k}" for k in range(n_series)]
        wait_for(lambda: httpx.get(f"{server.url}/readyz").json()["pending_writes"] == 0, what="nothing pending")
        assert httpx.get(f"{server.url}/readyz").status_code == 200
