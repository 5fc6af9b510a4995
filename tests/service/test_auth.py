"""Bearer token: mutating calls need it (401 and nothing changed without it); reads do not."""

import httpx
import pytest

from rtnstream.clients.control import ControlClient, ServiceError
from rtnstream.service.server import BackgroundServer
from tests.service._support import loopback, service_settings


@pytest.fixture(scope="module")
def guarded(tmp_path_factory):
    with BackgroundServer(service_settings(tmp_path_factory.mktemp("auth"), token="s3cret")) as srv:
        yield srv


def test_mutating_calls_need_the_token_and_change_nothing_without_it(guarded, sim):
    url = guarded.url
    with open(sim.cube_path, "rb") as f:
        r = httpx.post(f"{url}/v1/cubes", files={"file": ("cube.fits", f, "application/fits")})
    assert r.status_code == 401 and r.json()["error"]["code"] == "unauthorized"
    assert r.headers["www-authenticate"] == "Bearer"
    assert httpx.get(f"{url}/v1/cubes/{sim.cube.cube_id}").status_code == 404  # nothing stored
    with ControlClient(url, token="wrong") as bad, pytest.raises(ServiceError) as err:
        bad.upload_cube(sim.cube_path)
    assert err.value.status == 401
    with ControlClient(url, token="s3cret") as api:
        cube_id = api.upload_cube(sim.cube_path)["id"]
        body = {"camera": "c", "cube_id": cube_id, "ingest": loopback(), "publish": loopback()}
        r = httpx.post(f"{url}/v1/jobs", json=body)
        assert r.status_code == 401
        assert httpx.get(f"{url}/v1/jobs").json()["jobs"] == []  # reads are open; no job was made
        job = api.create_job(**body)
        assert httpx.post(f"{url}/v1/jobs/{job}/stop").status_code == 401
        assert httpx.get(f"{url}/v1/jobs/{job}").json()["state"] == "running"
        assert api.stop_job(job)["state"] == "stopped"
