"""Reliability over real sockets and a real HTTP server: slow consumers, vanished and restarting producers,
a lossless consumer that never reads, every mutating route without the token, and a short soak run.

Every test ends within a bound (socket receive timeouts, HTTP timeouts, pytest-timeout) and checks that
the job's counters add up: ``frames_in = frames_out + sum(rejected) + dropped``.
"""

import logging
import threading

import httpx
import numpy as np
import pytest

from bench.soak import run_soak
from rtnstream.clients.control import ControlClient
from rtnstream.clients.stream import FrameReceiver, FrameSender
from rtnstream.kernels.cube import write_cube
from rtnstream.kernels.engine import EngineSettings
from rtnstream.kernels.simulate import SensorModel
from rtnstream.service.server import BackgroundServer
from tests.service._support import (
    Collector,
    counters_add_up,
    loopback,
    offline,
    receive_series,
    service_settings,
    wait_for,
)

pytestmark = pytest.mark.timeout(180)


@pytest.fixture(scope="module")
def cube_id(api, sim):
    return api.upload_cube(sim.cube_path)["id"]


def _job(api, cube_id, push=True, **options):
    job = api.create_job("cam", cube_id, loopback(), loopback(), push=loopback() if push else None, **options)
    return job, api.get_job(job)["endpoints"]


def _series_by_name(rx, n_series):
    """Frames of the next ``n_series`` series from ``rx``, by series id, in arrival order."""
    out = {}
    for _ in range(n_series):
        got = receive_series(rx)
        out[got[0].header.series] = got
    return out


# --------------------------------------------------------------------------------------- consumers
def test_a_slow_subscriber_loses_its_own_frames_and_holds_nothing_up(api, cube_id, sim):
    """PUB semantics: a subscriber that does not read loses what overflows its queue; the job, its lossless
    consumer and the producer go on at full speed."""
    settings = EngineSettings(reference="spatial")
    job, ep = _job(api, cube_id, reference="spatial")
    n_series, frames = 125, sim.frames  # 3000 frames: more than PUB (1000 messages) and TCP buffers (~6 MB) hold

    def produce(tx):
        for k in range(n_series):
            tx.start_series(f"s{k}")
            for f in frames:
                tx.send_frame(f)
            tx.end_series()

    with FrameReceiver(ep["publish"], "sub", rcvhwm=2) as slow, \
            FrameReceiver(ep["push"], "pull") as fast, FrameSender(ep["ingest"], "cam") as tx:
        wait_for(lambda: _subscribed(slow, tx, fast), what="subscription")
        producer = threading.Thread(target=produce, args=(tx,), daemon=True)
        producer.start()  # the lossless consumer reads meanwhile (it must, or the job waits for it)
        got = _series_by_name(fast, n_series)  # every frame, exact
        producer.join(30)
        slow_frames = sum(1 for m in slow.frames(0.5) if m.header.kind == "frame")
    want = offline(sim.cube, frames, settings)
    assert sorted(got) == sorted(f"s{k}" for k in range(n_series))
    for series in got.values():
        assert [m.header.seq for m in series] == list(range(len(frames)))
        for m, w in zip(series, want, strict=True):
            np.testing.assert_array_equal(m.data, w.data)
    total = n_series * len(frames)
    assert 0 < slow_frames < total  # the slow subscriber lost frames, and only it
    c = api.stop_job(job)["counters"]
    assert c["frames_in"] == c["frames_out"] == total and c["dropped"] == 0 and counters_add_up(c)


def _subscribed(slow, tx, fast):
    """True once the subscriber receives: a probe series (start / end only) comes through PUB."""
    tx.start_series("probe")
    tx.end_series()
    receive_series(fast)  # drained from the lossless output
    return any(m.header.series == "probe" for m in slow.frames(0.2))


def test_an_absent_lossless_consumer_cannot_hang_stop(tmp_path, sim):
    """The push output waits for its one consumer. With none there, the job stops taking frames (the queue
    fills, the producer is pushed back) and stop gives up after stop_timeout_s: the job becomes failed with
    the reason, the service keeps answering, and the frames it never published are counted as abandoned."""
    with BackgroundServer(service_settings(tmp_path, stop_timeout_s=2.0)) as server, \
            ControlClient(server.url, timeout_s=30.0) as api:
        cube = api.upload_cube(sim.cube_path)["id"]
        job, ep = _job(api, cube, queue_frames=2)
        with FrameSender(ep["ingest"], "cam", sndhwm=1, linger_s=0) as tx:
            tx.start_series("stuck")
            for f in sim.frames[:3]:
                tx.send_frame(f)
            wait_for(lambda: api.get_job(job)["counters"]["in_flight"] == 3, what="frames accepted")
            final = api.stop_job(job)  # returns: bounded by stop_timeout_s (and the HTTP timeout)
        assert final["state"] == "failed" and "3 frame(s) abandoned" in final["error"]
        c = final["counters"]
        assert c["frames_in"] == 3 and c["frames_out"] == 0
        assert c["abandoned"] == c["frames_in"] - c["frames_out"] - sum(c["rejected"].values()) - c["dropped"] == 3
        assert not final["live"] and api.list_jobs()[-1]["state"] == "failed"
        assert httpx.get(f"{server.url}/readyz").json()["jobs_running"] == 0


# --------------------------------------------------------------------------------------- producers
def test_a_vanished_producer_leaves_its_series_open_until_the_next_one_flushes_it(api, cube_id, sim):
    settings = EngineSettings(reference="temporal", window=4)
    job, ep = _job(api, cube_id, window=4)
    first, second = sim.frames[:10], sim.frames[10:18]
    with FrameReceiver(ep["push"], "pull") as rx, Collector(rx) as received:
        with FrameSender(ep["ingest"], "cam") as gone:
            gone.start_series("a")
            for f in first:
                gone.send_frame(f)
        # producer a is gone without 'end': the engine holds the last W/2 frames of its series
        status = api.wait_until(job, lambda s: s["counters"]["frames_out"] == len(first) - 2)
        assert status["state"] == "running" and status["counters"]["series_finished"] == 0
        with FrameSender(ep["ingest"], "cam") as tx:  # a new producer: its start flushes series a
            tx.start_series("b")
            for f in second:
                tx.send_frame(f)
            tx.end_series()
            wait_for(lambda: received.ended("b"), what="the end of series b")
        got = {name: received.series(name) for name in ("a", "b")}
    for series, frames in (("a", first), ("b", second)):
        assert [m.header.seq for m in got[series]] == list(range(len(frames)))
        for m, w in zip(got[series], offline(sim.cube, frames, settings), strict=True):
            np.testing.assert_array_equal(m.data, w.data)
    final = api.stop_job(job)
    c = final["counters"]
    assert c["frames_in"] == c["frames_out"] == len(first) + len(second) and counters_add_up(c)
    assert c["series_started"] == c["series_finished"] == 2
    assert {s["series"]: s["frames"] for s in final["series"]} == {"a": len(first), "b": len(second)}
    assert api.bias_offset(job, "a").shape == sim.frames.shape[1:]


def test_a_producer_restarting_the_same_series_starts_it_afresh(api, cube_id, sim):
    """A new 'start' for the series id already open: the frames before it form one series, the frames after
    it another (each corrected as if alone); the finished-series records keep both (ordinals 1 and 2)."""
    settings = EngineSettings(reference="temporal", window=4)
    job, ep = _job(api, cube_id, window=4)
    before, after = sim.frames[:9], sim.frames[9:20]
    with FrameReceiver(ep["push"], "pull") as rx, FrameSender(ep["ingest"], "cam") as tx:
        tx.start_series("night")
        for f in before:
            tx.send_frame(f)
        tx.start_series("night")  # the producer restarted: same series id, seq from 0 again
        for f in after:
            tx.send_frame(f)
        tx.end_series()
        got = [receive_series(rx), receive_series(rx)]
    for series, frames in zip(got, (before, after), strict=True):
        assert [m.header.seq for m in series] == list(range(len(frames)))
        for m, w in zip(series, offline(sim.cube, frames, settings), strict=True):
            np.testing.assert_array_equal(m.data, w.data)
    final = api.stop_job(job)
    c = final["counters"]
    assert c["series_started"] == c["series_finished"] == 2 and c["seq_gaps"] == 0
    assert c["frames_in"] == c["frames_out"] == len(before) + len(after) and counters_add_up(c)
    assert [(s["series"], s["index"], s["frames"]) for s in final["series"]] == [("night", 1, len(before)),
                                                                                 ("night", 2, len(after))]


def test_seq_going_back_to_zero_is_counted_and_corrected_in_arrival_order(api, cube_id, sim, caplog):
    """Without a new 'start' the series goes on: the repeated numbers are counted (seq_out_of_order), logged
    (once per interval) and the frames corrected in the order they came, as one series."""
    settings = EngineSettings(reference="causal", window=4)
    job, ep = _job(api, cube_id, reference="causal", window=4)
    frames = sim.frames[:16]
    with caplog.at_level(logging.WARNING, logger="rtnstream.service.pipeline"), \
            FrameReceiver(ep["push"], "pull") as rx, FrameSender(ep["ingest"], "cam") as tx:
        tx.start_series("again")
        for k, f in enumerate(frames):
            tx.send_frame(f, seq=k % 8)  # 0..7, then 0..7 again
        tx.end_series()
        got = receive_series(rx)
    assert [m.header.seq for m in got] == [k % 8 for k in range(len(frames))]
    for m, w in zip(got, offline(sim.cube, frames, settings), strict=True):
        np.testing.assert_array_equal(m.data, w.data)
    assert any("seq 0 after 7" in r.getMessage() and job in r.getMessage() for r in caplog.records)
    c = api.stop_job(job)["counters"]
    assert c["frames_in"] == c["frames_out"] == len(frames) and c["seq_gaps"] == 0 and counters_add_up(c)
    assert c["seq_out_of_order"] == 8


# --------------------------------------------------------------------------------------- token
@pytest.fixture(scope="module")
def guarded(tmp_path_factory):
    with BackgroundServer(service_settings(tmp_path_factory.mktemp("guarded"), token="s3cret")) as srv:
        yield srv


def _state(url):
    jobs = httpx.get(f"{url}/v1/jobs").json()["jobs"]
    return sorted((j["id"], j["state"], j["counters"]["frames_in"]) for j in jobs)


def test_every_mutating_route_refuses_calls_without_the_token_and_changes_nothing(guarded, sim, tmp_path):
    """Routes found in the OpenAPI schema, so a mutating route added later without the token check fails."""
    url = guarded.url
    with ControlClient(url, token="s3cret") as api:
        cube = api.upload_cube(sim.cube_path)["id"]
        job, _ = _job(api, cube)
    paths = httpx.get(f"{url}/openapi.json").json()["paths"]
    mutating = sorted((m.upper(), p) for p, ops in paths.items() for m in ops if m in ("post", "put", "patch",
                                                                                        "delete"))
    assert mutating == [("DELETE", "/v1/jobs/{job_id}"), ("POST", "/v1/cubes"), ("POST", "/v1/jobs"),
                        ("POST", "/v1/jobs/{job_id}/stop")]
    other = tmp_path / "other.fits"  # a valid cube not stored yet: an upload would add it
    write_cube(SensorModel.random((16, 24), seed=99).true_cube(), other)
    requests = {
        "/v1/cubes": {"files": {"file": ("other.fits", other.read_bytes(), "application/fits")}},
        "/v1/jobs": {"json": {"camera": "x", "cube_id": cube, "ingest": loopback(), "publish": loopback()}},
        "/v1/jobs/{job_id}/stop": {},
        "/v1/jobs/{job_id}": {},
    }
    cubes_before = sorted(p.name for p in (guarded.settings.cube_dir).iterdir())
    for method, path in mutating:
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "Basic czNjcmV0"}):
            before = _state(url)
            r = httpx.request(method, url + path.replace("{job_id}", job), headers=headers,
                              **requests[path])
            assert r.status_code == 401, (path, headers, r.text)
            assert r.json()["error"]["code"] == "unauthorized" and r.headers["www-authenticate"] == "Bearer"
            assert _state(url) == before, path
    assert sorted(p.name for p in guarded.settings.cube_dir.iterdir()) == cubes_before
    assert httpx.get(f"{url}/v1/jobs/{job}").json()["state"] == "running"


# --------------------------------------------------------------------------------------- soak
@pytest.mark.slow
def test_soak_loses_no_frame_and_does_not_grow(sim):
    """15 s of 256 x 256 frames through the live service (HTTP, embedded Redis, loopback TCP), lossless,
    with a hostile producer mixing in 20 malformed messages a second and the lossless consumer dropping its
    connection (as in a crash) every 4 s: no frame lost, every message accounted for.

    Memory bound: after warm-up (first 20 %) RSS may grow by at most 32 MB. What is expected to grow is
    bounded by design: the latency window keeps at most 20000 samples (~3 MB) and the job keeps a small
    record per finished series (~100 series here). A leak of a per-frame object would show: the run passes
    several thousand frames (~600/s on 2 cores), so even 5 kB left behind per frame (4 % of a 128 kB frame)
    exceeds the bound.
    """
    r = run_soak((256, 256), duration_s=15.0, series_frames=100, backend="numpy", hostile_per_s=20,
                 consumer_restart_s=4.0)
    c = r.counters
    assert r.frames_sent > 1000 and r.series_sent > 5 and r.consumer_restarts >= 2  # the run did run
    assert r.lost == 0 and r.frames_received == r.frames_sent and r.series_received == r.series_sent
    hostile = sum(r.hostile_sent.values())
    assert hostile > 100 and r.hostile_sent == c["rejected"]  # every malformed message rejected, by reason
    assert c["frames_in"] == r.frames_sent + hostile and c["frames_out"] == r.frames_sent
    assert r.unaccounted() == 0 and c["in_flight"] == c["abandoned"] == 0 and counters_add_up(c)
    assert c["series_started"] == c["series_finished"] == r.series_sent
    after = r.rss_after_warmup()
    assert len(after) >= 10
    growth_mb = max(mb for _, mb in after) - after[0][1]
    assert growth_mb < 32, f"RSS grew by {growth_mb:.1f} MB after warm-up: {after}"
