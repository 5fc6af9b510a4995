"""Redis going away in the middle of a series: the job keeps correcting (no frame lost, output exact), reads of
live jobs keep working, and the state catches up when Redis returns (also mid-series)."""

import httpx
import numpy as np
import redis

from rtnstream.clients.control import ControlClient
from rtnstream.clients.stream import FrameReceiver, FrameSender
from rtnstream.kernels.engine import EngineSettings
from rtnstream.service import keys
from rtnstream.service.jobstore import JobStore
from rtnstream.service.server import BackgroundServer
from tests.service._support import Collector, RedisServer, loopback, offline, service_settings, wait_for


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
            wait_for(lambda: set(store.get_series(job)) == {"night"}, what="finished series written")
            assert store.get_series(job)["night"]["frames"] == len(frames)
            assert store.client.exists(keys.job_events(job))
            assert httpx.get(f"{server.url}/readyz").status_code == 200
            c = api.stop_job(job)["counters"]
            assert c["frames_in"] == c["frames_out"] == len(frames) and c["dropped"] == 0
        assert store.get_job(job)["state"] == "stopped"  # written at shutdown
    finally:
        rs.stop()
