"""Redis going away: jobs keep correcting, reads of live jobs keep working, state catches up on return."""

import httpx
import redis

from rtnstream.clients.control import ControlClient
from rtnstream.clients.stream import FrameReceiver, FrameSender
from rtnstream.service import keys
from rtnstream.service.jobstore import JobStore
from rtnstream.service.server import BackgroundServer
from tests.service._support import RedisServer, loopback, receive_series, service_settings, wait_for


def _send(endpoint, frames, series):
    with FrameSender(endpoint, "cam") as tx:
        tx.start_series(series)
        for f in frames:
            tx.send_frame(f)
        tx.end_series()


def test_pipeline_survives_a_redis_outage_and_state_catches_up(tmp_path, sim):
    rs = RedisServer(tmp_path).start()
    settings = service_settings(tmp_path / "data", redis_url=rs.url)
    try:
        with BackgroundServer(settings) as server, ControlClient(server.url) as api:
            cube_id = api.upload_cube(sim.cube_path)["id"]
            job = api.create_job("cam", cube_id, loopback(), loopback(), push=loopback(), reference="spatial")
            status = api.get_job(job)
            with FrameReceiver(status["endpoints"]["push"], "pull") as rx:
                _send(status["endpoints"]["ingest"], sim.frames[:6], "before")
                assert len(receive_series(rx)) == 6
                rs.stop()  # Redis goes away
                _send(status["endpoints"]["ingest"], sim.frames[6:16], "during")
                assert len(receive_series(rx)) == 10  # still correcting
            live = api.get_job(job)  # served from the pipeline itself
            assert live["counters"]["frames_out"] == 16 and live["state"] == "running"
            assert [j["id"] for j in api.list_jobs()] == [job]
            ready = httpx.get(f"{server.url}/readyz")
            assert ready.status_code == 503 and ready.json()["redis"] is False
            rs.start()  # back, with what it had before the outage; the buffered state follows
            store = JobStore(redis.Redis(unix_socket_path=str(rs.socket), decode_responses=True))
            wait_for(lambda: (store.get_job(job) or {}).get("counters", {}).get("frames_out") == 16,
                     what="counters written after Redis returned")
            assert set(store.get_series(job)) == {"before", "during"}
            assert store.client.exists(keys.job_events(job))
            assert httpx.get(f"{server.url}/readyz").status_code == 200
            assert api.stop_job(job)["state"] == "stopped"
        assert store.get_job(job)["state"] == "stopped"  # written at shutdown
    finally:
        rs.stop()
