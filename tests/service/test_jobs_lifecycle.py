"""Job life cycle: ids checked on every route and in the store, finished jobs deleted (by request or by
retention), the job list in pages, a series id used twice keeps both bias maps, series reported finished
only with their maps on disk, and jobs stopped in parallel at shutdown."""

import io
import threading
from contextlib import ExitStack

import httpx
import numpy as np
import pytest
from astropy.io import fits

from rtnstream.clients.control import ControlClient
from rtnstream.clients.stream import FrameReceiver, FrameSender
from rtnstream.kernels.engine import EngineSettings, RTNEngine
from rtnstream.service import keys
from rtnstream.service.jobs import bias_offset_file
from rtnstream.service.server import BackgroundServer
from tests.service._support import Collector, loopback, receive_series, service_settings, wait_for


@pytest.fixture(scope="module")
def cube_id(api, sim):
    return api.upload_cube(sim.cube_path)["id"]


def _manager(server):
    return server.server.config.app.state.manager


def _stream(api, job, series_frames: dict[str, np.ndarray] | list[tuple[str, np.ndarray]]) -> None:
    """Send each (series, frames) through the job and receive it back from its push output."""
    ep = api.get_job(job)["endpoints"]
    items = series_frames.items() if isinstance(series_frames, dict) else series_frames
    with FrameReceiver(ep["push"], "pull") as rx, FrameSender(ep["ingest"], "cam") as tx:
        for series, frames in items:
            tx.start_series(series)
            for f in frames:
                tx.send_frame(f)
            tx.end_series()
            receive_series(rx)


def _finished_job(api, cube_id) -> str:
    job = api.create_job("cam", cube_id, loopback(), loopback())
    api.stop_job(job)
    return job


@pytest.mark.parametrize("suffix", [":series", ":events", "%3Aseries", "X" * 12, "0" * 11, "0" * 13])
def test_job_ids_that_are_not_12_hex_digits_are_404_on_every_route(server, api, sim, cube_id, suffix):
    """Issue 10: ``GET /v1/jobs/<id>:series`` answered 500 (it read the series hash as a job) and
    ``<id>:events`` 503; every route answers 404 for a string that is not a job id."""
    job = api.create_job("cam", cube_id, loopback(), loopback(), push=loopback(), reference="spatial")
    _stream(api, job, {"night": sim.frames[:2]})  # the job has a series hash and an event stream
    api.stop_job(job)
    wait_for(lambda: _manager(server).store.pending == 0, what="written")
    bad = (job + suffix) if suffix.startswith((":", "%")) else suffix
    for method, path, params in [("GET", f"/v1/jobs/{bad}", None), ("POST", f"/v1/jobs/{bad}/stop", None),
                                 ("DELETE", f"/v1/jobs/{bad}", None),
                                 ("GET", f"/v1/jobs/{bad}/bias-offset", {"series": "s"})]:
        r = httpx.request(method, server.url + path, params=params)
        assert r.status_code == 404, (method, path, r.text)
        err = r.json()["error"]
        assert (err["code"], err["field"]) == ("not_found", "job_id"), (method, path, err)


def test_the_store_and_the_keys_refuse_strings_that_are_not_job_ids(server, api, cube_id):
    store = _manager(server).store
    job = _finished_job(api, cube_id)
    wait_for(lambda: store.pending == 0, what="written")
    assert store.get_job(job) is not None
    assert store.get_job(f"{job}:series") is None and store.get_series(f"{job}:x") == []
    assert store.events(f"{job}:events") == []
    for build in (keys.job, keys.job_events, keys.job_series):
        with pytest.raises(ValueError, match="job_id must be 12 lower-case hex digits"):
            build(f"{job}:series")
    with pytest.raises(ValueError, match="job_id"):
        store.put_job({"id": "nope"})


def test_delete_removes_a_finished_job_its_keys_and_bias_maps_and_refuses_a_running_one(server, api, sim,
                                                                                      cube_id):
    manager = _manager(server)
    job = api.create_job("cam", cube_id, loopback(), loopback(), push=loopback(), reference="spatial")
    _stream(api, job, {"night": sim.frames[:3]})
    r = httpx.delete(f"{server.url}/v1/jobs/{job}")
    assert r.status_code == 409 and r.json()["error"]["code"] == "job_active"
    api.stop_job(job)
    folder = bias_offset_file(manager.settings.jobs_dir, job, "night", 1).parent
    assert folder.is_dir()
    wait_for(lambda: manager.store.pending == 0, what="written")
    assert httpx.delete(f"{server.url}/v1/jobs/{job}").status_code == 204
    assert httpx.get(f"{server.url}/v1/jobs/{job}").status_code == 404
    assert not folder.exists()
    client = manager.store.client
    assert not client.exists(keys.job(job), keys.job_events(job), keys.job_series(job))
    assert client.zscore(keys.jobs_index(), job) is None
    assert job not in [j["id"] for j in api.list_jobs()]
    assert httpx.delete(f"{server.url}/v1/jobs/{job}").status_code == 404


def test_the_job_list_comes_in_pages(tmp_path, sim):
    with BackgroundServer(service_settings(tmp_path / "data")) as server, ControlClient(server.url) as api:
        cube_id = api.upload_cube(sim.cube_path)["id"]
        jobs = [_finished_job(api, cube_id) for _ in range(5)]
        wait_for(lambda: _manager(server).store.pending == 0, what="written")
        seen, cursor, pages = [], None, 0
        while True:
            body = httpx.get(f"{server.url}/v1/jobs", params={"limit": 2, **({"cursor": cursor} if cursor else {})}
                             ).json()
            seen += [j["id"] for j in body["jobs"]]
            pages += 1
            cursor = body["next_cursor"]
            if cursor is None:
                break
        assert seen == jobs and pages == 3
        r = httpx.get(f"{server.url}/v1/jobs", params={"cursor": "not-a-cursor"})
        assert r.status_code == 422 and r.json()["error"]["field"] == "cursor"
        assert httpx.get(f"{server.url}/v1/jobs", params={"limit": 0}).status_code == 422


def test_the_lease_must_outlive_its_renewal(tmp_path):
    with pytest.raises(ValueError, match="instance_lease_s .* must exceed state_flush_s"):
        service_settings(tmp_path, instance_lease_s=0.1)


def test_retention_keeps_the_newest_finished_jobs_of_this_node(tmp_path, sim):
    settings = service_settings(tmp_path / "data", retention_jobs=2, instance_lease_s=0.6)
    with BackgroundServer(settings) as server, ControlClient(server.url) as api:
        cube_id = api.upload_cube(sim.cube_path)["id"]
        running = api.create_job("cam", cube_id, loopback(), loopback())
        finished = [_finished_job(api, cube_id) for _ in range(4)]
        wait_for(lambda: [j["id"] for j in api.list_jobs()] == [running, *finished[2:]],
                 what="the two oldest finished jobs deleted")
        assert api.get_job(running)["state"] == "running"  # a running job is never deleted
        assert all(httpx.get(f"{server.url}/v1/jobs/{j}").status_code == 404 for j in finished[:2])


def test_a_series_id_used_twice_keeps_both_bias_maps(server, api, sim, cube_id):
    """Risk of issue 10: the second series of one id overwrote the first one's bias offset map; now each
    finished series has its ordinal (``index``) and its own map."""
    first, second = sim.frames[:12], sim.frames[12:]
    job = api.create_job("cam", cube_id, loopback(), loopback(), push=loopback(), reference="spatial")
    _stream(api, job, [("same", first), ("same", second)])
    status = api.stop_job(job)
    assert [(s["series"], s["index"], s["frames"]) for s in status["series"]] == [("same", 1, 12), ("same", 2, 12)]

    def bias_map(frames):
        engine = RTNEngine(sim.cube, EngineSettings(reference="spatial"), backend="numpy")
        engine.start_series()
        for f in frames:
            list(engine.push(f))
        engine.finish()
        return engine.bias_offset_map()

    def download(**params):
        r = httpx.get(f"{server.url}/v1/jobs/{job}/bias-offset", params={"series": "same", **params})
        assert r.status_code == 200
        with fits.open(io.BytesIO(r.content)) as hdul:
            return np.asarray(hdul[0].data)

    np.testing.assert_array_equal(download(index=1), bias_map(first))
    np.testing.assert_array_equal(download(index=2), bias_map(second))
    np.testing.assert_array_equal(download(), bias_map(second))  # without an index: the last one
    assert httpx.get(f"{server.url}/v1/jobs/{job}/bias-offset", params={"series": "same", "index": 3}
                     ).status_code == 404


def test_a_series_is_reported_finished_only_with_its_bias_map_on_disk(server, api, sim, cube_id):
    """The bias offset maps are written by a thread of their own; a series is counted finished (and
    listed) only once its map can be downloaded, and a stop waits for the maps of the series it flushed."""
    n = 12
    job = api.create_job("cam", cube_id, loopback(), loopback(), push=loopback(), reference="spatial")
    ep = api.get_job(job)["endpoints"]
    with FrameReceiver(ep["push"], "pull") as rx, FrameSender(ep["ingest"], "cam") as tx:
        for k in range(n):
            tx.start_series(f"s{k}")
            tx.send_frame(sim.frames[k])
            tx.end_series()
        seen = 0
        while seen < n:
            status = api.get_job(job)
            done = status["counters"]["series_finished"]
            assert len(status["series"]) == done
            for s in status["series"][seen:]:
                assert api.bias_offset(job, s["series"]).shape == sim.frames.shape[1:]
            seen = done
        tx.start_series("open")  # left open: the stop flushes it and writes its map before answering
        tx.send_frame(sim.frames[0])
        for _ in range(n):
            receive_series(rx)
        final = api.stop_job(job)
    assert final["counters"]["series_finished"] == n + 1 and final["series"][-1]["series"] == "open"
    assert api.bias_offset(job, "open").shape == sim.frames.shape[1:]


def test_shutdown_stops_jobs_in_parallel(tmp_path, sim):
    """Risk of issue 10: at shutdown the jobs were stopped one after another, each waiting up to
    stop_timeout_s for a stalled consumer. Two jobs whose lossless consumer is not there yet are both
    stopping at once; they finish when their consumers come."""
    server = BackgroundServer(service_settings(tmp_path / "data", stop_timeout_s=120)).start()
    api = ControlClient(server.url)
    manager = _manager(server)
    cube_id = api.upload_cube(sim.cube_path)["id"]
    jobs = [api.create_job(f"cam{k}", cube_id, loopback(), loopback(), push=loopback(), reference="spatial")
            for k in range(2)]
    endpoints = [api.get_job(j)["endpoints"] for j in jobs]
    senders = [FrameSender(ep["ingest"], f"cam{k}") for k, ep in enumerate(endpoints)]
    for tx in senders:
        tx.start_series("stalled")
        tx.send_frame(sim.frames[0])
    for j in jobs:
        api.wait_until(j, lambda s: s["counters"]["frames_in"] == 1)
    api.close()
    stopper = threading.Thread(target=server.stop, name="shutdown")
    stopper.start()
    receivers = []
    try:
        wait_for(lambda: [j.state for j in manager.local_jobs()] == ["stopping", "stopping"], 20,
                 "both jobs stopping at once")
    finally:
        receivers = [FrameReceiver(ep["push"], "pull") for ep in endpoints]  # the consumers come and read
        with ExitStack() as reading:
            for rx in receivers:
                reading.enter_context(Collector(rx))
            stopper.join(150)
        for sock in (*receivers, *senders):
            sock.close()
    assert [j.state for j in manager.local_jobs()] == ["stopped", "stopped"]
